use tokio::process::Command;

use crate::manager::{ServiceManager, StartError, UnitState};

/// systemd through `systemctl`: no D-Bus client to carry, and the exact
/// commands a person would run, which is what the errors show.
#[derive(Debug, Clone)]
pub struct Systemctl {
    program: String,
}

impl Default for Systemctl {
    fn default() -> Self {
        Systemctl {
            program: "systemctl".into(),
        }
    }
}

impl Systemctl {
    pub fn new(program: impl Into<String>) -> Systemctl {
        Systemctl {
            program: program.into(),
        }
    }

    async fn run(&self, args: &[&str]) -> Result<std::process::Output, StartError> {
        let command = format!("{} {}", self.program, args.join(" "));
        let out = Command::new(&self.program)
            .args(args)
            // Our notify socket is for us: systemd ignores (and logs) any
            // message from another PID, which systemctl's helpers would send.
            .env_remove("NOTIFY_SOCKET")
            .output()
            .await
            .map_err(|e| StartError::Command {
                command: command.clone(),
                status: "not run".into(),
                stderr: e.to_string(),
            })?;
        Ok(out)
    }

    /// Stops a unit and waits for it to be stopped: only for a node that
    /// is leaving the cluster (the boot and the watch loop never stop a
    /// service).
    pub async fn stop(&self, unit: &str) -> Result<(), StartError> {
        self.run_ok(&["stop", unit]).await
    }

    /// Whether the machine is shutting down (`systemctl
    /// is-system-running` says "stopping").
    pub async fn system_stopping(&self) -> bool {
        match self.run(&["is-system-running"]).await {
            Ok(out) => String::from_utf8_lossy(&out.stdout).trim() == "stopping",
            Err(_) => false,
        }
    }

    async fn run_ok(&self, args: &[&str]) -> Result<(), StartError> {
        let out = self.run(args).await?;
        if out.status.success() {
            Ok(())
        } else {
            Err(StartError::Command {
                command: format!("{} {}", self.program, args.join(" ")),
                status: out.status.to_string(),
                stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
            })
        }
    }
}

impl ServiceManager for Systemctl {
    async fn needs_daemon_reload(&self, unit: &str) -> Result<bool, StartError> {
        let out = self
            .run(&["show", "--property=NeedDaemonReload", "--value", unit])
            .await?;
        Ok(String::from_utf8_lossy(&out.stdout).trim() == "yes")
    }

    async fn daemon_reload(&self) -> Result<(), StartError> {
        self.run_ok(&["daemon-reload"]).await
    }

    async fn enable(&self, unit: &str) -> Result<(), StartError> {
        self.run_ok(&["enable", "--quiet", unit]).await
    }

    async fn start(&self, unit: &str) -> Result<(), StartError> {
        // --no-block: a Type=notify unit's start job waits for READY=1,
        // and the agent's own waits report progress and deadlines better.
        self.run_ok(&["start", "--no-block", unit]).await
    }

    async fn restart(&self, unit: &str) -> Result<(), StartError> {
        self.run_ok(&["restart", "--no-block", unit]).await
    }

    async fn reload(&self, unit: &str) -> Result<(), StartError> {
        self.run_ok(&["reload", unit]).await
    }

    async fn describe(&self, unit: &str) -> Result<UnitState, StartError> {
        let word =
            |out: std::process::Output| String::from_utf8_lossy(&out.stdout).trim().to_owned();
        let enabled = word(self.run(&["is-enabled", unit]).await?);
        let active = word(self.run(&["is-active", unit]).await?);
        let mut recent_log = Vec::new();
        if active != "active" {
            // journalctl sits next to systemctl; its absence is not an error.
            if let Ok(out) = Command::new("journalctl")
                .args(["-u", unit, "-n", "5", "--no-pager", "-o", "cat"])
                .output()
                .await
            {
                recent_log = String::from_utf8_lossy(&out.stdout)
                    .lines()
                    .map(str::to_owned)
                    .collect();
            }
        }
        Ok(UnitState {
            enabled,
            active,
            recent_log,
        })
    }

    async fn main_pid(&self, unit: &str) -> Result<Option<u32>, StartError> {
        let out = self
            .run(&["show", "--property=MainPID", "--value", unit])
            .await?;
        // "0" while the unit has no running main process.
        Ok(String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse::<u32>()
            .ok()
            .filter(|pid| *pid != 0))
    }

    async fn is_active(&self, unit: &str) -> Result<bool, StartError> {
        let out = self.run(&["is-active", "--quiet", unit]).await?;
        Ok(out.status.success())
    }
}
