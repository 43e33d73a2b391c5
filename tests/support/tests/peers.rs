//! Proves each starter against the real binaries from `cargo xtask deps`.

use std::time::Duration;

use kraken_testkit::{
    ConsulCluster, ConsulDev, LoopbackAddrs, Moto, NomadDev, Peer, PeerCommand, TestDir,
    consul_bin, http_client, wait_for, wait_http_ok, wait_until,
};
use serde_json::{Value, json};

const TIMEOUT: Duration = Duration::from_secs(120);

/// An STS call with a made-up signature: moto answers it unless it was told
/// to check credentials.
async fn get_caller_identity(moto: &Moto) -> (u16, String) {
    let resp = http_client()
        .post(format!("{}/", moto.endpoint()))
        .header(
            "Authorization",
            "AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20250101/us-east-1/sts/aws4_request, \
             SignedHeaders=host, Signature=0",
        )
        .header("Content-Type", "application/x-www-form-urlencoded")
        .body("Action=GetCallerIdentity&Version=2011-06-15")
        .send()
        .await
        .unwrap();
    (resp.status().as_u16(), resp.text().await.unwrap())
}

#[tokio::test]
async fn moto_serves_aws_apis_and_resets() {
    let moto = Moto::start().await;
    assert!(moto.endpoint().starts_with("http://127.0.0.1:"));
    let (status, body) = get_caller_identity(&moto).await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("<Account>123456789012</Account>"), "{body}");
    moto.reset().await.unwrap();
}

#[tokio::test]
async fn moto_passes_env_to_enforce_iam() {
    let moto = Moto::start_with_env(&[("INITIAL_NO_AUTH_ACTION_COUNT", "0")]).await;
    let (status, body) = get_caller_identity(&moto).await;
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("InvalidClientTokenId"), "{body}");
}

#[tokio::test]
async fn consul_dev_serves_kv() {
    let consul = ConsulDev::start().await;
    assert_ne!(consul.ip().octets()[..2], [127, 0]);
    let client = http_client();
    let key = format!("{}/v1/kv/kraken/test", consul.http_url());
    let put = client.put(&key).body("hello").send().await.unwrap();
    assert!(put.status().is_success());
    let got = kraken_testkit::get_text(&format!("{key}?raw")).await;
    assert_eq!(got, "hello");
}

#[tokio::test]
async fn consul_cluster_elects_a_new_leader_and_takes_the_old_one_back() {
    let mut cluster = ConsulCluster::start(3).await;
    let leader = cluster.wait_leader(TIMEOUT).await.unwrap();

    cluster.stop_server(leader);
    assert!(!cluster.is_running(leader));
    let new_leader = cluster.wait_leader(TIMEOUT).await.unwrap();
    assert_ne!(new_leader, leader);

    cluster.start_server(leader).await;
    let voters: Value = http_client()
        .get(format!("{}/v1/status/peers", cluster.http_url(leader)))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(voters.as_array().unwrap().len(), 3, "{voters}");
}

#[tokio::test]
async fn nomad_dev_runs_a_raw_exec_job() {
    let nomad = NomadDev::start().await;
    let dirs = [
        nomad.server.dir().to_path_buf(),
        nomad.client.dir().to_path_buf(),
    ];
    let client = http_client();
    let job = json!({"Job": {
        "ID": "hello", "Name": "hello", "Type": "batch", "Datacenters": ["*"],
        "TaskGroups": [{
            "Name": "g", "Count": 1,
            "RestartPolicy": {"Attempts": 0, "Mode": "fail"},
            "ReschedulePolicy": {"Attempts": 0, "Unlimited": false},
            "Tasks": [{
                "Name": "t", "Driver": "raw_exec",
                "Config": {"command": "/bin/sh", "args": ["-c", "echo hello from raw_exec"]}
            }]
        }]
    }});
    let resp = client
        .post(format!("{}/v1/jobs", nomad.http_url()))
        .json(&job)
        .send()
        .await
        .unwrap();
    assert!(resp.status().is_success(), "{}", resp.text().await.unwrap());

    let url = format!("{}/v1/job/hello/allocations", nomad.http_url());
    let alloc = wait_for("the job's allocation to finish", TIMEOUT, || {
        let (client, url) = (client.clone(), url.clone());
        async move {
            let allocs: Value = client.get(&url).send().await.ok()?.json().await.ok()?;
            let alloc = allocs.as_array()?.first()?.clone();
            match alloc["ClientStatus"].as_str()? {
                "complete" | "failed" | "lost" => Some(alloc),
                _ => None,
            }
        }
    })
    .await
    .unwrap();
    assert_eq!(alloc["ClientStatus"], "complete", "{alloc:#}");

    let logs = client
        .get(format!(
            "{}/v1/client/fs/logs/{}?task=t&type=stdout&plain=true",
            nomad.http_url(),
            alloc["ID"].as_str().unwrap()
        ))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(logs.trim(), "hello from raw_exec");

    // The alloc dir held a secrets tmpfs: cleanup must unmount it to remove
    // the dir.
    drop(nomad);
    for dir in dirs {
        assert!(!dir.exists(), "{} was not removed", dir.display());
    }
}

