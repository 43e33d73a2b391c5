//! The autoscaling lifecycle state and the Spot interruption notice: served
//! as AWS documents them, absent (404, and missing from the listing) when
//! they do not apply, changed at run time through the handle and, in the
//! binary, by SIGHUP.

use std::net::SocketAddr;
use std::time::{Duration, SystemTime};

use aws_config::imds::Client;
use aws_config::imds::client::error::ImdsError;
use kraken_fake_imds::{
    Config, FakeImds, FakeImdsHandle, InstanceData, SpotAction, SpotInstanceAction,
    TargetLifecycleState,
};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};

const STATE: &str = "/latest/meta-data/autoscaling/target-lifecycle-state";
const SPOT_ACTION: &str = "/latest/meta-data/spot/instance-action";
const SPOT_TIME: &str = "/latest/meta-data/spot/termination-time";

struct Http {
    client: reqwest::Client,
    base: String,
    token: String,
}

impl Http {
    async fn new(addr: SocketAddr) -> Http {
        let client = reqwest::Client::new();
        let base = format!("http://{addr}");
        let token = client
            .put(format!("{base}/latest/api/token"))
            .header("X-aws-ec2-metadata-token-ttl-seconds", "600")
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        Http {
            client,
            base,
            token,
        }
    }

    /// Status, content type and body.
    async fn get(&self, path: &str) -> (u16, String, String) {
        let resp = self
            .client
            .get(format!("{}{path}", self.base))
            .header("X-aws-ec2-metadata-token", &self.token)
            .send()
            .await
            .unwrap();
        let status = resp.status().as_u16();
        let kind = resp.headers()["content-type"].to_str().unwrap().to_owned();
        (status, kind, resp.text().await.unwrap())
    }

    async fn body(&self, path: &str) -> String {
        let (status, _, body) = self.get(path).await;
        assert_eq!(status, 200, "{path}: {body}");
        body
    }
}

async fn start(data: InstanceData) -> FakeImdsHandle {
    FakeImds::start("127.0.0.1:0".parse().unwrap(), data)
        .await
        .unwrap()
}

fn listing(body: &str) -> Vec<&str> {
    body.lines().collect()
}

#[tokio::test]
async fn absent_fields_are_404_and_not_listed() {
    let imds = start(InstanceData::default()).await;
    let http = Http::new(imds.addr()).await;
    for path in [STATE, SPOT_ACTION, SPOT_TIME, "/latest/meta-data/spot/"] {
        assert_eq!(http.get(path).await.0, 404, "{path}");
    }
    let root = http.body("/latest/meta-data/").await;
    assert!(!listing(&root).contains(&"autoscaling/"), "{root}");
    assert!(!listing(&root).contains(&"spot/"), "{root}");
}

#[tokio::test]
async fn lifecycle_state_is_served_as_text_and_follows_the_handle() {
    let imds = start(InstanceData {
        target_lifecycle_state: Some(TargetLifecycleState::WarmedStopped),
        ..InstanceData::default()
    })
    .await;
    let http = Http::new(imds.addr()).await;
    assert_eq!(
        http.get(STATE).await,
        (200, "text/plain".into(), "Warmed:Stopped".into())
    );
    let root = http.body("/latest/meta-data/").await;
    assert!(listing(&root).contains(&"autoscaling/"), "{root}");
    assert_eq!(
        http.body("/latest/meta-data/autoscaling/").await,
        "target-lifecycle-state"
    );
    for (state, text) in [
        (TargetLifecycleState::InService, "InService"),
        (TargetLifecycleState::WarmedRunning, "Warmed:Running"),
        (TargetLifecycleState::WarmedHibernated, "Warmed:Hibernated"),
        (TargetLifecycleState::Terminated, "Terminated"),
        (TargetLifecycleState::Detached, "Detached"),
        (TargetLifecycleState::Standby, "Standby"),
        (TargetLifecycleState::WarmedTerminated, "Warmed:Terminated"),
    ] {
        imds.set_target_lifecycle_state(Some(state));
        assert_eq!(http.body(STATE).await, text);
        assert_eq!(state.to_string(), text);
    }
    imds.set_target_lifecycle_state(None);
    assert_eq!(http.get(STATE).await.0, 404);
    let root = http.body("/latest/meta-data/").await;
    assert!(!listing(&root).contains(&"autoscaling/"), "{root}");
}

