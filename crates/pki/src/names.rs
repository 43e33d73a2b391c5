//! What the certificates are about: the cluster's names, and the roles
//! (authorities) that each get an intermediate.

/// The names the cluster's certificates are about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterNames {
    pub cluster: String,
    pub consul_datacenter: String,
    /// Consul's `domain`, "consul" unless changed.
    pub consul_domain: String,
    pub nomad_region: String,
}

/// An intermediate CA, one per role that needs certificates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Authority {
    ConsulServer,
    ConsulClient,
    NomadServer,
    NomadClient,
}

impl Authority {
    pub const ALL: [Authority; 4] = [
        Authority::ConsulServer,
        Authority::ConsulClient,
        Authority::NomadServer,
        Authority::NomadClient,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Authority::ConsulServer => "consul-server",
            Authority::ConsulClient => "consul-client",
            Authority::NomadServer => "nomad-server",
            Authority::NomadClient => "nomad-client",
        }
    }

    /// The name Consul or Nomad checks with `verify_server_hostname`, and
    /// the only service name this authority's certificates may carry.
    pub fn role_name(self, names: &ClusterNames) -> String {
        match self {
            Authority::ConsulServer => {
                format!("server.{}.{}", names.consul_datacenter, names.consul_domain)
            }
            Authority::ConsulClient => {
                format!("client.{}.{}", names.consul_datacenter, names.consul_domain)
            }
            Authority::NomadServer => format!("server.{}.nomad", names.nomad_region),
            Authority::NomadClient => format!("client.{}.nomad", names.nomad_region),
        }
    }

    /// The DNS subtrees the intermediate permits: the role name and
    /// `localhost` (the local CLI and the agent connect to 127.0.0.1 or
    /// localhost). IP addresses are not constrained: every leaf carries its
    /// node's own addresses, and an address says nothing about a role.
    pub fn permitted_names(self, names: &ClusterNames) -> Vec<String> {
        vec![self.role_name(names), "localhost".to_owned()]
    }
}

impl std::fmt::Display for Authority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}
