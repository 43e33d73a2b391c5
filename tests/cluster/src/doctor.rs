//! `kraken-agent doctor` on a real node, as a person logged in would run
//! it, and what it must say about a fault.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::cluster::Cluster;
use crate::vm::Vm;

#[derive(Clone, Copy)]
pub enum Level {
    Warn,
    Fail,
}

impl Level {
    fn name(self) -> &'static str {
        match self {
            Level::Warn => "warn",
            Level::Fail => "fail",
        }
    }

    /// Doctor's exit status when this is the worst level.
    fn exit_code(self) -> i32 {
        match self {
            Level::Warn => 1,
            Level::Fail => 2,
        }
    }
}

/// What doctor must report about a fault.
pub struct Expect {
    /// The check, at this level (and doctor exits with it).
    pub check: &'static str,
    pub level: Level,
    /// Text the finding must contain, all of it ...
    pub says: &'static [&'static str],
    /// ... and one of these, if any.
    pub says_one_of: &'static [&'static str],
    /// Text the check's `next` (what to run) must contain.
    pub next: &'static str,
}

impl Expect {
    fn shown_by(&self, c: &Finding) -> bool {
        c.level == self.level.name()
            && self.says.iter().all(|s| c.finding.contains(s))
            && (self.says_one_of.is_empty()
                || self.says_one_of.iter().any(|s| c.finding.contains(s)))
    }
}

/// One check of `kraken-agent doctor --json`.
#[derive(Debug)]
struct Finding {
    level: String,
    finding: String,
    /// What doctor tells the operator to run next.
    next: String,
}

/// [`Vm::output_logged_in`]'s stdout (doctor prints its report also when it
/// exits non-zero); an error with its stderr when it printed nothing.
pub fn as_logged_in(vm: &Vm, args: &[&str]) -> Result<String> {
    let out = vm.output_logged_in(args)?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    if stdout.is_empty() && !out.status.success() {
        bail!(
            "{} on {}: {}: {}",
            args.join(" "),
            vm.name,
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(stdout)
}

/// `kraken-agent doctor --json` inside a VM: its exit status and each check.
fn doctor(vm: &Vm) -> Result<(i32, BTreeMap<String, Finding>)> {
    let out = vm.output_logged_in(&["kraken-agent", "doctor", "--json"])?;
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).with_context(|| {
        format!(
            "{}: doctor printed no JSON: {}",
            vm.name,
            String::from_utf8_lossy(&out.stderr)
        )
    })?;
    let checks = report["checks"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|c| {
            Some((
                c["name"].as_str()?.to_owned(),
                Finding {
                    level: c["level"].as_str()?.to_owned(),
                    finding: c["finding"].as_str().unwrap_or_default().to_owned(),
                    next: c["next"].as_str().unwrap_or_default().to_owned(),
                },
            ))
        })
        .collect();
    Ok((out.status.code().unwrap_or(-1), checks))
}

/// Doctor on `vm`, with `fault` in place, must (within `within`; zero: at
/// its first look) exit with the expected level and report the check at
/// that level with its text; then the check's `next` must name what to run.
pub async fn names(
    cluster: &Cluster,
    vm: &Vm,
    fault: &str,
    expect: &Expect,
    within: Duration,
) -> Result<()> {
    let deadline = Instant::now() + within;
    let check = expect.check;
    let checks = loop {
        let looked = doctor(vm);
        if let Ok((code, checks)) = &looked
            && *code == expect.level.exit_code()
            && checks.get(check).is_some_and(|c| expect.shown_by(c))
        {
            break looked?.1;
        }
        if Instant::now() >= deadline {
            let (code, checks) = looked?;
            let found = checks.get(check);
            bail!(
                "doctor on {} with {fault}: exit {code}, {check}: {found:?}; all: {checks:?}",
                vm.name
            );
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    };
    let found = &checks[check];
    if !found.next.contains(expect.next) {
        bail!(
            "doctor on {} with {fault}: {check} says to run {:?}, which does not contain {:?}",
            vm.name,
            found.next,
            expect.next
        );
    }
    cluster.log(format!(
        "doctor on {}, {fault}: {check} {}: {}",
        vm.name, found.level, found.finding
    ));
    Ok(())
}

/// Waits until doctor on `vm` exits 0 again.
pub async fn all_ok(vm: &Vm, after: &str) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let (code, checks) = doctor(vm)?;
        if code == 0 {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!(
                "doctor on {} after {after}: exit {code}, {checks:?}",
                vm.name
            );
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}
