//! Watching the servers while something happens to them: each server's
//! Consul and Nomad main PID (`systemctl show -p MainPID` in its VM) and
//! whether its API answers, and whether the cluster has a Consul and a
//! Nomad leader as the nodes that stay up see it. From the samples: how
//! often each server restarted, how many were down at once, the longest
//! time without a leader.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Result;
use serde::Serialize;
use tokio::sync::Notify;

use crate::api::{Api, Tokens, consul_url, nomad_url};
use crate::cluster::Cluster;

/// Tells the background loops to finish.
#[derive(Default)]
pub struct Stop {
    stopped: AtomicBool,
    notify: Notify,
}

impl Stop {
    pub fn stop(&self) {
        self.stopped.store(true, Ordering::SeqCst);
        self.notify.notify_waiters();
    }

    pub fn is_stopped(&self) -> bool {
        self.stopped.load(Ordering::SeqCst)
    }

    /// Sleeps `d`, or less when stopped meanwhile; whether it is stopped.
    pub async fn pause(&self, d: Duration) -> bool {
        if !self.is_stopped() {
            tokio::select! {
                () = tokio::time::sleep(d) => {}
                () = self.notify.notified() => {}
            }
        }
        self.is_stopped()
    }
}

/// A server VM to watch.
#[derive(Debug, Clone)]
pub struct Server {
    pub name: String,
    pub address: String,
    /// The VM's PID 1, for `nsenter`.
    pub init: u32,
    pub consul: bool,
    pub nomad: bool,
}

/// What is watched, and how often.
#[derive(Debug, Clone)]
pub struct Targets {
    pub servers: Vec<Server>,
    /// Nodes that stay up (the clients), asked for the leader: a server
    /// that restarts cannot say whether the others have one.
    pub observers: Vec<String>,
    pub every: Duration,
    /// PIDs are read at most this often (a restart between two reads still
    /// shows as a new PID).
    pub pids_every: Duration,
    /// Whether each server's own API is asked too (for "down").
    pub apis: bool,
}

impl Targets {
    /// The running servers and clients of `cluster`.
    pub fn of(cluster: &Cluster, every: Duration, pids_every: Duration, apis: bool) -> Targets {
        let nodes = cluster.nodes();
        let servers = nodes
            .iter()
            .filter(|n| n.group.is_consul_server() || n.group.is_nomad_server())
            .filter_map(|n| {
                Some(Server {
                    name: n.vm.name.clone(),
                    address: n.vm.address.clone(),
                    init: n.vm.init_pid()?,
                    consul: n.group.is_consul_server(),
                    nomad: n.group.is_nomad_server(),
                })
            })
            .collect();
        let observers = nodes
            .iter()
            .filter(|n| !n.group.is_consul_server() && !n.group.is_nomad_server())
            .map(|n| n.vm.address.clone())
            .collect();
        Targets {
            servers,
            observers,
            every,
            pids_every,
            apis,
        }
    }
}

/// One server at one instant. A PID of `None`: not read this time.
#[derive(Debug, Clone, Default)]
struct Look {
    consul_pid: Option<u32>,
    nomad_pid: Option<u32>,
    consul_api: bool,
    nomad_api: bool,
}

#[derive(Debug, Clone)]
struct Sample {
    /// Seconds since the monitor started.
    at: f64,
    consul_leader: bool,
    nomad_leader: bool,
    servers: Vec<Look>,
}

/// A running monitor: its samples so far.
pub struct Monitor {
    targets: Targets,
    samples: Arc<Mutex<Vec<Sample>>>,
    stop: Arc<Stop>,
    task: tokio::task::JoinHandle<()>,
}

/// `MainPID` of consul.service and nomad.service in the VM (0: not
/// running).
async fn main_pids(init: u32) -> Option<(u32, u32)> {
    let out = tokio::process::Command::new("nsenter")
        .args(["-t", &init.to_string(), "-a", "--"])
        .args(["systemctl", "show", "-p", "MainPID", "--value"])
        .args(["consul.service", "nomad.service"])
        .output()
        .await
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    // One value per unit, units separated by an empty line.
    let mut pids = text
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| l.trim().parse::<u32>().ok());
    Some((pids.next()??, pids.next()??))
}

const LOOK_TIMEOUT: Duration = Duration::from_secs(2);

/// Whether the server answers at all. Any HTTP status counts: while the
/// servers elect a new leader every Nomad server answers
/// `/v1/status/leader` with a 500 ("No cluster leader"), and that is one
/// election (measured as time without a leader), not servers down.
async fn answers(api: &Api, url: &str, token: Option<(&str, &str)>) -> bool {
    api.get_within(url, token, LOOK_TIMEOUT).await.is_ok()
}

