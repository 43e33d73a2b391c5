//! `kraken-web`: the seed cluster's web service, deployed by
//! `jobs/web.nomad.hcl`.
//!
//! `GET /` answers `{"alloc_id": "<NOMAD_ALLOC_ID>", "status": "ok"}`, so that
//! whoever finds the instances through Consul can tell them apart and match
//! each to its Nomad allocation; `GET /health` is the Consul HTTP check.
//!
//! Under Nomad everything comes from the task's environment: the allocation
//! id and the address of the port labelled `http`. The flags exist for
//! running it by hand, and never override Nomad: the port Nomad allocated is
//! the one registered in Consul and checked, so listening anywhere else
//! would only make the check fail.

use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};
use serde::Serialize;
use tokio::net::TcpListener;
use tokio::signal::unix::{Signal, SignalKind, signal};

/// Set by Nomad for every task.
pub const ALLOC_ID_VAR: &str = "NOMAD_ALLOC_ID";
/// Set by Nomad for a port labelled `http`: the host address and port.
pub const IP_VAR: &str = "NOMAD_IP_http";
pub const PORT_VAR: &str = "NOMAD_PORT_http";

/// Why the service will not start with what it was given.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    #[error(
        "{ALLOC_ID_VAR} is not set: Nomad sets it for every task; to run outside Nomad, pass --alloc-id ID"
    )]
    MissingAllocId,
    #[error("--alloc-id is empty")]
    EmptyAllocIdFlag,
    #[error(
        "no address to listen on: {IP_VAR} and {PORT_VAR} are not set (Nomad sets them for a port labelled \"http\"); to run outside Nomad, pass --listen ADDR"
    )]
    NoListenAddr,
    /// Half of Nomad's address: a job whose port has another label, or an
    /// environment edited by hand. Guessing the other half would register
    /// one address in Consul and listen on another.
    #[error("{set} is set but {missing} is not: the job's port must be labelled \"http\"")]
    HalfListenAddr {
        set: &'static str,
        missing: &'static str,
    },
    #[error("{IP_VAR}={value:?} is not an IP address")]
    BadIp { value: String },
    #[error("{PORT_VAR}={value:?} is not a port number")]
    BadPort { value: String },
}

/// What the service runs with, resolved from Nomad's environment and the flags.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    pub listen: SocketAddr,
    pub alloc_id: String,
    /// Flags that were given but lost to Nomad's environment, for a warning.
    pub ignored_flags: Vec<&'static str>,
}

impl Config {
    /// Nomad's environment (read through `env`, so tests need not touch the
    /// process's) wins; the flags fill in what it does not set. An empty
    /// variable counts as unset.
    pub fn resolve(
        listen_flag: Option<SocketAddr>,
        alloc_id_flag: Option<String>,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Config, ConfigError> {
        let var = |name: &str| env(name).filter(|v| !v.is_empty());
        let mut ignored_flags = Vec::new();

        let alloc_id = match (var(ALLOC_ID_VAR), alloc_id_flag) {
            (Some(id), flag) => {
                if flag.is_some() {
                    ignored_flags.push("--alloc-id");
                }
                id
            }
            (None, Some(flag)) if flag.is_empty() => return Err(ConfigError::EmptyAllocIdFlag),
            (None, Some(flag)) => flag,
            (None, None) => return Err(ConfigError::MissingAllocId),
        };

        let listen = match (var(IP_VAR), var(PORT_VAR), listen_flag) {
            (Some(ip), Some(port), flag) => {
                if flag.is_some() {
                    ignored_flags.push("--listen");
                }
                let ip: IpAddr = ip
                    .trim()
                    .parse()
                    .map_err(|_| ConfigError::BadIp { value: ip.clone() })?;
                let port: u16 = port.trim().parse().map_err(|_| ConfigError::BadPort {
                    value: port.clone(),
                })?;
                SocketAddr::new(ip, port)
            }
            (Some(_), None, _) => {
                return Err(ConfigError::HalfListenAddr {
                    set: IP_VAR,
                    missing: PORT_VAR,
                });
            }
            (None, Some(_), _) => {
                return Err(ConfigError::HalfListenAddr {
                    set: PORT_VAR,
                    missing: IP_VAR,
                });
            }
            (None, None, Some(flag)) => flag,
            (None, None, None) => return Err(ConfigError::NoListenAddr),
        };

        Ok(Config {
            listen,
            alloc_id,
            ignored_flags,
        })
    }
}

/// Why the service stopped with an error once configured.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("cannot install the {0} handler: {1}")]
    Signal(&'static str, #[source] io::Error),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: io::Error,
    },
    #[error("serving: {0}")]
    Serve(#[source] io::Error),
}

/// The body of `GET /`; field order is the documented one.
#[derive(Debug, Serialize)]
struct Answer {
    alloc_id: String,
    status: &'static str,
}

/// The service's routes, answering for allocation `alloc_id`.
pub fn router(alloc_id: &str) -> Router {
    let alloc_id: Arc<str> = Arc::from(alloc_id);
    Router::new()
        .route("/", get(root))
        .route("/health", get(health))
        .with_state(alloc_id)
}

async fn root(State(alloc_id): State<Arc<str>>) -> Json<Answer> {
    Json(Answer {
        alloc_id: alloc_id.to_string(),
        status: "ok",
    })
}

async fn health() -> &'static str {
    "ok"
}

