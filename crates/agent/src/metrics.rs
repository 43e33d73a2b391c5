//! The agent's own Prometheus metrics, served on loopback
//! (`[metrics] address`, docs/operations.md): what a person would otherwise
//! read in `status.json` and the journal, as series an alert can watch.
//!
//! The steps record into one process-wide registry as they work; the AWS
//! call totals are `kraken_aws`'s, read at each scrape. The endpoint is a
//! few lines on tokio rather than an HTTP server crate: one path, one
//! method, loopback only, and the binary stays small.

use std::net::SocketAddr;
use std::sync::LazyLock;
use std::sync::atomic::Ordering;
use std::time::Duration;

use http_body_util::Full;
use hyper::body::Bytes;
use hyper::header::{CONTENT_TYPE, HeaderValue};
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use kraken_render::Service;
use prometheus_client::encoding::text;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

type Labels1 = [(&'static str, String); 1];
type Labels2 = [(&'static str, String); 2];

struct Metrics {
    registry: Registry,
    cert_expiry: Family<Labels2, Gauge>,
    cert_remaining: Family<Labels2, Gauge>,
    renewals: Family<Labels1, Counter>,
    lease: Family<Labels2, Counter>,
    steps: Family<Labels1, Counter>,
    upkeep: Family<Labels1, Counter>,
    actions: Family<Labels2, Counter>,
    converged: Gauge,
    round: Gauge,
    aws_calls: Family<Labels2, Counter>,
    aws_errors: Family<Labels2, Counter>,
}

static METRICS: LazyLock<Metrics> = LazyLock::new(|| {
    let mut registry = Registry::with_prefix("kraken");
    let m = Metrics {
        registry: Registry::default(),
        cert_expiry: Family::default(),
        cert_remaining: Family::default(),
        renewals: Family::default(),
        lease: Family::default(),
        steps: Family::default(),
        upkeep: Family::default(),
        actions: Family::default(),
        converged: Gauge::default(),
        round: Gauge::default(),
        aws_calls: Family::default(),
        aws_errors: Family::default(),
    };
    let info: Family<Labels1, Gauge> = Family::default();
    info.get_or_create(&[("version", env!("CARGO_PKG_VERSION").into())])
        .set(1);
    registry.register("agent", "The running kraken-agent (always 1)", info);
    registry.register(
        "certificate_expiry_timestamp_seconds",
        "When each certificate file's first certificate expires (Unix time)",
        m.cert_expiry.clone(),
    );
    registry.register(
        "certificate_remaining_seconds",
        "Remaining life of each certificate file's first certificate, at the scrape",
        m.cert_remaining.clone(),
    );
    registry.register(
        "certificate_renewals",
        "Leaf certificates issued to replace an existing one",
        m.renewals.clone(),
    );
    registry.register(
        "bootstrap_lease",
        "Bootstrap phases this agent ran: event=held (it took the lease) or \
         event=found_done (another node had done the phase)",
        m.lease.clone(),
    );
    registry.register(
        "bootstrap_steps",
        "Bootstrap steps this agent performed",
        m.steps.clone(),
    );
    registry.register(
        "token_upkeep_events",
        "What the token upkeep found and did, by event (rotated, revoked, recreated, \
         retired, rebootstrapped, policy)",
        m.upkeep.clone(),
    );
    registry.register(
        "service_actions",
        "What step 6 did to a service (started, reloaded, restarted, ...)",
        m.actions.clone(),
    );
    registry.register(
        "converged_timestamp_seconds",
        "When the agent last converged (Unix time); 0 before the first convergence",
        m.converged.clone(),
    );
    registry.register(
        "watch_round_timestamp_seconds",
        "When the watch loop last finished a round (Unix time)",
        m.round.clone(),
    );
    registry.register(
        "aws_calls",
        "AWS API HTTP attempts (retries included), by service and operation",
        m.aws_calls.clone(),
    );
    registry.register(
        "aws_errors",
        "AWS API attempts that failed (an error answer or none), by service and operation",
        m.aws_errors.clone(),
    );
    Metrics { registry, ..m }
});

fn name(service: Service) -> String {
    service.as_str().to_owned()
}

fn now_unix() -> i64 {
    kraken_ready::now_unix() as i64
}

/// A certificate file's expiry, as the agent last read or wrote it.
pub fn certificate(service: Service, file: &std::path::Path, not_after_unix: u64) {
    let labels = [
        ("service", name(service)),
        ("file", file.display().to_string()),
    ];
    METRICS
        .cert_expiry
        .get_or_create(&labels)
        .set(not_after_unix as i64);
    remember(&labels);
}

pub fn renewed(service: Service) {
    METRICS
        .renewals
        .get_or_create(&[("service", name(service))])
        .inc();
}

/// One bootstrap phase's outcome on this node.
pub fn bootstrap(phase: &str, report: &kraken_bootstrap::Report) {
    let event = if report.held_lease {
        "held"
    } else {
        "found_done"
    };
    METRICS
        .lease
        .get_or_create(&[("phase", phase.to_owned()), ("event", event.to_owned())])
        .inc();
    METRICS
        .steps
        .get_or_create(&[("phase", phase.to_owned())])
        .inc_by(report.performed.len() as u64);
}

pub fn upkeep(done: &kraken_bootstrap::Upkeep) {
    let add = |event: &str, n: usize| {
        if n > 0 {
            METRICS
                .upkeep
                .get_or_create(&[("event", event.to_owned())])
                .inc_by(n as u64);
        }
    };
    add("rebootstrapped", usize::from(done.rebootstrapped));
    add("policy", done.policies.len());
    add("rotated", done.rotated.len());
    add("revoked", done.revoked.len());
    add("recreated", done.recreated.len());
    add("retired", done.retired.len());
}

pub fn action(service: Service, outcome: &str) {
    METRICS
        .actions
        .get_or_create(&[("service", name(service)), ("outcome", outcome.to_owned())])
        .inc();
}

pub fn converged() {
    METRICS.converged.set(now_unix());
}

pub fn watch_round() {
    METRICS.round.set(now_unix());
}

/// The registry as Prometheus text, with the values read at scrape time
/// brought up to date first.
pub fn encode() -> String {
    let m = &*METRICS;
    let now = now_unix();
    // Collect first: setting while the family is locked for reading would
    // deadlock.
    let expiries: Vec<(Labels2, i64)> = known_certificates()
        .into_iter()
        .map(|labels| {
            let expiry = m.cert_expiry.get_or_create(&labels).get();
            (labels, expiry)
        })
        .collect();
    for (labels, expiry) in expiries {
        m.cert_remaining.get_or_create(&labels).set(expiry - now);
    }
    for ((service, operation), totals) in kraken_aws::totals() {
        let labels = [("service", service), ("operation", operation)];
        m.aws_calls
            .get_or_create(&labels)
            .inner()
            .store(totals.attempts, Ordering::Relaxed);
        m.aws_errors
            .get_or_create(&labels)
            .inner()
            .store(totals.errors, Ordering::Relaxed);
    }
    let mut out = String::new();
    text::encode(&mut out, &m.registry).expect("writing to a String cannot fail");
    out
}

/// The certificate files recorded so far (`Family` has no iterator).
fn known_certificates() -> Vec<Labels2> {
    CERT_FILES.lock().unwrap_or_else(|e| e.into_inner()).clone()
}

static CERT_FILES: std::sync::Mutex<Vec<Labels2>> = std::sync::Mutex::new(Vec::new());

fn remember(labels: &Labels2) {
    let mut files = CERT_FILES.lock().unwrap_or_else(|e| e.into_inner());
    if !files.contains(labels) {
        files.push(labels.clone());
    }
}

/// Serves `GET /metrics` on `address` (loopback, `[metrics]`) for the
/// process's life; returns the address bound (port 0 takes a free one).
pub async fn serve(address: SocketAddr) -> std::io::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind(address).await?;
    let bound = listener.local_addr()?;
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                // Out of file descriptors and the like: try again shortly.
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            };
            tokio::spawn(async move {
                let conn = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service_fn(answer));
                // A scraper that stalls is dropped, never waited on.
                let _ = tokio::time::timeout(Duration::from_secs(10), conn).await;
            });
        }
    });
    Ok(bound)
}

async fn answer(
    req: Request<hyper::body::Incoming>,
) -> Result<Response<Full<Bytes>>, std::convert::Infallible> {
    let (status, kind, body) = match (req.method(), req.uri().path()) {
        (&Method::GET, "/metrics") => (
            StatusCode::OK,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            encode(),
        ),
        (&Method::GET, _) => (
            StatusCode::NOT_FOUND,
            "text/plain",
            "only /metrics here\n".into(),
        ),
        _ => (
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain",
            "GET /metrics\n".into(),
        ),
    };
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(kind));
    Ok(response)
}