/// Whether any observer names a leader.
async fn has_leader(
    api: Arc<Api>,
    tokens: Tokens,
    observers: Vec<String>,
    url: fn(&str, &str) -> String,
) -> bool {
    let looks = observers.into_iter().map(|o| {
        let (api, tokens) = (api.clone(), tokens.clone());
        async move {
            // Nomad's token; Consul ignores the header.
            let token = tokens.nomad_header();
            matches!(
                api.get_within(&url(&o, "/v1/status/leader"), token, LOOK_TIMEOUT).await,
                Ok((200, v)) if v.as_str().is_some_and(|l| !l.is_empty())
            )
        }
    });
    all(looks).await.into_iter().any(|b| b == Some(true))
}

/// Runs the futures at once (as tasks); their outputs in order, `None`
/// for one that panicked.
pub async fn all<T, F>(futures: impl IntoIterator<Item = F>) -> Vec<Option<T>>
where
    T: Send + 'static,
    F: Future<Output = T> + Send + 'static,
{
    let mut set = tokio::task::JoinSet::new();
    let mut out = Vec::new();
    for (i, f) in futures.into_iter().enumerate() {
        set.spawn(async move { (i, f.await) });
        out.push(None);
    }
    while let Some(done) = set.join_next().await {
        if let Ok((i, v)) = done {
            out[i] = Some(v);
        }
    }
    out
}

async fn look(api: Arc<Api>, tokens: Tokens, server: Server, pids: bool, apis: bool) -> Look {
    let (consul_pid, nomad_pid) = if pids {
        match main_pids(server.init).await {
            Some((c, n)) => (Some(c), Some(n)),
            None => (None, None),
        }
    } else {
        (None, None)
    };
    let (consul_api, nomad_api) = if apis {
        let (consul, nomad) = (
            consul_url(&server.address, "/v1/status/leader"),
            nomad_url(&server.address, "/v1/status/leader"),
        );
        tokio::join!(
            answers(&api, &consul, None),
            answers(&api, &nomad, tokens.nomad_header()),
        )
    } else {
        (true, true)
    };
    Look {
        consul_pid,
        nomad_pid,
        consul_api,
        nomad_api,
    }
}

impl Monitor {
    pub fn start(api: Arc<Api>, tokens: Tokens, targets: Targets) -> Monitor {
        let samples = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(Stop::default());
        let started = Instant::now();
        let task = tokio::spawn({
            let (samples, stop, targets) = (samples.clone(), stop.clone(), targets.clone());
            async move {
                let mut pids_read = None::<Instant>;
                loop {
                    let tick = Instant::now();
                    let pids = pids_read.is_none_or(|t| t.elapsed() >= targets.pids_every);
                    if pids {
                        pids_read = Some(tick);
                    }
                    let looks = targets
                        .servers
                        .iter()
                        .map(|s| look(api.clone(), tokens.clone(), s.clone(), pids, targets.apis));
                    let observers = targets.observers.clone();
                    let (servers, consul_leader, nomad_leader) = tokio::join!(
                        all(looks),
                        has_leader(api.clone(), tokens.clone(), observers.clone(), consul_url),
                        has_leader(api.clone(), tokens.clone(), observers, nomad_url),
                    );
                    let sample = Sample {
                        at: tick.duration_since(started).as_secs_f64(),
                        consul_leader,
                        nomad_leader,
                        servers: servers.into_iter().map(Option::unwrap_or_default).collect(),
                    };
                    samples
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .push(sample);
                    if stop
                        .pause(targets.every.saturating_sub(tick.elapsed()))
                        .await
                    {
                        break;
                    }
                }
            }
        });
        Monitor {
            targets,
            samples,
            stop,
            task,
        }
    }

    /// What the samples so far show.
    pub fn summary(&self) -> Summary {
        let samples = self.samples.lock().unwrap_or_else(|e| e.into_inner());
        summarise(&self.targets, &samples)
    }

    /// Stops sampling; what it saw.
    pub async fn finish(mut self) -> Summary {
        self.stop.stop();
        let _ = (&mut self.task).await;
        self.summary()
    }
}

