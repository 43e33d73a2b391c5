//! Step 4 for a client booting into a running cluster: the servers as the
//! cluster last published them, read in the same batch as the node's
//! secrets, so that such a boot costs no EC2 call
//! (`docs/architecture.md`, "Discovery").
//!
//! The Consul leader's agent writes the list (the secret store's
//! [`names::SERVERS`]) from what Consul knows: the alive servers in its
//! gossip pool, and the Nomad servers passing their checks in its catalog.
//! It writes when that set changes, and otherwise once every
//! [`REPUBLISH`] so that readers can tell a live list from an abandoned
//! one. A reader uses a list younger than [`MAX_AGE`] that names every
//! kind of server it needs and of which a Consul server answers on its
//! gossip port; anything else falls back to EC2, and so does the next
//! attempt after a convergence with the list failed, or when it did not
//! lead to a Consul leader within [`crate::tuning::PUBLISHED_JOIN`].

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::time::{Duration, SystemTime};

use kraken_discovery::Peers;
use kraken_hashi::Consul;
use kraken_secrets::{Secret, SecretStore, Store, names};
use serde::{Deserialize, Serialize};

/// The leader rewrites an unchanged list this often.
pub const REPUBLISH: Duration = Duration::from_secs(3600);
/// A list older than this is not trusted: its writer is gone.
pub const MAX_AGE: Duration = Duration::from_secs(3 * 3600);

/// The published servers of one cluster.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Published {
    pub consul_servers: BTreeSet<Ipv4Addr>,
    pub nomad_servers: BTreeSet<Ipv4Addr>,
    /// The Consul servers' node names: their instance ids.
    pub instances: BTreeSet<String>,
    /// When the leader's agent wrote it, in Unix seconds.
    pub written_unix: u64,
}

pub fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl Published {
    pub fn parse(value: &Secret) -> Option<Published> {
        match serde_json::from_str(value.expose()) {
            Ok(p) => Some(p),
            Err(e) => {
                log::warn!("the published server list is not readable ({e}); asking EC2");
                None
            }
        }
    }

    pub fn peers(&self) -> Peers {
        Peers {
            consul_servers: self.consul_servers.clone(),
            nomad_servers: self.nomad_servers.clone(),
        }
    }

    /// Young enough to trust at `now` (a clock a few minutes off either way
    /// is tolerated).
    pub fn fresh(&self, now: u64) -> bool {
        self.written_unix <= now + 300 && now.saturating_sub(self.written_unix) <= MAX_AGE.as_secs()
    }

    fn same_servers(&self, other: &Published) -> bool {
        self.consul_servers == other.consul_servers
            && self.nomad_servers == other.nomad_servers
            && self.instances == other.instances
    }
}

/// The list as `store` holds it (at boot, the batch the secrets came in);
/// `None` when absent or unreadable (a read error is logged: EC2 is asked).
pub async fn read(store: &Store) -> Option<Published> {
    match store.get(names::SERVERS).await {
        Ok(value) => value.as_ref().and_then(Published::parse),
        Err(e) => {
            log::warn!("reading the published server list: {e}; asking EC2");
            None
        }
    }
}

/// At boot: the list, if `batch` (the names step 3 read ahead,
/// `steps::secrets::boot_names`) holds it; servers and auto-join nodes do
/// not read it.
pub async fn read_at_boot(store: &Store, batch: &[&str]) -> Option<Published> {
    if batch.contains(&names::SERVERS) {
        read(store).await
    } else {
        None
    }
}

/// Consul's gossip port, where a client's join goes first.
const SERF_LAN: u16 = 8301;
/// How long each listed server gets to accept a connection.
const PROBE: Duration = Duration::from_secs(2);

/// Whether any listed Consul server accepts a TCP connection on its gossip
/// port: a list whose servers were all replaced is told apart in seconds,
/// before the configs are written with it. (An address that answers but
/// is no server of this cluster fails the join instead; the convergence
/// then fails, and the next one asks EC2.)
pub async fn reachable(peers: &Peers) -> bool {
    let mut probes = tokio::task::JoinSet::new();
    for ip in &peers.consul_servers {
        let addr = std::net::SocketAddr::from((*ip, SERF_LAN));
        probes.spawn(async move {
            matches!(
                tokio::time::timeout(PROBE, tokio::net::TcpStream::connect(addr)).await,
                Ok(Ok(_))
            )
        });
    }
    while let Some(answered) = probes.join_next().await {
        if answered.unwrap_or(false) {
            return true;
        }
    }
    log::warn!(
        "discovery: none of the published Consul servers {:?} answers on port {SERF_LAN}; \
         asking EC2",
        peers.consul_servers
    );
    false
}

