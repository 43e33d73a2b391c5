//! HTTP clients for the Consul and Nomad agent APIs: the calls the agent
//! makes, typed, with errors that name the endpoint. Tokens are sent in the
//! documented headers and never appear in `Debug` output or errors.

mod autopilot;
mod consul;
mod http;
mod nomad;
mod served;
mod snapshot;
#[cfg(test)]
mod tests;

pub use autopilot::{AutopilotHealth, AutopilotServer};
pub use consul::acl::{ANONYMOUS_TOKEN_ACCESSOR, AclPolicy, AclToken, NodeIdentity, PolicyLink};
pub use consul::auth::{AclRole, AuthMethod, BindingRule};
pub use consul::{Consul, ConsulMember, HealthCheck, KvPair, SessionBehavior};
pub use http::{ClientTls, HashiError, Token};
pub use nomad::acl::{NomadBootstrap, NomadToken};
pub use nomad::leave::{NodeDrain, RaftServer};
pub use nomad::namespaces::{Jwk, NomadNamespace};
pub use nomad::{Nomad, NomadMember, NomadNode};
pub use served::{TlsPort, served_certificate};
