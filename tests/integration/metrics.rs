//! Metrics on a real node (`docs/operations.md`, Metrics): Consul's and
//! Nomad's Prometheus endpoints behind their TLS and ACLs, the scraper's
//! read-only token the bootstrap makes, and the agent's own exporter, whose
//! values follow what the agent does.

use std::time::{Duration, Instant};

use crate::common::node::{Node, boot_as};
use kraken_pki::Authority;
use kraken_secrets::{SecretStore, names};

fn read(node: &Node, path: &str) -> String {
    std::fs::read_to_string(node.dir.path().join(path)).unwrap()
}

/// A client that trusts the cluster CA and presents `identity`.
fn https(ca: &str, identity: Option<(&str, &str)>) -> reqwest::Client {
    let mut b = reqwest::Client::builder()
        .no_proxy()
        .tls_info(true)
        .timeout(Duration::from_secs(5))
        .tls_certs_only(reqwest::Certificate::from_pem_bundle(ca.as_bytes()).unwrap());
    if let Some((cert, key)) = identity {
        b = b.identity(reqwest::Identity::from_pem(format!("{cert}{key}").as_bytes()).unwrap());
    }
    b.build().unwrap()
}

/// The value of the sample `name{labels...}` (each of `labels` among its
/// labels), if the exposition has it.
fn value(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    text.lines().filter(|l| !l.starts_with('#')).find_map(|l| {
        let (series, v) = l.rsplit_once(' ')?;
        let (n, rest) = series.split_once('{').unwrap_or((series, ""));
        (n == name
            && labels
                .iter()
                .all(|(k, want)| rest.contains(&format!("{k}=\"{want}\""))))
        .then(|| v.parse().ok())?
    })
}

/// Whether the exposition has a sample whose name starts with `prefix`.
fn has_prefix(text: &str, prefix: &str) -> bool {
    text.lines()
        .any(|l| !l.starts_with('#') && l.starts_with(prefix))
}

