//! The snapshots' bucket: list, put, get and prune under
//! `prefix/<cluster>/<service>/`.

use aws_sdk_s3::primitives::ByteStream;
use kraken_aws::Failure;
use kraken_hashi::Token;
use kraken_settings::Settings;

use super::{Service, SnapshotError, SnapshotInfo, time};

/// The metadata key (`x-amz-meta-token-sha256`) recording the digest of the
/// management token a snapshot was taken with.
const TOKEN_META: &str = "token-sha256";

/// One cluster's snapshots in the configured bucket.
#[derive(Debug, Clone)]
pub struct SnapshotStore {
    s3: aws_sdk_s3::Client,
    bucket: String,
    prefix: String,
    cluster: String,
}

impl SnapshotStore {
    /// `Err(Off)` when agent.toml names no bucket.
    pub fn new(
        settings: &Settings,
        sdk: &aws_config::SdkConfig,
        cluster: &str,
    ) -> Result<SnapshotStore, SnapshotError> {
        let bucket = settings.snapshots.enabled().ok_or(SnapshotError::Off)?;
        let calls = kraken_aws::ApiCalls::default();
        Ok(SnapshotStore {
            s3: kraken_aws::s3_client(sdk, &calls, settings.snapshots.force_path_style),
            bucket: bucket.to_owned(),
            prefix: settings.snapshots.prefix.clone(),
            cluster: cluster.to_owned(),
        })
    }

    pub fn bucket(&self) -> &str {
        &self.bucket
    }

    /// `prefix/<cluster>/<service>/`.
    pub fn dir(&self, service: Service) -> String {
        let prefix = if self.prefix.is_empty() {
            String::new()
        } else {
            format!("{}/", self.prefix)
        };
        format!("{prefix}{}/{}/", self.cluster, service.as_str())
    }

    /// A key of `service`'s, checked to be one, for `restore --key`.
    pub fn info(&self, service: Service, key: &str) -> Result<SnapshotInfo, SnapshotError> {
        let dir = self.dir(service);
        let taken_at = key
            .strip_prefix(&dir)
            .and_then(|name| name.strip_suffix(".snap"))
            .filter(|t| time::parse(t).is_some())
            .ok_or_else(|| SnapshotError::WrongKey {
                service: service.as_str(),
                key: key.to_owned(),
                prefix: format!("s3://{}/{dir}", self.bucket),
            })?;
        Ok(SnapshotInfo {
            service,
            bucket: self.bucket.clone(),
            key: key.to_owned(),
            taken_at: taken_at.to_owned(),
            bytes: 0,
        })
    }

    /// `service`'s snapshots, oldest first.
    pub async fn list(&self, service: Service) -> Result<Vec<SnapshotInfo>, SnapshotError> {
        let dir = self.dir(service);
        let mut out = Vec::new();
        let mut pages = self
            .s3
            .list_objects_v2()
            .bucket(&self.bucket)
            .prefix(&dir)
            .into_paginator()
            .send();
        while let Some(page) = pages.next().await {
            let page = page.map_err(|e| self.failed("s3:ListBucket", &dir, &e))?;
            for object in page.contents() {
                let Some(key) = object.key() else { continue };
                // Anything else under the prefix (a person's upload) is not
                // ours to list, restore or delete.
                if let Ok(mut info) = self.info(service, key) {
                    info.bytes = object.size().unwrap_or(0).max(0) as u64;
                    out.push(info);
                }
            }
        }
        out.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(out)
    }

    pub async fn newest(&self, service: Service) -> Result<Option<SnapshotInfo>, SnapshotError> {
        Ok(self.list(service).await?.pop())
    }

    /// Uploads `body` as `service`'s snapshot taken now with `token`.
    pub async fn put(
        &self,
        service: Service,
        body: Vec<u8>,
        token: &Token,
    ) -> Result<SnapshotInfo, SnapshotError> {
        let taken_at = time::now_rfc3339();
        let key = format!("{}{taken_at}.snap", self.dir(service));
        let bytes = body.len() as u64;
        self.s3
            .put_object()
            .bucket(&self.bucket)
            .key(&key)
            .metadata(TOKEN_META, kraken_bootstrap::sha256_hex(token.expose()))
            .body(ByteStream::from(body))
            .send()
            .await
            .map_err(|e| self.failed("s3:PutObject", &key, &e))?;
        log::info!(
            "{} snapshot saved to s3://{}/{key} ({bytes} bytes)",
            service.as_str(),
            self.bucket
        );
        Ok(SnapshotInfo {
            service,
            bucket: self.bucket.clone(),
            key,
            taken_at,
            bytes,
        })
    }

