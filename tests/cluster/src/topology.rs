//! What the cluster is made of: groups of identical instances, as
//! autoscaling groups would launch them, each with the tags of the seed
//! system's groups (docs/tags.md).

use std::collections::BTreeMap;

/// The cluster name every topology uses (`kraken:cluster`).
pub const CLUSTER: &str = "kraken";

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Topology {
    /// 3 nodes running Consul and Nomad servers, 2 generic clients.
    Small,
    /// The seed system: 3 Consul servers, 3 Nomad servers, 2 generic and 2
    /// edge clients.
    Seed,
}

/// One autoscaling group: its instances share tags.
#[derive(Debug, Clone)]
pub struct Group {
    /// VM names are the group name and a sequence number: `server1`.
    pub name: &'static str,
    pub size: usize,
    pub tags: BTreeMap<String, String>,
}

impl Group {
    fn new(name: &'static str, size: usize, tags: &[(&str, &str)]) -> Group {
        let mut all: BTreeMap<String, String> = tags
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        all.insert("kraken:cluster".into(), CLUSTER.into());
        // Not read by the agent: tells a person which group an instance is.
        all.insert("Name".into(), format!("kraken-{name}"));
        Group {
            name,
            size,
            tags: all,
        }
    }

    pub fn roles(&self) -> &str {
        &self.tags["kraken:roles"]
    }

    pub fn is_consul_server(&self) -> bool {
        self.roles().split(',').any(|r| r.trim() == "consul-server")
    }

    pub fn is_nomad_server(&self) -> bool {
        self.roles().split(',').any(|r| r.trim() == "nomad-server")
    }

    pub fn is_nomad_client(&self) -> bool {
        self.roles().split(',').any(|r| r.trim() == "nomad-client")
    }

    /// The Nomad node class the group's clients must report.
    pub fn node_class(&self) -> Option<&str> {
        self.tags.get("kraken:node-class").map(String::as_str)
    }

    /// The `kraken:meta:*` tags as Nomad client meta.
    pub fn meta(&self) -> BTreeMap<&str, &str> {
        self.tags
            .iter()
            .filter_map(|(k, v)| Some((k.strip_prefix("kraken:meta:")?, v.as_str())))
            .collect()
    }
}

impl Topology {
    pub fn groups(self) -> Vec<Group> {
        match self {
            Topology::Small => vec![
                Group::new(
                    "server",
                    3,
                    &[("kraken:roles", "consul-server,nomad-server")],
                ),
                Group::new(
                    "client",
                    2,
                    &[
                        ("kraken:roles", "nomad-client"),
                        ("kraken:node-class", "generic"),
                        ("kraken:meta:team", "web"),
                    ],
                ),
            ],
            Topology::Seed => vec![
                Group::new("consul", 3, &[("kraken:roles", "consul-server")]),
                Group::new("nomad", 3, &[("kraken:roles", "nomad-server")]),
                Group::new(
                    "generic",
                    2,
                    &[
                        ("kraken:roles", "nomad-client"),
                        ("kraken:node-class", "generic"),
                        ("kraken:meta:team", "web"),
                    ],
                ),
                Group::new(
                    "edge",
                    2,
                    &[
                        ("kraken:roles", "nomad-client"),
                        ("kraken:node-class", "edge"),
                        ("kraken:meta:ingress", "true"),
                    ],
                ),
            ],
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Topology::Small => "small",
            Topology::Seed => "seed",
        }
    }
}
