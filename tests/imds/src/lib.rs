//! A fake EC2 Instance Metadata Service that follows AWS's documented IMDSv2
//! behaviour, errors included, so the agent's real IMDS client can be tested
//! off AWS: in-process through [`FakeImds::start`], or as the
//! `kraken-fake-imds` binary inside a test VM's network namespace.
//!
//! Faults (delays, error statuses, hangs, token invalidation) can be set at
//! start and changed while it runs, to test the client's timeouts, retries
//! and token handling.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime};

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;

const TOKEN_PATH: &str = "/latest/api/token";
const TTL_HEADER: &str = "x-aws-ec2-metadata-token-ttl-seconds";
const TOKEN_HEADER: &str = "x-aws-ec2-metadata-token";
const MAX_TTL_SECONDS: u64 = 21_600;

/// What the fake instance reports about itself.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct InstanceData {
    pub instance_id: String,
    pub ami_id: String,
    pub instance_type: String,
    pub architecture: String,
    pub account_id: String,
    pub region: String,
    pub availability_zone: String,
    pub private_ipv4: Ipv4Addr,
    /// Derived from the private address when absent.
    pub mac: Option<String>,
    pub tags: BTreeMap<String, String>,
    /// The instance's "allow tags in instance metadata" option. On by default
    /// here because most tests want tags; off, `tags/` answers 404 as on AWS.
    pub tags_in_metadata: bool,
    pub iam_role: Option<IamRole>,
}

impl Default for InstanceData {
    fn default() -> Self {
        Self {
            instance_id: "i-0123456789abcdef0".into(),
            ami_id: "ami-0123456789abcdef0".into(),
            instance_type: "t3.medium".into(),
            architecture: "x86_64".into(),
            account_id: "123456789012".into(),
            region: "us-east-1".into(),
            availability_zone: "us-east-1a".into(),
            private_ipv4: Ipv4Addr::new(10, 0, 1, 10),
            mac: None,
            tags: BTreeMap::new(),
            tags_in_metadata: true,
            iam_role: None,
        }
    }
}

/// The instance profile's role and the (fake) credentials IMDS hands out.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IamRole {
    pub name: String,
    pub access_key_id: String,
    pub secret_access_key: String,
    pub token: String,
}

/// The instance's `HttpTokens` setting.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TokenMode {
    /// IMDSv2 only: every metadata request needs a valid token.
    #[default]
    Required,
    /// IMDSv1 allowed: requests without a token are served, but a request
    /// with an invalid token is still refused, as on AWS.
    Optional,
}

/// Faults applied to incoming requests, in this order: delay, hang, failure.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Faults {
    /// Wait this long before answering.
    pub delay_ms: u64,
    /// Delay only requests whose path starts with this.
    pub delay_path_prefix: Option<String>,
    /// Accept requests but answer none until this is cleared.
    pub hang: bool,
    /// Answer the next `fail_count` requests with `fail_status`.
    pub fail_count: u32,
    pub fail_status: u16,
}

impl Default for Faults {
    fn default() -> Self {
        Self {
            delay_ms: 0,
            delay_path_prefix: None,
            hang: false,
            fail_count: 0,
            fail_status: 500,
        }
    }
}

/// Everything the fake starts with; also the binary's config file format.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub instance: InstanceData,
    pub token_mode: TokenMode,
    pub faults: Faults,
}

/// Requests received (counted on arrival, so faulted ones count too).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// `PUT /latest/api/token` requests.
    pub token_puts: u64,
    pub gets: u64,
    /// Requests answered 401.
    pub unauthorized: u64,
    /// Requests per path, any method.
    pub by_path: BTreeMap<String, u64>,
}

impl Stats {
    pub fn path(&self, path: &str) -> u64 {
        self.by_path.get(path).copied().unwrap_or(0)
    }
}

struct Inner {
    data: InstanceData,
    mode: TokenMode,
    tokens: HashMap<String, Instant>,
    stats: Stats,
}

struct Shared {
    inner: Mutex<Inner>,
    // A watch channel so that hanging requests wake up when `hang` is cleared.
    faults: watch::Sender<Faults>,
    stop: watch::Receiver<()>,
    started: SystemTime,
}

/// Entry point; see [`FakeImdsHandle`] for controlling a running fake.
pub struct FakeImds;

