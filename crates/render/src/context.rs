//! The variables every template sees, as types: a template override may
//! name any field below and nothing else (strict mode), so these structs are
//! the promise `docs/templates.md` makes, and a test holds the two together.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use kraken_discovery::Peers;
use kraken_identity::Identity;
use kraken_intent::{NodeSpec, Role};
use kraken_secrets::Secret;
use kraken_settings::{DockerLogDriver, Settings};
use serde::{Serialize, Serializer};

use crate::tls_files::TlsFiles;

/// The secrets a node's configs carry; each absent until it exists in the
/// secret store (and, for tokens, until this node's role may read it).
#[derive(Debug, Clone, Default)]
pub struct RenderSecrets {
    pub gossip_key: Option<Secret>,
    /// Consul servers only.
    pub initial_management: Option<Secret>,
    pub consul_agent: Option<Secret>,
    /// The Consul token of this node's Nomad role.
    pub nomad_consul: Option<Secret>,
    /// Nomad servers only.
    pub nomad_gossip_key: Option<Secret>,
}

/// The template context: one field per top-level name.
#[derive(Debug, Clone, Serialize)]
pub struct Context {
    pub agent: AgentVars,
    pub tls: TlsVars,
    pub node: NodeVars,
    pub roles: RoleVars,
    pub consul: ConsulVars,
    pub nomad: NomadVars,
    pub secrets: SecretVars,
    pub docker: DockerVars,
}

/// `agent.*`
#[derive(Debug, Clone, Serialize)]
pub struct AgentVars {
    /// The agent's version, e.g. `0.1.0`.
    pub version: &'static str,
}

/// `tls.*`
#[derive(Debug, Clone, Serialize)]
pub struct TlsVars {
    /// `[tls] enabled`.
    pub enabled: bool,
    /// Consul's files under `<paths.consul_config_dir>/tls/`.
    pub consul: TlsFileVars,
    /// Nomad's files under `<paths.nomad_config_dir>/tls/`.
    pub nomad: TlsFileVars,
}

/// `tls.consul.*` and `tls.nomad.*`
#[derive(Debug, Clone, Serialize)]
pub struct TlsFileVars {
    /// The cluster's root certificate, `ca.pem`.
    pub ca_file: String,
    /// The node's certificate and its intermediate, `<service>.pem`.
    pub cert_file: String,
    /// The node's key, `<service>-key.pem`.
    pub key_file: String,
}

/// `node.*`
#[derive(Debug, Clone, Serialize)]
pub struct NodeVars {
    /// The instance id, used as node name.
    pub name: String,
    /// The instance id.
    pub instance_id: String,
    /// The instance's private IPv4 address.
    pub address: String,
    /// AWS region, e.g. `us-west-2`.
    pub region: String,
    /// e.g. `us-west-2a`.
    pub availability_zone: String,
    /// `kraken:cluster`.
    pub cluster: String,
}

/// `roles.*`
#[derive(Debug, Clone, Serialize)]
pub struct RoleVars {
    /// The roles, comma-separated without spaces, always in the order
    /// `consul-server`, `nomad-server`, `nomad-client`.
    pub list: String,
    /// Has the `consul-server` role.
    pub consul_server: bool,
    /// Has the `nomad-server` role.
    pub nomad_server: bool,
    /// Has the `nomad-client` role.
    pub nomad_client: bool,
}

/// `consul.*`
#[derive(Debug, Clone, Serialize)]
pub struct ConsulVars {
    /// `kraken:datacenter` / `[intent] datacenter`.
    pub datacenter: String,
    /// Same as `roles.consul_server`.
    pub server: bool,
    /// `kraken:consul-servers` / `[intent] consul_servers`, on every node.
    pub bootstrap_expect: u8,
    /// Private addresses of the Consul servers found in EC2, sorted; or
    /// `[discovery] consul_auto_join` alone when set.
    pub retry_join: Vec<String>,
    /// `paths.consul_data_dir`.
    pub data_dir: String,
    /// `consul.client_addr`.
    pub client_addr: String,
    /// `consul.http_addr`, e.g. `https://127.0.0.1:8501`.
    pub http_addr: String,
}

