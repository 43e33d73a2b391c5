//! `cluster escape`: tasks try to reach the node's credentials (issue #17).
//! On one client of the running cluster, a `raw_exec` job (as nobody), an
//! `exec` job and a Docker job with `network_mode = "host"` each run
//! `escape.sh`: the IMDS token endpoint at the address the agent is
//! configured with, the node's token files, its TLS keys, and SSM with any
//! credentials found. Every attempt must be refused; a `raw_exec` task
//! without `user` (root) must not start at all. Then the agent itself must
//! still reach IMDS: it is restarted and must converge again (its identity
//! comes from IMDS at every start), and root logged in (`user.slice`) runs
//! doctor's `imds` check. The units' `systemd-analyze security` figures are
//! in the report. The web service is requested the whole time.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};

use crate::api::{Tokens, nomad_url};
use crate::cluster::Cluster;
use crate::topology::CLUSTER;
use crate::traffic::Traffic;
use crate::vm::Vm;

const SCRIPT: &str = include_str!("escape.sh");
/// The Docker job's image, made in the VM from its own binaries: the
/// cluster has no registry. Not `latest`, so Nomad uses it without a pull.
const IMAGE: &str = "kraken-escape:1";
const NOMAD_DATA: &str = "/opt/nomad";
/// Where the node's secrets can be: configs with tokens, the agent's
/// environment, the secret store, Consul's and Nomad's state.
const NODE_DIRS: &str = "/etc/consul.d /etc/nomad.d /etc/kraken /var/lib/kraken /opt/consul /opt/nomad/client /opt/nomad/server";

/// `cluster escape`: its report and failures.
pub async fn escape(cluster: &mut Cluster) -> Result<(Value, Vec<String>)> {
    let started = Instant::now();
    let tokens = cluster.tokens().await?;
    let traffic = Traffic::start(cluster, tokens.clone(), 2);
    let mut failures = Vec::new();
    let client = cluster
        .nodes()
        .into_iter()
        .find(|n| n.group.is_nomad_client() && !n.group.is_nomad_server())
        .context("no running Nomad client")?
        .vm
        .clone();
    let server = cluster
        .nodes()
        .into_iter()
        .find(|n| n.group.is_nomad_server())
        .context("no running Nomad server")?
        .vm
        .clone();
    let env = task_env(cluster, &client)?;
    cluster.log(format!(
        "escape: on {} ({}), IMDS at {}; {} token files, {} TLS keys",
        client.name,
        client.instance_id,
        env["IMDS"],
        env["TOKEN_FILES"].split(' ').count(),
        env["TLS_KEYS"].split(' ').count()
    ));

    let mut drivers = serde_json::Map::new();
    // Every driver must run: a driver Nomad finds unhealthy (exec without
    // cgroups, Docker without its daemon) is a failure, not a skip.
    for (job, driver, user) in [
        ("escape-raw-exec", "raw_exec", Some("nobody")),
        ("escape-exec", "exec", None),
        ("escape-docker", "docker", None),
    ] {
        let outcome = match driver_ready(cluster, &tokens, &server, &client, driver).await {
            Err(why) => {
                cluster.log(format!("escape: {driver}: not run: {why}"));
                failures.push(format!("{driver}: not run: {why}"));
                json!({ "not_run": why })
            }
            Ok(()) => {
                let spec = job_spec(job, driver, user, &client, &env);
                match run_job(cluster, &tokens, &server, &client, job, spec).await {
                    Ok(alloc) => judge(driver, &alloc, &mut failures),
                    Err(e) => {
                        failures.push(format!("{driver}: {e:#}"));
                        json!({ "error": format!("{e:#}") })
                    }
                }
            }
        };
        cluster.log(format!(
            "escape: {driver} done; web: {}",
            traffic.progress()
        ));
        drivers.insert(driver.to_owned(), outcome);
    }

    // raw_exec without `user` runs as Nomad's own user, root: refused.
    let spec = job_spec("escape-raw-exec-root", "raw_exec", None, &client, &env);
    let root = match run_job(
        cluster,
        &tokens,
        &server,
        &client,
        "escape-raw-exec-root",
        spec,
    )
    .await
    {
        Ok(alloc) => {
            let refused = alloc.status == "failed"
                && alloc
                    .events
                    .iter()
                    .any(|e| e.contains("uid 0 is disallowed"));
            if !refused {
                failures.push(format!(
                    "raw_exec as root: {} ({:?}), not refused",
                    alloc.status, alloc.events
                ));
            }
            json!({ "status": alloc.status, "refused": refused, "events": alloc.events })
        }
        Err(e) => {
            failures.push(format!("raw_exec as root: {e:#}"));
            json!({ "error": format!("{e:#}") })
        }
    };

    let agent = agent_reaches_imds(cluster, &client, &mut failures).await;
    let security = security(cluster);
    let checks = cluster.checks().await;
    for c in checks.iter().filter(|c| !c.ok) {
        failures.push(format!("after escape: {c}"));
    }
    let web = traffic.finish().await;
    if web.failed_requests > 0 {
        failures.push(format!(
            "web: {} of {} requests failed: {:?}",
            web.failed_requests, web.requests, web.first_failures
        ));
    }
    let report = json!({
        "verb": "escape",
        "node": client.name,
        "imds": env["IMDS"],
        "drivers": drivers,
        "raw_exec_as_root": root,
        "agent": agent,
        "systemd_analyze_security": security,
        "web": web,
        "took_s": (started.elapsed().as_secs_f64() * 10.0).round() / 10.0,
        "failures": failures,
    });
    Ok((report, failures))
}

