//! Snapshots on the VM cluster: `up` configures `[snapshots]` with a
//! bucket in moto's S3 (the leaders' schedule and `kraken-agent snapshot`
//! on the servers), and `cluster restore` loses the whole cluster and
//! boots a new one that restores at its bootstrap
//! (docs/operations.md, "Restore at bootstrap").
//!
//! moto stays: the secret store and the bucket outlive the cluster, as an
//! account's do.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde::Serialize;
use serde_json::{Value, json};

use crate::api::{consul_url, nomad_url};
use crate::cluster::Cluster;
use crate::traffic::Traffic;
use crate::voters::{self, Voters};

/// The bucket in moto's S3.
pub const BUCKET: &str = "kraken-snapshots";
/// What `restore` writes before the snapshot and reads after.
const MARKER_KEY: &str = "kraken-restore-test/marker";
const POLICY: &str = "kraken-restore-test";
const READY_TIMEOUT: Duration = Duration::from_secs(900);
/// Old clients' allocations are replaced once Nomad marks those nodes down
/// (their heartbeats are missed after the restore).
const WEB_TIMEOUT: Duration = Duration::from_secs(600);

/// The `[snapshots]` section of every VM's agent.toml. The schedule keeps
/// its default hour: the verb takes its own snapshot with the CLI.
pub fn snapshots_toml(restore_at_bootstrap: bool) -> String {
    format!(
        r#"
[snapshots]
# moto's S3 (AWS_ENDPOINT_URL), addressed by path since it is an address.
bucket = "{BUCKET}"
force_path_style = true
restore_at_bootstrap = {restore_at_bootstrap}
"#
    )
}

impl Cluster {
    /// The bucket, and `[snapshots]` in the agent.toml of every VM
    /// launched from now on (before any is).
    pub async fn enable_snapshots(&mut self) -> Result<()> {
        if let Err(e) = self.cloud.s3.create_bucket().bucket(BUCKET).send().await {
            let owned = e.as_service_error().is_some_and(|e| {
                e.is_bucket_already_owned_by_you() || e.is_bucket_already_exists()
            });
            if !owned {
                return Err(aws_sdk_s3::Error::from(e))
                    .with_context(|| format!("s3:CreateBucket {BUCKET} in moto"));
            }
        }
        if !self.snapshots {
            self.snapshots = true;
            self.user_data.agent_toml += &snapshots_toml(false);
        }
        self.save()
    }
}

#[derive(Debug, Serialize)]
pub struct RestoreReport {
    pub verb: String,
    pub seconds: f64,
    /// `kraken-agent snapshot save` on a server: the keys it wrote.
    pub snapshot: Value,
    pub snapshot_secs: f64,
    /// The VMs destroyed (every one), and the new cluster's.
    pub destroyed: Vec<(String, String)>,
    pub launched: Vec<(String, String)>,
    /// From the new VMs' launch to every check green, and to the web
    /// service answering (its job from Nomad's snapshot, not submitted).
    pub seconds_to_ready: Option<f64>,
    pub seconds_to_web: Option<f64>,
    /// What came back, each `true` when it did.
    pub restored: Value,
    /// Web requests through the new cluster's clients from their launch:
    /// those before the service answered are the outage, reported; none
    /// may fail after it.
    pub requests: u64,
    pub failed_requests: u64,
    pub failed_after_web: u64,
    pub longest_outage_secs: f64,
    pub first_failures: Vec<String>,
    pub voters_after: Voters,
    pub failures: Vec<String>,
}

fn since(t: Instant) -> f64 {
    (t.elapsed().as_secs_f64() * 10.0).round() / 10.0
}

/// What was written before the snapshot, to find after the restore.
struct Written {
    marker: Value,
    consul_secret: String,
    consul_accessor: String,
    nomad_secret: String,
}

