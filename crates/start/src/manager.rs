//! The service manager the start step drives, and its errors.

use std::future::Future;
use std::time::Duration;

/// Control of system services. The systemd implementation shells out to
/// `systemctl`; tests run the same logic with processes they manage.
pub trait ServiceManager {
    /// Whether systemd has unit files on disk newer than what it loaded.
    fn needs_daemon_reload(
        &self,
        unit: &str,
    ) -> impl Future<Output = Result<bool, StartError>> + Send;
    fn daemon_reload(&self) -> impl Future<Output = Result<(), StartError>> + Send;
    fn enable(&self, unit: &str) -> impl Future<Output = Result<(), StartError>> + Send;
    fn start(&self, unit: &str) -> impl Future<Output = Result<(), StartError>> + Send;
    fn restart(&self, unit: &str) -> impl Future<Output = Result<(), StartError>> + Send;
    /// Asks the service to re-read its config without restarting (SIGHUP
    /// through the unit's `ExecReload=`).
    fn reload(&self, unit: &str) -> impl Future<Output = Result<(), StartError>> + Send;
    fn is_active(&self, unit: &str) -> impl Future<Output = Result<bool, StartError>> + Send;
    /// The unit's main process, while it runs: with the process's start
    /// time it tells one run of a service from the next.
    fn main_pid(&self, unit: &str) -> impl Future<Output = Result<Option<u32>, StartError>> + Send;
    /// Read-only: whether the unit is enabled, and its state as systemd
    /// words it ("active", "failed", "inactive", ...).
    fn describe(&self, unit: &str) -> impl Future<Output = Result<UnitState, StartError>> + Send;
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("`{command}` failed ({status}): {stderr}")]
    Command {
        command: String,
        status: String,
        stderr: String,
    },
    #[error("{what} did not happen within {waited:?}; last seen: {last}")]
    Timeout {
        what: String,
        waited: Duration,
        last: String,
    },
}

/// A unit as `doctor` reports it.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct UnitState {
    pub enabled: String,
    pub active: String,
    /// The last lines the unit logged, when it is not active.
    pub recent_log: Vec<String>,
}
