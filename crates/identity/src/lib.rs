//! Step 1 of the boot flow: who is this instance?
//!
//! An [`Identity`] is what IMDS knows about the instance: its id, region,
//! zone, private address and tags. [`ImdsIdentity`] reads it through the AWS
//! SDK's IMDSv2 client (so `AWS_EC2_METADATA_SERVICE_ENDPOINT` points it
//! elsewhere, as tests do); when instance metadata tags are disabled it falls
//! back to `ec2:DescribeInstances` on the instance itself.

mod imds;

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};

pub use imds::{ImdsIdentity, ImdsSettings};

/// What this instance is, as AWS describes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Identity {
    pub instance_id: String,
    pub region: String,
    pub availability_zone: String,
    pub private_ipv4: Ipv4Addr,
    /// All instance tags, not only ours: intent decides which matter.
    #[serde(default)]
    pub tags: BTreeMap<String, String>,
    /// Where the tags came from, for `doctor` and the status file.
    #[serde(default)]
    pub tags_source: TagsSource,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TagsSource {
    /// `/latest/meta-data/tags/instance/`: no API call, no IAM permission.
    #[default]
    InstanceMetadata,
    /// `ec2:DescribeInstances` on this instance: metadata tags are disabled.
    DescribeInstances,
    /// A node description file (`render --node`).
    NodeFile,
}

/// Something that can tell this instance who it is.
pub trait IdentityProvider {
    fn identity(&self) -> impl Future<Output = Result<Identity, IdentityError>> + Send;
}

#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error(
        "instance metadata service unreachable at {endpoint} while reading {path}: {detail}; \
         check that IMDS is enabled on the instance (http-endpoint=enabled) and, inside a \
         container, that the PUT response hop limit is at least 2"
    )]
    ImdsUnreachable {
        endpoint: String,
        path: String,
        detail: String,
    },
    #[error("instance metadata service answered HTTP {status} for {path}")]
    ImdsStatus { path: String, status: u16 },
    #[error("instance metadata value {path} is not valid: {value:?} ({expected})")]
    ImdsValue {
        path: String,
        value: String,
        expected: &'static str,
    },
    #[error(
        "instance metadata tags are disabled and ec2:DescribeInstances on {instance_id} \
         was denied ({code}); grant ec2:DescribeInstances to the instance role, or enable \
         instance metadata tags (aws ec2 modify-instance-metadata-options \
         --instance-metadata-tags enabled)"
    )]
    TagsAccessDenied { instance_id: String, code: String },
    #[error("reading the tags of {instance_id} with ec2:DescribeInstances failed: {detail}")]
    TagsApi { instance_id: String, detail: String },
}

impl IdentityError {
    /// Whether trying again later can help (an unreachable or failing IMDS
    /// can; a denied permission or a malformed value cannot).
    pub fn is_transient(&self) -> bool {
        match self {
            IdentityError::ImdsUnreachable { .. } | IdentityError::TagsApi { .. } => true,
            IdentityError::ImdsStatus { status, .. } => *status >= 500 || *status == 401,
            IdentityError::ImdsValue { .. } | IdentityError::TagsAccessDenied { .. } => false,
        }
    }
}

/// An identity given up front, as a node description file does.
#[derive(Debug, Clone)]
pub struct StaticIdentity(pub Identity);

impl IdentityProvider for StaticIdentity {
    async fn identity(&self) -> Result<Identity, IdentityError> {
        Ok(self.0.clone())
    }
}
