use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use kraken_settings::{IntentDefaults, NAME_FORM, valid_datacenter, valid_name};
use serde::{Deserialize, Serialize};

use crate::role::Role;

pub const TAG_PREFIX: &str = "kraken:";

const CLUSTER: &str = "kraken:cluster";
const ROLES: &str = "kraken:roles";
const CONSUL_SERVERS: &str = "kraken:consul-servers";
const NOMAD_SERVERS: &str = "kraken:nomad-servers";
const DATACENTER: &str = "kraken:datacenter";
const NOMAD_DATACENTER: &str = "kraken:nomad-datacenter";
const NOMAD_REGION: &str = "kraken:nomad-region";
const NODE_CLASS: &str = "kraken:node-class";
const META_PREFIX: &str = "kraken:meta:";

/// Every tag this version understands, for error messages and docs.
pub fn known_tags() -> [&'static str; 9] {
    [
        CLUSTER,
        ROLES,
        CONSUL_SERVERS,
        NOMAD_SERVERS,
        DATACENTER,
        NOMAD_DATACENTER,
        NOMAD_REGION,
        NODE_CLASS,
        "kraken:meta:<key>",
    ]
}

/// What this node should be, fully resolved and validated.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeSpec {
    pub cluster: String,
    pub roles: BTreeSet<Role>,
    /// Expected Consul servers in the cluster (`bootstrap_expect`).
    pub consul_servers: u8,
    /// Expected Nomad servers in the cluster (`bootstrap_expect`).
    pub nomad_servers: u8,
    /// Consul datacenter.
    pub datacenter: String,
    pub nomad_datacenter: String,
    pub nomad_region: String,
    /// Nomad client node class; only for `nomad-client` nodes.
    pub node_class: Option<String>,
    /// Nomad client meta; only for `nomad-client` nodes.
    pub meta: BTreeMap<String, String>,
}

impl NodeSpec {
    pub fn has(&self, role: Role) -> bool {
        self.roles.contains(&role)
    }

    pub fn runs_nomad(&self) -> bool {
        self.has(Role::NomadServer) || self.has(Role::NomadClient)
    }

    /// Whether this node configures and runs Docker: Nomad clients do,
    /// unless `[docker] enabled = false`.
    pub fn runs_docker(&self, docker: &kraken_settings::DockerSettings) -> bool {
        docker.enabled && self.has(Role::NomadClient)
    }

    /// Reads the `kraken:*` tags; other tags are ignored. All problems are
    /// reported at once, so one fix-and-reboot cycle is enough.
    pub fn from_tags(
        tags: &BTreeMap<String, String>,
        defaults: &IntentDefaults,
    ) -> Result<NodeSpec, IntentError> {
        let mut errors = Vec::new();
        let mut meta = BTreeMap::new();

        for (key, value) in tags.range(TAG_PREFIX.to_owned()..) {
            if !key.starts_with(TAG_PREFIX) {
                break;
            }
            if let Some(meta_key) = key.strip_prefix(META_PREFIX) {
                match check_meta(meta_key, value) {
                    Ok(()) => {
                        meta.insert(meta_key.to_owned(), value.clone());
                    }
                    Err(e) => errors.push(TagError::invalid(key, value, e)),
                }
            } else if !known_tags().contains(&key.as_str()) {
                errors.push(TagError::Unknown { tag: key.clone() });
            }
        }

        let cluster = match tags.get(CLUSTER) {
            None => {
                errors.push(TagError::Missing {
                    tag: CLUSTER,
                    expected: CLUSTER_FORM,
                });
                None
            }
            Some(v) if valid_cluster(v) => Some(v.clone()),
            Some(v) => {
                errors.push(TagError::invalid(CLUSTER, v, CLUSTER_FORM));
                None
            }
        };

        let roles = match tags.get(ROLES) {
            None => {
                errors.push(TagError::Missing {
                    tag: ROLES,
                    expected: ROLES_FORM,
                });
                None
            }
            Some(v) => match parse_roles(v) {
                Ok(r) => Some(r),
                Err(()) => {
                    errors.push(TagError::invalid(ROLES, v, ROLES_FORM));
                    None
                }
            },
        };

        let consul_servers =
            server_count(tags, CONSUL_SERVERS, defaults.consul_servers, &mut errors);
        let nomad_servers = server_count(tags, NOMAD_SERVERS, defaults.nomad_servers, &mut errors);
        let datacenter = match tags.get(DATACENTER) {
            None => Some(defaults.datacenter.clone()),
            Some(v) if valid_datacenter(v) => Some(v.clone()),
            Some(v) => {
                errors.push(TagError::invalid(DATACENTER, v, DATACENTER_FORM));
                None
            }
        };
        let nomad_datacenter = name_tag(
            tags,
            NOMAD_DATACENTER,
            &defaults.nomad_datacenter,
            &mut errors,
        );
        let nomad_region = name_tag(tags, NOMAD_REGION, &defaults.nomad_region, &mut errors);

        let node_class = match tags.get(NODE_CLASS) {
            None => defaults.node_class.clone(),
            Some(v) if valid_name(v) => Some(v.clone()),
            Some(v) => {
                errors.push(TagError::invalid(NODE_CLASS, v, NAME_FORM));
                None
            }
        };

        if let Some(roles) = &roles {
            let client = roles.contains(&Role::NomadClient);
            if !client && tags.contains_key(NODE_CLASS) {
                errors.push(TagError::Conflict {
                    tag: NODE_CLASS.into(),
                    reason: "only nomad-client nodes have a node class; add nomad-client to \
                             kraken:roles or remove the tag",
                });
            }
            if !client && !meta.is_empty() {
                errors.push(TagError::Conflict {
                    tag: format!("{META_PREFIX}*"),
                    reason: "only nomad-client nodes carry Nomad meta; add nomad-client to \
                             kraken:roles or remove the tags",
                });
            }
        }

        if !errors.is_empty() {
            return Err(IntentError { errors });
        }
        let roles = roles.expect("no error means roles parsed");
        let node_class = node_class.filter(|_| roles.contains(&Role::NomadClient));
        Ok(NodeSpec {
            cluster: cluster.expect("no error means cluster parsed"),
            roles,
            consul_servers: consul_servers.expect("checked"),
            nomad_servers: nomad_servers.expect("checked"),
            datacenter: datacenter.expect("checked"),
            nomad_datacenter: nomad_datacenter.expect("checked"),
            nomad_region: nomad_region.expect("checked"),
            node_class,
            meta,
        })
    }
}

