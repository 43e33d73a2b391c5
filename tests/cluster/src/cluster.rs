//! The cluster as a whole: the hub, moto, and the VMs launched from the
//! topology's groups, with the state `status` and `down` read back.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};

use crate::api::{self, Api, Tokens};
use crate::checks::{self, Check, Node};
use crate::cloud::{self, Cloud};
use crate::host;
use crate::topology::{CLUSTER, Group, Topology};
use crate::vm::{Launch, UserData, Vm};
use crate::web;

pub const MOTO_PORT: u16 = 5000;

/// Inputs the harness does not build itself (`cargo xtask cluster` does).
#[derive(Debug, Clone, clap::Args)]
pub struct Paths {
    /// Working directory: VM overlays, logs, state.
    #[arg(long)]
    pub root: PathBuf,
    /// The image built by packer/build-local-image.sh.
    #[arg(long)]
    pub image: PathBuf,
    #[arg(long)]
    pub imds_bin: PathBuf,
    #[arg(long)]
    pub web_bin: PathBuf,
    #[arg(long)]
    pub moto_server: PathBuf,
    /// The container registry (`crates/xtask/peers/registry`).
    #[arg(long)]
    pub registry_bin: PathBuf,
    /// jobs/web.nomad.hcl
    #[arg(long)]
    pub web_job: PathBuf,
}

impl Paths {
    pub fn vms_dir(&self) -> PathBuf {
        self.root.join("vms")
    }
    fn state_file(&self) -> PathBuf {
        self.root.join("state.json")
    }
}

#[derive(Debug, Serialize, Deserialize)]
struct State {
    topology: String,
    subnet: String,
    moto_pid: u32,
    next_address: u8,
    vms: Vec<Vm>,
    /// `[snapshots]` in every VM's agent.toml (`up` turns it on).
    #[serde(default)]
    snapshots: bool,
}

pub struct Cluster {
    pub paths: Paths,
    pub topology: Topology,
    pub groups: Vec<Group>,
    pub cloud: Cloud,
    subnet: String,
    moto_pid: u32,
    next_address: u8,
    pub vms: Vec<Vm>,
    /// Whether [`Cluster::user_data`] has `[snapshots]` (`crate::restore`).
    pub snapshots: bool,
    /// What every VM gets unless a launch says otherwise.
    pub user_data: UserData,
    pub api: Arc<Api>,
    started: Instant,
}

/// The user data of every VM: where the EC2/SSM API is (the endpoint
/// override, as user-data would set on AWS for a VPC endpoint), and the
/// local cluster's agent.toml: raw_exec for the web job (no registry to
/// pull an image from); Docker runs on the clients as it would on AWS.
pub fn default_user_data(endpoint: &str) -> UserData {
    // Plain HTTP only when asked (`--no-tls`): TLS is the agent's default.
    let tls = if api::tls() {
        ""
    } else {
        "[tls]\nenabled = false\n\n"
    };
    UserData {
        env: BTreeMap::from([
            ("AWS_ENDPOINT_URL".to_owned(), endpoint.to_owned()),
            // The two lifecycle calls moto lacks (`crate::lifecycle`).
            (
                "AWS_ENDPOINT_URL_AUTO_SCALING".to_owned(),
                format!("http://{}:{}", host::HUB_IP, crate::lifecycle::ASG_PORT),
            ),
        ]),
        agent_toml: format!(
            r#"# Written by the cluster harness, as cloud-init would from user-data.
[consul]
# The API on the private address too, for the operator's checks from the
# hub (ACLs deny anonymous callers).
client_addr = "0.0.0.0"

[nomad]
raw_exec = true

{tls}[discovery]
refresh_secs = 15
# Servers too (300 s by default): a replaced server's address reaches the
# others' configs before the scenario's doctor compares them.
server_refresh_secs = 15

# The web job's team: deployed with its token, in its namespace.
{team}"#,
            team = crate::web::TEAM_TOML
        ),
        hosts: Vec::new(),
        extra_ca: None,
        service_env: BTreeMap::new(),
    }
}

pub fn log(started: Instant, message: impl AsRef<str>) {
    eprintln!(
        "[{:>6.1}s] {}",
        started.elapsed().as_secs_f64(),
        message.as_ref()
    );
}

