//! HTTP clients for the Consul and Nomad agent APIs: the calls the agent
//! makes, typed, with errors that name the endpoint. Tokens are sent in the
//! documented headers and never appear in `Debug` output or errors.

mod consul;
mod http;
mod nomad;
#[cfg(test)]
mod tests;

pub use consul::{
    ANONYMOUS_TOKEN_ACCESSOR, AclPolicy, AclToken, Consul, ConsulMember, KvPair, PolicyLink,
    SessionBehavior,
};
pub use http::{ClientTls, HashiError, Token};
pub use nomad::{Nomad, NomadBootstrap, NomadMember, NomadNode};
