//! One pass of the boot flow. Render → start → bootstrap → tokens → render
//! again is inherent: the bootstrap needs Consul running, and makes the
//! tokens the configs then carry. Nomad waits for its token, so that it
//! starts once, with it (a restart of every Nomad server right after the
//! bootstrap cost the clients that had registered a minute or more), and
//! a client waits for the Nomad servers' bootstrap before starting its own.

use kraken_discovery::{Budgeted, Ec2Peers, Peers};
use kraken_hashi::Token;
use kraken_identity::Identity;
use kraken_intent::NodeSpec;
use kraken_render::Service;
use kraken_secrets::Store;
use serde_json::json;

use super::prepare::Prepared;
use super::state::{Agent, Converged, OwnTokens};
use crate::steps::follow::Follow;
use crate::steps::{bootstrap, lifecycle, node_tokens, start, tokens};
use crate::{BootError, clients, tuning};

impl Agent {
    pub(super) async fn converge(&mut self) -> Result<Converged, BootError> {
        let settings = self.settings.clone();
        let mut prepared = self.prepare().await?;
        if let Some(state) = lifecycle::warm::warmed(&prepared.provider).await {
            self.stay_warm(&prepared, &state).await?;
            // The pool may have held the instance for days: servers,
            // secrets and certificates are read again (nothing is rewritten
            // that did not change, so this costs well under a second).
            prepared = self.prepare().await?;
        }
        let Prepared {
            provider: _,
            identity,
            spec,
            sdk,
            store,
            peers,
            via_published,
            ec2,
            authorities,
        } = prepared;
        let mut peers = peers;

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
        self.start_node_tokens(&identity, &spec, &store);
        let node = &identity.instance_id;
        if tokens::fetch(&store, &spec, node, &settings, &consul, &mut self.secrets).await? {
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
            identity.private_ipv4,
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

    /// On a Consul server, once per process, as soon as the Consul phase
    /// is done: the task that gives every other node its own Consul token
    /// while this node's Consul leads (`steps::node_tokens`).
    fn start_node_tokens(&mut self, identity: &Identity, spec: &NodeSpec, store: &Store) {
        if self.node_tokens_started || !spec.has(kraken_intent::Role::ConsulServer) {
            return;
        }
        let Some(management) = self.secrets.initial_management.clone() else {
            return;
        };
        self.node_tokens_started = true;
        let watch = node_tokens::Watch {
            settings: self.settings.clone(),
            spec: spec.clone(),
            node: identity.instance_id.clone(),
            own_ip: identity.private_ipv4,
            store: store.unsnapshotted(),
            management,
        };
        tokio::spawn(watch.run());
    }

    pub(super) fn runs(&self, spec: &NodeSpec, service: Service) -> bool {
        match service {
            Service::Consul => true,
            Service::Docker => spec.runs_docker(&self.settings.docker),
            Service::Nomad => spec.runs_nomad(),
            Service::Operator => false,
        }
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
}
