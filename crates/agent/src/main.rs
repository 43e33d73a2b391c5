use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use kraken_agent::BootError;
use kraken_agent::cmd::{doctor, leave, render, run, snapshot};
use kraken_agent::steps::snapshot::Service;
use kraken_settings::{DEFAULT_SETTINGS_PATH, Settings};

/// The unit's `EnvironmentFile=` (systemd/kraken-agent.service).
const AGENT_ENV_PATH: &str = "/etc/kraken/agent.env";

/// Turns a freshly booted EC2 instance into a member of a Consul + Nomad +
/// Docker cluster.
#[derive(Parser)]
#[command(name = "kraken-agent", version, about)]
struct Cli {
    /// Site settings (paths, endpoints, timeouts, template overrides).
    #[arg(long, global = true, env = "KRAKEN_CONFIG", default_value = DEFAULT_SETTINGS_PATH)]
    config: PathBuf,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// The boot daemon: configure and start this node's services, then watch.
    Run,
    /// Dry run: resolve identity, intent and peers, print the plan, write
    /// every config into --out, start nothing.
    Render {
        /// Directory to write the configs into.
        #[arg(long)]
        out: PathBuf,
        /// A node description (identity, tags, peers; TOML or JSON) used
        /// instead of IMDS and EC2.
        #[arg(long)]
        node: Option<PathBuf>,
        /// Print the plan as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Tell what is wrong with this node and what to do; changes nothing.
    /// Exit status: 0 all ok, 1 warnings, 2 failures.
    Doctor {
        /// Print the checks as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Consul and Nomad snapshots in S3 ([snapshots] in agent.toml): take
    /// one now, list them, or restore one. JSON on stdout.
    Snapshot {
        #[command(subcommand)]
        action: snapshot::Action,
        /// One service only (default: both, Consul first).
        #[arg(long, global = true, value_enum)]
        service: Option<Service>,
        /// The snapshot to restore (its S3 key, as `list` shows it);
        /// default: the newest.
        #[arg(long, global = true)]
        key: Option<String>,
        /// Whose snapshots (default: this instance's cluster, from its
        /// tags).
        #[arg(long, global = true)]
        cluster: Option<String>,
    },
    /// Leave the cluster now, as when the autoscaling group terminates the
    /// node: a client drains, a server leaves Raft when the others can
    /// spare it. The running agent does it when there is one. JSON on stdout.
    Leave {
        /// For kraken-leave.service's ExecStop: leave only when the
        /// machine is powering off (not at a reboot, not when the unit is
        /// stopped by hand).
        #[arg(long)]
        at_shutdown: bool,
    },
    /// Print the version.
    Version,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Command::Version = cli.command {
        println!("kraken-agent {}", env!("CARGO_PKG_VERSION"));
        return ExitCode::SUCCESS;
    }
    kraken_agent::logging::init();
    if matches!(
        cli.command,
        Command::Doctor { .. }
            | Command::Render { node: None, .. }
            | Command::Snapshot { .. }
            | Command::Leave { .. }
    ) {
        // A person running these by hand gets the environment the service
        // runs with (the unit's EnvironmentFile: AWS endpoint overrides and
        // the like), or they would check a different AWS than the agent
        // uses. Variables already set win, as they would for systemd.
        // Before any thread exists: it sets process environment variables.
        match dotenvy::from_path(AGENT_ENV_PATH) {
            Ok(()) => {}
            Err(e) if e.not_found() => {}
            // Not the line itself: it may hold AWS_SECRET_ACCESS_KEY.
            Err(dotenvy::Error::LineParse(_, _)) => eprintln!(
                "kraken-agent: ignoring {AGENT_ENV_PATH}: a line is not NAME=value \
                 (fix it: systemd reads the same file for the service)"
            ),
            Err(e) => eprintln!("kraken-agent: ignoring {AGENT_ENV_PATH}: {e}"),
        }
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    if let Command::Doctor { json } = cli.command {
        return runtime.block_on(async {
            let settings = match Settings::load(&cli.config) {
                Ok(s) => s,
                Err(e) => {
                    println!("fail  settings     {e}");
                    return ExitCode::from(2);
                }
            };
            let checks = doctor::doctor(&settings).await;
            if json {
                let doc = serde_json::json!({
                    "checks": checks,
                    "exit_status": doctor::exit_code(&checks),
                });
                println!(
                    "{}",
                    serde_json::to_string_pretty(&doc).expect("serialises")
                );
            } else {
                doctor::print(&checks);
            }
            ExitCode::from(doctor::exit_code(&checks))
        });
    }
    let result = runtime.block_on(async {
        let settings = Settings::load(&cli.config).map_err(BootError::from)?;
        match cli.command {
            Command::Run => run::run(settings).await,
            Command::Render { out, node, json } => {
                render::render(&settings, node.as_deref(), &out, json).await
            }
            Command::Snapshot {
                action,
                service,
                key,
                cluster,
            } => {
                let args = snapshot::Args {
                    action,
                    service,
                    key,
                    cluster,
                };
                snapshot::snapshot(&settings, args).await
            }
            Command::Leave { at_shutdown } => leave::leave(&settings, at_shutdown).await,
            Command::Version | Command::Doctor { .. } => unreachable!("handled above"),
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            log::error!("{e}");
            // Also on stderr when logging went to the journal, for a person
            // running the command by hand.
            if systemd_journal_logger::connected_to_journal() {
                eprintln!("kraken-agent: {e}");
            }
            ExitCode::from(u8::try_from(e.exit_code()).unwrap_or(1))
        }
    }
}
