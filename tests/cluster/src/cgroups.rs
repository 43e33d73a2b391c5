//! A Nomad client VM's own cgroups, on a host whose controllers are bound
//! to cgroup v1.
//!
//! An EC2 instance owns its controllers; Nomad's `exec` driver needs them
//! (cpuset, cpu, memory, pids) and reports itself unhealthy without. nspawn
//! would give a VM none here: it mounts a v1 host's controllers read-only
//! (they are the host's), and its unified mode gives a cgroup2 tree with no
//! controllers in it (every one is bound to v1 on this host).
//!
//! So the harness delegates to each client a subtree of every hierarchy, as
//! a host delegates one to a container manager: `kraken-cluster/<vm>` below
//! the harness's own cgroup in each. The subtrees are bind-mounted under one
//! tmpfs that nspawn binds as the VM's `/sys/fs/cgroup` (nspawn leaves a
//! hierarchy it finds mounted alone), and nspawn starts inside them, so the
//! VM's cgroup namespace is rooted where its mounts are. nspawn puts the
//! container of a hybrid host in a `payload` child of its cgroup in the
//! `name=systemd` and unified hierarchies: those two bind `payload`. The VM
//! boots as a hybrid host (v1 controllers, systemd's tree also in cgroup2).
//!
//! On a host whose `/sys/fs/cgroup` is cgroup2, nothing is delegated: nspawn
//! gives the VM a cgroup2 tree of its own.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result};

use crate::host;

/// Below the harness's own cgroup in each hierarchy.
const PARENT: &str = "kraken-cluster";
/// In the VM's directory: the cgroups made for it, one per line, so that
/// a later `cluster down` (from another cgroup) removes the same ones.
const RECORD: &str = "cgroups";

/// One mounted hierarchy of the host.
struct Hierarchy {
    /// Where it is mounted, e.g. `/sys/fs/cgroup/cpu`.
    mount: PathBuf,
    /// The harness's cgroup in it, e.g. `/` or `/process_api/…`.
    own: String,
    /// cgroup2, or v1 `name=systemd`: nspawn nests the VM in `payload`.
    nested: bool,
    /// v1 cpuset: a cgroup takes no task until it has CPUs and nodes.
    cpuset: bool,
}

impl Hierarchy {
    /// Where the harness makes its VMs' cgroups in this hierarchy.
    fn parent(&self) -> PathBuf {
        self.mount
            .join(self.own.trim_start_matches('/'))
            .join(PARENT)
    }
}

/// A VM's delegation: the tree to bind as its `/sys/fs/cgroup`, and the
/// `cgroup.procs` files nspawn must be written into before it starts.
pub struct Delegation {
    pub tree: PathBuf,
    pub procs: Vec<PathBuf>,
}

/// True when `/sys/fs/cgroup` is cgroup2 (no delegation needed).
fn host_is_unified() -> bool {
    mounts()
        .into_iter()
        .any(|(mount, fstype, _)| mount == "/sys/fs/cgroup" && fstype == "cgroup2")
}

/// Makes VM `name`'s cgroups and the tree that shows them; none on a
/// unified host.
pub fn delegate(name: &str, dir: &Path) -> Result<Option<Delegation>> {
    if host_is_unified() {
        return Ok(None);
    }
    let tree = dir.join("cgroup");
    fs::create_dir_all(&tree).with_context(|| format!("cannot create {}", tree.display()))?;
    // A tmpfs of its own: nspawn remounts the VM's /sys/fs/cgroup read-only,
    // which must not reach the file system the VM's directory is on.
    if !host::mounts_below(&tree).contains(&tree) {
        host::run(
            "mount",
            &[
                "-t",
                "tmpfs",
                "-o",
                "mode=0755,size=64k",
                "tmpfs",
                &path(&tree),
            ],
        )?;
    }
    let mut made = Vec::new();
    let mut procs = Vec::new();
    for h in hierarchies()? {
        let parent = h.parent();
        let cgroup = parent.join(name);
        fs::create_dir_all(&cgroup)
            .with_context(|| format!("cannot create cgroup {}", cgroup.display()))?;
        if h.cpuset {
            inherit_cpuset(&parent)?;
            inherit_cpuset(&cgroup)?;
        }
        let source = if h.nested {
            let payload = cgroup.join("payload");
            fs::create_dir_all(&payload)
                .with_context(|| format!("cannot create cgroup {}", payload.display()))?;
            payload
        } else {
            cgroup.clone()
        };
        let base = h.mount.file_name().context("cgroup mounted at /")?;
        let target = tree.join(base);
        fs::create_dir_all(&target)?;
        if !host::mounts_below(&target).contains(&target) {
            host::run("mount", &["--bind", &path(&source), &path(&target)])?;
        }
        procs.push(cgroup.join("cgroup.procs"));
        made.push(path(&cgroup));
        // Recorded as made, so that a failure further on leaves none
        // that `release` does not know of.
        fs::write(dir.join(RECORD), made.join("\n") + "\n")?;
    }
    Ok(Some(Delegation { tree, procs }))
}

