//! `jobs/web.nomad.hcl` on real Nomad and Consul, shaped like the seed
//! cluster: a Consul server, a Nomad server, two generic Nomad clients and an
//! edge one, each client with a Consul agent of its own. The job is submitted
//! with the real CLI, and the test then finds the instances the way a user
//! would, through Consul's health API, and asks each who it is.
//!
//! Every Nomad client gets its own Consul agent, as on EC2, not for show:
//! a Nomad client deregisters every Nomad-managed service in its agent that
//! it did not register itself, so two clients sharing one agent remove each
//! other's instances.

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsStr;
use std::hash::{BuildHasher, Hasher, RandomState};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use kraken_testkit::{
    CONSUL_HTTP_PORT, ConsulDev, LoopbackAddrs, NomadClient, NomadServer, Peer, PeerCommand,
    START_TIMEOUT, TestDir, http_client, nomad_bin, wait_for,
};
use serde_json::Value;

use crate::common::text;

const JOB: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../jobs/web.nomad.hcl");
const DOCKER_JOB: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../docs/examples/web-docker.nomad.hcl"
);

/// From submission to both allocations running, and from there to both
/// instances passing in Consul (checks run every 5 s). CI has two cores.
const PLACE_TIMEOUT: Duration = Duration::from_secs(120);
const CHECK_TIMEOUT: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn web_job_runs_two_instances_found_through_consul() {
    let started = Instant::now();
    // The job runs it as nobody (its `user`), who cannot reach a build
    // under /root: a copy it can execute, as the image installs it.
    let web_dir = TestDir::new("web-bin");
    let web = web_dir.path().join("kraken-web");
    std::fs::copy(web_bin(), &web).expect("copy kraken-web");
    std::fs::set_permissions(&web, std::os::unix::fs::PermissionsExt::from_mode(0o755))
        .expect("chmod kraken-web");

    let (consul, nomad) = tokio::join!(ConsulDev::start(), NomadServer::start());
    let (agent_a, agent_b) = tokio::join!(
        ConsulAgent::start("consul-generic-a", consul.ip()),
        ConsulAgent::start("consul-generic-b", consul.ip()),
    );
    // Both generic clients see the host's loopback as 127.0.0.1 (`lo` has
    // no other address), so their dynamic ports share one address: disjoint
    // ranges keep two allocations from being handed the same port.
    let (ports_a, ports_b) = port_ranges();
    let servers = [nomad.rpc_addr()];
    let hcl_a = client_hcl("generic", agent_a.http_addr(), Some(ports_a));
    let hcl_b = client_hcl("generic", agent_b.http_addr(), Some(ports_b));
    // The Consul server is the edge client's agent: nothing else of Nomad's
    // registers there.
    let hcl_edge = client_hcl("edge", consul.http_addr(), None);
    let (generic_a, generic_b, edge) = tokio::join!(
        NomadClient::start_with_config(&servers, &hcl_a),
        NomadClient::start_with_config(&servers, &hcl_b),
        NomadClient::start_with_config(&servers, &hcl_edge),
    );
    let generic: BTreeSet<String> = [generic_a.node_id(), generic_b.node_id()]
        .map(str::to_owned)
        .into();
    eprintln!("web_job: cluster up after {:?}", started.elapsed());

    let out = nomad_cli(&nomad.http_url())
        .args(["job", "run", "-detach", "-var"])
        .arg(format!("web_binary={}", web.display()))
        .arg(JOB)
        .output()
        .await
        .expect("run nomad job run");
    assert!(out.status.success(), "nomad job run: {}", text(&out));

    // Nomad: two allocations running, one on each generic client.
    let http = http_client();
    let nomad_url = nomad.http_url();
    let running = wait_for("2 running allocations of job web", PLACE_TIMEOUT, || {
        let (http, url) = (http.clone(), nomad_url.clone());
        async move {
            let allocs = get(&http, &format!("{url}/v1/job/web/allocations"))
                .await
                .ok()?;
            let running: Vec<Value> = allocs
                .as_array()?
                .iter()
                .filter(|a| a["ClientStatus"] == "running" && a["DesiredStatus"] == "run")
                .cloned()
                .collect();
            (running.len() == 2).then_some(running)
        }
    })
    .await;
    let running = match running {
        Ok(running) => running,
        Err(e) => panic!("{e:#}\n{}", job_report(&http, &nomad_url).await),
    };
    let nodes: BTreeSet<String> = running
        .iter()
        .map(|a| a["NodeID"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        nodes,
        generic,
        "one allocation on each generic client, none on edge ({})",
        edge.node_id()
    );

    // Where Nomad put each allocation's `http` port: Consul must say the same.
    let mut expected: BTreeMap<SocketAddr, String> = BTreeMap::new();
    for alloc in &running {
        let id = alloc["ID"].as_str().unwrap();
        let full = get(&http, &format!("{nomad_url}/v1/allocation/{id}"))
            .await
            .unwrap();
        let ports = full["AllocatedResources"]["Shared"]["Ports"]
            .as_array()
            .unwrap_or_else(|| panic!("allocation {id} has no ports: {full}"));
        let port = ports
            .iter()
            .find(|p| p["Label"] == "http")
            .unwrap_or_else(|| panic!("allocation {id} has no port labelled http: {ports:?}"));
        let addr = SocketAddr::new(
            port["HostIP"].as_str().unwrap().parse().unwrap(),
            port["Value"].as_u64().unwrap() as u16,
        );
        expected.insert(addr, id.to_owned());
    }
    assert_eq!(expected.len(), 2, "two distinct addresses: {expected:?}");

    // Consul: both instances registered by their node's agents and passing
    // their HTTP check.
    let consul_url = consul.http_url();
    let passing = wait_for(
        "2 passing instances of web in Consul",
        CHECK_TIMEOUT,
        || {
            let (http, url) = (http.clone(), consul_url.clone());
            async move {
                let entries = get(&http, &format!("{url}/v1/health/service/web?passing"))
                    .await
                    .ok()?;
                let entries = entries.as_array()?.clone();
                (entries.len() == 2).then_some(entries)
            }
        },
    )
    .await;
    let passing = match passing {
        Ok(passing) => passing,
        Err(e) => {
            let all = get(&http, &format!("{consul_url}/v1/health/service/web")).await;
            panic!("{e:#}\nall instances: {all:#?}")
        }
    };
    let mut found: BTreeMap<SocketAddr, String> = BTreeMap::new();
    for entry in &passing {
        let node = entry["Node"]["Node"].as_str().unwrap();
        assert!(
            node.starts_with("consul-generic-"),
            "registered by a generic client's own agent, not {node}: {entry}"
        );
        let http_check = entry["Checks"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["ServiceName"] == "web" && c["Type"] == "http");
        assert!(
            http_check.is_some_and(|c| c["Status"] == "passing"),
            "an HTTP check, passing: {entry}"
        );
        let service = &entry["Service"];
        let addr = SocketAddr::new(
            service["Address"].as_str().unwrap().parse().unwrap(),
            service["Port"].as_u64().unwrap() as u16,
        );

        // Each instance answers with its own allocation's id.
        let resp = http.get(format!("http://{addr}/")).send().await.unwrap();
        assert_eq!(resp.status(), 200, "GET http://{addr}/");
        assert_eq!(resp.headers()["content-type"], "application/json");
        let answer: Value = resp.json().await.unwrap();
        let alloc_id = answer["alloc_id"].as_str().unwrap_or_default().to_owned();
        assert_eq!(
            answer,
            serde_json::json!({"alloc_id": alloc_id, "status": "ok"}),
            "exactly alloc_id and status, from http://{addr}/"
        );
        found.insert(addr, alloc_id);
    }
    // Same addresses, same ids: Consul's instances are Nomad's allocations,
    // each answering with its own id.
    assert_eq!(found, expected);
    eprintln!(
        "web_job: both instances passing after {:?}: {found:?}",
        started.elapsed()
    );

    // A stop is graceful: the tasks exit 0 on Nomad's SIGINT, and Consul
    // loses the instances.
    let stop = http
        .delete(format!("{nomad_url}/v1/job/web"))
        .send()
        .await
        .unwrap();
    assert!(stop.status().is_success(), "stop: {}", stop.status());
    let stopped = wait_for("both allocations complete", PLACE_TIMEOUT, || {
        let (http, url) = (http.clone(), nomad_url.clone());
        async move {
            let allocs = get(&http, &format!("{url}/v1/job/web/allocations"))
                .await
                .ok()?;
            let allocs = allocs.as_array()?.clone();
            let done = allocs.len() == 2 && allocs.iter().all(|a| a["ClientStatus"] == "complete");
            done.then_some(allocs)
        }
    })
    .await;
    let stopped = match stopped {
        Ok(stopped) => stopped,
        Err(e) => panic!("{e:#}\n{}", job_report(&http, &nomad_url).await),
    };
    for alloc in &stopped {
        let events = alloc["TaskStates"]["web"]["Events"].as_array().unwrap();
        let terminated = events
            .iter()
            .find(|e| e["Type"] == "Terminated")
            .unwrap_or_else(|| panic!("no Terminated event: {events:#?}"));
        let message = terminated["Message"].as_str().unwrap_or_default();
        if message.starts_with("executor: error waiting on process") {
            // Nomad lost the exit status: its executor went before it
            // reported the wait (hashicorp/nomad#24220, seen once in CI).
            // The task's own log still says whether it stopped gracefully.
            let id = alloc["ID"].as_str().unwrap();
            let log = kraken_testkit::get_text(&format!(
                "{nomad_url}/v1/client/fs/logs/{id}?task=web&type=stderr&plain=true&origin=start"
            ))
            .await;
            let stopping = log.find("SIGINT: stopping");
            let stopped = log.rfind("stopped");
            assert!(
                stopping.is_some() && stopped > stopping,
                "Nomad lost the exit status ({message}), and the task's log does not say it \
                 stopped on SIGINT:\n{log}"
            );
            continue;
        }
        assert_eq!(
            (&terminated["ExitCode"], &terminated["Signal"]),
            (&Value::from(0), &Value::from(0)),
            "exited by itself with 0, not killed: {terminated}"
        );
    }
    wait_for("web to leave Consul", CHECK_TIMEOUT, || {
        let (http, url) = (http.clone(), consul_url.clone());
        async move {
            let entries = get(&http, &format!("{url}/v1/health/service/web"))
                .await
                .ok()?;
            entries.as_array()?.is_empty().then_some(())
        }
    })
    .await
    .unwrap();
    eprintln!("web_job: done after {:?}", started.elapsed());
    // Dropped in reverse order: the Nomad clients first, so that they do not
    // spend their last moments retrying a server or agent that is gone.
}

/// The AWS variant is the same job with the Docker driver: the same
/// placement, network, service and check, per the real parser.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_variant_is_the_same_job() {
    // `-output` parses and prints the job without a server.
    let parse = |file: &'static str, var: &'static str| async move {
        let out = nomad_cli("http://127.0.0.1:1")
            .args(["job", "run", "-output", "-var", var, file])
            .output()
            .await
            .expect("run nomad job run -output");
        assert!(out.status.success(), "{file}: {}", text(&out));
        let job: Value = serde_json::from_slice(&out.stdout).unwrap();
        job["Job"].clone()
    };
    let local = parse(JOB, "web_binary=/opt/test/kraken-web").await;
    let docker = parse(DOCKER_JOB, "image=registry.example/kraken-web:1").await;

    for key in ["ID", "Type", "Datacenters"] {
        assert_eq!(local[key], docker[key], "{key}");
    }
    let (lg, dg) = (&local["TaskGroups"][0], &docker["TaskGroups"][0]);
    for key in ["Count", "Constraints", "Networks", "Services"] {
        assert_eq!(lg[key], dg[key], "group {key}");
    }
    let (lt, dt) = (&lg["Tasks"][0], &dg["Tasks"][0]);
    for key in ["Services", "Resources"] {
        assert_eq!(lt[key], dt[key], "task {key}");
    }
    assert_eq!(lg["Count"], 2);
    assert_eq!(lt["Services"][0]["Name"], "web");
    assert_eq!(lt["Services"][0]["Checks"][0]["Type"], "http");
    assert_eq!(lt["Services"][0]["Checks"][0]["Path"], "/health");

    assert_eq!(lt["Driver"], "raw_exec");
    assert_eq!(lt["Config"]["command"], "/opt/test/kraken-web");
    assert_eq!(dt["Driver"], "docker");
    assert_eq!(dt["Config"]["image"], "registry.example/kraken-web:1");
    assert_eq!(dt["Config"]["network_mode"], "host");
}

