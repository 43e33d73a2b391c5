//! Rendered Consul servers started by the agent's start-and-wait logic:
//! three form a cluster a client joins, a lone one times out.

use std::net::Ipv4Addr;
use std::path::Path;
use std::time::Duration;

use super::support::{Processes, deadlines, render};
use crate::common::*;
use kraken_hashi::{Consul, Nomad};
use kraken_start::{Action, ServiceStep, StartPlan, start_services};
use kraken_testkit::{LoopbackAddrs, PeerCommand, TestDir};

fn consul_api(ip: Ipv4Addr, dir: &Path) -> Consul {
    Consul::with_tls(
        &format!("https://{ip}:8501"),
        None,
        Some(&node_tls(dir, "consul")),
    )
    .unwrap()
}

fn consul_plan() -> StartPlan {
    StartPlan {
        consul: ServiceStep {
            unit: "consul.service".into(),
            action: Action::Restart,
        },
        consul_server: true,
        docker: None,
        nomad: None,
        nomad_server: false,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rendered_configs_form_a_three_server_consul_cluster() {
    // With TLS as rendered: HTTPS only, every RPC caller presents a
    // certificate, servers must prove they are server.dc1.consul.
    let pki = TestPki::new("live");
    let ips = LoopbackAddrs::allocate(3);
    let dirs: Vec<TestDir> = (0..3).map(|_| TestDir::new("consul-node")).collect();
    let tags = [
        ("kraken:cluster", "live"),
        ("kraken:roles", "consul-server"),
    ];
    let mut managers = Vec::new();
    for (ip, dir) in ips.iter().zip(&dirs) {
        let out = render(dir.path(), *ip, &tags, &ips, &[], &pki);
        let cmd = PeerCommand::consul("consul", dir.path())
            .arg("agent")
            .arg(format!("-config-file={}", out.join("consul.hcl").display()));
        managers.push(Processes::new(vec![("consul.service", cmd)]));
    }
    let clients: Vec<Consul> = ips
        .iter()
        .zip(&dirs)
        .map(|(ip, dir)| consul_api(*ip, dir.path()))
        .collect();
    let nomad = Nomad::new("http://127.0.0.1:1", None).unwrap();
    // All three boot at once, as an autoscaling group does; each waits for
    // the leader the three of them elect.
    let (plan, deadlines) = (consul_plan(), deadlines());
    let start = |i: usize| {
        start_services(
            &managers[i],
            &plan,
            &clients[i],
            &nomad,
            &deadlines,
            &|_| {},
        )
    };
    let (r0, r1, r2) = tokio::join!(start(0), start(1), start(2));
    let results = [r0, r1, r2];
    let mut leaders = Vec::new();
    for r in results {
        let report = r.expect("start_services");
        assert_eq!(
            report.restarted,
            vec!["consul.service".to_owned()],
            "a new config (re)starts"
        );
        leaders.push(report.consul_leader.expect("leader"));
    }
    let peers = clients[0].raft_peers().await.unwrap();
    assert_eq!(peers.len(), 3, "{peers:?}");
    // Members need a token under default-deny ACLs; the Raft view above
    // and the leader every node agrees on do not.
    let leader = clients[0].leader().await.unwrap().unwrap();
    assert!(
        leaders.iter().all(|l| *l == leader),
        "{leaders:?} vs {leader}"
    );
    assert!(
        ips.iter().any(|ip| leader.starts_with(&ip.to_string())),
        "{leader}"
    );

    // A second run over a converged node starts nothing again.
    let mut plan = consul_plan();
    plan.consul.action = Action::Nothing;
    let again = start_services(
        &managers[0],
        &plan,
        &clients[0],
        &nomad,
        &deadlines,
        &|_| {},
    )
    .await
    .unwrap();
    assert_eq!(again.already_running, vec!["consul.service".to_owned()]);
    assert!(again.started.is_empty() && again.restarted.is_empty());

    // A Consul client (a Nomad client node's Consul) joins over TLS with
    // its consul-client certificate and reaches the leader through RPC.
    let cip = LoopbackAddrs::allocate(1)[0];
    let cdir = TestDir::new("consul-client-node");
    let out = render(
        cdir.path(),
        cip,
        &[("kraken:cluster", "live"), ("kraken:roles", "nomad-client")],
        &ips,
        &[],
        &pki,
    );
    let client_node = Processes::new(vec![(
        "consul.service",
        PeerCommand::consul("consul", cdir.path())
            .arg("agent")
            .arg(format!("-config-file={}", out.join("consul.hcl").display())),
    )]);
    let mut plan = consul_plan();
    plan.consul_server = false;
    let client_api = consul_api(cip, cdir.path());
    start_services(
        &client_node,
        &plan,
        &client_api,
        &nomad,
        &deadlines,
        &|_| {},
    )
    .await
    .unwrap();
    let seen = kraken_testkit::wait_for(
        "the client to see the leader",
        Duration::from_secs(60),
        || async { client_api.leader().await.ok().flatten() },
    )
    .await
    .unwrap();
    assert_eq!(seen, leader);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiting_server_times_out_with_what_it_saw() {
    let ips = LoopbackAddrs::allocate(3);
    let dir = TestDir::new("lonely");
    // Expects three servers; only this one ever starts.
    let out = render(
        dir.path(),
        ips[0],
        &[
            ("kraken:cluster", "live"),
            ("kraken:roles", "consul-server"),
        ],
        &ips,
        &[],
        &TestPki::new("live"),
    );
    let cmd = PeerCommand::consul("consul", dir.path())
        .arg("agent")
        .arg(format!("-config-file={}", out.join("consul.hcl").display()));
    let m = Processes::new(vec![("consul.service", cmd)]);
    let consul = consul_api(ips[0], dir.path());
    let nomad = Nomad::new("http://127.0.0.1:1", None).unwrap();
    let mut d = deadlines();
    d.leader = Duration::from_secs(5);
    let err = start_services(&m, &consul_plan(), &consul, &nomad, &d, &|_| {})
        .await
        .unwrap_err();
    let t = err.to_string();
    assert!(
        t.contains("a Consul Raft leader did not happen within 5s"),
        "{t}"
    );
}
