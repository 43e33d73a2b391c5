//! Step 6 of the boot flow: start the services, in order, and wait until
//! each one works.
//!
//! Consul first (everything registers in it), then Docker on clients, then
//! Nomad. A service that is not running is started; a running one gets the
//! [`Action`] its caller decided from what it has loaded (restart, reload,
//! nothing), so re-running the agent on a converged node touches nothing.
//! Every wait has a deadline and fails with what it last saw.

mod manager;
mod systemctl;
#[cfg(test)]
mod tests;
mod up;

pub use manager::{ServiceManager, StartError, UnitState};
pub use systemctl::{Shutdown, Systemctl};
pub use up::{
    Action, Deadlines, ServiceStep, StartPlan, StartReport, bring_up, daemon_reload_if_needed,
    start_services, wait_consul, wait_docker, wait_for, wait_nomad,
};
