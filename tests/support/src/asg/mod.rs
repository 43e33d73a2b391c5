//! The two autoscaling lifecycle calls moto lacks, `CompleteLifecycleAction`
//! and `RecordLifecycleActionHeartbeat`, served in front of moto.
//!
//! [`LifecycleFake`] is an HTTP server to point the SDK's autoscaling
//! endpoint at. It answers those two actions itself and forwards every other
//! request to moto unchanged, so groups and hooks are made and described
//! with moto's real API (`CreateAutoScalingGroup`, `PutLifecycleHook`). The
//! test, playing the group, begins an action with [`LifecycleFake::begin`]:
//! the instance then waits on that hook until the agent completes the action,
//! or until its heartbeat timeout (moved by heartbeats, capped by the global
//! timeout) applies the hook's default result. Each end is an [`Outcome`].
//!
//! The fake does not move instances between states: what an outcome means
//! for the instance (launch it, terminate it) is the harness's to do.

mod actions;
mod query;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use aws_sdk_autoscaling::config::{BehaviorVersion, Credentials, Region};
use tokio::sync::watch;
use tokio::task::JoinHandle;

pub use actions::{EndedBy, Hook, LifecycleResult, Outcome, Pending, global_timeout};

use actions::Actions;

/// Why [`LifecycleFake::begin`] refused to start an action.
#[derive(Debug, thiserror::Error)]
pub enum BeginError {
    #[error(
        "autoscaling group {0:?} does not exist in moto: create it first (CreateAutoScalingGroup)"
    )]
    NoGroup(String),
    #[error(
        "lifecycle hook {hook:?} does not exist on group {group:?} in moto: create it first (PutLifecycleHook)"
    )]
    NoHook { group: String, hook: String },
    #[error("instance {0} already waits on a lifecycle hook: complete it or let it time out first")]
    InProgress(String),
    #[error("moto's hook {hook:?} is unusable: {why}")]
    BadHook { hook: String, why: String },
    #[error("asking moto ({endpoint}) failed: {detail}")]
    Moto { endpoint: String, detail: String },
}

/// How the fake runs.
#[derive(Clone, Debug)]
pub struct Options {
    /// Wall-clock seconds per hook second. AWS accepts heartbeat timeouts of
    /// 30 to 7200 s; with 0.05, a 30 s hook times out after 1.5 s, so tests
    /// keep realistic hooks without waiting. 1 (the default) is real time.
    pub time_scale: f64,
}

impl Default for Options {
    fn default() -> Self {
        Options { time_scale: 1.0 }
    }
}

/// A running fake; dropping it stops the server (pending actions' clocks
/// stop with the runtime or when they end).
pub struct LifecycleFake {
    addr: SocketAddr,
    shared: Arc<Shared>,
    stop: watch::Sender<()>,
    task: JoinHandle<()>,
}

pub(crate) struct Shared {
    pub(crate) actions: Arc<Actions>,
    pub(crate) moto: MotoApi,
}

/// moto, as the fake reads it (hooks and groups) and forwards to it.
pub(crate) struct MotoApi {
    pub(crate) endpoint: String,
    pub(crate) sdk: aws_sdk_autoscaling::Client,
    pub(crate) http: reqwest::Client,
}

impl MotoApi {
    fn new(endpoint: &str) -> MotoApi {
        let config = aws_sdk_autoscaling::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .endpoint_url(endpoint)
            .region(Region::new("us-east-1"))
            .credentials_provider(Credentials::new("test", "test", None, None, "moto"))
            .build();
        MotoApi {
            endpoint: endpoint.trim_end_matches('/').to_owned(),
            sdk: aws_sdk_autoscaling::Client::from_conf(config),
            http: reqwest::Client::new(),
        }
    }

    fn error(&self, e: impl std::error::Error) -> BeginError {
        BeginError::Moto {
            endpoint: self.endpoint.clone(),
            detail: aws_sdk_autoscaling::error::DisplayErrorContext(e).to_string(),
        }
    }

    pub(crate) async fn group_exists(&self, group: &str) -> Result<bool, BeginError> {
        let out = (self.sdk.describe_auto_scaling_groups())
            .auto_scaling_group_names(group)
            .send()
            .await
            .map_err(|e| self.error(e))?;
        Ok(!out.auto_scaling_groups().is_empty())
    }

