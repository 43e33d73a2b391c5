//! Checks of this machine rather than the cluster: certificates, Docker's
//! disk, OOM kills.

use std::path::{Path, PathBuf};

use kraken_settings::Settings;

use super::check::{Check, Level};

/// Every certificate in the Consul and Nomad config directories, with the
/// life it has left. A leaf is a problem once it is well past the point
/// the agent renews it (the agent is not renewing); a CA is a warning
/// `tls.ca_warn_days` ahead (rotating it takes planning: docs/operations.md).
pub(super) fn tls(settings: &Settings) -> Check {
    let mut files = Vec::new();
    for dir in [
        &settings.paths.consul_config_dir,
        &settings.paths.nomad_config_dir,
    ] {
        collect_pem(dir, 2, &mut files);
    }
    files.sort();
    let now = std::time::SystemTime::now();
    let days = |d: std::time::Duration| d.as_secs() / 86_400;
    let life = |d: std::time::Duration| {
        if d.as_secs() >= 2 * 86_400 {
            format!("{}d", days(d))
        } else {
            format!("{}h{:02}m", d.as_secs() / 3600, d.as_secs() % 3600 / 60)
        }
    };
    let mut seen = std::collections::BTreeSet::new();
    let mut parts = Vec::new();
    let mut expired = Vec::new();
    let mut overdue = Vec::new();
    let mut ca_soon = Vec::new();
    for path in files {
        let Ok(text) = std::fs::read_to_string(&path) else {
            continue;
        };
        for (i, der) in kraken_pki::certificates(&text).iter().enumerate() {
            // The same CA appears in several files: count it once.
            if !seen.insert(der.clone()) {
                continue;
            }
            let Ok((_, cert)) = x509_parser::parse_x509_certificate(der) else {
                continue;
            };
            let Ok(info) = kraken_pki::inspect_der(der, "") else {
                continue;
            };
            let left = info.remaining(now);
            let name = match path.file_name() {
                Some(f) if i == 0 => f.to_string_lossy().into_owned(),
                Some(f) => format!("{} #{}", f.to_string_lossy(), i + 1),
                None => path.display().to_string(),
            };
            let what = if cert.is_ca() {
                format!("CA {}", cert.subject())
            } else {
                info.dns_names
                    .first()
                    .cloned()
                    .unwrap_or_else(|| cert.subject().to_string())
            };
            parts.push(format!("{name} ({what}) {}", life(left)));
            let lifetime = info
                .not_after
                .duration_since(info.not_before)
                .unwrap_or_default();
            if left.is_zero() {
                expired.push(format!("{} ({what})", path.display()));
            } else if cert.is_ca() {
                if days(left) < settings.tls.ca_warn_days {
                    ca_soon.push(format!("{what} expires in {} days", days(left)));
                }
            } else if left < lifetime.mul_f64((1.0 - settings.tls.renew_fraction) * 0.75) {
                overdue.push(format!(
                    "{} ({what}) has {} left",
                    path.display(),
                    life(left)
                ));
            }
        }
    }
    if parts.is_empty() {
        return Check::ok(
            "tls",
            "no certificates in the Consul or Nomad config directories",
        );
    }
    let finding = parts.join("; ");
    if !expired.is_empty() {
        Check::bad(
            "tls",
            Level::Fail,
            format!("expired: {}; {finding}", expired.join(", ")),
            "the certificate was not renewed (is kraken-agent running?)",
            "systemctl status kraken-agent; journalctl -u kraken-agent | grep -i certificate",
        )
    } else if !overdue.is_empty() {
        Check::bad(
            "tls",
            Level::Warn,
            format!("past its renewal time: {}; {finding}", overdue.join(", ")),
            "kraken-agent renews leaf certificates at tls.renew_fraction of their life and has not",
            "systemctl status kraken-agent; journalctl -u kraken-agent | grep -i certificate",
        )
    } else if !ca_soon.is_empty() {
        Check::bad(
            "tls",
            Level::Warn,
            format!("{}; {finding}", ca_soon.join(", ")),
            "the cluster CA is not renewed automatically",
            "rotate the cluster CA (docs/operations.md, \"Rotating the cluster CA\")",
        )
    } else {
        Check::ok("tls", finding)
    }
}

