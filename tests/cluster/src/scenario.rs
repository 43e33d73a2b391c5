//! `up` and `test`: the cluster booted plainly, and the cluster booted
//! through the faults it must survive without a person.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::checks::{self, Check};
use crate::cluster::Cluster;
use crate::topology::{CLUSTER, Topology};

/// How long a cluster may take to converge on this 2-core machine.
const READY_TIMEOUT: Duration = Duration::from_secs(600);

/// The bootstrap step after which the lease holder's VM is killed: the
/// Consul phase is half done (policies and the agent token exist, the
/// Nomad tokens do not).
const HOLDER_KILL_STEP: &str = "consul-token-agent";

/// Boots every group at once, waits for the cluster and the web service.
pub async fn up(cluster: &mut Cluster) -> Result<Vec<checks::WebAnswer>> {
    let groups: Vec<&'static str> = cluster.groups.iter().map(|g| g.name).collect();
    for g in groups {
        cluster.launch_group(g).await?;
    }
    print_checks(&cluster.wait_ready("cluster", READY_TIMEOUT).await?);
    cluster.deploy_web().await?;
    let answers = cluster.wait_web(Duration::from_secs(180)).await?;
    Ok(answers)
}

pub fn print_checks(checks: &[Check]) {
    for c in checks {
        eprintln!("  {c}");
    }
}

/// The fault scenario, on one cluster lifetime:
/// 1. the clients boot first and wait for servers that do not exist yet;
/// 2. the servers boot one by one, with pauses;
/// 3. the bootstrap lease holder's VM is killed half-way through the
///    bootstrap, and an autoscaling group would replace it: a new instance
///    with a new address boots;
/// 4. the cluster converges: every check, then the web service;
/// 5. a server is destroyed after the bootstrap and replaced by a new
///    instance with a new address: the cluster heals, with the web service
///    still answering;
/// 6. no secret appears in any VM's agent journal.
pub async fn test(cluster: &mut Cluster) -> Result<()> {
    if cluster.topology != Topology::Small {
        bail!("`cluster test` runs the small topology");
    }
    // 1. Clients first.
    cluster.launch_group("client").await?;
    tokio::time::sleep(Duration::from_secs(20)).await;
    for vm in cluster.vms.iter().filter(|v| v.group == "client") {
        let status = vm
            .agent_status()
            .with_context(|| format!("{}: the agent wrote no status in 20 s", vm.name))?;
        if status.converged_unix.is_some() {
            bail!("{} converged with no servers", vm.name);
        }
        cluster.log(format!(
            "{} waits, as it should: {}",
            vm.name, status.message
        ));
    }

    // 2. Servers one by one; every one would stop right after the step
    // (only the lease holder gets there).
    let mut crashing = cluster.user_data.clone();
    crashing
        .env
        .insert("KRAKEN_TEST_CRASH_AFTER".into(), HOLDER_KILL_STEP.into());
    for i in 0..3 {
        if i > 0 {
            tokio::time::sleep(Duration::from_secs(15)).await;
        }
        cluster.launch("server", Some(&crashing)).await?;
    }

    // 3. Kill the lease holder once it has done the step.
    let holder = wait_for_holder(cluster, Duration::from_secs(400)).await?;
    let name = cluster
        .vms
        .iter()
        .find(|v| v.instance_id == holder && !v.gone)
        .map(|v| v.name.clone())
        .with_context(|| format!("the lease holder {holder} is not a running VM"))?;
    cluster.log(format!(
        "{name} ({holder}) holds the bootstrap lease after {HOLDER_KILL_STEP}"
    ));
    cluster.kill(&name).await?;
    cluster.launch("server", None).await?;

    // 4. Converge.
    let checks = cluster
        .wait_ready("after the lease holder's death", READY_TIMEOUT)
        .await?;
    print_checks(&checks);
    let state = bootstrap_state(cluster).await?;
    cluster.log(format!("bootstrap log: {}", state["log"]));
    cluster.deploy_web().await?;
    let answers = cluster.wait_web(Duration::from_secs(180)).await?;
    print_answers(&answers);

    // Doctor on the real nodes: all ok, then two injected faults.
    doctor_round(cluster).await?;
    cluster
        .wait_ready("after the doctor faults", READY_TIMEOUT)
        .await?;

    // 5. Replace a server that is not the one the next checks start from.
    let victim = cluster
        .vms
        .iter()
        .filter(|v| v.group == "server" && !v.gone)
        .nth(1)
        .map(|v| v.name.clone())
        .context("no second running server")?;
    cluster.kill(&victim).await?;
    cluster.launch("server", None).await?;
    let checks = cluster
        .wait_ready("after a server's replacement", READY_TIMEOUT)
        .await?;
    print_checks(&checks);
    let answers = cluster.wait_web(Duration::from_secs(180)).await?;
    print_answers(&answers);

    // 6. Secrets.
    let journals = cluster.check_journals().await?;
    cluster.log(format!("journals: {journals}"));
    Ok(())
}

