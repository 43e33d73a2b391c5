//! `kraken-agent snapshot save|list|restore`: a person's hand on the
//! snapshots the leaders take on schedule (`[snapshots]`), through the same
//! implementation (`steps::snapshot`). JSON on stdout, logs on stderr.
//!
//! `save` and `restore` talk to this node's Consul and Nomad with the
//! management tokens from the secret store: run them on a server. `list`
//! needs only S3, so `--cluster` lets it run anywhere.

use kraken_identity::ImdsIdentity;
use kraken_settings::Settings;
use serde_json::json;

use crate::steps::node;
use crate::steps::snapshot::{self, Service, SnapshotStore};
use crate::{BootError, clients, tuning};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::Subcommand)]
pub enum Action {
    /// Take a snapshot now and upload it (then apply snapshots.retention).
    Save,
    /// The snapshots in the bucket, oldest first.
    List,
    /// Restore a snapshot into this node's cluster: the newest unless
    /// --key names one. Replaces all of the service's state.
    Restore,
}

pub struct Args {
    pub action: Action,
    /// Both services when `None` (Consul first).
    pub service: Option<Service>,
    pub key: Option<String>,
    /// The cluster whose snapshots to use; this instance's by default.
    pub cluster: Option<String>,
}

pub async fn snapshot(settings: &Settings, args: Args) -> Result<(), BootError> {
    let region_env = ["AWS_REGION", "AWS_DEFAULT_REGION"]
        .iter()
        .find_map(|v| std::env::var(v).ok().filter(|r| !r.is_empty()));
    // IMDS only when the cluster or the region must come from it.
    let (cluster, region) = match (&args.cluster, region_env) {
        (Some(c), Some(r)) => (c.clone(), r),
        (cluster, _) => {
            let provider = ImdsIdentity::new(tuning::imds(settings), tuning::aws(settings));
            let identity = node::identity(&provider).await?;
            let cluster = match cluster {
                Some(c) => c.clone(),
                None => node::intent(&identity, settings)?.cluster,
            };
            (cluster, identity.region)
        }
    };
    let sdk = kraken_aws::sdk_config(&region, &tuning::aws(settings)).await;
    let bucket = SnapshotStore::new(settings, &sdk, &cluster)?;
    let services: Vec<Service> = match (args.service, &args.key) {
        (Some(s), _) => vec![s],
        // A key names its service.
        (None, Some(key)) => Service::ALL
            .into_iter()
            .filter(|s| bucket.info(*s, key).is_ok())
            .collect(),
        (None, None) => Service::ALL.to_vec(),
    };
    if let Some(key) = &args.key
        && services.is_empty()
    {
        // Says where keys of this cluster live.
        bucket.info(Service::Consul, key)?;
    }
    let store = || {
        kraken_secrets::Store::from_settings(
            &settings.secrets,
            &cluster,
            &sdk,
            &kraken_aws::ApiCalls::default(),
        )
    };
    let doc = match args.action {
        Action::List => {
            let mut all = Vec::new();
            for s in services {
                all.extend(bucket.list(s).await?);
            }
            json!({ "cluster": cluster, "snapshots": all })
        }
        Action::Save => {
            let store = store()?;
            let mut saved = Vec::new();
            let mut deleted = Vec::new();
            for s in services {
                let token = snapshot::management_token(&store, s).await?;
                let (info, gone) = snapshot::save(settings, &bucket, s, &token).await?;
                saved.push(info);
                deleted.extend(gone);
            }
            json!({ "cluster": cluster, "saved": saved, "deleted": deleted })
        }
        Action::Restore => {
            let store = store()?;
            let mut restored = Vec::new();
            let mut purged = 0;
            for s in services {
                let token = snapshot::management_token(&store, s).await?;
                let info =
                    snapshot::restore(settings, &bucket, s, args.key.as_deref(), &token, &store)
                        .await?;
                restored.push(info);
                if s == Service::Nomad {
                    let calls = kraken_aws::ApiCalls::default();
                    let ec2 = kraken_discovery::Ec2Peers::new(
                        kraken_aws::ec2_client(&sdk, &calls),
                        calls,
                    );
                    let nomad = clients::nomad(settings, Some(token))?;
                    purged = snapshot::purge_gone_nodes(&nomad, &ec2, &cluster).await;
                }
            }
            json!({ "cluster": cluster, "restored": restored, "purged_nodes": purged })
        }
    };
    println!(
        "{}",
        serde_json::to_string_pretty(&doc).expect("serialises")
    );
    Ok(())
}
