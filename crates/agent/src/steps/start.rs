//! Step 6's vocabulary: which unit runs each service.

use kraken_render::Service;
use kraken_settings::Settings;

/// The systemd unit of a service the agent configures.
pub fn unit_of(settings: &Settings, service: Service) -> &str {
    match service {
        Service::Consul => &settings.consul.unit,
        Service::Nomad => &settings.nomad.unit,
        Service::Docker => &settings.docker.unit,
        Service::Operator => "",
    }
}
