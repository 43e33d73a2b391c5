use std::fmt;
use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde::de::DeserializeOwned;

/// A Consul or Nomad ACL token. Its `Debug` and `Display` never show it.
#[derive(Clone, PartialEq, Eq)]
pub struct Token(String);

impl Token {
    pub fn new(secret: impl Into<String>) -> Token {
        Token(secret.into())
    }

    /// The secret itself, for the one place that must send or store it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Token(<redacted>)")
    }
}

#[derive(Debug, thiserror::Error)]
pub enum HashiError {
    #[error("{service} is not answering at {url}: {detail}")]
    Unreachable {
        service: &'static str,
        url: String,
        detail: String,
    },
    #[error("{service} answered {method} {url} with HTTP {status}: {body}")]
    Status {
        service: &'static str,
        method: Method,
        url: String,
        status: u16,
        body: String,
    },
    #[error("{service} answered {url} with a body that is not the expected JSON: {detail}")]
    Decode {
        service: &'static str,
        url: String,
        detail: String,
    },
    #[error("{service} address {url:?} is not a valid http(s) URL")]
    BadUrl { service: &'static str, url: String },
    #[error("cannot set up TLS to {service}: {detail}")]
    Tls {
        service: &'static str,
        detail: String,
    },
}

/// How the agent's clients speak TLS to their local Consul or Nomad: trust
/// only the cluster CA (never the system roots), and present the node's
/// certificate where the service verifies its callers.
#[derive(Clone)]
pub struct ClientTls {
    ca_pem: Vec<u8>,
    /// Certificate chain then key, PEM.
    identity_pem: Option<Vec<u8>>,
}

impl fmt::Debug for ClientTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientTls")
            .field("client_certificate", &self.identity_pem.is_some())
            .finish()
    }
}

impl ClientTls {
    /// Reads the CA file and, if given, the certificate and key files. The
    /// files are read now: a client made after a renewal presents the new
    /// certificate.
    pub fn from_files(
        ca_file: &std::path::Path,
        cert_and_key: Option<(&std::path::Path, &std::path::Path)>,
    ) -> Result<ClientTls, HashiError> {
        let read = |p: &std::path::Path| {
            std::fs::read(p).map_err(|e| HashiError::Tls {
                service: "Consul/Nomad",
                detail: format!("cannot read {}: {e}", p.display()),
            })
        };
        let ca_pem = read(ca_file)?;
        let identity_pem = match cert_and_key {
            Some((cert, key)) => {
                let mut pem = read(cert)?;
                pem.push(b'\n');
                pem.extend(read(key)?);
                Some(pem)
            }
            None => None,
        };
        Ok(ClientTls {
            ca_pem,
            identity_pem,
        })
    }

    /// The certificate chain and key this client presents, PEM.
    pub fn identity_pem(&self) -> Option<&[u8]> {
        self.identity_pem.as_deref()
    }

    pub fn from_pem(ca_pem: &[u8], identity_pem: Option<&[u8]>) -> ClientTls {
        ClientTls {
            ca_pem: ca_pem.to_vec(),
            identity_pem: identity_pem.map(<[u8]>::to_vec),
        }
    }

    /// Trust only the cluster CA, and present the certificate if there is
    /// one: for this crate's clients and any other caller of the same
    /// services (the cluster harness).
    pub fn apply(
        &self,
        builder: reqwest::ClientBuilder,
        service: &'static str,
    ) -> Result<reqwest::ClientBuilder, HashiError> {
        let tls_err = |what: &str, e: reqwest::Error| HashiError::Tls {
            service,
            detail: format!("{what}: {}", error_chain(&e)),
        };
        let roots = reqwest::Certificate::from_pem_bundle(&self.ca_pem)
            .map_err(|e| tls_err("the CA file is not PEM", e))?;
        let mut builder = builder.tls_certs_only(roots);
        if let Some(identity) = &self.identity_pem {
            let identity = reqwest::Identity::from_pem(identity)
                .map_err(|e| tls_err("the client certificate or key is not PEM", e))?;
            builder = builder.identity(identity);
        }
        Ok(builder)
    }
}

impl HashiError {
    pub fn status(&self) -> Option<u16> {
        match self {
            HashiError::Status { status, .. } => Some(*status),
            _ => None,
        }
    }

    pub fn is_unreachable(&self) -> bool {
        matches!(self, HashiError::Unreachable { .. })
    }

    /// Worth trying again unchanged: the agent is not answering (yet), or
    /// answered with a server error (no leader, an election, overload).
    pub fn is_transient(&self) -> bool {
        match self {
            HashiError::Unreachable { .. } => true,
            HashiError::Status { status, .. } => *status >= 500,
            HashiError::Decode { .. } | HashiError::BadUrl { .. } | HashiError::Tls { .. } => false,
        }
    }

    /// The client could not be made from this node's own configuration: an
    /// address that is not a URL, or TLS files that are missing or broken.
    pub fn is_config(&self) -> bool {
        matches!(self, HashiError::BadUrl { .. } | HashiError::Tls { .. })
    }
}

