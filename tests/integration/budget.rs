//! The account-wide budget, measured (docs/benchmarks.md, "EC2 and SSM
//! calls at scale"): 200 agents' discovery and secret reads, the real code
//! in one process, each with its own EC2 and SSM clients, call counters and
//! budget, against moto holding 1,000 instances and the clusters' secrets;
//! their calls per node in each phase must be the figures the projection
//! multiplies.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use aws_sdk_ec2::types::{ResourceType, Tag, TagSpecification};
use std::net::Ipv4Addr;

use kraken_agent::steps::discovery::{discover_until_enough, usable_published};
use kraken_agent::steps::follow::{Follow, Via};
use kraken_agent::steps::published::{self, Published};
use kraken_agent::steps::secrets::{self, SecretsMode};
use kraken_agent::steps::{pki, tokens};
use kraken_bootstrap::{ROLE_TOKENS, State, TokenRecord, sha256_hex};
use kraken_discovery::{Backoff, Budgeted, Ec2Peers};
use kraken_hashi::Consul;
use kraken_intent::NodeSpec;
use kraken_render::RenderSecrets;
use kraken_secrets::{Secret, SecretStore, Store, names};
use kraken_settings::Settings;
use kraken_testkit::{ConsulDev, Moto, http_client};

use crate::common::*;

/// 1,000 instances: 25 clusters of 40 (3 servers, 37 clients), each in a
/// VPC of its own. moto looks tags up by scanning every tag it holds, so a
/// query costs it time in proportion to the instances in the queried VPC
/// times all instances: 200 instances a VPC made each call take a second.
const CLUSTERS: usize = 25;
const INSTANCES_PER_CLUSTER: i32 = 40;
/// 200 agents, 8 a cluster: in the first 5 clusters its 3 servers and 5
/// clients, elsewhere 8 clients.
const AGENTS_PER_CLUSTER: usize = 8;
const CLUSTERS_WITH_SERVER_AGENTS: usize = 5;
const SERVERS: &str = "consul-server,nomad-server";
/// The servers' published list: fresh in clusters 0-19, written 4 h ago
/// (its writer gone: not trusted) in 20-22, absent in 23 and 24.
const FRESH_LISTS: usize = 20;
const STALE_LISTS: usize = 23;

fn cluster_tags(cluster: &str, roles: &str) -> BTreeMap<String, String> {
    tags(&[("kraken:cluster", cluster), ("kraken:roles", roles)])
}

/// `count` instances with these tags in one RunInstances call; their ids
/// and private addresses.
async fn run(
    ec2: &aws_sdk_ec2::Client,
    subnet: &str,
    t: &BTreeMap<String, String>,
    count: i32,
) -> Vec<(String, Ipv4Addr)> {
    let spec = t.iter().fold(
        TagSpecification::builder().resource_type(ResourceType::Instance),
        |s, (k, v)| s.tags(Tag::builder().key(k).value(v).build()),
    );
    let out = ec2
        .run_instances()
        .image_id("ami-12c6146b")
        .subnet_id(subnet)
        .min_count(count)
        .max_count(count)
        .tag_specifications(spec.build())
        .send()
        .await
        .unwrap();
    out.instances()
        .iter()
        .map(|i| {
            (
                i.instance_id().unwrap().to_owned(),
                i.private_ip_address().unwrap().parse().unwrap(),
            )
        })
        .collect()
}

/// A cluster's secrets as its first servers and the bootstrap leave them
/// (the real boot code makes the keys, the CA and the intermediates), and
/// its servers' published list written `age` ago, if any.
async fn running_cluster(
    cluster: &str,
    store: &Store,
    settings: &Settings,
    servers: &[(String, Ipv4Addr)],
    age: Option<u64>,
) {
    let first = NodeSpec::from_tags(&cluster_tags(cluster, SERVERS), &settings.intent).unwrap();
    secrets::secrets(store, &first, "i-first", settings, SecretsMode::Boot)
        .await
        .unwrap();
    pki::authorities(store, &first, settings, SecretsMode::Boot)
        .await
        .unwrap()
        .unwrap();
    let made = ROLE_TOKENS
        .map(|(name, _, _)| name)
        .into_iter()
        .chain([names::NOMAD_MANAGEMENT, names::NOMAD_AGENT]);
    for name in made {
        store.create(name, &Secret::random_token()).await.unwrap();
    }
    if let Some(age) = age {
        let ips: std::collections::BTreeSet<Ipv4Addr> = servers.iter().map(|s| s.1).collect();
        let list = Published {
            consul_servers: ips.clone(),
            nomad_servers: ips,
            instances: servers.iter().map(|s| s.0.clone()).collect(),
            written_unix: published::now_unix() - age,
        };
        let body = Secret::new(serde_json::to_string(&list).unwrap());
        store.put(names::SERVERS, &body).await.unwrap();
    }
}

