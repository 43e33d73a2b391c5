//! One VM: a network namespace, a fake IMDS inside it, and systemd-nspawn
//! booting an overlay of the image as PID 1 in that namespace.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use nix::sys::signal::Signal;
use serde::{Deserialize, Serialize};

pub use crate::userdata::UserData;
use crate::{cgroups, host};

/// Where the web service's binary appears inside every VM (read-only), which
/// is the job's default `web_binary`.
pub const WEB_BINARY_IN_VM: &str = "/opt/kraken/bin/kraken-web";

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Vm {
    pub name: String,
    pub group: String,
    pub address: String,
    pub instance_id: String,
    pub tags: BTreeMap<String, String>,
    pub dir: PathBuf,
    pub nspawn_pid: u32,
    pub imds_pid: u32,
    pub imds_bin: PathBuf,
    /// When the harness started the VM (Unix seconds, fractional).
    pub started_at: f64,
    /// Killed or shut down by the harness.
    pub gone: bool,
}

pub fn now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

pub struct Launch<'a> {
    pub name: String,
    pub group: String,
    pub address: String,
    pub instance_id: String,
    pub vpc_id: String,
    pub tags: BTreeMap<String, String>,
    pub region: &'a str,
    pub availability_zone: &'a str,
    pub image: &'a Path,
    pub vms_dir: &'a Path,
    pub imds_bin: &'a Path,
    pub web_bin: &'a Path,
    pub user_data: &'a UserData,
    /// `autoscaling/target-lifecycle-state` from the first moment (a
    /// warm-pool launch); none: the VM is in no lifecycle transition.
    pub target_state: Option<&'a str>,
    /// A Nomad client: it gets cgroup controllers of its own for its
    /// tasks (crate::cgroups). Other VMs keep the cgroup2 tree nspawn
    /// gives them, the layout of every current AMI, so that each cluster
    /// boots the IMDS guard on both layouts.
    pub runs_tasks: bool,
}