pub fn print_answers(answers: &[checks::WebAnswer]) {
    for a in answers {
        println!("GET http://{}/ ({}) -> {}", a.address, a.node, a.body);
    }
}

/// The bootstrap state record, read with the management token.
async fn bootstrap_state(cluster: &Cluster) -> Result<serde_json::Value> {
    cluster.ensure_tls()?;
    // Only Consul's token: the Nomad one does not exist until the last step.
    let token = cluster
        .cloud
        .secrets(CLUSTER)
        .await?
        .remove(kraken_secrets::names::CONSUL_INITIAL_MANAGEMENT)
        .context("no Consul management token in the store yet")?;
    let mut last_error = None;
    for n in cluster
        .nodes()
        .iter()
        .filter(|n| n.group.is_consul_server())
    {
        let url = checks::consul_url(
            &n.vm.address,
            &format!("/v1/kv/kraken/{CLUSTER}/bootstrap/state?raw=true"),
        );
        match cluster
            .api
            .get(&url, Some(("X-Consul-Token", &token)))
            .await
        {
            Ok((200, body)) => return Ok(body),
            Ok((status, _)) => last_error = Some(anyhow::anyhow!("{url}: HTTP {status}")),
            Err(e) => last_error = Some(e),
        }
    }
    Err(last_error.unwrap_or_else(|| anyhow::anyhow!("no Consul server is running")))
}

/// The node (instance id) that recorded [`HOLDER_KILL_STEP`].
async fn wait_for_holder(cluster: &Cluster, timeout: Duration) -> Result<String> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Ok(state) = bootstrap_state(cluster).await {
            let entry = state["log"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|l| l.as_str())
                .find_map(|l| l.strip_prefix(&format!("{HOLDER_KILL_STEP} by ")));
            if let Some(rest) = entry {
                return Ok(rest
                    .split_whitespace()
                    .next()
                    .unwrap_or_default()
                    .to_owned());
            }
        }
        if Instant::now() > deadline {
            cluster.print_agents();
            bail!(
                "no node did the bootstrap step {HOLDER_KILL_STEP} in {}s",
                timeout.as_secs()
            );
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// One check of `kraken-agent doctor --json`: level and finding.
#[derive(Debug)]
struct Finding {
    level: String,
    finding: String,
    /// What doctor tells the operator to run next.
    next: String,
}

/// `kraken-agent doctor --json` inside a VM, as a person logged in would
/// run it: its exit status and each check.
fn doctor(vm: &crate::vm::Vm) -> Result<(i32, BTreeMap<String, Finding>)> {
    let init = vm.init_pid().context("VM not running")?.to_string();
    let out = std::process::Command::new("nsenter")
        .args(["-t", &init, "-a", "--", "kraken-agent", "doctor", "--json"])
        .output()?;
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).with_context(|| {
        format!(
            "{}: doctor printed no JSON: {}",
            vm.name,
            String::from_utf8_lossy(&out.stderr)
        )
    })?;
    let checks = report["checks"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|c| {
            Some((
                c["name"].as_str()?.to_owned(),
                Finding {
                    level: c["level"].as_str()?.to_owned(),
                    finding: c["finding"].as_str().unwrap_or_default().to_owned(),
                    next: c["next"].as_str().unwrap_or_default().to_owned(),
                },
            ))
        })
        .collect();
    Ok((out.status.code().unwrap_or(-1), checks))
}

