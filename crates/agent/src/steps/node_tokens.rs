//! Step 7 on Consul servers, for the node's life: every node that is not a
//! Consul server gets a Consul agent token of its own, made by the Consul
//! leader's agent with Consul's node identity of that node
//! (`kraken_bootstrap::Bootstrap::node_tokens`).
//!
//! A full round (every `bootstrap.node_token_secs`) lists every token and
//! deletes those of departed nodes; in between, the leader reads its
//! gossip pool's membership clock every second and, when it moved, makes
//! the tokens of the nodes that just joined in a quick round. A joining
//! node so waits about a second for its token, not a period
//! (`docs/benchmarks.md`, warm start).
//!
//! It runs in a task of its own, started as soon as the Consul phase is
//! done, not in the watch loop: a Consul server that also runs Nomad
//! reaches its watch loop only once Nomad has a leader, and a Nomad server
//! that is a Consul client starts Nomad only once it has its Consul token.
//! Made from the watch loop, that token would wait for itself.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use kraken_bootstrap::{Bootstrap, Ledger, NodeTokens};
use kraken_hashi::{Consul, Token};
use kraken_intent::{NodeSpec, Role};
use kraken_secrets::{Secret, SecretStore, Store, names};
use kraken_settings::Settings;

use crate::{BootError, clients, tuning};

/// Full rounds as the leader after which the servers' token and the
/// node-token key are read again (one store transaction): a rotated key
/// reaches the leader within about 5 minutes (`token_check_secs`, when
/// the nodes look for theirs). Only the leader reads: the followers'
/// watches would triple a steady cost that grows with the clusters.
const REREAD_AFTER: u32 = 60;

/// Failed full rounds in a row after which they are read again (the
/// servers' token may have been rotated; Consul may also just be
/// restarting, hence not at once).
const REREAD_AFTER_FAILURES: u32 = 12;

/// How old what the watch read may be when its server becomes the leader.
const TERM_REREAD: Duration = Duration::from_secs(60);

/// How often the leader looks at its membership clock: most of a joining
/// node's wait for its token (the 5 s goal from `InService` to an eligible
/// node). One small local read (`/v1/agent/self`); every server's watch
/// reads it, a quick round follows only on the leader.
const TICK: Duration = Duration::from_millis(500);

/// A quick round lists the gossip pool's members, which grows with the
/// fleet (megabytes of JSON at 10,000 nodes) while a boot storm moves the
/// clock at every tick: after one, the watch waits this many times what it
/// took, so quick rounds take at most a tenth of the leader's agent.
const QUICK_DUTY: u32 = 10;

/// The pause before the next look at the clock, after a quick round that
/// took `busy` (zero when there was none).
fn pause_after(busy: Duration) -> Duration {
    TICK.max(busy.saturating_mul(QUICK_DUTY))
}

/// What the leader's rounds read with: the servers' own token, and the key
/// every node's token is derived from.
pub struct Reader {
    pub consul: Consul,
    pub key: Secret,
}

/// What the leader's watch needs, owned: it outlives the convergence.
pub struct Watch {
    pub settings: Settings,
    pub spec: NodeSpec,
    /// This node's name (its instance id) and address.
    pub node: String,
    pub own_ip: Ipv4Addr,
    pub store: Store,
    /// The initial-management token: it alone makes and deletes tokens.
    pub management: Secret,
}

impl Watch {
    /// For the process's life: a full round every
    /// `bootstrap.node_token_secs` (give or take a tenth), and a quick one
    /// within a [`TICK`] of the membership clock moving, while this node's
    /// Consul leads. A failed round is logged and tried again at the next.
    pub async fn run(self) {
        let period = Duration::from_secs(self.settings.bootstrap.node_token_secs.max(1));
        let mut ledger = Ledger::default();
        let mut reader: Option<Reader> = None;
        let mut led = 0u32;
        let mut failures = 0u32;
        let mut next_full = tokio::time::Instant::now();
        let mut clock: Option<u64> = None;
        let mut read_at = tokio::time::Instant::now();
        let mut busy = Duration::ZERO;
        loop {
            if reader.is_none() {
                reader = self.reader().await;
                read_at = tokio::time::Instant::now();
            }
            if let Some(r) = &reader {
                let full = tokio::time::Instant::now() >= next_full;
                // A server that becomes the leader reads the key again
                // before its first round: with a key from before a
                // rotation it would replace every node's token with one
                // of the old key.
                if full
                    && !ledger.is_synced()
                    && read_at.elapsed() > TERM_REREAD
                    && matches!(self.leads(&r.consul).await, Ok(true))
                {
                    reader = None;
                    continue;
                }
                // Read before the round: a join during it moves the clock
                // again, and the next tick sees that.
                let moved = match r.consul.lan_member_time().await {
                    Ok(now) => std::mem::replace(&mut clock, now) != now,
                    Err(_) => false,
                };
                let outcome = if full {
                    next_full =
                        tokio::time::Instant::now() + kraken_discovery::jittered(period, 0.1);
                    self.round(r, &mut ledger).await
                } else if moved {
                    self.quick_round(r, &mut ledger, &mut busy).await
                } else {
                    Ok(None)
                };
                match outcome {
                    Ok(done) => {
                        if full {
                            failures = 0;
                            led += u32::from(done.is_some());
                        }
                        if let Some(done) = done.filter(NodeTokens::changed) {
                            log::info!("node tokens: {done:?}");
                        }
                    }
                    Err(e) => {
                        log::warn!("node tokens: {e}; trying again in {}s", period.as_secs());
                        // A quick round that failed is made good by the
                        // next full one.
                        clock = None;
                        failures += u32::from(full);
                    }
                }
                if full
                    && ((led > 0 && led % REREAD_AFTER == 0)
                        || (failures > 0 && failures % REREAD_AFTER_FAILURES == 0))
                {
                    led = 0;
                    failures = 0;
                    reader = None;
                }
            }
            // Without what it reads with (the store failed, or the
            // bootstrap has not made the servers' token yet), a period,
            // not a tick: that read is a store transaction.
            let pause = if reader.is_some() {
                pause_after(std::mem::take(&mut busy))
            } else {
                period
            };
            tokio::time::sleep(pause).await;
        }
    }

