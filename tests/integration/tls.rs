//! The cluster PKI on a real node (Consul and Nomad servers with TLS on,
//! booted by `kraken-agent run`): who is refused, who is let in, and
//! certificates renewed without restarting anything.

use std::time::{Duration, Instant};

use crate::common::node::{Node, boot, boot_as, boot_with};
use crate::common::*;
use kraken_agent::steps::served;
use kraken_pki::{Authority, Ca, ClusterNames, Intermediate};
use kraken_render::Service;
use kraken_secrets::{SecretStore, names};

/// A client that trusts `ca_pem` only and presents `identity` (chain, key).
fn client(ca_pem: &str, identity: Option<(&str, &str)>) -> reqwest::Client {
    let mut b = reqwest::Client::builder()
        .no_proxy()
        .tls_info(true)
        .timeout(Duration::from_secs(5))
        .tls_certs_only(reqwest::Certificate::from_pem_bundle(ca_pem.as_bytes()).unwrap());
    if let Some((cert, key)) = identity {
        b = b.identity(reqwest::Identity::from_pem(format!("{cert}{key}").as_bytes()).unwrap());
    }
    b.build().unwrap()
}

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

fn read(node: &Node, path: &str) -> String {
    std::fs::read_to_string(node.dir.path().join(path)).unwrap()
}

/// The intermediate a role's node would read from the store.
async fn intermediate(node: &Node, authority: Authority) -> Intermediate {
    let store = node.store().await;
    let bundle = store
        .get(kraken_agent::steps::pki::secret_name(authority))
        .await
        .unwrap()
        .unwrap();
    Intermediate::from_bundle(bundle.expose(), "test").unwrap()
}