/// Doctor on `vm` must fail check `name` with a finding containing `says`,
/// and tell the operator to run something containing `next`.
fn doctor_names(
    cluster: &Cluster,
    vm: &crate::vm::Vm,
    fault: &str,
    name: &str,
    says: &str,
    next: &str,
) -> Result<()> {
    let (code, checks) = doctor(vm)?;
    let found = checks.get(name);
    let named = found
        .is_some_and(|c| c.level == "fail" && c.finding.contains(says) && c.next.contains(next));
    if code != 2 || !named {
        bail!(
            "doctor on {} with {fault}: exit {code}, {name}: {found:?}; all: {checks:?}",
            vm.name
        );
    }
    cluster.log(format!(
        "doctor on {}, {fault}: {name} fail: {}",
        vm.name,
        found.map(|c| c.finding.as_str()).unwrap_or("")
    ));
    Ok(())
}

/// Waits until doctor on `vm` exits 0 again.
async fn doctor_all_ok(vm: &crate::vm::Vm, after: &str) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let (code, checks) = doctor(vm)?;
        if code == 0 {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!(
                "doctor on {} after {after}: exit {code}, {checks:?}",
                vm.name
            );
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}

/// Every node's doctor says all is well; then, one at a time, each fault of
/// issue #6 that exists in this cluster is injected on a real node, named
/// by doctor, and undone: Consul stopped, a config edited by hand, a
/// certificate expiring in 5 days, EC2 access denied, a bad tag, IMDS
/// unreachable, the node's Consul token deleted, no leader.
async fn doctor_round(cluster: &mut Cluster) -> Result<()> {
    // Polled, not one shot: right after a server changed, doctor rightly
    // warns that the configs' server lists differ from a fresh render until
    // the agent's next refresh rewrites them.
    for n in cluster.nodes() {
        doctor_all_ok(n.vm, "the cluster converged").await?;
    }
    cluster.log("doctor: every node all ok");
    let index = cluster
        .vms
        .iter()
        .position(|v| v.group == "client" && !v.gone)
        .context("no client running")?;

    let client = &cluster.vms[index];
    client.exec(&["systemctl", "stop", "consul"])?;
    let named = doctor_names(
        cluster,
        client,
        "Consul stopped",
        "units",
        "consul.service is enabled and inactive",
        "systemctl status consul.service",
    );
    client.exec(&["systemctl", "start", "consul"])?;
    named?;
    doctor_all_ok(client, "Consul started").await?;

    let config = "/etc/nomad.d/nomad.hcl";
    let original = client.read(config).context("reading nomad.hcl")?;
    let path = client.path(config).context("VM not running")?;
    std::fs::write(&path, format!("{original}\n# edited by hand\n"))?;
    let (code, checks) = doctor(client)?;
    std::fs::write(&path, &original)?;
    let configs = checks.get("configs");
    if code == 0 || !configs.is_some_and(|c| c.level != "ok" && c.finding.contains("nomad.hcl")) {
        bail!(
            "doctor with nomad.hcl edited on {}: exit {code}, {configs:?}",
            client.name
        );
    }
    cluster.log(format!(
        "doctor on {}, nomad.hcl edited by hand: configs {}: {}",
        client.name,
        configs.map(|c| c.level.as_str()).unwrap_or(""),
        configs.map(|c| c.finding.as_str()).unwrap_or("")
    ));
    doctor_all_ok(client, "the edit was undone").await?;

    // A certificate expiring in 5 days, next to the node's own: past the
    // point where it should have been renewed.
    if checks::tls() {
        let extra = "/etc/consul.d/tls/expiring.pem";
        let mut params = rcgen::CertificateParams::new(vec!["server.dc1.consul".to_owned()])?;
        params.not_before = rcgen::date_time_ymd(2020, 1, 1);
        params.not_after = (std::time::SystemTime::now() + Duration::from_secs(5 * 86_400)).into();
        let pem = params.self_signed(&rcgen::KeyPair::generate()?)?.pem();
        let path = client.path(extra).context("VM not running")?;
        std::fs::write(&path, pem)?;
        let (code, checks) = doctor(client)?;
        std::fs::remove_file(&path)?;
        let tls = checks.get("tls");
        let named = tls.is_some_and(|c| {
            c.level == "warn"
                && c.finding.contains("past its renewal time")
                && (c.finding.contains("has 4d left") || c.finding.contains("has 5d left"))
        });
        if code != 1 || !named {
            bail!(
                "doctor with a certificate expiring in 5 days on {}: exit {code}, {tls:?}",
                client.name
            );
        }
        cluster.log(format!(
            "doctor on {}, a certificate expiring in 5 days: tls warn",
            client.name
        ));
        doctor_all_ok(client, "the certificate was removed").await?;
    }

    // Docker's data root over 90 % full: a 16 MiB tmpfs over it, 15 MiB of
    // it taken. Docker keeps running on its open files underneath.
    let data_root = "/var/lib/docker";
    client.exec(&[
        "mount",
        "-t",
        "tmpfs",
        "-o",
        "size=16m",
        "kraken-fill",
        data_root,
    ])?;
    let filled = client.exec(&[
        "dd",
        "if=/dev/zero",
        &format!("of={data_root}/fill"),
        "bs=1M",
        "count=15",
        "status=none",
    ]);
    let named = filled.and_then(|_| {
        doctor_names(
            cluster,
            client,
            "Docker's data root 94% full",
            "docker-disk",
            "/var/lib/docker is 94% full",
            "docker system df",
        )
    });
    client.exec(&["umount", data_root])?;
    named?;
    doctor_all_ok(client, "the data root has room again").await?;

    // EC2 access denied: the node's EC2 endpoint (its agent.env, which
    // doctor reads like the unit) answers every call as EC2 does for a role
    // without the permission. moto's IAM enforcement is all-or-nothing for
    // the whole moto, so the refusal comes from a small endpoint of ours.
    let denied = deny_ec2_endpoint().await?;
    let env_path = client
        .path("/etc/kraken/agent.env")
        .context("VM not running")?;
    let env = std::fs::read_to_string(&env_path)?;
    std::fs::write(&env_path, format!("{env}AWS_ENDPOINT_URL_EC2={denied}\n"))?;
    let named = doctor_names(
        cluster,
        client,
        "EC2 access denied",
        "aws",
        "ec2:DescribeInstances was denied",
        "docs/iam.md",
    );
    std::fs::write(&env_path, &env)?;
    named?;
    doctor_all_ok(client, "EC2 access came back").await?;

    let old = cluster.vms[index].set_imds_tag("kraken:node-class", Some("no spaces allowed"))?;
    let named = doctor_names(
        cluster,
        &cluster.vms[index],
        "a bad tag",
        "tags",
        "kraken:node-class has value \"no spaces allowed\"",
        "aws ec2 describe-tags",
    );
    cluster.vms[index].set_imds_tag("kraken:node-class", old.as_deref())?;
    named?;
    doctor_all_ok(&cluster.vms[index], "the tag was fixed").await?;

    cluster.vms[index].stop_imds();
    let named = doctor_names(
        cluster,
        &cluster.vms[index],
        "IMDS unreachable",
        "imds",
        "instance metadata service unreachable",
        "curl -sX PUT http://169.254.169.254/latest/api/token",
    );
    cluster.vms[index].start_imds()?;
    named?;
    doctor_all_ok(&cluster.vms[index], "IMDS came back").await?;

    // The node's Consul agent token, deleted in Consul, then put back with
    // the same ids (the agent's config still holds its secret).
    let tokens = cluster.tokens().await?;
    let agent_secret = tokens
        .all
        .get(kraken_secrets::names::CONSUL_AGENT)
        .context("no agent token")?
        .clone();
    let server = cluster
        .nodes()
        .iter()
        .find(|n| n.group.is_consul_server())
        .map(|n| n.vm.address.clone())
        .context("no Consul server")?;
    let token = cluster
        .api
        .get_ok(
            &checks::consul_url(&server, "/v1/acl/token/self"),
            Some(("X-Consul-Token", &agent_secret)),
        )
        .await?;
    let accessor = token["AccessorID"]
        .as_str()
        .context("no AccessorID")?
        .to_owned();
    cluster
        .api
        .send_json(
            reqwest::Method::DELETE,
            &checks::consul_url(&server, &format!("/v1/acl/token/{accessor}")),
            ("X-Consul-Token", &tokens.consul),
            &serde_json::Value::Null,
        )
        .await?;
    let client = &cluster.vms[index];
    let named = doctor_names(
        cluster,
        client,
        "its Consul token deleted",
        "consul",
        "does not know this node's agent token",
        "consul acl token list",
    );
    cluster
        .api
        .send_json(
            reqwest::Method::PUT,
            &checks::consul_url(&server, "/v1/acl/token"),
            ("X-Consul-Token", &tokens.consul),
            &serde_json::json!({
                "AccessorID": accessor,
                "SecretID": agent_secret,
                "Description": token["Description"],
                "Policies": token["Policies"],
            }),
        )
        .await?;
    named?;
    doctor_all_ok(client, "the token was put back").await?;

    // No leader: two of the three Consul servers stopped.
    let servers: Vec<usize> = cluster
        .vms
        .iter()
        .enumerate()
        .filter(|(_, v)| v.group == "server" && !v.gone)
        .map(|(i, _)| i)
        .collect();
    for &i in &servers[..2] {
        cluster.vms[i].exec(&["systemctl", "stop", "consul"])?;
    }
    let survivor = &cluster.vms[servers[2]];
    let deadline = Instant::now() + Duration::from_secs(60);
    let named = loop {
        let r = doctor_names(
            cluster,
            survivor,
            "2 of 3 Consul servers stopped",
            "consul",
            "no Raft leader",
            "consul operator raft list-peers",
        );
        if r.is_ok() || Instant::now() > deadline {
            break r;
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    };
    for &i in &servers[..2] {
        cluster.vms[i].exec(&["systemctl", "start", "consul"])?;
    }
    named?;
    for n in cluster.nodes() {
        doctor_all_ok(n.vm, "the servers came back").await?;
    }
    cluster.log("doctor: every node all ok again");
    Ok(())
}

/// An EC2 endpoint that refuses every call as EC2 refuses a role without
/// the permission (HTTP 403, `UnauthorizedOperation`, EC2's XML error
/// document). Its URL.
async fn deny_ec2_endpoint() -> Result<String> {
    const DENIED: &str = "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Response><Errors><Error><Code>UnauthorizedOperation</Code><Message>You are not authorized to perform this operation. User: arn:aws:sts::123456789012:assumed-role/kraken-node/i-0 is not authorized to perform: ec2:DescribeInstances because no identity-based policy allows the ec2:DescribeInstances action</Message></Error></Errors><RequestID>9e1c7c6c-0b1d-4b3a-8f5e-000000000000</RequestID></Response>";
    let listener = tokio::net::TcpListener::bind((crate::host::HUB_IP, 0)).await?;
    let url = format!("http://{}", listener.local_addr()?);
    let app = axum::Router::new().fallback(|| async {
        (
            axum::http::StatusCode::FORBIDDEN,
            [(axum::http::header::CONTENT_TYPE, "text/xml;charset=UTF-8")],
            DENIED,
        )
    });
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Ok(url)
}
