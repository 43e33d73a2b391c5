use std::time::Duration;

use base64::Engine;
use reqwest::Method;
use serde::Deserialize;

use crate::http::{DEFAULT_TIMEOUT, HashiError, Http, Token};

/// A Consul agent's HTTP API.
#[derive(Debug, Clone)]
pub struct Consul {
    http: Http,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct ConsulMember {
    #[serde(rename = "Name")]
    pub name: String,
    #[serde(rename = "Addr")]
    pub addr: String,
    /// Serf status: 1 alive, 2 leaving, 3 left, 4 failed.
    #[serde(rename = "Status")]
    pub status: u8,
    #[serde(rename = "Tags", default)]
    pub tags: std::collections::BTreeMap<String, String>,
}

impl ConsulMember {
    pub fn is_alive(&self) -> bool {
        self.status == 1
    }

    pub fn is_server(&self) -> bool {
        self.tags.get("role").map(String::as_str) == Some("consul")
    }
}

/// One KV entry with the indexes needed for check-and-set and blocking
/// queries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KvPair {
    pub key: String,
    pub value: Vec<u8>,
    pub modify_index: u64,
    /// The session holding the key's lock, if any.
    pub session: Option<String>,
}

#[derive(Deserialize)]
struct RawKv {
    #[serde(rename = "Key")]
    key: String,
    #[serde(rename = "Value")]
    value: Option<String>,
    #[serde(rename = "ModifyIndex")]
    modify_index: u64,
    #[serde(rename = "Session")]
    session: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionBehavior {
    /// The session's locks are released when it is invalidated.
    Release,
    /// The session's locked keys are deleted when it is invalidated.
    Delete,
}

impl Consul {
    pub fn new(base: &str, token: Option<Token>) -> Result<Consul, HashiError> {
        Ok(Consul {
            http: Http::new("Consul", base, "X-Consul-Token")?.with_token(token),
        })
    }

    pub fn address(&self) -> &str {
        self.http.base()
    }

    /// The Raft leader's address, `None` while there is none. Needs no token.
    pub async fn leader(&self) -> Result<Option<String>, HashiError> {
        let leader: String = self.http.get_json("/v1/status/leader").await?;
        Ok((!leader.is_empty()).then_some(leader))
    }

    /// Raft voters, as `ip:port`. Needs no token.
    pub async fn raft_peers(&self) -> Result<Vec<String>, HashiError> {
        self.http.get_json("/v1/status/peers").await
    }

    /// LAN members as this agent sees them (`agent:read`, `node:read`).
    pub async fn members(&self) -> Result<Vec<ConsulMember>, HashiError> {
        self.http.get_json("/v1/agent/members").await
    }

    pub async fn agent_self(&self) -> Result<serde_json::Value, HashiError> {
        self.http.get_json("/v1/agent/self").await
    }

    /// Asks the agent to join the gossip pool through `address` (`agent:write`).
    pub async fn join(&self, address: &str) -> Result<(), HashiError> {
        self.http
            .send(
                Method::PUT,
                &format!("/v1/agent/join/{address}"),
                None,
                DEFAULT_TIMEOUT,
            )
            .await?;
        Ok(())
    }

    /// Reads a key; `None` if absent. With `wait = Some((index, time))` this
    /// is a blocking query: it returns when the key's index passes `index`
    /// or `time` elapses. Returns the `X-Consul-Index` as well.
    pub async fn kv_get(
        &self,
        key: &str,
        wait: Option<(u64, Duration)>,
    ) -> Result<(Option<KvPair>, u64), HashiError> {
        let (path, timeout) = match wait {
            Some((index, time)) => (
                format!("/v1/kv/{key}?index={index}&wait={}s", time.as_secs().max(1)),
                // Consul adds up to wait/16 of jitter to a blocking query.
                time + time / 16 + Duration::from_secs(5),
            ),
            None => (format!("/v1/kv/{key}"), DEFAULT_TIMEOUT),
        };
        match self.http.send(Method::GET, &path, None, timeout).await {
            Ok((_, headers, body)) => {
                let index = consul_index(&headers);
                let raw: Vec<RawKv> = self.http.decode(&path, &body)?;
                let pair = raw
                    .into_iter()
                    .next()
                    .map(|r| -> Result<KvPair, HashiError> {
                        let value = match r.value {
                            Some(v) => base64::engine::general_purpose::STANDARD
                                .decode(v)
                                .map_err(|e| HashiError::Decode {
                                    service: "Consul",
                                    url: path.clone(),
                                    detail: e.to_string(),
                                })?,
                            None => Vec::new(),
                        };
                        Ok(KvPair {
                            key: r.key,
                            value,
                            modify_index: r.modify_index,
                            session: r.session,
                        })
                    });
                Ok((pair.transpose()?, index))
            }
            Err(HashiError::Status { status: 404, .. }) => Ok((None, 0)),
            Err(e) => Err(e),
        }
    }

