//! `[lifecycle]`: how the agent follows its instance's autoscaling
//! lifecycle (`docs/operations.md`, "The instance's life").

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LifecycleSettings {
    /// The autoscaling group; by default the instance's own
    /// `aws:autoscaling:groupName` tag, which AWS sets on every instance a
    /// group launches. Without either, hooks are not completed (the drain
    /// and the Raft leave still happen).
    pub group: Option<String>,
    /// The group's `autoscaling:EC2_INSTANCE_LAUNCHING` hook: completed
    /// once a server is a healthy voter, a client's node eligible.
    pub launching_hook: String,
    /// The `autoscaling:EC2_INSTANCE_TERMINATING` hook: completed once a
    /// client has drained, a server has left Raft.
    pub terminating_hook: String,
    /// How often IMDS is asked for the target lifecycle state and a spot
    /// notice (IMDS is local; AWS gives spot two minutes).
    pub poll_secs: u64,
    /// How often a hook that is still waited on gets a heartbeat; keep it
    /// well under the hook's `HeartbeatTimeout` (at least 30 s on AWS).
    pub heartbeat_secs: u64,
    /// A client's drain deadline: allocations not migrated by then are
    /// stopped. Keep it under the terminating hook's timeout.
    pub drain_deadline_secs: u64,
    /// On a spot notice the drain ends this long before EC2 takes the
    /// instance, so the node still leaves Consul and Nomad cleanly.
    pub spot_margin_secs: u64,
    /// Images a client in a warm pool pulls before the group stops it or
    /// keeps it (`docker pull`), so its first tasks start without a pull.
    pub warm_images: Vec<String>,
}

impl Default for LifecycleSettings {
    fn default() -> Self {
        LifecycleSettings {
            group: None,
            launching_hook: "kraken-launching".into(),
            terminating_hook: "kraken-terminating".into(),
            poll_secs: 5,
            heartbeat_secs: 10,
            drain_deadline_secs: 300,
            spot_margin_secs: 20,
            warm_images: Vec::new(),
        }
    }
}

impl LifecycleSettings {
    pub(crate) fn validate(&self) -> Result<(), String> {
        // AWS: 1-255 characters of [A-Za-z0-9-_/].
        let hook_ok = |h: &str| {
            !h.is_empty()
                && h.len() <= 255
                && h.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_/".contains(c))
        };
        for (key, hook) in [
            ("lifecycle.launching_hook", &self.launching_hook),
            ("lifecycle.terminating_hook", &self.terminating_hook),
        ] {
            if !hook_ok(hook) {
                return Err(format!(
                    "{key} = {hook:?}; expected a lifecycle hook name: 1-255 of A-Z a-z 0-9 - _ /"
                ));
            }
        }
        for (key, value) in [
            ("lifecycle.poll_secs", self.poll_secs),
            ("lifecycle.heartbeat_secs", self.heartbeat_secs),
            ("lifecycle.drain_deadline_secs", self.drain_deadline_secs),
        ] {
            if value == 0 {
                return Err(format!("{key} = 0; expected at least 1"));
            }
        }
        // They reach argv: a leading dash would be read as an option.
        if let Some(bad) = self
            .warm_images
            .iter()
            .find(|i| i.is_empty() || i.starts_with('-') || i.chars().any(char::is_whitespace))
        {
            return Err(format!(
                "lifecycle.warm_images has {bad:?}; expected image references like \"redis:7\""
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warm_images_that_would_be_options_are_refused_by_name() {
        let mut s = LifecycleSettings {
            warm_images: vec!["redis:7".into(), "registry.local:5000/web@sha256:ab".into()],
            ..LifecycleSettings::default()
        };
        assert_eq!(s.validate(), Ok(()));
        s.warm_images.push("--all-tags".into());
        let err = s.validate().unwrap_err();
        assert!(
            err.contains("lifecycle.warm_images") && err.contains("--all-tags"),
            "{err}"
        );
    }
}
