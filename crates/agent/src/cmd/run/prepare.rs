//! Steps 1 to 5 of the boot flow: everything a node does before it starts
//! a service. A warm-pool instance does this much and waits
//! (`steps::lifecycle::warm`); every other node goes straight on to
//! [`super::converge`].

use kraken_discovery::{Budgeted, Ec2Peers, Peers};
use kraken_identity::{Identity, ImdsIdentity};
use kraken_intent::NodeSpec;
use kraken_secrets::Store;
use serde_json::json;

use kraken_aws::HookResult;
use kraken_render::Service;

use super::state::Agent;
use crate::steps::lifecycle::{self, warm};
use crate::steps::pki::{self, LeafReport, NodeAuthorities};
use crate::steps::published::{self, Published};
use crate::steps::secrets::SecretsMode;
use crate::steps::{discovery, node, secrets};
use crate::{BootError, tuning};

/// A node with its configs on disk and nothing started.
pub(super) struct Prepared {
    pub provider: ImdsIdentity,
    pub identity: Identity,
    pub spec: NodeSpec,
    pub sdk: aws_config::SdkConfig,
    pub store: Store,
    pub peers: Peers,
    /// The servers came from the published list: a join confirms them.
    pub via_published: bool,
    pub ec2: Budgeted<Ec2Peers>,
    pub authorities: Option<NodeAuthorities>,
}

impl Agent {
    pub(super) async fn prepare(&mut self) -> Result<Prepared, BootError> {
        let settings = self.settings.clone();
        // Steps 1 and 2.
        self.say("starting", "reading instance identity from IMDS");
        let provider = ImdsIdentity::new(tuning::imds(&settings), tuning::aws(&settings));
        let identity = node::identity(&provider).await?;
        self.record(
            "identity",
            json!({
                "instance_id": identity.instance_id,
                "region": identity.region,
                "availability_zone": identity.availability_zone,
                "private_ipv4": identity.private_ipv4,
                "tags_source": identity.tags_source,
            }),
        );
        let spec = node::intent(&identity, &settings)?;
        self.record("intent", &spec);

        // Step 3.
        let sdk = kraken_aws::sdk_config(&identity.region, &tuning::aws(&settings)).await;
        self.say("starting", "reading the cluster secrets");
        let store = Store::from_settings(
            &settings.secrets,
            &spec.cluster,
            &sdk,
            &kraken_aws::ApiCalls::default(),
        )?;
        // Everything step 3 reads, and a client's published server list,
        // in one batch: one SSM transaction for a client whose cluster runs.
        let boot_names = secrets::boot_names(&spec, &settings);
        let boot_names: Vec<&str> = boot_names.iter().map(String::as_str).collect();
        let boot_store = store.snapshot(&boot_names).await?;
        self.secrets = secrets::secrets(
            &boot_store,
            &spec,
            &identity.instance_id,
            &settings,
            SecretsMode::Boot,
        )
        .await?;
        let published = match published::read_at_boot(&boot_store, &boot_names).await {
            Some(_) if self.distrust_published => {
                log::info!(
                    "discovery: the last convergence with the published servers failed; \
                     asking EC2"
                );
                None
            }
            list => list,
        };

        // Step 4.
        let calls = kraken_aws::ApiCalls::default();
        let ec2 = Budgeted::new(
            Ec2Peers::new(kraken_aws::ec2_client(&sdk, &calls), calls)
                .in_vpc(identity.vpc_id.clone()),
            tuning::call_budget(&settings),
        );
        let (peers, via_published) = self
            .discover(&ec2, &spec, provider.ec2_calls(), published)
            .await?;

        // Steps 3 and 5 for certificates, then 5 for configs.
        let (authorities, _) = self.certificates(&boot_store, &identity, &spec).await?;
        drop(boot_store);
        self.say("starting", "rendering configs");
        self.render_and_install(&identity, &spec, &peers)?;

        Ok(Prepared {
            provider,
            identity,
            spec,
            sdk,
            store,
            peers,
            via_published,
            ec2,
            authorities,
        })
    }