/// After VM `dir` is down: its tree unmounted, its cgroups removed.
pub fn release(dir: &Path) {
    host::unmount_below(&dir.join("cgroup"));
    let Ok(record) = fs::read_to_string(dir.join(RECORD)) else {
        return;
    };
    for cgroup in record.lines().filter(|l| !l.is_empty()) {
        remove(Path::new(cgroup));
    }
    let _ = fs::remove_file(dir.join(RECORD));
}

/// After every VM is released: the harness's parent cgroups, if empty.
pub fn sweep() {
    for h in hierarchies().unwrap_or_default() {
        let _ = fs::remove_dir(h.parent());
    }
}

/// A cgroup and its children, deepest first. Only empty cgroups can go:
/// the VM's processes may take a moment to be reaped after its init is
/// killed, so each is tried for a few seconds.
fn remove(cgroup: &Path) {
    let Ok(entries) = fs::read_dir(cgroup) else {
        return;
    };
    for entry in entries.flatten() {
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            remove(&entry.path());
        }
    }
    for _ in 0..50 {
        match fs::remove_dir(cgroup) {
            Ok(()) => return,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return,
            Err(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    }
    eprintln!("cluster: cgroup {} is still busy; left", cgroup.display());
}

/// A v1 cpuset cgroup made empty takes its parent's CPUs and memory nodes.
fn inherit_cpuset(cgroup: &Path) -> Result<()> {
    let parent = cgroup.parent().context("cpuset root")?;
    for file in ["cpuset.cpus", "cpuset.mems"] {
        if fs::read_to_string(cgroup.join(file))?.trim().is_empty() {
            let value = fs::read_to_string(parent.join(file))?;
            fs::write(cgroup.join(file), value.trim())
                .with_context(|| format!("cannot set {}", cgroup.join(file).display()))?;
        }
    }
    Ok(())
}

/// The host's cgroup hierarchies below /sys/fs/cgroup, with the harness's
/// cgroup in each (`/proc/self/cgroup`).
fn hierarchies() -> Result<Vec<Hierarchy>> {
    let own = fs::read_to_string("/proc/self/cgroup")?;
    let own: Vec<(Vec<&str>, &str)> = own
        .lines()
        .filter_map(|l| {
            let mut parts = l.splitn(3, ':');
            let _id = parts.next()?;
            let controllers = parts.next()?.split(',').filter(|c| !c.is_empty());
            Some((controllers.collect(), parts.next()?))
        })
        .collect();
    let mut found = Vec::new();
    for (mount, fstype, options) in mounts() {
        let Some(base) = mount.strip_prefix("/sys/fs/cgroup/") else {
            continue;
        };
        if base.contains('/') {
            continue;
        }
        let options: Vec<&str> = options.split(',').collect();
        let path = match fstype.as_str() {
            "cgroup2" => own.iter().find(|(c, _)| c.is_empty()),
            "cgroup" => own
                .iter()
                .find(|(c, _)| !c.is_empty() && c.iter().all(|c| options.contains(c))),
            _ => continue,
        };
        let (_, path) = path.with_context(|| {
            format!("this process has no cgroup in the hierarchy at {mount} (/proc/self/cgroup)")
        })?;
        found.push(Hierarchy {
            nested: fstype == "cgroup2" || options.contains(&"name=systemd"),
            cpuset: options.contains(&"cpuset"),
            mount: PathBuf::from(mount),
            own: (*path).to_owned(),
        });
    }
    Ok(found)
}

/// `/proc/self/mountinfo` as (mount point, file system type, super options).
fn mounts() -> Vec<(String, String, String)> {
    let text = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    text.lines()
        .filter_map(|line| {
            let (before, after) = line.split_once(" - ")?;
            let mount = before.split(' ').nth(4)?.to_owned();
            let mut after = after.split(' ');
            let fstype = after.next()?.to_owned();
            let _source = after.next()?;
            Some((mount, fstype, after.next()?.to_owned()))
        })
        .collect()
}

fn path(p: &Path) -> String {
    p.to_string_lossy().into_owned()
}
