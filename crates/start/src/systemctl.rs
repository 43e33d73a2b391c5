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
        if self.system_stopping().await {
            // At power-off the unit's own stop job is already queued behind
            // kraken-leave.service (ordered after it, so that it runs while
            // the node leaves); a plain stop would merge into that job and
            // wait for the leave that is waiting for it. Ignoring ordering,
            // the merged job runs now.
            return self
                .run_ok(&["stop", "--job-mode=ignore-dependencies", unit])
                .await;
        }
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

    /// What the machine is shutting down into, read from the jobs
    /// systemd has queued; `None` when it is not shutting down.
    pub async fn shutdown(&self) -> Option<Shutdown> {
        if !self.system_stopping().await {
            return None;
        }
        let jobs = match self.run(&["list-jobs", "--no-legend", "--plain"]).await {
            Ok(out) => String::from_utf8_lossy(&out.stdout).into_owned(),
            Err(_) => String::new(),
        };
        Some(Shutdown::from_jobs(&jobs))
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

/// A shutdown the machine comes back from, or one it does not.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shutdown {
    /// `reboot.target`, `kexec.target` or `soft-reboot.target` is queued.
    Reboot,
    /// Anything else: power-off, halt (what EC2 does when it terminates
    /// or stops an instance).
    PowerOff,
}

impl Shutdown {
    /// From `systemctl list-jobs --no-legend --plain`: "ID UNIT TYPE STATE".
    pub fn from_jobs(jobs: &str) -> Shutdown {
        let reboot = jobs.lines().any(|line| {
            matches!(
                line.split_whitespace().nth(1),
                Some("reboot.target" | "kexec.target" | "soft-reboot.target")
            )
        });
        if reboot {
            Shutdown::Reboot
        } else {
            Shutdown::PowerOff
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
        // `enable` reloads systemd's whole configuration even when the
        // unit is enabled already (270 ms in the test VMs, against 18 ms
        // for this question), and a join applies three services.
        if self
            .run(&["is-enabled", "--quiet", unit])
            .await?
            .status
            .success()
        {
            return Ok(());
        }
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

#[cfg(test)]
mod tests {
    use super::Shutdown;

    #[test]
    fn a_queued_reboot_target_is_a_reboot_and_anything_else_a_power_off() {
        let reboot = "1 reboot.target start waiting\n7 nomad.service stop running\n";
        assert_eq!(Shutdown::from_jobs(reboot), Shutdown::Reboot);
        let kexec = "3 kexec.target start waiting\n";
        assert_eq!(Shutdown::from_jobs(kexec), Shutdown::Reboot);
        let poweroff = "1 poweroff.target start waiting\n9 reboot-guard.service stop running\n";
        assert_eq!(Shutdown::from_jobs(poweroff), Shutdown::PowerOff);
        assert_eq!(Shutdown::from_jobs(""), Shutdown::PowerOff);
    }
}