    /// The snapshot's body and the digest of the token it was taken with.
    pub async fn get(&self, key: &str) -> Result<(Vec<u8>, Option<String>), SnapshotError> {
        let object = self
            .s3
            .get_object()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await
            .map_err(|e| self.failed("s3:GetObject", key, &e))?;
        let taken_with = object.metadata().and_then(|m| m.get(TOKEN_META)).cloned();
        let body = object
            .body
            .collect()
            .await
            .map_err(|e| SnapshotError::S3 {
                action: "s3:GetObject",
                bucket: self.bucket.clone(),
                key: key.to_owned(),
                detail: format!("reading the body: {e}"),
                transient: true,
            })?
            .into_bytes()
            .to_vec();
        Ok((body, taken_with))
    }

    /// Deletes `service`'s oldest snapshots beyond the newest `keep`;
    /// returns the keys deleted.
    pub async fn prune(&self, service: Service, keep: usize) -> Result<Vec<String>, SnapshotError> {
        let all = self.list(service).await?;
        let excess = all.len().saturating_sub(keep.max(1));
        let mut deleted = Vec::new();
        for old in &all[..excess] {
            self.s3
                .delete_object()
                .bucket(&self.bucket)
                .key(&old.key)
                .send()
                .await
                .map_err(|e| self.failed("s3:DeleteObject", &old.key, &e))?;
            log::info!(
                "deleted s3://{}/{} (snapshots.retention)",
                self.bucket,
                old.key
            );
            deleted.push(old.key.clone());
        }
        Ok(deleted)
    }

    fn failed<E, R>(
        &self,
        action: &'static str,
        key: &str,
        err: &aws_sdk_s3::error::SdkError<E, R>,
    ) -> SnapshotError
    where
        E: aws_sdk_s3::error::ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
        R: std::fmt::Debug,
    {
        let failure = Failure::classify(err);
        if let Failure::Rejected { code, .. } = &failure
            && code == "NoSuchBucket"
        {
            return SnapshotError::NoSuchBucket {
                bucket: self.bucket.clone(),
            };
        }
        SnapshotError::S3 {
            action,
            bucket: self.bucket.clone(),
            key: key.to_owned(),
            transient: failure.is_transient(),
            detail: failure.describe(action),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store(prefix: &str) -> SnapshotStore {
        let config = aws_sdk_s3::Config::builder()
            .behavior_version(aws_sdk_s3::config::BehaviorVersion::latest())
            .region(aws_sdk_s3::config::Region::new("us-east-1"))
            .build();
        SnapshotStore {
            s3: aws_sdk_s3::Client::from_conf(config),
            bucket: "b".into(),
            prefix: prefix.into(),
            cluster: "prod".into(),
        }
    }

    #[test]
    fn keys_are_prefix_cluster_service_time() {
        assert_eq!(store("backups").dir(Service::Nomad), "backups/prod/nomad/");
        assert_eq!(store("").dir(Service::Consul), "prod/consul/");
        let key = "backups/prod/consul/2026-12-01T05:30:56.123Z.snap";
        let info = store("backups").info(Service::Consul, key).unwrap();
        assert_eq!(info.taken_at, "2026-12-01T05:30:56.123Z");
    }

    #[test]
    fn other_keys_are_not_snapshots_of_ours() {
        let s = store("backups");
        for key in [
            // Another service's, another cluster's, a person's upload.
            "backups/prod/nomad/2026-12-01T05:30:56.123Z.snap",
            "backups/test/consul/2026-12-01T05:30:56.123Z.snap",
            "backups/prod/consul/latest.snap",
            "backups/prod/consul/2026-12-01T05:30:56.123Z.tgz",
        ] {
            let err = s.info(Service::Consul, key).unwrap_err().to_string();
            assert!(err.contains("s3://b/backups/prod/consul/"), "{key}: {err}");
        }
    }
}
