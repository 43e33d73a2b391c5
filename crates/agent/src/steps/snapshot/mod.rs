//! Snapshots of Consul's and Nomad's Raft state in S3, one implementation
//! for the schedule (`cmd::run`), the CLI (`kraken-agent snapshot`) and the
//! restore at bootstrap ([`bootstrap`]).
//!
//! A snapshot lives at `s3://bucket/prefix/<cluster>/<service>/<time>.snap`,
//! `<time>` an RFC 3339 UTC timestamp with milliseconds, fixed width, so the
//! keys sort by age. Each object records the SHA-256 of the management token
//! it was taken with (`x-amz-meta-token-sha256`): restoring a snapshot
//! brings back its ACL tokens, and the agent must know which token it will
//! then hold.

pub mod bootstrap;
mod gone;
mod s3;
mod time;

use kraken_hashi::{HashiError, Token};
use kraken_settings::Settings;
use serde::Serialize;

use crate::clients;

pub use gone::purge_gone_nodes;
pub use s3::SnapshotStore;
pub use time::parse as parse_time;

/// Which Raft state a snapshot holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Service {
    Consul,
    Nomad,
}

impl Service {
    pub const ALL: [Service; 2] = [Service::Consul, Service::Nomad];

    pub fn as_str(self) -> &'static str {
        match self {
            Service::Consul => "consul",
            Service::Nomad => "nomad",
        }
    }
}

/// One snapshot in the bucket.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SnapshotInfo {
    pub service: Service,
    pub bucket: String,
    pub key: String,
    /// When it was taken (from its key), RFC 3339 UTC.
    pub taken_at: String,
    pub bytes: u64,
}

