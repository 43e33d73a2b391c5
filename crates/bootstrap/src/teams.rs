//! Teams (`[teams]` in agent.toml): for each team and environment a Nomad
//! namespace, a Nomad policy that may submit and read jobs there only,
//! and a token, stored under the team's name in the secret store
//! (`teams/<team>/<environment>/nomad-token`, a path IAM can grant per
//! team). Made by the Nomad leader's agent after the Nomad phase and at
//! every upkeep round, so a team added to a running cluster gets them
//! within a token check. Nothing is ever deleted: a team removed from the
//! file keeps its namespace, jobs, policy and token (docs/teams.md).

use serde::Serialize;

use crate::error::BootstrapError;
use crate::run::Bootstrap;

/// The secret a team's environment token is stored as.
pub fn team_secret(team: &str, environment: &str) -> String {
    format!("teams/{team}/{environment}/nomad-token")
}

/// The Nomad policy (and token name) of a team's environment.
pub fn team_policy(namespace: &str) -> String {
    format!("team-{namespace}")
}

/// The rules of a team's environment: its namespace's jobs, nothing else
/// (no other namespace, no node, agent or operator rights).
pub fn team_rules(team: &str, environment: &str, namespace: &str) -> String {
    format!(
        "# Team {team}, environment {environment}: submit and read jobs in namespace\n\
         # {namespace} only (written by kraken-agent).\n\
         namespace \"{namespace}\" {{\n  \
           capabilities = [\"list-jobs\", \"parse-job\", \"read-job\", \"submit-job\",\n                  \
           \"dispatch-job\", \"read-logs\", \"read-job-scaling\"]\n\
         }}\n"
    )
}

/// What one round made: the namespaces it created or found.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Teams {
    pub namespaces: Vec<String>,
}

impl Bootstrap<'_> {
    /// Every `(team, environment)`'s namespace, policy and stored token;
    /// idempotent (a stored token Nomad accepts is kept).
    pub async fn teams(&self, teams: &[(String, String)]) -> Result<Teams, BootstrapError> {
        let nomad = self.nomad_management().await?;
        let mut report = Teams::default();
        for (team, environment) in teams {
            let namespace = format!("{team}-{environment}");
            nomad
                .namespace_upsert(
                    &namespace,
                    &format!("team {team}, environment {environment} (kraken-agent)"),
                )
                .await
                .map_err(BootstrapError::nomad("create a team's Nomad namespace"))?;
            let policy = team_policy(&namespace);
            let rules = team_rules(team, environment, &namespace);
            let description = format!("team {team}, environment {environment}");
            self.nomad_token(
                &team_secret(team, environment),
                (&policy, &description, &rules),
            )
            .await?;
            report.namespaces.push(namespace);
        }
        Ok(report)
    }
}
