//! Answering requests as IMDS does: faults first, then tokens, then
//! metadata, with AWS's statuses.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use tokio::time::Instant;

use crate::config::TokenMode;
use crate::metadata::{lookup, metadata};
use crate::state::{Inner, Shared};

const TOKEN_PATH: &str = "/latest/api/token";
const TTL_HEADER: &str = "x-aws-ec2-metadata-token-ttl-seconds";
const TOKEN_HEADER: &str = "x-aws-ec2-metadata-token";
const MAX_TTL_SECONDS: u64 = 21_600;

impl Shared {
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

pub(crate) async fn handle(
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
