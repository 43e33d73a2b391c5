//! `kraken-agent doctor` on a real node: healthy, then broken in each way
//! this stack is known for; each time doctor must name it, with the hint.

use std::time::Duration;

use crate::common::node::{Node, boot};
use crate::common::*;
use kraken_hashi::{Consul, Token};
use kraken_secrets::SecretStore;

use serde_json::Value;

fn doctor(node: &Node) -> (i32, Vec<Value>) {
    let out = node.command(&["doctor", "--json"]).output().unwrap();
    let doc: Value =
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", text(&out)));
    let code = out.status.code().unwrap();
    assert_eq!(doc["exit_status"], code, "{doc}");
    (code, doc["checks"].as_array().unwrap().clone())
}

fn check<'a>(checks: &'a [Value], name: &str) -> &'a Value {
    checks
        .iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no {name} check in {checks:#?}"))
}

fn oom_kills_since_boot() -> u64 {
    std::fs::read_to_string("/proc/vmstat")
        .unwrap()
        .lines()
        .find_map(|l| {
            l.strip_prefix("oom_kill ")
                .map(|n| n.trim().parse().unwrap())
        })
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn doctor_reports_a_healthy_node_then_names_each_injected_fault() {
    let node = boot(Duration::ZERO).await;
    let started = std::time::Instant::now();
    let (code, checks) = doctor(&node);
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "doctor took {:?}",
        started.elapsed()
    );
    // The host's own OOM history is real: doctor must report it as it is.
    let oom_expected = if oom_kills_since_boot() == 0 {
        "ok"
    } else {
        "warn"
    };
    for c in &checks {
        let want = if c["name"] == "oom" {
            oom_expected
        } else {
            "ok"
        };
        assert_eq!(c["level"], want, "{c:#}");
    }
    assert_eq!(code, if oom_expected == "ok" { 0 } else { 1 });
    // What a person sees (docs/operations.md shows this output).
    let human = node.command(&["doctor"]).output().unwrap();
    eprintln!(
        "doctor, healthy node:\n{}",
        String::from_utf8_lossy(&human.stdout)
    );
    assert!(
        check(&checks, "bootstrap")["finding"]
            .as_str()
            .unwrap()
            .starts_with("done")
    );
    assert!(
        check(&checks, "nomad")["finding"]
            .as_str()
            .unwrap()
            .ends_with("management token valid, does not expire"),
        "{:#}",
        check(&checks, "nomad")
    );
    assert!(
        check(&checks, "consul")["finding"]
            .as_str()
            .unwrap()
            .contains("agent token valid")
    );
    // Every TLS port serves the certificate on disk; Nomad reaches Consul.
    let served = check(&checks, "served")["finding"]
        .as_str()
        .unwrap()
        .to_owned();
    for port in [
        "consul https",
        "consul grpc-tls",
        "consul rpc",
        "nomad https",
        "nomad rpc",
    ] {
        assert!(served.contains(port), "{port} in {served}");
    }
    assert!(!served.contains("NOT the file's"), "{served}");
    assert!(
        check(&checks, "nomad-consul")["finding"]
            .as_str()
            .unwrap()
            .contains("Nomad has registered nomad for this node"),
        "{:#}",
        check(&checks, "nomad-consul")
    );

    // A config edited by hand.
    let consul_hcl = node.dir.path().join("consul.d/consul.hcl");
    let original = std::fs::read_to_string(&consul_hcl).unwrap();
    std::fs::write(&consul_hcl, format!("{original}\nlog_level = \"DEBUG\"\n")).unwrap();
    let (code, checks) = doctor(&node);
    let c = check(&checks, "configs");
    assert_eq!(c["level"], "warn", "{c:#}");
    assert!(
        c["finding"].as_str().unwrap().contains("consul.hcl"),
        "{c:#}"
    );
    assert!(
        c["next"].as_str().unwrap().contains("kraken-agent render"),
        "{c:#}"
    );
    assert!(code >= 1);
    std::fs::write(&consul_hcl, &original).unwrap();

    // A certificate expiring in 5 days: long past the point it should
    // have been renewed.
    let tls = node.dir.path().join("consul.d/tls");
    let mut params = rcgen::CertificateParams::new(vec!["server.dc1.consul".into()]).unwrap();
    params.not_before = rcgen::date_time_ymd(2020, 1, 1);
    let soon = std::time::SystemTime::now() + Duration::from_secs(5 * 86_400);
    params.not_after = soon.into();
    let key = rcgen::KeyPair::generate().unwrap();
    std::fs::write(
        tls.join("server.pem"),
        params.self_signed(&key).unwrap().pem(),
    )
    .unwrap();
    let (_, checks) = doctor(&node);
    let c = check(&checks, "tls");
    assert_eq!(c["level"], "warn", "{c:#}");
    let finding = c["finding"].as_str().unwrap();
    assert!(
        finding.contains("past its renewal time")
            && (finding.contains("(server.dc1.consul) has 4d left")
                || finding.contains("(server.dc1.consul) has 5d left")),
        "{c:#}"
    );
    std::fs::remove_file(tls.join("server.pem")).unwrap();

    // A CA with 100 days left: a warning months ahead.
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params.not_before = rcgen::date_time_ymd(2020, 1, 1);
    params.not_after = (std::time::SystemTime::now() + Duration::from_secs(100 * 86_400)).into();
    std::fs::write(
        tls.join("old-ca.pem"),
        params.self_signed(&key).unwrap().pem(),
    )
    .unwrap();
    let (_, checks) = doctor(&node);
    let c = check(&checks, "tls");
    assert_eq!(c["level"], "warn", "{c:#}");
    let finding = c["finding"].as_str().unwrap();
    assert!(
        finding.contains("expires in 99 days") || finding.contains("expires in 100 days"),
        "{c:#}"
    );
    assert!(
        c["next"]
            .as_str()
            .unwrap()
            .contains("Rotating the cluster CA"),
        "{c:#}"
    );
    std::fs::remove_file(tls.join("old-ca.pem")).unwrap();

    // A service still serving the certificate it loaded before its file
    // changed (a reload that never reached it): the agent frozen, the
    // Consul certificate file replaced by another of the cluster's.
    let agent = nix::unistd::Pid::from_raw(node.child.id().unwrap() as i32);
    nix::sys::signal::kill(agent, nix::sys::signal::Signal::SIGSTOP).unwrap();
    // consul.d changed above (a hand edit, certificates): the agent may
    // have restarted Consul just before it was frozen (the shim finishes
    // the restart). Consul must be back on its ports, or doctor finds it
    // not answering instead of serving the old certificate.
    for port in [8501, 8503, 8300] {
        let address = std::net::SocketAddr::from((node.ip, port));
        kraken_testkit::wait_until(
            &format!("Consul to listen on {address}"),
            Duration::from_secs(60),
            || async { tokio::net::TcpStream::connect(address).await.is_ok() },
        )
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", node.log()));
    }
    let (cert, key) = (tls.join("consul.pem"), tls.join("consul-key.pem"));
    let (cert0, key0) = (std::fs::read(&cert).unwrap(), std::fs::read(&key).unwrap());
    let nomad_tls = node.dir.path().join("nomad.d/tls");
    std::fs::copy(nomad_tls.join("nomad-key.pem"), &key).unwrap();
    std::fs::copy(nomad_tls.join("nomad.pem"), &cert).unwrap();
    let (_, checks) = doctor(&node);
    std::fs::write(&key, &key0).unwrap();
    std::fs::write(&cert, &cert0).unwrap();
    nix::sys::signal::kill(agent, nix::sys::signal::Signal::SIGCONT).unwrap();
    let c = check(&checks, "served");
    assert_eq!(c["level"], "fail", "{c:#}");
    let finding = c["finding"].as_str().unwrap();
    assert!(
        finding.contains("consul https") && finding.contains("NOT the file's"),
        "{c:#}"
    );
    assert!(finding.contains("consul rpc"), "every TLS port: {c:#}");
    assert!(
        c["next"]
            .as_str()
            .unwrap()
            .contains("systemctl reload consul.service"),
        "{c:#}"
    );
    let (_, checks) = doctor(&node);
    assert_eq!(check(&checks, "served")["level"], "ok");

    // The node's intermediate gone from the store: named by the secrets
    // check (a node booting now would wait for it).
    let store = node.store().await;
    let name = kraken_secrets::names::PKI_NOMAD_SERVER;
    let bundle = store.get(name).await.unwrap().unwrap();
    store.delete(name).await.unwrap();
    let (_, checks) = doctor(&node);
    let c = check(&checks, "secrets");
    assert_eq!(c["level"], "warn", "{c:#}");
    assert!(c["finding"].as_str().unwrap().contains(name), "{c:#}");
    store.create(name, &bundle).await.unwrap();

    // This node's Consul token deleted in Consul.
    let store = node.store().await;
    let management = store
        .get(kraken_secrets::names::CONSUL_INITIAL_MANAGEMENT)
        .await
        .unwrap()
        .unwrap();
    let agent_token = store
        .get(kraken_secrets::names::CONSUL_AGENT)
        .await
        .unwrap()
        .unwrap();
    let consul = node.consul(Some(Token::new(management.expose())));
    let accessor = consul
        .with_token(Some(Token::new(agent_token.expose())))
        .acl_token_self()
        .await
        .unwrap()
        .unwrap()
        .accessor_id;
    node_http(node.dir.path(), "consul")
        .delete(format!("https://{}:8501/v1/acl/token/{accessor}", node.ip))
        .header("X-Consul-Token", management.expose())
        .send()
        .await
        .unwrap()
        .error_for_status()
        .unwrap();
    let (code, checks) = doctor(&node);
    let c = check(&checks, "consul");
    assert_eq!(c["level"], "fail", "{c:#}");
    assert!(
        c["finding"]
            .as_str()
            .unwrap()
            .contains("does not know this node's agent token"),
        "{c:#}"
    );
    assert_eq!(code, 2);

    // A tag with a bad value.
    node.imds
        .update_instance_data(|d| {
            d.tags
                .insert("kraken:consul-servers".into(), "three".into());
        })
        .unwrap();
    let (_, checks) = doctor(&node);
    let c = check(&checks, "tags");
    assert_eq!(c["level"], "fail", "{c:#}");
    assert!(
        c["finding"]
            .as_str()
            .unwrap()
            .contains("kraken:consul-servers has value \"three\""),
        "{c:#}"
    );
    assert!(c["next"].as_str().unwrap().contains("create-tags"), "{c:#}");
    node.imds
        .update_instance_data(|d| {
            d.tags.insert("kraken:consul-servers".into(), "1".into());
        })
        .unwrap();

    // Consul stopped, the agent frozen first: its watch would start Consul
    // again within a refresh period, racing doctor.
    nix::sys::signal::kill(agent, nix::sys::signal::Signal::SIGSTOP).unwrap();
    node.shim(&["stop", "consul.service"]);
    let (code, checks) = doctor(&node);
    let units = check(&checks, "units");
    assert_eq!(units["level"], "fail", "{units:#}");
    assert!(
        units["finding"]
            .as_str()
            .unwrap()
            .contains("consul.service is enabled and inactive"),
        "{units:#}"
    );
    assert!(
        units["next"].as_str().unwrap().contains("systemctl status"),
        "{units:#}"
    );
    let c = check(&checks, "consul");
    assert_eq!(c["level"], "fail", "{c:#}");
    assert!(
        c["next"]
            .as_str()
            .unwrap()
            .contains("systemctl status consul"),
        "{c:#}"
    );
    let human = node.command(&["doctor"]).output().unwrap();
    eprintln!(
        "doctor, Consul stopped:\n{}",
        String::from_utf8_lossy(&human.stdout)
    );
    assert_eq!(code, 2);

    // IMDS unreachable.
    node.imds.set_hang(true);
    let (_, checks) = doctor(&node);
    let c = check(&checks, "imds");
    assert_eq!(c["level"], "fail", "{c:#}");
    assert!(c["cause"].as_str().unwrap().contains("hop limit"), "{c:#}");
    assert_eq!(check(&checks, "consul")["level"], "skip");
    node.imds.set_hang(false);
    nix::sys::signal::kill(agent, nix::sys::signal::Signal::SIGCONT).unwrap();
}