    async fn kv_put_query(&self, key: &str, query: &str, value: &[u8]) -> Result<bool, HashiError> {
        let path = format!("/v1/kv/{key}{query}");
        let (_, _, body) = self
            .http
            .send(Method::PUT, &path, Some(value.to_vec()), DEFAULT_TIMEOUT)
            .await?;
        self.http.decode(&path, &body)
    }

    /// Writes a key unconditionally.
    pub async fn kv_put(&self, key: &str, value: &[u8]) -> Result<(), HashiError> {
        self.kv_put_query(key, "", value).await.map(|_| ())
    }

    /// Writes a key only if its `ModifyIndex` is still `index` (0: only if
    /// absent). Returns whether it was written.
    pub async fn kv_cas(&self, key: &str, value: &[u8], index: u64) -> Result<bool, HashiError> {
        self.kv_put_query(key, &format!("?cas={index}"), value)
            .await
    }

    /// Takes the key's lock for `session`. Returns whether it was taken.
    pub async fn kv_acquire(
        &self,
        key: &str,
        session: &str,
        value: &[u8],
    ) -> Result<bool, HashiError> {
        self.kv_put_query(key, &format!("?acquire={session}"), value)
            .await
    }

    /// Releases the key's lock held by `session`.
    pub async fn kv_release(&self, key: &str, session: &str) -> Result<bool, HashiError> {
        self.kv_put_query(key, &format!("?release={session}"), b"")
            .await
    }

    pub async fn kv_delete(&self, key: &str) -> Result<(), HashiError> {
        self.http
            .send(
                Method::DELETE,
                &format!("/v1/kv/{key}"),
                None,
                DEFAULT_TIMEOUT,
            )
            .await?;
        Ok(())
    }

    /// Creates a session bound to this agent's node.
    pub async fn session_create(
        &self,
        name: &str,
        ttl: Duration,
        lock_delay: Duration,
        behavior: SessionBehavior,
    ) -> Result<String, HashiError> {
        #[derive(Deserialize)]
        struct Created {
            #[serde(rename = "ID")]
            id: String,
        }
        let body = serde_json::json!({
            "Name": name,
            "TTL": format!("{}s", ttl.as_secs()),
            "LockDelay": format!("{}s", lock_delay.as_secs()),
            "Behavior": match behavior {
                SessionBehavior::Release => "release",
                SessionBehavior::Delete => "delete",
            },
        });
        let path = "/v1/session/create";
        let (_, _, resp) = self
            .http
            .send(
                Method::PUT,
                path,
                Some(body.to_string().into_bytes()),
                DEFAULT_TIMEOUT,
            )
            .await?;
        let created: Created = self.http.decode(path, &resp)?;
        Ok(created.id)
    }

    /// Renews a session's TTL. `Ok(false)` when the session no longer
    /// exists (expired or destroyed): its locks are gone.
    pub async fn session_renew(&self, id: &str) -> Result<bool, HashiError> {
        match self
            .http
            .send(
                Method::PUT,
                &format!("/v1/session/renew/{id}"),
                None,
                DEFAULT_TIMEOUT,
            )
            .await
        {
            Ok(_) => Ok(true),
            Err(HashiError::Status { status: 404, .. }) => Ok(false),
            Err(e) => Err(e),
        }
    }

    pub async fn session_destroy(&self, id: &str) -> Result<(), HashiError> {
        self.http
            .send(
                Method::PUT,
                &format!("/v1/session/destroy/{id}"),
                None,
                DEFAULT_TIMEOUT,
            )
            .await?;
        Ok(())
    }
}

fn consul_index(headers: &reqwest::header::HeaderMap) -> u64 {
    headers
        .get("X-Consul-Index")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}
