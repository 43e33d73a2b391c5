//! What the fake starts with: the instance it pretends to be, its token
//! setting and its faults; also the binary's config file format.

use std::collections::BTreeMap;
use std::io;
use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};

/// What the fake instance reports about itself.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct InstanceData {
    pub instance_id: String,
    pub ami_id: String,
    pub instance_type: String,
    pub architecture: String,
    pub account_id: String,
    pub region: String,
    pub availability_zone: String,
    pub private_ipv4: Ipv4Addr,
    /// Derived from the private address when absent.
    pub mac: Option<String>,
    /// The VPC and subnet of the primary interface
    /// (`network/interfaces/macs/<mac>/vpc-id`, `.../subnet-id`).
    pub vpc_id: String,
    pub subnet_id: String,
    pub tags: BTreeMap<String, String>,
    /// The instance's "allow tags in instance metadata" option. On by default
    /// here because most tests want tags; off, `tags/` answers 404 as on AWS.
    pub tags_in_metadata: bool,
    pub iam_role: Option<IamRole>,
}

impl Default for InstanceData {
    fn default() -> Self {
        Self {
            instance_id: "i-0123456789abcdef0".into(),
            ami_id: "ami-0123456789abcdef0".into(),
            instance_type: "t3.medium".into(),
            architecture: "x86_64".into(),
            account_id: "123456789012".into(),
            region: "us-east-1".into(),
            availability_zone: "us-east-1a".into(),
            private_ipv4: Ipv4Addr::new(10, 0, 1, 10),
            mac: None,
            vpc_id: "vpc-0123456789abcdef0".into(),
            subnet_id: "subnet-0123456789abcdef0".into(),
            tags: BTreeMap::new(),
            tags_in_metadata: true,
            iam_role: None,
        }
    }
}

/// The instance profile's role and the (fake) credentials IMDS hands out.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IamRole {
    pub name: String,
    pub access_key_id: String,
    pub secret_access_key: String,
    pub token: String,
}

/// The instance's `HttpTokens` setting.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TokenMode {
    /// IMDSv2 only: every metadata request needs a valid token.
    #[default]
    Required,
    /// IMDSv1 allowed: requests without a token are served, but a request
    /// with an invalid token is still refused, as on AWS.
    Optional,
}

/// Faults applied to incoming requests, in this order: delay, hang, failure.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Faults {
    /// Wait this long before answering.
    pub delay_ms: u64,
    /// Delay only requests whose path starts with this.
    pub delay_path_prefix: Option<String>,
    /// Accept requests but answer none until this is cleared.
    pub hang: bool,
    /// Answer the next `fail_count` requests with `fail_status`.
    pub fail_count: u32,
    pub fail_status: u16,
}

impl Default for Faults {
    fn default() -> Self {
        Self {
            delay_ms: 0,
            delay_path_prefix: None,
            hang: false,
            fail_count: 0,
            fail_status: 500,
        }
    }
}

/// Everything the fake starts with; also the binary's config file format.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub instance: InstanceData,
    pub token_mode: TokenMode,
    pub faults: Faults,
}

/// AWS refuses to enable tags in instance metadata while a tag key would not
/// make a valid path segment; the fake refuses to start with such data, or
/// with a VPC or subnet id no instance could have.
pub fn validate(data: &InstanceData) -> io::Result<()> {
    for (what, id, prefix) in [
        ("vpc_id", &data.vpc_id, "vpc-"),
        ("subnet_id", &data.subnet_id, "subnet-"),
    ] {
        if !id.starts_with(prefix) || id.len() == prefix.len() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{what} {id:?} is not an id of the form {prefix}..."),
            ));
        }
    }
    if !data.tags_in_metadata {
        return Ok(());
    }
    let allowed = |c: char| c.is_ascii_alphanumeric() || "+-=._:@,".contains(c);
    match data.tags.keys().find(|k| {
        k.is_empty() || !k.chars().all(allowed) || matches!(k.as_str(), "." | ".." | "_index")
    }) {
        Some(key) => Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("tag key {key:?} is not allowed while tags are in instance metadata"),
        )),
        None => Ok(()),
    }
}