/// The tasks' environment: the IMDS address the client's agent uses (its
/// agent.env, else the SDK's default), SSM, and the files to try.
fn task_env(cluster: &Cluster, vm: &Vm) -> Result<BTreeMap<&'static str, String>> {
    let agent_env = vm.read("/etc/kraken/agent.env").unwrap_or_default();
    let imds = agent_env
        .lines()
        .find_map(|l| l.strip_prefix("AWS_EC2_METADATA_SERVICE_ENDPOINT="))
        .unwrap_or("http://169.254.169.254")
        .trim_end_matches('/')
        .to_owned();
    let ssm = cluster
        .user_data
        .env
        .get("AWS_ENDPOINT_URL")
        .cloned()
        .context("the cluster's user data has no AWS_ENDPOINT_URL")?;
    // A client has no /opt/nomad/server (find then exits 1): what none of
    // the directories holds is caught just below.
    let files = vm.exec(&[
        "sh",
        "-c",
        &format!("find {NODE_DIRS} -type f 2>/dev/null; true"),
    ])?;
    let (mut keys, mut tokens) = (Vec::new(), Vec::new());
    for f in files.lines().filter(|f| !f.contains("/alloc/")) {
        let name = f.rsplit('/').next().unwrap_or(f);
        if name.contains("key") {
            keys.push(f.to_owned());
        } else if !name.ends_with(".pem") && !name.ends_with(".crt") && name != "agent.toml" {
            // agent.toml holds settings, never a secret (those are in the
            // secret store: docs/configuration.md); certificates are public.
            // Everything else may hold a secret.
            tokens.push(f.to_owned());
        }
    }
    if keys.is_empty() || tokens.is_empty() {
        bail!(
            "found no TLS keys or no token files on {} under {NODE_DIRS}",
            vm.name
        );
    }
    Ok(BTreeMap::from([
        ("IMDS", imds),
        ("SSM", ssm),
        ("REGION", crate::cloud::REGION.to_owned()),
        // The key every node's own Consul agent token is derived from:
        // what a task would want most.
        (
            "SSM_NAME",
            format!(
                "/kraken/{CLUSTER}/{}",
                kraken_secrets::names::NODE_TOKEN_KEY
            ),
        ),
        ("TOKEN_FILES", tokens.join(" ")),
        ("TLS_KEYS", keys.join(" ")),
    ]))
}

/// Whether `driver` is healthy on the client; Docker gets its image first.
async fn driver_ready(
    cluster: &Cluster,
    tokens: &Tokens,
    server: &Vm,
    client: &Vm,
    driver: &str,
) -> std::result::Result<(), String> {
    let node = crate::warm::nomad_node(cluster, tokens, &client.instance_id)
        .await
        .ok_or("the client is not a Nomad node")?;
    let id = node["ID"].as_str().unwrap_or_default();
    let url = nomad_url(&server.address, &format!("/v1/node/{id}"));
    let detail = cluster
        .api
        .get_ok(&url, tokens.nomad_header())
        .await
        .map_err(|e| format!("{e:#}"))?;
    let d = &detail["Drivers"][driver];
    if d["Healthy"] != true {
        return Err(format!(
            "driver {driver} is not healthy on {}: {}",
            client.name, d["HealthDescription"]
        ));
    }
    if driver == "docker" {
        docker_image(client).map_err(|e| format!("{e:#}"))?;
    }
    Ok(())
}