/// Consul's or Nomad's servers over the watch.
#[derive(Debug, Clone, Default, Serialize)]
pub struct SystemSummary {
    /// Per server: how many times its process was replaced.
    pub restarts: BTreeMap<String, u32>,
    /// Per server: when (seconds after the start of the watch) it ran a new
    /// process.
    pub restarted_at_s: BTreeMap<String, Vec<f64>>,
    /// The most servers down (not running, or their API not answering) at
    /// one instant. Only with `apis`.
    pub max_down_at_once: usize,
    /// Per server: how long it was down in all.
    pub down_s: BTreeMap<String, f64>,
    /// When (seconds after the start of the watch) two or more were down,
    /// and which: the first ten such samples.
    pub overlaps: Vec<(f64, Vec<String>)>,
    pub longest_leaderless_s: f64,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Summary {
    pub samples: usize,
    /// Samples in which every server's PIDs were read: without any, no
    /// restart could have been seen.
    pub pid_samples: usize,
    pub watched_s: f64,
    pub consul: SystemSummary,
    pub nomad: SystemSummary,
    /// The longer of the two.
    pub longest_leaderless_s: f64,
}

impl Summary {
    pub fn server_restarts(&self) -> u32 {
        self.consul.restarts.values().sum::<u32>() + self.nomad.restarts.values().sum::<u32>()
    }
}

/// The longest run of samples without a leader, from its first sample to
/// the next sample with one (or the last sample).
fn longest_leaderless(samples: &[Sample], leader: fn(&Sample) -> bool) -> f64 {
    let mut longest: f64 = 0.0;
    let mut since = None;
    for s in samples {
        match (leader(s), since) {
            (false, None) => since = Some(s.at),
            (true, Some(t)) => {
                longest = longest.max(s.at - t);
                since = None;
            }
            _ => {}
        }
    }
    if let (Some(t), Some(last)) = (since, samples.last()) {
        longest = longest.max(last.at - t);
    }
    longest
}

fn system(
    targets: &Targets,
    samples: &[Sample],
    runs: fn(&Server) -> bool,
    pid: fn(&Look) -> Option<u32>,
    api: fn(&Look) -> bool,
    leader: fn(&Sample) -> bool,
) -> SystemSummary {
    let mut out = SystemSummary {
        longest_leaderless_s: longest_leaderless(samples, leader),
        ..SystemSummary::default()
    };
    let watched: Vec<(usize, &Server)> = targets
        .servers
        .iter()
        .enumerate()
        .filter(|(_, s)| runs(s))
        .collect();
    for &(i, server) in &watched {
        let mut last = None;
        let (mut restarts, mut at) = (0, Vec::new());
        for s in samples {
            // 0 between the old process and the new one.
            if let Some(p) = s.servers.get(i).and_then(pid).filter(|p| *p != 0) {
                if last.is_some_and(|l| l != p) {
                    restarts += 1;
                    at.push((s.at * 10.0).round() / 10.0);
                }
                last = Some(p);
            }
        }
        out.restarts.insert(server.name.clone(), restarts);
        out.restarted_at_s.insert(server.name.clone(), at);
    }
    if targets.apis {
        let mut down_s: BTreeMap<String, f64> = BTreeMap::new();
        for (k, s) in samples.iter().enumerate() {
            let span = samples.get(k + 1).map_or(0.0, |n| n.at - s.at);
            let mut down = Vec::new();
            for &(i, server) in &watched {
                let Some(look) = s.servers.get(i) else {
                    continue;
                };
                if pid(look) == Some(0) || !api(look) {
                    let why = if pid(look) == Some(0) {
                        "stopped"
                    } else {
                        "silent"
                    };
                    down.push(format!("{} {why}", server.name));
                    *down_s.entry(server.name.clone()).or_default() += span;
                }
            }
            out.max_down_at_once = out.max_down_at_once.max(down.len());
            if down.len() >= 2 && out.overlaps.len() < 10 {
                out.overlaps.push(((s.at * 10.0).round() / 10.0, down));
            }
        }
        out.down_s = down_s
            .into_iter()
            .map(|(k, v)| (k, (v * 10.0).round() / 10.0))
            .collect();
    }
    out
}

fn summarise(targets: &Targets, samples: &[Sample]) -> Summary {
    let consul = system(
        targets,
        samples,
        |s| s.consul,
        |l| l.consul_pid,
        |l| l.consul_api,
        |s| s.consul_leader,
    );
    let nomad = system(
        targets,
        samples,
        |s| s.nomad,
        |l| l.nomad_pid,
        |l| l.nomad_api,
        |s| s.nomad_leader,
    );
    let pid_samples = samples
        .iter()
        .filter(|s| {
            s.servers
                .iter()
                .all(|l| l.consul_pid.is_some() && l.nomad_pid.is_some())
        })
        .count();
    Summary {
        samples: samples.len(),
        pid_samples,
        watched_s: samples.last().map_or(0.0, |s| s.at),
        longest_leaderless_s: consul.longest_leaderless_s.max(nomad.longest_leaderless_s),
        consul,
        nomad,
    }
}

/// Waits until no server's Consul or Nomad has changed process for
/// `quiet` (restarts the agents queued, after a server replacement say,
/// are over), or fails after `timeout`.
pub async fn wait_quiet(targets: &Targets, quiet: Duration, timeout: Duration) -> Result<()> {
    let started = Instant::now();
    let mut last = Vec::new();
    let mut since = Instant::now();
    loop {
        let pids = all(targets.servers.iter().map(|s| main_pids(s.init))).await;
        if pids != last {
            last = pids;
            since = Instant::now();
        } else if since.elapsed() >= quiet {
            return Ok(());
        }
        if started.elapsed() > timeout {
            anyhow::bail!(
                "the servers' Consul and Nomad kept restarting for {}s: {last:?}",
                timeout.as_secs()
            );
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}
