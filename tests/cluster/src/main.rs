//! `kraken-cluster`: the local VM cluster (issue #5). Run it through
//! `cargo xtask cluster`, which builds the image and the binaries it needs
//! and passes their paths.
//!
//! Every VM is a network namespace with a fake IMDS and systemd-nspawn
//! booting an overlay of the image; moto is EC2 and SSM. The harness itself
//! moves into the cluster's hub namespace, so everything it reaches is an
//! address inside namespaces it made.

mod api;
mod bench;
mod certs;
mod cgroups;
mod checks;
mod cloud;
mod cluster;
mod disaster;
mod doctor;
mod ec2proxy;
mod escape;
mod faults;
mod host;
mod journals;
mod lifecycle;
mod monitor;
mod policy;
mod poweroff;
mod registry;
mod restore;
mod scenario;
mod soak;
mod testca;
mod topology;
mod traffic;
mod upgrade;
mod userdata;
mod vm;
mod voters;
mod warm;
mod web;

use std::process::ExitCode;

use anyhow::Result;
use clap::{Parser, Subcommand};

use cluster::{Cluster, Paths};
use topology::Topology;

#[derive(Parser)]
#[command(about = "The local kraken cluster: nspawn VMs, moto, fake IMDS")]
struct Cli {
    #[command(flatten)]
    paths: Paths,
    /// Run Consul and Nomad over plain HTTP (`[tls] enabled = false`).
    #[arg(long, global = true)]
    no_tls: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum WarmAction {
    /// Launch one instance of GROUP into its warm pool.
    Add { group: String },
    /// Put the warm instance NODE in service.
    Start { node: String },
}

#[derive(Subcommand)]
enum Command {
    /// Boot the cluster, deploy the web job, print its answers; leave it running.
    Up {
        #[arg(long, value_enum, default_value = "small")]
        topology: Topology,
    },
    /// Check the running cluster.
    Status,
    /// Stop and remove everything the cluster made.
    Down,
    /// The fault scenario on the small topology; always tears down.
    Test,
    /// Join timings, EC2 calls and agent memory, against cloud auto-join;
    /// always tears down.
    Bench {
        #[arg(long, value_enum, default_value = "small")]
        topology: Topology,
        /// simultaneous: every VM at once; staggered: clients first, then
        /// the servers one by one; add-client: clients added to a running
        /// cluster, timed from agent start to node eligible.
        #[arg(long, value_enum, default_value = "simultaneous")]
        scenario: bench::Scenario,
        /// Boots per variant (add-client: clients added per variant).
        #[arg(long, default_value_t = 1)]
        runs: u32,
        /// staggered: between one server's start and the next.
        #[arg(long, default_value_t = 30)]
        stagger_secs: u64,
        #[arg(long, value_enum, default_value = "both")]
        discovery: bench::Discovery,
    },
    /// Certificate renewals under load on a fresh small cluster with
    /// short-lived certificates; always tears down.
    Soak {
        #[arg(long, default_value_t = 4.0)]
        minutes: f64,
        #[arg(long, default_value_t = 60)]
        leaf_lifetime_secs: u64,
    },
    /// An in-place agent upgrade on every server at once, on the running
    /// cluster (`up` first), then its undo.
    Upgrade,
    /// Run a command inside a VM of the running cluster (all its
    /// namespaces), e.g. `exec server1 -- kraken-agent doctor`; its output
    /// and exit status are the command's.
    Exec {
        node: String,
        #[arg(last = true, required = true)]
        command: Vec<String>,
    },
    /// An instance refresh on the running cluster: each instance of the
    /// group is replaced, one at a time, through the groups' lifecycle
    /// hooks (servers before clients with `all`).
    Roll {
        #[arg(long, value_enum, default_value = "all")]
        group: RollGroup,
    },
    /// Scale-in of NODE through its group's terminating hook, or with
    /// --spot a spot interruption notice, or with --poweroff a clean
    /// power-off with no lifecycle state (kraken-leave.service); no
    /// replacement.
    Terminate {
        node: String,
        #[arg(long, conflicts_with = "poweroff")]
        spot: bool,
        #[arg(long)]
        poweroff: bool,
    },
    /// The group's warm pool: `add GROUP` launches an instance into it
    /// (Warmed:Running: it prepares and joins nothing); `start NODE` puts
    /// it in service and times it to an eligible Nomad node.
    Warm {
        #[command(subcommand)]
        action: WarmAction,
    },
    /// Launch one more instance of GROUP (server or client) into the
    /// running cluster, through its launching hook.
    Launch { group: String },
    /// Every server of the running cluster destroyed at once with its
    /// data, and as many new ones launched at once: the cluster must
    /// recover and every client's tokens work.
    LoseServers,
    /// Tasks of every driver on a client of the running cluster try to
    /// reach the node's credentials (IMDS, token files, TLS keys, SSM):
    /// every attempt must be refused, and the agent must still reach IMDS.
    Escape,
    /// A snapshot taken on the running cluster, every VM destroyed, and a
    /// new cluster booted that restores it at its bootstrap; leaves the
    /// new cluster running.
    Restore,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum RollGroup {
    Server,
    Client,
    All,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    api::set_tls(!cli.no_tls);
    let result = match cli.command {
        Command::Down => {
            cluster::teardown(&cli.paths);
            eprintln!("cluster: down");
            Ok(true)
        }
        Command::Status => host::enter_hub().and_then(|()| block_on(status(cli.paths))),
        Command::Up { topology } => {
            start(&cli.paths).and_then(|()| block_on(up(cli.paths.clone(), topology)))
        }
        Command::Bench {
            topology,
            scenario,
            runs,
            stagger_secs,
            discovery,
        } => {
            let paths = cli.paths.clone();
            let bench = bench::Bench {
                topology,
                scenario,
                runs,
                discovery,
                stagger: std::time::Duration::from_secs(stagger_secs),
            };
            let outcome = start(&paths).and_then(|()| block_on(bench.run(paths.clone())));
            eprintln!("cluster: tearing down");
            cluster::teardown(&paths);
            outcome
        }
        Command::Soak {
            minutes,
            leaf_lifetime_secs,
        } => {
            let paths = cli.paths.clone();
            let outcome = start(&paths)
                .and_then(|()| block_on(soak::soak(paths.clone(), minutes, leaf_lifetime_secs)));
            eprintln!("cluster: tearing down");
            cluster::teardown(&paths);
            outcome
        }
        Command::Upgrade => host::enter_hub().and_then(|()| block_on(upgrade(cli.paths))),
        Command::Exec { node, command } => {
            return host::enter_hub()
                .and_then(|()| block_on_code(exec(cli.paths, node, command)))
                .unwrap_or_else(|e| {
                    eprintln!("cluster: error: {e:#}");
                    ExitCode::FAILURE
                });
        }
        Command::Roll { group } => host::enter_hub().and_then(|()| {
            let groups: &[&str] = match group {
                RollGroup::Server => &["server"],
                RollGroup::Client => &["client"],
                RollGroup::All => &["server", "client"],
            };
            block_on(lifecycle_verb(cli.paths, |c| {
                Box::pin(lifecycle::roll(c, groups))
            }))
        }),
        Command::Terminate {
            node,
            spot,
            poweroff,
        } => host::enter_hub().and_then(|()| {
            let how = match (spot, poweroff) {
                (true, _) => lifecycle::Ending::Spot,
                (_, true) => lifecycle::Ending::PowerOff,
                _ => lifecycle::Ending::Hook,
            };
            block_on(lifecycle_verb(cli.paths, move |c| {
                Box::pin(async move { lifecycle::terminate(c, &node, how).await })
            }))
        }),
        Command::Warm { action } => host::enter_hub().and_then(|()| {
            block_on(lifecycle_verb(cli.paths, move |c| {
                Box::pin(async move {
                    match action {
                        WarmAction::Add { group } => warm::add(c, &group).await,
                        WarmAction::Start { node } => warm::start(c, &node).await,
                    }
                })
            }))
        }),
        Command::Launch { group } => host::enter_hub().and_then(|()| {
            block_on(lifecycle_verb(cli.paths, move |c| {
                Box::pin(async move { lifecycle::launch(c, &group).await })
            }))
        }),
        Command::LoseServers => host::enter_hub().and_then(|()| {
            block_on(json_verb(cli.paths, |c| {
                Box::pin(async move {
                    let r = disaster::lose_servers(c).await?;
                    let failures = r.failures.clone();
                    Ok((serde_json::to_value(r)?, failures))
                })
            }))
        }),
        Command::Escape => host::enter_hub()
            .and_then(|()| block_on(json_verb(cli.paths, |c| Box::pin(escape::escape(c))))),
        Command::Restore => host::enter_hub().and_then(|()| {
            block_on(json_verb(cli.paths, |c| {
                Box::pin(async move {
                    let r = restore::restore(c).await?;
                    let failures = r.failures.clone();
                    Ok((serde_json::to_value(r)?, failures))
                })
            }))
        }),
        Command::Test => {
            let paths = cli.paths.clone();
            let outcome = start(&paths).and_then(|()| block_on(test(paths.clone())));
            // Always, whatever happened (a signal ends `test` with an error).
            eprintln!("cluster: tearing down");
            cluster::teardown(&paths);
            outcome
        }
    };
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("cluster: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn start(paths: &Paths) -> Result<()> {
    cluster::image_ok(&paths.image)?;
    Cluster::prepare(paths)
}

/// The runtime is built only after the process entered the hub namespace,
/// so that all its threads are in it.
fn block_on<F: Future<Output = Result<bool>>>(f: F) -> Result<bool> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::select! {
            r = f => r,
            _ = tokio::signal::ctrl_c() => anyhow::bail!("interrupted"),
            _ = term.recv() => anyhow::bail!("terminated"),
        }
    })
}

