use std::future::Future;
use std::time::{Duration, Instant};

use anyhow::{Result, bail};

/// How long a starter waits for its peer to become usable. Generous: CI has
/// two cores and runs test binaries' tests in parallel.
pub const START_TIMEOUT: Duration = Duration::from_secs(120);

const POLL_INTERVAL: Duration = Duration::from_millis(200);

/// A client for talking to the peers on loopback.
///
/// A new one per caller on purpose: a pooled connection belongs to the tokio
/// runtime that opened it, and each `#[tokio::test]` has its own runtime, so
/// a client shared through a static fails in the second test to use it.
pub fn http_client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .connect_timeout(Duration::from_secs(2))
        .timeout(Duration::from_secs(10))
        .build()
        .expect("reqwest client")
}

/// The body of a GET of `url` through [`http_client`], whatever its
/// status; panics (naming the URL) when there is no answer.
pub async fn get_text(url: &str) -> String {
    let answer = http_client().get(url).send().await;
    let answer = answer.unwrap_or_else(|e| panic!("GET {url}: {e}"));
    answer
        .text()
        .await
        .unwrap_or_else(|e| panic!("GET {url}: reading the body: {e}"))
}

/// Polls `pred` until it returns true; an error names `what` after `timeout`.
pub async fn wait_until<F, Fut>(what: &str, timeout: Duration, mut pred: F) -> Result<()>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    wait_for(what, timeout, || {
        let fut = pred();
        async move { fut.await.then_some(()) }
    })
    .await
}

/// Polls `f` until it returns `Some`, and returns that value.
pub async fn wait_for<T, F, Fut>(what: &str, timeout: Duration, mut f: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    poll(what, timeout, || {
        let fut = f();
        async move { Ok(fut.await.ok_or_else(|| "not yet".to_string())) }
    })
    .await
}

/// Waits until a GET of `url` answers with a 2xx status.
pub async fn wait_http_ok(url: &str, timeout: Duration) -> Result<()> {
    let client = http_client();
    poll(&format!("GET {url} to answer 2xx"), timeout, || {
        let client = client.clone();
        async move {
            Ok(match client.get(url).send().await {
                Ok(resp) if resp.status().is_success() => Ok(()),
                Ok(resp) => Err(format!("status {}", resp.status())),
                Err(e) => Err(format!("{e:#}")),
            })
        }
    })
    .await
}

/// The polling loop under all waits. `f` yields `Ok(Ok(value))` when done,
/// `Ok(Err(why_not_yet))` to try again, and `Err` to give up at once (the
/// peer died: waiting out the timeout would only hide that).
pub(crate) async fn poll<T, F, Fut>(what: &str, timeout: Duration, mut f: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<std::result::Result<T, String>>>,
{
    let started = Instant::now();
    loop {
        let last = match f().await? {
            Ok(value) => return Ok(value),
            Err(why) => why,
        };
        if started.elapsed() >= timeout {
            bail!("timed out after {timeout:?} waiting for {what} (last: {last})");
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

/// GETs `url` and parses JSON; the error text says why, for timeout messages.
pub(crate) async fn get_json(
    client: &reqwest::Client,
    url: &str,
) -> std::result::Result<serde_json::Value, String> {
    let resp = client.get(url).send().await.map_err(|e| format!("{e:#}"))?;
    let status = resp.status();
    if !status.is_success() {
        let body = resp.text().await.unwrap_or_default();
        return Err(format!("GET {url}: {status}: {}", body.trim()));
    }
    resp.json().await.map_err(|e| format!("GET {url}: {e:#}"))
}