    /// Step 4, until enough servers are found (or skipped for cloud
    /// auto-join): from the published list when it is fresh and names
    /// every kind of server this node needs (true: to be confirmed by a
    /// join), else from EC2.
    async fn discover(
        &mut self,
        ec2: &Budgeted<Ec2Peers>,
        spec: &NodeSpec,
        identity_calls: u64,
        published: Option<Published>,
    ) -> Result<(Peers, bool), BootError> {
        self.say(
            "waiting",
            &format!("discovering the servers of cluster {}", spec.cluster),
        );
        if discovery::uses_cloud_auto_join(spec, &self.settings) {
            log::info!("discovery: left to Consul's and Nomad's cloud auto-join");
            self.record("discovery", Peers::default());
            return Ok((Peers::default(), false));
        }
        self.status.ec2_api_calls = identity_calls;
        if let Some(peers) = discovery::usable_published(published.as_ref(), spec)
            && published::reachable(&peers).await
        {
            // Until this convergence succeeds: a failure after here may be
            // the list's, and the next attempt must not trust it again.
            self.distrust_published = true;
            self.record("discovery", &peers);
            return Ok((peers, true));
        }
        let peers = self.discover_ec2(ec2, spec).await?;
        Ok((peers, false))
    }

    pub(super) async fn discover_ec2(
        &mut self,
        ec2: &Budgeted<Ec2Peers>,
        spec: &NodeSpec,
    ) -> Result<Peers, BootError> {
        let before = ec2.inner().api_calls();
        let mut backoff = tuning::discovery_backoff(&self.settings);
        let poll = tuning::discovery_poll(&self.settings);
        let peers =
            discovery::discover_until_enough(ec2, spec, poll, &mut backoff, &self.progress()).await;
        self.status.ec2_api_calls += ec2.inner().api_calls() - before;
        let peers = peers?;
        log::info!(
            "discovery: {} EC2 API calls so far",
            self.status.ec2_api_calls
        );
        self.record("discovery", &peers);
        Ok(peers)
    }

    /// The node's intermediates and its leaf certificates, with TLS on.
    pub(super) async fn certificates(
        &mut self,
        store: &Store,
        identity: &Identity,
        spec: &NodeSpec,
    ) -> Result<(Option<NodeAuthorities>, Vec<LeafReport>), BootError> {
        let authorities = if self.settings.tls.enabled {
            self.say("starting", "reading this node's certificate authorities");
            pki::authorities(store, spec, &self.settings, SecretsMode::Boot).await?
        } else {
            None
        };
        let leaves = match &authorities {
            Some(a) => pki::ensure_leaves(identity, spec, &self.settings, a)?,
            None => Vec::new(),
        };
        self.record("tls", &leaves);
        Ok((authorities, leaves))
    }

    /// In a warm pool: Docker started and the configured images pulled
    /// (on nodes that run Docker), the launching hook completed, then the
    /// wait for `InService`. Consul and Nomad stay stopped: the node joins
    /// nothing while the group holds it.
    pub(super) async fn stay_warm(
        &mut self,
        prepared: &Prepared,
        state: &str,
    ) -> Result<(), BootError> {
        let settings = self.settings.clone();
        let started = std::time::Instant::now();
        self.say("warm", &format!("{state}: preparing, joining nothing"));
        let mut pulled = Vec::new();
        if self.runs(&prepared.spec, Service::Docker) {
            self.apply(
                &prepared.identity,
                &prepared.spec,
                &prepared.store,
                &[Service::Docker],
            )
            .await?;
            pulled = warm::pull_images("docker", &settings.lifecycle.warm_images).await;
        }
        let hook = match lifecycle::Hooks::new(&settings, &prepared.identity, &prepared.sdk) {
            Some(h) => Some(h.complete(&h.launching, HookResult::Continue).await),
            None => None,
        };
        let prepared_s = started.elapsed().as_secs_f64();
        let mut record =
            json!({ "state": state, "prepared_s": prepared_s, "pulled": pulled, "hook": hook });
        self.record("warm", &record);
        self.say(
            "warm",
            &format!("{state}: prepared in {prepared_s:.1}s; waiting to be put in service"),
        );
        let to = warm::until_in_service(&prepared.provider).await;
        log::info!("lifecycle: left the warm pool ({to}): joining the cluster");
        record["left_pool_unix"] = json!(kraken_ready::now_unix());
        record["to"] = json!(to);
        self.record("warm", &record);
        Ok(())
    }
}