impl FakeImds {
    /// Serves `data` on `bind` (port 0 picks a free port) with no faults.
    pub async fn start(bind: SocketAddr, data: InstanceData) -> io::Result<FakeImdsHandle> {
        let config = Config {
            instance: data,
            ..Config::default()
        };
        Self::start_with(bind, config).await
    }

    pub async fn start_with(bind: SocketAddr, config: Config) -> io::Result<FakeImdsHandle> {
        validate(&config.instance)?;
        let listener = tokio::net::TcpListener::bind(bind).await?;
        let addr = listener.local_addr()?;
        let (stop_tx, stop) = watch::channel(());
        let shared = Arc::new(Shared {
            inner: Mutex::new(Inner {
                data: config.instance,
                mode: config.token_mode,
                tokens: HashMap::new(),
                stats: Stats::default(),
            }),
            faults: watch::Sender::new(config.faults),
            stop: stop.clone(),
            started: SystemTime::now(),
        });
        let app = Router::new().fallback(handle).with_state(shared.clone());
        let mut stopped = stop;
        let task = tokio::spawn(async move {
            let shutdown = async move {
                let _ = stopped.changed().await;
            };
            if let Err(e) = axum::serve(listener, app)
                .with_graceful_shutdown(shutdown)
                .await
            {
                log::error!("fake IMDS server failed: {e}");
            }
        });
        Ok(FakeImdsHandle {
            addr,
            shared,
            stop: stop_tx,
            task,
        })
    }
}

/// A running fake. Dropping it stops the server; requests held by a delay or
/// a hang are then answered 503.
pub struct FakeImdsHandle {
    addr: SocketAddr,
    shared: Arc<Shared>,
    stop: watch::Sender<()>,
    task: JoinHandle<()>,
}

impl FakeImdsHandle {
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The base URL to give an IMDS client, e.g. `http://127.0.0.1:41234`.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn faults(&self) -> Faults {
        self.shared.faults.borrow().clone()
    }

    pub fn set_faults(&self, faults: Faults) {
        self.shared.faults.send_replace(faults);
    }

    /// Delays every response, or only those whose path starts with `prefix`.
    pub fn set_delay(&self, delay: Duration, prefix: Option<&str>) {
        self.shared.faults.send_modify(|f| {
            f.delay_ms = delay.as_millis().try_into().unwrap_or(u64::MAX);
            f.delay_path_prefix = prefix.map(str::to_owned);
        });
    }

    /// Answers the next `count` requests, token requests included, with `status`.
    pub fn fail_next(&self, count: u32, status: u16) {
        self.shared.faults.send_modify(|f| {
            f.fail_count = count;
            f.fail_status = status;
        });
    }

    /// Makes the service accept connections but answer nothing until cleared.
    pub fn set_hang(&self, hang: bool) {
        self.shared.faults.send_modify(|f| f.hang = hang);
    }

    /// Forgets every issued token, so clients holding one get 401.
    pub fn invalidate_tokens(&self) {
        self.shared.lock().tokens.clear();
    }

    pub fn set_token_mode(&self, mode: TokenMode) {
        self.shared.lock().mode = mode;
    }

    pub fn instance_data(&self) -> InstanceData {
        self.shared.lock().data.clone()
    }

    /// Changes what the instance reports; refused, leaving the data as it
    /// was, if AWS would refuse the result (see [`validate`]).
    pub fn update_instance_data(&self, change: impl FnOnce(&mut InstanceData)) -> io::Result<()> {
        let mut inner = self.shared.lock();
        let mut data = inner.data.clone();
        change(&mut data);
        validate(&data)?;
        inner.data = data;
        Ok(())
    }

    pub fn stats(&self) -> Stats {
        self.shared.lock().stats.clone()
    }

    pub fn reset_stats(&self) {
        self.shared.lock().stats = Stats::default();
    }

    /// Stops the server and waits (a few seconds at most) for it to finish.
    pub async fn shutdown(self) {
        drop(self.stop);
        let _ = tokio::time::timeout(Duration::from_secs(5), self.task).await;
    }
}

