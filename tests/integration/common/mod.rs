//! Shared by the integration tests: the agent binary, the AWS environment
//! pointing at moto and the fake IMDS, and instances launched in moto.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Output;

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
}

impl AwsEnv {
    pub fn new(endpoint: &str, imds: &str) -> AwsEnv {
        AwsEnv {
            endpoint: endpoint.into(),
            imds: imds.into(),
            access_key: "testing".into(),
            secret_key: "testing".into(),
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

pub fn text(out: &Output) -> String {
    format!(
        "status {:?}\n--- stdout\n{}\n--- stderr\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

pub async fn ec2(endpoint: &str) -> aws_sdk_ec2::Client {
    let conf = aws_sdk_ec2::config::Builder::new()
        .behavior_version(aws_sdk_ec2::config::BehaviorVersion::latest())
        .region(aws_sdk_ec2::config::Region::new(REGION))
        .endpoint_url(endpoint)
        .credentials_provider(aws_sdk_ec2::config::Credentials::new(
            "testing", "testing", None, None, "test",
        ))
        .build();
    aws_sdk_ec2::Client::from_conf(conf)
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