fn collect_pem(dir: &Path, depth: u8, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() && depth > 0 {
            collect_pem(&p, depth - 1, out);
        } else if p.extension().is_some_and(|x| x == "pem" || x == "crt") {
            out.push(p);
        }
    }
}

pub(super) fn docker_disk(settings: &Settings) -> Check {
    let root = settings
        .docker
        .data_root
        .clone()
        .unwrap_or_else(|| PathBuf::from("/var/lib/docker"));
    let stat = match nix::sys::statvfs::statvfs(&root) {
        Ok(s) => s,
        Err(e) => {
            return Check::bad(
                "docker-disk",
                Level::Warn,
                format!("cannot read {}: {e}", root.display()),
                "Docker is not installed or its data root moved",
                "docker info --format '{{.DockerRootDir}}'",
            );
        }
    };
    let used = use_percent(&stat);
    let finding = format!("{} is {used:.0}% full", root.display());
    if used >= 90.0 {
        Check::bad(
            "docker-disk",
            Level::Fail,
            finding,
            "images, stopped containers or unrotated logs fill the disk",
            "docker system df; docker system prune; check log rotation in /etc/docker/daemon.json",
        )
    } else if used >= 80.0 {
        Check::bad(
            "docker-disk",
            Level::Warn,
            finding,
            "the disk is filling up",
            "docker system df",
        )
    } else {
        Check::ok("docker-disk", finding)
    }
}

/// Use% as `df` computes it, so doctor and `df` on the node agree: used
/// over what non-root users could have (used + available), rounded up. The
/// blocks reserved for root count neither way; taking them as used (1 -
/// available/total) reads a file system with a large reserve as far fuller
/// than `df` shows.
fn use_percent(stat: &nix::sys::statvfs::Statvfs) -> f64 {
    df_use_percent(stat.blocks(), stat.blocks_free(), stat.blocks_available())
}

fn df_use_percent(blocks: u64, free: u64, available: u64) -> f64 {
    let used = blocks.saturating_sub(free) as f64;
    let usable = used + available as f64;
    if usable > 0.0 {
        (100.0 * used / usable).ceil()
    } else {
        0.0
    }
}

pub(super) fn oom() -> Check {
    let kills = std::fs::read_to_string("/proc/vmstat").ok().and_then(|s| {
        s.lines().find_map(|l| {
            l.strip_prefix("oom_kill ")
                .and_then(|n| n.trim().parse::<u64>().ok())
        })
    });
    match kills {
        None => Check::skip(
            "oom",
            "this kernel does not count OOM kills in /proc/vmstat",
        ),
        Some(0) => Check::ok("oom", "no process killed for memory since boot"),
        Some(n) => Check::bad(
            "oom",
            Level::Warn,
            format!("{n} processes killed for memory since boot"),
            "a task or service uses more memory than its limit or the machine has",
            "journalctl -k | grep -i 'killed process'; nomad alloc status <alloc> for task memory limits",
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::df_use_percent;

    #[test]
    fn disk_use_is_what_df_shows() {
        // A 252 GiB file system with 69 GiB used, 23 GiB available and the
        // rest reserved (this build machine's disk): df says 69 / (69 +
        // 23) = 75%, where 1 - available/size would say 91%.
        let gib = 1 << 18; // 4 KiB blocks
        assert_eq!(df_use_percent(252 * gib, 183 * gib, 23 * gib), 75.0);
        // No reserve: used over size, rounded up as df does.
        assert_eq!(df_use_percent(1000, 49, 49), 96.0);
        assert_eq!(df_use_percent(1000, 1000, 1000), 0.0);
        assert_eq!(df_use_percent(0, 0, 0), 0.0);
    }
}
