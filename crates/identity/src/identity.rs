//! What an instance is, and what can tell it so.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};

use crate::error::IdentityError;

/// What this instance is, as AWS describes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Identity {
    pub instance_id: String,
    pub region: String,
    pub availability_zone: String,
    pub private_ipv4: Ipv4Addr,
    /// The VPC of the instance's primary interface: discovery looks for
    /// servers in it only. Absent from node description files, whose peers
    /// are given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vpc_id: Option<String>,
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

    #[test]
    fn a_node_file_identity_defaults_its_tags_and_their_source() {
        let identity: Identity = toml::from_str(
            "instance_id = \"i-0abc\"\nregion = \"eu-west-3\"\n\
             availability_zone = \"eu-west-3a\"\nprivate_ipv4 = \"10.0.3.17\"\n",
        )
        .unwrap();
        assert_eq!(identity.private_ipv4, Ipv4Addr::new(10, 0, 3, 17));
        assert!(identity.tags.is_empty());
        assert_eq!(identity.vpc_id, None);
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
                vpc_id: Some("vpc-0abc".into()),
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
