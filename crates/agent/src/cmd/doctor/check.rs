//! What the checks share: a check's result, the deadline, and what the
//! checks before have learnt (the context).

use std::time::Duration;

use kraken_discovery::Peers;
use kraken_identity::Identity;
use kraken_intent::NodeSpec;
use kraken_render::RenderSecrets;
use kraken_secrets::{SecretError, SecretStore, Store};
use kraken_settings::Settings;
use serde::Serialize;

use crate::tuning;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    Ok,
    /// Not run: what it needs failed earlier.
    Skip,
    Warn,
    Fail,
}

impl Level {
    pub(super) fn word(self) -> &'static str {
        match self {
            Level::Ok => "ok",
            Level::Skip => "skip",
            Level::Warn => "warn",
            Level::Fail => "fail",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Check {
    pub name: &'static str,
    pub level: Level,
    pub finding: String,
    /// Likely cause, for warn and fail.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cause: Option<String>,
    /// The next thing to run or change, for warn and fail.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next: Option<String>,
}

impl Check {
    pub(super) fn ok(name: &'static str, finding: impl Into<String>) -> Check {
        Check {
            name,
            level: Level::Ok,
            finding: finding.into(),
            cause: None,
            next: None,
        }
    }

    pub(super) fn bad(
        name: &'static str,
        level: Level,
        finding: impl Into<String>,
        cause: impl Into<String>,
        next: impl Into<String>,
    ) -> Check {
        Check {
            name,
            level,
            finding: finding.into(),
            cause: Some(cause.into()),
            next: Some(next.into()),
        }
    }

    pub(super) fn skip(name: &'static str, why: &str) -> Check {
        Check {
            name,
            level: Level::Skip,
            finding: format!("not checked: {why}"),
            cause: None,
            next: None,
        }
    }
}

/// Every check's deadline: doctor never hangs.
pub(super) const DEADLINE: Duration = Duration::from_secs(8);

pub(super) async fn timed<F: Future<Output = Check>>(name: &'static str, f: F) -> Check {
    match tokio::time::timeout(DEADLINE, f).await {
        Ok(c) => c,
        Err(_) => Check::bad(
            name,
            Level::Fail,
            format!("no answer within {}s", DEADLINE.as_secs()),
            "the service or API it asks is hung or unreachable",
            "run the check's command by hand (see docs/operations.md)",
        ),
    }
}

/// What a check needs to have been learnt before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Needs {
    Nothing,
    /// The instance identity (the `imds` check).
    Identity,
    /// The node spec (the `tags` check), and with it the AWS clients.
    Spec,
}

/// What the checks have learnt so far, for the checks after them.
pub(super) struct Context<'a> {
    pub(super) settings: &'a Settings,
    pub(super) identity: Option<Identity>,
    pub(super) spec: Option<NodeSpec>,
    pub(super) aws: Option<Aws>,
    pub(super) peers: Option<Peers>,
    pub(super) secrets: Option<RenderSecrets>,
}

/// The AWS clients of the node's region and cluster, as `run` makes them.
pub(super) struct Aws {
    pub(super) ec2: aws_sdk_ec2::Client,
    pub(super) calls: kraken_aws::ApiCalls,
    pub(super) store: Result<Store, SecretError>,
}

impl Context<'_> {
    /// Why a check that needs `needs` cannot run, if it cannot.
    pub(super) fn missing(&self, needs: Needs) -> Option<&'static str> {
        match needs {
            Needs::Nothing => None,
            _ if self.identity.is_none() => Some("the instance identity is unknown"),
            Needs::Identity => None,
            Needs::Spec if self.spec.is_none() => Some("the tags do not describe a node"),
            Needs::Spec => None,
        }
    }

    pub(super) async fn connect_aws(&mut self) {
        let (Some(identity), Some(spec)) = (&self.identity, &self.spec) else {
            return;
        };
        if self.aws.is_some() {
            return;
        }
        let sdk = kraken_aws::sdk_config(&identity.region, &tuning::aws(self.settings)).await;
        let calls = kraken_aws::ApiCalls::default();
        self.aws = Some(Aws {
            ec2: kraken_aws::ec2_client(&sdk, &calls),
            store: Store::from_settings(&self.settings.secrets, &spec.cluster, &sdk, &calls),
            calls,
        });
    }

    pub(super) fn aws(&self) -> &Aws {
        self.aws
            .as_ref()
            .expect("connect_aws runs before checks that need the spec")
    }

    pub(super) fn spec(&self) -> &NodeSpec {
        self.spec
            .as_ref()
            .expect("the runner skips checks whose spec is unknown")
    }

    pub(super) fn identity(&self) -> &Identity {
        self.identity
            .as_ref()
            .expect("the runner skips checks whose identity is unknown")
    }

    /// A token from the secret store, if this node may read it. A refusal
    /// or an outage is not the asking check's finding: the `secrets` check
    /// reports it.
    pub(super) async fn stored_token(&self, name: &str) -> Option<kraken_hashi::Token> {
        let store = self.aws.as_ref()?.store.as_ref().ok()?;
        store
            .get(name)
            .await
            .ok()
            .flatten()
            .map(|s| kraken_hashi::Token::new(s.expose()))
    }
}
