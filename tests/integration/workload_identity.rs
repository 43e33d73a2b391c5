//! Nomad workload identity to Consul, as the bootstrap sets it up
//! (docs/workload-identity.md), on one node booted by the agent (Consul and
//! Nomad server, Nomad client, TLS everywhere): a job with no Consul token
//! registers its service and reads Consul KV through its workloads' own
//! tokens, and keeps doing so across a Nomad root key rotation.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::common::node::{Node, boot_as};
use crate::common::*;
use kraken_secrets::{SecretStore, names};

/// A service job: a task that serves its own directory, a template that
/// reads `key` from Consul KV into it, and an HTTP check on that file (it
/// passes only once the template rendered). No Consul token anywhere:
/// the task's `consul` block asks for a task identity.
fn kv_job(name: &str, key: &str) -> Value {
    json!({ "Job": {
        "ID": name, "Name": name, "Type": "service", "Datacenters": ["*"],
        "TaskGroups": [{
            "Name": "g", "Count": 1,
            "Networks": [{ "DynamicPorts": [{ "Label": "http" }] }],
            "RestartPolicy": { "Attempts": 10, "Interval": 600_000_000_000u64,
                               "Delay": 1_000_000_000u64, "Mode": "fail" },
            "Services": [{
                "Name": name, "PortLabel": "http", "Provider": "consul",
                "Checks": [{
                    "Name": "kv", "Type": "http", "Path": "/local/kv.txt",
                    "Interval": 1_000_000_000u64, "Timeout": 1_000_000_000u64,
                }],
            }],
            "Tasks": [{
                "Name": "t", "Driver": "raw_exec", "User": "nobody",
                "Consul": {},
                "Config": {
                    "command": "/usr/bin/env",
                    "args": ["python3", "-m", "http.server", "${NOMAD_PORT_http}",
                             "--bind", "${NOMAD_IP_http}"],
                },
                "Templates": [{
                    "EmbeddedTmpl": format!("{{{{ key \"{key}\" }}}}"),
                    "DestPath": "local/kv.txt",
                    "ChangeMode": "noop",
                }],
                "Resources": { "CPU": 50, "MemoryMB": 64 },
            }],
        }],
    }})
}

struct Apis {
    consul: reqwest::Client,
    consul_url: String,
    consul_token: String,
    nomad: reqwest::Client,
    nomad_url: String,
    nomad_token: String,
}

impl Apis {
    async fn of(node: &Node) -> Apis {
        let store = node.store().await;
        let secret = |name| {
            let store = &store;
            async move { store.get(name).await.unwrap().unwrap().expose().to_owned() }
        };
        Apis {
            consul: node_http(node.dir.path(), "consul"),
            consul_url: format!("https://{}:8501", node.ip),
            consul_token: secret(names::CONSUL_INITIAL_MANAGEMENT).await,
            nomad: node_http(node.dir.path(), "nomad"),
            nomad_url: format!("https://{}:4646", node.ip),
            nomad_token: secret(names::NOMAD_MANAGEMENT).await,
        }
    }

