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

#[cfg(test)]
mod tests {
    use super::*;

    fn imds_status(status: u16) -> IdentityError {
        IdentityError::ImdsStatus {
            path: "/latest/meta-data/instance-id".into(),
            status,
        }
    }

    #[test]
    fn an_unreachable_or_failing_imds_is_worth_retrying() {
        let unreachable = IdentityError::ImdsUnreachable {
            endpoint: "http://169.254.169.254".into(),
            path: "/latest/meta-data/instance-id".into(),
            detail: "timed out".into(),
        };
        assert!(unreachable.is_transient());
        let api = IdentityError::TagsApi {
            instance_id: "i-0abc".into(),
            detail: "ec2:DescribeInstances failed: dispatch failure".into(),
        };
        assert!(api.is_transient());
        // 401: the session token expired between two requests.
        for status in [401, 500, 502, 503] {
            assert!(imds_status(status).is_transient(), "{status}");
        }
    }

    #[test]
    fn a_wrong_answer_or_a_denied_permission_is_not() {
        for status in [400, 403, 404] {
            assert!(!imds_status(status).is_transient(), "{status}");
        }
        let value = IdentityError::ImdsValue {
            path: "/latest/meta-data/local-ipv4".into(),
            value: "nonsense".into(),
            expected: "an IPv4 address",
        };
        assert!(!value.is_transient());
        let denied = IdentityError::TagsAccessDenied {
            instance_id: "i-0abc".into(),
            code: "UnauthorizedOperation".into(),
        };
        assert!(!denied.is_transient());
    }

    #[test]
    fn errors_name_the_input_and_the_fix() {
        let unreachable = IdentityError::ImdsUnreachable {
            endpoint: "http://127.0.0.1:9".into(),
            path: "/latest/meta-data/placement/region".into(),
            detail: "connection refused".into(),
        }
        .to_string();
        for part in [
            "http://127.0.0.1:9",
            "/latest/meta-data/placement/region",
            "connection refused",
            "http-endpoint=enabled",
            "hop limit",
        ] {
            assert!(unreachable.contains(part), "{part:?} in {unreachable}");
        }
        let denied = IdentityError::TagsAccessDenied {
            instance_id: "i-0abc".into(),
            code: "UnauthorizedOperation".into(),
        }
        .to_string();
        for part in [
            "i-0abc",
            "UnauthorizedOperation",
            "grant ec2:DescribeInstances",
            "--instance-metadata-tags enabled",
        ] {
            assert!(denied.contains(part), "{part:?} in {denied}");
        }
        assert_eq!(
            imds_status(404).to_string(),
            "instance metadata service answered HTTP 404 for /latest/meta-data/instance-id"
        );
    }

    #[test]
    fn a_node_file_identity_defaults_its_tags_and_their_source() {
        let identity: Identity = toml::from_str(
            "instance_id = \"i-0abc\"\nregion = \"eu-west-3\"\n\
             availability_zone = \"eu-west-3a\"\nprivate_ipv4 = \"10.0.3.17\"\n",
        )
        .unwrap();
        assert_eq!(identity.private_ipv4, Ipv4Addr::new(10, 0, 3, 17));
        assert!(identity.tags.is_empty());
        assert_eq!(identity.tags_source, TagsSource::InstanceMetadata);
    }

    #[test]
    fn a_node_file_identity_with_an_unknown_key_is_refused_by_name() {
        let err = toml::from_str::<Identity>(
            "instance_id = \"i-0abc\"\nregion = \"eu-west-3\"\n\
             availability_zone = \"eu-west-3a\"\nprivate_ip = \"10.0.3.17\"\n",
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("private_ip"), "{err}");
    }

    #[test]
    fn tag_sources_are_written_in_kebab_case_and_read_back() {
        for (source, word) in [
            (TagsSource::InstanceMetadata, "instance-metadata"),
            (TagsSource::DescribeInstances, "describe-instances"),
            (TagsSource::NodeFile, "node-file"),
        ] {
            let identity = Identity {
                instance_id: "i-0abc".into(),
                region: "eu-west-3".into(),
                availability_zone: "eu-west-3a".into(),
                private_ipv4: Ipv4Addr::new(10, 0, 3, 17),
                tags: BTreeMap::from([("kraken:cluster".into(), "blue".into())]),
                tags_source: source,
            };
            let text = toml::to_string(&identity).unwrap();
            assert!(
                text.contains(&format!("tags_source = \"{word}\"")),
                "{text}"
            );
            assert_eq!(toml::from_str::<Identity>(&text).unwrap(), identity);
        }
    }
}
