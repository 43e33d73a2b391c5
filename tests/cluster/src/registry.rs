//! The container registry a warm pool pulls from (`cluster warm add`): the
//! real registry code (`crates/xtask/peers/registry`, go-containerregistry's)
//! on the hub, over TLS with a CA the warm VM trusts, as a private registry
//! is reached from an instance. It lives as long as the verb that starts
//! it, and holds one image made for that run, so a pull cannot be served
//! from anything but the registry.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::host;

pub const REGISTRY_PORT: u16 = 5004;
const REPOSITORY: &str = "kraken/warm";

pub struct Registry {
    child: Child,
    log: PathBuf,
    /// The CA the registry's certificate chains to, for the VMs' bundle.
    pub ca_pem: String,
    /// The image it holds: `10.213.0.1:5004/kraken/warm:<run>`.
    pub image: String,
}

impl Registry {
    /// Starts the registry in `dir` (cleared) and pushes the run's image.
    pub async fn start(bin: &Path, dir: &Path) -> Result<Registry> {
        if dir.exists() {
            fs::remove_dir_all(dir)?;
        }
        fs::create_dir_all(dir)?;
        let (ca_pem, cert, key) =
            crate::testca::ca_and_leaf("kraken cluster registry CA", host::HUB_IP)?;
        let (ca_file, cert_file, key_file) = (
            dir.join("ca.pem"),
            dir.join("cert.pem"),
            dir.join("key.pem"),
        );
        fs::write(&ca_file, &ca_pem)?;
        fs::write(&cert_file, cert)?;
        fs::write(&key_file, key)?;
        fs::set_permissions(&key_file, fs::Permissions::from_mode(0o600))?;

        let address = format!("{}:{REGISTRY_PORT}", host::HUB_IP);
        let log = dir.join("registry.log");
        let child = Command::new(bin)
            .arg("serve")
            .arg(&address)
            .arg(&cert_file)
            .arg(&key_file)
            .stdin(Stdio::null())
            .stdout(fs::File::create(&log)?)
            .stderr(fs::File::options().append(true).open(&log)?)
            .spawn()
            .with_context(|| format!("cannot start {}", bin.display()))?;
        // Dropped (and so killed) on any error below.
        let mut registry = Registry {
            child,
            log,
            ca_pem,
            image: String::new(),
        };
        registry.wait_listening(&address).await?;

        // One file whose content is this run's: a new digest every run.
        let run = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_secs();
        let root = dir.join("layer");
        fs::create_dir_all(&root)?;
        fs::write(
            root.join("kraken-warm"),
            format!("pulled from the warm pool's registry, run {run}\n"),
        )?;
        let layer = dir.join("layer.tar");
        host::run(
            "tar",
            &[
                "-C",
                &root.to_string_lossy(),
                "-cf",
                &layer.to_string_lossy(),
                ".",
            ],
        )?;
        let image = format!("{address}/{REPOSITORY}:{run}");
        host::run(
            &bin.to_string_lossy(),
            &[
                "push",
                &ca_file.to_string_lossy(),
                &layer.to_string_lossy(),
                &image,
            ],
        )
        .context("pushing the warm pool's image")?;
        registry.image = image;
        Ok(registry)
    }

    async fn wait_listening(&mut self, address: &str) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if tokio::net::TcpStream::connect(address).await.is_ok() {
                return Ok(());
            }
            if let Some(status) = self.child.try_wait()? {
                bail!("the registry exited ({status}):\n{}", self.log_text());
            }
            if Instant::now() > deadline {
                bail!("the registry does not listen on {address} after 10 s");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The blobs of the run's image the registry served: what a real pull
    /// reads. It logs `DATE TIME METHOD PATH`, and a status and error code
    /// after them only for a request it refused.
    pub fn blobs_served(&self) -> usize {
        let prefix = format!("/v2/{REPOSITORY}/blobs/");
        self.log_text()
            .lines()
            .filter(|l| {
                let words: Vec<&str> = l.split_whitespace().collect();
                words.len() == 4 && words[2] == "GET" && words[3].starts_with(&prefix)
            })
            .count()
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
