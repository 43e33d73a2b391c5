//! Step 6's vocabulary: which unit runs each service, whether Nomad's
//! link to Consul works (its own registration), and whether Nomad's
//! servers know this client node (by the id Nomad keeps on disk; the
//! re-registration check and the drain ask it).

use kraken_hashi::{Consul, HashiError, HealthCheck};
use kraken_intent::{NodeSpec, Role};
use kraken_render::Service;
use kraken_settings::Settings;

use crate::{BootError, tuning};

/// The systemd unit of a service the agent configures.
pub fn unit_of(settings: &Settings, service: Service) -> &str {
    match service {
        Service::Consul => &settings.consul.unit,
        Service::Nomad => &settings.nomad.unit,
        Service::Docker => &settings.docker.unit,
        Service::Operator => "",
    }
}

/// The service Nomad registers in Consul for itself on this node.
pub fn nomad_service_name(spec: &NodeSpec) -> &'static str {
    if spec.has(Role::NomadServer) {
        "nomad"
    } else {
        "nomad-client"
    }
}

/// Whether Nomad's own service is in Consul's catalog for `node`: Nomad
/// registers it only once its link to Consul (address, Consul's CA, its
/// token) works. It may carry no check: Nomad registers no HTTP check for
/// an HTTPS API that demands client certificates, which a client's has.
pub async fn nomad_registered(
    consul: &Consul,
    spec: &NodeSpec,
    node: &str,
) -> Result<bool, HashiError> {
    let name = nomad_service_name(spec);
    Ok(consul
        .node_service_names(node)
        .await?
        .iter()
        .any(|s| s == name))
}

/// The checks of Nomad's own service on `node`, if it has any.
pub async fn nomad_checks(
    consul: &Consul,
    spec: &NodeSpec,
    node: &str,
) -> Result<Vec<HealthCheck>, HashiError> {
    let name = nomad_service_name(spec);
    let checks = consul.node_checks(node).await?;
    Ok(checks
        .into_iter()
        .filter(|c| c.service_name == name)
        .collect())
}

/// Until Nomad has registered itself in Consul: READY before that would
/// name a node whose jobs' services cannot register yet (and `doctor`
/// would warn about it).
pub async fn wait_nomad_registered(
    settings: &Settings,
    consul: &Consul,
    spec: &NodeSpec,
    node: &str,
) -> Result<(), BootError> {
    let deadlines = tuning::deadlines(settings);
    kraken_start::wait_for(
        &format!("Nomad to register {} in Consul", nomad_service_name(spec)),
        deadlines.answer,
        tuning::REMOTE_POLL,
        || async {
            match nomad_registered(consul, spec, node).await {
                Ok(true) => Ok(Some(())),
                Ok(false) => Ok(None),
                Err(e) => Err(e.to_string()),
            }
        },
    )
    .await
    .map_err(BootError::from)
}

/// This node's id as its Nomad client keeps it (`client/client-id` in
/// Nomad's data directory, written at its first start and kept across
/// restarts): asking the servers for one node by id is one lookup, where
/// finding it by name means listing every node of the fleet. `None` before
/// Nomad's first start, or for a file that does not hold an id.
pub fn own_nomad_node_id(settings: &Settings) -> Option<String> {
    let path = settings.paths.nomad_data_dir.join("client/client-id");
    let id = std::fs::read_to_string(path).ok()?;
    let id = id.trim().to_ascii_lowercase();
    // A UUID: it goes into a URL path.
    let uuid = id.len() == 36 && id.chars().all(|c| c.is_ascii_hexdigit() || c == '-');
    uuid.then_some(id)
}

/// Whether Nomad's servers know this client node: `Some(false)` only when
/// its own id is unknown to them and they have a leader (a server that has
/// just started may not have the state yet). `None` when there is nothing
/// to say yet: no id on disk, no leader, no server answering. An error is
/// Nomad refusing the call (its status says why).
pub async fn nomad_knows_node(
    settings: &Settings,
    nomad: &kraken_hashi::Nomad,
) -> Result<Option<bool>, HashiError> {
    let Some(id) = own_nomad_node_id(settings) else {
        return Ok(None);
    };
    match nomad.node(&id).await {
        Ok(Some(_)) => Ok(Some(true)),
        Ok(None) => Ok(matches!(nomad.leader().await, Ok(Some(_))).then_some(false)),
        Err(e) if e.is_transient() => {
            log::debug!("Nomad node {id}: {e}");
            Ok(None)
        }
        Err(e) => Err(e),
    }
}
