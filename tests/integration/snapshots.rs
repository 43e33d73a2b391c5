//! Snapshots in S3 (moto's), on real Consul and Nomad: the leaders take
//! them on schedule and keep `retention` of them, `kraken-agent snapshot`
//! lists and saves them, and a fresh cluster restores the newest at its
//! bootstrap: KV data, an ACL token and a Nomad policy come back.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use crate::common::node::{CLUSTER, Node, boot_on};
use crate::common::{self, AwsEnv, TEST_KEY, sdk_for, text};
use kraken_hashi::Token;
use kraken_secrets::{SecretStore, names};
use kraken_testkit::{Moto, TestDir};

const BUCKET: &str = "kraken-snapshots-it";

fn settings(interval_secs: u64) -> String {
    format!(
        "\n[snapshots]\nbucket = \"{BUCKET}\"\nprefix = \"backups\"\ninterval_secs = \
         {interval_secs}\nretention = 2\nrestore_at_bootstrap = true\nforce_path_style = true\n\
         \n[docker]\nenabled = false\n"
    )
}

async fn s3(moto: &Moto) -> aws_sdk_s3::Client {
    let sdk = sdk_for(&moto.endpoint(), TEST_KEY).await;
    aws_sdk_s3::Client::from_conf(
        aws_sdk_s3::config::Builder::from(&sdk)
            .force_path_style(true)
            .build(),
    )
}

/// The keys under `backups/solo/<service>/`, oldest first.
async fn keys(s3: &aws_sdk_s3::Client, service: &str) -> Vec<String> {
    let listed = s3
        .list_objects_v2()
        .bucket(BUCKET)
        .prefix(format!("backups/{CLUSTER}/{service}/"))
        .send()
        .await
        .unwrap();
    let mut keys: Vec<String> = listed
        .contents()
        .iter()
        .filter_map(|o| o.key().map(str::to_owned))
        .collect();
    keys.sort();
    keys
}

async fn secret(node: &Node, name: &str) -> Token {
    let store = node.store().await;
    Token::new(store.get(name).await.unwrap().expect(name).expose())
}

