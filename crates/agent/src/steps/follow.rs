//! Step 4 after convergence: where the servers are now.
//!
//! A converged client does not ask EC2. It follows the servers through its
//! own Consul agent: the gossip pool's alive members with the server role
//! (answered by the local agent, no server needed), and the catalog's
//! passing `nomad` instances tagged `rpc` (a stale read: any live server
//! answers). Only when every server of a kind it needs is gone from there
//! does it ask EC2, through the node's call budget. Servers, a handful per
//! cluster, ask EC2 every `discovery.server_refresh_secs`, give or take a
//! quarter: they see a replaced peer in EC2 before it has joined anything.
//! A server that started before all its expected peers existed
//! ([`super::discovery::to_start`]) asks on every round until its view is
//! complete, so its configs name them all within a refresh period.

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use kraken_discovery::{PeerSource, Peers, jittered};
use kraken_hashi::Consul;
use kraken_intent::{NodeSpec, Role};
use kraken_settings::Settings;

use super::discovery::{discover, needed};
use crate::{BootError, tuning};

/// Where a round's servers came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Via {
    Consul,
    Ec2,
}

/// The follow state of one converged node.
#[derive(Debug)]
pub struct Follow {
    server: bool,
    server_period: Duration,
    next_ec2: Instant,
}

/// Servers' peers come from EC2; anyone else's from Consul.
pub fn is_server(spec: &NodeSpec) -> bool {
    spec.has(Role::ConsulServer) || spec.has(Role::NomadServer)
}

impl Follow {
    /// Just converged with `peers`: a server's first refresh is a jittered
    /// period away (it has just asked EC2), or the next round when `peers`
    /// lack some of its expected peers.
    pub fn new(spec: &NodeSpec, settings: &Settings, peers: &Peers) -> Follow {
        let server_period = tuning::server_refresh(settings);
        let mut follow = Follow {
            server: is_server(spec),
            server_period,
            next_ec2: Instant::now(),
        };
        follow.schedule(spec, peers);
        follow
    }

    fn schedule(&mut self, spec: &NodeSpec, peers: &Peers) {
        self.next_ec2 = if peers.shortfall(needed(spec)).is_some() {
            Instant::now()
        } else {
            Instant::now() + jittered(self.server_period, 0.25)
        };
    }

    /// This round's servers and where they came from; `None` for a server
    /// between its refreshes.
    pub async fn refresh<S: PeerSource>(
        &mut self,
        spec: &NodeSpec,
        consul: &Consul,
        ec2: &S,
    ) -> Result<Option<(Peers, Via)>, BootError> {
        if self.server {
            if Instant::now() < self.next_ec2 {
                return Ok(None);
            }
            let peers = discover(ec2, spec).await?;
            self.schedule(spec, &peers);
            return Ok(Some((peers, Via::Ec2)));
        }
        match from_consul(consul, spec).await {
            Ok(peers) => Ok(Some((peers, Via::Consul))),
            Err(why) => {
                log::warn!(
                    "{why}: asking EC2 for the servers of cluster {}",
                    spec.cluster
                );
                Ok(Some((discover(ec2, spec).await?, Via::Ec2)))
            }
        }
    }
}

/// The servers as this node's Consul agent knows them; an error saying
/// what is lost when a kind of server the node needs has none alive.
pub async fn from_consul(consul: &Consul, spec: &NodeSpec) -> Result<Peers, String> {
    let needed = needed(spec);
    let mut peers = Peers::default();
    let members = consul
        .server_members()
        .await
        .map_err(|e| format!("reading Consul's gossip pool: {e}"))?;
    peers.consul_servers = members
        .iter()
        .filter(|m| m.is_alive() && m.is_server())
        .filter_map(|m| m.addr.parse::<Ipv4Addr>().ok())
        .collect();
    if needed.consul_servers > 0 && peers.consul_servers.is_empty() {
        return Err("no Consul server is alive in this node's gossip pool".into());
    }
    if needed.nomad_servers > 0 {
        let nomad = consul
            .passing_addresses("nomad", "rpc")
            .await
            .map_err(|e| format!("reading the Nomad servers from Consul's catalog: {e}"))?;
        peers.nomad_servers = nomad.iter().filter_map(|a| a.parse().ok()).collect();
        if peers.nomad_servers.is_empty() {
            return Err("no Nomad server passes its checks in Consul's catalog".into());
        }
    }
    Ok(peers)
}
