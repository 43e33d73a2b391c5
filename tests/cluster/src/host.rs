//! The host side of the local cluster: commands, daemons, network
//! namespaces and mounts. Everything the cluster makes is named so that
//! [`sweep`] can find and remove it without any saved state: after a crash,
//! a kill -9 or a lost state file, `cluster down` still leaves nothing behind.

use std::fs;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// Network namespaces: the hub (bridge and moto) and one per VM.
pub const NETNS_PREFIX: &str = "kraken-cl-";
pub const HUB_NETNS: &str = "kraken-cl-hub";
const BRIDGE: &str = "kraken-br";
/// The cluster's private network. The hub owns .1; VMs get .10 and up.
pub const SUBNET: &str = "10.213.0.0/24";
pub const VPC_CIDR: &str = "10.213.0.0/16";
pub const HUB_IP: &str = "10.213.0.1";
/// Where the fake IMDS answers inside each VM's namespace, as on EC2.
const IMDS_IP: &str = "169.254.169.254";

/// Runs a command to completion; its stderr is in the error.
pub fn run(program: &str, args: &[&str]) -> Result<String> {
    let out = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("cannot run {program}"))?;
    if !out.status.success() {
        bail!(
            "`{program} {}` failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Starts a long-running process in its own process group (a Ctrl-C at the
/// terminal reaches the harness, which tears down in order, not the VMs),
/// with its output in `log`. Returns its PID.
pub fn spawn_daemon(program: &Path, args: &[&str], log: &Path) -> Result<u32> {
    let out = fs::File::create(log).with_context(|| format!("cannot create {}", log.display()))?;
    let child = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(out.try_clone()?)
        .stderr(out)
        .process_group(0)
        .spawn()
        .with_context(|| format!("cannot start {}", program.display()))?;
    // Not waited for: `cluster up` exits and leaves it running; `down`
    // finds it again by PID or by its command line.
    Ok(child.id())
}

/// Alive and not a zombie.
pub fn alive(pid: u32) -> bool {
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state is the field after the parenthesised command name.
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state != "Z" && state != "X"),
        Err(_) => false,
    }
}

pub fn signal(pid: u32, sig: Signal) {
    let _ = kill(Pid::from_raw(pid as i32), sig);
}

/// Waits until `pid` is gone; false on timeout.
pub fn wait_gone(pid: u32, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while alive(pid) {
        if Instant::now() > deadline {
            return false;
        }
        reap();
        std::thread::sleep(Duration::from_millis(100));
    }
    true
}

/// Collects our exited children, so that they do not linger as zombies
/// while the harness runs.
pub fn reap() {
    use nix::sys::wait::{WaitPidFlag, waitpid};
    while let Ok(status) = waitpid(None, Some(WaitPidFlag::WNOHANG)) {
        if status == nix::sys::wait::WaitStatus::StillAlive {
            break;
        }
    }
}

/// The first child of `pid` (the VM's init, for a systemd-nspawn PID).
pub fn first_child(pid: u32) -> Option<u32> {
    let tasks = fs::read_dir(format!("/proc/{pid}/task")).ok()?;
    for task in tasks.flatten() {
        let children = fs::read_to_string(task.path().join("children")).unwrap_or_default();
        if let Some(child) = children.split_whitespace().next() {
            return child.parse().ok();
        }
    }
    None
}

/// Processes whose command line contains `needle`.
pub fn pids_matching(needle: &str) -> Vec<u32> {
    let me = std::process::id();
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| pid != me && alive(pid))
        .filter(|pid| {
            fs::read(format!("/proc/{pid}/cmdline"))
                .map(|c| {
                    String::from_utf8_lossy(&c)
                        .replace('\0', " ")
                        .contains(needle)
                })
                .unwrap_or(false)
        })
        .collect()
}

// --- network ---------------------------------------------------------------

fn ip(args: &[&str]) -> Result<String> {
    run("ip", args)
}

/// The hub: a namespace with the bridge every VM is plugged into. moto and
/// the harness itself live there, so nothing of the cluster's network is
/// visible from (or reaches) the host's own namespace.
pub fn hub_up() -> Result<()> {
    ip(&["netns", "add", HUB_NETNS])?;
    ip(&["-n", HUB_NETNS, "link", "set", "lo", "up"])?;
    ip(&["-n", HUB_NETNS, "link", "add", BRIDGE, "type", "bridge"])?;
    ip(&[
        "-n",
        HUB_NETNS,
        "addr",
        "add",
        &format!("{HUB_IP}/24"),
        "dev",
        BRIDGE,
    ])?;
    ip(&["-n", HUB_NETNS, "link", "set", BRIDGE, "up"])?;
    Ok(())
}

/// Moves this process into the hub's namespace. Must be called before any
/// thread is started (setns changes the calling thread only; threads made
/// afterwards inherit it).
pub fn enter_hub() -> Result<()> {
    let ns = fs::File::open(format!("/run/netns/{HUB_NETNS}"))
        .context("the cluster's hub namespace does not exist (is the cluster up?)")?;
    nix::sched::setns(ns, nix::sched::CloneFlags::CLONE_NEWNET).context("setns into the hub")?;
    Ok(())
}

pub fn vm_netns(name: &str) -> String {
    format!("{NETNS_PREFIX}{name}")
}