impl Launch<'_> {
    pub fn boot(self) -> Result<Vm> {
        let dir = self.vms_dir.join(&self.name);
        let (upper, work, root) = (dir.join("upper"), dir.join("work"), dir.join("root"));
        for d in [&upper, &work, &root] {
            fs::create_dir_all(d).with_context(|| format!("cannot create {}", d.display()))?;
        }
        host::vm_net_up(&self.name, &self.address)
            .with_context(|| format!("network of VM {}", self.name))?;

        // The instance as IMDS describes it, with an instance profile whose
        // credentials the agent's SDK picks up, as on EC2.
        let imds = serde_json::json!({
            "instance": {
                "instance_id": self.instance_id,
                "private_ipv4": self.address,
                "vpc_id": self.vpc_id,
                "region": self.region,
                "availability_zone": self.availability_zone,
                // AWS tags every instance of a group with it (not in
                // moto: it refuses the reserved aws: prefix, as EC2 does).
                "tags": with_group_tag(&self.tags, &self.group),
                "iam_role": {
                    "name": "kraken-node",
                    "access_key_id": "AKIAKRAKENCLUSTER",
                    "secret_access_key": "kraken-cluster-secret",
                    "token": "kraken-cluster-session",
                },
            }
        });
        let mut imds = imds;
        if let Some(state) = self.target_state {
            imds["instance"]["target_lifecycle_state"] = state.into();
        }
        fs::write(dir.join("imds.json"), serde_json::to_vec_pretty(&imds)?)?;
        let netns = host::vm_netns(&self.name);
        let imds_pid = spawn_imds(&self.name, &dir, self.imds_bin)?;

        host::overlay_mount(self.image, &upper, &work, &root)?;
        self.user_data.write(&root, &self.name)?;

        let bind_web = format!("--bind-ro={}:{WEB_BINARY_IN_VM}", self.web_bin.display());
        // A Nomad client's own cgroups (Nomad's exec driver needs
        // controllers): delegated subtrees on a cgroup v1 host
        // (crate::cgroups); else the cgroup2 tree nspawn gives a VM.
        let delegation = if self.runs_tasks {
            cgroups::delegate(&self.name, &dir)?
        } else {
            None
        };
        let (cgroup_env, bind_cgroups, procs) = match delegation {
            Some(d) => (
                // nspawn's own choice: a hybrid host makes a hybrid VM.
                None,
                Some(format!("--bind={}:/sys/fs/cgroup", d.tree.display())),
                d.procs
                    .iter()
                    .map(|p| p.to_string_lossy().into_owned())
                    .collect::<Vec<_>>()
                    .join(" "),
            ),
            None => (
                Some("SYSTEMD_NSPAWN_UNIFIED_HIERARCHY=1"),
                None,
                String::new(),
            ),
        };
        let netns_arg = format!("--network-namespace-path=/run/netns/{netns}");
        let machine_arg = format!("--machine={}", self.name);
        let mut args: Vec<&str> = vec![
            // nspawn enters the VM's cgroups before it starts, so that the
            // VM's cgroup namespace is rooted at them.
            "-c",
            r#"for f in $1; do echo $$ > "$f" || exit 1; done; shift; exec "$@""#,
            "sh",
            &procs,
            "env",
        ];
        args.extend(cgroup_env);
        args.extend_from_slice(&[
            // The VM's own network namespace is its to configure, as an
            // EC2 instance's is: Docker makes its bridge and NAT rules
            // and turns on IP forwarding there. nspawn grants that
            // (CAP_NET_ADMIN, a writable /proc/sys/net) only with
            // networking options of its own, not with a namespace path.
            "SYSTEMD_NSPAWN_API_VFS_WRITABLE=network",
            "systemd-nspawn",
            // No host systemd here: no machined registration, no scope.
            "--register=no",
            "--keep-unit",
            &netns_arg,
            // runc gives each container a session keyring and, on
            // cgroup v2, a BPF device filter: nspawn's default filter
            // and bounding set refuse both, and Docker would start no
            // container.
            "--capability=CAP_NET_ADMIN,CAP_BPF",
            "--system-call-filter=@keyring bpf",
            // Docker's data root is a disk of the VM's own, as the root
            // volume is on EC2: doctor's disk check then reads the VM's
            // use, not the build machine's, and Docker gets overlay2
            // (it cannot stack on the image's overlayfs).
            "--tmpfs=/var/lib/docker:mode=0710,size=1g",
            &machine_arg,
            "--console=passive",
            &bind_web,
        ]);
        args.extend(bind_cgroups.as_deref());
        let root_arg = root.to_string_lossy();
        args.extend_from_slice(&["-b", "-D", &root_arg]);
        let started_at = now();
        let nspawn_pid = host::spawn_daemon(Path::new("sh"), &args, &dir.join("console.log"))?;
        Ok(Vm {
            name: self.name,
            group: self.group,
            address: self.address,
            instance_id: self.instance_id,
            tags: self.tags,
            dir,
            nspawn_pid,
            imds_pid,
            imds_bin: self.imds_bin.to_owned(),
            started_at,
            gone: false,
        })
    }
}

fn with_group_tag(tags: &BTreeMap<String, String>, group: &str) -> BTreeMap<String, String> {
    let mut all = tags.clone();
    all.insert(
        "aws:autoscaling:groupName".into(),
        crate::lifecycle::asg_name(group),
    );
    all
}

/// The fake IMDS of VM `name`, serving `dir/imds.json` in its namespace.
fn spawn_imds(name: &str, dir: &Path, imds_bin: &Path) -> Result<u32> {
    host::spawn_daemon(
        Path::new("ip"),
        &[
            "netns",
            "exec",
            &host::vm_netns(name),
            &imds_bin.to_string_lossy(),
            "--instance",
            &dir.join("imds.json").to_string_lossy(),
        ],
        &dir.join("imds.log"),
    )
}

/// A journal entry's message: a string, or the bytes journald exports for
/// one that is not printable text (colour codes, say).
fn message(value: &serde_json::Value) -> Option<String> {
    match value {
        serde_json::Value::String(s) => Some(s.clone()),
        serde_json::Value::Array(bytes) => {
            let bytes: Vec<u8> = bytes
                .iter()
                .filter_map(|b| b.as_u64().and_then(|b| u8::try_from(b).ok()))
                .collect();
            Some(String::from_utf8_lossy(&bytes).into_owned())
        }
        _ => None,
    }
}

impl Vm {
    /// The VM's PID 1 as the host sees it.
    pub fn init_pid(&self) -> Option<u32> {
        if self.gone || !host::alive(self.nspawn_pid) {
            return None;
        }
        host::first_child(self.nspawn_pid)
    }

