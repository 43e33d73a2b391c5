//! Raft snapshots of Consul (`/v1/snapshot`) and Nomad
//! (`/v1/operator/snapshot`). Both need a management token: a snapshot
//! holds every ACL token's secret. Both are answered by the leader (the
//! agent forwards), and a restore replaces the whole state store, ACLs
//! included.

use std::time::Duration;

use reqwest::Method;

use crate::http::HashiError;
use crate::{Consul, Nomad};

/// A snapshot is one body in memory: a cluster's Raft state is megabytes,
/// and streaming would need a second code path for the retries.
const SNAPSHOT_TIMEOUT: Duration = Duration::from_secs(300);

impl Consul {
    /// The leader's snapshot (a gzipped tar archive), consistent.
    pub async fn snapshot_save(&self) -> Result<Vec<u8>, HashiError> {
        let (_, _, body) = self
            .http
            .send(Method::GET, "/v1/snapshot", None, SNAPSHOT_TIMEOUT)
            .await?;
        Ok(body)
    }

    /// Replaces the cluster's state with `snapshot`; returns once the
    /// leader has re-run its leader actions (the initial-management token
    /// from the servers' configs is made again if the snapshot lacks it).
    pub async fn snapshot_restore(&self, snapshot: Vec<u8>) -> Result<(), HashiError> {
        self.http
            .send(
                Method::PUT,
                "/v1/snapshot",
                Some(snapshot),
                SNAPSHOT_TIMEOUT,
            )
            .await?;
        Ok(())
    }
}

impl Nomad {
    /// The leader's snapshot, consistent.
    pub async fn snapshot_save(&self) -> Result<Vec<u8>, HashiError> {
        let (_, _, body) = self
            .http
            .send(Method::GET, "/v1/operator/snapshot", None, SNAPSHOT_TIMEOUT)
            .await?;
        Ok(body)
    }

    /// Replaces the cluster's state with `snapshot`.
    pub async fn snapshot_restore(&self, snapshot: Vec<u8>) -> Result<(), HashiError> {
        self.http
            .send(
                Method::PUT,
                "/v1/operator/snapshot",
                Some(snapshot),
                SNAPSHOT_TIMEOUT,
            )
            .await?;
        Ok(())
    }
}
