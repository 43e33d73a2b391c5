//! The pending lifecycle actions and their ends: what Amazon EC2 Auto
//! Scaling keeps for an instance held in a `Pending:Wait` or
//! `Terminating:Wait` state by a hook.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;

/// AWS caps an action's total wait, heartbeats included, at 100 times the
/// hook's heartbeat timeout or 48 hours, whichever is smaller (the hook's
/// `GlobalTimeout`; "Configure a notification target for lifecycle
/// notifications" and `LifecycleHook.GlobalTimeout` in the API reference).
pub fn global_timeout(heartbeat_timeout: Duration) -> Duration {
    (heartbeat_timeout * 100).min(Duration::from_secs(48 * 3600))
}

/// `CONTINUE` or `ABANDON`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LifecycleResult {
    Continue,
    Abandon,
}

impl LifecycleResult {
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "CONTINUE" => Some(Self::Continue),
            "ABANDON" => Some(Self::Abandon),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Continue => "CONTINUE",
            Self::Abandon => "ABANDON",
        }
    }
}

/// How an action ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EndedBy {
    /// A `CompleteLifecycleAction` call.
    Completed,
    /// Its heartbeat timeout (or the global timeout) ran out: the hook's
    /// `DefaultResult` applies.
    TimedOut,
}

/// The end of one lifecycle action.
#[derive(Clone, Debug, PartialEq)]
pub struct Outcome {
    pub group: String,
    pub hook: String,
    /// `autoscaling:EC2_INSTANCE_LAUNCHING` or `..._TERMINATING`.
    pub transition: String,
    pub token: String,
    pub result: LifecycleResult,
    pub by: EndedBy,
    /// `RecordLifecycleActionHeartbeat` calls accepted.
    pub heartbeats: u32,
    /// From `begin` to the end, in the hook's seconds: wall-clock seconds
    /// divided by the fake's time scale (so equal to them at scale 1).
    pub seconds: f64,
}

/// A lifecycle hook as moto describes it.
#[derive(Clone, Debug, PartialEq)]
pub struct Hook {
    pub group: String,
    pub name: String,
    pub transition: String,
    pub heartbeat_timeout: Duration,
    pub default_result: LifecycleResult,
}

/// An action in progress.
#[derive(Clone, Debug)]
pub struct Pending {
    pub hook: Hook,
    pub instance_id: String,
    pub token: String,
    pub heartbeats: u32,
    started: Instant,
    /// When it times out unless a heartbeat comes first (wall clock).
    deadline: Instant,
    global_deadline: Instant,
}

pub(crate) struct Actions {
    /// Wall-clock seconds per hook second.
    pub(crate) scale: f64,
    inner: Mutex<Inner>,
    /// Bumped at every end, for `wait_outcome`.
    ended: watch::Sender<u64>,
}

#[derive(Default)]
struct Inner {
    /// By instance id: an instance waits on one hook at a time.
    pending: HashMap<String, Pending>,
    /// Every end, oldest first, with its instance id.
    outcomes: Vec<(String, Outcome)>,
}

/// Why an action could not be found; the caller words the error.
pub(crate) enum Missing {
    Token(String),
    Instance(String),
}

