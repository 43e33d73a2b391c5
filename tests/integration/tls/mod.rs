//! The cluster PKI on a real node (Consul and Nomad servers with TLS on,
//! booted by `kraken-agent run`): who is refused, who is let in,
//! certificates renewed without restarting anything, and role tokens
//! revoked and rotated under it.

mod access;
mod node_files;
mod renewal;
mod tokens;