/// AWS refuses to enable tags in instance metadata while a tag key would not
/// make a valid path segment; the fake refuses to start with such data.
pub fn validate(data: &InstanceData) -> io::Result<()> {
    if !data.tags_in_metadata {
        return Ok(());
    }
    let allowed = |c: char| c.is_ascii_alphanumeric() || "+-=._:@,".contains(c);
    match data.tags.keys().find(|k| {
        k.is_empty() || !k.chars().all(allowed) || matches!(k.as_str(), "." | ".." | "_index")
    }) {
        Some(key) => Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("tag key {key:?} is not allowed while tags are in instance metadata"),
        )),
        None => Ok(()),
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    async fn inject_faults(&self, path: &str) -> Option<StatusCode> {
        let faults = self.faults.borrow().clone();
        let delayed = faults.delay_ms > 0
            && (faults.delay_path_prefix.as_deref()).is_none_or(|p| path.starts_with(p));
        let mut faults_rx = self.faults.subscribe();
        let wait = async {
            if delayed {
                tokio::time::sleep(Duration::from_millis(faults.delay_ms)).await;
            }
            let _ = faults_rx.wait_for(|f| !f.hang).await;
        };
        let mut stop = self.stop.clone();
        tokio::select! {
            () = wait => {}
            _ = stop.changed() => return Some(StatusCode::SERVICE_UNAVAILABLE),
        }
        let mut failure = None;
        self.faults.send_if_modified(|f| {
            let fail = f.fail_count > 0;
            if fail {
                f.fail_count -= 1;
                failure = Some(f.fail_status);
            }
            fail
        });
        failure.map(|s| StatusCode::from_u16(s).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR))
    }

    fn answer(&self, method: &Method, path: &str, headers: &HeaderMap) -> Response {
        let mut inner = self.lock();
        if path == TOKEN_PATH {
            return inner.issue_token(method, headers);
        }
        if method != Method::GET && method != Method::HEAD {
            return error(StatusCode::METHOD_NOT_ALLOWED);
        }
        let now = Instant::now();
        let remaining = match (headers.get(TOKEN_HEADER), inner.mode) {
            (None, TokenMode::Optional) => None,
            (None, TokenMode::Required) => return error(StatusCode::UNAUTHORIZED),
            (Some(token), _) => match token.to_str().ok().and_then(|t| inner.tokens.get(t)) {
                Some(&expiry) if expiry > now => Some(expiry - now),
                _ => return error(StatusCode::UNAUTHORIZED),
            },
        };
        let Some(body) = lookup(&metadata(&inner.data, self.started), path) else {
            return error(StatusCode::NOT_FOUND);
        };
        let mut response = text(body);
        if let Some(remaining) = remaining {
            response
                .headers_mut()
                .insert(TTL_HEADER, remaining.as_secs().into());
        }
        response
    }
}

impl Inner {
    fn issue_token(&mut self, method: &Method, headers: &HeaderMap) -> Response {
        if method != Method::PUT {
            return error(StatusCode::METHOD_NOT_ALLOWED);
        }
        // AWS refuses tokens to requests that went through a proxy, so that a
        // misconfigured proxy cannot hand the instance's credentials out.
        if headers.contains_key("x-forwarded-for") {
            return error(StatusCode::FORBIDDEN);
        }
        let ttl = headers
            .get(TTL_HEADER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok())
            .filter(|ttl| (1..=MAX_TTL_SECONDS).contains(ttl));
        let Some(ttl) = ttl else {
            return error(StatusCode::BAD_REQUEST);
        };
        let now = Instant::now();
        self.tokens.retain(|_, expiry| *expiry > now);
        let token: String = std::iter::repeat_with(fastrand::alphanumeric)
            .take(56)
            .collect();
        self.tokens
            .insert(token.clone(), now + Duration::from_secs(ttl));
        let mut response = text(token);
        response.headers_mut().insert(TTL_HEADER, ttl.into());
        response
    }
}

async fn handle(
    State(shared): State<Arc<Shared>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    let path = uri.path();
    {
        let mut inner = shared.lock();
        let stats = &mut inner.stats;
        *stats.by_path.entry(path.to_owned()).or_default() += 1;
        if method == Method::GET {
            stats.gets += 1;
        } else if method == Method::PUT && path == TOKEN_PATH {
            stats.token_puts += 1;
        }
    }
    let response = match shared.inject_faults(path).await {
        Some(status) => error(status),
        None => shared.answer(&method, path, &headers),
    };
    let status = response.status();
    if status == StatusCode::UNAUTHORIZED {
        shared.lock().stats.unauthorized += 1;
    }
    // Never the headers: they carry the token.
    log::info!("{method} {path} {}", status.as_u16());
    response
}

fn text(body: String) -> Response {
    ([(header::CONTENT_TYPE, "text/plain")], body).into_response()
}