    async fn consul_get(&self, path: &str, token: &str) -> (u16, Value) {
        let r = self
            .consul
            .get(format!("{}{path}", self.consul_url))
            .header("X-Consul-Token", token)
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    async fn consul(&self, path: &str) -> Value {
        let (status, v) = self.consul_get(path, &self.consul_token).await;
        assert_eq!(status, 200, "GET {path}: {v}");
        v
    }

    async fn nomad_send(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        let mut req = self
            .nomad
            .request(method.clone(), format!("{}{path}", self.nomad_url))
            .header("X-Nomad-Token", &self.nomad_token);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let r = req.send().await.unwrap();
        let status = r.status();
        let text = r.text().await.unwrap();
        assert!(status.is_success(), "{method} {path}: {status} {text}");
        serde_json::from_str(&text).unwrap_or(Value::Null)
    }

    /// The auth method's keys, and Nomad's key ids now.
    async fn keys(&self) -> (usize, usize) {
        let method = self.consul("/v1/acl/auth-method/nomad-workloads").await;
        let held = method["Config"]["JWTValidationPubKeys"]
            .as_array()
            .map_or(0, Vec::len);
        let jwks = self
            .nomad_send(reqwest::Method::GET, "/.well-known/jwks.json", None)
            .await;
        (held, jwks["keys"].as_array().map_or(0, Vec::len))
    }

    /// Until `service` has a passing instance in Consul; returns it.
    async fn passing(&self, service: &str, node: &Node, within: Duration) -> Value {
        let started = Instant::now();
        loop {
            let entries = self
                .consul(&format!("/v1/health/service/{service}?passing"))
                .await;
            if let Some(e) = entries.as_array().and_then(|a| a.first()) {
                return e.clone();
            }
            if started.elapsed() > within {
                let allocs = self
                    .nomad_send(
                        reqwest::Method::GET,
                        &format!("/v1/job/{service}/allocations"),
                        None,
                    )
                    .await;
                let all = self.consul(&format!("/v1/health/service/{service}")).await;
                panic!(
                    "{service} never passed in Consul after {within:?}\nConsul: {all:#}\n\
                     allocations: {allocs:#}\nagent log: {}",
                    node.log()
                );
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    /// The Consul tokens the auth method issued: (service identities, roles).
    async fn workload_tokens(&self) -> (Vec<String>, Vec<String>) {
        let tokens = self
            .consul("/v1/acl/tokens?authmethod=nomad-workloads")
            .await;
        let (mut services, mut roles) = (Vec::new(), Vec::new());
        for t in tokens.as_array().unwrap() {
            for s in t["ServiceIdentities"].as_array().into_iter().flatten() {
                services.push(s["ServiceName"].as_str().unwrap().to_owned());
            }
            for r in t["Roles"].as_array().into_iter().flatten() {
                roles.push(r["Name"].as_str().unwrap().to_owned());
            }
        }
        (services, roles)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_reaches_consul_through_workload_identity_across_a_root_key_rotation() {
    // Token checks every 3 s: the Nomad leader's upkeep follows Nomad's
    // keys at that pace.
    let node = boot_as(
        "consul-server,nomad-server,nomad-client",
        Duration::ZERO,
        "\n[bootstrap]\ntoken_check_secs = 3\n\n[docker]\nenabled = false\n",
    )
    .await;
    let started = Instant::now();
    let apis = Apis::of(&node).await;

    // What the bootstrap made: the auth method with Nomad's keys, the two
    // binding rules, the default namespace's role.
    let (held, published) = apis.keys().await;
    assert_eq!((held, published), (1, 1), "one Nomad key, held by Consul");
    let rules = apis
        .consul("/v1/acl/binding-rules?authmethod=nomad-workloads")
        .await;
    let mut bound: Vec<(String, String)> = rules
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["BindType"].as_str().unwrap().to_owned(),
                r["BindName"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    bound.sort();
    assert_eq!(
        bound,
        [
            (
                "role".to_owned(),
                "nomad-tasks-${value.nomad_namespace}".to_owned()
            ),
            ("service".to_owned(), "${value.nomad_service}".to_owned()),
        ]
    );
    let role = apis.consul("/v1/acl/role/name/nomad-tasks-default").await;
    assert_eq!(role["Policies"][0]["Name"], "nomad-tasks-default", "{role}");

    // The value the template reads, under the namespace's prefix; the
    // Nomad client's own Consul token may not read it.
    let key = "nomad/default/wi/message";
    let value = "read through workload identity";
    let put = apis
        .consul
        .put(format!("{}/v1/kv/{key}", apis.consul_url))
        .header("X-Consul-Token", &apis.consul_token)
        .body(value)
        .send()
        .await
        .unwrap();
    assert!(put.status().is_success());
    let store = node.store().await;
    let client_token = store
        .get(names::CONSUL_NOMAD_CLIENT)
        .await
        .unwrap()
        .unwrap();
    let (status, _) = apis
        .consul_get(&format!("/v1/kv/{key}"), client_token.expose())
        .await;
    assert_eq!(status, 403, "the Nomad client's token reads no KV");

    // The job: no Consul token in it.
    let job = kv_job("wi-one", key);
    assert!(!job.to_string().contains("ConsulToken"));
    apis.nomad_send(reqwest::Method::PUT, "/v1/jobs", Some(job))
        .await;
    let entry = apis
        .passing("wi-one", &node, Duration::from_secs(120))
        .await;
    eprintln!("wi-one passing {:?} after boot", started.elapsed());
    let check = entry["Checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["ServiceName"] == "wi-one")
        .unwrap();
    assert_eq!(check["Status"], "passing", "{entry}");
    // The file the check reads is the KV value, served by the task.
    let addr = format!(
        "http://{}:{}/local/kv.txt",
        entry["Service"]["Address"].as_str().unwrap(),
        entry["Service"]["Port"]
    );
    let served = kraken_testkit::get_text(&addr).await;
    assert_eq!(served, value);
    let (services, roles) = apis.workload_tokens().await;
    assert!(services.contains(&"wi-one".to_owned()), "{services:?}");
    assert!(
        roles.contains(&"nomad-tasks-default".to_owned()),
        "{roles:?}"
    );

    // A root key rotation: the new key signs from now on, and the upkeep
    // gives it to Consul within a token check or two.
    apis.nomad_send(reqwest::Method::PUT, "/v1/operator/keyring/rotate", None)
        .await;
    let rotated = Instant::now();
    loop {
        let (held, published) = apis.keys().await;
        if published == 2 && held == 2 {
            break;
        }
        assert!(
            rotated.elapsed() < Duration::from_secs(30),
            "Consul holds {held} key(s), Nomad publishes {published}\n{}",
            node.log()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    eprintln!(
        "Consul holds the rotated key {:?} after the rotation",
        rotated.elapsed()
    );

    // A new allocation, its identities signed with the new key, gets its
    // tokens and its service passes.
    apis.nomad_send(
        reqwest::Method::PUT,
        "/v1/jobs",
        Some(kv_job("wi-two", key)),
    )
    .await;
    apis.passing("wi-two", &node, Duration::from_secs(120))
        .await;
    let (services, roles) = apis.workload_tokens().await;
    assert!(services.contains(&"wi-two".to_owned()), "{services:?}");
    assert_eq!(
        roles.iter().filter(|r| *r == "nomad-tasks-default").count(),
        2,
        "a task token for each allocation: {roles:?}"
    );
    eprintln!("wi-two passing {:?} after the rotation", rotated.elapsed());
}
