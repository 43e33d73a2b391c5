//! Scheduled snapshots (`[snapshots]`): each service's leader takes one
//! every `interval_secs` and keeps `retention` of them. A node that becomes
//! leader reads when the newest was taken (one S3 listing), so a leader
//! change does not stretch the recovery point past the interval. Failures
//! are logged and tried again one interval later; none is fatal.

use std::time::{Duration, Instant, SystemTime};

use kraken_hashi::Token;
use kraken_intent::Role;

use super::state::{Agent, Converged};
use crate::steps::snapshot::{self, Service, SnapshotError, SnapshotStore};

/// What the schedule remembers between rounds of the watch loop.
#[derive(Default)]
pub(super) struct Schedule {
    bucket: Option<SnapshotStore>,
    /// Per service (in [`Service::ALL`]'s order): when the next snapshot is
    /// due, while this node leads; `None` while it does not.
    due: [Option<Instant>; 2],
}

impl Agent {
    /// One round of the schedule: nothing until a snapshot is due on a
    /// service this node leads.
    pub(super) async fn snapshots(&mut self, node: &Converged) {
        if self.settings.snapshots.enabled().is_none() {
            return;
        }
        for (i, service) in Service::ALL.into_iter().enumerate() {
            let role = match service {
                Service::Consul => Role::ConsulServer,
                Service::Nomad => Role::NomadServer,
            };
            if !node.spec.has(role) {
                continue;
            }
            if let Err(e) = self.snapshot_round(node, i, service).await {
                log::warn!(
                    "{} snapshot failed, trying again in {}s: {e}",
                    service.as_str(),
                    self.settings.snapshots.interval_secs
                );
                self.snapshot_schedule.due[i] = Some(Instant::now() + self.interval());
            }
        }
    }

    fn interval(&self) -> Duration {
        Duration::from_secs(self.settings.snapshots.interval_secs.max(1))
    }

    async fn snapshot_round(
        &mut self,
        node: &Converged,
        i: usize,
        service: Service,
    ) -> Result<(), SnapshotError> {
        if !snapshot::leads(&self.settings, service, node.identity.private_ipv4).await? {
            self.snapshot_schedule.due[i] = None;
            return Ok(());
        }
        if self.snapshot_schedule.bucket.is_none() {
            let sdk =
                kraken_aws::sdk_config(&node.identity.region, &crate::tuning::aws(&self.settings))
                    .await;
            self.snapshot_schedule.bucket = Some(SnapshotStore::new(
                &self.settings,
                &sdk,
                &node.spec.cluster,
            )?);
        }
        let bucket = self.snapshot_schedule.bucket.clone().expect("set above");
        let due = match self.snapshot_schedule.due[i] {
            Some(due) => due,
            None => {
                // Newly the leader: due one interval after the newest.
                let age = bucket
                    .newest(service)
                    .await?
                    .and_then(|s| snapshot::parse_time(&s.taken_at))
                    .map(|t| SystemTime::now().duration_since(t).unwrap_or_default());
                let due = Instant::now()
                    + age.map_or(Duration::ZERO, |a| self.interval().saturating_sub(a));
                self.snapshot_schedule.due[i] = Some(due);
                due
            }
        };
        if Instant::now() < due {
            return Ok(());
        }
        self.snapshot_schedule.due[i] = Some(Instant::now() + self.interval());
        let token = match service {
            Service::Consul => match &self.secrets.initial_management {
                Some(t) => Token::new(t.expose()),
                None => snapshot::management_token(&node.store, service).await?,
            },
            Service::Nomad => snapshot::management_token(&node.store, service).await?,
        };
        let (info, deleted) = snapshot::save(&self.settings, &bucket, service, &token).await?;
        self.record(
            &format!("snapshot-{}", service.as_str()),
            serde_json::json!({ "saved": info, "deleted": deleted }),
        );
        Ok(())
    }
}
