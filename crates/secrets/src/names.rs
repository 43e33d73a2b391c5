//! The names the agent uses.

/// Consul's gossip encryption key; every node reads it.
pub const GOSSIP_KEY: &str = "consul/gossip-key";
/// Consul's `initial_management` token; Consul servers only.
pub const CONSUL_INITIAL_MANAGEMENT: &str = "consul/tokens/initial-management";
/// The Consul agent token of the Consul servers (made by the bootstrap;
/// only Consul servers read it). Every other node has its own, derived
/// from [`NODE_TOKEN_KEY`].
pub const CONSUL_AGENT: &str = "consul/tokens/agent";
/// The key each node's own Consul agent token is derived from
/// ([`crate::Secret::derived_token`] of the key and the node name, the
/// instance id; `docs/operations.md`, node tokens). Consul servers create
/// it; every node reads it.
pub const NODE_TOKEN_KEY: &str = "consul/node-token-key";
/// Nomad servers' Consul token.
pub const CONSUL_NOMAD_SERVER: &str = "consul/tokens/nomad-server";
/// Nomad clients' Consul token.
pub const CONSUL_NOMAD_CLIENT: &str = "consul/tokens/nomad-client";
/// The agent's own Consul token on servers (Consul and Nomad servers): the
/// restart lock, autopilot's health, reading ACL metadata.
pub const CONSUL_SERVER: &str = "consul/tokens/server";
/// The Prometheus scraper's Consul token (policy `kraken-metrics`: read
/// the agents' metrics and the catalog, nothing else); read by whoever
/// runs the scraper, no node.
pub const CONSUL_METRICS: &str = "consul/tokens/metrics";
/// Nomad's management token, the `BootstrapSecret` of `nomad acl bootstrap`.
pub const NOMAD_MANAGEMENT: &str = "nomad/tokens/management";
/// The agent's own Nomad token on Nomad servers: join, autopilot's health
/// (never the management token for routine calls).
pub const NOMAD_AGENT: &str = "nomad/tokens/agent";
/// What a Nomad client's agent drains and purges its own node with when
/// the instance goes away (Nomad policy `kraken-drain`: node write);
/// Nomad clients read it.
pub const NOMAD_DRAIN: &str = "nomad/tokens/drain";
/// The Nomad servers' gossip encryption key; Nomad servers create and
/// read it (Nomad clients do not gossip).
pub const NOMAD_GOSSIP_KEY: &str = "nomad/gossip-key";
/// The cluster's root CA, certificate and key (`docs/pki.md`); Consul
/// servers only.
pub const PKI_CA: &str = "pki/ca";
/// The role intermediates, certificate, root and key each; a node reads
/// those of its own roles.
pub const PKI_CONSUL_SERVER: &str = "pki/consul-server";
pub const PKI_CONSUL_CLIENT: &str = "pki/consul-client";
pub const PKI_NOMAD_SERVER: &str = "pki/nomad-server";
pub const PKI_NOMAD_CLIENT: &str = "pki/nomad-client";
/// Where the cluster's servers are, as its Consul leader's agent last saw
/// them (JSON, not secret): a booting client reads it in the same batch as
/// its secrets instead of asking EC2 (`docs/architecture.md`). Written by
/// Consul servers, read by every node.
pub const SERVERS: &str = "servers";