/// The kraken-web binary: `KRAKEN_WEB_BIN` (e.g. a release build), or the
/// one cargo builds now. Cargo cannot hand this package's tests another
/// package's binary (artifact dependencies are unstable), and a binary
/// found lying in the target dir could be stale; asking cargo builds it if
/// needed and says where it is.
fn web_bin() -> PathBuf {
    if let Some(path) = std::env::var_os("KRAKEN_WEB_BIN") {
        return PathBuf::from(path);
    }
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| env!("CARGO").into());
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let out = std::process::Command::new(cargo)
        .current_dir(&root)
        .args([
            "build",
            "-p",
            "kraken-web",
            "--bin",
            "kraken-web",
            "--message-format=json-render-diagnostics",
        ])
        .output()
        .expect("run cargo build -p kraken-web");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "cargo build -p kraken-web: {}\n{stderr}",
        out.status
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .filter(|m| m["reason"] == "compiler-artifact" && m["target"]["name"] == "kraken-web")
        .find_map(|m| m["executable"].as_str().map(PathBuf::from))
        .unwrap_or_else(|| panic!("cargo built no kraken-web executable:\n{stderr}"))
}

/// A Consul client agent joined to the server at `server`: a node's own
/// agent, which its Nomad client registers services with.
pub(crate) struct ConsulAgent {
    ip: Ipv4Addr,
    // Declared before the dir: the process dies before its dir goes.
    _peer: Peer,
    _dir: TestDir,
}