/// A VM's namespace: `eth0` on the bridge with the instance's private
/// address, a default route through the hub, and the IMDS address on `lo`.
pub fn vm_net_up(name: &str, address: &str) -> Result<()> {
    let ns = vm_netns(name);
    let host_end = vm_veth(name);
    ip(&["netns", "add", &ns])?;
    ip(&[
        "-n", HUB_NETNS, "link", "add", &host_end, "type", "veth", "peer", "name", "eth0", "netns",
        &ns,
    ])?;
    ip(&[
        "-n", HUB_NETNS, "link", "set", &host_end, "master", BRIDGE, "up",
    ])?;
    ip(&["-n", &ns, "link", "set", "lo", "up"])?;
    ip(&[
        "-n",
        &ns,
        "addr",
        "add",
        &format!("{IMDS_IP}/32"),
        "dev",
        "lo",
    ])?;
    ip(&[
        "-n",
        &ns,
        "addr",
        "add",
        &format!("{address}/24"),
        "dev",
        "eth0",
    ])?;
    ip(&["-n", &ns, "link", "set", "eth0", "up"])?;
    ip(&["-n", &ns, "route", "add", "default", "via", HUB_IP])?;
    Ok(())
}

/// The hub's end of a VM's veth pair. Interface names are at most 15 bytes.
fn vm_veth(name: &str) -> String {
    format!("kv-{}", &name[..name.len().min(12)])
}

/// Removes a VM's network: the veth pair first, because the kernel frees a
/// deleted namespace (and the veth end in it) asynchronously, so a VM
/// booted again under the same name right after would find the hub's end
/// still there.
pub fn vm_net_down(name: &str) {
    let _ = run("ip", &["-n", HUB_NETNS, "link", "delete", &vm_veth(name)]);
    netns_delete(&vm_netns(name));
}

pub fn netns_delete(ns: &str) {
    let _ = run("ip", &["netns", "delete", ns]);
}

pub fn our_netns() -> Vec<String> {
    run("ip", &["netns", "list"])
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| n.starts_with(NETNS_PREFIX))
        .map(str::to_owned)
        .collect()
}

// --- mounts ----------------------------------------------------------------

pub fn overlay_mount(lower: &Path, upper: &Path, work: &Path, target: &Path) -> Result<()> {
    let options = format!(
        "lowerdir={},upperdir={},workdir={}",
        lower.display(),
        upper.display(),
        work.display()
    );
    run(
        "mount",
        &[
            "-t",
            "overlay",
            "overlay",
            "-o",
            &options,
            &target.to_string_lossy(),
        ],
    )?;
    Ok(())
}

/// Mount points at or below `dir`, deepest first.
pub fn mounts_below(dir: &Path) -> Vec<PathBuf> {
    let prefix = dir.to_string_lossy().into_owned();
    let mut found: Vec<PathBuf> = fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        // mountinfo escapes spaces and the like as \040.
        .filter(|m| *m == prefix || m.starts_with(&format!("{prefix}/")))
        .map(PathBuf::from)
        .collect();
    found.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    found.dedup();
    found
}

pub fn unmount_below(dir: &Path) {
    for m in mounts_below(dir) {
        let target = m.to_string_lossy().into_owned();
        if run("umount", &[&target]).is_err() {
            let _ = run("umount", &["-l", &target]);
        }
    }
}

/// Removes everything a cluster rooted at `root` made: VMs, fake IMDS
/// servers, moto, the namespaces, the overlay mounts and the VMs'
/// directories. Idempotent.
pub fn sweep(root: &Path, vms_dir: &Path) {
    let needle = root.to_string_lossy().into_owned();
    // Killed, not powered off: their disks go with them, and a clean
    // poweroff (each agent draining and leaving a cluster that is going
    // anyway) took a minute of every `down`. Killing a PID namespace's init
    // kills everything in it.
    let nspawns: Vec<u32> = pids_matching(&needle)
        .into_iter()
        .filter(|pid| comm(*pid).as_deref() == Some("systemd-nspawn"))
        .collect();
    for &pid in &nspawns {
        if let Some(init) = first_child(pid) {
            signal(init, Signal::SIGKILL);
        }
    }
    for &pid in &nspawns {
        if !wait_gone(pid, Duration::from_secs(10)) {
            signal(pid, Signal::SIGKILL);
            wait_gone(pid, Duration::from_secs(5));
        }
    }
    let mut rest = pids_matching(&needle);
    rest.extend(pids_matching(&format!("-H {HUB_IP}")));
    for &pid in &rest {
        signal(pid, Signal::SIGTERM);
    }
    for &pid in &rest {
        if !wait_gone(pid, Duration::from_secs(5)) {
            signal(pid, Signal::SIGKILL);
            wait_gone(pid, Duration::from_secs(2));
        }
    }
    for vm in fs::read_dir(vms_dir).into_iter().flatten().flatten() {
        crate::cgroups::release(&vm.path());
    }
    crate::cgroups::sweep();
    unmount_below(vms_dir);
    for ns in our_netns() {
        netns_delete(&ns);
    }
    if mounts_below(vms_dir).is_empty() {
        let _ = fs::remove_dir_all(vms_dir);
    } else {
        eprintln!(
            "cluster: not removing {}: something is still mounted below it",
            vms_dir.display()
        );
    }
}

pub fn comm(pid: u32) -> Option<String> {
    fs::read_to_string(format!("/proc/{pid}/comm"))
        .ok()
        .map(|s| s.trim().to_owned())
}
