use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::sync::Mutex;
use std::time::Duration;

use aws_config::imds::client::Client;
use aws_config::imds::client::error::ImdsError;
use kraken_aws::{ApiCalls, AwsSettings, Failure};

use crate::error::IdentityError;
use crate::identity::{Identity, IdentityProvider, TagsSource};

const TAGS_PATH: &str = "/latest/meta-data/tags/instance";
const LOCAL_IPV4_PATH: &str = "/latest/meta-data/local-ipv4";
const MAC_PATH: &str = "/latest/meta-data/mac";

/// Limits for IMDS requests. IMDS is local and fast when it works; short
/// timeouts let the boot loop retry instead of hanging.
#[derive(Debug, Clone, PartialEq)]
pub struct ImdsSettings {
    pub connect_timeout: Duration,
    pub read_timeout: Duration,
    /// Attempts per request, the first included.
    pub attempts: u32,
}

impl Default for ImdsSettings {
    fn default() -> Self {
        ImdsSettings {
            connect_timeout: Duration::from_secs(1),
            read_timeout: Duration::from_secs(2),
            attempts: 4,
        }
    }
}

/// Identity from IMDSv2, with `ec2:DescribeInstances` for the tags when
/// instance metadata tags are disabled.
pub struct ImdsIdentity {
    settings: ImdsSettings,
    aws: AwsSettings,
    // The SDK client caches its session token; it is rebuilt when IMDS
    // rejects that token (the SDK retries a 401 with the same cached token).
    client: Mutex<Client>,
    ec2_calls: ApiCalls,
}

impl ImdsIdentity {
    pub fn new(settings: ImdsSettings, aws: AwsSettings) -> Self {
        let client = Mutex::new(build_client(&settings));
        ImdsIdentity {
            settings,
            aws,
            client,
            ec2_calls: ApiCalls::default(),
        }
    }

    /// EC2 API attempts made for the tag fallback.
    pub fn ec2_calls(&self) -> u64 {
        self.ec2_calls.get()
    }

    fn client(&self) -> Client {
        self.client.lock().expect("imds client lock").clone()
    }

    fn endpoint() -> String {
        std::env::var("AWS_EC2_METADATA_SERVICE_ENDPOINT")
            .unwrap_or_else(|_| "http://169.254.169.254".to_owned())
    }

    /// `Ok(None)` for a 404: the path does not exist on this instance.
    pub(crate) async fn get_optional(&self, path: &str) -> Result<Option<String>, IdentityError> {
        let mut refreshed = false;
        loop {
            match self.client().get(path).await {
                Ok(value) => return Ok(Some(value.as_ref().to_owned())),
                Err(ImdsError::ErrorResponse(resp)) => {
                    let status = resp.response().status().as_u16();
                    if status == 404 {
                        return Ok(None);
                    }
                    if status == 401 && !refreshed {
                        log::info!("IMDS rejected the cached session token; requesting a new one");
                        *self.client.lock().expect("imds client lock") =
                            build_client(&self.settings);
                        refreshed = true;
                        continue;
                    }
                    return Err(IdentityError::ImdsStatus {
                        path: path.to_owned(),
                        status,
                    });
                }
                Err(err) => {
                    return Err(IdentityError::ImdsUnreachable {
                        endpoint: Self::endpoint(),
                        path: path.to_owned(),
                        detail: error_chain(&err),
                    });
                }
            }
        }
    }

    async fn get(&self, path: &str) -> Result<String, IdentityError> {
        self.get_optional(path)
            .await?
            .ok_or_else(|| IdentityError::ImdsStatus {
                path: path.to_owned(),
                status: 404,
            })
    }

    async fn metadata_tags(&self) -> Result<Option<BTreeMap<String, String>>, IdentityError> {
        let Some(listing) = self.get_optional(TAGS_PATH).await? else {
            return Ok(None);
        };
        let mut tags = BTreeMap::new();
        for key in tag_keys(&listing) {
            let value = self.get(&format!("{TAGS_PATH}/{key}")).await?;
            tags.insert(key.to_owned(), value);
        }
        Ok(Some(tags))
    }

