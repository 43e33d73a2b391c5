//! What the VMs' journals say: no secret in any agent's, and no Consul
//! trouble in any Nomad's.

use anyhow::{Context, Result, bail};

use crate::cluster::Cluster;
use crate::topology::CLUSTER;
use crate::vm::Vm;

impl Cluster {
    /// No secret of the store appears in any VM's kraken-agent journal,
    /// including VMs that were killed.
    pub async fn check_journals(&self) -> Result<String> {
        let secrets = self.cloud.secrets(CLUSTER).await?;
        if secrets.is_empty() {
            bail!("the secret store is empty: nothing to look for");
        }
        let mut lines = 0;
        for vm in &self.vms {
            let journal = vm
                .agent_journal()
                .with_context(|| format!("journal of {}", vm.name))?;
            if journal.trim().is_empty() {
                bail!("{}: the kraken-agent journal is empty", vm.name);
            }
            lines += journal.lines().count();
            for (name, value) in &secrets {
                // Named, never quoted: CI logs are not a place for secrets.
                if secret_needles(value).any(|n| journal.contains(n)) {
                    bail!(
                        "{}: the kraken-agent journal contains (part of) the secret {name}",
                        vm.name
                    );
                }
            }
        }
        Ok(format!(
            "{} secrets absent from {lines} journal lines of {} VMs",
            secrets.len(),
            self.vms.len()
        ))
    }
}

/// What of a secret must never be logged: the value, or for a PEM bundle
/// (the PKI's, certificates and key together) each line of its private key
/// (a log line would hold a line, not the bundle; certificates are public).
fn secret_needles(value: &str) -> impl Iterator<Item = &str> {
    let pem = value.contains("-----BEGIN");
    let mut in_key = false;
    let lines: Vec<&str> = if pem {
        value
            .lines()
            .filter(|l| {
                if l.starts_with("-----BEGIN") {
                    in_key = l.contains("PRIVATE KEY");
                    return false;
                }
                if l.starts_with("-----END") {
                    in_key = false;
                    return false;
                }
                in_key && l.len() >= 16
            })
            .collect()
    } else {
        vec![value]
    };
    lines.into_iter()
}

/// What in a line of Nomad's log is Nomad failing to talk to its Consul
/// agent: the fingerprinter's "failed to acquire consul self endpoint"
/// (what "remote error: tls: expired certificate" showed as after a
/// renewal, when Nomad presented a client certificate it had loaded at
/// start), the service sync's "failed/still unable to update services in
/// Consul", and any TLS or certificate error in a line about Consul.
pub const NOMAD_CONSUL_ERRORS: &[&str] = &[
    "failed to acquire consul self endpoint",
    "update services in consul",
    "x509:",
    "tls:",
    "expired certificate",
    "certificate",
];

/// Whether `line` (one message of Nomad's journal) is a warning or an
/// error about Consul that [`NOMAD_CONSUL_ERRORS`] names.
pub fn is_nomad_consul_error(line: &str) -> bool {
    let lower = line.to_lowercase();
    (lower.contains("[warn]") || lower.contains("[error]"))
        && lower.contains("consul")
        && NOMAD_CONSUL_ERRORS.iter().any(|p| lower.contains(p))
}

/// The lines of every VM's Nomad journal since `since` (Unix seconds)
/// that are Consul errors: (VM, line).
pub fn nomad_consul_errors(vms: &[Vm], since: f64) -> Result<Vec<(String, String)>> {
    let mut found = Vec::new();
    for vm in vms {
        let log = vm
            .unit_log("nomad.service")
            .with_context(|| format!("the Nomad journal of {}", vm.name))?;
        found.extend(
            log.into_iter()
                .filter(|(t, line)| *t >= since && is_nomad_consul_error(line))
                .map(|(_, line)| (vm.name.clone(), line)),
        );
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::is_nomad_consul_error;

    #[test]
    fn consul_errors_are_told_from_other_lines() {
        for line in [
            "2026-11-30T17:56:05.457Z [WARN]  client.fingerprint_mgr.consul: failed to acquire consul self endpoint: error=\"remote error: tls: expired certificate\"",
            "2026-11-30T17:56:05.457Z [ERROR] consul.sync: still unable to update services in Consul: failures=10 error=\"x509: certificate has expired\"",
            "2026-11-30T17:56:05.457Z [WARN]  consul.sync: failed to update services in Consul: error=\"EOF\"",
        ] {
            assert!(is_nomad_consul_error(line), "{line}");
        }
        for line in [
            "2026-11-30T17:56:05.457Z [INFO]  client.fingerprint_mgr.consul: consul agent is available",
            "2026-11-30T17:56:05.457Z [WARN]  nomad.raft: heartbeat timeout reached, starting election",
            "2026-11-30T17:56:05.457Z [ERROR] client.rpc: error performing RPC to server: tls: bad certificate",
        ] {
            assert!(!is_nomad_consul_error(line), "{line}");
        }
    }
}
