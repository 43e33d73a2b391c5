use kraken_discovery::Peers;
use kraken_identity::Identity;
use kraken_intent::{DockerLogDriver, NodeSpec, Role, Settings};
use kraken_secrets::Secret;
use serde_json::{Value, json};

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

/// The variables every template sees. `docs/templates.md` documents them;
/// a template that names anything else fails to render (strict mode).
pub fn context(
    identity: &Identity,
    spec: &NodeSpec,
    peers: &Peers,
    settings: &Settings,
    secrets: &RenderSecrets,
) -> Value {
    let roles: Vec<&str> = spec.roles.iter().map(|r| r.as_str()).collect();
    let ips = |set: &std::collections::BTreeSet<std::net::Ipv4Addr>| -> Vec<String> {
        set.iter().map(|ip| ip.to_string()).collect()
    };
    let consul_host = settings
        .consul
        .http_addr
        .trim_start_matches("http://")
        .trim_start_matches("https://")
        .trim_end_matches('/');
    let consul_tls = crate::TlsFiles::consul(settings);
    let nomad_tls = crate::TlsFiles::nomad(settings);
    let files = |f: &crate::TlsFiles| {
        json!({
            "ca_file": f.ca.display().to_string(),
            "cert_file": f.cert.display().to_string(),
            "key_file": f.key.display().to_string(),
        })
    };
    json!({
        "agent": { "version": env!("CARGO_PKG_VERSION") },
        "tls": {
            "enabled": settings.tls.enabled,
            "consul": files(&consul_tls),
            "nomad": files(&nomad_tls),
        },
        "node": {
            "name": identity.instance_id,
            "instance_id": identity.instance_id,
            "address": identity.private_ipv4.to_string(),
            "region": identity.region,
            "availability_zone": identity.availability_zone,
            "cluster": spec.cluster,
        },
        "roles": {
            "list": roles.join(","),
            "consul_server": spec.has(Role::ConsulServer),
            "nomad_server": spec.has(Role::NomadServer),
            "nomad_client": spec.has(Role::NomadClient),
        },
        "consul": {
            "datacenter": spec.datacenter,
            "server": spec.has(Role::ConsulServer),
            "bootstrap_expect": spec.consul_servers,
            "retry_join": match &settings.discovery.consul_auto_join {
                Some(join) => vec![join.clone()],
                None => ips(&peers.consul_servers),
            },
            "data_dir": settings.paths.consul_data_dir.display().to_string(),
            "client_addr": settings.consul.client_addr,
            "http_addr": settings.consul.http_addr,
        },
        "nomad": {
            "region": spec.nomad_region,
            "datacenter": spec.nomad_datacenter,
            "data_dir": settings.paths.nomad_data_dir.display().to_string(),
            "bind_addr": settings.nomad.bind_addr,
            "runs": spec.runs_nomad(),
            "server": spec.has(Role::NomadServer),
            "client": spec.has(Role::NomadClient),
            "bootstrap_expect": spec.nomad_servers,
            "servers": match &settings.discovery.nomad_auto_join {
                Some(join) => vec![join.clone()],
                None => ips(&peers.nomad_servers),
            },
            "node_class": spec.node_class,
            "meta": spec.meta,
            "raw_exec": settings.nomad.raw_exec,
            "network_interface": settings.nomad.network_interface,
            "consul_address": consul_host,
            // Consul's gRPC-TLS port on the same host, for Connect sidecars.
            "consul_grpc_address": format!(
                "{}:8503",
                consul_host.rsplit_once(':').map_or(consul_host, |(host, _)| host)
            ),
            "http_addr": settings.nomad.http_addr,
        },
        "secrets": {
            "gossip_key": secrets.gossip_key.as_ref().map(Secret::expose),
            "initial_management": secrets.initial_management.as_ref().map(Secret::expose),
            "consul_agent": secrets.consul_agent.as_ref().map(Secret::expose),
            "nomad_consul": secrets.nomad_consul.as_ref().map(Secret::expose),
            "nomad_gossip_key": secrets.nomad_gossip_key.as_ref().map(Secret::expose),
        },
        "docker": {
            "log_driver": match settings.docker.log_driver {
                DockerLogDriver::JsonFile => "json-file",
                DockerLogDriver::Journald => "journald",
            },
            "json_file": settings.docker.log_driver == DockerLogDriver::JsonFile,
            "log_max_size": settings.docker.log_max_size,
            "log_max_files": settings.docker.log_max_files.to_string(),
            // Docker's own Go template, passed through as a value.
            "log_tag": "{{.Name}}/{{.ID}}",
            "data_root": settings.docker.data_root.as_ref().map(|p| p.display().to_string()),
        },
    })
}