    async fn api_tags(
        &self,
        instance_id: &str,
        region: &str,
    ) -> Result<BTreeMap<String, String>, IdentityError> {
        let sdk = kraken_aws::sdk_config(region, &self.aws).await;
        let ec2 = kraken_aws::ec2_client(&sdk, &self.ec2_calls);
        let out = ec2
            .describe_instances()
            .instance_ids(instance_id)
            .send()
            .await
            .map_err(|err| match Failure::classify(&err) {
                Failure::AccessDenied { code, .. } => IdentityError::TagsAccessDenied {
                    instance_id: instance_id.to_owned(),
                    code,
                },
                other => IdentityError::TagsApi {
                    instance_id: instance_id.to_owned(),
                    detail: other.describe("ec2:DescribeInstances"),
                },
            })?;
        let instance = out
            .reservations()
            .iter()
            .flat_map(|r| r.instances())
            .find(|i| i.instance_id() == Some(instance_id))
            .ok_or_else(|| IdentityError::TagsApi {
                instance_id: instance_id.to_owned(),
                detail: "ec2:DescribeInstances did not return this instance".into(),
            })?;
        Ok(instance
            .tags()
            .iter()
            .filter_map(|t| Some((t.key()?.to_owned(), t.value().unwrap_or("").to_owned())))
            .collect())
    }
}

impl IdentityProvider for ImdsIdentity {
    async fn identity(&self) -> Result<Identity, IdentityError> {
        let instance_id = self.get("/latest/meta-data/instance-id").await?;
        let region = self.get("/latest/meta-data/placement/region").await?;
        let availability_zone = self
            .get("/latest/meta-data/placement/availability-zone")
            .await?;
        let private_ipv4 = private_ipv4(&self.get(LOCAL_IPV4_PATH).await?)?;
        // The primary interface's VPC: discovery looks for servers in it.
        let mac = self.get(MAC_PATH).await?;
        let vpc_path = vpc_id_path(&mac);
        let vpc_id = vpc_id(&vpc_path, &self.get(&vpc_path).await?)?;
        let (tags, tags_source) = match self.metadata_tags().await? {
            Some(tags) => (tags, TagsSource::InstanceMetadata),
            None => {
                log::info!(
                    "instance metadata tags are disabled; reading tags with ec2:DescribeInstances"
                );
                (
                    self.api_tags(&instance_id, &region).await?,
                    TagsSource::DescribeInstances,
                )
            }
        };
        Ok(Identity {
            instance_id: instance_id.trim().to_owned(),
            region: region.trim().to_owned(),
            availability_zone: availability_zone.trim().to_owned(),
            private_ipv4,
            vpc_id: Some(vpc_id),
            tags,
            tags_source,
        })
    }
}

/// The tag keys of the listing at [`TAGS_PATH`]: one a line.
fn tag_keys(listing: &str) -> impl Iterator<Item = &str> {
    listing.lines().map(str::trim).filter(|k| !k.is_empty())
}

/// IMDS's `local-ipv4` answer as an address, or an error that quotes it.
fn private_ipv4(answer: &str) -> Result<Ipv4Addr, IdentityError> {
    answer.trim().parse().map_err(|_| IdentityError::ImdsValue {
        path: LOCAL_IPV4_PATH.into(),
        value: answer.to_owned(),
        expected: "an IPv4 address",
    })
}

/// Where IMDS keeps the VPC of the interface with this MAC address.
fn vpc_id_path(mac: &str) -> String {
    format!(
        "/latest/meta-data/network/interfaces/macs/{}/vpc-id",
        mac.trim()
    )
}