/// `cluster restore`.
pub async fn restore(cluster: &mut Cluster) -> Result<RestoreReport> {
    if !cluster.snapshots {
        bail!(
            "this cluster has no [snapshots] in its agent.toml: boot it with \
             `cargo xtask cluster up` (which configures them)"
        );
    }
    let started = Instant::now();
    let written = write_state(cluster).await?;
    cluster.log("wrote a KV marker, a Consul ACL token, a Nomad policy and token");

    let server = cluster
        .vms
        .iter()
        .find(|v| !v.gone && cluster.group(&v.group).is_ok_and(|g| g.is_consul_server()))
        .context("no Consul server is running")?
        .clone();
    let t = Instant::now();
    let out = tokio::task::spawn_blocking(move || {
        server.exec_logged_in(&["kraken-agent", "snapshot", "save"])
    })
    .await??;
    let snapshot: Value =
        serde_json::from_str(&out).with_context(|| format!("snapshot save printed {out}"))?;
    let snapshot_secs = since(t);
    cluster.log(format!("snapshot saved in {snapshot_secs}s"));

    let mut report = RestoreReport {
        verb: "restore".into(),
        seconds: 0.0,
        snapshot: snapshot["saved"].clone(),
        snapshot_secs,
        destroyed: Vec::new(),
        launched: Vec::new(),
        seconds_to_ready: None,
        seconds_to_web: None,
        restored: Value::Null,
        requests: 0,
        failed_requests: 0,
        failed_after_web: 0,
        longest_outage_secs: 0.0,
        first_failures: Vec::new(),
        voters_after: Voters::default(),
        failures: Vec::new(),
    };

    // Every VM goes with its data; moto (the store, the bucket) stays.
    let running: Vec<(String, String)> = cluster
        .vms
        .iter()
        .filter(|v| !v.gone)
        .map(|v| (v.name.clone(), v.instance_id.clone()))
        .collect();
    for (name, _) in &running {
        cluster.kill(name).await?;
    }
    report.destroyed = running;

    // A new cluster, configured to restore at its bootstrap.
    let mut user_data = cluster.user_data.clone();
    user_data.agent_toml = user_data
        .agent_toml
        .replace(&snapshots_toml(false), &snapshots_toml(true));
    let launched_at = Instant::now();
    let groups: Vec<(&'static str, usize)> =
        cluster.groups.iter().map(|g| (g.name, g.size)).collect();
    for (group, size) in groups {
        for _ in 0..size {
            let vm = cluster.launch(group, Some(&user_data)).await?;
            report
                .launched
                .push((vm.name.clone(), vm.instance_id.clone()));
        }
    }
    let tokens = cluster.tokens().await?;
    let traffic = Traffic::start(cluster, tokens, 2);
    match cluster.wait_ready("the new cluster", READY_TIMEOUT).await {
        Ok(_) => report.seconds_to_ready = Some(since(launched_at)),
        Err(e) => report.failures.push(format!("{e:#}")),
    }
    if report.failures.is_empty() {
        report.restored = restored(cluster, &written, &mut report.failures).await?;
        match cluster.wait_web(WEB_TIMEOUT).await {
            Ok(answers) => {
                report.seconds_to_web = Some(since(launched_at));
                for a in &answers {
                    cluster.log(format!(
                        "GET http://{}/ ({}) -> {}",
                        a.address, a.node, a.body
                    ));
                }
            }
            Err(e) => report.failures.push(format!("{e:#}")),
        }
    }
    let at_web = traffic.figures().failed_requests;
    // Users of the restored service, for a while: none may fail now.
    tokio::time::sleep(Duration::from_secs(10)).await;
    let f = traffic.finish().await;
    report.requests = f.requests;
    report.failed_requests = f.failed_requests;
    report.failed_after_web = f.failed_requests - at_web;
    report.longest_outage_secs = (f.longest_outage_secs * 10.0).round() / 10.0;
    report.first_failures = f.first_failures;
    if report.seconds_to_web.is_some() && report.failed_after_web > 0 {
        report.failures.push(format!(
            "{} web requests failed after the service answered",
            report.failed_after_web
        ));
    }
    let tokens = cluster.tokens().await?;
    report.voters_after = voters::voters(cluster, &tokens).await;
    report
        .failures
        .extend(voters::voter_failures(cluster, &report.voters_after));
    report.seconds = since(started);
    Ok(report)
}

fn servers(cluster: &Cluster) -> Result<(String, String)> {
    let nodes = cluster.nodes();
    let pick = |f: fn(&crate::topology::Group) -> bool| {
        nodes
            .iter()
            .find(|n| f(n.group))
            .map(|n| n.vm.address.clone())
            .context("no such server is running")
    };
    Ok((
        pick(crate::topology::Group::is_consul_server)?,
        pick(crate::topology::Group::is_nomad_server)?,
    ))
}

/// A KV marker, a Consul policy and a token with a SecretID of our own, a
/// Nomad policy and a token of it: the state a snapshot must bring back.
async fn write_state(cluster: &Cluster) -> Result<Written> {
    let tokens = cluster.tokens().await?;
    let (consul, nomad) = servers(cluster)?;
    let api = &cluster.api;
    let c = ("X-Consul-Token", tokens.consul.as_str());
    let n = ("X-Nomad-Token", tokens.nomad.as_str());
    // Strings, not numbers: serde_json reads a float back to within a ULP
    // only, and a marker that came back whole once compared unequal.
    let marker = json!({
        "written": crate::vm::now().to_string(),
        "nonce": fastrand::u64(..).to_string(),
    });
    api.send_json(
        reqwest::Method::PUT,
        &consul_url(&consul, &format!("/v1/kv/{MARKER_KEY}")),
        c,
        &marker,
    )
    .await?;
    api.send_json(
        reqwest::Method::PUT,
        &consul_url(&consul, "/v1/acl/policy"),
        c,
        &json!({
            "Name": POLICY,
            "Description": "cluster restore: read the marker",
            "Rules": "key_prefix \"kraken-restore-test/\" { policy = \"read\" }",
        }),
    )
    .await?;
    let consul_secret = uuid();
    let made = api
        .send_json(
            reqwest::Method::PUT,
            &consul_url(&consul, "/v1/acl/token"),
            c,
            &json!({
                "SecretID": consul_secret,
                "Description": "cluster restore: must come back",
                "Policies": [{ "Name": POLICY }],
            }),
        )
        .await?;
    let consul_accessor = made["AccessorID"]
        .as_str()
        .context("acl/token answered no AccessorID")?
        .to_owned();
    api.send_json(
        reqwest::Method::POST,
        &nomad_url(&nomad, &format!("/v1/acl/policy/{POLICY}")),
        n,
        &json!({
            "Name": POLICY,
            "Description": "cluster restore: must come back",
            "Rules": "namespace \"default\" { policy = \"read\" }",
        }),
    )
    .await?;
    let made = api
        .send_json(
            reqwest::Method::POST,
            &nomad_url(&nomad, "/v1/acl/token"),
            n,
            &json!({ "Name": "cluster restore", "Type": "client", "Policies": [POLICY] }),
        )
        .await?;
    let nomad_secret = made["SecretID"]
        .as_str()
        .context("Nomad's acl/token answered no SecretID")?
        .to_owned();
    Ok(Written {
        marker,
        consul_secret,
        consul_accessor,
        nomad_secret,
    })
}

/// A random UUID (v4 form), for the Consul token's SecretID.
fn uuid() -> String {
    let b: [u8; 16] = std::array::from_fn(|i| match i {
        6 => 0x40 | (fastrand::u8(..) & 0x0f),
        8 => 0x80 | (fastrand::u8(..) & 0x3f),
        _ => fastrand::u8(..),
    });
    let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

/// Each thing written before the snapshot, looked for in the new cluster;
/// a missing one is a failure.
async fn restored(cluster: &Cluster, w: &Written, failures: &mut Vec<String>) -> Result<Value> {
    let tokens = cluster.tokens().await?;
    let (consul, nomad) = servers(cluster)?;
    let api = &cluster.api;
    let (status, kv) = api
        .get(
            &consul_url(&consul, &format!("/v1/kv/{MARKER_KEY}?raw")),
            tokens.consul_header(),
        )
        .await?;
    let marker = status == 200 && kv == w.marker;
    // The token as Consul knows it: by its own secret.
    let (status, own) = api
        .get(
            &consul_url(&consul, "/v1/acl/token/self"),
            Some(("X-Consul-Token", w.consul_secret.as_str())),
        )
        .await?;
    let consul_token = status == 200 && own["AccessorID"] == w.consul_accessor.as_str();
    let (status, _) = api
        .get(
            &nomad_url(&nomad, &format!("/v1/acl/policy/{POLICY}")),
            tokens.nomad_header(),
        )
        .await?;
    let nomad_policy = status == 200;
    let (status, own) = api
        .get(
            &nomad_url(&nomad, "/v1/acl/token/self"),
            Some(("X-Nomad-Token", w.nomad_secret.as_str())),
        )
        .await?;
    let nomad_token = status == 200 && own["Policies"][0] == POLICY;
    let found = json!({
        "kv_marker": marker,
        "consul_token_by_secret": consul_token,
        "nomad_policy": nomad_policy,
        "nomad_token_by_secret": nomad_token,
    });
    for (what, ok) in found.as_object().into_iter().flatten() {
        if ok != true {
            failures.push(format!("{what} did not come back with the snapshot"));
        }
    }
    Ok(found)
}