/// Runs doctor on a "node" that is only IMDS + AWS: for faults that need
/// no running services.
async fn doctor_with(env: &AwsEnv, settings: &str, dir: &std::path::Path) -> (i32, Vec<Value>) {
    let out = agent(env, settings, &["doctor", "--json"], dir);
    let doc: Value =
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", text(&out)));
    (
        out.status.code().unwrap(),
        doc["checks"].as_array().unwrap().clone(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn doctor_names_denied_ec2_permissions() {
    // moto enforces IAM from the 4th request: a user allowed nothing useful.
    let moto = kraken_testkit::Moto::start_with_env(&[("INITIAL_NO_AUTH_ACTION_COUNT", "3")]).await;
    let (key_id, key_secret) = restricted_user(&moto.endpoint(), "sts:GetCallerIdentity").await;
    let imds = kraken_fake_imds::FakeImds::start(
        "127.0.0.1:0".parse().unwrap(),
        instance_data(
            "i-0123456789abcdef0",
            "10.0.0.5".parse().unwrap(),
            tags(&[("kraken:cluster", "c1"), ("kraken:roles", "nomad-client")]),
        ),
    )
    .await
    .unwrap();
    let dir = kraken_testkit::TestDir::new("doctor-denied");
    let mut env = AwsEnv::new(&moto.endpoint(), &imds.endpoint());
    env.access_key = key_id;
    env.secret_key = key_secret;
    let (code, checks) = doctor_with(&env, "", dir.path()).await;
    let c = check(&checks, "aws");
    assert_eq!(c["level"], "fail", "{c:#}");
    assert!(
        c["finding"]
            .as_str()
            .unwrap()
            .contains("ec2:DescribeInstances was denied"),
        "{c:#}"
    );
    assert!(c["next"].as_str().unwrap().contains("docs/iam.md"), "{c:#}");
    assert_eq!(code, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn doctor_names_a_lost_quorum() {
    let mut cluster = kraken_testkit::ConsulCluster::start(3).await;
    let moto = kraken_testkit::Moto::start().await;
    let imds = kraken_fake_imds::FakeImds::start(
        "127.0.0.1:0".parse().unwrap(),
        instance_data(
            "i-0123456789abcdef1",
            cluster.ip(0),
            tags(&[("kraken:cluster", "c1"), ("kraken:roles", "consul-server")]),
        ),
    )
    .await
    .unwrap();
    let dir = kraken_testkit::TestDir::new("doctor-quorum");
    // The testkit's cluster speaks plain HTTP.
    let settings = format!(
        "[tls]\nenabled = false\n\n[nomad]\nhttp_addr = \"http://127.0.0.1:4646\"\n\n\
         [consul]\nhttp_addr = \"{}\"\n",
        cluster.http_url(0)
    );
    let env = AwsEnv::new(&moto.endpoint(), &imds.endpoint());
    // Two of three servers die.
    cluster.stop_server(1);
    cluster.stop_server(2);
    let consul = Consul::new(&cluster.http_url(0), None).unwrap();
    kraken_testkit::wait_until(
        "the survivor to lose its leader",
        Duration::from_secs(60),
        || async { matches!(consul.leader().await, Ok(None)) },
    )
    .await
    .unwrap();
    let (code, checks) = doctor_with(&env, &settings, dir.path()).await;
    let c = check(&checks, "consul");
    assert_eq!(c["level"], "fail", "{c:#}");
    assert!(
        c["finding"].as_str().unwrap().contains("no Raft leader"),
        "{c:#}"
    );
    assert!(
        c["cause"]
            .as_str()
            .unwrap()
            .contains("quorum of the 3 Consul servers"),
        "{c:#}"
    );
    assert!(
        c["next"]
            .as_str()
            .unwrap()
            .contains("consul operator raft list-peers"),
        "{c:#}"
    );
    assert_eq!(code, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn doctor_names_a_full_docker_disk() {
    let dir = kraken_testkit::TestDir::new("doctor-disk");
    let root = dir.path().join("docker");
    std::fs::create_dir_all(&root).unwrap();
    let mounted = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=1m", "tmpfs"])
        .arg(&root)
        .status()
        .unwrap();
    assert!(mounted.success(), "mounting a tmpfs needs root, as CI has");
    // 95% of the megabyte.
    std::fs::write(root.join("fill"), vec![0u8; 1_000_000]).unwrap();
    let moto = kraken_testkit::Moto::start().await;
    let imds = kraken_fake_imds::FakeImds::start(
        "127.0.0.1:0".parse().unwrap(),
        instance_data(
            "i-0123456789abcdef2",
            "10.0.0.7".parse().unwrap(),
            tags(&[("kraken:cluster", "c1"), ("kraken:roles", "nomad-client")]),
        ),
    )
    .await
    .unwrap();
    let settings = format!("[docker]\ndata_root = {:?}\n", root.display().to_string());
    let env = AwsEnv::new(&moto.endpoint(), &imds.endpoint());
    let (_, checks) = doctor_with(&env, &settings, dir.path()).await;
    let _ = std::process::Command::new("umount").arg(&root).status();
    let c = check(&checks, "docker-disk");
    assert_eq!(c["level"], "fail", "{c:#}");
    assert!(c["finding"].as_str().unwrap().contains("% full"), "{c:#}");
    assert!(
        c["next"].as_str().unwrap().contains("docker system df"),
        "{c:#}"
    );
}