async fn refused(client: &reqwest::Client, url: &str) -> String {
    match client.get(url).send().await {
        Err(e) => format!("{e:?}"),
        Ok(r) => {
            assert!(
                !r.status().is_success(),
                "{url} answered {} to a caller it must refuse",
                r.status()
            );
            format!("HTTP {}", r.status())
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_refuses_plain_certless_and_foreign_callers_and_the_operator_env_works() {
    let node = boot(Duration::ZERO).await;
    let ip = node.ip;
    let consul_url = format!("https://{ip}:8501/v1/status/leader");
    let nomad_url = format!("https://{ip}:4646/v1/status/leader");
    let ca = read(&node, "consul.d/tls/ca.pem");
    assert_eq!(ca, read(&node, "nomad.d/tls/ca.pem"));

    // The agent's own clients (cluster CA, node certificate) get in.
    assert!(node.consul(None).leader().await.unwrap().is_some());
    assert!(node.nomad(None).leader().await.unwrap().is_some());
    let ok = client(
        &ca,
        Some((
            &read(&node, "consul.d/tls/consul.pem"),
            &read(&node, "consul.d/tls/consul-key.pem"),
        )),
    );
    assert!(
        ok.get(&consul_url)
            .send()
            .await
            .unwrap()
            .status()
            .is_success()
    );

    // Plain HTTP: the old port is closed, the TLS ports answer no request.
    let plain = kraken_testkit::http_client();
    let e = refused(&plain, &format!("http://{ip}:8500/v1/status/leader")).await;
    eprintln!("plain HTTP to Consul's old port: {e}");
    assert!(e.contains("ConnectionRefused"), "{e}");
    for url in [&consul_url, &nomad_url] {
        let e = refused(&plain, &url.replace("https://", "http://")).await;
        eprintln!("plain HTTP to {url}: {e}");
        assert_eq!(e, "HTTP 400 Bad Request");
    }

    // TLS without a client certificate: Nomad refuses it. Consul's HTTPS
    // asks for none (its callers, Nomad among them, prove themselves with
    // ACL tokens: docs/pki.md), and its ACLs refuse an anonymous caller
    // everything but what anonymous may do.
    let certless = client(&ca, None);
    let e = refused(&certless, &nomad_url).await;
    eprintln!("no client certificate, {nomad_url}: {e}");
    assert!(e.contains("CertificateRequired"), "{e}");
    let protected = format!("https://{ip}:8501/v1/acl/tokens");
    let e = refused(&certless, &protected).await;
    eprintln!("no client certificate nor token, {protected}: {e}");
    assert_eq!(e, "HTTP 403 Forbidden");

    // A certificate from another CA, with the right names.
    let names = ClusterNames {
        cluster: "solo".into(),
        consul_datacenter: "dc1".into(),
        consul_domain: "consul".into(),
        nomad_region: "global".into(),
    };
    let other = Ca::generate("solo", Duration::from_secs(3600)).unwrap();
    for (authority, url) in [
        (Authority::ConsulServer, &protected),
        (Authority::NomadServer, &nomad_url),
    ] {
        let i = other.issue_intermediate(authority, &names).unwrap();
        let leaf = i
            .issue(
                &authority.permitted_names(&names),
                &[ip.into()],
                Duration::from_secs(600),
            )
            .unwrap();
        let foreign = client(&ca, Some((&leaf.chain_pem, &leaf.key_pem)));
        let e = refused(&foreign, url).await;
        eprintln!("certificate of another CA, {url}: {e}");
        if authority == Authority::NomadServer {
            assert!(e.contains("UnknownCA"), "{e}");
        } else {
            assert_eq!(e, "HTTP 403 Forbidden");
        }
    }

    // A Nomad client's intermediate cannot make a Nomad server certificate:
    // the PKI refuses, and a forged one (signed without the check) is
    // refused by Nomad, because the intermediate's name constraints do not
    // permit the name.
    let client_ca = intermediate(&node, Authority::NomadClient).await;
    let server_names = vec!["server.global.nomad".to_owned()];
    let err = client_ca
        .issue(&server_names, &[ip.into()], Duration::from_secs(600))
        .unwrap_err();
    assert!(
        matches!(err, kraken_pki::PkiError::NotPermitted { .. }),
        "{err}"
    );
    let forged = client_ca
        .issue_unchecked(&server_names, &[ip.into()], Duration::from_secs(600))
        .unwrap();
    let e = refused(
        &client(&ca, Some((&forged.chain_pem, &forged.key_pem))),
        &nomad_url,
    )
    .await;
    eprintln!("forged server.global.nomad from the nomad-client intermediate: {e}");
    assert!(e.contains("BadCertificate"), "{e}");
    // The same intermediate's honest certificate is let in: the refusal
    // above is the constraint, not the intermediate.
    let honest = client_ca
        .issue(
            &["client.global.nomad".to_owned()],
            &[],
            Duration::from_secs(600),
        )
        .unwrap();
    let r = client(&ca, Some((&honest.chain_pem, &honest.key_pem)))
        .get(&nomad_url)
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{}", r.status());

    // A person logged in: source the operator environment, then the CLIs.
    let store = node.store().await;
    let consul_token = store
        .get(names::CONSUL_INITIAL_MANAGEMENT)
        .await
        .unwrap()
        .unwrap();
    let nomad_token = store.get(names::NOMAD_MANAGEMENT).await.unwrap().unwrap();
    let env_file = node.dir.path().join("kraken-env.sh");
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(&env_file).unwrap().permissions(),
    );
    assert_eq!(mode & 0o777, 0o644);
    for (cli, args, token_var, token) in [
        (
            kraken_testkit::consul_bin(),
            "members",
            "CONSUL_HTTP_TOKEN",
            consul_token.expose(),
        ),
        (
            kraken_testkit::nomad_bin(),
            "server members",
            "NOMAD_TOKEN",
            nomad_token.expose(),
        ),
    ] {
        let out = std::process::Command::new("bash")
            .arg("-c")
            .arg(format!(
                ". {}; {} {args}",
                env_file.display(),
                cli.display()
            ))
            .env_remove("AWS_CA_BUNDLE")
            .env(token_var, token)
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && stdout.contains("alive"),
            "{} {args} with the operator environment: {}\n{stdout}{}",
            cli.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }

    // Key files are not world-readable.
    for key in ["consul.d/tls/consul-key.pem", "nomad.d/tls/nomad-key.pem"] {
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(node.dir.path().join(key))
                .unwrap()
                .permissions(),
        );
        assert_eq!(mode & 0o777, 0o640, "{key}");
    }
}

/// The serial of the certificate `url`'s server presents now.
async fn served_serial(client: &reqwest::Client, url: &str) -> String {
    let r = client.get(url).send().await.unwrap();
    let info = r.extensions().get::<reqwest::tls::TlsInfo>().unwrap();
    let der = info.peer_certificate().unwrap();
    kraken_pki::inspect_der(der, url).unwrap().serial
}

fn pid(node: &Node, unit: &str) -> String {
    read(node, &format!("{unit}.pid")).trim().to_owned()
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
                "Name": "t", "Driver": "raw_exec",
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
    assert_eq!(pid(&node, "consul.service"), consul_pid);
    assert_eq!(pid(&node, "nomad.service"), nomad_pid);
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_role_token_stays_revoked_and_a_rotated_one_reaches_its_holders() {
    let node = boot_with(Duration::ZERO, "\n[bootstrap]\ntoken_check_secs = 2\n").await;
    let store = node.store().await;
    let management = store
        .get(names::CONSUL_INITIAL_MANAGEMENT)
        .await
        .unwrap()
        .unwrap();
    let admin = node.consul(Some(kraken_hashi::Token::new(management.expose())));
    let as_token =
        |s: &kraken_secrets::Secret| node.consul(Some(kraken_hashi::Token::new(s.expose())));
    let agent = store.get(names::CONSUL_AGENT).await.unwrap().unwrap();
    let before = as_token(&agent).acl_token_self().await.unwrap().unwrap();
    assert_eq!(before.expiration_time, None, "role tokens do not expire");
    let consul_pid = pid(&node, "consul.service");
    let config = || read(&node, "consul.d/consul.hcl");
    assert!(config().contains(agent.expose()));

    // Someone deletes the agent token in Consul on purpose: it stays
    // deleted, however many checks pass, and the agent says so.
    admin.acl_token_delete(&before.accessor_id).await.unwrap();
    tokio::time::sleep(Duration::from_secs(8)).await;
    assert_eq!(as_token(&agent).acl_token_self().await.unwrap(), None);
    assert!(
        node.log().contains("was deleted and stays deleted"),
        "{}",
        node.log()
    );

    // The documented way to replace it: delete the stored secret. A Consul
    // server makes a new one and its token; every holder picks it up and
    // reloads (no restart).
    let started = Instant::now();
    store.delete(names::CONSUL_AGENT).await.unwrap();
    let rotated = kraken_testkit::wait_for(
        "a new agent secret, known to Consul and in the node's config",
        Duration::from_secs(60),
        || async {
            let Ok(Some(new)) = store.get(names::CONSUL_AGENT).await else {
                return None;
            };
            let known = matches!(as_token(&new).acl_token_self().await, Ok(Some(_)));
            (known && config().contains(new.expose())).then_some(new)
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", node.log()));
    assert_ne!(rotated, agent);
    assert!(!config().contains(agent.expose()));
    eprintln!(
        "benchmark: rotated agent token in the config {:?} after its secret was deleted",
        started.elapsed()
    );

    // A rotation by overwrite while the old token still works: the new one
    // is made, and the old one deleted once every holder had time (two
    // check periods) to read the new secret.
    let old = as_token(&rotated).acl_token_self().await.unwrap().unwrap();
    let newest = kraken_secrets::Secret::random_token();
    store.put(names::CONSUL_AGENT, &newest).await.unwrap();
    kraken_testkit::wait_until(
        "the overwritten secret's token to exist and the old one to be gone",
        Duration::from_secs(60),
        || async {
            matches!(as_token(&newest).acl_token_self().await, Ok(Some(_)))
                && config().contains(newest.expose())
                && matches!(as_token(&rotated).acl_token_self().await, Ok(None))
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", node.log()));
    assert!(matches!(
        admin.acl_token_read(&old.accessor_id).await,
        Err(e) if e.status() == Some(403) || e.status() == Some(404)
    ));
    // Consul took every new token by reload: same process.
    assert_eq!(pid(&node, "consul.service"), consul_pid);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nomad_client_reads_only_its_own_intermediates_and_cannot_issue_a_server_certificate() {
    // IAM is what keeps pki/nomad-server and pki/ca from a Nomad client's
    // instance role (docs/secrets.md). moto checks every SSM call against
    // the resource "*", so it cannot show a per-parameter policy: this test
    // shows what the agent asks for, and that the one intermediate it gets
    // cannot make a server certificate.
    let moto = kraken_testkit::Moto::start().await;
    let settings = kraken_settings::Settings::default();
    let spec = |roles: &str| {
        kraken_intent::NodeSpec::from_tags(
            &tags(&[("kraken:cluster", "roles"), ("kraken:roles", roles)]),
            &settings.intent,
        )
        .unwrap()
    };
    let mode = kraken_agent::steps::secrets::SecretsMode::Boot;
    let store = moto_store(&moto.endpoint(), "roles", TEST_KEY).await;
    let server =
        kraken_agent::steps::pki::authorities(&store, &spec("consul-server"), &settings, mode)
            .await
            .unwrap()
            .unwrap();
    assert_eq!(
        server.consul.permitted(),
        ["server.dc1.consul", "localhost"]
    );

    let client =
        kraken_agent::steps::pki::authorities(&store, &spec("nomad-client"), &settings, mode)
            .await
            .unwrap()
            .unwrap();
    assert_eq!(
        client.consul.permitted(),
        ["client.dc1.consul", "localhost"]
    );
    let nomad = client.nomad.unwrap();
    assert_eq!(nomad.permitted(), ["client.global.nomad", "localhost"]);
    for name in [
        "server.global.nomad",
        "server.dc1.consul",
        "x.server.global.nomad",
    ] {
        let err = nomad
            .issue(&[name.to_owned()], &[], Duration::from_secs(600))
            .unwrap_err();
        assert!(err.to_string().contains("may not issue"), "{err}");
        let err = client
            .consul
            .issue(&[name.to_owned()], &[], Duration::from_secs(600))
            .unwrap_err();
        assert!(err.to_string().contains("may not issue"), "{err}");
    }
    // What each role reads: nothing that can sign for a server.
    assert_eq!(
        kraken_agent::steps::pki::consul_authority(&spec("nomad-client")),
        Authority::ConsulClient
    );
    assert_eq!(
        kraken_agent::steps::pki::nomad_authority(&spec("nomad-client")),
        Some(Authority::NomadClient)
    );
}