/// `nomad.*`
#[derive(Debug, Clone, Serialize)]
pub struct NomadVars {
    /// `kraken:nomad-region` / `[intent] nomad_region`.
    pub region: String,
    /// `kraken:nomad-datacenter` / `[intent] nomad_datacenter`.
    pub datacenter: String,
    /// `paths.nomad_data_dir`.
    pub data_dir: String,
    /// `nomad.bind_addr`.
    pub bind_addr: String,
    /// The node runs Nomad (server or client).
    pub runs: bool,
    /// Same as `roles.nomad_server`.
    pub server: bool,
    /// Same as `roles.nomad_client`.
    pub client: bool,
    /// `kraken:nomad-servers` / `[intent] nomad_servers`, on every node.
    pub bootstrap_expect: u8,
    /// Private addresses of the Nomad servers found in EC2, sorted; or
    /// `[discovery] nomad_auto_join` alone when set.
    pub servers: Vec<String>,
    /// `kraken:node-class` / `[intent] node_class`; only on a
    /// `nomad-client` with a class.
    pub node_class: Option<String>,
    /// The `kraken:meta:<key>` tags, by `<key>`; empty unless a client.
    pub meta: BTreeMap<String, String>,
    /// `nomad.raw_exec`.
    pub raw_exec: bool,
    /// `nomad.network_interface`.
    pub network_interface: Option<String>,
    /// `consul.http_addr` without the scheme and a trailing `/`.
    pub consul_address: String,
    /// The host of `consul_address` with Consul's gRPC-TLS port, for
    /// Connect sidecars.
    pub consul_grpc_address: String,
    /// `nomad.http_addr`.
    pub http_addr: String,
}

/// `secrets.*`: each unset until it exists in the secret store and this
/// node's roles may read it. `Debug` prints `<redacted>`; only the template
/// sees the values.
#[derive(Debug, Clone, Serialize)]
pub struct SecretVars {
    /// Consul's gossip encryption key.
    #[serde(serialize_with = "expose")]
    pub gossip_key: Option<Secret>,
    /// Consul's `initial_management` token; Consul servers only.
    #[serde(serialize_with = "expose")]
    pub initial_management: Option<Secret>,
    /// The Consul agent token.
    #[serde(serialize_with = "expose")]
    pub consul_agent: Option<Secret>,
    /// The Consul token of this node's Nomad role.
    #[serde(serialize_with = "expose")]
    pub nomad_consul: Option<Secret>,
    /// The Nomad servers' gossip encryption key; Nomad servers only.
    #[serde(serialize_with = "expose")]
    pub nomad_gossip_key: Option<Secret>,
}

/// `docker.*`
#[derive(Debug, Clone, Serialize)]
pub struct DockerVars {
    /// `json-file` or `journald`.
    pub log_driver: &'static str,
    /// The log driver is `json-file`.
    pub json_file: bool,
    /// `docker.log_max_size`, e.g. `50m`.
    pub log_max_size: String,
    /// `docker.log_max_files` as a string: Docker wants `"5"`, not `5`.
    pub log_max_files: String,
    /// Docker's own Go template for the journald `tag`, passed through as
    /// a value: the literal `{{.Name}}/{{.ID}}`.
    pub log_tag: &'static str,
    /// `docker.data_root`.
    pub data_root: Option<String>,
}

// The one place a secret's value enters the context's serialised form.
fn expose<S: Serializer>(secret: &Option<Secret>, s: S) -> Result<S::Ok, S::Error> {
    secret.as_ref().map(Secret::expose).serialize(s)
}

