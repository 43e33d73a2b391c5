//! Where log lines go, and which ones never do.
//!
//! Dependencies log at debug level with their arguments: handlebars logs
//! every helper call with its parameters, which are config values including
//! secrets. Their records are capped at `warn` whatever level the agent
//! runs at, so `KRAKEN_LOG=debug` cannot put a token in the journal.

use log::{LevelFilter, Log, Metadata, Record};

/// Targets whose debug output may carry values the agent handed them.
const CAPPED: &[&str] = &[
    "handlebars",
    "aws_config",
    "aws_runtime",
    "aws_sdk",
    "aws_smithy",
    "hyper",
    "h2",
    "reqwest",
    "rustls",
    "tracing",
];

/// Wraps a sink: the agent's own records pass at `max`, the capped
/// dependencies' only at `warn` and above.
pub struct AgentLog<L> {
    pub inner: L,
    pub max: LevelFilter,
}

impl<L: Log> Log for AgentLog<L> {
    fn enabled(&self, metadata: &Metadata) -> bool {
        let target = metadata.target();
        let capped = CAPPED.iter().any(|c| {
            target == *c
                || target.starts_with(&format!("{c}::"))
                || target.starts_with(&format!("{c}_"))
        });
        let max = if capped {
            self.max.min(LevelFilter::Warn)
        } else {
            self.max
        };
        metadata.level() <= max && self.inner.enabled(metadata)
    }

    fn log(&self, record: &Record) {
        if self.enabled(record.metadata()) {
            self.inner.log(record);
        }
    }

    fn flush(&self) {
        self.inner.flush();
    }
}

/// Installs the agent's logger: the journal (with structured fields) under
/// systemd, readable lines on stderr otherwise. `KRAKEN_LOG` sets the level.
pub fn init() {
    let max = std::env::var("KRAKEN_LOG")
        .ok()
        .and_then(|v| v.parse::<LevelFilter>().ok())
        .unwrap_or(LevelFilter::Info);
    let installed = if systemd_journal_logger::connected_to_journal() {
        systemd_journal_logger::JournalLog::new()
            .ok()
            .map(|j| j.with_extra_fields([("KRAKEN_AGENT_VERSION", env!("CARGO_PKG_VERSION"))]))
            .and_then(|j| log::set_boxed_logger(Box::new(AgentLog { inner: j, max })).ok())
            .is_some()
    } else {
        false
    };
    if !installed {
        let stderr = env_logger::Builder::new()
            .filter_level(max)
            .format_target(false)
            .build();
        let _ = log::set_boxed_logger(Box::new(AgentLog { inner: stderr, max }));
    }
    log::set_max_level(max);
}