    /// The servers' own token (`consul/tokens/server`), for the reads, and
    /// the node-token key, in one store transaction. The key is created
    /// here when missing (a new cluster, or one from before node tokens):
    /// its first users are the Consul servers' watches, and no boot pays
    /// a transaction for it.
    async fn reader(&self) -> Option<Reader> {
        let read = self
            .store
            .get_many(&[names::CONSUL_SERVER, names::NODE_TOKEN_KEY])
            .await;
        let read = match read {
            Ok(mut r) if r.len() == 2 && r[0].is_some() && r[1].is_none() => {
                match self
                    .store
                    .get_or_create(names::NODE_TOKEN_KEY, Secret::gossip_key)
                    .await
                {
                    Ok(key) => {
                        r[1] = Some(key);
                        Ok(r)
                    }
                    Err(e) => Err(e),
                }
            }
            other => other,
        };
        match read.as_deref() {
            Ok([Some(token), Some(key)]) => {
                clients::consul(&self.settings, Some(Token::new(token.expose())))
                    .map(|consul| Reader {
                        consul,
                        key: key.clone(),
                    })
                    .map_err(|e| log::warn!("node tokens: {e}"))
                    .ok()
            }
            Ok(_) => None,
            Err(e) => {
                log::warn!("node tokens: reading the servers' token and the node-token key: {e}");
                None
            }
        }
    }

    /// One full round; `None` when this node's Consul does not lead.
    pub async fn round(
        &self,
        reader: &Reader,
        ledger: &mut Ledger,
    ) -> Result<Option<NodeTokens>, BootError> {
        let Some(b) = self.leading(&reader.consul, ledger).await? else {
            return Ok(None);
        };
        let grace = Duration::from_secs(self.settings.bootstrap.node_token_grace_secs);
        let (consul, key) = (&reader.consul, &reader.key);
        let done = b
            .node_tokens(consul, &self.spec.datacenter, key, ledger, grace)
            .await?;
        Ok(Some(done))
    }

    /// One quick round (tokens for the nodes that joined since the last
    /// round, nothing deleted); `None` when this node's Consul does not
    /// lead. `busy`: how long the part that grows with the fleet took
    /// (the members listed, the tokens made).
    pub async fn quick_round(
        &self,
        reader: &Reader,
        ledger: &mut Ledger,
        busy: &mut Duration,
    ) -> Result<Option<NodeTokens>, BootError> {
        let Some(b) = self.leading(&reader.consul, ledger).await? else {
            return Ok(None);
        };
        let (consul, key) = (&reader.consul, &reader.key);
        let started = tokio::time::Instant::now();
        let made = b
            .quick_node_tokens(consul, &self.spec.datacenter, key, ledger)
            .await;
        *busy = started.elapsed();
        let made = made?;
        Ok(Some(NodeTokens {
            made,
            deleted: Vec::new(),
        }))
    }

    /// The writer when this node's Consul leads; otherwise `None`, and the
    /// ledger forgotten (another leader keeps its own).
    /// Whether this node's Consul is the Raft leader.
    async fn leads(&self, consul: &Consul) -> Result<bool, BootError> {
        let leader = consul
            .leader()
            .await
            .map_err(BootError::hashi("ask Consul for its leader"))?;
        Ok(leader
            .and_then(|l| l.parse::<SocketAddr>().ok())
            .is_some_and(|a| a.ip() == IpAddr::V4(self.own_ip)))
    }

    async fn leading(
        &self,
        reader: &Consul,
        ledger: &mut Ledger,
    ) -> Result<Option<Bootstrap<'_>>, BootError> {
        if !self.leads(reader).await? {
            ledger.clear();
            return Ok(None);
        }
        let writer = clients::consul(&self.settings, Some(Token::new(self.management.expose())))?;
        Ok(Some(Bootstrap {
            consul: writer,
            nomad: None,
            store: &self.store,
            cluster: self.spec.cluster.clone(),
            node: self.node.clone(),
            lease: tuning::lease(&self.settings),
            crash_after: None,
        }))
    }
}

/// Whether this node's Consul agent takes its own node token (every node
/// but the Consul servers, which share `consul/tokens/agent`).
pub fn has_own_token(spec: &NodeSpec) -> bool {
    !spec.has(Role::ConsulServer)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quick_rounds_take_at_most_a_tenth_of_the_leaders_time() {
        assert_eq!(pause_after(Duration::ZERO), TICK);
        assert_eq!(pause_after(Duration::from_millis(20)), TICK);
        // 10,000 members listed in 300 ms: the next look 3 s later.
        assert_eq!(
            pause_after(Duration::from_millis(300)),
            Duration::from_secs(3)
        );
    }
}
