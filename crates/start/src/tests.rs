//! The start step's decisions, with a service manager that records what it
//! is asked (the trait's reason to exist), and `Systemctl` against a script
//! standing in for systemctl: systemd is not PID 1 here (real systemd is in
//! the VM cluster, real Consul and Nomad in `tests/integration/live_peers/`).

use std::collections::BTreeSet;
use std::os::unix::fs::PermissionsExt;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use kraken_hashi::{Consul, Nomad};

use super::*;

/// Answers from a fixed picture of the units and records every call.
#[derive(Default)]
struct Recorder {
    active: BTreeSet<&'static str>,
    needs_reload: BTreeSet<&'static str>,
    refuse_enable: bool,
    calls: Mutex<Vec<String>>,
}

impl Recorder {
    fn call(&self, what: &str, unit: &str) {
        self.calls.lock().unwrap().push(format!("{what} {unit}"));
    }

    fn calls(&self) -> Vec<String> {
        self.calls.lock().unwrap().clone()
    }
}

impl ServiceManager for Recorder {
    async fn needs_daemon_reload(&self, unit: &str) -> Result<bool, StartError> {
        self.call("needs-daemon-reload", unit);
        Ok(self.needs_reload.contains(unit))
    }
    async fn daemon_reload(&self) -> Result<(), StartError> {
        self.calls.lock().unwrap().push("daemon-reload".into());
        Ok(())
    }
    async fn enable(&self, unit: &str) -> Result<(), StartError> {
        self.call("enable", unit);
        if self.refuse_enable {
            return Err(StartError::Command {
                command: format!("systemctl enable --quiet {unit}"),
                status: "exit status: 1".into(),
                stderr: format!("Unit {unit} does not exist."),
            });
        }
        Ok(())
    }
    async fn start(&self, unit: &str) -> Result<(), StartError> {
        self.call("start", unit);
        Ok(())
    }
    async fn restart(&self, unit: &str) -> Result<(), StartError> {
        self.call("restart", unit);
        Ok(())
    }
    async fn reload(&self, unit: &str) -> Result<(), StartError> {
        self.call("reload", unit);
        Ok(())
    }
    async fn main_pid(&self, unit: &str) -> Result<Option<u32>, StartError> {
        self.call("main-pid", unit);
        Ok(self.active.contains(unit).then_some(4242))
    }
    async fn is_active(&self, unit: &str) -> Result<bool, StartError> {
        self.call("is-active", unit);
        Ok(self.active.contains(unit))
    }
    async fn describe(&self, unit: &str) -> Result<UnitState, StartError> {
        self.call("describe", unit);
        Ok(UnitState::default())
    }
}

fn step(unit: &str, config_changed: bool) -> ServiceStep {
    ServiceStep {
        unit: unit.into(),
        action: if config_changed {
            Action::Restart
        } else {
            Action::Nothing
        },
    }
}

/// Runs `bring_up` for `step`; returns the report and the status lines.
async fn bring_up_one(manager: &Recorder, step: &ServiceStep) -> (StartReport, Vec<String>) {
    let lines = Mutex::new(Vec::new());
    let status = |s: &str| lines.lock().unwrap().push(s.to_owned());
    let mut report = StartReport::default();
    bring_up(manager, step, &mut report, &status).await.unwrap();
    (report, lines.into_inner().unwrap())
}

#[tokio::test]
async fn a_changed_config_restarts_even_a_unit_not_yet_active() {
    let manager = Recorder::default();
    let (report, lines) = bring_up_one(&manager, &step("consul.service", true)).await;
    assert_eq!(
        manager.calls(),
        [
            "enable consul.service",
            "is-active consul.service",
            "restart consul.service"
        ]
    );
    assert_eq!(report.restarted, ["consul.service"]);
    assert!(report.started.is_empty() && report.already_running.is_empty());
    assert_eq!(lines, ["(re)starting consul.service (its config changed)"]);
}

#[tokio::test]
async fn a_changed_config_restarts_a_running_unit() {
    let manager = Recorder {
        active: BTreeSet::from(["nomad.service"]),
        ..Recorder::default()
    };
    let (report, _) = bring_up_one(&manager, &step("nomad.service", true)).await;
    assert_eq!(manager.calls().last().unwrap(), "restart nomad.service");
    assert_eq!(report.restarted, ["nomad.service"]);
}

#[tokio::test]
async fn an_unchanged_running_unit_is_left_alone() {
    let manager = Recorder {
        active: BTreeSet::from(["consul.service"]),
        ..Recorder::default()
    };
    let (report, lines) = bring_up_one(&manager, &step("consul.service", false)).await;
    assert_eq!(
        manager.calls(),
        ["enable consul.service", "is-active consul.service"]
    );
    assert_eq!(report.already_running, ["consul.service"]);
    assert!(report.started.is_empty() && report.restarted.is_empty());
    assert!(lines.is_empty(), "{lines:?}");
}

