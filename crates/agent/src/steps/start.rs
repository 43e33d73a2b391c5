//! Step 6: which units to start, and which must restart for new configs.

use kraken_intent::{NodeSpec, Role};
use kraken_render::{Change, Service};
use kraken_settings::Settings;
use kraken_start::{ServiceStep, StartPlan};

use crate::steps::render::changed;

pub fn start_plan(
    spec: &NodeSpec,
    changes: &[(Service, Change)],
    settings: &Settings,
) -> StartPlan {
    StartPlan {
        consul: ServiceStep {
            unit: settings.consul.unit.clone(),
            config_changed: changed(changes, Service::Consul),
        },
        consul_server: spec.has(Role::ConsulServer),
        docker: spec.runs_docker(&settings.docker).then(|| ServiceStep {
            unit: settings.docker.unit.clone(),
            config_changed: changed(changes, Service::Docker),
        }),
        nomad: spec.runs_nomad().then(|| ServiceStep {
            unit: settings.nomad.unit.clone(),
            config_changed: changed(changes, Service::Nomad),
        }),
        nomad_server: spec.has(Role::NomadServer),
    }
}

/// The systemd unit of a service the agent configures.
pub fn unit_of(settings: &Settings, service: Service) -> &str {
    match service {
        Service::Consul => &settings.consul.unit,
        Service::Nomad => &settings.nomad.unit,
        Service::Docker => &settings.docker.unit,
        Service::Operator => "",
    }
}