/// The shared transport: base URL, token header, timeouts.
#[derive(Clone)]
pub(crate) struct Http {
    service: &'static str,
    client: reqwest::Client,
    base: String,
    token_header: &'static str,
    token: Option<Token>,
}

impl fmt::Debug for Http {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct(self.service)
            .field("base", &self.base)
            .field("token", &self.token)
            .finish()
    }
}

pub(crate) const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

impl Http {
    pub(crate) fn new(
        service: &'static str,
        base: &str,
        token_header: &'static str,
        tls: Option<&ClientTls>,
    ) -> Result<Http, HashiError> {
        let base = base.trim_end_matches('/').to_owned();
        if reqwest::Url::parse(&base).is_err()
            || !(base.starts_with("http://") || base.starts_with("https://"))
        {
            return Err(HashiError::BadUrl { service, url: base });
        }
        let mut builder = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(3))
            // Loopback agents must not be sent through a proxy from the
            // environment.
            .no_proxy();
        if let Some(tls) = tls {
            builder = tls.apply(builder, service)?;
        }
        // Building fails only on what was configured (TLS material the TLS
        // stack refuses), never on the peer.
        let client = builder.build().map_err(|e| HashiError::Tls {
            service,
            detail: format!("cannot build the client for {base}: {}", error_chain(&e)),
        })?;
        Ok(Http {
            service,
            client,
            base,
            token_header,
            token: None,
        })
    }

    pub(crate) fn with_token(mut self, token: Option<Token>) -> Http {
        self.token = token;
        self
    }

    pub(crate) fn base(&self) -> &str {
        &self.base
    }

    /// Sends a request and returns the body of a 2xx answer.
    pub(crate) async fn send(
        &self,
        method: Method,
        path_and_query: &str,
        body: Option<Vec<u8>>,
        timeout: Duration,
    ) -> Result<(StatusCode, reqwest::header::HeaderMap, Vec<u8>), HashiError> {
        self.send_also(method, path_and_query, body, timeout, None)
            .await
    }

    /// As [`Http::send`], but an answer with status `also` is returned
    /// whole too: some endpoints send their full document with a non-2xx
    /// status that only says what the document says.
    async fn send_also(
        &self,
        method: Method,
        path_and_query: &str,
        body: Option<Vec<u8>>,
        timeout: Duration,
        also: Option<u16>,
    ) -> Result<(StatusCode, reqwest::header::HeaderMap, Vec<u8>), HashiError> {
        let url = format!("{}{}", self.base, path_and_query);
        let mut req = self.client.request(method.clone(), &url).timeout(timeout);
        if let Some(token) = &self.token {
            req = req.header(self.token_header, token.expose());
        }
        if let Some(body) = body {
            req = req.body(body);
        }
        let resp = req.send().await.map_err(|e| HashiError::Unreachable {
            service: self.service,
            url: url.clone(),
            detail: error_chain(&e),
        })?;
        let status = resp.status();
        let headers = resp.headers().clone();
        let bytes = resp.bytes().await.map_err(|e| HashiError::Unreachable {
            service: self.service,
            url: url.clone(),
            detail: error_chain(&e),
        })?;
        if !status.is_success() && also != Some(status.as_u16()) {
            let mut body = String::from_utf8_lossy(&bytes).trim().to_owned();
            body.truncate(300);
            return Err(HashiError::Status {
                service: self.service,
                method,
                url,
                status: status.as_u16(),
                body,
            });
        }
        Ok((status, headers, bytes.to_vec()))
    }

    pub(crate) async fn get_json<T: DeserializeOwned>(&self, path: &str) -> Result<T, HashiError> {
        let (_, _, body) = self.send(Method::GET, path, None, DEFAULT_TIMEOUT).await?;
        self.decode(path, &body)
    }

    /// GETs a JSON document the service sends with status `also` as well
    /// as with 200 (autopilot's health is 429 while a server is unhealthy,
    /// a Nomad agent's health 500 while the agent is).
    pub(crate) async fn get_json_also<T: DeserializeOwned>(
        &self,
        path: &str,
        also: u16,
    ) -> Result<T, HashiError> {
        let (_, _, body) = self
            .send_also(Method::GET, path, None, DEFAULT_TIMEOUT, Some(also))
            .await?;
        self.decode(path, &body)
    }

    /// PUTs a JSON body and decodes the JSON answer.
    pub(crate) async fn put_json<T: DeserializeOwned>(
        &self,
        path: &str,
        body: &serde_json::Value,
    ) -> Result<T, HashiError> {
        let (_, _, resp) = self
            .send(
                Method::PUT,
                path,
                Some(body.to_string().into_bytes()),
                DEFAULT_TIMEOUT,
            )
            .await?;
        self.decode(path, &resp)
    }

    pub(crate) fn decode<T: DeserializeOwned>(
        &self,
        path: &str,
        body: &[u8],
    ) -> Result<T, HashiError> {
        serde_json::from_slice(body).map_err(|e| HashiError::Decode {
            service: self.service,
            url: format!("{}{}", self.base, path),
            detail: e.to_string(),
        })
    }
}

fn error_chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut out = err.to_string();
    let mut source = err.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}