#[tokio::test]
async fn an_unchanged_stopped_unit_is_started_not_restarted() {
    let manager = Recorder::default();
    let (report, lines) = bring_up_one(&manager, &step("docker.service", false)).await;
    assert_eq!(manager.calls().last().unwrap(), "start docker.service");
    assert_eq!(report.started, ["docker.service"]);
    assert!(report.restarted.is_empty());
    assert_eq!(lines, ["starting docker.service"]);
}

#[tokio::test]
async fn a_unit_that_cannot_be_enabled_is_not_started() {
    let manager = Recorder {
        refuse_enable: true,
        ..Recorder::default()
    };
    let status = |_: &str| {};
    let mut report = StartReport::default();
    let err = bring_up(
        &manager,
        &step("consul.service", true),
        &mut report,
        &status,
    )
    .await
    .unwrap_err();
    assert!(err.to_string().contains("does not exist"), "{err}");
    assert_eq!(manager.calls(), ["enable consul.service"]);
    assert_eq!(report, StartReport::default());
}

/// A loopback address where nothing listens.
fn nothing_listening() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    format!("http://{addr}")
}

fn full_plan() -> StartPlan {
    StartPlan {
        consul: step("consul.service", false),
        consul_server: true,
        docker: Some(step("docker.service", true)),
        nomad: Some(step("nomad.service", true)),
        nomad_server: true,
    }
}

async fn start_without_consul(manager: &Recorder) -> (StartError, String, Vec<String>) {
    let consul_url = nothing_listening();
    let consul = Consul::new(&consul_url, None).unwrap();
    let nomad = Nomad::new(&nothing_listening(), None).unwrap();
    let deadlines = Deadlines {
        answer: Duration::from_millis(300),
        leader: Duration::from_millis(300),
        poll: Duration::from_millis(50),
    };
    let lines = Mutex::new(Vec::new());
    let status = |s: &str| lines.lock().unwrap().push(s.to_owned());
    let err = start_services(manager, &full_plan(), &consul, &nomad, &deadlines, &status)
        .await
        .unwrap_err();
    (err, consul_url, lines.into_inner().unwrap())
}

#[tokio::test]
async fn nothing_after_consul_is_touched_until_consul_answers() {
    let manager = Recorder::default();
    let (err, consul_url, lines) = start_without_consul(&manager).await;
    assert_eq!(
        manager.calls(),
        [
            "needs-daemon-reload consul.service",
            "needs-daemon-reload docker.service",
            "needs-daemon-reload nomad.service",
            "enable consul.service",
            "is-active consul.service",
            "start consul.service",
        ]
    );
    assert_eq!(
        lines,
        ["starting consul.service", "waiting for Consul to answer"]
    );
    match &err {
        StartError::Timeout { what, waited, last } => {
            assert_eq!(what, "Consul to answer on its HTTP API");
            assert_eq!(*waited, Duration::from_millis(300));
            assert!(
                last.contains(&format!("Consul is not answering at {consul_url}")),
                "{last}"
            );
        }
        other => panic!("{other}"),
    }
}

#[tokio::test]
async fn systemd_is_reloaded_once_before_anything_starts() {
    let manager = Recorder {
        needs_reload: BTreeSet::from(["docker.service", "nomad.service"]),
        ..Recorder::default()
    };
    start_without_consul(&manager).await;
    let calls = manager.calls();
    assert_eq!(
        calls[..4],
        [
            "needs-daemon-reload consul.service",
            "needs-daemon-reload docker.service",
            "daemon-reload",
            "enable consul.service",
        ]
    );
    assert_eq!(calls.iter().filter(|c| *c == "daemon-reload").count(), 1);
}

#[tokio::test]
async fn wait_for_returns_the_first_value_it_sees() {
    let mut polls = 0;
    let got = wait_for(
        "the third poll",
        Duration::from_secs(10),
        Duration::from_millis(1),
        || {
            polls += 1;
            let n = polls;
            async move {
                match n {
                    1 => Err("refused".to_owned()),
                    2 => Ok(None),
                    _ => Ok(Some(n)),
                }
            }
        },
    )
    .await
    .unwrap();
    assert_eq!(got, 3);
    assert_eq!(polls, 3);
}

#[tokio::test]
async fn wait_for_times_out_with_the_last_error_it_saw() {
    let mut polls = 0;
    let err = wait_for::<(), _, _>(
        "a Consul Raft leader",
        Duration::from_millis(200),
        Duration::from_millis(20),
        || {
            polls += 1;
            let n = polls;
            async move { Err(format!("No cluster leader (poll {n})")) }
        },
    )
    .await
    .unwrap_err();
    assert!(polls > 1, "polled again before giving up");
    assert_eq!(
        err.to_string(),
        format!(
            "a Consul Raft leader did not happen within 200ms; last seen: \
             No cluster leader (poll {polls})"
        )
    );
}

