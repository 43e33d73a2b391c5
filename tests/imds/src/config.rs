//! What the fake starts with: the instance it pretends to be, its token
//! setting and its faults; also the binary's config file format.

use std::collections::BTreeMap;
use std::io;
use std::net::Ipv4Addr;
use std::time::{Duration, SystemTime};

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
    /// `autoscaling/target-lifecycle-state`: absent (404, and no
    /// `autoscaling/` in the listing) when the instance is in no autoscaling
    /// group, as on AWS.
    pub target_lifecycle_state: Option<TargetLifecycleState>,
    /// `spot/instance-action` (and `spot/termination-time`): absent (404)
    /// while no interruption is scheduled.
    pub spot_instance_action: Option<SpotInstanceAction>,
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
            target_lifecycle_state: None,
            spot_instance_action: None,
        }
    }
}

/// The steady state Amazon EC2 Auto Scaling is moving the instance to, as
/// `autoscaling/target-lifecycle-state` reports it: one of the primary steady
/// states (`InService`, `Terminated`), the side ones (`Detached`, `Standby`)
/// or a warm pool's (`Warmed:*`). The transitional states (`Pending`,
/// `Terminating:Wait`, ...) are never served here: AWS documents the item as
/// the *target* steady state ("Retrieve the target lifecycle state through
/// instance metadata", EC2 Auto Scaling user guide); a launching instance
/// reads `InService`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum TargetLifecycleState {
    InService,
    Terminated,
    Detached,
    Standby,
    #[serde(rename = "Warmed:Hibernated")]
    WarmedHibernated,
    #[serde(rename = "Warmed:Running")]
    WarmedRunning,
    #[serde(rename = "Warmed:Stopped")]
    WarmedStopped,
    #[serde(rename = "Warmed:Terminated")]
    WarmedTerminated,
}

impl TargetLifecycleState {
    /// The text IMDS serves, e.g. `Warmed:Stopped`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::InService => "InService",
            Self::Terminated => "Terminated",
            Self::Detached => "Detached",
            Self::Standby => "Standby",
            Self::WarmedHibernated => "Warmed:Hibernated",
            Self::WarmedRunning => "Warmed:Running",
            Self::WarmedStopped => "Warmed:Stopped",
            Self::WarmedTerminated => "Warmed:Terminated",
        }
    }
}

impl std::fmt::Display for TargetLifecycleState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What EC2 will do to an interrupted Spot Instance.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SpotAction {
    Terminate,
    Stop,
    Hibernate,
}

impl SpotAction {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Terminate => "terminate",
            Self::Stop => "stop",
            Self::Hibernate => "hibernate",
        }
    }
}

/// A scheduled Spot interruption: `spot/instance-action` serves it as
/// `{"action": "terminate", "time": "2026-12-01T08:22:00Z"}`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SpotInstanceAction {
    pub action: SpotAction,
    /// When EC2 acts, in UTC (RFC 3339, whole seconds, as AWS writes it).
    pub time: String,
}

impl SpotInstanceAction {
    /// The usual notice: `action` two minutes from now.
    pub fn in_two_minutes(action: SpotAction) -> Self {
        Self::at(action, SystemTime::now() + Duration::from_secs(120))
    }

    pub fn at(action: SpotAction, time: SystemTime) -> Self {
        Self {
            action,
            time: humantime::format_rfc3339_seconds(time).to_string(),
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
    if let Some(notice) = &data.spot_instance_action {
        // AWS writes `2026-12-01T08:22:00Z`: UTC, whole seconds.
        let whole_seconds_utc = notice.time.len() == 20 && notice.time.ends_with('Z');
        if !whole_seconds_utc || humantime::parse_rfc3339(&notice.time).is_err() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "spot_instance_action.time {:?} is not a UTC time of the form 2026-12-01T08:22:00Z",
                    notice.time
                ),
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