/// IMDS's `vpc-id` answer, checked: it becomes an EC2 filter value.
fn vpc_id(path: &str, answer: &str) -> Result<String, IdentityError> {
    let id = answer.trim();
    let valid = id
        .strip_prefix("vpc-")
        .is_some_and(|hex| !hex.is_empty() && hex.chars().all(|c| c.is_ascii_alphanumeric()));
    if valid {
        Ok(id.to_owned())
    } else {
        Err(IdentityError::ImdsValue {
            path: path.to_owned(),
            value: answer.to_owned(),
            expected: "a VPC id (vpc-...)",
        })
    }
}

fn build_client(settings: &ImdsSettings) -> Client {
    Client::builder()
        .connect_timeout(settings.connect_timeout)
        .read_timeout(settings.read_timeout)
        .max_attempts(settings.attempts.max(1))
        .build()
}

fn error_chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut out = err.to_string();
    let mut source = err.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tag_keys_are_the_listing_lines_trimmed_without_blanks() {
        let keys: Vec<&str> = tag_keys("Name\nkraken:cluster\r\n\n  kraken:roles \n").collect();
        assert_eq!(keys, ["Name", "kraken:cluster", "kraken:roles"]);
        assert_eq!(tag_keys("").count(), 0);
        assert_eq!(tag_keys("\n \n").count(), 0);
    }

    #[test]
    fn the_private_address_is_parsed_past_surrounding_whitespace() {
        assert_eq!(
            private_ipv4("10.0.3.17\n").unwrap(),
            Ipv4Addr::new(10, 0, 3, 17)
        );
    }

    #[test]
    fn a_private_address_that_is_not_ipv4_names_path_value_and_form() {
        for bad in ["", "10.0.3", "10.0.3.17/24", "fd00::1", "ip-10-0-3-17"] {
            let err = private_ipv4(bad).unwrap_err();
            assert!(
                matches!(
                    &err,
                    IdentityError::ImdsValue { path, value, expected: "an IPv4 address" }
                        if path == LOCAL_IPV4_PATH && value == bad
                ),
                "{bad:?}: {err:?}"
            );
            assert!(!err.is_transient(), "{bad:?}");
            let text = err.to_string();
            assert!(
                text.contains("/latest/meta-data/local-ipv4")
                    && text.contains(&format!("{bad:?}"))
                    && text.contains("an IPv4 address"),
                "{text}"
            );
        }
    }

    #[test]
    fn the_vpc_id_is_read_under_the_primary_mac_and_checked() {
        let path = vpc_id_path("0e:00:0a:00:03:11\n");
        assert_eq!(
            path,
            "/latest/meta-data/network/interfaces/macs/0e:00:0a:00:03:11/vpc-id"
        );
        assert_eq!(vpc_id(&path, "vpc-0abc123\n").unwrap(), "vpc-0abc123");
        for bad in ["", "vpc-", "subnet-0abc", "vpc-0abc 1", "vpc-*"] {
            let err = vpc_id(&path, bad).unwrap_err();
            assert!(!err.is_transient(), "{bad:?}");
            let text = err.to_string();
            assert!(text.contains(&path) && text.contains("vpc-..."), "{text}");
        }
    }

    #[test]
    fn error_chain_joins_every_cause() {
        #[derive(Debug)]
        struct Outer(std::io::Error);
        impl std::fmt::Display for Outer {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("dispatch failure")
            }
        }
        impl std::error::Error for Outer {
            fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
                Some(&self.0)
            }
        }
        let err = Outer(std::io::Error::new(
            std::io::ErrorKind::ConnectionRefused,
            "connection refused",
        ));
        assert_eq!(error_chain(&err), "dispatch failure: connection refused");
        assert_eq!(
            error_chain(&std::io::Error::other("alone")),
            "alone",
            "no trailing separator without a source"
        );
    }

    #[test]
    fn defaults_are_the_documented_ones() {
        // docs/configuration.md, [imds].
        let d = ImdsSettings::default();
        assert_eq!(d.connect_timeout, Duration::from_millis(1000));
        assert_eq!(d.read_timeout, Duration::from_millis(2000));
        assert_eq!(d.attempts, 4);
    }
}
