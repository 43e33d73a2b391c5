//! Shared by the integration tests: the agent binary, the AWS environment
//! pointing at moto and the fake IMDS, and instances launched in moto.

pub mod node;

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use aws_sdk_ec2::types::{ResourceType, Tag, TagSpecification};

pub const REGION: &str = "us-east-1";

/// The binary cargo built for these tests, or `KRAKEN_AGENT_BIN` (a release
/// build, for the benchmark figures).
pub fn agent_bin() -> PathBuf {
    std::env::var_os("KRAKEN_AGENT_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_kraken-agent")))
}

/// Environment for the agent: the SDK's standard variables, pointed at
/// moto and the fake IMDS — the same path production takes.
#[derive(Debug, Clone, Default)]
pub struct AwsEnv {
    pub endpoint: String,
    pub imds: String,
    pub access_key: String,
    pub secret_key: String,
    /// `AWS_ENDPOINT_URL_EC2`: EC2 alone elsewhere.
    pub ec2_endpoint: Option<String>,
}

impl AwsEnv {
    pub fn new(endpoint: &str, imds: &str) -> AwsEnv {
        AwsEnv {
            endpoint: endpoint.into(),
            imds: imds.into(),
            access_key: "testing".into(),
            secret_key: "testing".into(),
            ec2_endpoint: None,
        }
    }

    pub fn apply(&self, cmd: &mut std::process::Command) {
        for var in [
            "AWS_PROFILE",
            "AWS_SESSION_TOKEN",
            "AWS_DEFAULT_REGION",
            "AWS_CONFIG_FILE",
            "AWS_SHARED_CREDENTIALS_FILE",
        ] {
            cmd.env_remove(var);
        }
        cmd.env("AWS_ENDPOINT_URL", &self.endpoint)
            .env("AWS_EC2_METADATA_SERVICE_ENDPOINT", &self.imds)
            .env("AWS_ACCESS_KEY_ID", &self.access_key)
            .env("AWS_SECRET_ACCESS_KEY", &self.secret_key)
            .env("KRAKEN_LOG", "info");
        match &self.ec2_endpoint {
            Some(ec2) => cmd.env("AWS_ENDPOINT_URL_EC2", ec2),
            None => cmd.env_remove("AWS_ENDPOINT_URL_EC2"),
        };
    }
}

/// Runs `kraken-agent ARGS` with `env` and an agent.toml of `settings`.
pub fn agent(env: &AwsEnv, settings: &str, args: &[&str], dir: &Path) -> Output {
    let config = dir.join("agent.toml");
    std::fs::write(&config, settings).unwrap();
    let mut cmd = std::process::Command::new(agent_bin());
    env.apply(&mut cmd);
    cmd.env("KRAKEN_CONFIG", &config).args(args);
    cmd.output().expect("run kraken-agent")
}

/// Set in a child process that runs one test alone (see [`run_in_child`]).
const CHILD: &str = "KRAKEN_TEST_CHILD";

/// Whether this process is a child of [`run_in_child`].
pub fn in_child() -> bool {
    std::env::var_os(CHILD).is_some()
}

/// Runs `test` (its path, e.g. `boot::a_rejected_token_is_replaced`) alone
/// in a child process of this test binary; fails with its output if it
/// fails. For a test that must change the process environment, which every
/// other test of this binary shares.
pub fn run_in_child(test: &str) {
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args([test, "--exact", "--test-threads=1", "--nocapture"])
        .env(CHILD, "1")
        .output()
        .expect("run the test binary again");
    assert!(
        out.status.success() && String::from_utf8_lossy(&out.stdout).contains("1 passed"),
        "{test} in a child process: {}",
        text(&out)
    );
}