    /// A path inside the running VM, through its init's root.
    pub fn path(&self, inside: &str) -> Option<PathBuf> {
        let init = self.init_pid()?;
        Some(PathBuf::from(format!("/proc/{init}/root{inside}")))
    }

    pub fn read(&self, inside: &str) -> Option<String> {
        fs::read_to_string(self.path(inside)?).ok()
    }

    /// The agent's /run/kraken/status.json.
    pub fn agent_status(&self) -> Option<kraken_ready::Status> {
        serde_json::from_str(&self.read("/run/kraken/status.json")?).ok()
    }

    /// Runs a command inside the VM (all its namespaces).
    pub fn exec(&self, args: &[&str]) -> Result<String> {
        let init = self
            .init_pid()
            .with_context(|| format!("VM {} is not running", self.name))?;
        let init = init.to_string();
        let mut all = vec!["-t", &init, "-a", "--"];
        all.extend_from_slice(args);
        host::run("nsenter", &all)
    }

    /// A command inside the VM as root logged in runs it: in `user.slice`,
    /// the cgroup from which the node's IMDS guard lets root reach instance
    /// metadata (docs/iam.md). `nsenter` alone would leave it in the
    /// harness's cgroup, outside the VM's tree, and `kraken-agent doctor`
    /// or `snapshot` would find IMDS refused. `tty`: a terminal for a
    /// person's shell; otherwise stdin and stdout are passed through.
    fn logged_in(&self, args: &[&str], tty: bool) -> Result<std::process::Command> {
        let init = self
            .init_pid()
            .with_context(|| format!("VM {} is not running", self.name))?;
        let mut command = std::process::Command::new("nsenter");
        command
            .args(["-t", &init.to_string(), "-a", "--"])
            .args(["systemd-run", "--quiet", "--wait", "--collect"])
            .arg(if tty { "--pty" } else { "--pipe" })
            .args(["--slice=user.slice", "--"])
            .args(args);
        Ok(command)
    }

    /// Runs a command inside the VM as root logged in (see [`Self::logged_in`]);
    /// its output, whatever its exit status.
    pub fn output_logged_in(&self, args: &[&str]) -> Result<std::process::Output> {
        self.logged_in(args, false)?
            .stdin(std::process::Stdio::null())
            .output()
            .with_context(|| format!("running nsenter into VM {}", self.name))
    }