/// The servers as the Consul agent at `consul` sees them now; an error
/// when it sees no Consul server (nothing worth publishing).
pub async fn from_consul(consul: &Consul) -> Result<Published, String> {
    let members = consul
        .server_members()
        .await
        .map_err(|e| format!("reading Consul's gossip pool: {e}"))?;
    let servers: Vec<_> = members
        .iter()
        .filter(|m| m.is_alive() && m.is_server())
        .filter_map(|m| Some((m.addr.parse::<Ipv4Addr>().ok()?, m.name.clone())))
        .collect();
    if servers.is_empty() {
        return Err("no Consul server is alive in the gossip pool".into());
    }
    let nomad = consul
        .passing_addresses("nomad", "rpc")
        .await
        .map_err(|e| format!("reading the Nomad servers from Consul's catalog: {e}"))?;
    Ok(Published {
        consul_servers: servers.iter().map(|(ip, _)| *ip).collect(),
        instances: servers.into_iter().map(|(_, name)| name).collect(),
        nomad_servers: nomad.iter().filter_map(|a| a.parse().ok()).collect(),
        written_unix: now_unix(),
    })
}

/// On a Consul server whose Consul is the leader (`own` is this node's
/// address): writes the servers Consul sees when they differ from `last`
/// (read from the store the first time) or `last` is [`REPUBLISH`] old.
/// True when it wrote. Another node's Consul being the leader is not an
/// error: it writes nothing.
pub async fn publish(
    store: &Store,
    consul: &Consul,
    own: Ipv4Addr,
    last: &mut Option<Published>,
) -> Result<bool, String> {
    let leader = consul
        .leader()
        .await
        .map_err(|e| format!("asking Consul for its leader: {e}"))?;
    let leads = leader
        .as_deref()
        .and_then(|l| l.rsplit_once(':'))
        .is_some_and(|(ip, _)| ip.parse::<Ipv4Addr>().ok() == Some(own));
    if !leads {
        // A later leadership starts from what the store holds then.
        *last = None;
        return Ok(false);
    }
    let now = from_consul(consul).await?;
    if last.is_none() {
        *last = read(store).await;
    }
    if let Some(prev) = last.as_ref()
        && prev.same_servers(&now)
        && now.written_unix.saturating_sub(prev.written_unix) < REPUBLISH.as_secs()
    {
        return Ok(false);
    }
    let body = serde_json::to_string(&now).expect("the server list serialises");
    store
        .put(names::SERVERS, &Secret::new(body))
        .await
        .map_err(|e| format!("publishing the server list: {e}"))?;
    log::info!(
        "published the servers of this cluster: Consul {:?}, Nomad {:?}",
        now.consul_servers,
        now.nomad_servers
    );
    *last = Some(now);
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list(written_unix: u64) -> Published {
        Published {
            consul_servers: ["10.0.0.1".parse().unwrap()].into(),
            nomad_servers: BTreeSet::new(),
            instances: ["i-1".to_owned()].into(),
            written_unix,
        }
    }

    #[test]
    fn a_list_is_fresh_only_within_its_age_and_not_from_the_future() {
        let now = 1_000_000;
        assert!(list(now).fresh(now));
        assert!(list(now - MAX_AGE.as_secs()).fresh(now));
        assert!(!list(now - MAX_AGE.as_secs() - 1).fresh(now));
        assert!(list(now + 60).fresh(now), "a clock a minute off");
        assert!(!list(now + 3600).fresh(now));
    }

    #[test]
    fn the_list_round_trips_through_its_json() {
        let p = list(42);
        let back = Published::parse(&Secret::new(serde_json::to_string(&p).unwrap())).unwrap();
        assert_eq!(back, p);
        assert!(Published::parse(&Secret::new("not json")).is_none());
    }
}