/// An image of the VM's own bash, curl and libraries (no configs, no
/// keys: only /usr/bin's tools and /usr/lib), imported into its Docker.
/// `sleep` too: the script holds its task until the harness has read the
/// report (without it the container exits 127 and Nomad may delete its
/// allocation directory, report and all, at once).
fn docker_image(vm: &Vm) -> Result<()> {
    let script = format!(
        "docker image inspect {IMAGE} >/dev/null 2>&1 && exit 0; \
         cd / && tar -c usr/bin/bash usr/bin/curl usr/bin/cat usr/bin/wc usr/bin/tr usr/bin/cut \
         usr/bin/sed usr/bin/grep usr/bin/head usr/bin/id usr/bin/sleep usr/lib/x86_64-linux-gnu usr/lib64 \
         bin lib lib64 etc/ssl/certs 2>/dev/null | docker import - {IMAGE} >/dev/null"
    );
    vm.exec(&["sh", "-c", &script])
        .map(drop)
        .with_context(|| format!("making the image {IMAGE} on {}", vm.name))
}

fn job_spec(
    id: &str,
    driver: &str,
    user: Option<&str>,
    client: &Vm,
    env: &BTreeMap<&'static str, String>,
) -> Value {
    let script = "${NOMAD_TASK_DIR}/escape.sh";
    let config = match driver {
        "docker" => json!({ "image": IMAGE, "network_mode": "host",
                            "command": "/usr/bin/bash", "args": [script] }),
        _ => json!({ "command": "/bin/bash", "args": [script] }),
    };
    let mut task = json!({
        "Name": "t", "Driver": driver, "Config": config, "Env": env,
        "Templates": [{ "EmbeddedTmpl": SCRIPT, "DestPath": "local/escape.sh",
                        "Perms": "0755", "LeftDelim": "[[%", "RightDelim": "%]]" }],
        "Resources": { "CPU": 50, "MemoryMB": 64 },
    });
    if let Some(user) = user {
        task["User"] = user.into();
    }
    json!({ "Job": {
        "ID": id, "Name": id, "Type": "batch", "Datacenters": ["*"],
        "Constraints": [{ "LTarget": "${node.unique.name}", "RTarget": client.instance_id,
                          "Operand": "=" }],
        "TaskGroups": [{
            "Name": "g", "Count": 1,
            "RestartPolicy": { "Attempts": 0, "Mode": "fail" },
            "ReschedulePolicy": { "Attempts": 0, "Unlimited": false },
            "Tasks": [task],
        }],
    }})
}

struct Alloc {
    status: String,
    events: Vec<String>,
    stdout: String,
}