/// The bootstrap state as it records `held`: what a converged node's token
/// check compares its tokens with.
fn state_recording(held: &RenderSecrets) -> State {
    let mut state = State::default();
    let record = |s: &Secret| TokenRecord {
        accessor: "a".into(),
        secret_sha256: sha256_hex(s.expose()),
    };
    let agent = held.consul_agent.as_ref().unwrap();
    state
        .tokens
        .insert(names::CONSUL_AGENT.into(), record(agent));
    let nomad = held.nomad_consul.as_ref().unwrap();
    for name in [names::CONSUL_NOMAD_CLIENT, names::CONSUL_NOMAD_SERVER] {
        state.tokens.insert(name.into(), record(nomad));
    }
    state
}

struct Node {
    cluster: usize,
    /// The node's name (an instance id): clients read their own Consul
    /// token by it.
    name: String,
    spec: NodeSpec,
    ec2: Budgeted<Ec2Peers>,
    follow: Follow,
    store: Store,
    ssm: kraken_aws::ApiCalls,
    held: RenderSecrets,
    boot_ec2: u64,
}

impl Node {
    fn calls(&self) -> u64 {
        self.ec2.inner().api_calls()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_agents_make_the_projected_calls() {
    let t0 = Instant::now();
    let moto = Moto::start().await;
    let ec2 = ec2(&moto.endpoint()).await;
    let (mut servers_of, mut subnets, mut vpcs) = (Vec::new(), Vec::new(), Vec::new());
    for c in 0..CLUSTERS {
        let name = format!("c{c}");
        let subnet = loopback_subnet(&ec2, 100 + c as u8, 1).await;
        servers_of.push(run(&ec2, &subnet, &cluster_tags(&name, SERVERS), 3).await);
        let clients = cluster_tags(&name, "nomad-client");
        run(&ec2, &subnet, &clients, INSTANCES_PER_CLUSTER - 3).await;
        vpcs.push(vpc_of(&ec2, &servers_of[c][0].0).await);
        subnets.push(subnet);
    }
    let launched = t0.elapsed();
    eprintln!("budget: 1,000 instances launched in {launched:?}");

    // The settings as shipped, but for a server refresh short enough to
    // see several in the test's steady state.
    let mut settings = Settings::default();
    settings.discovery.server_refresh_secs = 2;
    let sdk = sdk_for(&moto.endpoint(), TEST_KEY).await;
    for (c, servers) in servers_of.iter().enumerate() {
        let store = moto_store(&moto.endpoint(), &format!("c{c}"), TEST_KEY).await;
        let age = match c {
            _ if c < FRESH_LISTS => Some(0),
            _ if c < STALE_LISTS => Some(4 * 3600),
            _ => None,
        };
        running_cluster(&format!("c{c}"), &store, &settings, servers, age).await;
    }
    eprintln!("budget: the clusters' secrets made at {:?}", t0.elapsed());
    let node = |roles: &str, c: usize, i: usize| {
        let calls = kraken_aws::ApiCalls::default();
        let t = cluster_tags(&format!("c{c}"), roles);
        let spec = NodeSpec::from_tags(&t, &settings.intent).unwrap();
        let ssm = kraken_aws::ApiCalls::default();
        Node {
            cluster: c,
            name: format!("i-{c:04}{i:04}"),
            store: Store::from_settings(&settings.secrets, &format!("c{c}"), &sdk, &ssm).unwrap(),
            ssm,
            held: RenderSecrets::default(),
            boot_ec2: 0,
            follow: Follow::new(&spec, &settings, &Default::default()),
            spec,
            ec2: Budgeted::new(
                Ec2Peers::new(kraken_aws::ec2_client(&sdk, &calls), calls)
                    .in_vpc(Some(vpcs[c].clone())),
                kraken_agent::tuning::call_budget(&settings),
            ),
        }
    };
    let mut nodes: Vec<Node> = (0..CLUSTERS)
        .flat_map(|c| {
            let servers = if c < CLUSTERS_WITH_SERVER_AGENTS {
                3
            } else {
                0
            };
            (0..AGENTS_PER_CLUSTER)
                .map(|i| node(if i < servers { SERVERS } else { "nomad-client" }, c, i))
                .collect::<Vec<_>>()
        })
        .collect();
    assert_eq!(nodes.len(), 200);
    // Each cluster's node-token key, as its first Consul server's step 3
    // creates it: every node's own Consul agent token is derived from it
    // (`steps::node_tokens`), nothing per node is stored.
    for c in 0..CLUSTERS {
        let store = moto_store(&moto.endpoint(), &format!("c{c}"), TEST_KEY).await;
        store
            .get_or_create(names::NODE_TOKEN_KEY, Secret::gossip_key)
            .await
            .unwrap();
    }

    // Boot into running clusters, as `run` does it: step 3's secrets and
    // intermediates and a client's published server list in one batch,
    // then the servers from that list or from EC2.
    let booted = Instant::now();
    let poll = kraken_agent::tuning::discovery_poll(&settings);
    let mut set = tokio::task::JoinSet::new();
    for mut n in nodes.drain(..) {
        let settings = settings.clone();
        set.spawn(async move {
            let batch = secrets::boot_names(&n.spec, &settings);
            let batch: Vec<&str> = batch.iter().map(String::as_str).collect();
            let view = n.store.snapshot(&batch).await.unwrap();
            n.held = secrets::secrets(&view, &n.spec, &n.name, &settings, SecretsMode::Boot)
                .await
                .unwrap();
            if kraken_agent::steps::node_tokens::has_own_token(&n.spec) {
                // Its own agent token is derived; the configs carry it once
                // Consul knows it (`tokens::fetch`, which reads nothing
                // more from the store: the key is in the batch).
                let own = secrets::own_agent_token(&view, &n.spec, &n.name).await;
                n.held.consul_agent = own.unwrap();
                assert!(tokens::has_role_tokens(&n.spec, &n.held));
            } else {
                assert!(tokens::has_role_tokens(&n.spec, &n.held));
            }
            let authorities = pki::authorities(&view, &n.spec, &settings, SecretsMode::Boot)
                .await
                .unwrap();
            assert!(authorities.is_some_and(|a| a.nomad.is_some()));
            let list = published::read_at_boot(&view, &batch).await;
            let peers = match usable_published(list.as_ref(), &n.spec) {
                Some(peers) => peers,
                None => {
                    let mut backoff = Backoff::new(Duration::from_secs(1), Duration::from_secs(2));
                    discover_until_enough(&n.ec2, &n.spec, poll, &mut backoff, &|_| {})
                        .await
                        .unwrap()
                }
            };
            assert_eq!(peers.consul_servers.len(), 3);
            n.follow = Follow::new(&n.spec, &settings, &peers);
            n
        });
    }
    nodes = set.join_all().await;
    for n in nodes.iter_mut() {
        n.boot_ec2 = n.calls();
    }
    let boot_ssm: Vec<u64> = nodes.iter().map(|n| n.ssm.get()).collect();
    assert!(boot_ssm.iter().all(|c| *c == 1), "boot, SSM: {boot_ssm:?}");
    // EC2: clients with a fresh list none; servers, and clients whose list
    // is stale or absent, one.
    for n in &nodes {
        let want = u64::from(is_server(n) || n.cluster >= FRESH_LISTS);
        assert_eq!(n.calls(), want, "{:?} in c{}", n.spec.roles, n.cluster);
    }
    let boot_calls: Vec<u64> = nodes.iter().map(Node::calls).collect();
    let from_list = nodes.iter().filter(|n| n.calls() == 0).count();
    let boot_time = booted.elapsed();
    eprintln!(
        "budget: 200 agents booted in {boot_time:?}: {} SSM transactions, {} DescribeInstances \
         ({from_list} clients from the published list)",
        boot_ssm.iter().sum::<u64>(),
        boot_calls.iter().sum::<u64>()
    );

    // Converged: ten refresh periods (500 ms here). Clients follow Consul
    // (one real agent stands for each node's own, with Nomad registered as
    // it registers itself), servers ask EC2 every 2 s ± a quarter.
    // One agent serves 200 nodes here: Consul's default limit of 200 HTTP
    // connections per client address would refuse some of them.
    let consul_agent =
        ConsulDev::start_with_args(&["-hcl", "limits { http_max_conns_per_client = 1000 }"]).await;
    let registered = http_client()
        .put(format!(
            "{}/v1/agent/service/register",
            consul_agent.http_url()
        ))
        .json(&serde_json::json!({
            "Name": "nomad", "ID": "nomad-rpc", "Tags": ["rpc"],
            "Address": consul_agent.ip().to_string(), "Port": 4647,
        }))
        .send()
        .await
        .unwrap();
    assert!(registered.status().is_success());
    let consul = Consul::new(&consul_agent.http_url(), None).unwrap();
    let (steady, periods, period) = (Instant::now(), 10u64, Duration::from_millis(500));
    for _ in 0..periods {
        let mut set = tokio::task::JoinSet::new();
        for mut n in nodes.drain(..) {
            let consul = consul.clone();
            set.spawn(async move {
                let round = n.follow.refresh(&n.spec, &consul, &n.ec2).await.unwrap();
                let want = if is_server(&n) { Via::Ec2 } else { Via::Consul };
                if let Some((_, via)) = round
                    && via != want
                {
                    let why = kraken_agent::steps::follow::from_consul(&consul, &n.spec).await;
                    panic!("{via:?} for {:?}: {why:?}", n.spec.roles);
                }
                n
            });
        }
        nodes = set.join_all().await;
        tokio::time::sleep(period).await;
    }
    let window = steady.elapsed();
    let servers: Vec<&Node> = nodes.iter().filter(|n| is_server(n)).collect();
    let client_steady: u64 = nodes
        .iter()
        .filter(|n| !is_server(n))
        .map(|n| n.calls() - n.boot_ec2)
        .sum();
    assert_eq!(client_steady, 0, "converged clients ask no EC2");
    // A server: one call per 1.5 to 2.5 s, the first a period after boot,
    // and at most one per round: on a busy machine (moto slower) rounds
    // take longer and every round finds the refresh due.
    let per_server: Vec<u64> = servers.iter().map(|n| n.calls() - n.boot_ec2).collect();

    // A token check, as the watch loop makes it: a server reads its own
    // tokens and, on a Consul server, the role tokens the upkeep checks, in
    // one batch; a client compares its tokens with the bootstrap state's
    // digests and reads nothing.
    let (mut server_checks, mut client_checks) = (0u64, 0u64);
    for n in nodes.iter_mut() {
        let before = n.ssm.get();
        if is_server(n) {
            let view = n
                .store
                .snapshot(&tokens::check_names(&n.spec))
                .await
                .unwrap();
            for own in [names::CONSUL_SERVER, names::NOMAD_AGENT] {
                assert!(view.get(own).await.unwrap().is_some());
            }
            let role = view
                .get_many(&ROLE_TOKENS.map(|(name, _, _)| name))
                .await
                .unwrap();
            assert!(role.iter().all(Option::is_some));
            let mut held = n.held.clone();
            let changed = tokens::refresh(&view, &n.spec, &n.name, None, &mut held, None).await;
            assert!(!changed.unwrap(), "nothing rotated");
            server_checks += n.ssm.get() - before;
            assert_eq!(n.ssm.get() - before, 1, "a server's check: one transaction");
        } else {
            let state = state_recording(&n.held);
            let mut held = n.held.clone();
            tokens::refresh(&n.store, &n.spec, &n.name, None, &mut held, Some(&state))
                .await
                .unwrap();
            client_checks += n.ssm.get() - before;
        }
    }
    assert_eq!(client_checks, 0, "converged clients read nothing");
    let most = ((window.as_secs_f64() / 1.5).ceil() as u64).min(periods);
    // The refresh is seen due only at a round's start: calls are up to a
    // round late, which on a busy machine (rounds of ~2 s) is most of a
    // period.
    let round = window.as_secs_f64() / periods as f64;
    let least = ((window.as_secs_f64() / (2.5 + round)).floor() as u64)
        .saturating_sub(1)
        .min(periods - 1);
    assert!(
        per_server.iter().all(|c| (least..=most).contains(c)),
        "servers in {window:?}: {per_server:?}"
    );

    // A server replaced in c0: the new one asks once; nobody else asks more
    // than their refresh would.
    ec2.terminate_instances()
        .instance_ids(&servers_of[0][0].0)
        .send()
        .await
        .unwrap();
    run(&ec2, &subnets[0], &cluster_tags("c0", SERVERS), 1).await;
    let replacement = node(SERVERS, 0, AGENTS_PER_CLUSTER);
    let mut backoff = Backoff::new(Duration::from_secs(1), Duration::from_secs(2));
    let peers = discover_until_enough(
        &replacement.ec2,
        &replacement.spec,
        poll,
        &mut backoff,
        &|_| {},
    )
    .await
    .unwrap();
    assert_eq!(peers.consul_servers.len(), 3);
    assert_eq!(replacement.calls(), 1, "the replacement asks once");
    nodes.push(replacement);

    let total: u64 = nodes.iter().map(Node::calls).sum();
    let servers_total: u64 = per_server.iter().sum();
    eprintln!(
        "budget: 1,000 instances launched in {launched:?}; 200 agents booted in {boot_time:?} \
         with {} SSM transactions (1 each) and {} DescribeInstances ({from_list} clients from \
         the published list: 0); {periods} periods of {period:?} converged: clients 0, {} \
         servers {servers_total} ({per_server:?}) in {window:?}; a token check: {} servers \
         {server_checks} SSM transactions, clients {client_checks}; a server replaced: 1; \
         {total} calls in all; test {:?}",
        boot_ssm.iter().sum::<u64>(),
        boot_calls.iter().sum::<u64>(),
        per_server.len(),
        per_server.len(),
        t0.elapsed()
    );
}

fn is_server(n: &Node) -> bool {
    kraken_agent::steps::follow::is_server(&n.spec)
}
