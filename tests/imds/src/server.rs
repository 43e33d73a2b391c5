//! Starting the fake, and the handle that changes it while it runs.

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use axum::Router;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::config::{
    Config, Faults, InstanceData, SpotInstanceAction, TargetLifecycleState, TokenMode, validate,
};
use crate::service::handle;
use crate::state::{Inner, Shared, Stats};

/// Entry point; see [`FakeImdsHandle`] for controlling a running fake.
pub struct FakeImds;

impl FakeImds {
    /// Serves `data` on `bind` (port 0 picks a free port) with no faults.
    pub async fn start(bind: SocketAddr, data: InstanceData) -> io::Result<FakeImdsHandle> {
        let config = Config {
            instance: data,
            ..Config::default()
        };
        Self::start_with(bind, config).await
    }

    pub async fn start_with(bind: SocketAddr, config: Config) -> io::Result<FakeImdsHandle> {
        validate(&config.instance)?;
        let listener = tokio::net::TcpListener::bind(bind).await?;
        let addr = listener.local_addr()?;
        let (stop_tx, stop) = watch::channel(());
        let shared = Arc::new(Shared {
            inner: Mutex::new(Inner {
                data: config.instance,
                mode: config.token_mode,
                tokens: HashMap::new(),
                stats: Stats::default(),
            }),
            faults: watch::Sender::new(config.faults),
            stop: stop.clone(),
            started: SystemTime::now(),
        });
        let app = Router::new().fallback(handle).with_state(shared.clone());
        let mut stopped = stop;
        let task = tokio::spawn(async move {
            let shutdown = async move {
                let _ = stopped.changed().await;
            };
            if let Err(e) = axum::serve(listener, app)
                .with_graceful_shutdown(shutdown)
                .await
            {
                log::error!("fake IMDS server failed: {e}");
            }
        });
        Ok(FakeImdsHandle {
            addr,
            shared,
            stop: stop_tx,
            task,
        })
    }
}

/// A running fake. Dropping it stops the server; requests held by a delay or
/// a hang are then answered 503.
pub struct FakeImdsHandle {
    addr: SocketAddr,
    shared: Arc<Shared>,
    stop: watch::Sender<()>,
    task: JoinHandle<()>,
}

impl FakeImdsHandle {
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The base URL to give an IMDS client, e.g. `http://127.0.0.1:41234`.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn faults(&self) -> Faults {
        self.shared.faults.borrow().clone()
    }

    pub fn set_faults(&self, faults: Faults) {
        self.shared.faults.send_replace(faults);
    }

    /// Delays every response, or only those whose path starts with `prefix`.
    pub fn set_delay(&self, delay: Duration, prefix: Option<&str>) {
        self.shared.faults.send_modify(|f| {
            f.delay_ms = delay.as_millis().try_into().unwrap_or(u64::MAX);
            f.delay_path_prefix = prefix.map(str::to_owned);
        });
    }

    /// Answers the next `count` requests, token requests included, with `status`.
    pub fn fail_next(&self, count: u32, status: u16) {
        self.shared.faults.send_modify(|f| {
            f.fail_count = count;
            f.fail_status = status;
        });
    }

    /// Makes the service accept connections but answer nothing until cleared.
    pub fn set_hang(&self, hang: bool) {
        self.shared.faults.send_modify(|f| f.hang = hang);
    }

    /// Forgets every issued token, so clients holding one get 401.
    pub fn invalidate_tokens(&self) {
        self.shared.lock().tokens.clear();
    }

    pub fn set_token_mode(&self, mode: TokenMode) {
        self.shared.lock().mode = mode;
    }

    pub fn instance_data(&self) -> InstanceData {
        self.shared.lock().data.clone()
    }

    /// Changes what the instance reports; refused, leaving the data as it
    /// was, if AWS would refuse the result (see [`validate`]).
    pub fn update_instance_data(&self, change: impl FnOnce(&mut InstanceData)) -> io::Result<()> {
        let mut inner = self.shared.lock();
        let mut data = inner.data.clone();
        change(&mut data);
        validate(&data)?;
        inner.data = data;
        Ok(())
    }

    /// What `autoscaling/target-lifecycle-state` serves; `None` takes the
    /// instance out of autoscaling (404).
    pub fn set_target_lifecycle_state(&self, state: Option<TargetLifecycleState>) {
        self.shared.lock().data.target_lifecycle_state = state;
    }

    /// Schedules a Spot interruption (`spot/instance-action`), or cancels it.
    pub fn set_spot_instance_action(&self, notice: Option<SpotInstanceAction>) -> io::Result<()> {
        self.update_instance_data(|d| d.spot_instance_action = notice)
    }

    /// Replaces the instance, token mode and faults at once, as the binary
    /// does when its file changes. Issued tokens stay valid and the counts
    /// are kept. Refused, changing nothing, if the instance is invalid.
    pub fn reload(&self, config: Config) -> io::Result<()> {
        validate(&config.instance)?;
        let mut inner = self.shared.lock();
        inner.data = config.instance;
        inner.mode = config.token_mode;
        self.shared.faults.send_replace(config.faults);
        Ok(())
    }

    pub fn stats(&self) -> Stats {
        self.shared.lock().stats.clone()
    }

    pub fn reset_stats(&self) {
        self.shared.lock().stats = Stats::default();
    }

    /// Stops the server and waits (a few seconds at most) for it to finish.
    pub async fn shutdown(self) {
        drop(self.stop);
        let _ = tokio::time::timeout(Duration::from_secs(5), self.task).await;
    }
}
