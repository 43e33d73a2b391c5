//! moto, EC2 and SSM for the tests, pip-installed into a virtualenv.

use anyhow::{Result, bail};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::process::run_logged;

const MOTO_VERSION: &str = "5.2.5";

pub fn install(cache: &Path) -> Result<PathBuf> {
    let venv = cache.join("venv");
    let python = venv.join("bin/python");
    let server = venv.join("bin/moto_server");
    if moto_version(&python).as_deref() == Some(MOTO_VERSION) && server.is_file() {
        eprintln!(
            "xtask: moto {MOTO_VERSION} is up to date in {}",
            venv.display()
        );
        return Ok(server);
    }
    let python_works = Command::new(&python)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !python_works {
        // A venv whose interpreter vanished (pyenv upgrade, moved cache)
        // cannot be repaired in place.
        if venv.exists() {
            fs::remove_dir_all(&venv)?;
        }
        run_logged(
            Command::new("python3")
                .args(["-m", "venv"])
                .arg(&venv)
                .current_dir(cache),
            &cache.join("logs/moto-venv.log"),
        )?;
    }
    run_logged(
        Command::new(&python)
            .args([
                "-m",
                "pip",
                "install",
                "--no-input",
                "--disable-pip-version-check",
            ])
            .arg(format!("moto[server]=={MOTO_VERSION}"))
            .current_dir(cache),
        &cache.join("logs/moto-pip.log"),
    )?;
    match moto_version(&python) {
        Some(v) if v == MOTO_VERSION && server.is_file() => Ok(server),
        other => bail!(
            "after pip install, moto is {other:?} (want {MOTO_VERSION}) and {} {}",
            server.display(),
            if server.is_file() {
                "exists"
            } else {
                "is missing"
            }
        ),
    }
}

/// The installed moto version, if moto and its server extras import.
fn moto_version(python: &Path) -> Option<String> {
    let out = Command::new(python)
        .args([
            "-c",
            "import importlib.metadata as m, flask, flask_cors; print(m.version('moto'))",
        ])
        .stderr(Stdio::null())
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}
