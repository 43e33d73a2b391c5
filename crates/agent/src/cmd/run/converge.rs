//! One pass of the boot flow. Render → start → bootstrap → tokens → render
//! again is inherent: the bootstrap needs Consul running, and makes the
//! tokens the configs then carry. Nomad waits for its token, so that it
//! starts once, with it (a restart of every Nomad server right after the
//! bootstrap cost the clients that had registered a minute or more), and
//! a client waits for the Nomad servers' bootstrap before starting its own.

use kraken_discovery::{Budgeted, Ec2Peers, Peers};
use kraken_hashi::Token;
use kraken_identity::{Identity, ImdsIdentity};
use kraken_intent::NodeSpec;
use kraken_render::Service;
use kraken_secrets::Store;
use serde_json::json;

use super::state::{Agent, Converged, OwnTokens};
use crate::steps::follow::Follow;
use crate::steps::pki::{self, LeafReport, NodeAuthorities};
use crate::steps::published::{self, Published};
use crate::steps::secrets::SecretsMode;
use crate::steps::{bootstrap, discovery, node, secrets, start, tokens};
use crate::{BootError, clients, tuning};

impl Agent {
    pub(super) async fn converge(&mut self) -> Result<Converged, BootError> {
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
        let boot_store = store.snapshot(&boot_names).await?;
        self.secrets = secrets::secrets(&boot_store, &spec, &settings, SecretsMode::Boot).await?;
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
        let (mut peers, via_published) = self
            .discover(&ec2, &spec, provider.ec2_calls(), published)
            .await?;

        // Steps 3 and 5 for certificates, then 5 for configs.
        let (authorities, _) = self.certificates(&boot_store, &identity, &spec).await?;
        drop(boot_store);
        self.say("starting", "rendering configs");
        self.render_and_install(&identity, &spec, &peers)?;

        // Step 6 for Consul (and Docker: nothing of it waits on a token).
        let units: Vec<&str> = [Service::Consul, Service::Docker, Service::Nomad]
            .iter()
            .filter(|s| self.runs(&spec, **s))
            .map(|s| crate::steps::start::unit_of(&settings, *s))
            .collect();
        kraken_start::daemon_reload_if_needed(&self.manager, &units, &mut Default::default())
            .await?;
        let first: Vec<Service> = [Service::Consul, Service::Docker]
            .into_iter()
            .filter(|s| self.runs(&spec, *s))
            .collect();
        self.apply(&identity, &spec, &store, &first).await?;
        if via_published {
            peers = self
                .confirm_published(&ec2, &identity, &spec, &store, peers)
                .await?;
        }

        // Step 7, Consul's half, then this node's own tokens once Consul
        // knows them.
        let progress = self.progress();
        let report = bootstrap::consul_phase(
            &settings,
            &spec,
            &identity.instance_id,
            &store,
            &self.secrets,
            &sdk,
            &progress,
        )
        .await?;
        self.record("bootstrap", &report);
        if !tokens::has_role_tokens(&spec, &self.secrets) {
            self.say(
                "waiting",
                "waiting for this node's tokens (the cluster bootstrap makes them)",
            );
        }
        let consul = clients::consul(&settings, None)?;
        if tokens::fetch(&store, &spec, &settings, &consul, &mut self.secrets).await? {
            self.render_and_install(&identity, &spec, &peers)?;
            self.apply(&identity, &spec, &store, &[Service::Consul])
                .await?;
        }
        self.record("tokens", json!({ "installed": true }));

        // Step 6 for Nomad, with its token; then step 7, Nomad's half.
        if spec.runs_nomad() {
            let token = self.secrets.consul_agent.as_ref();
            let agent = clients::consul(&settings, token.map(|t| Token::new(t.expose())))?;
            bootstrap::wait_for_nomad_servers(&settings, &spec, &agent, &progress).await;
            self.apply(&identity, &spec, &store, &[Service::Nomad])
                .await?;
        }
        let report = bootstrap::nomad_phase(
            &settings,
            &spec,
            &identity.instance_id,
            &store,
            &self.secrets,
            &sdk,
            &progress,
        )
        .await?;
        if report.is_some() {
            self.record("bootstrap-nomad", &report);
        }
        if spec.runs_nomad() {
            self.say("starting", "waiting for Nomad to register in Consul");
            let token = self.secrets.consul_agent.as_ref();
            let agent = clients::consul(&settings, token.map(|t| Token::new(t.expose())))?;
            start::wait_nomad_registered(&settings, &agent, &spec, &identity.instance_id).await?;
        }
        let own = OwnTokens::read(&spec, &store).await?;
        self.distrust_published = false;
        Ok(Converged {
            follow: Follow::new(&spec, &settings, &peers),
            identity,
            spec,
            peers,
            ec2,
            authorities,
            store,
            own,
            published: None,
        })
    }

    pub(super) fn runs(&self, spec: &NodeSpec, service: Service) -> bool {
        match service {
            Service::Consul => true,
            Service::Docker => spec.runs_docker(&self.settings.docker),
            Service::Nomad => spec.runs_nomad(),
            Service::Operator => false,
        }
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

    async fn discover_ec2(
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

    /// A client started Consul with the published servers: keeps them if
    /// its Consul sees a leader through them within
    /// [`tuning::PUBLISHED_JOIN`]; otherwise (the list was stale: servers
    /// replaced since) asks EC2, rewrites the configs and joins what EC2
    /// knows, so a stale list costs a bounded wait and never strands the
    /// node.
    async fn confirm_published(
        &mut self,
        ec2: &Budgeted<Ec2Peers>,
        identity: &Identity,
        spec: &NodeSpec,
        store: &Store,
        peers: Peers,
    ) -> Result<Peers, BootError> {
        self.say("starting", "joining Consul through the published servers");
        let consul = clients::consul(&self.settings, None)?;
        let started = std::time::Instant::now();
        while started.elapsed() < tuning::PUBLISHED_JOIN {
            if let Ok(Some(_)) = consul.leader().await {
                return Ok(peers);
            }
            tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        }
        log::warn!(
            "Consul found no leader through the published servers {:?} in {}s: asking EC2",
            peers.consul_servers,
            tuning::PUBLISHED_JOIN.as_secs()
        );
        let peers = self.discover_ec2(ec2, spec).await?;
        self.render_and_install(identity, spec, &peers)?;
        let first: Vec<Service> = [Service::Consul, Service::Docker]
            .into_iter()
            .filter(|s| self.runs(spec, *s))
            .collect();
        self.apply(identity, spec, store, &first).await?;
        let token = self.secrets.consul_agent.as_ref();
        let consul = clients::consul(&self.settings, token.map(|t| Token::new(t.expose())))?;
        for ip in &peers.consul_servers {
            if let Err(e) = consul.join(&ip.to_string()).await {
                log::warn!("joining Consul server {ip}: {e}");
            }
        }
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
}
