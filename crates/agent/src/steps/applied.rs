//! What each running service has loaded, so that restart and reload
//! decisions come from the service, not from "this run wrote a file": a
//! converge that wrote a config and then failed before the restart (a
//! timeout, a `systemctl` error, SIGTERM) restarts it at the next one.
//!
//! Each service's files reduce to three digests: its config without the
//! comments and with the tokens masked, the tokens, and its TLS files. The
//! record keeps, per service, the digests its running process loaded,
//! keyed by that process (main PID and start time), in the status
//! directory: a record names one run of a service and means nothing after
//! a reboot, when the directory is empty again. A service whose running
//! process has no record loaded what was on disk when it started: if no
//! file changed since, that is what is on disk now; otherwise it is stale.

use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use kraken_render::{RenderSecrets, Service, TlsFiles};
use kraken_settings::Settings;
use kraken_start::Action;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// The digests of what a service reads.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Loaded {
    pub config: String,
    pub tokens: String,
    pub tls: String,
}

/// One running process of a service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Instance {
    pub pid: u32,
    /// Its start time, in clock ticks since boot (`/proc/PID/stat`): with
    /// the PID, it names this process and no later one.
    pub start_ticks: u64,
}

impl Instance {
    /// The process `pid`, as `/proc` knows it now.
    pub fn of(pid: u32) -> Option<Instance> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        // The command name may hold spaces and parentheses: the fields
        // after it start after the last ')'.
        let after = &stat[stat.rfind(')')? + 2..];
        // starttime is field 22; `after` starts at field 3.
        let start_ticks = after.split_whitespace().nth(19)?.parse().ok()?;
        Some(Instance { pid, start_ticks })
    }

    /// When it started, by the wall clock.
    pub fn started(&self) -> Option<SystemTime> {
        let stat = std::fs::read_to_string("/proc/stat").ok()?;
        let btime: u64 = stat
            .lines()
            .find_map(|l| l.strip_prefix("btime "))?
            .trim()
            .parse()
            .ok()?;
        let hz = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
            .ok()
            .flatten()
            .filter(|hz| *hz > 0)? as u64;
        Some(
            SystemTime::UNIX_EPOCH
                + Duration::from_secs(btime)
                + Duration::from_millis(self.start_ticks * 1000 / hz),
        )
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Record {
    instance: Instance,
    loaded: Loaded,
}

/// The record file: `applied.json` in the status directory.
#[derive(Debug)]
pub struct Applied {
    path: PathBuf,
    records: BTreeMap<Service, Record>,
}

impl Applied {
    pub fn load(status_dir: &Path) -> Applied {
        let path = status_dir.join("applied.json");
        let records = std::fs::read(&path)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default();
        Applied { path, records }
    }

    /// What `service`, running as `instance`, needs in order to use `want`.
    /// `newest_file` is the latest modification of any of its files (for a
    /// process with no record); `tokens_reload` whether the service re-reads
    /// its tokens on reload (Consul does; Nomad's `consul` block does not).
    pub fn decide(
        &self,
        service: Service,
        instance: &Instance,
        want: &Loaded,
        newest_file: Option<SystemTime>,
        tokens_reload: bool,
    ) -> Action {
        let loaded = match self.records.get(&service) {
            Some(r) if r.instance == *instance => &r.loaded,
            _ => {
                // Started without us: it read what was there at its start.
                let current = match (newest_file, instance.started()) {
                    (Some(newest), Some(started)) => newest <= started,
                    _ => false,
                };
                return if current {
                    Action::Nothing
                } else {
                    Action::Restart
                };
            }
        };
        if loaded.config != want.config {
            Action::Restart
        } else if loaded.tokens != want.tokens {
            if tokens_reload {
                Action::Reload
            } else {
                Action::Restart
            }
        } else if loaded.tls != want.tls {
            Action::Reload
        } else {
            Action::Nothing
        }
    }

    /// [`Applied::record`], unless that is what the record says already.
    pub fn note(&mut self, service: Service, instance: Instance, loaded: Loaded) {
        let same = self
            .records
            .get(&service)
            .is_some_and(|r| r.instance == instance && r.loaded == loaded);
        if !same {
            self.record(service, instance, loaded);
        }
    }

    /// Notes that `instance` of `service` now runs with `loaded`, and
    /// saves the record (0600: the digests are of secrets).
    pub fn record(&mut self, service: Service, instance: Instance, loaded: Loaded) {
        self.records.insert(service, Record { instance, loaded });
        if let Err(e) = self.save() {
            log::warn!(
                "cannot write {}: {e}; the next converge may restart a service again",
                self.path.display()
            );
        }
    }

    fn save(&self) -> std::io::Result<()> {
        if let Some(dir) = self.path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let tmp = self.path.with_extension("json.tmp");
        let body = serde_json::to_vec_pretty(&self.records).map_err(std::io::Error::other)?;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(&body)?;
        f.sync_all()?;
        std::fs::rename(&tmp, &self.path)
    }
}

/// What `service` would load from disk now, and the newest modification
/// among its files.
pub fn on_disk(
    service: Service,
    settings: &Settings,
    secrets: &RenderSecrets,
) -> (Loaded, Option<SystemTime>) {
    let consul_tls = TlsFiles::consul(settings);
    let nomad_tls = TlsFiles::nomad(settings);
    let tls = settings.tls.enabled;
    let token = |s: &Option<kraken_secrets::Secret>| s.as_ref().map(|t| t.expose().to_owned());
    let (config, tls_files, tokens): (Vec<PathBuf>, Vec<PathBuf>, Vec<Option<String>>) =
        match service {
            Service::Consul => (
                vec![settings.paths.consul_config_dir.join("consul.hcl")],
                if tls {
                    vec![consul_tls.ca, consul_tls.cert, consul_tls.key]
                } else {
                    Vec::new()
                },
                vec![
                    token(&secrets.initial_management),
                    token(&secrets.consul_agent),
                ],
            ),
            Service::Nomad => {
                let mut config = vec![settings.paths.nomad_config_dir.join("nomad.hcl")];
                // Nomad's `consul` block names Consul's CA, read at start.
                if tls {
                    config.push(consul_tls.ca);
                }
                (
                    config,
                    if tls {
                        vec![nomad_tls.ca, nomad_tls.cert, nomad_tls.key]
                    } else {
                        Vec::new()
                    },
                    vec![token(&secrets.nomad_consul)],
                )
            }
            Service::Docker => (
                vec![settings.paths.docker_daemon_json.clone()],
                Vec::new(),
                Vec::new(),
            ),
            Service::Operator => (Vec::new(), Vec::new(), Vec::new()),
        };
    let tokens: Vec<String> = tokens.into_iter().flatten().collect();
    let mut newest = None;
    let mut read = |path: &Path| {
        if let Ok(meta) = std::fs::metadata(path)
            && let Ok(modified) = meta.modified()
        {
            newest = newest.max(Some(modified));
        }
        std::fs::read(path).unwrap_or_default()
    };
    let mut config_digest = Sha256::new();
    for path in &config {
        let text = String::from_utf8_lossy(&read(path)).into_owned();
        config_digest.update(normalise(&text, &tokens).as_bytes());
        config_digest.update([0]);
    }
    let mut tls_digest = Sha256::new();
    for path in &tls_files {
        tls_digest.update(read(path));
        tls_digest.update([0]);
    }
    let mut token_digest = Sha256::new();
    for t in &tokens {
        token_digest.update(t.as_bytes());
        token_digest.update([0]);
    }
    let hex = |d: Sha256| format!("{:x}", d.finalize());
    (
        Loaded {
            config: hex(config_digest),
            tokens: hex(token_digest),
            tls: hex(tls_digest),
        },
        newest,
    )
}

/// A config as far as its running service is concerned: no comment lines
/// (the agent's own header names its version: an upgrade alone restarts
/// nothing), no peer list (`retry_join`, Consul's and Nomad's: read only
/// to join at start; a running agent learns membership by gossip, so a
/// new server list restarts nothing and the next start reads it), and no
/// line that carries a token (tokens have their own digest: a new token is
/// a reload where the service can take one).
fn normalise(text: &str, tokens: &[String]) -> String {
    let ignored = |l: &str| {
        let t = l.trim_start();
        t.starts_with('#') || t.starts_with("//") || t.starts_with("retry_join")
    };
    let carries_token = |l: &str| {
        tokens
            .iter()
            .any(|tok| !tok.is_empty() && l.contains(tok.as_str()))
    };
    text.lines()
        .filter(|l| !ignored(l) && !carries_token(l))
        .collect::<Vec<_>>()
        .join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn loaded(config: &str, tokens: &str, tls: &str) -> Loaded {
        Loaded {
            config: config.into(),
            tokens: tokens.into(),
            tls: tls.into(),
        }
    }

    fn me() -> Instance {
        Instance::of(std::process::id()).expect("this process is in /proc")
    }

    #[test]
    fn a_running_process_with_a_record_gets_what_differs() {
        let dir = tempfile::tempdir().unwrap();
        let mut applied = Applied::load(dir.path());
        applied.record(Service::Consul, me(), loaded("c", "t", "x"));
        let applied = Applied::load(dir.path());
        let decide = |want: &Loaded, tokens_reload| {
            applied.decide(Service::Consul, &me(), want, None, tokens_reload)
        };
        assert_eq!(decide(&loaded("c", "t", "x"), true), Action::Nothing);
        assert_eq!(decide(&loaded("c", "t", "y"), true), Action::Reload);
        assert_eq!(decide(&loaded("c", "u", "x"), true), Action::Reload);
        assert_eq!(decide(&loaded("c", "u", "x"), false), Action::Restart);
        assert_eq!(decide(&loaded("d", "t", "x"), true), Action::Restart);
        assert_eq!(decide(&loaded("d", "u", "y"), true), Action::Restart);
    }

    #[test]
    fn a_process_without_a_record_is_current_only_if_no_file_changed_since_it_started() {
        let dir = tempfile::tempdir().unwrap();
        let applied = Applied::load(dir.path());
        let started = me().started().unwrap();
        let want = loaded("c", "t", "x");
        let before = started - Duration::from_secs(60);
        let after = SystemTime::now() + Duration::from_secs(1);
        assert_eq!(
            applied.decide(Service::Nomad, &me(), &want, Some(before), false),
            Action::Nothing
        );
        assert_eq!(
            applied.decide(Service::Nomad, &me(), &want, Some(after), false),
            Action::Restart
        );
        // Nothing known about its files: restart to be sure.
        assert_eq!(
            applied.decide(Service::Nomad, &me(), &want, None, false),
            Action::Restart
        );
    }

    #[test]
    fn a_record_of_another_process_does_not_count() {
        let dir = tempfile::tempdir().unwrap();
        let mut applied = Applied::load(dir.path());
        let other = Instance {
            pid: me().pid,
            start_ticks: me().start_ticks + 1,
        };
        applied.record(Service::Consul, other, loaded("c", "t", "x"));
        let after = SystemTime::now() + Duration::from_secs(1);
        assert_eq!(
            applied.decide(
                Service::Consul,
                &me(),
                &loaded("c", "t", "x"),
                Some(after),
                true
            ),
            Action::Restart
        );
    }

    #[test]
    fn the_record_is_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let mut applied = Applied::load(dir.path());
        applied.record(Service::Consul, me(), loaded("c", "t", "x"));
        let mode = std::fs::metadata(dir.path().join("applied.json"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn comments_and_tokens_do_not_make_a_config_differ() {
        let a =
            "# Rendered by kraken-agent 0.1.0\nacl {\n  tokens {\n    agent = \"aaa\"\n  }\n}\n";
        let b =
            "# Rendered by kraken-agent 0.2.0\nacl {\n  tokens {\n    agent = \"bbb\"\n  }\n}\n";
        assert_eq!(normalise(a, &["aaa".into()]), normalise(b, &["bbb".into()]));
        // A token installed where there was none: the same config.
        let none = "acl {\n  tokens {\n  }\n}\n";
        assert_eq!(
            normalise(none, &[]),
            normalise(
                &a.replace("# Rendered by kraken-agent 0.1.0\n", ""),
                &["aaa".into()]
            )
        );
        assert_ne!(
            normalise(a, &["aaa".into()]),
            normalise(&b.replace("acl", "acls"), &["bbb".into()])
        );
    }

    #[test]
    fn a_new_server_list_alone_does_not_make_a_config_differ() {
        let consul = |join: &str| format!("server = false\nretry_join = {join}\nports {{}}\n");
        assert_eq!(
            normalise(&consul(r#"["10.0.0.1"]"#), &[]),
            normalise(&consul(r#"["10.0.0.1", "10.0.0.2", "10.0.0.3"]"#), &[])
        );
        let nomad = |join: &str| {
            format!("client {{\n  server_join {{\n    retry_join     = {join}\n  }}\n}}\n")
        };
        assert_eq!(
            normalise(&nomad(r#"["10.0.0.1"]"#), &[]),
            normalise(&nomad(r#"["10.0.0.2"]"#), &[])
        );
        // Anything else in the block still counts.
        assert_ne!(
            normalise(&nomad(r#"["10.0.0.1"]"#), &[]),
            normalise(&nomad(r#"["10.0.0.1"]"#).replace("client", "server"), &[])
        );
    }
}
