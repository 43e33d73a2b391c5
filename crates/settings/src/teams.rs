//! `[teams.<name>]`: the teams that run jobs on the cluster, each in one
//! Nomad namespace per environment (`docs/configuration.md#teams`).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// One team: the environments it deploys to.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TeamSettings {
    pub environments: Vec<String>,
}

/// One team's environment: its Nomad namespace, policy and token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TeamEnvironment {
    pub team: String,
    pub environment: String,
}

impl TeamEnvironment {
    /// The Nomad namespace, and the name of its ACL policy and token:
    /// `<team>-<environment>`.
    pub fn namespace(&self) -> String {
        format!("{}-{}", self.team, self.environment)
    }
}

/// Team and environment names: lowercase letters, digits and inner
/// hyphens, up to 40 characters each, so that `<team>-<environment>` is a
/// valid Nomad namespace and a secret store path segment.
pub const TEAM_NAME_FORM: &str = "lowercase letters, digits and inner hyphens, 1 to 40 characters";

fn valid(name: &str) -> bool {
    (1..=40).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-')
}

/// Validates `[teams]`: names, at least one environment each, no two
/// pairs with the same namespace.
pub(crate) fn validate(teams: &BTreeMap<String, TeamSettings>) -> Result<(), String> {
    let mut namespaces: BTreeMap<String, String> = BTreeMap::new();
    for (team, settings) in teams {
        if !valid(team) {
            return Err(format!(
                "teams.{team:?}: the team name; expected {TEAM_NAME_FORM}"
            ));
        }
        if settings.environments.is_empty() {
            return Err(format!(
                "teams.{team}.environments = []; expected at least one environment (e.g. [\"prod\"])"
            ));
        }
        for (i, env) in settings.environments.iter().enumerate() {
            if !valid(env) {
                return Err(format!(
                    "teams.{team}.environments[{i}] = {env:?}; expected {TEAM_NAME_FORM}"
                ));
            }
            let ns = format!("{team}-{env}");
            let key = format!("teams.{team}.environments[{i}]");
            if let Some(other) = namespaces.insert(ns.clone(), key.clone()) {
                return Err(format!(
                    "{key} = {env:?} gives Nomad namespace {ns:?}, as {other} does; \
                     expected each team and environment to name a namespace of its own"
                ));
            }
        }
    }
    Ok(())
}

/// Every team's environments, in order.
pub fn environments(teams: &BTreeMap<String, TeamSettings>) -> Vec<TeamEnvironment> {
    teams
        .iter()
        .flat_map(|(team, s)| {
            s.environments.iter().map(|env| TeamEnvironment {
                team: team.clone(),
                environment: env.clone(),
            })
        })
        .collect()
}