fn block_on_code(f: impl Future<Output = Result<ExitCode>>) -> Result<ExitCode> {
    let mut code = ExitCode::FAILURE;
    block_on(async {
        code = f.await?;
        Ok(true)
    })?;
    Ok(code)
}

async fn exec(paths: Paths, node: String, command: Vec<String>) -> Result<ExitCode> {
    let cluster = Cluster::load(paths).await?;
    let vm = cluster
        .vms
        .iter()
        .find(|v| v.name == node && !v.gone)
        .ok_or_else(|| {
            let running: Vec<&str> = cluster
                .vms
                .iter()
                .filter(|v| !v.gone)
                .map(|v| v.name.as_str())
                .collect();
            anyhow::anyhow!("no running VM {node}; running: {}", running.join(", "))
        })?;
    let status = vm.exec_inherit(&command)?;
    Ok(ExitCode::from(
        status.code().unwrap_or(1).clamp(0, 255) as u8
    ))
}

async fn up(paths: Paths, topology: Topology) -> Result<bool> {
    let mut cluster = Cluster::create(paths, topology).await?;
    // As a production cluster would be: snapshots to S3 (moto's), which
    // `restore` needs.
    cluster.enable_snapshots().await?;
    let answers = scenario::up(&mut cluster).await?;
    scenario::print_answers(&answers);
    cluster.log(format!(
        "the {} cluster is up ({} VMs). `cargo xtask cluster status` checks it, \
         `cargo xtask cluster down` removes it.",
        topology.name(),
        cluster.vms.len()
    ));
    Ok(true)
}

