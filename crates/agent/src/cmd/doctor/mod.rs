//! `kraken-agent doctor`: what is wrong with this node, and what to do.
//!
//! Read-only: every check calls the same step code `run` does, with short
//! deadlines, and changes nothing (no secret is created, no file written,
//! no service touched). One line per check; for a warning or failure, the
//! likely cause and the next command to run.
//!
//! The checks are one list, [`Kind::ALL`], in the order they run. Each says
//! what it needs ([`Needs`]); when that is unknown because an earlier check
//! failed, the runner reports it skipped, with the reason.

mod agents;
mod check;
mod cluster;
mod host;
mod node;
mod served;

use kraken_intent::NodeSpec;
use kraken_settings::Settings;

pub use check::{Check, Level};
use check::{Context, Needs, timed};

/// The exit status: 0 all ok, 1 warnings, 2 any failure.
pub fn exit_code(checks: &[Check]) -> u8 {
    match checks.iter().map(|c| c.level).max() {
        Some(Level::Fail) => 2,
        Some(Level::Warn) => 1,
        _ => 0,
    }
}

pub fn print(checks: &[Check]) {
    for c in checks {
        println!("{:<4}  {:<12} {}", c.level.word(), c.name, c.finding);
        if let Some(cause) = &c.cause {
            println!("      {:<12} cause: {cause}", "");
        }
        if let Some(next) = &c.next {
            println!("      {:<12} next:  {next}", "");
        }
    }
}

/// Every check, in the order it runs and prints.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Imds,
    Tags,
    Aws,
    Clock,
    Discovery,
    Secrets,
    Configs,
    Units,
    Consul,
    Nomad,
    NomadConsul,
    Bootstrap,
    Tls,
    Served,
    DockerDisk,
    Oom,
}

impl Kind {
    const ALL: [Kind; 16] = [
        Kind::Imds,
        Kind::Tags,
        Kind::Aws,
        Kind::Clock,
        Kind::Discovery,
        Kind::Secrets,
        Kind::Configs,
        Kind::Units,
        Kind::Consul,
        Kind::Nomad,
        Kind::NomadConsul,
        Kind::Bootstrap,
        Kind::Tls,
        Kind::Served,
        Kind::DockerDisk,
        Kind::Oom,
    ];

    fn name(self) -> &'static str {
        match self {
            Kind::Imds => "imds",
            Kind::Tags => "tags",
            Kind::Aws => "aws",
            Kind::Clock => "clock",
            Kind::Discovery => "discovery",
            Kind::Secrets => "secrets",
            Kind::Configs => "configs",
            Kind::Units => "units",
            Kind::Consul => "consul",
            Kind::Nomad => "nomad",
            Kind::NomadConsul => "nomad-consul",
            Kind::Bootstrap => "bootstrap",
            Kind::Tls => "tls",
            Kind::Served => "served",
            Kind::DockerDisk => "docker-disk",
            Kind::Oom => "oom",
        }
    }

    fn needs(self) -> Needs {
        match self {
            Kind::Imds | Kind::Tls | Kind::DockerDisk | Kind::Oom => Needs::Nothing,
            Kind::Tags => Needs::Identity,
            Kind::Aws
            | Kind::Clock
            | Kind::Discovery
            | Kind::Secrets
            | Kind::Configs
            | Kind::Units
            | Kind::Consul
            | Kind::Nomad
            | Kind::NomadConsul
            | Kind::Bootstrap
            | Kind::Served => Needs::Spec,
        }
    }

    /// Runs the check; `None` when it does not apply to this node.
    async fn run(self, ctx: &mut Context<'_>) -> Option<Check> {
        Some(match self {
            Kind::Imds => node::imds(ctx).await,
            Kind::Tags => node::tags(ctx),
            Kind::Aws => timed("aws", node::aws(ctx)).await,
            Kind::Clock => timed("clock", node::clock(ctx)).await,
            Kind::Discovery => node::discovery(ctx).await,
            Kind::Secrets => cluster::secrets(ctx).await,
            Kind::Configs => cluster::configs(ctx),
            Kind::Units => timed("units", cluster::units(ctx)).await,
            Kind::Consul => timed("consul", agents::consul(ctx)).await,
            Kind::Nomad if ctx.spec.as_ref().is_some_and(NodeSpec::runs_nomad) => {
                timed("nomad", agents::nomad(ctx)).await
            }
            Kind::Nomad => return None,
            Kind::NomadConsul if ctx.spec.as_ref().is_some_and(NodeSpec::runs_nomad) => {
                timed("nomad-consul", served::nomad_consul(ctx)).await
            }
            Kind::NomadConsul => return None,
            Kind::Bootstrap => timed("bootstrap", cluster::bootstrap(ctx)).await,
            Kind::Tls => host::tls(ctx.settings),
            Kind::Served => timed("served", served::tls_ports(ctx)).await,
            Kind::DockerDisk
                if ctx
                    .spec
                    .as_ref()
                    .is_none_or(|s| s.runs_docker(&ctx.settings.docker)) =>
            {
                host::docker_disk(ctx.settings)
            }
            Kind::DockerDisk => return None,
            Kind::Oom => host::oom(),
        })
    }
}

pub async fn doctor(settings: &Settings) -> Vec<Check> {
    let mut ctx = Context {
        settings,
        identity: None,
        spec: None,
        aws: None,
        peers: None,
        secrets: None,
    };
    let mut checks = Vec::new();
    for kind in Kind::ALL {
        if let Some(why) = ctx.missing(kind.needs()) {
            checks.push(Check::skip(kind.name(), why));
            continue;
        }
        if kind.needs() == Needs::Spec {
            ctx.connect_aws().await;
        }
        checks.extend(kind.run(&mut ctx).await);
    }
    checks
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_check_has_a_distinct_name() {
        let names: std::collections::BTreeSet<_> = Kind::ALL.iter().map(|k| k.name()).collect();
        assert_eq!(names.len(), Kind::ALL.len());
    }

    #[test]
    fn a_check_runs_after_what_it_needs() {
        let pos = |k: Kind| Kind::ALL.iter().position(|x| *x == k).unwrap();
        for kind in Kind::ALL {
            match kind.needs() {
                Needs::Nothing => {}
                Needs::Identity => assert!(pos(kind) > pos(Kind::Imds), "{kind:?}"),
                Needs::Spec => assert!(pos(kind) > pos(Kind::Tags), "{kind:?}"),
            }
        }
    }

    #[test]
    fn skips_follow_from_what_is_missing() {
        let settings = Settings::default();
        let ctx = Context {
            settings: &settings,
            identity: None,
            spec: None,
            aws: None,
            peers: None,
            secrets: None,
        };
        assert_eq!(ctx.missing(Needs::Nothing), None);
        assert_eq!(
            ctx.missing(Needs::Spec),
            Some("the instance identity is unknown")
        );
        assert_eq!(
            ctx.missing(Needs::Identity),
            Some("the instance identity is unknown")
        );
    }

    #[test]
    fn exit_status_is_the_worst_level() {
        let c = |level| Check {
            name: "x",
            level,
            finding: String::new(),
            cause: None,
            next: None,
        };
        assert_eq!(exit_code(&[c(Level::Ok), c(Level::Skip)]), 0);
        assert_eq!(exit_code(&[c(Level::Ok), c(Level::Warn)]), 1);
        assert_eq!(exit_code(&[c(Level::Fail), c(Level::Warn)]), 2);
        assert_eq!(exit_code(&[]), 0);
    }
}
