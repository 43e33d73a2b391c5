//! What the harness writes into a VM before it boots, as cloud-init would
//! from user-data on AWS.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use anyhow::{Context, Result};

/// One VM's user data.
#[derive(Debug, Clone, Default)]
pub struct UserData {
    /// /etc/kraken/agent.env: NAME=value lines.
    pub env: BTreeMap<String, String>,
    /// /etc/kraken/agent.toml
    pub agent_toml: String,
    /// Extra /etc/hosts lines: (address, name).
    pub hosts: Vec<(String, String)>,
    /// A CA certificate (PEM) added to the system's trusted roots.
    pub extra_ca: Option<String>,
    /// /etc/consul.d/consul.env and /etc/nomad.d/nomad.env (the units'
    /// optional environment files): NAME=value lines, for both.
    pub service_env: BTreeMap<String, String>,
}

impl UserData {
    /// Writes it into the VM's root before it boots.
    pub fn write(&self, root: &Path, name: &str) -> Result<()> {
        let etc_kraken = root.join("etc/kraken");
        fs::create_dir_all(&etc_kraken)?;
        let env: String = self.env.iter().map(|(k, v)| format!("{k}={v}\n")).collect();
        fs::write(etc_kraken.join("agent.env"), env)?;
        fs::set_permissions(
            etc_kraken.join("agent.env"),
            fs::Permissions::from_mode(0o600),
        )?;
        fs::write(etc_kraken.join("agent.toml"), &self.agent_toml)?;
        fs::write(root.join("etc/hostname"), format!("{name}\n"))?;
        // The image has an empty machine-id (90-cleanup.sh), as an AMI does;
        // systemd would make a transient one. A fixed one per VM gives it a
        // persistent journal the harness can read after the VM is gone.
        fs::write(
            root.join("etc/machine-id"),
            format!("{:032x}\n", fastrand::u128(1..)),
        )?;
        fs::create_dir_all(root.join("var/log/journal"))?;
        append(
            &root.join("etc/hosts"),
            self.hosts
                .iter()
                .map(|(a, n)| format!("{a} {n}\n"))
                .collect::<String>(),
        )?;
        if !self.service_env.is_empty() {
            let env: String = self
                .service_env
                .iter()
                .map(|(k, v)| format!("{k}={v}\n"))
                .collect();
            for (dir, file) in [("etc/consul.d", "consul.env"), ("etc/nomad.d", "nomad.env")] {
                fs::create_dir_all(root.join(dir))?;
                fs::write(root.join(dir).join(file), &env)?;
                fs::set_permissions(root.join(dir).join(file), fs::Permissions::from_mode(0o600))?;
            }
        }
        if let Some(ca) = &self.extra_ca {
            // Debian's bundle, which Go and OpenSSL read.
            append(&root.join("etc/ssl/certs/ca-certificates.crt"), ca.clone())?;
        }
        Ok(())
    }
}

fn append(path: &Path, text: String) -> Result<()> {
    if text.is_empty() {
        return Ok(());
    }
    let mut all = fs::read_to_string(path).unwrap_or_default();
    if !all.is_empty() && !all.ends_with('\n') {
        all.push('\n');
    }
    all.push_str(&text);
    fs::write(path, all).with_context(|| format!("writing {}", path.display()))
}