/// A snapshot step that failed, with what to do about it.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error(
        "snapshots are off: agent.toml has no snapshots.bucket (set [snapshots] bucket = \
         \"NAME\", docs/configuration.md)"
    )]
    Off,
    #[error(
        "S3 bucket {bucket:?} does not exist (snapshots.bucket in agent.toml): create it in the \
         cluster's region or fix the name"
    )]
    NoSuchBucket { bucket: String },
    #[error("{action} on s3://{bucket}/{key}: {detail}")]
    S3 {
        action: &'static str,
        bucket: String,
        key: String,
        detail: String,
        transient: bool,
    },
    #[error("no {service} snapshot in s3://{bucket}/{prefix}")]
    None {
        service: &'static str,
        bucket: String,
        prefix: String,
    },
    #[error("{key} is not a {service} snapshot of this cluster (expected a key under {prefix})")]
    WrongKey {
        service: &'static str,
        key: String,
        prefix: String,
    },
    #[error("{doing}: {source}")]
    Hashi {
        doing: &'static str,
        source: HashiError,
    },
    #[error(
        "{name} is not in the secret store: a {service} snapshot needs the management token \
         (run this on a server of a bootstrapped cluster)"
    )]
    NoToken {
        service: &'static str,
        name: &'static str,
    },
    #[error(
        "s3://{bucket}/{key} was taken with another Nomad management token than the one in the \
         secret store: restoring it would lock the agent out of Nomad. Put that token back in \
         the store ({location}) first, or restore by hand with `nomad operator snapshot restore`"
    )]
    OtherNomadToken {
        bucket: String,
        key: String,
        location: String,
    },
    #[error("secrets: {0}")]
    Secret(#[from] kraken_secrets::SecretError),
    #[error("{0}")]
    Boot(Box<crate::BootError>),
    #[error("bootstrap: {0}")]
    Bootstrap(#[from] kraken_bootstrap::BootstrapError),
}

impl SnapshotError {
    pub fn hashi(doing: &'static str) -> impl FnOnce(HashiError) -> SnapshotError {
        move |source| SnapshotError::Hashi { doing, source }
    }

    /// agent.toml is what must change (no bucket, a bucket that is not
    /// there).
    pub fn is_config(&self) -> bool {
        matches!(
            self,
            SnapshotError::Off | SnapshotError::NoSuchBucket { .. }
        )
    }

    /// Worth trying again unchanged.
    pub fn is_transient(&self) -> bool {
        match self {
            SnapshotError::S3 { transient, .. } => *transient,
            SnapshotError::Hashi { source, .. } => source.is_transient(),
            SnapshotError::Secret(e) => e.is_transient(),
            SnapshotError::Boot(e) => e.is_transient(),
            SnapshotError::Bootstrap(e) => e.is_transient(),
            _ => false,
        }
    }
}

impl From<crate::BootError> for SnapshotError {
    fn from(e: crate::BootError) -> Self {
        SnapshotError::Boot(Box::new(e))
    }
}

/// The management token of `service`: what a snapshot needs (it holds
/// every ACL secret). Consul's initial-management token, Nomad's
/// bootstrap token, both from the secret store.
pub async fn management_token(
    store: &kraken_secrets::Store,
    service: Service,
) -> Result<Token, SnapshotError> {
    use kraken_secrets::{SecretStore, names};
    let name = match service {
        Service::Consul => names::CONSUL_INITIAL_MANAGEMENT,
        Service::Nomad => names::NOMAD_MANAGEMENT,
    };
    match store.get(name).await? {
        Some(s) => Ok(Token::new(s.expose())),
        None => Err(SnapshotError::NoToken {
            service: service.as_str(),
            name,
        }),
    }
}

/// Takes `service`'s snapshot from the local agent with `token`, uploads
/// it, then deletes the oldest beyond `snapshots.retention`.
pub async fn save(
    settings: &Settings,
    bucket: &SnapshotStore,
    service: Service,
    token: &Token,
) -> Result<(SnapshotInfo, Vec<String>), SnapshotError> {
    let body = match service {
        Service::Consul => clients::consul(settings, Some(token.clone()))?
            .snapshot_save()
            .await
            .map_err(SnapshotError::hashi("take Consul's snapshot"))?,
        Service::Nomad => clients::nomad(settings, Some(token.clone()))?
            .snapshot_save()
            .await
            .map_err(SnapshotError::hashi("take Nomad's snapshot"))?,
    };
    let info = bucket.put(service, body, token).await?;
    let deleted = bucket
        .prune(service, settings.snapshots.retention as usize)
        .await?;
    Ok((info, deleted))
}

/// Restores `key` (the newest when `None`) into the local agent's
/// cluster with `token`. A Nomad snapshot taken with another management
/// token than `token` is refused (see [`SnapshotError::OtherNomadToken`]);
/// a Consul one is not: Consul makes its initial-management token again
/// from its config, and the token upkeep remakes the role tokens.
pub async fn restore(
    settings: &Settings,
    bucket: &SnapshotStore,
    service: Service,
    key: Option<&str>,
    token: &Token,
    store: &kraken_secrets::Store,
) -> Result<SnapshotInfo, SnapshotError> {
    let info = match key {
        Some(k) => bucket.info(service, k)?,
        None => bucket
            .newest(service)
            .await?
            .ok_or_else(|| SnapshotError::None {
                service: service.as_str(),
                bucket: bucket.bucket().to_owned(),
                prefix: bucket.dir(service),
            })?,
    };
    let (body, taken_with) = bucket.get(&info.key).await?;
    let same_token = taken_with.as_deref() == Some(&kraken_bootstrap::sha256_hex(token.expose()));
    match service {
        Service::Consul => {
            if !same_token {
                log::warn!(
                    "s3://{}/{} was taken with another Consul management token: Consul makes \
                     the initial-management token again, and the token upkeep remakes the role \
                     tokens with the stored secrets",
                    info.bucket,
                    info.key
                );
            }
            clients::consul(settings, Some(token.clone()))?
                .snapshot_restore(body)
                .await
                .map_err(SnapshotError::hashi("restore Consul's snapshot"))?
        }
        Service::Nomad => {
            if !same_token {
                return Err(SnapshotError::OtherNomadToken {
                    bucket: info.bucket,
                    key: info.key,
                    location: store
                        .location(kraken_secrets::names::NOMAD_MANAGEMENT)
                        .unwrap_or_default(),
                });
            }
            clients::nomad(settings, Some(token.clone()))?
                .snapshot_restore(body)
                .await
                .map_err(SnapshotError::hashi("restore Nomad's snapshot"))?
        }
    }
    log::info!(
        "restored {} from s3://{}/{}",
        service.as_str(),
        info.bucket,
        info.key
    );
    Ok(info)
}

/// Whether this node's `service` is the Raft leader: its leader's address
/// is this node's own. Needs no token.
pub async fn leads(
    settings: &Settings,
    service: Service,
    own: std::net::Ipv4Addr,
) -> Result<bool, SnapshotError> {
    let leader = match service {
        Service::Consul => clients::consul(settings, None)?
            .leader()
            .await
            .map_err(SnapshotError::hashi("ask Consul for its leader"))?,
        Service::Nomad => clients::nomad(settings, None)?
            .leader()
            .await
            .map_err(SnapshotError::hashi("ask Nomad for its leader"))?,
    };
    Ok(leader
        .and_then(|l| l.parse::<std::net::SocketAddr>().ok())
        .is_some_and(|a| a.ip() == std::net::IpAddr::V4(own)))
}