#[tokio::test]
async fn spot_notice_is_served_as_aws_writes_it() {
    let imds = start(InstanceData::default()).await;
    let http = Http::new(imds.addr()).await;
    let at = SystemTime::UNIX_EPOCH + Duration::from_secs(1_796_113_320);
    imds.set_spot_instance_action(Some(SpotInstanceAction::at(SpotAction::Terminate, at)))
        .unwrap();
    assert_eq!(
        http.get(SPOT_ACTION).await,
        (
            200,
            "text/plain".into(),
            r#"{"action": "terminate", "time": "2026-12-01T08:22:00Z"}"#.into()
        )
    );
    assert_eq!(http.body(SPOT_TIME).await, "2026-12-01T08:22:00Z");
    assert_eq!(
        http.body("/latest/meta-data/spot/").await,
        "instance-action\ntermination-time"
    );
    let root = http.body("/latest/meta-data/").await;
    assert!(listing(&root).contains(&"spot/"), "{root}");

    imds.set_spot_instance_action(Some(SpotInstanceAction::at(SpotAction::Stop, at)))
        .unwrap();
    let notice: serde_json::Value = serde_json::from_str(&http.body(SPOT_ACTION).await).unwrap();
    assert_eq!(notice["action"], "stop");
    assert_eq!(http.body(SPOT_TIME).await, "2026-12-01T08:22:00Z");

    // A hibernation starts at once: no shutdown time to announce.
    imds.set_spot_instance_action(Some(SpotInstanceAction::at(SpotAction::Hibernate, at)))
        .unwrap();
    let notice: serde_json::Value = serde_json::from_str(&http.body(SPOT_ACTION).await).unwrap();
    assert_eq!(notice["action"], "hibernate");
    assert_eq!(http.get(SPOT_TIME).await.0, 404);

    // The usual two-minute notice.
    let before = SystemTime::now();
    imds.set_spot_instance_action(Some(SpotInstanceAction::in_two_minutes(
        SpotAction::Terminate,
    )))
    .unwrap();
    let time = humantime::parse_rfc3339(&http.body(SPOT_TIME).await).unwrap();
    let ahead = time.duration_since(before).unwrap().as_secs();
    assert!((119..=121).contains(&ahead), "{ahead}s ahead");

    // A malformed time is refused and the notice in place kept.
    let bad = SpotInstanceAction {
        action: SpotAction::Stop,
        time: "tomorrow".into(),
    };
    let err = imds.set_spot_instance_action(Some(bad)).unwrap_err();
    assert!(err.to_string().contains("2026-12-01T08:22:00Z"), "{err}");
    assert_eq!(
        http.body(SPOT_TIME).await,
        humantime::format_rfc3339_seconds(time).to_string()
    );

    imds.set_spot_instance_action(None).unwrap();
    assert_eq!(http.get(SPOT_ACTION).await.0, 404);
    assert_eq!(http.get(SPOT_TIME).await.0, 404);
}

/// The SDK's IMDS client, as the agent reads these items.
#[tokio::test]
async fn official_client_reads_state_and_notice_and_gets_404_without() {
    let imds = start(InstanceData::default()).await;
    let client = Client::builder().endpoint(imds.endpoint()).unwrap().build();
    let status = |r: Result<_, ImdsError>| match r {
        Err(ImdsError::ErrorResponse(e)) => e.response().status().as_u16(),
        other => panic!("{other:?}"),
    };
    assert_eq!(status(client.get(STATE).await), 404);
    assert_eq!(status(client.get(SPOT_ACTION).await), 404);

    imds.set_target_lifecycle_state(Some(TargetLifecycleState::Terminated));
    imds.set_spot_instance_action(Some(SpotInstanceAction::in_two_minutes(
        SpotAction::Terminate,
    )))
    .unwrap();
    assert_eq!(client.get(STATE).await.unwrap().as_ref(), "Terminated");
    let notice: serde_json::Value =
        serde_json::from_str(client.get(SPOT_ACTION).await.unwrap().as_ref()).unwrap();
    assert_eq!(notice["action"], "terminate");
    assert_eq!(imds.stats().token_puts, 1, "one token throughout");
}

