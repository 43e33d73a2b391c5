//! `[snapshots]`: Consul and Nomad snapshots to S3 (`docs/operations.md`).

use serde::{Deserialize, Serialize};

/// Scheduled snapshots of Consul's and Nomad's Raft state, taken by each
/// service's leader and kept in `s3://bucket/prefix/<cluster>/<service>/`.
/// Off while `bucket` is unset.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SnapshotSettings {
    pub bucket: Option<String>,
    /// Key prefix inside the bucket, without a leading or trailing `/`;
    /// may be empty.
    pub prefix: String,
    /// Between two scheduled snapshots of a service: the recovery point
    /// objective (at most this much is lost when a cluster is restored).
    pub interval_secs: u64,
    /// Snapshots kept per service; older ones are deleted after each save.
    pub retention: u32,
    /// On a fresh cluster, the bootstrap leader restores the newest
    /// snapshot of each service before its ACL steps.
    pub restore_at_bootstrap: bool,
    /// Path-style S3 addressing (`https://host/bucket/key`), for
    /// S3-compatible stores and endpoints that are not a DNS name of the
    /// bucket's; the endpoint itself comes from the SDK's standard
    /// environment (`AWS_ENDPOINT_URL_S3`, `AWS_ENDPOINT_URL`).
    pub force_path_style: bool,
}

impl Default for SnapshotSettings {
    fn default() -> Self {
        SnapshotSettings {
            bucket: None,
            prefix: "kraken-snapshots".into(),
            interval_secs: 3600,
            retention: 24,
            restore_at_bootstrap: false,
            force_path_style: false,
        }
    }
}

impl SnapshotSettings {
    /// The bucket, when snapshots are on.
    pub fn enabled(&self) -> Option<&str> {
        self.bucket.as_deref()
    }

    pub(crate) fn validate(&self) -> Result<(), String> {
        if let Some(bucket) = &self.bucket {
            // S3's bucket naming rules, enough to catch a URL or a path
            // given instead of a name.
            let ok = (3..=63).contains(&bucket.len())
                && bucket
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.')
                && !bucket.starts_with(['-', '.'])
                && !bucket.ends_with(['-', '.']);
            if !ok {
                return Err(format!(
                    "snapshots.bucket = {bucket:?}; expected an S3 bucket name (3 to 63 of \
                     a-z, 0-9, '-' and '.', e.g. \"acme-kraken-snapshots\"), not a URL"
                ));
            }
        }
        if self.prefix.starts_with('/') || self.prefix.ends_with('/') {
            return Err(format!(
                "snapshots.prefix = {:?}; expected a key prefix without a leading or trailing \
                 '/', e.g. \"kraken-snapshots\"",
                self.prefix
            ));
        }
        if self.interval_secs < 1 {
            return Err("snapshots.interval_secs = 0; expected at least 1".into());
        }
        if self.retention < 1 {
            return Err(
                "snapshots.retention = 0; expected at least 1 (the newest snapshot is kept)".into(),
            );
        }
        Ok(())
    }
}