impl Cluster {
    /// Sweeps any previous cluster, makes the hub and enters it. Called
    /// before the async runtime starts (see [`host::enter_hub`]).
    pub fn prepare(paths: &Paths) -> Result<()> {
        host::sweep(&paths.root, &paths.vms_dir());
        let _ = fs::remove_file(paths.state_file());
        fs::create_dir_all(paths.vms_dir())?;
        host::hub_up().context("creating the hub namespace")?;
        host::enter_hub()
    }

    /// Starts moto and the network in it. [`Cluster::prepare`] first.
    pub async fn create(paths: Paths, topology: Topology) -> Result<Cluster> {
        let started = Instant::now();
        let moto_pid = cloud::start_moto(
            &paths.moto_server,
            host::HUB_IP,
            MOTO_PORT,
            &paths.root.join("moto.log"),
        )?;
        let endpoint = format!("http://{}:{MOTO_PORT}", host::HUB_IP);
        let cloud = Cloud::connect(&endpoint).await?;
        let subnet = cloud.subnet().await?;
        log(started, format!("moto at {endpoint}, subnet {subnet}"));
        let cluster = Cluster {
            user_data: default_user_data(&endpoint),
            groups: topology.groups(),
            paths,
            topology,
            cloud,
            subnet,
            moto_pid,
            next_address: 10,
            vms: Vec::new(),
            snapshots: false,
            api: Arc::new(Api::new()),
            started,
        };
        cluster.save()?;
        Ok(cluster)
    }

    /// The cluster `up` left running. The caller has entered the hub.
    pub async fn load(paths: Paths) -> Result<Cluster> {
        let text = fs::read_to_string(paths.state_file())
            .context("no cluster is up (no state file); run `cargo xtask cluster up`")?;
        let state: State = serde_json::from_str(&text)?;
        let topology = <Topology as clap::ValueEnum>::from_str(&state.topology, false)
            .map_err(|e| anyhow::anyhow!("state file: topology {:?}: {e}", state.topology))?;
        let endpoint = format!("http://{}:{MOTO_PORT}", host::HUB_IP);
        let mut user_data = default_user_data(&endpoint);
        if state.snapshots {
            user_data.agent_toml += &crate::restore::snapshots_toml(false);
        }
        Ok(Cluster {
            user_data,
            snapshots: state.snapshots,
            cloud: Cloud::connect(&endpoint).await?,
            groups: topology.groups(),
            paths,
            topology,
            subnet: state.subnet,
            moto_pid: state.moto_pid,
            next_address: state.next_address,
            vms: state.vms,
            api: Arc::new(Api::new()),
            started: Instant::now(),
        })
    }

    pub fn save(&self) -> Result<()> {
        let state = State {
            topology: self.topology.name().into(),
            subnet: self.subnet.clone(),
            moto_pid: self.moto_pid,
            next_address: self.next_address,
            vms: self.vms.clone(),
            snapshots: self.snapshots,
        };
        fs::write(self.paths.state_file(), serde_json::to_vec_pretty(&state)?)?;
        Ok(())
    }

    /// Stops every VM and moto and removes the VMs' directories, keeping the
    /// hub (this process lives in it), so that another cluster can be
    /// created in it.
    pub fn destroy(&mut self) {
        for vm in self.vms.iter_mut().filter(|v| !v.gone) {
            vm.power_off();
        }
        host::signal(self.moto_pid, nix::sys::signal::Signal::SIGTERM);
        host::wait_gone(self.moto_pid, Duration::from_secs(10));
        host::unmount_below(&self.paths.vms_dir());
        let _ = fs::remove_dir_all(self.paths.vms_dir());
        let _ = fs::create_dir_all(self.paths.vms_dir());
        let _ = fs::remove_file(self.paths.state_file());
    }

    pub fn log(&self, message: impl AsRef<str>) {
        log(self.started, message);
    }

    pub fn group(&self, name: &str) -> Result<&Group> {
        self.groups
            .iter()
            .find(|g| g.name == name)
            .with_context(|| format!("no group {name} in this topology"))
    }

    /// Launches one more instance of `group`, with a new address and name
    /// (as an autoscaling group replaces an instance), and boots its VM.
    pub async fn launch(&mut self, group: &str, user_data: Option<&UserData>) -> Result<&Vm> {
        self.launch_as(group, user_data, None).await
    }