#[tokio::test]
async fn wait_for_says_not_yet_when_the_last_poll_was_only_not_ready() {
    let mut polls = 0;
    let err = wait_for::<(), _, _>(
        "Docker to be active",
        Duration::from_millis(100),
        Duration::from_millis(10),
        || {
            polls += 1;
            let n = polls;
            async move {
                if n == 1 {
                    Err("systemctl failed".to_owned())
                } else {
                    Ok(None)
                }
            }
        },
    )
    .await
    .unwrap_err();
    assert!(
        matches!(&err, StartError::Timeout { last, .. } if last == "not yet"),
        "{err}"
    );
}

#[tokio::test]
async fn wait_for_does_not_sleep_past_its_deadline() {
    let started = Instant::now();
    let err = wait_for::<(), _, _>(
        "a leader",
        Duration::from_millis(300),
        Duration::from_secs(60),
        || async { Ok(None) },
    )
    .await
    .unwrap_err();
    let took = started.elapsed();
    assert!(matches!(err, StartError::Timeout { .. }));
    assert!(
        took >= Duration::from_millis(300) && took < Duration::from_secs(10),
        "{took:?}"
    );
}

/// A systemctl that logs its arguments, says every unit needs a daemon
/// reload, is enabled (but consul.service, when asked quietly) and failed,
/// and fails to start `bad.service`.
fn fake_systemctl(dir: &std::path::Path) -> Systemctl {
    let path = dir.join("systemctl");
    std::fs::write(
        &path,
        format!(
            "#!/bin/sh\necho \"$*\" >> {calls}\n\
             case \"$1 $2\" in\n\
             show*) echo yes ;;\n\
             'is-enabled --quiet') [ \"$3\" = consul.service ] && exit 1 ;;\n\
             is-enabled*) echo enabled ;;\n\
             'is-active --quiet') exit 3 ;;\n\
             is-active*) echo failed; exit 3 ;;\n\
             'start --no-block') [ \"$3\" = bad.service ] && \
             {{ echo \"Job for bad.service failed.\" >&2; exit 1; }} ;;\n\
             esac\nexit 0\n",
            calls = dir.join("calls").display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    Systemctl::new(path.to_str().unwrap())
}

#[tokio::test]
async fn systemctl_is_asked_what_a_person_would_ask_and_its_answers_read() {
    let dir = tempfile::tempdir().unwrap();
    let systemctl = fake_systemctl(dir.path());
    assert!(
        systemctl
            .needs_daemon_reload("consul.service")
            .await
            .unwrap()
    );
    systemctl.daemon_reload().await.unwrap();
    systemctl.enable("consul.service").await.unwrap();
    systemctl.enable("nomad.service").await.unwrap();
    systemctl.start("consul.service").await.unwrap();
    systemctl.restart("nomad.service").await.unwrap();
    systemctl.reload("nomad.service").await.unwrap();
    assert!(!systemctl.is_active("docker.service").await.unwrap());
    let state = systemctl.describe("docker.service").await.unwrap();
    assert_eq!(
        (state.enabled.as_str(), state.active.as_str()),
        ("enabled", "failed")
    );
    let calls = std::fs::read_to_string(dir.path().join("calls")).unwrap();
    assert_eq!(
        calls.lines().collect::<Vec<_>>(),
        [
            "show --property=NeedDaemonReload --value consul.service",
            "daemon-reload",
            "is-enabled --quiet consul.service",
            "enable --quiet consul.service",
            // Enabled already: not enabled again.
            "is-enabled --quiet nomad.service",
            "start --no-block consul.service",
            "restart --no-block nomad.service",
            "reload nomad.service",
            "is-active --quiet docker.service",
            "is-enabled docker.service",
            "is-active docker.service",
        ]
    );
}

#[tokio::test]
async fn a_failed_systemctl_names_the_command_its_status_and_what_it_said() {
    let dir = tempfile::tempdir().unwrap();
    let systemctl = fake_systemctl(dir.path());
    let program = dir.path().join("systemctl");
    match systemctl.start("bad.service").await.unwrap_err() {
        StartError::Command {
            command,
            status,
            stderr,
        } => {
            assert_eq!(
                command,
                format!("{} start --no-block bad.service", program.display())
            );
            assert_eq!(status, "exit status: 1");
            assert_eq!(stderr, "Job for bad.service failed.");
        }
        other => panic!("{other}"),
    }
}

#[tokio::test]
async fn a_systemctl_that_cannot_run_is_named() {
    let systemctl = Systemctl::new("/nonexistent/systemctl");
    let err = systemctl.enable("consul.service").await.unwrap_err();
    assert!(
        matches!(
            &err,
            StartError::Command { command, status, .. }
                if command == "/nonexistent/systemctl is-enabled --quiet consul.service"
                    && status == "not run"
        ),
        "{err}"
    );
}
