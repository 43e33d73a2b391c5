//! `kraken-fake-imds`: the fake IMDS as a process, for test VMs.
//!
//! SIGHUP re-reads the `--instance` file, so that the cluster harness can
//! change what a running instance reports (its autoscaling lifecycle state, a
//! Spot interruption) without restarting it: the tokens it issued stay
//! valid. A file that no longer parses or validates is logged and the data
//! in use kept.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::Parser;
use kraken_fake_imds::{Config, FakeImds, validate};
use tokio::signal::unix::{SignalKind, signal};

/// A fake EC2 Instance Metadata Service (IMDSv2) for test VMs.
#[derive(Parser)]
#[command(version)]
struct Args {
    /// Address to serve on; port 0 picks a free one.
    #[arg(long, default_value = "169.254.169.254:80")]
    bind: SocketAddr,
    /// JSON file with `instance`, `token_mode` and `faults` (all optional);
    /// re-read on SIGHUP.
    #[arg(long, value_name = "FILE")]
    instance: Option<PathBuf>,
}

fn read_config(path: &Path) -> anyhow::Result<Config> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let config: Config =
        serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
    validate(&config.instance).with_context(|| format!("validating {}", path.display()))?;
    Ok(config)
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let args = Args::parse();
    let config = match &args.instance {
        Some(path) => read_config(path)?,
        None => Config::default(),
    };
    let mut term = signal(SignalKind::terminate()).context("installing SIGTERM handler")?;
    let mut hup = signal(SignalKind::hangup()).context("installing SIGHUP handler")?;
    let imds = FakeImds::start_with(args.bind, config)
        .await
        .with_context(|| format!("serving on {}", args.bind))?;
    // The actual address, so that a test that asked for port 0 can find it.
    log::info!("listening on {}", imds.addr());
    loop {
        tokio::select! {
            _ = term.recv() => { log::info!("SIGTERM: stopping"); break; }
            _ = tokio::signal::ctrl_c() => { log::info!("SIGINT: stopping"); break; }
            _ = hup.recv() => match &args.instance {
                None => log::warn!("SIGHUP: no --instance file to re-read"),
                Some(path) => match read_config(path).and_then(|c| Ok(imds.reload(c)?)) {
                    Ok(()) => log::info!("SIGHUP: reloaded {}", path.display()),
                    Err(e) => log::error!("SIGHUP: kept the data in use: {e:#}"),
                },
            },
        }
    }
    imds.shutdown().await;
    Ok(())
}