fn error(status: StatusCode) -> Response {
    let reason = status.canonical_reason().unwrap_or("Error");
    let mut response = text(format!("{} - {reason}\n", status.as_u16()));
    *response.status_mut() = status;
    response
}

fn timestamp(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string()
}

/// Every leaf document under `/latest/`, by path. A key ending in `/` marks a
/// directory that exists even when empty (`tags/instance/` with no tags).
fn metadata(d: &InstanceData, started: SystemTime) -> BTreeMap<String, String> {
    let ip = d.private_ipv4;
    let [a, b, c, e] = ip.octets();
    let mac = (d.mac.clone()).unwrap_or_else(|| format!("0e:00:{a:02x}:{b:02x}:{c:02x}:{e:02x}"));
    let domain = match d.region.as_str() {
        "us-east-1" => "ec2.internal".to_owned(),
        region => format!("{region}.compute.internal"),
    };
    let hostname = format!("ip-{a}-{b}-{c}-{e}.{domain}");
    let mut m: BTreeMap<String, String> = [
        ("meta-data/ami-id", d.ami_id.clone()),
        ("meta-data/hostname", hostname.clone()),
        ("meta-data/instance-id", d.instance_id.clone()),
        ("meta-data/instance-type", d.instance_type.clone()),
        ("meta-data/local-hostname", hostname),
        ("meta-data/local-ipv4", ip.to_string()),
        ("meta-data/mac", mac),
        (
            "meta-data/placement/availability-zone",
            d.availability_zone.clone(),
        ),
        ("meta-data/placement/region", d.region.clone()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    if d.tags_in_metadata {
        m.insert("meta-data/tags/instance/".into(), String::new());
        for (key, value) in &d.tags {
            m.insert(format!("meta-data/tags/instance/{key}"), value.clone());
        }
    }
    if let Some(role) = &d.iam_role {
        let now = SystemTime::now();
        let info = json!({
            "Code": "Success",
            "LastUpdated": timestamp(now),
            "InstanceProfileArn": format!("arn:aws:iam::{}:instance-profile/{}", d.account_id, role.name),
            "InstanceProfileId": "AIPAFAKEIMDSINSTANCEPROFILE",
        });
        let credentials = json!({
            "Code": "Success",
            "LastUpdated": timestamp(now),
            "Type": "AWS-HMAC",
            "AccessKeyId": role.access_key_id,
            "SecretAccessKey": role.secret_access_key,
            "Token": role.token,
            "Expiration": timestamp(now + Duration::from_secs(6 * 3600)),
        });
        m.insert("meta-data/iam/info".into(), pretty(&info));
        let path = format!("meta-data/iam/security-credentials/{}", role.name);
        m.insert(path, pretty(&credentials));
    }
    let document = json!({
        "accountId": d.account_id,
        "architecture": d.architecture,
        "availabilityZone": d.availability_zone,
        "billingProducts": null,
        "devpayProductCodes": null,
        "marketplaceProductCodes": null,
        "imageId": d.ami_id,
        "instanceId": d.instance_id,
        "instanceType": d.instance_type,
        "kernelId": null,
        "pendingTime": timestamp(started),
        "privateIp": ip.to_string(),
        "ramdiskId": null,
        "region": d.region,
        "version": "2017-09-30",
    });
    m.insert(
        "dynamic/instance-identity/document".into(),
        pretty(&document),
    );
    m
}

fn pretty(value: &serde_json::Value) -> String {
    serde_json::to_string_pretty(value).expect("JSON values serialize")
}

/// A leaf's document, or a directory's listing: one entry a line, with a
/// trailing `/` on subdirectories, as IMDS lists them.
fn lookup(docs: &BTreeMap<String, String>, path: &str) -> Option<String> {
    let rel = path.strip_prefix("/latest/")?;
    if !rel.is_empty() && !rel.ends_with('/') {
        if let Some(doc) = docs.get(rel) {
            return Some(doc.clone());
        }
    }
    let dir = match rel.trim_end_matches('/') {
        "" => String::new(),
        d => format!("{d}/"),
    };
    let mut children = docs.keys().filter_map(|k| k.strip_prefix(&dir)).peekable();
    children.peek()?;
    let entries: BTreeSet<String> = children
        .filter(|rest| !rest.is_empty())
        .map(|rest| match rest.split_once('/') {
            Some((sub, _)) => format!("{sub}/"),
            None => rest.to_owned(),
        })
        .collect();
    Some(entries.into_iter().collect::<Vec<_>>().join("\n"))
}