async fn scrape_agent(address: &str) -> String {
    let r = kraken_testkit::http_client()
        .get(format!("http://{address}/metrics"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let kind = r.headers()["content-type"].to_str().unwrap().to_owned();
    assert!(kind.starts_with("application/openmetrics-text"), "{kind}");
    r.text().await.unwrap()
}

/// The Unix time the certificate `url`'s server presents expires.
async fn served_not_after(client: &reqwest::Client, url: &str) -> u64 {
    let r = client.get(url).send().await.unwrap();
    let info = r.extensions().get::<reqwest::tls::TlsInfo>().unwrap();
    let der = info.peer_certificate().unwrap();
    let info = kraken_pki::inspect_der(der, url).unwrap();
    info.not_after
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consul_nomad_and_the_agent_serve_metrics_to_the_scraper_only() {
    // One-minute certificates (a renewal at 40 s), the token check every
    // 2 s, the exporter on a free loopback port.
    let node = boot_as(
        "consul-server,nomad-server",
        Duration::ZERO,
        "\n[tls]\nleaf_lifetime_secs = 60\n\n[bootstrap]\ntoken_check_secs = 2\n\
         \n[metrics]\naddress = \"127.0.0.1:0\"\n",
    )
    .await;
    let started = Instant::now();
    let ip = node.ip;
    let ca = read(&node, "consul.d/tls/ca.pem");
    let status: serde_json::Value = serde_json::from_str(&read(&node, "run/status.json")).unwrap();
    let exporter = status["steps"]["metrics"]["address"]
        .as_str()
        .unwrap()
        .to_owned();

    // The scraper's token: made by the bootstrap's Consul phase, stored,
    // known to Consul, and not expiring.
    let store = node.store().await;
    let token = loop {
        if let Some(t) = store.get(names::CONSUL_METRICS).await.unwrap()
            && let Ok(Some(known)) = node
                .consul(Some(kraken_hashi::Token::new(t.expose())))
                .acl_token_self()
                .await
        {
            assert_eq!(known.expiration_time, None, "the scraper's token expires");
            break t;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "no scraper token after 60 s\n{}",
            node.log()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    eprintln!("scraper token ready {:?} after READY", started.elapsed());

    // Consul: the token reads the metrics, anonymous is refused, and the
    // token can write nothing.
    let certless = https(&ca, None);
    let consul_metrics = format!("https://{ip}:8501/v1/agent/metrics?format=prometheus");
    let anonymous = certless.get(&consul_metrics).send().await.unwrap();
    assert_eq!(anonymous.status(), 403, "anonymous scrape of Consul");
    let r = certless
        .get(&consul_metrics)
        .header("X-Consul-Token", token.expose())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let consul = r.text().await.unwrap();
    for name in [
        "consul_runtime_alloc_bytes",
        "consul_runtime_num_goroutines",
    ] {
        assert!(value(&consul, name, &[]).is_some(), "{name} in Consul's");
    }
    assert!(
        has_prefix(&consul, "consul_raft_"),
        "consul_raft_* in\n{consul}"
    );
    // Service discovery (consul_sd_configs) reads the catalog with it.
    let catalog = certless
        .get(format!("https://{ip}:8501/v1/catalog/services"))
        .header("X-Consul-Token", token.expose())
        .send()
        .await
        .unwrap();
    assert_eq!(catalog.status(), 200);
    let body = catalog.text().await.unwrap();
    assert!(body.contains("\"nomad\""), "{body}");
    let write = certless
        .put(format!("https://{ip}:8501/v1/kv/metrics-test"))
        .header("X-Consul-Token", token.expose())
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(write.status(), 403, "the scraper's token wrote to KV");

    // Nomad: no ACL on /v1/metrics, so TLS is the gate: no client
    // certificate, no answer; one of the cluster CA's, the metrics.
    let nomad_metrics = format!("https://{ip}:4646/v1/metrics?format=prometheus");
    let e = format!(
        "{:?}",
        certless.get(&nomad_metrics).send().await.unwrap_err()
    );
    assert!(e.contains("CertificateRequired"), "{e}");
    let bundle = store
        .get(kraken_agent::steps::pki::secret_name(
            Authority::NomadClient,
        ))
        .await
        .unwrap()
        .unwrap();
    let intermediate = kraken_pki::Intermediate::from_bundle(bundle.expose(), "test").unwrap();
    let leaf = intermediate
        .issue(
            &["client.global.nomad".to_owned()],
            &[],
            Duration::from_secs(600),
        )
        .unwrap();
    let scraper = https(&ca, Some((&leaf.chain_pem, &leaf.key_pem)));
    let r = scraper.get(&nomad_metrics).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let nomad = r.text().await.unwrap();
    for name in ["nomad_runtime_alloc_bytes", "nomad_runtime_num_goroutines"] {
        assert!(value(&nomad, name, &[]).is_some(), "{name} in Nomad's");
    }
    assert!(
        has_prefix(&nomad, "nomad_raft_"),
        "nomad_raft_* in\n{nomad}"
    );

    // The agent's exporter: every series, with the values of what it did.
    // The bootstrap counted every step of both phases on this lone node,
    // the scraper's token among them.
    let first = scrape_agent(&exporter).await;
    for phase in [
        kraken_bootstrap::Phase::Consul,
        kraken_bootstrap::Phase::Nomad,
    ] {
        let steps = kraken_bootstrap::Step::ALL
            .iter()
            .filter(|s| s.phase() == phase)
            .count();
        let label = format!("{phase:?}").to_lowercase();
        assert_eq!(
            value(&first, "kraken_bootstrap_steps_total", &[("phase", &label)]),
            Some(steps as f64),
            "{label} steps\n{first}"
        );
    }
    let version = env!("CARGO_PKG_VERSION");
    assert_eq!(
        value(&first, "kraken_agent", &[("version", version)]),
        Some(1.0)
    );
    let consul_pem = node.dir.path().join("consul.d/tls/consul.pem");
    let consul_pem = consul_pem.display().to_string();
    let cert = [("service", "consul"), ("file", consul_pem.as_str())];
    let consul_url = format!("https://{ip}:8501/v1/status/leader");
    let expiry = value(&first, "kraken_certificate_expiry_timestamp_seconds", &cert).unwrap();
    let served = served_not_after(&certless, &consul_url).await;
    let remaining = value(&first, "kraken_certificate_remaining_seconds", &cert).unwrap();
    eprintln!("consul.pem expires at {expiry} ({remaining} s left); served {served}");
    if expiry as u64 == served {
        assert!((0.0..=60.0).contains(&remaining), "{remaining}");
    } else {
        // Renewed between the scrape and the request: the served one is
        // the next.
        assert!(served > expiry as u64, "{served} vs {expiry}");
    }
    for phase in ["consul", "nomad"] {
        let labels = [("phase", phase), ("event", "held")];
        assert_eq!(
            value(&first, "kraken_bootstrap_lease_total", &labels),
            Some(1.0)
        );
        assert!(value(&first, "kraken_bootstrap_steps_total", &[("phase", phase)]).unwrap() >= 1.0);
    }
    let converged = value(&first, "kraken_converged_timestamp_seconds", &[]).unwrap();
    assert!(converged > 1.7e9, "{converged}");
    for (service, operation) in [("ssm", "GetParameters"), ("ec2", "DescribeInstances")] {
        let labels = [("service", service), ("operation", operation)];
        assert!(value(&first, "kraken_aws_calls_total", &labels).unwrap() >= 1.0);
        assert!(value(&first, "kraken_aws_errors_total", &labels).is_some());
    }
    assert!(
        value(
            &first,
            "kraken_service_actions_total",
            &[("service", "consul")]
        )
        .is_some(),
        "{first}"
    );

    // Then, as the agent works: a renewal increments the counter and the
    // expiry becomes the new served certificate's; the token checks read
    // SSM; the watch rounds go on.
    let renewals = |t: &str| {
        value(
            t,
            "kraken_certificate_renewals_total",
            &[("service", "consul")],
        )
        .unwrap_or(0.0)
    };
    let ssm = |t: &str| {
        value(
            t,
            "kraken_aws_calls_total",
            &[("service", "ssm"), ("operation", "GetParameters")],
        )
        .unwrap()
    };
    let before = renewals(&first);
    let deadline = Instant::now() + Duration::from_secs(90);
    let later = loop {
        let now = scrape_agent(&exporter).await;
        if renewals(&now) > before {
            break now;
        }
        assert!(
            Instant::now() < deadline,
            "no renewal counted in 90 s\n{now}"
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
    };
    let new_expiry = value(&later, "kraken_certificate_expiry_timestamp_seconds", &cert).unwrap();
    assert!(new_expiry > expiry, "{new_expiry} vs {expiry}");
    // The agent reloads Consul after the new files: the port serves the
    // renewed certificate within a round or two.
    let served_deadline = Instant::now() + Duration::from_secs(20);
    // A new client each time: a pooled connection keeps its first handshake.
    while served_not_after(&https(&ca, None), &consul_url).await != new_expiry as u64 {
        assert!(
            Instant::now() < served_deadline,
            "Consul never served the renewed certificate"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert!(ssm(&later) > ssm(&first), "token checks read SSM");
    assert!(
        value(&later, "kraken_watch_round_timestamp_seconds", &[]).unwrap()
            >= value(&first, "kraken_watch_round_timestamp_seconds", &[]).unwrap_or(0.0)
    );
    let last = scrape_agent(&exporter).await;
    let reloaded = [("service", "consul"), ("outcome", "reloaded")];
    assert!(value(&last, "kraken_service_actions_total", &reloaded).unwrap() >= 1.0);
    eprintln!("metrics test done {:?} after READY", started.elapsed());
}