    /// The hook as moto describes it; `None` when it does not exist.
    async fn hook(&self, group: &str, name: &str) -> Result<Option<Hook>, BeginError> {
        let out = (self.sdk.describe_lifecycle_hooks())
            .auto_scaling_group_name(group)
            .lifecycle_hook_names(name)
            .send()
            .await
            .map_err(|e| self.error(e))?;
        let Some(hook) = out
            .lifecycle_hooks()
            .iter()
            .find(|h| h.lifecycle_hook_name() == Some(name))
        else {
            return Ok(None);
        };
        let bad = |why: &str| BeginError::BadHook {
            hook: name.to_owned(),
            why: why.to_owned(),
        };
        let timeout = hook
            .heartbeat_timeout()
            .ok_or_else(|| bad("no HeartbeatTimeout"))?;
        let timeout = u64::try_from(timeout).map_err(|_| bad("a negative HeartbeatTimeout"))?;
        let default_result = (hook.default_result())
            .and_then(LifecycleResult::parse)
            .ok_or_else(|| bad("DefaultResult is neither CONTINUE nor ABANDON"))?;
        Ok(Some(Hook {
            group: group.to_owned(),
            name: name.to_owned(),
            transition: hook.lifecycle_transition().unwrap_or_default().to_owned(),
            heartbeat_timeout: Duration::from_secs(timeout),
            default_result,
        }))
    }
}

impl LifecycleFake {
    /// Serves on `bind` (port 0 picks one) in front of moto at `moto_url`
    /// (e.g. `http://127.0.0.1:5000`), in real time.
    pub async fn serve(bind: SocketAddr, moto_url: &str) -> std::io::Result<LifecycleFake> {
        Self::serve_with(bind, moto_url, Options::default()).await
    }

    pub async fn serve_with(
        bind: SocketAddr,
        moto_url: &str,
        options: Options,
    ) -> std::io::Result<LifecycleFake> {
        if !(options.time_scale > 0.0 && options.time_scale.is_finite()) {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!(
                    "time_scale must be a positive number, not {}",
                    options.time_scale
                ),
            ));
        }
        let listener = tokio::net::TcpListener::bind(bind).await?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            actions: Actions::new(options.time_scale),
            moto: MotoApi::new(moto_url),
        });
        let app = axum::Router::new()
            .fallback(query::handle)
            .with_state(shared.clone());
        let (stop, mut stopped) = watch::channel(());
        let task = tokio::spawn(async move {
            let shutdown = async move {
                let _ = stopped.changed().await;
            };
            if let Err(e) = axum::serve(listener, app)
                .with_graceful_shutdown(shutdown)
                .await
            {
                eprintln!("lifecycle fake: server failed: {e}");
            }
        });
        Ok(LifecycleFake {
            addr,
            shared,
            stop,
            task,
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://<addr>`: the SDK's autoscaling endpoint
    /// (`AWS_ENDPOINT_URL_AUTO_SCALING`, or `endpoint_url` in code).
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Puts `instance_id` in the wait state of `group`'s `hook`, as the group
    /// does when it launches or terminates the instance, and starts the
    /// hook's heartbeat timeout. Returns the action's token
    /// (`LifecycleActionToken`). The group and hook must exist in moto.
    pub async fn begin(
        &self,
        group: &str,
        hook: &str,
        instance_id: &str,
    ) -> Result<String, BeginError> {
        let moto = &self.shared.moto;
        if !moto.group_exists(group).await? {
            return Err(BeginError::NoGroup(group.to_owned()));
        }
        let hook = moto
            .hook(group, hook)
            .await?
            .ok_or_else(|| BeginError::NoHook {
                group: group.to_owned(),
                hook: hook.to_owned(),
            })?;
        (self.shared.actions.begin(hook, instance_id))
            .ok_or_else(|| BeginError::InProgress(instance_id.to_owned()))
    }

    /// The instance's latest ended action; `None` while it waits on a hook
    /// or if it never did.
    pub fn outcome(&self, instance_id: &str) -> Option<Outcome> {
        self.shared.actions.outcome(instance_id)
    }

    /// Waits up to `timeout` for [`Self::outcome`] to be `Some`.
    pub async fn wait_outcome(&self, instance_id: &str, timeout: Duration) -> Option<Outcome> {
        self.shared.actions.wait_outcome(instance_id, timeout).await
    }

    /// Every ended action, oldest first, with its instance id.
    pub fn outcomes(&self) -> Vec<(String, Outcome)> {
        self.shared.actions.outcomes()
    }

    /// The actions in progress.
    pub fn pending(&self) -> Vec<Pending> {
        self.shared.actions.pending()
    }

    /// Stops the server and waits (a few seconds at most) for it.
    pub async fn shutdown(self) {
        drop(self.stop);
        let _ = tokio::time::timeout(Duration::from_secs(5), self.task).await;
    }
}
