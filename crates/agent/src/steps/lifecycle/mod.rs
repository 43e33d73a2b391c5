//! The instance's own lifecycle (`docs/operations.md`, "The instance's
//! life"): IMDS says where the autoscaling group is taking the instance,
//! or that spot is taking it back; the agent brings the node in or out of
//! the cluster without losing work or quorum, and completes the group's
//! lifecycle hooks when it has.
//!
//! - [`departure`]: watches IMDS for `Terminated` or a spot notice;
//! - [`launch`]: completes the launching hook once the node serves;
//! - [`warm`]: an instance in a warm pool prepares and waits, joining
//!   nothing, until the group puts it in service;
//! - [`leave`]: a client drains, a server leaves Raft when the others can
//!   spare it; then the terminating hook is completed. `run` calls it on a
//!   notice, `kraken-agent leave` (a person, or the shutdown unit) on demand.

pub mod drain;
pub mod launch;
pub mod leave;
pub mod warm;

use std::time::{Duration, SystemTime};

use kraken_aws::{ApiCalls, HookAnswer, HookResult, LifecycleHooks};
use kraken_identity::{Identity, ImdsIdentity, TargetState};
use kraken_intent::NodeSpec;
use kraken_secrets::Store;
use kraken_settings::Settings;

use crate::{BootError, tuning};

/// Why the node is leaving.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Departure {
    /// The group set the target lifecycle state to `Terminated`.
    Terminating,
    /// A spot interruption: EC2 takes the instance at `at`.
    Spot { action: String, at: SystemTime },
    /// Asked for: `kraken-agent leave` by a person.
    Requested,
    /// The machine is powering off (`kraken-leave.service`) with no
    /// lifecycle state to say why: a client leaves as on `Terminated`; a
    /// server leaves only if the others can spare it right now, since no
    /// hook holds the instance while a replacement comes.
    PowerOff,
}

impl Departure {
    pub fn describe(&self) -> String {
        match self {
            Departure::Terminating => "the autoscaling group is terminating the instance".into(),
            Departure::Spot { action, at } => {
                let secs = at
                    .duration_since(SystemTime::now())
                    .unwrap_or_default()
                    .as_secs();
                format!("spot interruption ({action} in {secs}s)")
            }
            Departure::Requested => "kraken-agent leave".into(),
            Departure::PowerOff => "the machine is powering off".into(),
        }
    }
}

/// Polls IMDS until the instance is going away. An IMDS that fails is
/// logged and asked again: losing the watcher must not end the agent.
pub async fn departure(imds: &ImdsIdentity, poll: Duration) -> Departure {
    let mut warned = false;
    loop {
        let state = imds.target_lifecycle_state().await;
        let spot = imds.spot_notice().await;
        match (state, spot) {
            (_, Ok(Some(notice))) => {
                return Departure::Spot {
                    action: notice.action,
                    at: notice.time,
                };
            }
            (Ok(Some(TargetState::Terminated)), _) => return Departure::Terminating,
            (Err(e), _) | (_, Err(e)) if !warned => {
                log::warn!(
                    "lifecycle: IMDS: {e}; asking again every {}s",
                    poll.as_secs()
                );
                warned = true;
            }
            _ => {}
        }
        tokio::time::sleep(poll).await;
    }
}

/// What leaving and the hooks need, read the way the boot reads it (the
/// same steps 1 to 3), so that `leave` works whether or not `run`
/// converged.
pub struct Context {
    pub settings: Settings,
    pub identity: Identity,
    pub spec: NodeSpec,
    pub store: Store,
    pub hooks: Option<Hooks>,
}

impl Context {
    pub async fn load(settings: &Settings) -> Result<Context, BootError> {
        let provider = ImdsIdentity::new(tuning::imds(settings), tuning::aws(settings));
        let identity = crate::steps::node::identity(&provider).await?;
        let spec = crate::steps::node::intent(&identity, settings)?;
        let sdk = kraken_aws::sdk_config(&identity.region, &tuning::aws(settings)).await;
        let store =
            Store::from_settings(&settings.secrets, &spec.cluster, &sdk, &ApiCalls::default())?;
        let hooks = Hooks::new(settings, &identity, &sdk);
        Ok(Context {
            settings: settings.clone(),
            identity,
            spec,
            store,
            hooks,
        })
    }
}

/// AWS sets this tag on every instance a group launches.
pub const GROUP_TAG: &str = "aws:autoscaling:groupName";

/// The group's hooks for this instance.
#[derive(Clone)]
pub struct Hooks {
    calls: LifecycleHooks,
    pub launching: String,
    pub terminating: String,
}

impl Hooks {
    /// `None` when the instance is in no group this agent knows of.
    pub fn new(
        settings: &Settings,
        identity: &Identity,
        sdk: &aws_config::SdkConfig,
    ) -> Option<Hooks> {
        let group = settings
            .lifecycle
            .group
            .clone()
            .or_else(|| identity.tags.get(GROUP_TAG).cloned())?;
        Some(Hooks {
            calls: LifecycleHooks::new(sdk, &ApiCalls::default(), &group, &identity.instance_id),
            launching: settings.lifecycle.launching_hook.clone(),
            terminating: settings.lifecycle.terminating_hook.clone(),
        })
    }

    pub fn group(&self) -> &str {
        &self.calls.group
    }

    /// Completes `hook`; what happened, in words for the report. Throttling
    /// and network trouble are tried again a few times: the group waits
    /// for this call until the hook's timeout.
    pub async fn complete(&self, hook: &str, result: HookResult) -> String {
        let mut delay = Duration::from_secs(1);
        for attempt in 1..=5 {
            match self.calls.complete(hook, result).await {
                Ok(HookAnswer::Accepted) => {
                    log::info!("lifecycle: completed hook {hook} of group {}", self.group());
                    return "completed".into();
                }
                Ok(HookAnswer::NoAction(why)) => {
                    log::info!(
                        "lifecycle: no action of hook {hook} waits for this instance ({why})"
                    );
                    return format!("no action waiting: {why}");
                }
                Err(f) if f.is_transient() && attempt < 5 => {
                    log::warn!(
                        "lifecycle: {}; trying again",
                        f.describe("autoscaling:CompleteLifecycleAction")
                    );
                    tokio::time::sleep(delay).await;
                    delay *= 2;
                }
                Err(f) => {
                    let said = f.describe("autoscaling:CompleteLifecycleAction");
                    log::error!(
                        "lifecycle: {said}; the group applies the hook's default result at its timeout"
                    );
                    return format!("failed: {said}");
                }
            }
        }
        unreachable!("the last attempt returns")
    }

    /// Heartbeats `hook` every `every` until dropped, while the node
    /// drains or waits for a replacement. Stops when no action waits.
    pub async fn heartbeat_forever(&self, hook: &str, every: Duration) {
        loop {
            tokio::time::sleep(every).await;
            match self.calls.heartbeat(hook).await {
                Ok(HookAnswer::Accepted) => log::debug!("lifecycle: heartbeat for {hook}"),
                Ok(HookAnswer::NoAction(why)) => {
                    log::info!("lifecycle: no heartbeat needed for {hook} ({why})");
                    return;
                }
                Err(f) => log::warn!(
                    "lifecycle: {}",
                    f.describe("autoscaling:RecordLifecycleActionHeartbeat")
                ),
            }
        }
    }
}
