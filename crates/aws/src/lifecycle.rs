//! The instance's own lifecycle hooks: the agent completes them (and
//! heartbeats them while it drains or waits for a replacement), so an
//! autoscaling group moves on only when the node is really in or out.

use aws_config::SdkConfig;

use crate::{ApiCalls, Failure};

/// How the instance leaves its `Pending:Wait` or `Terminating:Wait` state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HookResult {
    Continue,
    /// On launch: the group terminates the instance and launches another.
    Abandon,
}

impl HookResult {
    fn as_str(self) -> &'static str {
        match self {
            HookResult::Continue => "CONTINUE",
            HookResult::Abandon => "ABANDON",
        }
    }
}

/// What the group said.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HookAnswer {
    Accepted,
    /// No action of this hook is waiting for the instance: the hook does
    /// not exist, the action timed out or was completed already, or the
    /// instance did not go through the hook (AWS: `ValidationError`, "No
    /// active Lifecycle Action found with instance ID ...").
    NoAction(String),
}

/// One autoscaling group's lifecycle calls for one instance.
#[derive(Debug, Clone)]
pub struct LifecycleHooks {
    client: aws_sdk_autoscaling::Client,
    pub group: String,
    pub instance_id: String,
}

impl LifecycleHooks {
    pub fn new(sdk: &SdkConfig, calls: &ApiCalls, group: &str, instance_id: &str) -> Self {
        let config = aws_sdk_autoscaling::config::Builder::from(sdk)
            .interceptor(calls.clone())
            .build();
        LifecycleHooks {
            client: aws_sdk_autoscaling::Client::from_conf(config),
            group: group.to_owned(),
            instance_id: instance_id.to_owned(),
        }
    }

    /// `autoscaling:CompleteLifecycleAction`.
    pub async fn complete(&self, hook: &str, result: HookResult) -> Result<HookAnswer, Failure> {
        let answer = self
            .client
            .complete_lifecycle_action()
            .auto_scaling_group_name(&self.group)
            .lifecycle_hook_name(hook)
            .instance_id(&self.instance_id)
            .lifecycle_action_result(result.as_str())
            .send()
            .await;
        match answer {
            Ok(_) => Ok(HookAnswer::Accepted),
            Err(e) => no_action(Failure::classify(&e)),
        }
    }

    /// `autoscaling:RecordLifecycleActionHeartbeat`: the hook's timeout
    /// starts over.
    pub async fn heartbeat(&self, hook: &str) -> Result<HookAnswer, Failure> {
        let answer = self
            .client
            .record_lifecycle_action_heartbeat()
            .auto_scaling_group_name(&self.group)
            .lifecycle_hook_name(hook)
            .instance_id(&self.instance_id)
            .send()
            .await;
        match answer {
            Ok(_) => Ok(HookAnswer::Accepted),
            Err(e) => no_action(Failure::classify(&e)),
        }
    }
}

fn no_action(failure: Failure) -> Result<HookAnswer, Failure> {
    match failure {
        Failure::Rejected { code, message } if code == "ValidationError" => {
            Ok(HookAnswer::NoAction(message))
        }
        other => Err(other),
    }
}