pub fn text(out: &Output) -> String {
    format!(
        "status {:?}\n--- stdout\n{}\n--- stderr\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

pub async fn ec2(endpoint: &str) -> aws_sdk_ec2::Client {
    aws_sdk_ec2::Client::new(&sdk_for(endpoint, TEST_KEY).await)
}

/// A subnet in moto whose addresses are the loopback addresses tests bind,
/// so that what EC2 reports is where the peers really listen.
pub async fn loopback_subnet(ec2: &aws_sdk_ec2::Client, octet2: u8, octet3: u8) -> String {
    let vpc = ec2
        .create_vpc()
        .cidr_block(format!("127.{octet2}.0.0/16"))
        .send()
        .await
        .unwrap();
    let vpc_id = vpc.vpc().unwrap().vpc_id().unwrap().to_owned();
    let subnet = ec2
        .create_subnet()
        .vpc_id(vpc_id)
        .cidr_block(format!("127.{octet2}.{octet3}.0/24"))
        .send()
        .await
        .unwrap();
    subnet.subnet().unwrap().subnet_id().unwrap().to_owned()
}

/// Launches one instance with `tags`; returns its id and private address.
pub async fn launch(
    ec2: &aws_sdk_ec2::Client,
    tags: &BTreeMap<String, String>,
    subnet_and_ip: Option<(&str, Ipv4Addr)>,
) -> (String, Ipv4Addr) {
    let spec = tags.iter().fold(
        TagSpecification::builder().resource_type(ResourceType::Instance),
        |s, (k, v)| s.tags(Tag::builder().key(k).value(v).build()),
    );
    let mut req = ec2
        .run_instances()
        .image_id("ami-12c6146b")
        .min_count(1)
        .max_count(1)
        .tag_specifications(spec.build());
    if let Some((subnet, ip)) = subnet_and_ip {
        req = req.subnet_id(subnet).private_ip_address(ip.to_string());
    }
    let out = req.send().await.unwrap();
    let i = &out.instances()[0];
    (
        i.instance_id().unwrap().to_owned(),
        i.private_ip_address().unwrap().parse().unwrap(),
    )
}

/// The VPC moto launched instance `id` in: what IMDS must report for it.
pub async fn vpc_of(ec2: &aws_sdk_ec2::Client, id: &str) -> String {
    let out = ec2
        .describe_instances()
        .instance_ids(id)
        .send()
        .await
        .unwrap();
    let instance = &out.reservations()[0].instances()[0];
    instance
        .vpc_id()
        .expect("moto gives every instance a VPC")
        .to_owned()
}

pub fn tags(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

pub fn instance_data(
    id: &str,
    ip: Ipv4Addr,
    tags: BTreeMap<String, String>,
) -> kraken_fake_imds::InstanceData {
    kraken_fake_imds::InstanceData {
        instance_id: id.into(),
        region: REGION.into(),
        availability_zone: format!("{REGION}a"),
        private_ipv4: ip,
        tags,
        ..Default::default()
    }
}

/// How a throttled AWS API answers, as AWS documents it for each protocol.
pub struct Throttled {
    pub status: u16,
    pub content_type: &'static str,
    pub body: &'static str,
}

/// EC2 (query protocol, XML errors).
pub const EC2_THROTTLED: Throttled = Throttled {
    status: 503,
    content_type: "text/xml;charset=UTF-8",
    body: r#"<?xml version="1.0" encoding="UTF-8"?>
<Response><Errors><Error><Code>RequestLimitExceeded</Code><Message>Request limit exceeded.</Message></Error></Errors><RequestID>5ea6dde5-0d6c-4f1e-9e5b-1e6b5b1e2d3a</RequestID></Response>"#,
};

/// SSM (JSON 1.1 protocol).
pub const SSM_THROTTLED: Throttled = Throttled {
    status: 400,
    content_type: "application/x-amz-json-1.1",
    body: r#"{"__type":"ThrottlingException","message":"Rate exceeded"}"#,
};

/// Answers the first `throttle` requests as a throttled AWS API would, then
/// passes requests through to moto. Nothing real throttles on demand.
pub async fn throttling_proxy(
    upstream: String,
    throttle: u32,
    answer: &'static Throttled,
) -> (SocketAddr, Arc<AtomicU32>) {
    let seen = Arc::new(AtomicU32::new(0));
    let counter = seen.clone();
    let client = reqwest::Client::new();
    let app = axum::Router::new().fallback(move |req: axum::extract::Request| {
        let (client, upstream, counter) = (client.clone(), upstream.clone(), counter.clone());
        async move {
            use axum::response::IntoResponse;
            if counter.fetch_add(1, Ordering::SeqCst) < throttle {
                return (
                    axum::http::StatusCode::from_u16(answer.status).unwrap(),
                    [("content-type", answer.content_type)],
                    answer.body,
                )
                    .into_response();
            }
            let (parts, body) = req.into_parts();
            let body = axum::body::to_bytes(body, 1 << 24).await.unwrap();
            let mut fwd = client.request(
                parts.method.clone(),
                format!("{upstream}{}", parts.uri.path_and_query().unwrap()),
            );
            for (k, v) in &parts.headers {
                if k != "host" {
                    fwd = fwd.header(k, v);
                }
            }
            let resp = fwd.body(body).send().await.unwrap();
            let status = resp.status();
            let headers = resp.headers().clone();
            let bytes = resp.bytes().await.unwrap();
            let mut out = (status, bytes).into_response();
            if let Some(ct) = headers.get("content-type") {
                out.headers_mut().insert("content-type", ct.clone());
            }
            out
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (addr, seen)
}

/// SDK config for moto at `endpoint`, with the given access key pair.
pub async fn sdk_for(endpoint: &str, (key, secret): (&str, &str)) -> aws_config::SdkConfig {
    aws_config::defaults(aws_config::BehaviorVersion::latest())
        .region(aws_config::Region::new(REGION))
        .endpoint_url(endpoint)
        .credentials_provider(aws_sdk_ec2::config::Credentials::new(
            key, secret, None, None, "test",
        ))
        .load()
        .await
}

/// The test account's key pair moto accepts when it does not enforce IAM.
pub const TEST_KEY: (&str, &str) = ("testing", "testing");

/// A secret store on moto's SSM, as the agent builds it.
pub async fn moto_store(endpoint: &str, cluster: &str, key: (&str, &str)) -> kraken_secrets::Store {
    let sdk = sdk_for(endpoint, key).await;
    kraken_secrets::Store::from_settings(
        &Default::default(),
        cluster,
        &sdk,
        &kraken_aws::ApiCalls::default(),
    )
    .unwrap()
}

/// Creates an IAM user allowed only `action` on a moto started with
/// `INITIAL_NO_AUTH_ACTION_COUNT=3` (moto enforces IAM from the fourth
/// request: these three make the user); returns its key pair.
pub async fn restricted_user(endpoint: &str, action: &str) -> (String, String) {
    let iam = aws_sdk_iam::Client::new(&sdk_for(endpoint, TEST_KEY).await);
    iam.create_user().user_name("node").send().await.unwrap();
    iam.put_user_policy()
        .user_name("node")
        .policy_name("only-one-action")
        .policy_document(format!(
            r#"{{"Version":"2012-10-17","Statement":[{{"Effect":"Allow","Action":"{action}","Resource":"*"}}]}}"#
        ))
        .send()
        .await
        .unwrap();
    let key = iam
        .create_access_key()
        .user_name("node")
        .send()
        .await
        .unwrap();
    let key = key.access_key().unwrap();
    (
        key.access_key_id().to_owned(),
        key.secret_access_key().to_owned(),
    )
}

/// A cluster PKI made in the test, as the Consul servers make it: a root
/// and the four role intermediates (cluster "live", dc1, region global).
pub struct TestPki {
    bundles: BTreeMap<kraken_pki::Authority, String>,
}

impl TestPki {
    pub fn new(cluster: &str) -> TestPki {
        let names = kraken_pki::ClusterNames {
            cluster: cluster.into(),
            consul_datacenter: "dc1".into(),
            consul_domain: "consul".into(),
            nomad_region: "global".into(),
        };
        let ca = kraken_pki::Ca::generate(cluster, std::time::Duration::from_secs(86_400)).unwrap();
        TestPki {
            bundles: kraken_pki::Authority::ALL
                .into_iter()
                .map(|a| (a, ca.issue_intermediate(a, &names).unwrap().to_bundle()))
                .collect(),
        }
    }

    fn intermediate(&self, a: kraken_pki::Authority) -> kraken_pki::Intermediate {
        kraken_pki::Intermediate::from_bundle(&self.bundles[&a], "test").unwrap()
    }

    /// Issues a node's certificates into the TLS files its `settings` name,
    /// with the agent's own step.
    pub fn issue(&self, node_file: &Path, settings: &str) {
        #[derive(serde::Deserialize)]
        struct NodeFile {
            identity: kraken_identity::Identity,
        }
        let node: NodeFile = toml::from_str(&std::fs::read_to_string(node_file).unwrap()).unwrap();
        let settings = kraken_settings::Settings::parse(settings).unwrap();
        let spec =
            kraken_intent::NodeSpec::from_tags(&node.identity.tags, &settings.intent).unwrap();
        let authorities = kraken_agent::steps::pki::NodeAuthorities {
            consul: self.intermediate(kraken_agent::steps::pki::consul_authority(&spec)),
            nomad: kraken_agent::steps::pki::nomad_authority(&spec).map(|a| self.intermediate(a)),
        };
        kraken_agent::steps::pki::ensure_leaves(&node.identity, &spec, &settings, &authorities)
            .unwrap();
    }
}

/// The TLS files of `service` ("consul" or "nomad") a node's agent wrote
/// under `dir`, as a client configuration.
pub fn node_tls(dir: &Path, service: &str) -> kraken_hashi::ClientTls {
    let tls = dir.join(format!("{service}.d/tls"));
    kraken_hashi::ClientTls::from_files(
        &tls.join("ca.pem"),
        Some((
            &tls.join(format!("{service}.pem")),
            &tls.join(format!("{service}-key.pem")),
        )),
    )
    .unwrap()
}

/// A raw HTTP client with those files, for calls the typed clients lack.
pub fn node_http(dir: &Path, service: &str) -> reqwest::Client {
    let tls = dir.join(format!("{service}.d/tls"));
    let read = |f: &str| std::fs::read(tls.join(f)).unwrap();
    let mut identity = read(&format!("{service}.pem"));
    identity.extend(read(&format!("{service}-key.pem")));
    reqwest::Client::builder()
        .no_proxy()
        .tls_certs_only(reqwest::Certificate::from_pem_bundle(&read("ca.pem")).unwrap())
        .identity(reqwest::Identity::from_pem(&identity).unwrap())
        .build()
        .unwrap()
}