const CLUSTER_FORM: &str =
    "2-32 characters of a-z, 0-9 and '-', starting with a letter, not ending with '-'";
const ROLES_FORM: &str = "a comma-separated list of consul-server, nomad-server, nomad-client \
                          (at least one, each once), e.g. \"consul-server,nomad-server\"";
const COUNT_FORM: &str = "a whole number from 1 to 9 (3 or 5 for production)";
const DATACENTER_FORM: &str = "1-64 characters of a-z, 0-9, '-' and '_' (Consul's rule)";
const META_KEY_FORM: &str = "a meta key of 1-64 characters of A-Z, a-z, 0-9, '-', '_' and '.', \
                             not starting with \"kraken.\" (reserved for the agent's own meta)";
const META_VALUE_FORM: &str =
    "a meta value of at most 256 printable characters (no control characters)";

// The cluster name ends up in KV paths, SSM parameter names and EC2 tag
// filters, so it is held to the narrowest form all three accept.
fn valid_cluster(v: &str) -> bool {
    let b = v.as_bytes();
    (2..=32).contains(&b.len())
        && b[0].is_ascii_lowercase()
        && b[b.len() - 1] != b'-'
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
}

fn check_meta(key: &str, value: &str) -> Result<(), &'static str> {
    if !valid_name(key) || key.starts_with("kraken.") {
        return Err(META_KEY_FORM);
    }
    // Values are escaped where rendered; control characters have no place
    // in a meta value and are most likely a paste accident.
    if value.chars().count() > 256 || value.chars().any(char::is_control) {
        return Err(META_VALUE_FORM);
    }
    Ok(())
}

fn parse_roles(v: &str) -> Result<BTreeSet<Role>, ()> {
    let mut roles = BTreeSet::new();
    for part in v.split(',').map(str::trim) {
        let role = Role::parse(part).ok_or(())?;
        if !roles.insert(role) {
            return Err(());
        }
    }
    if roles.is_empty() { Err(()) } else { Ok(roles) }
}

fn server_count(
    tags: &BTreeMap<String, String>,
    tag: &'static str,
    default: u8,
    errors: &mut Vec<TagError>,
) -> Option<u8> {
    match tags.get(tag) {
        None => Some(default),
        Some(v) => match v.trim().parse::<u8>() {
            Ok(n) if (1..=9).contains(&n) && v.trim() == v => Some(n),
            _ => {
                errors.push(TagError::invalid(tag, v, COUNT_FORM));
                None
            }
        },
    }
}

// Defaults come from agent.toml, which `Settings` validates with the same
// rules; only tag values are checked here.
fn name_tag(
    tags: &BTreeMap<String, String>,
    tag: &'static str,
    default: &str,
    errors: &mut Vec<TagError>,
) -> Option<String> {
    match tags.get(tag) {
        None => Some(default.to_owned()),
        Some(v) if valid_name(v) => Some(v.clone()),
        Some(v) => {
            errors.push(TagError::invalid(tag, v, NAME_FORM));
            None
        }
    }
}

/// One problem with one tag.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TagError {
    Missing {
        tag: &'static str,
        expected: &'static str,
    },
    Invalid {
        tag: String,
        value: String,
        expected: &'static str,
    },
    Unknown {
        tag: String,
    },
    Conflict {
        tag: String,
        reason: &'static str,
    },
}

impl TagError {
    fn invalid(tag: &str, value: &str, expected: &'static str) -> TagError {
        TagError::Invalid {
            tag: tag.to_owned(),
            value: value.to_owned(),
            expected,
        }
    }

    pub fn tag(&self) -> &str {
        match self {
            TagError::Missing { tag, .. } => tag,
            TagError::Invalid { tag, .. }
            | TagError::Unknown { tag }
            | TagError::Conflict { tag, .. } => tag,
        }
    }
}

impl fmt::Display for TagError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TagError::Missing { tag, expected } => {
                write!(f, "tag {tag} is missing; expected {expected}")
            }
            // {:?} quotes the value and shows hidden characters as escapes.
            TagError::Invalid {
                tag,
                value,
                expected,
            } => write!(f, "tag {tag} has value {value:?}; expected {expected}"),
            TagError::Unknown { tag } => write!(
                f,
                "tag {tag} is not a kraken tag this agent knows (known: {}); \
                 remove it or fix its spelling",
                known_tags().join(", ")
            ),
            TagError::Conflict { tag, reason } => write!(f, "tag {tag}: {reason}"),
        }
    }
}

/// Every problem found in the instance's tags.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IntentError {
    pub errors: Vec<TagError>,
}

impl fmt::Display for IntentError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "the instance tags do not describe a valid node:")?;
        for e in &self.errors {
            write!(f, "\n  - {e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for IntentError {}

#[cfg(test)]
mod tests;