impl ConsulAgent {
    pub(crate) async fn start(name: &str, server: Ipv4Addr) -> ConsulAgent {
        let ip = LoopbackAddrs::allocate(1)[0];
        let dir = TestDir::new("consul-agent");
        let mut peer = PeerCommand::consul(name, dir.path())
            .args(["agent", "-log-level", "info", "-node", name, "-data-dir"])
            .arg(dir.path().join("data"))
            .args(["-bind", &ip.to_string(), "-client", &ip.to_string()])
            .args(["-retry-join", &server.to_string(), "-retry-interval", "1s"])
            .args(["-hcl", "disable_update_check = true"])
            .spawn();
        // The leader as the agent's own API reports it: it has joined.
        let url = format!("http://{ip}:{CONSUL_HTTP_PORT}/v1/status/leader");
        let http = http_client();
        let joined = wait_for(&format!("{name} to join {server}"), START_TIMEOUT, || {
            let exited = peer.check_running().err();
            let (http, url) = (http.clone(), url.clone());
            async move {
                if let Some(e) = exited {
                    return Some(Err(e));
                }
                match get(&http, &url).await {
                    Ok(Value::String(leader)) if !leader.is_empty() => Some(Ok(())),
                    _ => None,
                }
            }
        })
        .await;
        if let Err(e) = joined.and_then(|r| r) {
            panic!("consul agent {name} on {ip}: {e:#}");
        }
        ConsulAgent {
            ip,
            _peer: peer,
            _dir: dir,
        }
    }