/// Submits the job, reads its report from the client's disk (or waits for
/// its allocation to end without one) and purges the job.
async fn run_job(
    cluster: &Cluster,
    tokens: &Tokens,
    server: &Vm,
    client: &Vm,
    id: &str,
    spec: Value,
) -> Result<Alloc> {
    let header = ("X-Nomad-Token", tokens.nomad.as_str());
    let url = |p: &str| nomad_url(&server.address, p);
    cluster
        .api
        .send_json(reqwest::Method::POST, &url("/v1/jobs"), header, &spec)
        .await?;
    // The task holds after its report (escape.sh): Nomad may collect a
    // finished allocation's directory at once (its GC runs as soon as the
    // disk is over 80 % full, as a build machine's often is), report and
    // all. So the report is read while the task runs, or the allocation
    // ended without one (a refused start).
    let deadline = Instant::now() + Duration::from_secs(180);
    let (alloc, stdout) = loop {
        let allocs = cluster
            .api
            .get_ok(
                &url(&format!("/v1/job/{id}/allocations")),
                tokens.nomad_header(),
            )
            .await?;
        if let Some(a) = allocs.as_array().and_then(|a| a.first()) {
            let alloc_id = a["ID"].as_str().unwrap_or_default();
            let report = client
                .read(&format!("{NOMAD_DATA}/alloc/{alloc_id}/alloc/escape.out"))
                .unwrap_or_default();
            let status = a["ClientStatus"].as_str().unwrap_or("");
            if report.contains("KRAKEN-ESCAPE-DONE")
                || ["complete", "failed", "lost"].contains(&status)
            {
                break (a.clone(), report);
            }
        }
        if Instant::now() > deadline {
            bail!("job {id}: no report and no finished allocation after 180 s: {allocs}");
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    };
    let events = alloc["TaskStates"]["t"]["Events"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| e["DisplayMessage"].as_str())
        .filter(|m| !m.is_empty())
        .map(str::to_owned)
        .collect();
    let _ = cluster
        .api
        .send_json(
            reqwest::Method::DELETE,
            &url(&format!("/v1/job/{id}?purge=true")),
            header,
            &Value::Null,
        )
        .await;
    Ok(Alloc {
        status: alloc["ClientStatus"]
            .as_str()
            .unwrap_or_default()
            .to_owned(),
        events,
        stdout,
    })
}

/// Each attempt of a task's output; any GOT, or an output that did not
/// finish, is a failure.
fn judge(driver: &str, alloc: &Alloc, failures: &mut Vec<String>) -> Value {
    let mut attempts = Vec::new();
    let mut id = String::new();
    for l in alloc.stdout.lines() {
        let f: Vec<&str> = l.split('\t').collect();
        match f.as_slice() {
            ["KRAKEN-ESCAPE-ID", who] => id = (*who).to_owned(),
            ["KRAKEN-ESCAPE", attempt, target, outcome, detail] => {
                if *outcome == "GOT" {
                    failures.push(format!("{driver}: {attempt} {target}: {detail}"));
                }
                attempts.push(json!({ "attempt": attempt, "target": target,
                                      "outcome": outcome, "error": detail }));
            }
            _ => {}
        }
    }
    let done = alloc.stdout.contains("KRAKEN-ESCAPE-DONE");
    if !done || attempts.is_empty() {
        failures.push(format!(
            "{driver}: the task did not finish its attempts (status {}, events {:?}, \
             report {} bytes ending {:?})",
            alloc.status,
            alloc.events,
            alloc.stdout.len(),
            alloc.stdout.lines().rev().take(3).collect::<Vec<_>>()
        ));
    }
    json!({ "status": alloc.status, "task_user": id, "attempts": attempts,
            "events": alloc.events })
}

/// The agent restarted must converge again (IMDS at its start), and root
/// logged in must pass doctor's `imds` check.
async fn agent_reaches_imds(cluster: &Cluster, vm: &Vm, failures: &mut Vec<String>) -> Value {
    let before = vm.agent_status().map(|s| s.pid);
    let restarted = Instant::now();
    let _ = vm.exec(&["systemctl", "restart", "--no-block", "kraken-agent.service"]);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut ready_after = None;
    while restarted.elapsed() < Duration::from_secs(180) {
        // Converged again: the new process's status, not the old one's.
        if vm
            .agent_status()
            .is_some_and(|s| s.phase == "converged" && Some(s.pid) != before)
            && vm
                .exec(&["systemctl", "is-active", "kraken-agent.service"])
                .is_ok_and(|s| s.trim() == "active")
        {
            ready_after = Some(restarted.elapsed().as_secs_f64());
            break;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    match ready_after {
        Some(s) => cluster.log(format!(
            "escape: {}: agent restarted, ready again after {s:.1}s",
            vm.name
        )),
        None => failures.push(format!(
            "{}: the restarted agent is not ready after 180 s",
            vm.name
        )),
    }
    let doctor = crate::doctor::as_logged_in(vm, &["kraken-agent", "doctor", "--json"]);
    let imds = doctor
        .as_ref()
        .ok()
        .and_then(|out| serde_json::from_str::<Value>(out).ok())
        .and_then(|r| {
            r["checks"]
                .as_array()?
                .iter()
                .find(|c| c["name"] == "imds")
                .cloned()
        });
    if imds.as_ref().is_none_or(|c| c["level"] != "ok") {
        failures.push(format!(
            "{}: doctor's imds check as root logged in: {imds:?} ({:?})",
            vm.name,
            doctor.as_ref().err()
        ));
    }
    json!({ "restarted_ready_after_s": ready_after, "doctor_imds_as_root_login": imds })
}

/// `systemd-analyze security`'s exposure of the units, on a client and a
/// server.
fn security(cluster: &Cluster) -> Value {
    let mut out = serde_json::Map::new();
    let picks = [
        cluster
            .nodes()
            .into_iter()
            .find(|n| n.group.is_nomad_client()),
        cluster
            .nodes()
            .into_iter()
            .find(|n| n.group.is_nomad_server()),
    ];
    for n in picks.into_iter().flatten() {
        let mut units = serde_json::Map::new();
        for unit in [
            "consul.service",
            "nomad.service",
            "kraken-agent.service",
            "docker.service",
        ] {
            let text =
                n.vm.exec(&[
                    "sh",
                    "-c",
                    &format!("systemd-analyze security --no-pager {unit} 2>&1 | tail -n1"),
                ])
                .unwrap_or_else(|e| e.to_string());
            // "→ Overall exposure level for consul.service: 2.1 OK :-)"
            let figure = text
                .rsplit_once(": ")
                .map(|(_, f)| f.trim().to_owned())
                .unwrap_or_else(|| text.trim().to_owned());
            units.insert(unit.to_owned(), figure.into());
        }
        out.insert(n.vm.name.clone(), units.into());
    }
    out.into()
}