impl Actions {
    pub(crate) fn new(scale: f64) -> Arc<Actions> {
        Arc::new(Actions {
            scale,
            inner: Mutex::new(Inner::default()),
            ended: watch::Sender::new(0),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn wall(&self, hook_time: Duration) -> Duration {
        hook_time.mul_f64(self.scale)
    }

    /// Starts an action, unless the instance already waits on one.
    pub(crate) fn begin(self: &Arc<Self>, hook: Hook, instance_id: &str) -> Option<String> {
        let now = Instant::now();
        let token = uuid::Uuid::new_v4().to_string();
        let action = Pending {
            deadline: now + self.wall(hook.heartbeat_timeout),
            global_deadline: now + self.wall(global_timeout(hook.heartbeat_timeout)),
            hook,
            instance_id: instance_id.to_owned(),
            token: token.clone(),
            heartbeats: 0,
            started: now,
        };
        {
            let mut inner = self.lock();
            if inner.pending.contains_key(instance_id) {
                return None;
            }
            inner.pending.insert(instance_id.to_owned(), action);
        }
        tokio::spawn(self.clone().clock(instance_id.to_owned(), token.clone()));
        Some(token)
    }

    /// Ends the action with its hook's default result once its deadline
    /// passes; a heartbeat moves the deadline, and the clock sleeps again.
    async fn clock(self: Arc<Self>, instance_id: String, token: String) {
        loop {
            let deadline = {
                let mut inner = self.lock();
                let Some(action) = inner.pending.get(&instance_id) else {
                    return;
                };
                if action.token != token {
                    return;
                }
                if Instant::now() >= action.deadline {
                    let result = action.hook.default_result;
                    let action = inner.pending.remove(&instance_id).expect("just seen");
                    self.end(&mut inner, action, result, EndedBy::TimedOut);
                    return;
                }
                action.deadline
            };
            tokio::time::sleep_until(deadline).await;
        }
    }

    fn end(&self, inner: &mut Inner, action: Pending, result: LifecycleResult, by: EndedBy) {
        let outcome = Outcome {
            seconds: action.started.elapsed().as_secs_f64() / self.scale,
            group: action.hook.group,
            hook: action.hook.name,
            transition: action.hook.transition,
            token: action.token,
            result,
            by,
            heartbeats: action.heartbeats,
        };
        inner.outcomes.push((action.instance_id, outcome));
        self.ended.send_modify(|n| *n += 1);
    }

    /// The action of `group`/`hook` named by its token (preferred, as AWS
    /// does when both are given) or its instance.
    fn find<'a>(
        inner: &'a mut Inner,
        group: &str,
        hook: &str,
        token: Option<&str>,
        instance_id: Option<&str>,
    ) -> Result<&'a mut Pending, Missing> {
        let matches = |a: &Pending| a.hook.group == group && a.hook.name == hook;
        let found = match (token, instance_id) {
            (Some(token), _) => inner
                .pending
                .values_mut()
                .find(|a| a.token == token && instance_id.is_none_or(|i| a.instance_id == i))
                .ok_or_else(|| Missing::Token(token.to_owned())),
            (None, Some(id)) => inner
                .pending
                .get_mut(id)
                .ok_or_else(|| Missing::Instance(id.to_owned())),
            (None, None) => unreachable!("the caller requires one of them"),
        }?;
        if matches(found) {
            Ok(found)
        } else {
            Err(match token {
                Some(token) => Missing::Token(token.to_owned()),
                None => Missing::Instance(instance_id.unwrap_or_default().to_owned()),
            })
        }
    }

    pub(crate) fn complete(
        &self,
        group: &str,
        hook: &str,
        token: Option<&str>,
        instance_id: Option<&str>,
        result: LifecycleResult,
    ) -> Result<(), Missing> {
        let mut inner = self.lock();
        let found = Self::find(&mut inner, group, hook, token, instance_id)?;
        let id = found.instance_id.clone();
        let action = inner.pending.remove(&id).expect("just found");
        self.end(&mut inner, action, result, EndedBy::Completed);
        Ok(())
    }

    /// Restarts the heartbeat timeout, within the global timeout.
    pub(crate) fn heartbeat(
        &self,
        group: &str,
        hook: &str,
        token: Option<&str>,
        instance_id: Option<&str>,
    ) -> Result<(), Missing> {
        let mut inner = self.lock();
        let action = Self::find(&mut inner, group, hook, token, instance_id)?;
        let timeout = action.hook.heartbeat_timeout.mul_f64(self.scale);
        action.deadline = (Instant::now() + timeout).min(action.global_deadline);
        action.heartbeats += 1;
        Ok(())
    }

    pub(crate) fn pending(&self) -> Vec<Pending> {
        self.lock().pending.values().cloned().collect()
    }

    pub(crate) fn outcomes(&self) -> Vec<(String, Outcome)> {
        self.lock().outcomes.clone()
    }

    /// The instance's latest outcome, unless it waits on a hook again.
    pub(crate) fn outcome(&self, instance_id: &str) -> Option<Outcome> {
        let inner = self.lock();
        if inner.pending.contains_key(instance_id) {
            return None;
        }
        let latest = inner.outcomes.iter().rev().find(|(i, _)| i == instance_id);
        latest.map(|(_, o)| o.clone())
    }

    pub(crate) async fn wait_outcome(
        &self,
        instance_id: &str,
        timeout: Duration,
    ) -> Option<Outcome> {
        let mut ended = self.ended.subscribe();
        tokio::time::timeout(timeout, async {
            loop {
                if let Some(outcome) = self.outcome(instance_id) {
                    return outcome;
                }
                // The sender lives as long as `self`.
                let _ = ended.changed().await;
            }
        })
        .await
        .ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn global_timeout_is_100_heartbeats_or_48_hours() {
        let s = Duration::from_secs;
        assert_eq!(global_timeout(s(30)), s(3000));
        assert_eq!(global_timeout(s(1728)), s(172_800));
        assert_eq!(global_timeout(s(3600)), s(172_800));
        assert_eq!(global_timeout(s(7200)), s(172_800));
    }
}
