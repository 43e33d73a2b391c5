//! Who is refused and who is let in, and what a role's node can issue.

use std::time::Duration;

use super::node_files::read;
use crate::common::node::{Node, boot};
use crate::common::*;
use kraken_pki::{Authority, Ca, ClusterNames, Intermediate};
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

    // Key files are not world-readable, nor readable by group root (the
    // test node's services run as root:root; kraken_render::private_mode).
    for key in ["consul.d/tls/consul-key.pem", "nomad.d/tls/nomad-key.pem"] {
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(node.dir.path().join(key))
                .unwrap()
                .permissions(),
        );
        assert_eq!(mode & 0o777, 0o600, "{key}");
    }
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
