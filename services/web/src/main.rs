//! `kraken-web`: see the library for what it answers and where its settings
//! come from.

use std::net::SocketAddr;
use std::process::ExitCode;

use clap::Parser;
use kraken_web::{Config, StopSignals, bind, serve};

/// Answers `GET /` with {"alloc_id": "<NOMAD_ALLOC_ID>", "status": "ok"} and
/// `GET /health` with 200, on the address Nomad allocated for the port
/// labelled "http" (NOMAD_IP_http, NOMAD_PORT_http).
#[derive(Parser)]
#[command(version)]
struct Args {
    /// Address to listen on outside Nomad; ignored when NOMAD_IP_http and
    /// NOMAD_PORT_http are set.
    #[arg(long, value_name = "ADDR")]
    listen: Option<SocketAddr>,
    /// Allocation id to answer with outside Nomad; ignored when
    /// NOMAD_ALLOC_ID is set.
    #[arg(long, value_name = "ID")]
    alloc_id: Option<String>,
}

/// One thread is plenty for a health-checked status endpoint, and keeps the
/// footprint of each of the job's instances small.
#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let args = Args::parse();
    let config = match Config::resolve(args.listen, args.alloc_id, |name| std::env::var(name).ok())
    {
        Ok(config) => config,
        Err(e) => {
            // On stderr whatever the log filter: this is why the task failed.
            eprintln!("kraken-web: {e}");
            // Like clap's own usage errors: the invocation is wrong.
            return ExitCode::from(2);
        }
    };
    for flag in &config.ignored_flags {
        log::warn!("{flag} ignored: Nomad's environment sets it");
    }
    match run(config).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("kraken-web: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(config: Config) -> Result<(), kraken_web::ServeError> {
    let signals = StopSignals::install()?;
    let listener = bind(config.listen).await?;
    // The bound address, so that a caller that asked for port 0 can find it.
    let addr = listener.local_addr().unwrap_or(config.listen);
    log::info!("listening on {addr} for allocation {}", config.alloc_id);
    serve(listener, &config.alloc_id, async move {
        let name = signals.recv().await;
        log::info!("{name}: stopping");
    })
    .await?;
    log::info!("stopped");
    Ok(())
}
