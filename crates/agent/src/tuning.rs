//! What each step's crate takes, derived from `agent.toml`: the one place
//! where the file's seconds and counts become timeouts, attempts and
//! backoffs.

use std::time::Duration;

use kraken_bootstrap::LeaseSettings;
use kraken_discovery::{Backoff, CallBudget};
use kraken_settings::Settings;
use kraken_start::Deadlines;

pub fn imds(settings: &Settings) -> kraken_identity::ImdsSettings {
    kraken_identity::ImdsSettings {
        connect_timeout: Duration::from_millis(settings.imds.connect_timeout_ms),
        read_timeout: Duration::from_millis(settings.imds.read_timeout_ms),
        attempts: settings.imds.attempts,
    }
}

pub fn aws(settings: &Settings) -> kraken_aws::AwsSettings {
    kraken_aws::AwsSettings {
        max_attempts: settings.aws.max_attempts,
        max_backoff: Duration::from_secs(settings.aws.max_backoff_secs),
        attempt_timeout: Duration::from_secs(settings.aws.attempt_timeout_secs),
        ..kraken_aws::AwsSettings::default()
    }
}

/// How long a starting service may take to answer, and a server to see a
/// leader. Those polls ask the local agent, which answers them itself: a
/// tenth of a second between them is a tenth of a second of a join.
pub fn deadlines(settings: &Settings) -> Deadlines {
    Deadlines {
        answer: Duration::from_secs(settings.start.answer_timeout_secs),
        leader: Duration::from_secs(settings.start.leader_timeout_secs),
        poll: Duration::from_millis(100),
    }
}

/// Between polls that the local agent forwards to the servers (the
/// catalog, KV): a joining fleet's reads, kept at two a second a node.
pub const REMOTE_POLL: Duration = Duration::from_millis(500);

/// The node's EC2 discovery budget (docs/benchmarks.md), full from now.
pub fn call_budget(settings: &Settings) -> CallBudget {
    CallBudget::new(
        settings.discovery.call_burst,
        Duration::from_secs(settings.discovery.call_refill_secs),
        std::time::Instant::now(),
    )
}

/// Between EC2 queries while servers are missing (jittered by the caller).
pub fn discovery_poll(settings: &Settings) -> Duration {
    Duration::from_millis(settings.discovery.poll_ms)
}

/// Between a converged server's EC2 queries (jittered by the caller).
pub fn server_refresh(settings: &Settings) -> Duration {
    Duration::from_secs(settings.discovery.server_refresh_secs)
}

/// Between retries after a discovery error, and between retries of a
/// converge that failed transiently.
pub fn discovery_backoff(settings: &Settings) -> Backoff {
    Backoff::new(
        Duration::from_secs(settings.discovery.retry_min_secs),
        Duration::from_secs(settings.discovery.retry_max_secs),
    )
}

pub fn lease(settings: &Settings) -> LeaseSettings {
    LeaseSettings {
        ttl: Duration::from_secs(settings.bootstrap.lease_ttl_secs),
        lock_delay: Duration::from_secs(settings.bootstrap.lock_delay_secs),
        ..LeaseSettings::default()
    }
}

/// How long a node waits for a secret another node makes.
pub fn secret_wait(settings: &Settings) -> Duration {
    Duration::from_secs(settings.bootstrap.token_wait_secs)
}

/// How long a client that took its servers from the published list
/// (`steps::published`) waits for its Consul to see a leader through them
/// before it asks EC2 instead. A right list joins in about a second; a
/// stale one (every server replaced since) costs this much, once.
pub const PUBLISHED_JOIN: Duration = Duration::from_secs(20);
