//! `kraken-fake-imds`: the fake IMDS as a process, for test VMs.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;
use kraken_fake_imds::{Config, FakeImds};
use tokio::signal::unix::{SignalKind, signal};

/// A fake EC2 Instance Metadata Service (IMDSv2) for test VMs.
#[derive(Parser)]
#[command(version)]
struct Args {
    /// Address to serve on; port 0 picks a free one.
    #[arg(long, default_value = "169.254.169.254:80")]
    bind: SocketAddr,
    /// JSON file with `instance`, `token_mode` and `faults` (all optional).
    #[arg(long, value_name = "FILE")]
    instance: Option<PathBuf>,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let args = Args::parse();
    let config: Config = match &args.instance {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading {}", path.display()))?;
            serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))?
        }
        None => Config::default(),
    };
    let mut term = signal(SignalKind::terminate()).context("installing SIGTERM handler")?;
    let imds = FakeImds::start_with(args.bind, config)
        .await
        .with_context(|| format!("serving on {}", args.bind))?;
    // The actual address, so that a test that asked for port 0 can find it.
    log::info!("listening on {}", imds.addr());
    tokio::select! {
        _ = term.recv() => log::info!("SIGTERM: stopping"),
        _ = tokio::signal::ctrl_c() => log::info!("SIGINT: stopping"),
    }
    imds.shutdown().await;
    Ok(())
}