    pub(crate) fn http_addr(&self) -> SocketAddr {
        (self.ip, CONSUL_HTTP_PORT).into()
    }
}

/// Appended to the testkit's client config. Nomad merges repeated blocks,
/// later values winning: this `consul` block points the client at its own
/// agent, where the testkit's points at nothing.
fn client_hcl(class: &str, consul: SocketAddr, ports: Option<(u16, u16)>) -> String {
    let ports = ports
        .map(|(min, max)| format!("  min_dynamic_port = {min}\n  max_dynamic_port = {max}\n"))
        .unwrap_or_default();
    format!(
        "client {{\n  node_class = \"{class}\"\n{ports}}}\nconsul {{\n  address = \"{consul}\"\n}}\n"
    )
}

/// Two disjoint ranges of 100 ports, at a random place in Nomad's default
/// dynamic range (20000-32000), which stays below the kernel's ephemeral
/// ports so no outgoing connection holds one; random, so that concurrent
/// runs of this test rarely meet.
fn port_ranges() -> ((u16, u16), (u16, u16)) {
    let window = (RandomState::new().build_hasher().finish() % 60) as u16;
    let base = 20_000 + window * 200;
    ((base, base + 99), (base + 100, base + 199))
}

/// The nomad CLI against `addr`, with none of the caller's `NOMAD_*`
/// settings (a token, a namespace) leaking in.
fn nomad_cli(addr: &str) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new(nomad_bin());
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("NOMAD_") {
            cmd.env_remove(key);
        }
    }
    cmd.env("NOMAD_ADDR", addr)
        .env_remove(OsStr::new("AWS_CA_BUNDLE"));
    cmd.kill_on_drop(true);
    cmd
}

async fn get(http: &reqwest::Client, url: &str) -> Result<Value, String> {
    let resp = http.get(url).send().await.map_err(|e| format!("{e:#}"))?;
    let status = resp.status();
    if !status.is_success() {
        return Err(format!("GET {url}: {status}"));
    }
    resp.json().await.map_err(|e| format!("GET {url}: {e:#}"))
}

/// What Nomad says about the job, for a failure message: why allocations
/// could not be placed, and what happened to each.
async fn job_report(http: &reqwest::Client, nomad: &str) -> String {
    let mut report = String::new();
    if let Ok(evals) = get(http, &format!("{nomad}/v1/job/web/evaluations")).await {
        for eval in evals.as_array().into_iter().flatten() {
            report += &format!(
                "evaluation {} {}: failed placements {}\n",
                eval["ID"], eval["Status"], eval["FailedTGAllocs"]
            );
        }
    }
    if let Ok(allocs) = get(http, &format!("{nomad}/v1/job/web/allocations")).await {
        for alloc in allocs.as_array().into_iter().flatten() {
            report += &format!(
                "allocation {} on {}: {} (desired {})\n",
                alloc["ID"], alloc["NodeName"], alloc["ClientStatus"], alloc["DesiredStatus"]
            );
            let events = alloc["TaskStates"]["web"]["Events"].as_array();
            for event in events.into_iter().flatten() {
                report += &format!("  {}: {}\n", event["Type"], event["DisplayMessage"]);
            }
        }
    }
    report
}