    /// `launch`, with IMDS's target lifecycle state set before the VM
    /// boots (`Warmed:Running`: into the group's warm pool).
    pub async fn launch_as(
        &mut self,
        group: &str,
        user_data: Option<&UserData>,
        target_state: Option<&str>,
    ) -> Result<&Vm> {
        let group = self.group(group)?.clone();
        let seq = self.vms.iter().filter(|v| v.group == group.name).count() + 1;
        let name = format!("{}{seq}", group.name);
        if self.next_address == 255 {
            bail!("out of addresses in {}", host::SUBNET);
        }
        let address = format!("10.213.0.{}", self.next_address);
        self.next_address += 1;
        let (instance_id, vpc_id) = self
            .cloud
            .run_instance(&self.subnet, &address, &group.tags)
            .await?;
        let user_data = user_data.unwrap_or(&self.user_data).clone();
        let vm = Launch {
            name: name.clone(),
            group: group.name.into(),
            address: address.clone(),
            instance_id: instance_id.clone(),
            vpc_id,
            tags: group.tags.clone(),
            region: cloud::REGION,
            availability_zone: cloud::AVAILABILITY_ZONE,
            image: &self.paths.image,
            vms_dir: &self.paths.vms_dir(),
            imds_bin: &self.paths.imds_bin,
            web_bin: &self.paths.web_bin,
            user_data: &user_data,
            target_state,
            runs_tasks: group.is_nomad_client(),
        }
        .boot()
        .with_context(|| format!("booting VM {name}"))?;
        self.log(format!(
            "booted {name} ({instance_id}, {address}, {})",
            group.roles()
        ));
        self.vms.push(vm);
        self.save()?;
        Ok(self.vms.last().expect("just pushed"))
    }

    pub async fn launch_group(&mut self, group: &str) -> Result<()> {
        let size = self.group(group)?.size;
        for _ in 0..size {
            self.launch(group, None).await?;
        }
        Ok(())
    }

    pub fn vm(&self, name: &str) -> Result<&Vm> {
        self.vms
            .iter()
            .find(|v| v.name == name && !v.gone)
            .with_context(|| format!("no running VM {name}"))
    }

    pub fn vm_mut(&mut self, name: &str) -> Result<&mut Vm> {
        self.vms
            .iter_mut()
            .find(|v| v.name == name && !v.gone)
            .with_context(|| format!("no running VM {name}"))
    }

    /// A power cut, then the instance is terminated (an autoscaling group
    /// would replace it).
    pub async fn kill(&mut self, name: &str) -> Result<()> {
        let vm = self.vm_mut(name)?;
        vm.power_off();
        let id = vm.instance_id.clone();
        self.cloud.terminate(&id).await?;
        self.log(format!("killed {name} ({id}) and terminated its instance"));
        self.save()
    }