impl Context {
    pub fn new(
        identity: &Identity,
        spec: &NodeSpec,
        peers: &Peers,
        settings: &Settings,
        secrets: &RenderSecrets,
    ) -> Context {
        let roles: Vec<&str> = spec.roles.iter().map(|r| r.as_str()).collect();
        let ips = |set: &BTreeSet<Ipv4Addr>| -> Vec<String> {
            set.iter().map(Ipv4Addr::to_string).collect()
        };
        let consul_host = settings
            .consul
            .http_addr
            .trim_start_matches("http://")
            .trim_start_matches("https://")
            .trim_end_matches('/');
        let path = |p: &std::path::Path| p.display().to_string();
        let files = |f: TlsFiles| TlsFileVars {
            ca_file: path(&f.ca),
            cert_file: path(&f.cert),
            key_file: path(&f.key),
        };
        Context {
            agent: AgentVars {
                version: env!("CARGO_PKG_VERSION"),
            },
            tls: TlsVars {
                enabled: settings.tls.enabled,
                consul: files(TlsFiles::consul(settings)),
                nomad: files(TlsFiles::nomad(settings)),
            },
            node: NodeVars {
                name: identity.instance_id.clone(),
                instance_id: identity.instance_id.clone(),
                address: identity.private_ipv4.to_string(),
                region: identity.region.clone(),
                availability_zone: identity.availability_zone.clone(),
                cluster: spec.cluster.clone(),
            },
            roles: RoleVars {
                list: roles.join(","),
                consul_server: spec.has(Role::ConsulServer),
                nomad_server: spec.has(Role::NomadServer),
                nomad_client: spec.has(Role::NomadClient),
            },
            consul: ConsulVars {
                datacenter: spec.datacenter.clone(),
                server: spec.has(Role::ConsulServer),
                bootstrap_expect: spec.consul_servers,
                retry_join: match &settings.discovery.consul_auto_join {
                    Some(join) => vec![join.clone()],
                    None => ips(&peers.consul_servers),
                },
                data_dir: path(&settings.paths.consul_data_dir),
                client_addr: settings.consul.client_addr.clone(),
                http_addr: settings.consul.http_addr.clone(),
            },
            nomad: NomadVars {
                region: spec.nomad_region.clone(),
                datacenter: spec.nomad_datacenter.clone(),
                data_dir: path(&settings.paths.nomad_data_dir),
                bind_addr: settings.nomad.bind_addr.clone(),
                runs: spec.runs_nomad(),
                server: spec.has(Role::NomadServer),
                client: spec.has(Role::NomadClient),
                bootstrap_expect: spec.nomad_servers,
                servers: match &settings.discovery.nomad_auto_join {
                    Some(join) => vec![join.clone()],
                    None => ips(&peers.nomad_servers),
                },
                node_class: spec.node_class.clone(),
                meta: spec.meta.clone(),
                raw_exec: settings.nomad.raw_exec,
                network_interface: settings.nomad.network_interface.clone(),
                consul_address: consul_host.to_owned(),
                consul_grpc_address: format!(
                    "{}:8503",
                    consul_host
                        .rsplit_once(':')
                        .map_or(consul_host, |(host, _)| host)
                ),
                http_addr: settings.nomad.http_addr.clone(),
            },
            secrets: SecretVars {
                gossip_key: secrets.gossip_key.clone(),
                initial_management: secrets.initial_management.clone(),
                consul_agent: secrets.consul_agent.clone(),
                nomad_consul: secrets.nomad_consul.clone(),
                nomad_gossip_key: secrets.nomad_gossip_key.clone(),
            },
            docker: DockerVars {
                log_driver: settings.docker.log_driver.as_str(),
                json_file: settings.docker.log_driver == DockerLogDriver::JsonFile,
                log_max_size: settings.docker.log_max_size.clone(),
                log_max_files: settings.docker.log_max_files.to_string(),
                log_tag: "{{.Name}}/{{.ID}}",
                data_root: settings
                    .docker
                    .data_root
                    .as_deref()
                    .map(|p| p.display().to_string()),
            },
        }
    }
}

#[cfg(test)]
mod tests;
