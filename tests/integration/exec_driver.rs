//! Nomad's `exec` driver on a client configured as the agent renders it
//! (issue #17): a task may not run as root, and a task as `nobody` cannot
//! read the node's tokens, keys and configs.
//!
//! Real Nomad on this host, not the VM cluster: its nspawn machines have no
//! cgroup controllers, and `exec` needs them. The node's files are laid out
//! as in production (`/etc/consul.d`, `/etc/nomad.d`, the directory secret
//! store) with production's owners and modes, and reach the task's chroot
//! the way production's do: `/etc` is in Nomad's default `chroot_env`.

use std::os::unix::fs::{PermissionsExt, chown};
use std::path::Path;
use std::time::{Duration, Instant};

use kraken_testkit::{NomadClient, NomadServer, TestDir, http_client, wait_for};
use serde_json::{Value, json};

/// The `plugin "exec"` block of the template the agent renders, verbatim:
/// the test checks the shipped config, not a copy that could drift.
fn rendered_exec_plugin() -> &'static str {
    let template = include_str!("../../crates/render/templates/nomad.hcl.hbs");
    let start = template
        .find("plugin \"exec\" {")
        .expect("the template has a plugin \"exec\" block");
    let len = template[start..]
        .find("\n}\n")
        .expect("the exec block ends")
        + 3;
    &template[start..start + len]
}

/// A uid and gid of no one here: production's `consul` user.
const CONSUL_ID: u32 = 4646;

/// One node file: where the task sees it, where it is here, owner, mode and
/// the secret it holds.
struct NodeFile {
    in_task: &'static str,
    local: &'static str,
    owner: u32,
    mode: u32,
    secret: &'static str,
}

/// Owners and modes as the agent writes them: Consul's files are
/// `consul:consul` 0640, Nomad's `root:root` 0600 (`[nomad] group`
/// defaults to root, and `kraken_render::private_mode` keeps group root
/// out), the secret store's 0600 root.
const NODE_FILES: &[NodeFile] = &[
    NodeFile {
        in_task: "/etc/consul.d/consul.hcl",
        local: "consul.d/consul.hcl",
        owner: CONSUL_ID,
        mode: 0o640,
        secret: "consul-agent-token-6d1f0c",
    },
    NodeFile {
        in_task: "/etc/consul.d/tls/consul-key.pem",
        local: "consul.d/tls/consul-key.pem",
        owner: CONSUL_ID,
        mode: 0o640,
        secret: "consul-private-key-88a2e7",
    },
    NodeFile {
        in_task: "/etc/nomad.d/nomad.hcl",
        local: "nomad.d/nomad.hcl",
        owner: 0,
        mode: 0o600,
        secret: "nomad-consul-token-3b9e41",
    },
    NodeFile {
        in_task: "/etc/nomad.d/tls/nomad-key.pem",
        local: "nomad.d/tls/nomad-key.pem",
        owner: 0,
        mode: 0o600,
        secret: "nomad-private-key-c07d52",
    },
    NodeFile {
        in_task: "/var/lib/kraken/secrets/consul-gossip-key",
        local: "secrets/consul-gossip-key",
        owner: 0,
        mode: 0o600,
        secret: "gossip-key-51fa90",
    },
];

fn write_node_files(root: &Path) {
    for f in NODE_FILES {
        let path = root.join(f.local);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, format!("token = \"{}\"\n", f.secret)).unwrap();
        chown(&path, Some(f.owner), Some(f.owner)).unwrap();
        std::fs::set_permissions(&path, PermissionsExt::from_mode(f.mode)).unwrap();
    }
    std::fs::set_permissions(root.join("secrets"), PermissionsExt::from_mode(0o700)).unwrap();
}

/// Nomad's default `chroot_env` (which holds `/etc`), plus the node's
/// directories where production has them: setting `chroot_env` replaces
/// the default, so it is spelled out.
fn chroot_env(root: &Path) -> String {
    let mut lines: Vec<String> = ["/bin", "/etc", "/lib", "/lib64", "/sbin", "/usr"]
        .iter()
        .filter(|d| Path::new(d).exists())
        .map(|d| format!("    \"{d}\" = \"{d}\""))
        .collect();
    for (local, in_task) in [
        ("consul.d", "/etc/consul.d"),
        ("nomad.d", "/etc/nomad.d"),
        ("secrets", "/var/lib/kraken/secrets"),
    ] {
        lines.push(format!(
            "    \"{}\" = \"{in_task}\"",
            root.join(local).display()
        ));
    }
    format!("  chroot_env {{\n{}\n  }}", lines.join("\n"))
}

fn exec_job(id: &str, user: Option<&str>, script: &str) -> Value {
    let mut task = json!({
        "Name": "t", "Driver": "exec",
        "Config": { "command": "/bin/sh", "args": ["-c", script] },
    });
    if let Some(user) = user {
        task["User"] = json!(user);
    }
    json!({ "Job": {
        "ID": id, "Name": id, "Type": "batch", "Datacenters": ["*"],
        "TaskGroups": [{
            "Name": "g", "Count": 1,
            // One try: a refused task must stay refused, not be retried.
            "RestartPolicy": { "Attempts": 0, "Mode": "fail" },
            "ReschedulePolicy": { "Attempts": 0, "Unlimited": false },
            "Tasks": [task],
        }],
    }})
}

