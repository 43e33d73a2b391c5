//! Running commands: named, timed steps; logged or captured output with
//! the tail of it in errors; copy-pasteable command lines.

use anyhow::{Context, Result, bail};
use std::ffi::OsStr;
use std::fs::{self, File};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// How many lines of a failed command's output to show.
const TAIL_LINES: usize = 40;

/// Runs one named step with its timing on stderr; a failure names the step.
pub fn step<T>(name: &str, f: impl FnOnce() -> Result<T>) -> Result<T> {
    eprintln!("xtask: [{name}] start");
    let started = Instant::now();
    let result = f();
    let took = fmt_duration(started.elapsed());
    match &result {
        Ok(_) => eprintln!("xtask: [{name}] ok ({took})"),
        Err(_) => eprintln!("xtask: [{name}] FAILED ({took})"),
    }
    result.with_context(|| format!("step [{name}] failed"))
}

/// Runs a command with stdout and stderr in `log`; on failure the error
/// carries the command line and the log's tail.
pub fn run_logged(cmd: &mut Command, log: &Path) -> Result<()> {
    let desc = describe(cmd);
    let file = File::create(log).with_context(|| format!("cannot create {}", log.display()))?;
    let status = cmd
        .stdin(Stdio::null())
        .stdout(file.try_clone()?)
        .stderr(file)
        .status()
        .with_context(|| format!("cannot start command: {desc}"))?;
    if !status.success() {
        let output = fs::read_to_string(log).unwrap_or_default();
        bail!(
            "command failed ({status}):\n  {desc}\n--- last {TAIL_LINES} lines of {} ---\n{}",
            log.display(),
            tail(&output, TAIL_LINES)
        );
    }
    Ok(())
}

/// Runs a short command and returns its trimmed stdout.
pub fn capture(cmd: &mut Command) -> Result<String> {
    let desc = describe(cmd);
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("cannot start command: {desc}"))?;
    if !out.status.success() {
        bail!(
            "command failed ({}):\n  {desc}\n--- stderr ---\n{}",
            out.status,
            tail(&String::from_utf8_lossy(&out.stderr), TAIL_LINES)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// A copy-pasteable rendering of a command, with the env it sets and its cwd.
pub fn describe(cmd: &Command) -> String {
    let mut parts = Vec::new();
    if let Some(dir) = cmd.get_current_dir() {
        parts.push(format!("cd {} &&", shell_quote(&dir.to_string_lossy())));
    }
    for (k, v) in cmd.get_envs() {
        if let Some(v) = v {
            parts.push(format!(
                "{}={}",
                k.to_string_lossy(),
                shell_quote(&v.to_string_lossy())
            ));
        }
    }
    parts.push(shell_quote(&cmd.get_program().to_string_lossy()));
    parts.extend(
        cmd.get_args()
            .map(OsStr::to_string_lossy)
            .map(|a| shell_quote(&a)),
    );
    parts.join(" ")
}

pub fn shell_quote(s: &str) -> String {
    let plain = !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_./=:,+@%".contains(&b));
    if plain {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

pub fn fmt_duration(d: Duration) -> String {
    let secs = d.as_secs_f64();
    if secs < 60.0 {
        format!("{secs:.1}s")
    } else {
        format!("{}m{:02}s", d.as_secs() / 60, d.as_secs() % 60)
    }
}