#[tokio::test]
async fn consul_from_a_config_file() {
    let dir = TestDir::new("consul-config");
    let ip = LoopbackAddrs::allocate(1)[0];
    let config = dir.path().join("consul.hcl");
    std::fs::write(
        &config,
        format!(
            "server = true\nbootstrap_expect = 1\nbind_addr = \"{ip}\"\nclient_addr = \"{ip}\"\n\
             data_dir = \"{}\"\ndisable_update_check = true\n",
            dir.path().join("data").display()
        ),
    )
    .unwrap();

    let mut validate = PeerCommand::consul("validate", dir.path())
        .arg("validate")
        .arg(&config)
        .spawn();
    let status = validate.wait_exit(TIMEOUT).await.unwrap();
    assert!(status.success(), "{}", validate.log());

    let mut consul = Peer::spawn(
        "consul",
        consul_bin(),
        ["agent", "-config-file", config.to_str().unwrap()],
        &[],
        dir.path(),
    );
    let base = format!("http://{ip}:8500");
    wait_http_ok(&format!("{base}/v1/agent/self"), TIMEOUT)
        .await
        .unwrap();
    let client = http_client();
    wait_until("a leader", TIMEOUT, || {
        let client = client.clone();
        let url = format!("{base}/v1/status/leader");
        async move {
            let leader: Value = match client.get(url).send().await {
                Ok(resp) => resp.json().await.unwrap_or(Value::Null),
                Err(_) => return false,
            };
            leader.as_str().is_some_and(|l| !l.is_empty())
        }
    })
    .await
    .unwrap();
    assert!(consul.is_running());
}

fn process_gone(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        // A zombie waiting for an init that does not reap is dead too.
        Ok(stat) => stat
            .rsplit_once(')')
            .unwrap()
            .1
            .trim_start()
            .starts_with('Z'),
    }
}

#[tokio::test]
async fn dropping_a_peer_kills_its_whole_tree() {
    let dir = TestDir::new("peer-tree");
    // One child in the peer's group, one in a session of its own, as Nomad's
    // executors are.
    let peer = Peer::spawn(
        "tree",
        "/bin/sh",
        [
            "-c",
            "sleep 300 & echo $! > in_group; setsid sleep 300 & echo $! > own_session; wait",
        ],
        &[],
        dir.path(),
    );
    let read_pid = |name: &str| -> Option<u32> {
        std::fs::read_to_string(dir.path().join(name))
            .ok()?
            .trim()
            .parse()
            .ok()
    };
    let pids = wait_for("the children's pids", TIMEOUT, || {
        let pids = read_pid("in_group").zip(read_pid("own_session"));
        async move { pids }
    })
    .await
    .unwrap();
    let root = peer.pid().unwrap();
    drop(peer);
    for pid in [root, pids.0, pids.1] {
        wait_until(
            &format!("pid {pid} to die"),
            Duration::from_secs(10),
            || std::future::ready(process_gone(pid)),
        )
        .await
        .unwrap();
    }
}

#[tokio::test]
async fn a_dead_peer_fails_its_wait_at_once() {
    let dir = TestDir::new("peer-dead");
    let mut peer = Peer::spawn(
        "dies",
        "/bin/sh",
        ["-c", "echo about to fail; exit 3"],
        &[],
        dir.path(),
    );
    let status = peer.wait_exit(TIMEOUT).await.unwrap();
    assert_eq!(status.code(), Some(3));
    let err = peer.check_running().unwrap_err().to_string();
    assert!(err.contains("about to fail"), "{err}");
}