    /// Runs a command inside the VM as root logged in: its stdout; an error
    /// with its stderr when it fails.
    pub fn exec_logged_in(&self, args: &[&str]) -> Result<String> {
        let out = self.output_logged_in(args)?;
        if !out.status.success() {
            anyhow::bail!(
                "`{}` on {} failed ({}): {}",
                args.join(" "),
                self.name,
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Runs a command inside the VM, as root logged in, with this process's
    /// stdin, stdout and stderr: a person's shell into it.
    pub fn exec_inherit(&self, command: &[String]) -> Result<std::process::ExitStatus> {
        use std::io::IsTerminal;
        let tty = std::io::stdin().is_terminal() && std::io::stdout().is_terminal();
        let args: Vec<&str> = command.iter().map(String::as_str).collect();
        self.logged_in(&args, tty)?
            .status()
            .with_context(|| format!("running nsenter into VM {}", self.name))
    }

    /// The kraken-agent's journal, also after the VM is gone (persistent
    /// journal in the overlay's upper layer).
    pub fn agent_journal(&self) -> Result<String> {
        self.journal_as("kraken-agent.service", "cat")
    }

    /// The agent's journal as (seconds since the epoch, message) pairs.
    pub fn agent_log(&self) -> Result<Vec<(f64, String)>> {
        self.unit_log("kraken-agent.service")
    }

    /// A unit's journal as (seconds since the epoch, message) pairs.
    pub fn unit_log(&self, unit: &str) -> Result<Vec<(f64, String)>> {
        let json = self.journal_as(unit, "json")?;
        Ok(json
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter_map(|e| {
                let micros: f64 = e["__REALTIME_TIMESTAMP"].as_str()?.parse().ok()?;
                Some((micros / 1e6, message(&e["MESSAGE"])?))
            })
            .collect())
    }

    /// The VM's journal directory: the persistent one once journald has
    /// flushed to it (kept after the VM is gone), else, while the VM runs,
    /// the volatile one under /run (before the flush, or if it never came).
    fn journal_dir(&self) -> Result<PathBuf> {
        let persistent = self.dir.join("upper/var/log/journal");
        let volatile = self.path("/run/log/journal");
        let machine_dir = |dir: &Path| {
            fs::read_dir(dir)
                .ok()?
                .flatten()
                .map(|e| e.path())
                .find(|p| p.is_dir())
        };
        machine_dir(&persistent)
            .or_else(|| volatile.as_deref().and_then(machine_dir))
            .with_context(|| {
                format!(
                    "no journal in {} nor, in the VM, /run/log/journal",
                    persistent.display()
                )
            })
    }

    fn journal_as(&self, unit: &str, output: &str) -> Result<String> {
        let machine_id = self.journal_dir()?;
        host::run(
            "journalctl",
            &[
                "--directory",
                &machine_id.to_string_lossy(),
                "-u",
                unit,
                "-o",
                output,
                "--no-pager",
            ],
        )
    }

    /// The agent's peak resident set size (VmHWM), in KiB.
    pub fn agent_peak_rss_kib(&self) -> Option<u64> {
        let init = self.init_pid()?;
        let pid_ns = fs::read_link(format!("/proc/{init}/ns/pid")).ok()?;
        let pids = host::pids_matching("kraken-agent run");
        pids.into_iter()
            .filter(|pid| fs::read_link(format!("/proc/{pid}/ns/pid")).ok() == Some(pid_ns.clone()))
            .filter_map(|pid| {
                let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
                let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
                line.split_whitespace().nth(1)?.parse().ok()
            })
            .max()
    }

    /// IMDS stops answering (the VM's metadata endpoint is gone).
    pub fn stop_imds(&mut self) {
        host::signal(self.imds_pid, Signal::SIGTERM);
        host::wait_gone(self.imds_pid, Duration::from_secs(5));
    }

    /// IMDS back, serving the instance data as it is in `imds.json` now.
    pub fn start_imds(&mut self) -> Result<()> {
        self.imds_pid = spawn_imds(&self.name, &self.dir, &self.imds_bin)?;
        Ok(())
    }

    /// Changes one instance tag as IMDS reports it (restarts the VM's IMDS);
    /// `None` removes it. Returns the previous value.
    pub fn set_imds_tag(&mut self, key: &str, value: Option<&str>) -> Result<Option<String>> {
        let path = self.dir.join("imds.json");
        let mut doc: serde_json::Value = serde_json::from_slice(&fs::read(&path)?)?;
        let tags = doc["instance"]["tags"]
            .as_object_mut()
            .context("imds.json has no tags")?;
        let old = match value {
            Some(v) => tags.insert(key.to_owned(), v.into()),
            None => tags.remove(key),
        };
        fs::write(&path, serde_json::to_vec_pretty(&doc)?)?;
        self.stop_imds();
        self.start_imds()?;
        Ok(old.and_then(|v| v.as_str().map(str::to_owned)))
    }

    /// A power cut: PID 1 of the VM is killed, which kills every process in
    /// it at once; no shutdown runs, no lease is released.
    pub fn power_off(&mut self) {
        if let Some(init) = self.init_pid() {
            host::signal(init, Signal::SIGKILL);
        }
        host::signal(self.nspawn_pid, Signal::SIGKILL);
        host::wait_gone(self.nspawn_pid, Duration::from_secs(10));
        self.release();
    }

    /// A clean shutdown from inside (`systemctl poweroff`, what EC2's
    /// stop or terminate asks of the OS); false if it is not down within
    /// `timeout`, when it is cut.
    pub async fn shut_down(&mut self, timeout: Duration) -> bool {
        let _ = self.exec(&["systemctl", "poweroff", "--no-block"]);
        let deadline = std::time::Instant::now() + timeout;
        // Async: the web traffic runs on this runtime meanwhile.
        while host::alive(self.nspawn_pid) && std::time::Instant::now() < deadline {
            host::reap();
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        if host::alive(self.nspawn_pid) {
            self.power_off();
            return false;
        }
        self.release();
        true
    }

    /// After the VM is down: its IMDS, namespace and root mount go; its
    /// directory stays (journal) until the cluster is swept.
    fn release(&mut self) {
        host::signal(self.imds_pid, Signal::SIGTERM);
        host::wait_gone(self.imds_pid, Duration::from_secs(5));
        host::unmount_below(&self.dir.join("root"));
        cgroups::release(&self.dir);
        host::vm_net_down(&self.name);
        self.gone = true;
    }
}
