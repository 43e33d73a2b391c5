use std::time::Duration;

use base64::Engine;
use reqwest::Method;
use serde::Deserialize;

use crate::autopilot::AutopilotHealth;
use crate::http::{ClientTls, DEFAULT_TIMEOUT, HashiError, Http, Token};

pub(crate) mod acl;
pub(crate) mod auth;

/// A Consul agent's HTTP API.
#[derive(Debug, Clone)]
pub struct Consul {
    pub(crate) http: Http,
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

/// A health check as the catalog has it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct HealthCheck {
    #[serde(rename = "CheckID")]
    pub check_id: String,
    #[serde(rename = "Name", default)]
    pub name: String,
    /// "passing", "warning", "critical".
    #[serde(rename = "Status")]
    pub status: String,
    #[serde(rename = "ServiceName", default)]
    pub service_name: String,
    #[serde(rename = "Output", default)]
    pub output: String,
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
            http: Http::new("Consul", base, "X-Consul-Token", None)?.with_token(token),
        })
    }

    /// A client that speaks TLS: trusts `tls`'s CA only and presents its
    /// certificate, if any.
    pub fn with_tls(
        base: &str,
        token: Option<Token>,
        tls: Option<&ClientTls>,
    ) -> Result<Consul, HashiError> {
        Ok(Consul {
            http: Http::new("Consul", base, "X-Consul-Token", tls)?.with_token(token),
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

    /// The Consul servers among [`Consul::members`], filtered by the agent
    /// (`filter=Tags["role"] == "consul"`): a handful of entries, where
    /// the whole pool is megabytes of JSON in a fleet of thousands.
    pub async fn server_members(&self) -> Result<Vec<ConsulMember>, HashiError> {
        self.http
            .get_json("/v1/agent/members?filter=Tags%5B%22role%22%5D%20%3D%3D%20%22consul%22")
            .await
    }

    /// Leaves the cluster gracefully and shuts the agent down
    /// (`agent:write`): a server leaves Raft first (the leader steps down
    /// when it is the one leaving), and the node ends up `left`, not
    /// `failed`.
    pub async fn leave(&self) -> Result<(), HashiError> {
        self.http
            .send(
                Method::PUT,
                "/v1/agent/leave",
                None,
                Duration::from_secs(60),
            )
            .await?;
        Ok(())
    }

    pub async fn agent_self(&self) -> Result<serde_json::Value, HashiError> {
        self.http.get_json("/v1/agent/self").await
    }

    /// The LAN gossip pool's membership clock as this agent knows it
    /// (Serf's `member_time`, `agent:read`): it moves at every join, leave
    /// or failure the agent learns of, so one small read tells whether
    /// the member list changed. `None` when the agent does not report it.
    pub async fn lan_member_time(&self) -> Result<Option<u64>, HashiError> {
        let me = self.agent_self().await?;
        Ok(me
            .pointer("/Stats/serf_lan/member_time")
            .and_then(|v| v.as_str())
            .and_then(|v| v.parse().ok()))
    }

    /// Autopilot's configuration, as stored in Raft (`operator:read`).
    pub async fn autopilot_config(&self) -> Result<serde_json::Value, HashiError> {
        self.http
            .get_json("/v1/operator/autopilot/configuration")
            .await
    }

    /// Replaces autopilot's configuration (`operator:write`).
    pub async fn set_autopilot_config(&self, config: &serde_json::Value) -> Result<(), HashiError> {
        self.http
            .send(
                Method::PUT,
                "/v1/operator/autopilot/configuration",
                Some(config.to_string().into_bytes()),
                DEFAULT_TIMEOUT,
            )
            .await?;
        Ok(())
    }

    /// Autopilot's view of the servers (`operator:read`), healthy or not.
    pub async fn autopilot_health(&self) -> Result<AutopilotHealth, HashiError> {
        crate::autopilot::fetch(&self.http).await
    }

    /// The health checks registered on `node` (`node:read`, `service:read`).
    pub async fn node_checks(&self, node: &str) -> Result<Vec<HealthCheck>, HashiError> {
        self.http.get_json(&format!("/v1/health/node/{node}")).await
    }

    /// The addresses of the passing instances of `service` tagged `tag`
    /// (`service:read`, `node:read`). `stale`: any server answers, so this
    /// works while the cluster has no leader, as long as one server lives.
    pub async fn passing_addresses(
        &self,
        service: &str,
        tag: &str,
    ) -> Result<Vec<String>, HashiError> {
        #[derive(Deserialize)]
        struct Entry {
            #[serde(rename = "Node")]
            node: Address,
            #[serde(rename = "Service")]
            service: Address,
        }
        #[derive(Deserialize)]
        struct Address {
            #[serde(rename = "Address", default)]
            address: String,
        }
        let entries: Vec<Entry> = self
            .http
            .get_json(&format!(
                "/v1/health/service/{service}?passing&stale&tag={tag}"
            ))
            .await?;
        Ok(entries
            .into_iter()
            .map(|e| match e.service.address {
                a if a.is_empty() => e.node.address,
                a => a,
            })
            .collect())
    }

    /// The names of the services registered on `node`, from the catalog
    /// (`node:read`, `service:read`); empty for a node Consul does not know.
    pub async fn node_service_names(&self, node: &str) -> Result<Vec<String>, HashiError> {
        let answer: serde_json::Value = self
            .http
            .get_json(&format!("/v1/catalog/node-services/{node}"))
            .await?;
        let services = answer["Services"].as_array().into_iter().flatten();
        Ok(services
            .filter_map(|s| s["Service"].as_str().map(str::to_owned))
            .collect())
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

    /// Creates a session on this agent's node. With `node_health` it also
    /// ends when the node's serf health fails; without, only its TTL or a
    /// destroy ends it, so it outlives a restart of this very agent.
    pub async fn session_create(
        &self,
        name: &str,
        ttl: Duration,
        lock_delay: Duration,
        behavior: SessionBehavior,
        node_health: bool,
    ) -> Result<String, HashiError> {
        #[derive(Deserialize)]
        struct Created {
            #[serde(rename = "ID")]
            id: String,
        }
        let mut body = serde_json::json!({
            "Name": name,
            "TTL": format!("{}s", ttl.as_secs()),
            "LockDelay": format!("{}s", lock_delay.as_secs()),
            "Behavior": match behavior {
                SessionBehavior::Release => "release",
                SessionBehavior::Delete => "delete",
            },
        });
        if !node_health {
            body["NodeChecks"] = serde_json::json!([]);
        }
        let created: Created = self.http.put_json("/v1/session/create", &body).await?;
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

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(index: Option<&str>) -> reqwest::header::HeaderMap {
        let mut h = reqwest::header::HeaderMap::new();
        if let Some(i) = index {
            h.insert("X-Consul-Index", i.parse().unwrap());
        }
        h
    }

    #[test]
    fn the_consul_index_header_is_read_and_anything_else_is_zero() {
        assert_eq!(consul_index(&headers(Some("1742"))), 1742);
        assert_eq!(
            consul_index(&headers(Some("18446744073709551615"))),
            u64::MAX
        );
        // Zero starts a blocking query over: the safe reading of nonsense.
        for bad in [None, Some(""), Some("-3"), Some("12a"), Some("1e3")] {
            assert_eq!(consul_index(&headers(bad)), 0, "{bad:?}");
        }
    }

    #[test]
    fn members_are_read_as_consul_lists_them() {
        let members: Vec<ConsulMember> = serde_json::from_str(
            r#"[{"Name":"s1","Addr":"10.0.0.1","Port":8301,"Status":1,"Tags":{"role":"consul","dc":"dc1"}},
                {"Name":"c1","Addr":"10.0.0.2","Port":8301,"Status":4,"Tags":{"role":"node"}},
                {"Name":"c2","Addr":"10.0.0.3","Port":8301,"Status":1}]"#,
        )
        .unwrap();
        let seen: Vec<(&str, bool, bool)> = members
            .iter()
            .map(|m| (m.name.as_str(), m.is_alive(), m.is_server()))
            .collect();
        assert_eq!(
            seen,
            [
                ("s1", true, true),
                ("c1", false, false),
                ("c2", true, false)
            ]
        );
    }
}