async fn status(paths: Paths) -> Result<bool> {
    let cluster = Cluster::load(paths).await?;
    for vm in cluster.vms.iter().filter(|v| !v.gone) {
        let status = vm.agent_status().unwrap_or_default();
        println!(
            "{:<10} {:<15} {:<22} {} {}",
            vm.name, vm.address, vm.instance_id, status.phase, status.message
        );
    }
    let checks = cluster.checks().await;
    for c in &checks {
        println!("{c}");
    }
    Ok(checks.iter().all(|c| c.ok))
}

async fn upgrade(paths: Paths) -> Result<bool> {
    let cluster = Cluster::load(paths).await?;
    let (report, ok) = upgrade::run(&cluster).await?;
    println!("{}", serde_json::to_string_pretty(&report)?);
    if !ok {
        eprintln!("cluster: upgrade: FAILED (see \"failures\")");
    }
    Ok(ok)
}

/// Runs a lifecycle verb on the running cluster; its JSON on stdout.
async fn lifecycle_verb<F>(paths: Paths, verb: F) -> Result<bool>
where
    F: for<'a> FnOnce(
        &'a mut Cluster,
    )
        -> std::pin::Pin<Box<dyn Future<Output = Result<lifecycle::Report>> + 'a>>,
{
    let mut cluster = Cluster::load(paths).await?;
    let report = verb(&mut cluster).await?;
    println!("{}", serde_json::to_string_pretty(&report)?);
    if !report.failures.is_empty() {
        eprintln!(
            "cluster: {}: FAILED: {}",
            report.verb,
            report.failures.join("; ")
        );
    }
    Ok(report.failures.is_empty())
}

/// A verb's report (JSON on stdout) and its failures.
type Verdict = (serde_json::Value, Vec<String>);

/// Runs a verb on the running cluster; its JSON on stdout, its failures
/// on stderr.
async fn json_verb<F>(paths: Paths, verb: F) -> Result<bool>
where
    F: for<'a> FnOnce(
        &'a mut Cluster,
    ) -> std::pin::Pin<Box<dyn Future<Output = Result<Verdict>> + 'a>>,
{
    let mut cluster = Cluster::load(paths).await?;
    let (report, failures) = verb(&mut cluster).await?;
    println!("{}", serde_json::to_string_pretty(&report)?);
    if !failures.is_empty() {
        eprintln!(
            "cluster: {}: FAILED: {}",
            report["verb"].as_str().unwrap_or("?"),
            failures.join("; ")
        );
    }
    Ok(failures.is_empty())
}

async fn test(paths: Paths) -> Result<bool> {
    let mut cluster = Cluster::create(paths, Topology::Small).await?;
    let outcome = scenario::test(&mut cluster).await;
    if outcome.is_err() {
        cluster.print_agents();
    }
    outcome?;
    cluster.log("cluster test passed");
    Ok(true)
}
