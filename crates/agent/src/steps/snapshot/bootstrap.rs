//! `snapshots.restore_at_bootstrap`: a fresh cluster starts from the newest
//! snapshot of each service, restored by the node that holds the bootstrap
//! lease, before the bootstrap's steps of that service run.
//!
//! Ordering with the ACL bootstrap (docs/operations.md):
//! - **Consul** first restores, then runs its phase. The restore brings the
//!   old cluster's ACL tokens and its bootstrap state back; Consul makes the
//!   initial-management token of the servers' configs again if the snapshot
//!   lacks it; the phase then finds its steps recorded, and the token upkeep
//!   run right after makes any role token the store holds but the snapshot
//!   does not (rotated since, or a new store) with the stored SecretID.
//!   Restoring after the phase would throw its tokens away.
//! - **Nomad** must be ACL-bootstrapped before it takes a restore (the
//!   restore needs a management token), and restored before the agent's
//!   Nomad token is made (the restore would take it away). So: the
//!   bootstrap with the stored management secret, the restore, then the
//!   phase. A snapshot taken with another management token is not restored
//!   (the agent would be locked out); the cluster starts empty and says so.

use kraken_bootstrap::{BootstrapError, Lease};
use kraken_hashi::{Consul, NomadBootstrap, Token};
use kraken_intent::NodeSpec;
use kraken_secrets::Store;
use kraken_settings::Settings;

use super::{Service, SnapshotError, SnapshotInfo, SnapshotStore};
use crate::{clients, tuning};

/// Before the Consul phase, on Consul servers, with the initial-management
/// `token`: restores the newest Consul snapshot if this cluster has no
/// bootstrap state yet. `Ok(None)`: nothing restored.
pub async fn consul(
    settings: &Settings,
    spec: &NodeSpec,
    node: &str,
    sdk: &aws_config::SdkConfig,
    store: &Store,
    token: &Token,
) -> Result<Option<SnapshotInfo>, SnapshotError> {
    if !settings.snapshots.restore_at_bootstrap || settings.snapshots.enabled().is_none() {
        return Ok(None);
    }
    let consul = &clients::consul(settings, Some(token.clone()))?;
    let fresh = || async {
        let (state, index) = kraken_bootstrap::read_state(consul, &spec.cluster).await?;
        Ok::<_, BootstrapError>(index == 0 && state.done.is_empty())
    };
    if !fresh().await? {
        return Ok(None);
    }
    let bucket = SnapshotStore::new(settings, sdk, &spec.cluster)?;
    let Some(mut lease) = lease(settings, spec, node, consul, || async {
        Ok::<_, BootstrapError>(!fresh().await?)
    })
    .await?
    else {
        return Ok(None);
    };
    // Under the lease: another node may have restored or bootstrapped
    // while this one waited.
    let result = async {
        if !fresh().await? {
            return Ok(None);
        }
        let Some(newest) = bucket.newest(Service::Consul).await? else {
            log::info!(
                "no Consul snapshot in s3://{}/{}: bootstrapping a new cluster",
                bucket.bucket(),
                bucket.dir(Service::Consul)
            );
            return Ok(None);
        };
        super::restore(
            settings,
            &bucket,
            Service::Consul,
            Some(&newest.key),
            token,
            store,
        )
        .await
        .map(Some)
    }
    .await;
    // Released at once (the bootstrap's phase takes the same lock next),
    // not left to expire. After a restore the session is gone already: the
    // restore replaced the sessions too.
    lease.release().await;
    result
}

/// Before the Nomad phase, on Nomad servers (`consul` holds their Consul
/// token, enough for the lease): ACL-bootstraps a fresh Nomad with the
/// stored management secret and restores the newest Nomad snapshot.
pub async fn nomad(
    settings: &Settings,
    spec: &NodeSpec,
    node: &str,
    sdk: &aws_config::SdkConfig,
    store: &Store,
    consul: &Consul,
) -> Result<Option<SnapshotInfo>, SnapshotError> {
    use kraken_secrets::{SecretStore, names};
    if !settings.snapshots.restore_at_bootstrap || settings.snapshots.enabled().is_none() {
        return Ok(None);
    }
    // A store with no Nomad management token: no snapshot can be
    // restored without locking the agent out (see the module's comment).
    let Some(secret) = store.get(names::NOMAD_MANAGEMENT).await? else {
        return Ok(None);
    };
    let token = Token::new(secret.expose());
    let nomad = clients::nomad(settings, None)?;
    const CHECK: &str = "check the stored Nomad management token";
    let known = || async {
        nomad
            .with_token(Some(token.clone()))
            .acl_token_self()
            .await
            .map(|t| t.is_some())
    };
    // Nomad knows the stored token: its state is there (or restored).
    if known().await.map_err(SnapshotError::hashi(CHECK))? {
        return Ok(None);
    }
    let bucket = SnapshotStore::new(settings, sdk, &spec.cluster)?;
    let Some(newest) = bucket.newest(Service::Nomad).await? else {
        log::info!(
            "no Nomad snapshot in s3://{}/{}: bootstrapping Nomad anew",
            bucket.bucket(),
            bucket.dir(Service::Nomad)
        );
        return Ok(None);
    };
    let stop = || async {
        known().await.map_err(|source| BootstrapError::Nomad {
            action: CHECK,
            source,
        })
    };
    let Some(mut lease) = lease(settings, spec, node, consul, stop).await? else {
        return Ok(None);
    };
    if known().await.map_err(SnapshotError::hashi(CHECK))? {
        lease.release().await;
        return Ok(None);
    }
    match nomad
        .acl_bootstrap(&token)
        .await
        .map_err(SnapshotError::hashi(
            "bootstrap Nomad's ACLs before the restore",
        ))? {
        NomadBootstrap::Done => {}
        // Bootstrapped, and not with the stored token (checked above):
        // the Nomad phase says what to do.
        NomadBootstrap::AlreadyDone => {
            lease.release().await;
            return Ok(None);
        }
    }
    let result = super::restore(
        settings,
        &bucket,
        Service::Nomad,
        Some(&newest.key),
        &token,
        store,
    )
    .await;
    lease.release().await;
    match result {
        Ok(info) => {
            let calls = kraken_aws::ApiCalls::default();
            let ec2 = kraken_discovery::Ec2Peers::new(kraken_aws::ec2_client(sdk, &calls), calls);
            let purged =
                super::purge_gone_nodes(&nomad.with_token(Some(token)), &ec2, &spec.cluster).await;
            log::info!("restore: purged {purged} nodes whose instances are gone");
            Ok(Some(info))
        }
        Err(e @ SnapshotError::OtherNomadToken { .. }) => {
            log::warn!("{e}; Nomad starts empty");
            Ok(None)
        }
        Err(e) => Err(e),
    }
}

/// The bootstrap lease, or `None` once `done` says another node did it.
async fn lease<F, Fut>(
    settings: &Settings,
    spec: &NodeSpec,
    node: &str,
    consul: &Consul,
    done: F,
) -> Result<Option<Lease>, SnapshotError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<bool, BootstrapError>>,
{
    let calls = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    Ok(Lease::acquire(
        consul,
        &kraken_bootstrap::lock_key(&spec.cluster),
        node,
        &tuning::lease(settings),
        done,
        &calls,
    )
    .await?)
}
