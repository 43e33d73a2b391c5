//! Teams (`[teams]` in agent.toml, docs/teams.md): each team's environment
//! gets a Nomad namespace, a policy for its jobs there only, and a token in
//! the secret store; a team added later gets them without a re-bootstrap.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::common::node::boot_as;
use crate::common::*;
use kraken_secrets::{SecretStore, names};

const NODE: &str = "\n[bootstrap]\ntoken_check_secs = 3\n\n[docker]\nenabled = false\n";

fn batch_job(name: &str, namespace: &str) -> Value {
    json!({ "Job": {
        "ID": name, "Name": name, "Namespace": namespace, "Type": "batch",
        "Datacenters": ["*"],
        "TaskGroups": [{
            "Name": "g", "Count": 1,
            "Tasks": [{
                "Name": "t", "Driver": "raw_exec", "User": "nobody",
                "Config": { "command": "/bin/true" },
                "Resources": { "CPU": 20, "MemoryMB": 16 },
            }],
        }],
    }})
}

async fn send(
    http: &reqwest::Client,
    method: reqwest::Method,
    url: &str,
    token: &str,
    body: Option<&Value>,
) -> (u16, String) {
    let mut req = http.request(method, url).header("X-Nomad-Token", token);
    if let Some(b) = body {
        req = req.json(b);
    }
    let r = req.send().await.unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_teams_token_submits_to_its_namespace_only_and_a_new_team_needs_no_rebootstrap() {
    let mut node = boot_as(
        "consul-server,nomad-server,nomad-client",
        Duration::ZERO,
        &format!("{NODE}\n[teams.web]\nenvironments = [\"prod\"]\n"),
    )
    .await;
    let store = node.store().await;
    let http = node_http(node.dir.path(), "nomad");
    let nomad = format!("https://{}:4646", node.ip);
    let token = store
        .get("teams/web/prod/nomad-token")
        .await
        .unwrap()
        .unwrap_or_else(|| panic!("no stored token for team web, prod\n{}", node.log()));
    let token = token.expose();

    // Its namespace: submitted and read back.
    let (status, body) = send(
        &http,
        reqwest::Method::PUT,
        &format!("{nomad}/v1/jobs?namespace=web-prod"),
        token,
        Some(&batch_job("team-job", "web-prod")),
    )
    .await;
    assert_eq!(status, 200, "submit to web-prod: {body}");
    let (status, body) = send(
        &http,
        reqwest::Method::GET,
        &format!("{nomad}/v1/job/team-job?namespace=web-prod"),
        token,
        None,
    )
    .await;
    assert_eq!(status, 200, "read in web-prod: {body}");
    let job: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(job["Namespace"], "web-prod");

    // Another namespace: refused, submitting and reading.
    for (method, path, body) in [
        (
            reqwest::Method::PUT,
            "/v1/jobs?namespace=default",
            Some(batch_job("team-job", "default")),
        ),
        (
            reqwest::Method::GET,
            "/v1/job/team-job?namespace=default",
            None,
        ),
    ] {
        let (status, text) = send(
            &http,
            method.clone(),
            &format!("{nomad}{path}"),
            token,
            body.as_ref(),
        )
        .await;
        eprintln!("team web-prod's token, {method} {path}: {status} {text}");
        assert_eq!(status, 403, "{method} {path}: {text}");
    }
    // Nor does it see Nomad's tokens or nodes (a token may list its own
    // policies, nothing more of the ACLs).
    for path in ["/v1/acl/tokens", "/v1/nodes"] {
        let (status, text) = send(
            &http,
            reqwest::Method::GET,
            &format!("{nomad}{path}"),
            token,
            None,
        )
        .await;
        assert_eq!(status, 403, "GET {path}: {text}");
    }

    // A team added to agent.toml on a running cluster: the agent restarts
    // with it (its bootstrap is done and is not run again) and the Nomad
    // leader's upkeep makes the namespace, policy and token; the
    // namespace's Consul role follows in the same round.
    let mut toml = std::fs::read_to_string(&node.config).unwrap();
    toml.push_str("\n[teams.api]\nenvironments = [\"staging\"]\n");
    std::fs::write(&node.config, toml).unwrap();
    let before = node.log().matches("bootstrap step").count();
    node.restart_agent(Duration::from_secs(120)).await;
    let started = Instant::now();
    let added = loop {
        if let Some(t) = store.get("teams/api/staging/nomad-token").await.unwrap() {
            break t;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "no token for the new team\n{}",
            node.log()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    assert_eq!(
        node.log().matches("bootstrap step").count(),
        before,
        "no bootstrap step ran again"
    );
    let (status, body) = send(
        &http,
        reqwest::Method::PUT,
        &format!("{nomad}/v1/jobs?namespace=api-staging"),
        added.expose(),
        Some(&batch_job("api-job", "api-staging")),
    )
    .await;
    assert_eq!(status, 200, "the new team submits to api-staging: {body}");
    let (status, _) = send(
        &http,
        reqwest::Method::PUT,
        &format!("{nomad}/v1/jobs?namespace=web-prod"),
        added.expose(),
        Some(&batch_job("api-job", "web-prod")),
    )
    .await;
    assert_eq!(status, 403, "and not to web-prod");

    // The first team's token is the one it had.
    let again = store
        .get("teams/web/prod/nomad-token")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(again.expose(), token);

    let consul_token = store
        .get(names::CONSUL_INITIAL_MANAGEMENT)
        .await
        .unwrap()
        .unwrap();
    let consul = node_http(node.dir.path(), "consul");
    let started = Instant::now();
    loop {
        let r = consul
            .get(format!(
                "https://{}:8501/v1/acl/role/name/nomad-tasks-api-staging",
                node.ip
            ))
            .header("X-Consul-Token", consul_token.expose())
            .send()
            .await
            .unwrap();
        if r.status().is_success() {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "no Consul role for namespace api-staging\n{}",
            node.log()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}
