//! Users of the web service while something happens to the cluster: over
//! and over, its instances looked up through Consul and each asked
//! `GET /`, every request counted and every failure kept.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::api::{Api, Tokens};
use crate::cluster::Cluster;
use crate::monitor::Stop;
use crate::web;

/// A lookup, then the requests, then this pause.
const PAUSE: Duration = Duration::from_millis(200);
/// Failures kept for the report, the first ones.
const KEPT: usize = 10;

#[derive(Debug, Clone, Default, Serialize)]
pub struct Figures {
    /// `GET /` of an instance, plus one for each lookup that found none
    /// (a user who could not reach the service at all).
    pub requests: u64,
    pub failed_requests: u64,
    pub lookups: u64,
    /// Lookups the first Consul agent asked did not answer, answered by
    /// another one.
    pub lookup_retries: u64,
    /// Lookups listing fewer passing instances than the job runs.
    pub lookups_short: u64,
    pub first_failures: Vec<String>,
    /// Seconds from a failed request to the next one that answered,
    /// summed, and the longest such stretch: how long users saw the
    /// service down (a stretch still failing at the end counts up to then).
    pub outage_secs: f64,
    pub longest_outage_secs: f64,
    #[serde(skip)]
    failing_since: Option<Instant>,
}

impl Figures {
    fn fail(&mut self, what: String) {
        self.failed_requests += 1;
        self.failing_since.get_or_insert_with(Instant::now);
        if self.first_failures.len() < KEPT {
            self.first_failures.push(what);
        }
    }

    fn end_outage(&mut self) {
        if let Some(since) = self.failing_since.take() {
            let secs = since.elapsed().as_secs_f64();
            self.outage_secs += secs;
            self.longest_outage_secs = self.longest_outage_secs.max(secs);
        }
    }
}

/// The web service's users, running until stopped.
pub struct Traffic {
    figures: Arc<Mutex<Figures>>,
    stop: Arc<Stop>,
    task: tokio::task::JoinHandle<()>,
    started: std::time::Instant,
}

impl Traffic {
    /// Looks the service up through the Consul agents of the clients (the
    /// nodes the web service runs on, which no server change restarts),
    /// in turn, with stale reads as Consul's DNS makes them; `want`: the
    /// instances the job runs.
    pub fn start(cluster: &Cluster, tokens: Tokens, want: usize) -> Traffic {
        let agents: Vec<String> = cluster
            .nodes()
            .iter()
            .filter(|n| !n.group.is_consul_server() && !n.group.is_nomad_server())
            // A warm-pool client runs no Consul yet (`cluster warm`).
            .filter(|n| n.vm.agent_status().is_none_or(|s| s.phase != "warm"))
            .map(|n| n.vm.address.clone())
            .collect();
        let api = cluster.api.clone();
        let figures = Arc::new(Mutex::new(Figures::default()));
        let stop = Arc::new(Stop::default());
        let task = tokio::spawn({
            let (figures, stop) = (figures.clone(), stop.clone());
            async move { run(&api, &tokens, &agents, want, &figures, &stop).await }
        });
        Traffic {
            figures,
            stop,
            task,
            started: Instant::now(),
        }
    }

    pub fn figures(&self) -> Figures {
        self.figures
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// One line for the progress log.
    pub fn progress(&self) -> String {
        let f = self.figures();
        format!(
            "{} requests, {} failed, in {:.0}s",
            f.requests,
            f.failed_requests,
            self.started.elapsed().as_secs_f64()
        )
    }

    pub async fn finish(mut self) -> Figures {
        self.stop.stop();
        let _ = (&mut self.task).await;
        let mut figures = self.figures();
        figures.end_outage();
        figures
    }
}

async fn run(
    api: &Api,
    tokens: &Tokens,
    agents: &[String],
    want: usize,
    figures: &Mutex<Figures>,
    stop: &Stop,
) {
    let update =
        |f: &dyn Fn(&mut Figures)| f(&mut figures.lock().unwrap_or_else(|e| e.into_inner()));
    let mut turn = 0;
    loop {
        let mut listed = None;
        let mut errors = Vec::new();
        for k in 0..agents.len() {
            let agent = &agents[(turn + k) % agents.len()];
            match web::instances(api, agent, tokens, true).await {
                Ok(list) => {
                    listed = Some(list);
                    break;
                }
                Err(e) => errors.push(format!("{agent}: {e:#}")),
            }
        }
        turn += 1;
        update(&|f| {
            f.lookups += 1;
            if !errors.is_empty() && listed.is_some() {
                f.lookup_retries += 1;
            }
        });
        match listed {
            None => update(&|f| {
                f.requests += 1;
                f.fail(format!("lookup through Consul: {}", errors.join("; ")));
            }),
            Some(list) => {
                update(&|f| {
                    if list.len() < want {
                        f.lookups_short += 1;
                    }
                    if list.is_empty() {
                        f.requests += 1;
                        f.fail("Consul lists no passing web instance".into());
                    }
                });
                for (address, _) in &list {
                    let answer = web::ask(api, address).await;
                    update(&|f| {
                        f.requests += 1;
                        match &answer {
                            Ok(_) => f.end_outage(),
                            Err(e) => f.fail(format!("GET http://{address}/: {e:#}")),
                        }
                    });
                }
            }
        }
        if stop.pause(PAUSE).await {
            return;
        }
    }
}
