use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::sync::Mutex;
use std::time::Duration;

use aws_config::imds::client::Client;
use aws_config::imds::client::error::ImdsError;
use kraken_aws::{ApiCalls, AwsSettings, Failure};

use crate::{Identity, IdentityError, IdentityProvider, TagsSource};

const TAGS_PATH: &str = "/latest/meta-data/tags/instance";

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
    async fn get_optional(&self, path: &str) -> Result<Option<String>, IdentityError> {
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
        for key in listing.lines().map(str::trim).filter(|k| !k.is_empty()) {
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
        let ip = self.get("/latest/meta-data/local-ipv4").await?;
        let private_ipv4: Ipv4Addr = ip.trim().parse().map_err(|_| IdentityError::ImdsValue {
            path: "/latest/meta-data/local-ipv4".into(),
            value: ip.clone(),
            expected: "an IPv4 address",
        })?;
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
            tags,
            tags_source,
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