fn json_of(out: &std::process::Output) -> serde_json::Value {
    assert!(out.status.success(), "{}", text(out));
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", text(out)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leaders_snapshot_on_schedule_and_a_fresh_cluster_restores_the_newest() {
    let moto = std::sync::Arc::new(Moto::start().await);
    let s3 = s3(&moto).await;
    s3.create_bucket().bucket(BUCKET).send().await.unwrap();

    // The first cluster: restore_at_bootstrap finds nothing and bootstraps.
    let first = boot_on(
        moto.clone(),
        "consul-server,nomad-server",
        Duration::ZERO,
        &settings(3),
    )
    .await;
    assert!(
        first
            .log()
            .contains("no Consul snapshot in s3://kraken-snapshots-it/backups/solo/consul/"),
        "{}",
        first.log()
    );
    let consul = first.consul(Some(secret(&first, names::CONSUL_INITIAL_MANAGEMENT).await));
    let nomad = first.nomad(Some(secret(&first, names::NOMAD_MANAGEMENT).await));
    consul.kv_put("app/config", b"version=1").await.unwrap();
    consul
        .acl_policy_ensure(
            "app-read",
            "the app's",
            r#"key_prefix "app/" { policy = "read" }"#,
        )
        .await
        .unwrap();
    let app_secret = Token::new("3c1e7a52-8f0e-4c0a-9d8e-2b7c4f1a6e01");
    let app = consul
        .acl_token_create(&app_secret, "the app's token", &["app-read"])
        .await
        .unwrap()
        .expect("a new token");
    nomad
        .acl_policy_upsert(
            "app-ops",
            "the app's operators",
            r#"namespace "default" { policy = "read" }"#,
        )
        .await
        .unwrap();
    let written = Instant::now();

    // The schedule: every 3 s on the leader (this node), 2 kept. Wait for
    // a third snapshot of each after the writes, so retention has deleted.
    let mut seen: [BTreeSet<String>; 2] = Default::default();
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        for (i, service) in ["consul", "nomad"].into_iter().enumerate() {
            let now = keys(&s3, service).await;
            // The newest is uploaded before the oldest is deleted (never
            // fewer than `retention` good ones): 3 for a moment.
            assert!(now.len() <= 3, "retention 2, {service} has {now:?}");
            seen[i].extend(now);
        }
        if seen.iter().all(|s| s.len() >= 4) && written.elapsed() > Duration::from_secs(10) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "snapshots seen {seen:?}\n{}",
            first.log()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    // Between rounds retention has deleted: 2 of each.
    for service in ["consul", "nomad"] {
        let until = Instant::now() + Duration::from_secs(10);
        loop {
            let now = keys(&s3, service).await;
            if now.len() <= 2 {
                break;
            }
            assert!(
                Instant::now() < until,
                "retention 2, {service} keeps {now:?}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    for (i, service) in ["consul", "nomad"].into_iter().enumerate() {
        let now = keys(&s3, service).await;
        let oldest = seen[i].iter().next().unwrap();
        assert!(
            !now.contains(oldest),
            "{service}: {oldest} was kept: {now:?}"
        );
        assert!(
            // prefix/cluster/service/2026-12-01T05:30:56.123Z.snap
            now.iter().all(|k| k.ends_with(".snap")
                && k.len() == format!("backups/{CLUSTER}/{service}/").len() + 24 + 5),
            "{now:?}"
        );
    }

    // The CLI: list (what S3 has, oldest first) and save.
    let listed = json_of(
        &first
            .command(&["snapshot", "list", "--service", "consul"])
            .output()
            .unwrap(),
    );
    let listed: Vec<&str> = listed["snapshots"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["key"].as_str().unwrap())
        .collect();
    assert!(
        (1..=2).contains(&listed.len()) && listed.is_sorted(),
        "{listed:?}"
    );
    assert!(
        listed.iter().all(|k| seen[0].contains(*k)),
        "{listed:?} not in {seen:?}"
    );
    let saved = json_of(
        &first
            .command(&["snapshot", "save", "--service", "nomad"])
            .output()
            .unwrap(),
    );
    let key = saved["saved"][0]["key"].as_str().unwrap().to_owned();
    assert!(key.starts_with("backups/solo/nomad/"), "{saved}");
    assert!(keys(&s3, "nomad").await.contains(&key), "{saved}");

    // The cluster is lost: its instance terminated, its data gone.
    let ec2 = common::ec2(&moto.endpoint()).await;
    ec2.terminate_instances()
        .instance_ids(&first.id)
        .send()
        .await
        .unwrap();
    drop((consul, nomad));
    drop(first);

    // A fresh cluster of the same name, on the same store and bucket.
    let second = boot_on(
        moto.clone(),
        "consul-server,nomad-server",
        Duration::ZERO,
        &settings(3600),
    )
    .await;
    let log = second.log();
    assert!(
        log.contains("restored consul from s3://kraken-snapshots-it/backups/solo/consul/"),
        "{log}"
    );
    assert!(
        log.contains("restored nomad from s3://kraken-snapshots-it/backups/solo/nomad/"),
        "{log}"
    );
    let consul = second.consul(Some(
        secret(&second, names::CONSUL_INITIAL_MANAGEMENT).await,
    ));
    let (pair, _) = consul.kv_get("app/config", None).await.unwrap();
    assert_eq!(pair.expect("app/config restored").value, b"version=1");
    // The token, read back from Consul with its own secret and by accessor.
    let own = second
        .consul(Some(app_secret.clone()))
        .acl_token_self()
        .await
        .unwrap();
    assert_eq!(
        own.expect("the app token is known again").accessor_id,
        app.accessor_id
    );
    let read = consul.acl_token_read(&app.accessor_id).await.unwrap();
    assert_eq!(read.description, "the app's token");
    // Nomad's state, read with the stored management token.
    let management = secret(&second, names::NOMAD_MANAGEMENT).await;
    let policy = common::node_http(second.dir.path(), "nomad")
        .get(format!("https://{}:4646/v1/acl/policy/app-ops", second.ip))
        .header("X-Nomad-Token", management.expose())
        .send()
        .await
        .unwrap();
    assert!(policy.status().is_success(), "{:?}\n{log}", policy.status());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_bucket_is_named_in_the_error() {
    let moto = Moto::start().await;
    let dir = TestDir::new("snapshot-bucket");
    let config = dir.path().join("agent.toml");
    std::fs::write(
        &config,
        "[snapshots]\nbucket = \"no-such-kraken-bucket\"\nforce_path_style = true\n",
    )
    .unwrap();
    let mut cmd = std::process::Command::new(common::agent_bin());
    // S3 alone at moto, through the SDK's service-specific variable: the
    // general endpoint leads nowhere.
    AwsEnv::new("http://127.0.0.1:9", "http://127.0.0.1:9").apply(&mut cmd);
    cmd.env("AWS_ENDPOINT_URL_S3", moto.endpoint())
        .env("AWS_REGION", common::REGION)
        .env("KRAKEN_CONFIG", &config)
        .args(["snapshot", "list", "--cluster", "solo"]);
    let out = cmd.output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(78), "{}", text(&out));
    assert!(
        err.contains("S3 bucket \"no-such-kraken-bucket\" does not exist")
            && err.contains("snapshots.bucket"),
        "{}",
        text(&out)
    );
}

/// After a restore, the snapshot's nodes whose instances EC2 no longer runs
/// are purged (their allocations rescheduled now, not after the five-minute
/// failover heartbeat TTL); a node whose instance runs is kept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_of_gone_instances_are_purged_after_a_restore() {
    use kraken_testkit::{NomadClient, NomadServer};
    let moto = Moto::start().await;
    let ec2 = common::ec2(&moto.endpoint()).await;
    let tagged = |cluster: &str| -> std::collections::BTreeMap<String, String> {
        [("kraken:cluster".to_owned(), cluster.to_owned())].into()
    };
    let (gone_id, _) = common::launch(&ec2, &tagged(CLUSTER), None).await;
    let (live_id, _) = common::launch(&ec2, &tagged(CLUSTER), None).await;
    let (other_id, _) = common::launch(&ec2, &tagged("other"), None).await;
    let calls = kraken_aws::ApiCalls::default();
    let sdk = sdk_for(&moto.endpoint(), TEST_KEY).await;
    let peers =
        kraken_discovery::Ec2Peers::new(kraken_aws::ec2_client(&sdk, &calls), calls.clone());
    // Another cluster's running instance is not this cluster's.
    let seen = peers
        .live(CLUSTER, &[live_id.clone(), other_id.clone()])
        .await
        .unwrap();
    assert_eq!(seen, [live_id.clone()].into());

    let server = NomadServer::start().await;
    let gone = NomadClient::start(&[server.rpc_addr()]).await;
    let live = NomadClient::start(&[server.rpc_addr()]).await;
    let http = reqwest::Client::new();
    let nomad = kraken_hashi::Nomad::new(&server.http_url(), None).unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    for (client, instance) in [(&gone, &gone_id), (&live, &live_id)] {
        let url = format!("{}/v1/client/metadata", client.http_url());
        let body = serde_json::json!({ "Meta": { "kraken.instance_id": instance } });
        let r = http.post(url).json(&body).send().await.unwrap();
        assert!(r.status().is_success(), "{:?}", r.text().await);
        // Dynamic meta reaches the servers in batches (up to 10 s).
        while nomad
            .node_meta(client.node_id())
            .await
            .unwrap()
            .get("kraken.instance_id")
            != Some(instance)
        {
            assert!(Instant::now() < deadline, "meta of {}", client.node_id());
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    // The old cluster's client is lost with its instance.
    ec2.terminate_instances()
        .instance_ids(&gone_id)
        .send()
        .await
        .unwrap();
    let gone_node = gone.node_id().to_owned();
    drop(gone);

    let purge = || kraken_agent::steps::snapshot::purge_gone_nodes(&nomad, &peers, CLUSTER);
    assert_eq!(purge().await, 1);
    let ids: Vec<String> = nomad
        .nodes()
        .await
        .unwrap()
        .into_iter()
        .map(|n| n.id)
        .collect();
    assert!(!ids.contains(&gone_node), "{ids:?}");
    assert!(ids.contains(&live.node_id().to_owned()), "{ids:?}");
    // Again: nothing more to purge, the live node stays.
    assert_eq!(purge().await, 0);
    assert!(calls.get() >= 3, "{} EC2 calls", calls.get());
}
