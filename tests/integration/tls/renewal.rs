//! Certificates renewed under a running node, without restarting anything.

use std::time::{Duration, Instant};

use super::node_files::{pid, read};
use crate::common::node::{Node, boot_as};
use crate::common::*;
use kraken_agent::steps::served;
use kraken_render::Service;
use kraken_secrets::{SecretStore, names};

/// A client with `service`'s certificate and key as on disk now. The agent
/// renames the new key into place just before the new certificate: a
/// reader that lands between the two reads again, as a CLI would on its
/// next call.
async fn node_client(node: &Node, ca: &str, service: &str) -> reqwest::Client {
    for _ in 0..20 {
        let cert = read(node, &format!("{service}.d/tls/{service}.pem"));
        let key = read(node, &format!("{service}.d/tls/{service}-key.pem"));
        let mut b = reqwest::Client::builder()
            .no_proxy()
            .tls_info(true)
            .timeout(Duration::from_secs(5))
            .tls_certs_only(reqwest::Certificate::from_pem_bundle(ca.as_bytes()).unwrap());
        b = b.identity(reqwest::Identity::from_pem(format!("{cert}{key}").as_bytes()).unwrap());
        if let Ok(c) = b.build() {
            return c;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("{service}'s certificate and key never matched");
}

/// The serial of the certificate `url`'s server presents now.
async fn served_serial(client: &reqwest::Client, url: &str) -> String {
    let r = client.get(url).send().await.unwrap();
    let info = r.extensions().get::<reqwest::tls::TlsInfo>().unwrap();
    let der = info.peer_certificate().unwrap();
    kraken_pki::inspect_der(der, url).unwrap().serial
}

/// A Nomad job whose one task serves HTTP on a dynamic port, registered
/// in Consul by Nomad with an HTTP check.
fn probe_job(name: &str) -> serde_json::Value {
    serde_json::json!({ "Job": {
        "ID": name, "Name": name, "Type": "service", "Datacenters": ["dc1"],
        "TaskGroups": [{
            "Name": "g", "Count": 1,
            "Networks": [{ "DynamicPorts": [{ "Label": "http" }] }],
            "Services": [{
                "Name": name, "PortLabel": "http", "Provider": "consul",
                "Checks": [{
                    "Name": "http", "Type": "http", "Path": "/",
                    "Interval": 1_000_000_000u64, "Timeout": 1_000_000_000u64,
                }],
            }],
            "Tasks": [{
                // The clients refuse raw_exec tasks as root (docs/iam.md).
                "Name": "t", "Driver": "raw_exec", "User": "nobody",
                "Config": {
                    "command": "/usr/bin/env",
                    "args": ["python3", "-m", "http.server", "${NOMAD_PORT_http}",
                             "--bind", "${NOMAD_IP_http}"],
                },
            }],
        }],
    }})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_renew_for_three_lifetimes_and_reach_every_port_and_nomads_link() {
    // One-minute certificates, renewed at two thirds of their life (the
    // default): a renewal every 40 s, the test through three lifetimes. A
    // Nomad client too: its link to Consul is what broke when Consul's
    // certificate renewed under it.
    let node = boot_as(
        "consul-server,nomad-server,nomad-client",
        Duration::ZERO,
        "\n[tls]\nleaf_lifetime_secs = 60\n\n[docker]\nenabled = false\n",
    )
    .await;
    let calls_at_ready = read(&node, "calls.log").len();
    let ip = node.ip;
    let consul_pid = pid(&node, "consul.service");
    let nomad_pid = pid(&node, "nomad.service");
    let ca = read(&node, "consul.d/tls/ca.pem");
    let url = |port: u16| format!("https://{ip}:{port}/v1/status/leader");
    let serial_of = |file: &str| {
        kraken_pki::inspect(&read(&node, file), file)
            .unwrap()
            .serial
    };
    let settings = kraken_settings::Settings::load(&node.config).unwrap();
    let spec =
        kraken_intent::NodeSpec::from_tags(&node.imds.instance_data().tags, &settings.intent)
            .unwrap();
    let store = node.store().await;
    let nomad_token = store.get(names::NOMAD_MANAGEMENT).await.unwrap().unwrap();
    let nomad_api = node_http(node.dir.path(), "nomad");
    let consul = node.consul(Some(kraken_hashi::Token::new(
        store
            .get(names::CONSUL_INITIAL_MANAGEMENT)
            .await
            .unwrap()
            .unwrap()
            .expose(),
    )));

    let mut seen = vec![(
        serial_of("consul.d/tls/consul.pem"),
        serial_of("nomad.d/tls/nomad.pem"),
    )];
    let mut requests = 0;
    let mut failures = Vec::new();
    let started = Instant::now();
    while seen.len() < 5 && started.elapsed() < Duration::from_secs(300) {
        // Requests all along, as the cluster's callers would make them.
        for (service, port) in [("consul", 8501), ("nomad", 4646)] {
            let c = node_client(&node, &ca, service).await;
            requests += 1;
            match c.get(url(port)).send().await {
                Ok(r) if r.status().is_success() => {}
                Ok(r) => failures.push(format!("{service}: HTTP {}", r.status())),
                Err(e) => failures.push(format!("{service}: {e:?}")),
            }
        }
        let now = (
            serial_of("consul.d/tls/consul.pem"),
            serial_of("nomad.d/tls/nomad.pem"),
        );
        let last = seen.last().unwrap().clone();
        if now.0 == last.0 || now.1 == last.1 {
            tokio::time::sleep(Duration::from_millis(250)).await;
            continue;
        }
        seen.push(now);
        let renewal = seen.len() - 1;
        // Every TLS port serves the new certificate: Consul's HTTPS, gRPC
        // and RPC, Nomad's HTTPS and RPC.
        kraken_testkit::wait_until(
            "every port to serve the renewed certificates",
            Duration::from_secs(15),
            || async {
                let mut ports = served::check(Service::Consul, &settings, &spec, ip).await;
                ports.extend(served::check(Service::Nomad, &settings, &spec, ip).await);
                ports.len() == 5 && ports.iter().all(|p| p.current)
            },
        )
        .await
        .unwrap_or_else(|e| panic!("renewal {renewal}: {e}\n{}", node.log()));
        // And Nomad still registers services in Consul, which checks them.
        let job = format!("probe-{renewal}");
        nomad_api
            .post(format!("https://{ip}:4646/v1/jobs"))
            .header("X-Nomad-Token", nomad_token.expose())
            .json(&probe_job(&job))
            .send()
            .await
            .unwrap()
            .error_for_status()
            .unwrap();
        kraken_testkit::wait_until(
            "Nomad's service to pass its Consul check",
            Duration::from_secs(60),
            || async {
                consul.node_checks(&node.id).await.is_ok_and(|c| {
                    c.iter()
                        .any(|c| c.service_name == job && c.status == "passing")
                })
            },
        )
        .await
        .unwrap_or_else(|e| {
            panic!(
                "renewal {renewal}: {e}\n{}",
                read(&node, "nomad.service.log")
            )
        });
        nomad_api
            .delete(format!("https://{ip}:4646/v1/job/{job}?purge=true"))
            .header("X-Nomad-Token", nomad_token.expose())
            .send()
            .await
            .unwrap()
            .error_for_status()
            .unwrap();
        eprintln!(
            "renewal {renewal} at {:?}: every port current, {job} passing",
            started.elapsed()
        );
    }
    assert_eq!(
        seen.len(),
        5,
        "four renewals of both certificates (three lifetimes): {seen:?}\n{}",
        node.log()
    );

    // The processes never restarted: every renewal was a reload.
    let why = || format!("{}\n{}", read(&node, "calls.log"), node.log());
    assert_eq!(pid(&node, "consul.service"), consul_pid, "{}", why());
    assert_eq!(pid(&node, "nomad.service"), nomad_pid, "{}", why());
    let calls = read(&node, "calls.log")[calls_at_ready..].to_owned();
    assert!(
        calls.matches("reload consul.service").count() >= 4,
        "{calls}"
    );
    assert!(
        calls.matches("reload nomad.service").count() >= 4,
        "{calls}"
    );
    assert!(
        !calls.contains("restart"),
        "nothing restarted after READY: {calls}"
    );
    // Nomad never lost Consul (what it logged when its certificate expired).
    let nomad_log = read(&node, "nomad.service.log");
    for bad in [
        "expired certificate",
        "failed to acquire consul self endpoint",
    ] {
        assert!(
            !nomad_log.contains(bad),
            "Nomad logged {bad:?}:\n{nomad_log}"
        );
    }
    // What the sockets serve now is the newest certificate.
    let (consul_serial, nomad_serial) = seen.last().unwrap().clone();
    let c = node_client(&node, &ca, "consul").await;
    let n = node_client(&node, &ca, "nomad").await;
    assert_eq!(served_serial(&c, &url(8501)).await, consul_serial);
    assert_eq!(served_serial(&n, &url(4646)).await, nomad_serial);
    let reloads: Vec<String> = node
        .log()
        .lines()
        .filter(|l| l.contains("Reloaded") || l.contains("still serving"))
        .map(str::to_owned)
        .collect();
    eprintln!(
        "benchmark: renewal: {requests} requests during {:?}, {} failed: {failures:?}; {reloads:#?}",
        started.elapsed(),
        failures.len()
    );
    assert!(
        failures.is_empty(),
        "requests failed during renewal: {failures:?}"
    );
}