/// SIGTERM and SIGINT handlers, installed before the socket is opened so
/// that a stop right after start is graceful too, not the default kill.
/// Nomad stops a task with its `kill_signal`, SIGINT unless the job says
/// otherwise, and SIGKILLs it after the kill timeout; `docker stop` sends
/// SIGTERM.
pub struct StopSignals {
    term: Signal,
    int: Signal,
}

impl StopSignals {
    pub fn install() -> Result<StopSignals, ServeError> {
        Ok(StopSignals {
            term: signal(SignalKind::terminate()).map_err(|e| ServeError::Signal("SIGTERM", e))?,
            int: signal(SignalKind::interrupt()).map_err(|e| ServeError::Signal("SIGINT", e))?,
        })
    }

    /// Resolves with the name of the first stop signal received.
    pub async fn recv(mut self) -> &'static str {
        tokio::select! {
            _ = self.term.recv() => "SIGTERM",
            _ = self.int.recv() => "SIGINT",
        }
    }
}

/// Opens the listening socket.
pub async fn bind(addr: SocketAddr) -> Result<TcpListener, ServeError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| ServeError::Bind { addr, source })
}

/// Serves until `stop` resolves, then stops accepting and returns once the
/// requests in flight are answered.
pub async fn serve(
    listener: TcpListener,
    alloc_id: &str,
    stop: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    axum::serve(listener, router(alloc_id))
        .with_graceful_shutdown(stop)
        .await
        .map_err(ServeError::Serve)
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use axum::body::Body;
    use axum::http::{Method, Request, StatusCode, header};
    use tower::ServiceExt;

    use super::*;

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |name| map.get(name).cloned()
    }

    const NOMAD: &[(&str, &str)] = &[
        (ALLOC_ID_VAR, "5b6a7c1e-0000-4000-8000-000000000001"),
        (IP_VAR, "10.0.1.7"),
        (PORT_VAR, "23456"),
    ];

    #[test]
    fn nomad_environment_is_used() {
        let c = Config::resolve(None, None, env(NOMAD)).unwrap();
        assert_eq!(c.alloc_id, "5b6a7c1e-0000-4000-8000-000000000001");
        assert_eq!(c.listen, "10.0.1.7:23456".parse().unwrap());
        assert!(c.ignored_flags.is_empty());
    }

    #[test]
    fn nomad_environment_wins_over_flags() {
        let c = Config::resolve(
            Some("127.0.0.1:8080".parse().unwrap()),
            Some("by-hand".into()),
            env(NOMAD),
        )
        .unwrap();
        assert_eq!(c.alloc_id, "5b6a7c1e-0000-4000-8000-000000000001");
        assert_eq!(c.listen, "10.0.1.7:23456".parse().unwrap());
        assert_eq!(c.ignored_flags, ["--alloc-id", "--listen"]);
    }

    #[test]
    fn flags_serve_outside_nomad() {
        let c = Config::resolve(
            Some("127.0.0.1:8080".parse().unwrap()),
            Some("by-hand".into()),
            env(&[]),
        )
        .unwrap();
        assert_eq!(c.alloc_id, "by-hand");
        assert_eq!(c.listen, "127.0.0.1:8080".parse().unwrap());
    }

    #[test]
    fn ipv6_host_address() {
        let c = Config::resolve(
            None,
            None,
            env(&[(ALLOC_ID_VAR, "a"), (IP_VAR, "::1"), (PORT_VAR, "80")]),
        )
        .unwrap();
        assert_eq!(c.listen, "[::1]:80".parse().unwrap());
    }

    #[test]
    fn missing_alloc_id_is_refused_naming_the_variable() {
        let listen = Some("127.0.0.1:8080".parse().unwrap());
        for vars in [&[][..], &[(ALLOC_ID_VAR, "")][..]] {
            let err = Config::resolve(listen, None, env(vars)).unwrap_err();
            assert_eq!(err, ConfigError::MissingAllocId);
            let text = err.to_string();
            assert!(text.starts_with("NOMAD_ALLOC_ID is not set"), "{text}");
            assert!(text.contains("--alloc-id"), "{text}");
        }
        assert_eq!(
            Config::resolve(listen, Some(String::new()), env(&[])),
            Err(ConfigError::EmptyAllocIdFlag)
        );
    }

    #[test]
    fn missing_address_is_refused() {
        let err = Config::resolve(None, Some("a".into()), env(&[])).unwrap_err();
        assert_eq!(err, ConfigError::NoListenAddr);
        let text = err.to_string();
        assert!(
            text.contains("NOMAD_IP_http") && text.contains("--listen"),
            "{text}"
        );
    }

    #[test]
    fn half_of_nomads_address_is_refused_even_with_a_flag() {
        let listen = Some("127.0.0.1:8080".parse().unwrap());
        assert_eq!(
            Config::resolve(listen, Some("a".into()), env(&[(IP_VAR, "10.0.0.1")])),
            Err(ConfigError::HalfListenAddr {
                set: IP_VAR,
                missing: PORT_VAR
            })
        );
        assert_eq!(
            Config::resolve(listen, Some("a".into()), env(&[(PORT_VAR, "80")])),
            Err(ConfigError::HalfListenAddr {
                set: PORT_VAR,
                missing: IP_VAR
            })
        );
    }

    #[test]
    fn bad_values_are_named() {
        let bad_ip = env(&[(ALLOC_ID_VAR, "a"), (IP_VAR, "eth0"), (PORT_VAR, "80")]);
        assert_eq!(
            Config::resolve(None, None, bad_ip),
            Err(ConfigError::BadIp {
                value: "eth0".into()
            })
        );
        let bad_port = env(&[
            (ALLOC_ID_VAR, "a"),
            (IP_VAR, "10.0.0.1"),
            (PORT_VAR, "70000"),
        ]);
        let err = Config::resolve(None, None, bad_port).unwrap_err();
        assert_eq!(
            err.to_string(),
            r#"NOMAD_PORT_http="70000" is not a port number"#
        );
    }

    async fn call(method: Method, path: &str) -> (StatusCode, Option<String>, String) {
        let resp = router("alloc-1")
            .oneshot(
                Request::builder()
                    .method(method)
                    .uri(path)
                    .body(Body::empty())
                    .unwrap(),
            )
            .await
            .unwrap();
        let status = resp.status();
        let content_type = resp
            .headers()
            .get(header::CONTENT_TYPE)
            .map(|v| v.to_str().unwrap().to_owned());
        let body = axum::body::to_bytes(resp.into_body(), 1 << 16)
            .await
            .unwrap();
        (
            status,
            content_type,
            String::from_utf8(body.to_vec()).unwrap(),
        )
    }

    #[tokio::test]
    async fn root_answers_the_alloc_id_as_json() {
        let (status, content_type, body) = call(Method::GET, "/").await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(content_type.as_deref(), Some("application/json"));
        // Exactly these keys, in this order: what the issue specifies.
        assert_eq!(body, r#"{"alloc_id":"alloc-1","status":"ok"}"#);
    }

    #[tokio::test]
    async fn health_is_200() {
        let (status, _, body) = call(Method::GET, "/health").await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body, "ok");
    }

    #[tokio::test]
    async fn other_routes_and_methods_are_refused() {
        assert_eq!(call(Method::GET, "/nope").await.0, StatusCode::NOT_FOUND);
        assert_eq!(
            call(Method::POST, "/").await.0,
            StatusCode::METHOD_NOT_ALLOWED
        );
    }

    #[tokio::test]
    async fn serve_answers_until_stopped() {
        let listener = bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(async move {
            serve(listener, "alloc-2", async {
                let _ = stopped.await;
            })
            .await
        });
        let client = reqwest::Client::builder().no_proxy().build().unwrap();
        let answer: serde_json::Value = client
            .get(format!("http://{addr}/"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(
            answer,
            serde_json::json!({"alloc_id": "alloc-2", "status": "ok"})
        );
        // The pooled keep-alive connection must not hold the shutdown up.
        stop.send(()).unwrap();
        let result = tokio::time::timeout(std::time::Duration::from_secs(5), server)
            .await
            .expect("serve returns once stopped")
            .unwrap();
        assert!(result.is_ok(), "{result:?}");
        assert!(
            tokio::net::TcpStream::connect(addr).await.is_err(),
            "still accepting after the stop"
        );
    }

    #[tokio::test]
    async fn a_taken_address_is_named() {
        let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = taken.local_addr().unwrap();
        let err = bind(addr).await.unwrap_err();
        assert!(
            err.to_string()
                .starts_with(&format!("cannot listen on {addr}: ")),
            "{err}"
        );
    }
}