#[test]
fn the_file_format_takes_both_fields_and_defaults_them_to_absent() {
    let config: Config = serde_json::from_str(
        r#"{"instance": {"target_lifecycle_state": "Warmed:Hibernated",
            "spot_instance_action": {"action": "stop", "time": "2026-12-01T08:22:00Z"}}}"#,
    )
    .unwrap();
    assert_eq!(
        config.instance.target_lifecycle_state,
        Some(TargetLifecycleState::WarmedHibernated)
    );
    assert_eq!(
        config.instance.spot_instance_action,
        Some(SpotInstanceAction {
            action: SpotAction::Stop,
            time: "2026-12-01T08:22:00Z".into()
        })
    );
    let plain: Config = serde_json::from_str(r#"{"instance": {}}"#).unwrap();
    assert_eq!(plain.instance.target_lifecycle_state, None);
    assert_eq!(plain.instance.spot_instance_action, None);
    for bad in [
        r#"{"instance": {"target_lifecycle_state": "Pending:Wait"}}"#,
        r#"{"instance": {"spot_instance_action": {"action": "reboot", "time": "2026-12-01T08:22:00Z"}}}"#,
    ] {
        assert!(serde_json::from_str::<Config>(bad).is_err(), "{bad}");
    }
}

fn hup(child: &tokio::process::Child) {
    let kill = std::process::Command::new("kill")
        .args(["-HUP", &child.id().unwrap().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
}

/// Reads the binary's log until a line contains `needle`.
async fn log_until(stderr: &mut BufReader<tokio::process::ChildStderr>, needle: &str) -> String {
    let mut log = String::new();
    loop {
        let mut line = String::new();
        let n = tokio::time::timeout(Duration::from_secs(10), stderr.read_line(&mut line))
            .await
            .unwrap_or_else(|_| panic!("no {needle:?} in: {log}"))
            .unwrap();
        assert!(n > 0, "exited early: {log}");
        log.push_str(&line);
        if line.contains(needle) {
            return log;
        }
    }
}

#[tokio::test]
async fn binary_reloads_its_file_on_sighup_and_keeps_tokens() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("instance.json");
    let write = |data: &InstanceData| {
        let config = Config {
            instance: data.clone(),
            ..Config::default()
        };
        std::fs::write(&path, serde_json::to_string_pretty(&config).unwrap()).unwrap();
    };
    let mut data = InstanceData {
        target_lifecycle_state: Some(TargetLifecycleState::WarmedStopped),
        ..InstanceData::default()
    };
    write(&data);
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_kraken-fake-imds"))
        .args(["--bind", "127.0.0.1:0", "--instance"])
        .arg(&path)
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let log = log_until(&mut stderr, "listening on ").await;
    let addr: SocketAddr = log
        .trim()
        .rsplit_once("listening on ")
        .unwrap()
        .1
        .parse()
        .unwrap();
    let http = Http::new(addr).await;
    assert_eq!(http.body(STATE).await, "Warmed:Stopped");
    assert_eq!(http.get(SPOT_ACTION).await.0, 404);

    data.target_lifecycle_state = Some(TargetLifecycleState::Terminated);
    data.spot_instance_action = Some(SpotInstanceAction::in_two_minutes(SpotAction::Terminate));
    write(&data);
    hup(&child);
    log_until(&mut stderr, "SIGHUP: reloaded").await;
    // The token issued before the reload still works.
    assert_eq!(http.body(STATE).await, "Terminated");
    let notice: serde_json::Value = serde_json::from_str(&http.body(SPOT_ACTION).await).unwrap();
    assert_eq!(notice["action"], "terminate");

    // A broken file, then an invalid one: logged, the data in use kept.
    std::fs::write(&path, "{ not json").unwrap();
    hup(&child);
    let log = log_until(&mut stderr, "SIGHUP: kept the data in use").await;
    assert!(log.contains("parsing"), "{log}");
    data.vpc_id = "nope".into();
    write(&data);
    hup(&child);
    let log = log_until(&mut stderr, "SIGHUP: kept the data in use").await;
    assert!(log.contains("vpc_id"), "{log}");
    assert_eq!(http.body(STATE).await, "Terminated");

    // Out of the group again.
    data.vpc_id = InstanceData::default().vpc_id;
    data.target_lifecycle_state = None;
    data.spot_instance_action = None;
    write(&data);
    hup(&child);
    log_until(&mut stderr, "SIGHUP: reloaded").await;
    assert_eq!(http.get(STATE).await.0, 404);
    assert_eq!(http.get(SPOT_ACTION).await.0, 404);

    child.start_kill().unwrap();
    let _ = child.wait().await;
    let mut rest = String::new();
    let _ = stderr.read_to_string(&mut rest).await;
    assert!(!rest.contains(&http.token), "the token is never logged");
}
