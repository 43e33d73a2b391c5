use std::fmt;

use serde::{Deserialize, Serialize};

/// A part a node plays in the cluster; `kraken:roles` lists them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Role {
    ConsulServer,
    NomadServer,
    NomadClient,
}

impl Role {
    pub const ALL: [Role; 3] = [Role::ConsulServer, Role::NomadServer, Role::NomadClient];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::ConsulServer => "consul-server",
            Role::NomadServer => "nomad-server",
            Role::NomadClient => "nomad-client",
        }
    }

    pub(crate) fn parse(s: &str) -> Option<Role> {
        Role::ALL.into_iter().find(|r| r.as_str() == s)
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}
