//! Step 4 of the boot flow: where are the servers?
//!
//! One `ec2:DescribeInstances` query per refresh, filtered by the node's
//! VPC, the cluster tag, the server roles and the live instance states,
//! every page followed. Throttling, 5xx and timeouts are retried inside the
//! SDK with jittered exponential backoff (see `kraken-aws`); how often a
//! node asks at all is [`pace`]'s: jitter and a per-node [`CallBudget`].

mod backoff;
pub mod pace;

use std::collections::BTreeSet;
use std::net::Ipv4Addr;

use kraken_aws::{ApiCalls, Failure};
use serde::{Deserialize, Serialize};

pub use backoff::Backoff;
pub use pace::{Budgeted, CallBudget, jittered};

/// The servers of one cluster, by private address. Sorted sets, so that
/// the same peers always render the same bytes.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Peers {
    pub consul_servers: BTreeSet<Ipv4Addr>,
    pub nomad_servers: BTreeSet<Ipv4Addr>,
}

/// What a node needs to find before it can render a useful config.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Needed {
    pub consul_servers: usize,
    pub nomad_servers: usize,
}

impl Peers {
    /// Which needed servers are still missing, as a sentence; `None` when
    /// enough were found.
    pub fn shortfall(&self, needed: Needed) -> Option<String> {
        let mut missing = Vec::new();
        if self.consul_servers.len() < needed.consul_servers {
            missing.push(format!(
                "{} of {} Consul servers",
                self.consul_servers.len(),
                needed.consul_servers
            ));
        }
        if self.nomad_servers.len() < needed.nomad_servers {
            missing.push(format!(
                "{} of {} Nomad servers",
                self.nomad_servers.len(),
                needed.nomad_servers
            ));
        }
        (!missing.is_empty()).then(|| format!("found {}", missing.join(" and ")))
    }
}

pub trait PeerSource {
    fn discover(&self, cluster: &str)
    -> impl Future<Output = Result<Peers, DiscoveryError>> + Send;
}

#[derive(Debug, thiserror::Error)]
#[error("discovering the servers of cluster {cluster:?}: {}", failure.describe("ec2:DescribeInstances"))]
pub struct DiscoveryError {
    pub cluster: String,
    pub failure: Failure,
}

impl DiscoveryError {
    pub fn is_transient(&self) -> bool {
        self.failure.is_transient()
    }
}

pub const CLUSTER_TAG: &str = "kraken:cluster";
pub const ROLES_TAG: &str = "kraken:roles";

/// Peers from the EC2 API.
pub struct Ec2Peers {
    client: aws_sdk_ec2::Client,
    calls: ApiCalls,
    page_size: Option<i32>,
    vpc_id: Option<String>,
}

impl Ec2Peers {
    pub fn new(client: aws_sdk_ec2::Client, calls: ApiCalls) -> Self {
        Ec2Peers {
            client,
            calls,
            page_size: None,
            vpc_id: None,
        }
    }

    /// Only instances in this VPC: a cluster name reused in another VPC of
    /// the account is another cluster, and EC2 filters before it pages.
    pub fn in_vpc(mut self, vpc_id: Option<String>) -> Self {
        self.vpc_id = vpc_id;
        self
    }

    /// Results per page (5 to 1000; AWS's default when unset).
    pub fn with_page_size(mut self, size: i32) -> Self {
        self.page_size = Some(size);
        self
    }

    /// HTTP attempts made so far, retries included.
    pub fn api_calls(&self) -> u64 {
        self.calls.get()
    }
}

fn filter(name: &str, values: &[&str]) -> aws_sdk_ec2::types::Filter {
    values
        .iter()
        .fold(aws_sdk_ec2::types::Filter::builder().name(name), |f, v| {
            f.values(*v)
        })
        .build()
}

impl PeerSource for Ec2Peers {
    async fn discover(&self, cluster: &str) -> Result<Peers, DiscoveryError> {
        let mut query = self.client.describe_instances();
        if let Some(vpc) = &self.vpc_id {
            query = query.filters(filter("vpc-id", &[vpc]));
        }
        let mut pages = query
            .filters(filter(&format!("tag:{CLUSTER_TAG}"), &[cluster]))
            // Roles is a list tag; the wildcard selects nodes with either
            // server role, and the exact roles are parsed below.
            .filters(filter(
                &format!("tag:{ROLES_TAG}"),
                &["*consul-server*", "*nomad-server*"],
            ))
            .filters(filter("instance-state-name", &["pending", "running"]))
            .set_max_results(self.page_size)
            .into_paginator()
            .send();
        let mut peers = Peers::default();
        let mut instances = 0usize;
        while let Some(page) = pages.next().await {
            let page = page.map_err(|err| DiscoveryError {
                cluster: cluster.to_owned(),
                failure: Failure::classify(&err),
            })?;
            for instance in page.reservations().iter().flat_map(|r| r.instances()) {
                instances += 1;
                let Some(ip) = instance
                    .private_ip_address()
                    .and_then(|ip| ip.parse::<Ipv4Addr>().ok())
                else {
                    continue;
                };
                let roles = instance
                    .tags()
                    .iter()
                    .find(|t| t.key() == Some(ROLES_TAG))
                    .and_then(|t| t.value())
                    .unwrap_or("");
                for role in roles.split(',').map(str::trim) {
                    match role {
                        "consul-server" => {
                            peers.consul_servers.insert(ip);
                        }
                        "nomad-server" => {
                            peers.nomad_servers.insert(ip);
                        }
                        _ => {}
                    }
                }
            }
        }
        log::debug!(
            "discovery of {cluster}: {instances} instances, {} consul servers, {} nomad servers, {} EC2 calls so far",
            peers.consul_servers.len(),
            peers.nomad_servers.len(),
            self.calls.get()
        );
        Ok(peers)
    }
}

impl Ec2Peers {
    /// Which of `ids` are instances of `cluster` that EC2 lists as pending
    /// or running. Asked with filters rather than instance IDs: an ID EC2
    /// no longer knows is an answer here (gone), not an
    /// `InvalidInstanceID.NotFound` error.
    pub async fn live(
        &self,
        cluster: &str,
        ids: &[String],
    ) -> Result<BTreeSet<String>, DiscoveryError> {
        let mut live = BTreeSet::new();
        // EC2 takes at most 200 values per filter.
        for chunk in ids.chunks(100) {
            let values: Vec<&str> = chunk.iter().map(String::as_str).collect();
            let mut pages = self
                .client
                .describe_instances()
                .filters(filter("instance-id", &values))
                .filters(filter(&format!("tag:{CLUSTER_TAG}"), &[cluster]))
                .filters(filter("instance-state-name", &["pending", "running"]))
                .into_paginator()
                .send();
            while let Some(page) = pages.next().await {
                let page = page.map_err(|err| DiscoveryError {
                    cluster: cluster.to_owned(),
                    failure: Failure::classify(&err),
                })?;
                live.extend(
                    page.reservations()
                        .iter()
                        .flat_map(|r| r.instances())
                        .filter_map(|i| i.instance_id().map(str::to_owned)),
                );
            }
        }
        Ok(live)
    }
}

/// Peers given up front, as a node description file does.
#[derive(Debug, Clone)]
pub struct StaticPeers(pub Peers);

impl PeerSource for StaticPeers {
    async fn discover(&self, _cluster: &str) -> Result<Peers, DiscoveryError> {
        Ok(self.0.clone())
    }
}
