//! A converged node's servers (`steps::follow`) against real Consul and
//! moto: a client asks Consul, never EC2, until it has lost every server;
//! then it asks EC2, through its call budget. A server asks EC2 only when
//! its jittered refresh is due.

use std::time::{Duration, Instant};

use kraken_agent::steps::follow::{Follow, Via};
use kraken_discovery::{Budgeted, CallBudget, Ec2Peers};
use kraken_hashi::Consul;
use kraken_intent::NodeSpec;
use kraken_settings::Settings;
use kraken_testkit::{ConsulCluster, Moto, http_client};

use crate::common::*;
use crate::web_job::ConsulAgent;

const CLUSTER: &str = "follow";

fn spec(roles: &str) -> NodeSpec {
    let t = tags(&[("kraken:cluster", CLUSTER), ("kraken:roles", roles)]);
    NodeSpec::from_tags(&t, &Default::default()).unwrap()
}

/// EC2 as a node's agent reaches it: its VPC, its own call counter, a
/// budget of 3 back to back then one a second.
async fn ec2_peers(moto: &Moto, vpc: &str) -> Budgeted<Ec2Peers> {
    let calls = kraken_aws::ApiCalls::default();
    let sdk = sdk_for(&moto.endpoint(), TEST_KEY).await;
    Budgeted::new(
        Ec2Peers::new(kraken_aws::ec2_client(&sdk, &calls), calls).in_vpc(Some(vpc.into())),
        CallBudget::new(3, Duration::from_secs(1), Instant::now()),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_converged_client_asks_consul_until_every_server_is_lost() {
    let mut servers = ConsulCluster::start(1).await;
    let server_ip = servers.ip(0);
    let moto = Moto::start().await;
    let ec2 = ec2(&moto.endpoint()).await;
    let [_, b, c, _] = server_ip.octets();
    let subnet = loopback_subnet(&ec2, b, c).await;
    let server_tags = tags(&[
        ("kraken:cluster", CLUSTER),
        ("kraken:roles", "consul-server,nomad-server"),
    ]);
    let (id, _) = launch(&ec2, &server_tags, Some((&subnet, server_ip))).await;
    let vpc = vpc_of(&ec2, &id).await;

    // The client's own agent, joined; the Nomad server registered as Nomad
    // registers itself (service `nomad`, tag `rpc`).
    let agent = ConsulAgent::start("follow-client", server_ip).await;
    let url = format!("http://{}", agent.http_addr());
    let registered = http_client()
        .put(format!("{url}/v1/agent/service/register"))
        .json(&serde_json::json!({
            "Name": "nomad", "ID": "nomad-rpc", "Tags": ["rpc"],
            "Address": server_ip.to_string(), "Port": 4647,
        }))
        .send()
        .await
        .unwrap();
    assert!(registered.status().is_success(), "{registered:?}");
    let consul = Consul::new(&url, None).unwrap();
    let source = ec2_peers(&moto, &vpc).await;
    let client = spec("nomad-client");
    let mut follow = Follow::new(&client, &Settings::default(), &Default::default());

    // Ten refresh periods (shortened): Consul each time, EC2 never.
    for round in 0..10 {
        let (peers, via) = follow
            .refresh(&client, &consul, &source)
            .await
            .unwrap()
            .expect("a client always has an answer");
        assert_eq!(via, Via::Consul, "round {round}");
        assert_eq!(
            peers.consul_servers.iter().collect::<Vec<_>>(),
            [&server_ip]
        );
        assert_eq!(peers.nomad_servers.iter().collect::<Vec<_>>(), [&server_ip]);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(
        source.inner().api_calls(),
        0,
        "a converged client asks no EC2"
    );

    // Every server lost: the next rounds ask EC2, one call each, and find
    // the server EC2 still lists.
    servers.stop_server(0);
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut ec2_rounds = 0u64;
    while ec2_rounds < 3 {
        assert!(
            Instant::now() < deadline,
            "still following Consul 30 s after the loss"
        );
        let (peers, via) = follow
            .refresh(&client, &consul, &source)
            .await
            .unwrap()
            .unwrap();
        if via == Via::Ec2 {
            ec2_rounds += 1;
            assert_eq!(
                peers.consul_servers.iter().collect::<Vec<_>>(),
                [&server_ip]
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(source.inner().api_calls(), ec2_rounds);
}

/// Consul servers of the cluster in moto, and EC2 as one of them reaches
/// it; Consul is never asked on a server: nothing listens at `consul`.
struct Servers {
    _moto: Moto,
    ec2: aws_sdk_ec2::Client,
    tags: std::collections::BTreeMap<String, String>,
    source: Budgeted<Ec2Peers>,
    consul: Consul,
}

impl Servers {
    async fn launch(n: usize) -> Servers {
        let moto = Moto::start().await;
        let ec2 = ec2(&moto.endpoint()).await;
        let tags = tags(&[
            ("kraken:cluster", CLUSTER),
            ("kraken:roles", "consul-server"),
        ]);
        let (id, _) = launch(&ec2, &tags, None).await;
        for _ in 1..n {
            launch(&ec2, &tags, None).await;
        }
        let vpc = vpc_of(&ec2, &id).await;
        let source = ec2_peers(&moto, &vpc).await;
        Servers {
            _moto: moto,
            ec2,
            tags,
            source,
            consul: Consul::new("http://127.0.0.1:1", None).unwrap(),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_converged_server_asks_ec2_when_its_jittered_refresh_is_due() {
    let servers = Servers::launch(3).await;
    let (source, consul) = (&servers.source, &servers.consul);
    let server = spec("consul-server");
    let mut settings = Settings::default();
    settings.discovery.server_refresh_secs = 1;
    let booted = kraken_agent::steps::discovery::discover(source, &server)
        .await
        .unwrap();
    assert_eq!(booted.consul_servers.len(), 3, "a complete view");
    let mut follow = Follow::new(&server, &settings, &booted);
    let (started, window) = (Instant::now(), Duration::from_secs(5));
    let mut answers = 0;
    while started.elapsed() < window {
        if let Some((peers, via)) = follow.refresh(&server, consul, source).await.unwrap() {
            assert_eq!((via, peers.consul_servers.len()), (Via::Ec2, 3));
            answers += 1;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Every 0.75 to 1.25 s over 5 s, the first a period after converging
    // (the boot's own query is the first call).
    let calls = source.inner().api_calls() - 1;
    assert_eq!(calls, answers);
    assert!((3..=6).contains(&calls), "{calls} EC2 calls in {window:?}");
}

/// A server that started before its expected peers existed (it needs only
/// one server to start) asks on every round until its view is complete,
/// then once a refresh period.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_started_early_asks_every_round_until_its_view_is_complete() {
    let servers = Servers::launch(1).await;
    let (source, consul) = (&servers.source, &servers.consul);
    let server = spec("consul-server");
    let mut settings = Settings::default();
    settings.discovery.server_refresh_secs = 3600;
    let mut backoff =
        kraken_discovery::Backoff::new(Duration::from_millis(100), Duration::from_millis(200));
    // Alone in EC2, and started all the same.
    let booted = kraken_agent::steps::discovery::discover_until_enough(
        source,
        &server,
        Duration::from_millis(100),
        &mut backoff,
        &|_| {},
    )
    .await
    .unwrap();
    assert_eq!(booted.consul_servers.len(), 1);
    let mut follow = Follow::new(&server, &settings, &booted);
    // Short: every round asks.
    for round in 0..3 {
        let (peers, via) = follow
            .refresh(&server, consul, source)
            .await
            .unwrap()
            .unwrap_or_else(|| panic!("round {round}: no query with a short view"));
        assert_eq!((via, peers.consul_servers.len()), (Via::Ec2, 1));
    }
    for _ in 0..2 {
        launch(&servers.ec2, &servers.tags, None).await;
    }
    let (peers, _) = follow
        .refresh(&server, consul, source)
        .await
        .unwrap()
        .expect("still short before this round");
    assert_eq!(peers.consul_servers.len(), 3);
    // Complete: quiet until the (hour-long) refresh period.
    for _ in 0..3 {
        assert!(
            follow
                .refresh(&server, consul, source)
                .await
                .unwrap()
                .is_none()
        );
    }
    assert_eq!(source.inner().api_calls(), 5);
}