    /// Running VMs with their groups.
    pub fn nodes(&self) -> Vec<Node<'_>> {
        self.vms
            .iter()
            .filter(|v| !v.gone)
            .filter_map(|vm| {
                let group = self.groups.iter().find(|g| g.name == vm.group)?;
                Some(Node { vm, group })
            })
            .collect()
    }

    /// The management tokens, and (once a node has them) the certificates
    /// to reach the APIs with: every API use starts here.
    pub async fn tokens(&self) -> Result<Tokens> {
        self.ensure_tls()?;
        Tokens::from_secrets(self.cloud.secrets(CLUSTER).await?)
    }

    pub fn ensure_tls(&self) -> Result<()> {
        if !api::tls() || self.api.has_tls_material() {
            return Ok(());
        }
        let mut last = anyhow::anyhow!("no VM is running");
        for vm in self.vms.iter().filter(|v| !v.gone) {
            match vm.path("/").map(|root| self.api.load_tls(&root)) {
                Some(Ok(())) => return Ok(()),
                Some(Err(e)) => last = e,
                None => {}
            }
        }
        Err(last.context("no node has its TLS certificates yet"))
    }

    pub async fn checks(&self) -> Vec<Check> {
        match self.tokens().await {
            Ok(tokens) => checks::cluster(&self.api, &self.nodes(), &tokens).await,
            Err(e) => vec![Check {
                name: "secrets",
                ok: false,
                detail: format!("{e:#}"),
            }],
        }
    }

    /// Waits until every check passes; prints each change of the failing
    /// set, and on timeout every check and every VM's agent status.
    pub async fn wait_ready(&self, what: &str, timeout: Duration) -> Result<Vec<Check>> {
        let deadline = Instant::now() + timeout;
        let mut last = String::new();
        loop {
            let checks = self.checks().await;
            if checks.iter().all(|c| c.ok) {
                self.log(format!("{what}: every check passed"));
                return Ok(checks);
            }
            let failing: Vec<&str> = checks.iter().filter(|c| !c.ok).map(|c| c.name).collect();
            let summary = failing.join(", ");
            if summary != last {
                self.log(format!("{what}: waiting for {summary}"));
                last = summary;
            }
            if Instant::now() > deadline {
                for c in &checks {
                    eprintln!("  {c}");
                }
                self.print_agents();
                bail!("{what}: not ready after {}s", timeout.as_secs());
            }
            tokio::time::sleep(Duration::from_secs(3)).await;
        }
    }

    /// Each running VM's agent status, and the end of its journal.
    pub fn print_agents(&self) {
        for vm in self.vms.iter().filter(|v| !v.gone) {
            match vm.agent_status() {
                Some(s) => eprintln!(
                    "  {} ({}): {} {}{}",
                    vm.name,
                    vm.address,
                    s.phase,
                    s.message,
                    s.last_error
                        .map(|e| format!(" [last error: {e}]"))
                        .unwrap_or_default()
                ),
                None => eprintln!("  {} ({}): no agent status", vm.name, vm.address),
            }
            if let Ok(journal) = vm.agent_journal() {
                for line in journal
                    .lines()
                    .rev()
                    .take(8)
                    .collect::<Vec<_>>()
                    .into_iter()
                    .rev()
                {
                    eprintln!("      {line}");
                }
            }
        }
    }

    fn first_address(&self, pick: fn(&Group) -> bool) -> Result<String> {
        self.nodes()
            .into_iter()
            .find(|n| pick(n.group))
            .map(|n| n.vm.address.clone())
            .context("no such server is running")
    }

    /// Submits jobs/web.nomad.hcl through a Nomad server, in its team's
    /// namespace with its team's token from the secret store (the
    /// management token is not used).
    pub async fn deploy_web(&self) -> Result<()> {
        let tokens = self.tokens().await?;
        let team = tokens.all.get(web::TEAM_TOKEN).with_context(|| {
            format!(
                "the secret store has no {} yet: the Nomad leader's agent makes it",
                web::TEAM_TOKEN
            )
        })?;
        let nomad = self.first_address(Group::is_nomad_server)?;
        let hcl = fs::read_to_string(&self.paths.web_job)
            .with_context(|| format!("reading {}", self.paths.web_job.display()))?;
        let header = ("X-Nomad-Token", team.as_str());
        let ns = web::NAMESPACE;
        let mut job = self
            .api
            .send_json(
                reqwest::Method::POST,
                &api::nomad_url(&nomad, &format!("/v1/jobs/parse?namespace={ns}")),
                header,
                &serde_json::json!({ "JobHCL": hcl, "Canonicalize": true }),
            )
            .await?;
        job["Namespace"] = serde_json::json!(ns);
        self.api
            .send_json(
                reqwest::Method::POST,
                &api::nomad_url(&nomad, &format!("/v1/jobs?namespace={ns}")),
                header,
                &serde_json::json!({ "Job": job }),
            )
            .await?;
        self.log(format!(
            "submitted job web in namespace {ns} with team web's token"
        ));
        Ok(())
    }

    /// Waits until both web instances answer through Consul.
    pub async fn wait_web(&self, timeout: Duration) -> Result<Vec<web::WebAnswer>> {
        let tokens = self.tokens().await?;
        let consul = self.first_address(Group::is_consul_server)?;
        let nomad = self.first_address(Group::is_nomad_server)?;
        let deadline = Instant::now() + timeout;
        loop {
            match web::web(&self.api, &consul, &nomad, &tokens, 2).await {
                Ok(answers) => return Ok(answers),
                Err(e) if Instant::now() > deadline => {
                    return Err(e.context(format!(
                        "web service not answering after {}s",
                        timeout.as_secs()
                    )));
                }
                Err(_) => tokio::time::sleep(Duration::from_secs(2)).await,
            }
        }
    }
}

/// Everything under `root` goes: VMs, moto, namespaces, mounts.
pub fn teardown(paths: &Paths) {
    host::sweep(&paths.root, &paths.vms_dir());
    let _ = fs::remove_file(paths.state_file());
}

pub fn image_ok(image: &Path) -> Result<()> {
    if !image.join(".kraken-image").exists() {
        bail!(
            "{} is not an image built by packer/build-local-image.sh",
            image.display()
        );
    }
    Ok(())
}
