//! A rendered Nomad server and client, started by the agent's
//! start-and-wait logic, register over mTLS with their class and meta.

use std::net::Ipv4Addr;
use std::path::Path;
use std::time::Duration;

use super::support::{Processes, deadlines, render};
use crate::common::*;
use kraken_hashi::{Consul, Nomad, Token};
use kraken_start::{Action, ServiceStep, StartPlan, start_services};
use kraken_testkit::{ConsulDev, LoopbackAddrs, PeerCommand, TestDir};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rendered_nomad_server_and_client_register_with_class_and_meta() {
    // Nomad with TLS as rendered (mTLS on HTTP and RPC, servers proving
    // server.global.nomad); the test's Consul is a plain dev agent.
    let pki = TestPki::new("live");
    let consul = ConsulDev::start().await;
    let ips = LoopbackAddrs::allocate(2);
    let (server_ip, client_ip) = (ips[0], ips[1]);
    let sdir = TestDir::new("nomad-server-node");
    let cdir = TestDir::new("nomad-client-node");
    let server_tags = [
        ("kraken:cluster", "live"),
        ("kraken:roles", "nomad-server"),
        ("kraken:nomad-servers", "1"),
    ];
    let hostile = "a \"quoted\" ${value} %{x} \\ end";
    let client_tags = [
        ("kraken:cluster", "live"),
        ("kraken:roles", "nomad-client"),
        ("kraken:node-class", "edge"),
        ("kraken:meta:note", hostile),
    ];
    let s_out = render(
        sdir.path(),
        server_ip,
        &server_tags,
        &[consul.ip()],
        &[server_ip],
        &pki,
    );
    let c_out = render(
        cdir.path(),
        client_ip,
        &client_tags,
        &[consul.ip()],
        &[server_ip],
        &pki,
    );
    for (out, d) in [(&s_out, &sdir), (&c_out, &cdir)] {
        // The Consul integration points at the dev agent of this test.
        let path = out.join("nomad.hcl");
        let text = std::fs::read_to_string(&path)
            .unwrap()
            .replace(
                &format!("{}:8501", path_ip(d.path())),
                &consul.http_addr().to_string(),
            )
            .replace("ssl          = true", "ssl          = false");
        std::fs::write(&path, text).unwrap();
    }
    let server = Processes::new(vec![(
        "nomad.service",
        PeerCommand::nomad("nomad", sdir.path())
            .arg("agent")
            .arg(format!("-config={}", s_out.join("nomad.hcl").display())),
    )]);
    let client = Processes::new(vec![(
        "nomad.service",
        PeerCommand::nomad("nomad", cdir.path())
            .arg("agent")
            .arg(format!("-config={}", c_out.join("nomad.hcl").display())),
    )]);
    let consul_api = Consul::new(&consul.http_url(), None).unwrap();
    let nomad_api = |ip: Ipv4Addr, dir: &Path, token: Option<Token>| {
        Nomad::with_tls(
            &format!("https://{ip}:4646"),
            token,
            Some(&node_tls(dir, "nomad")),
        )
        .unwrap()
    };
    let server_api = nomad_api(server_ip, sdir.path(), None);
    let client_api = nomad_api(client_ip, cdir.path(), None);
    let plan = |server: bool| StartPlan {
        consul: ServiceStep {
            unit: "consul.service".into(),
            action: Action::Nothing,
        },
        consul_server: false,
        docker: None,
        nomad: Some(ServiceStep {
            unit: "nomad.service".into(),
            action: Action::Restart,
        }),
        nomad_server: server,
    };
    // Consul is the test's dev agent: "consul.service" is not ours to start.
    let with_consul = |p: &Processes| {
        p.running.lock().unwrap().insert(
            "consul.service".into(),
            PeerCommand::new("consul-placeholder", "sleep", Path::new("/tmp"))
                .arg("3600")
                .spawn(),
        );
    };
    with_consul(&server);
    with_consul(&client);
    let report = start_services(
        &server,
        &plan(true),
        &consul_api,
        &server_api,
        &deadlines(),
        &|_| {},
    )
    .await
    .unwrap();
    assert!(report.nomad_leader.is_some());
    start_services(
        &client,
        &plan(false),
        &consul_api,
        &client_api,
        &deadlines(),
        &|_| {},
    )
    .await
    .unwrap();

    // ACLs are on in what we render: bootstrap this test cluster to look.
    let http = node_http(sdir.path(), "nomad");
    let boot: serde_json::Value = http
        .put(format!("https://{server_ip}:4646/v1/acl/bootstrap"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let token = Token::new(boot["SecretID"].as_str().unwrap());
    let anonymous = server_api.nodes().await.unwrap_err();
    assert_eq!(anonymous.status(), Some(403), "{anonymous}");
    let admin = nomad_api(server_ip, sdir.path(), Some(token.clone()));
    let node = kraken_testkit::wait_for("client node ready", Duration::from_secs(90), || async {
        let nodes = admin.nodes().await.ok()?;
        nodes.into_iter().find(|n| n.status == "ready")
    })
    .await
    .unwrap();
    assert_eq!(node.node_class, "edge");
    let detail: serde_json::Value = http
        .get(format!("https://{server_ip}:4646/v1/node/{}", node.id))
        .header("X-Nomad-Token", token.expose())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        detail["Meta"]["note"], hostile,
        "the tag value arrives verbatim"
    );
    assert_eq!(detail["Meta"]["kraken.cluster"], "live");
    let members = admin.members().await.unwrap();
    assert_eq!(members.len(), 1);
    assert_eq!(members[0].status, "alive");

    // What a converged client asks every round (re-registration after its
    // servers were lost): its own node, by the id its Nomad keeps on
    // disk, through its own agent.
    let settings =
        kraken_settings::Settings::parse(&crate::common::node::settings(client_ip, cdir.path()))
            .unwrap();
    assert_eq!(
        kraken_agent::steps::start::own_nomad_node_id(&settings).as_deref(),
        Some(node.id.as_str()),
        "the id Nomad's client persisted is the one the servers list"
    );
    let through_client = nomad_api(client_ip, cdir.path(), Some(token.clone()));
    assert_eq!(
        kraken_agent::steps::start::nomad_knows_node(&settings, &through_client)
            .await
            .unwrap(),
        Some(true)
    );
    assert_eq!(
        through_client.node(&node.id).await.unwrap().unwrap().name,
        node.name
    );
    // The servers lost it (here: the id on disk is one they never saw).
    let id_file = cdir.path().join("nomad-data/client/client-id");
    std::fs::write(&id_file, "0b6c4e9e-9f5c-4c57-a8a4-6a1c2f0e7d31").unwrap();
    assert_eq!(
        kraken_agent::steps::start::nomad_knows_node(&settings, &through_client)
            .await
            .unwrap(),
        Some(false),
        "a leader, and no such node"
    );
    // Not an id: nothing is asked.
    std::fs::write(&id_file, "../../v1/acl/bootstrap").unwrap();
    assert_eq!(
        kraken_agent::steps::start::own_nomad_node_id(&settings),
        None
    );
    let anonymous_client = nomad_api(client_ip, cdir.path(), None);
    std::fs::write(&id_file, &node.id).unwrap();
    let refused = kraken_agent::steps::start::nomad_knows_node(&settings, &anonymous_client)
        .await
        .unwrap_err();
    assert_eq!(refused.status(), Some(403), "{refused}");
}

fn path_ip(dir: &Path) -> String {
    let node = std::fs::read_to_string(dir.join("agent.toml")).unwrap();
    node.lines()
        .find_map(|l| l.strip_prefix("client_addr = \""))
        .unwrap()
        .trim_end_matches('"')
        .to_owned()
}