/// Submits `job` and waits until its allocation is finished; returns it.
async fn run_to_end(nomad: &str, job: Value) -> Value {
    let http = http_client();
    let id = job["Job"]["ID"].as_str().unwrap().to_string();
    http.post(format!("{nomad}/v1/jobs"))
        .json(&job)
        .send()
        .await
        .unwrap()
        .error_for_status()
        .unwrap();
    // Generous: the first exec task links /usr and /etc into its chroot.
    wait_for(
        &format!("job {id}'s allocation to finish"),
        Duration::from_secs(180),
        || {
            let (http, url) = (http.clone(), format!("{nomad}/v1/job/{id}/allocations"));
            async move {
                let allocs: Value = http.get(url).send().await.ok()?.json().await.ok()?;
                allocs.as_array()?.first().cloned().filter(|a| {
                    ["complete", "failed"].contains(&a["ClientStatus"].as_str().unwrap_or(""))
                })
            }
        },
    )
    .await
    .unwrap()
}

fn events(alloc: &Value) -> Vec<(String, String)> {
    alloc["TaskStates"]["t"]["Events"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|e| {
            let field = |k: &str| e[k].as_str().unwrap_or_default().to_string();
            (field("Type"), field("DisplayMessage"))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_tasks_never_run_as_root_nor_read_the_nodes_credentials() {
    let started = Instant::now();
    assert_eq!(
        kraken_render::private_mode("root"),
        0o600,
        "NODE_FILES give Nomad's files the agent's mode"
    );
    let node_dir = TestDir::new("exec-node");
    write_node_files(node_dir.path());
    let server = NomadServer::start().await;
    let client = NomadClient::start_with_client_config(
        &[server.rpc_addr()],
        &chroot_env(node_dir.path()),
        rendered_exec_plugin(),
    )
    .await;
    let nomad = client.http_url();
    let node: Value = http_client()
        .get(format!("{nomad}/v1/node/{}", client.node_id()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let exec = &node["Drivers"]["exec"];
    assert_eq!(exec["Healthy"], true, "exec driver: {exec}");

    // (a) A task that asks for root never starts.
    let alloc = run_to_end(&nomad, exec_job("as-root", Some("root"), "id -u")).await;
    let seen = events(&alloc);
    assert!(
        !seen.iter().any(|(t, _)| t == "Started"),
        "a root task started: {seen:?}"
    );
    assert!(
        seen.iter()
            .any(|(_, m)| m.contains("running as user \"root\" is disallowed")),
        "no refusal event: {seen:?}"
    );
    eprintln!("root task refused: {seen:?}");

    // (b) A task with no user runs as nobody and reads none of the node's
    // files, nor becomes root to read them.
    let mut script = String::from(
        "echo \"uid=$(id -u) gid=$(id -g)\"\n\
         grep CapEff /proc/self/status\n\
         python3 -c 'import os; os.setuid(0); print(\"became uid\", os.getuid())' 2>&1\n",
    );
    for f in NODE_FILES {
        script.push_str(&format!("echo '== {0}'; cat {0} 2>&1\n", f.in_task));
    }
    let alloc = run_to_end(&nomad, exec_job("as-nobody", None, &script)).await;
    let seen = events(&alloc);
    let stdout = http_client()
        .get(format!(
            "{nomad}/v1/client/fs/cat/{}?path=alloc/logs/t.stdout.0",
            alloc["ID"].as_str().unwrap()
        ))
        .send()
        .await
        .unwrap()
        .error_for_status()
        .unwrap()
        .text()
        .await
        .unwrap();
    eprintln!("nobody task's events: {seen:?}\nits stdout:\n{stdout}");
    assert!(
        seen.iter().any(|(t, _)| t == "Started"),
        "the task as nobody never started: {seen:?}"
    );
    assert!(
        stdout.starts_with("uid=65534 "),
        "not run as nobody: {stdout}"
    );
    assert!(
        !stdout.contains("became uid 0"),
        "the task made itself root: {stdout}"
    );
    for f in NODE_FILES {
        let answer = stdout
            .split(&format!("== {}\n", f.in_task))
            .nth(1)
            .and_then(|rest| rest.lines().next())
            .unwrap_or_default();
        assert!(
            answer.ends_with("Permission denied"),
            "{} ({:o}, uid {}) was not refused: {answer:?}\n{stdout}",
            f.in_task,
            f.mode,
            f.owner
        );
        assert!(
            !stdout.contains(f.secret),
            "{}'s secret is in the task's output:\n{stdout}",
            f.in_task
        );
    }
    eprintln!("exec_driver: {:?}", started.elapsed());
}
