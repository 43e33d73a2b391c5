//! The cluster PKI (design in `docs/pki.md`).
//!
//! One root CA per cluster, and under it one **intermediate per role**
//! (Consul server, Consul client, Nomad server, Nomad client), each with
//! X.509 name constraints that permit only the names that role's
//! certificates carry: `server.<datacenter>.<domain>` for Consul servers,
//! `client.<region>.nomad` for Nomad clients, and so on, plus `localhost`.
//! A node holds (through IAM on the secret store) only the intermediates of
//! its own roles and issues its leaf certificates itself. A Nomad client
//! that signs a `server.<region>.nomad` certificate with its intermediate
//! gets one every verifier rejects — Go's `crypto/x509` in Consul and
//! Nomad and webpki in the agent enforce the constraints — and
//! [`Intermediate::issue`] refuses to make it in the first place.
//!
//! Keys are ECDSA P-256. A CA or intermediate travels as one PEM *bundle*
//! (its certificates, then its key) so that it is created with one atomic
//! create in the secret store; leaf keys never leave the node.

mod ca;
mod error;
mod inspect;
mod intermediate;
mod leaf;
mod names;
mod pem;
mod signing;
#[cfg(test)]
mod testing;

pub use ca::Ca;
pub use error::PkiError;
pub use inspect::{CertInfo, inspect, inspect_der};
pub use intermediate::Intermediate;
pub use leaf::Leaf;
pub use names::{Authority, ClusterNames};
pub use pem::certificates;
