//! Developer tasks for the kraken-agent workspace.
//!
//! `cargo xtask deps` builds the real test peers (Consul and Nomad from their
//! published Go modules, moto from PyPI) into a cache outside the repository
//! and prints `export` lines for them; `cargo xtask test` runs the whole check
//! with those peers in place. Progress goes to stderr so that
//! `eval "$(cargo xtask deps)"` sees only the exports.

use anyhow::{Context, Result, bail};
use std::ffi::OsStr;
use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

const CONSUL_VERSION: &str = "1.22.5";
const NOMAD_VERSION: &str = "1.11.1";
const MOTO_VERSION: &str = "5.2.5";

/// How many lines of a failed command's output to show.
const TAIL_LINES: usize = 40;

const USAGE: &str = "\
usage: cargo xtask <command>

commands:
  deps               build/install the test peers (consul, nomad, moto) into the
                     cache and print `export` lines: eval \"$(cargo xtask deps)\"
  test [ARGS...]     deps, then cargo fmt --check, clippy -D warnings,
                     cargo test --workspace [ARGS...] with the peers' env set,
                     and `cluster test`
  cluster up [--topology small|seed]
                     build the local image and boot the cluster in nspawn VMs,
                     deploy the web job and print its answers; leaves it running
  cluster status     check the running cluster
  cluster down       stop it and remove everything it made
  cluster test       the fault scenario on a fresh small cluster, then down
  cluster bench [--topology small|seed]
                     boot timings, EC2 calls and agent memory, against
                     Consul's and Nomad's own cloud auto-join (JSON on stdout)

environment:
  KRAKEN_CACHE       cache directory (default: ~/.cache/kraken)
  CARGO_TARGET_DIR   for `test`; defaults to $KRAKEN_CACHE/target";

struct GoPeer {
    name: &'static str,
    module: &'static str,
    version: &'static str,
    /// Nomad needs cgo: runc's libcontainer (nsenter, user-namespace maps),
    /// which its exec driver links, has no pure-Go build. Consul is pure Go,
    /// and a static binary is one less thing to break on another machine.
    cgo: bool,
}

const GO_PEERS: [GoPeer; 2] = [
    GoPeer {
        name: "consul",
        module: "github.com/hashicorp/consul",
        version: CONSUL_VERSION,
        cgo: false,
    },
    GoPeer {
        name: "nomad",
        module: "github.com/hashicorp/nomad",
        version: NOMAD_VERSION,
        cgo: true,
    },
];

struct Deps {
    consul: PathBuf,
    nomad: PathBuf,
    moto_server: PathBuf,
}

impl Deps {
    fn vars(&self) -> [(&'static str, &Path); 3] {
        [
            ("CONSUL_BIN", &self.consul),
            ("NOMAD_BIN", &self.nomad),
            ("MOTO_SERVER", &self.moto_server),
        ]
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("deps") if args.len() == 1 => deps().map(|deps| {
            for (name, path) in deps.vars() {
                println!("export {name}={}", shell_quote(&path.to_string_lossy()));
            }
            ExitCode::SUCCESS
        }),
        Some("test") => test(&args[1..]),
        Some("cluster") => cluster(&args[1..]),
        Some("help" | "-h" | "--help") => {
            eprintln!("{USAGE}");
            Ok(ExitCode::SUCCESS)
        }
        _ => {
            eprintln!("{USAGE}");
            Ok(ExitCode::from(2))
        }
    };
    result.unwrap_or_else(|e| {
        eprintln!("xtask: error: {e:#}");
        ExitCode::FAILURE
    })
}

fn cache_dir() -> Result<PathBuf> {
    let dir = match std::env::var_os("KRAKEN_CACHE") {
        Some(dir) if !dir.is_empty() => PathBuf::from(dir),
        _ => {
            let home = std::env::var_os("HOME").context("neither KRAKEN_CACHE nor HOME is set")?;
            Path::new(&home).join(".cache/kraken")
        }
    };
    // Paths end up in exported variables used from other directories.
    let dir = if dir.is_absolute() {
        dir
    } else {
        std::env::current_dir()?.join(dir)
    };
    fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    Ok(dir)
}

fn xtask_dir() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn workspace_root() -> PathBuf {
    xtask_dir().join("../..")
}

fn deps() -> Result<Deps> {
    let started = Instant::now();
    let cache = cache_dir()?;
    // Two shells (or a shell and CI) running deps at once would share build
    // dirs and half-written binaries.
    let lock = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(cache.join(".deps.lock"))?;
    if lock.try_lock().is_err() {
        eprintln!("xtask: waiting for another `cargo xtask deps` to finish");
        lock.lock()?;
    }
    eprintln!("xtask: cache {}", cache.display());
    for sub in ["bin", "build", "logs"] {
        fs::create_dir_all(cache.join(sub))?;
    }

    // moto's install is network-bound and the Go builds CPU-bound: overlap them.
    let (go_result, moto_result) = std::thread::scope(|s| {
        let moto = s.spawn(|| step("moto: install", || install_moto(&cache)));
        let go = (|| -> Result<Vec<PathBuf>> {
            let go_version = step("go: version", || go_version(&cache))?;
            GO_PEERS
                .iter()
                .map(|peer| {
                    step(&format!("{}: build {}", peer.name, peer.version), || {
                        build_go_peer(&cache, &go_version, peer)
                    })
                })
                .collect()
        })();
        let moto = moto
            .join()
            .unwrap_or_else(|_| Err(anyhow::anyhow!("moto install thread panicked")));
        (go, moto)
    });
    let bins = go_result?;
    let moto_server = moto_result?;
    eprintln!("xtask: deps ready in {}", fmt_duration(started.elapsed()));
    Ok(Deps {
        consul: bins[0].clone(),
        nomad: bins[1].clone(),
        moto_server,
    })
}

/// Runs one named step with its timing on stderr; a failure names the step.
fn step<T>(name: &str, f: impl FnOnce() -> Result<T>) -> Result<T> {
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

fn go_version(cache: &Path) -> Result<String> {
    let mut cmd = Command::new("go");
    cmd.args(["env", "GOVERSION"])
        .env("GOTOOLCHAIN", "local")
        .current_dir(cache);
    let version = capture(&mut cmd)?;
    eprintln!("xtask: using {version}");
    Ok(version)
}

fn build_go_peer(cache: &Path, go_version: &str, peer: &GoPeer) -> Result<PathBuf> {
    let src = xtask_dir().join("peers").join(peer.name);
    check_pin(&src, peer)?;
    let file_name = format!("{}-{}", peer.name, peer.version);
    let out = cache.join("bin").join(&file_name);
    let stamp_path = cache.join("bin").join(format!("{file_name}.stamp"));
    let stamp = build_stamp(&src, go_version, peer)?;
    if out.is_file() && fs::read_to_string(&stamp_path).is_ok_and(|s| s == stamp) {
        eprintln!("xtask: {} is up to date", out.display());
        return Ok(out);
    }

    let dir = cache.join("build").join(peer.name);
    if dir.exists() {
        fs::remove_dir_all(&dir).with_context(|| format!("cannot clear {}", dir.display()))?;
    }
    fs::create_dir_all(&dir)?;
    for file in wrapper_files(&src)? {
        fs::copy(&file, dir.join(file.file_name().unwrap()))?;
    }

    let logs = cache.join("logs");
    let tidy = |dir: &Path| -> Result<()> {
        eprintln!(
            "xtask: {}: go mod tidy -e (resolves and hashes every dependency)",
            peer.name
        );
        run_logged(
            go_cmd(cache, peer, dir).args(["mod", "tidy", "-e"]),
            &logs.join(format!("{}-tidy.log", peer.name)),
        )
    };
    let tmp = cache.join("bin").join(format!(".{file_name}.tmp"));
    let build_log = logs.join(format!("{}-build.log", peer.name));
    let build = |dir: &Path| -> Result<()> {
        eprintln!(
            "xtask: {}: go build (cold: 5 to 8 minutes on 2 cores)",
            peer.name
        );
        run_logged(
            go_cmd(cache, peer, dir)
                .args(["build", "-trimpath", "-ldflags", "-s -w", "-o"])
                .arg(&tmp)
                .arg("."),
            &build_log,
        )
    };

    // No tidy up front, even without a go.sum: `go build -mod=mod` settles
    // the module graph from go.mod alone (minimal version selection, the
    // same result every time) and records exactly the hashes it used. `go mod
    // tidy -e` is not reproducible here: it resolves a test-only import deep
    // in Nomad's dependencies at whatever is latest that day, which upgrades
    // dozens of modules. It stays as the fallback for a go.sum the build
    // cannot work with.
    if let Err(e) = build(&dir) {
        let log = fs::read_to_string(&build_log).unwrap_or_default();
        let sum_problem = [
            "missing go.sum entry",
            "go mod tidy",
            "updates to go.mod needed",
        ]
        .iter()
        .any(|needle| log.contains(needle));
        if !sum_problem {
            return Err(e);
        }
        eprintln!(
            "xtask: {}: go.sum is incomplete; tidying and building again",
            peer.name
        );
        tidy(&dir)?;
        build(&dir)?;
    }

    let built_sum = fs::read(dir.join("go.sum")).unwrap_or_default();
    let repo_sum_path = src.join("go.sum");
    if !built_sum.is_empty() && fs::read(&repo_sum_path).ok() != Some(built_sum.clone()) {
        fs::write(&repo_sum_path, &built_sum)?;
        eprintln!(
            "xtask: wrote {} — commit it: it pins and verifies the peer's dependencies",
            repo_sum_path.display()
        );
    }
    fs::rename(&tmp, &out)?;
    // After the go.sum copy-back, so the next run sees the same inputs.
    fs::write(&stamp_path, build_stamp(&src, go_version, peer)?)?;
    Ok(out)
}

fn go_cmd(cache: &Path, peer: &GoPeer, dir: &Path) -> Command {
    let mut cmd = Command::new("go");
    cmd.current_dir(dir)
        .env("GOMODCACHE", cache.join("go/mod"))
        .env("GOCACHE", cache.join("go/build"))
        // -modcacherw: Go makes the module cache read-only by default, which
        // turns `rm -rf ~/.cache/kraken` into a chmod puzzle.
        .env("GOFLAGS", "-mod=mod -modcacherw -buildvcs=false")
        .env("GOTOOLCHAIN", "local")
        .env("CGO_ENABLED", if peer.cgo { "1" } else { "0" });
    cmd
}

/// The constants here are what tests and docs quote; the go.mod is what gets
/// built. Refuse to let them drift apart silently.
fn check_pin(src: &Path, peer: &GoPeer) -> Result<()> {
    let go_mod = fs::read_to_string(src.join("go.mod"))
        .with_context(|| format!("cannot read {}/go.mod", src.display()))?;
    let pin = format!("{} v{}", peer.module, peer.version);
    if !go_mod.lines().any(|l| l.trim() == pin) {
        bail!(
            "{}/go.mod does not require `{pin}`: update the version constant in xtask or the go.mod",
            src.display()
        );
    }
    Ok(())
}

fn wrapper_files(src: &Path) -> Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for entry in fs::read_dir(src).with_context(|| format!("cannot read {}", src.display()))? {
        let path = entry?.path();
        if path.is_file() {
            files.push(path);
        }
    }
    files.sort();
    Ok(files)
}

fn build_stamp(src: &Path, go_version: &str, peer: &GoPeer) -> Result<String> {
    let mut hash = Fnv::default();
    for file in wrapper_files(src)? {
        hash.write(file.file_name().unwrap().as_encoded_bytes());
        hash.write(&[0]);
        hash.write(&fs::read(&file)?);
        hash.write(&[0]);
    }
    Ok(format!(
        "wrapper={:016x} {go_version} cgo={} ldflags=-s-w\n",
        hash.0, peer.cgo as u8
    ))
}

/// FNV-1a: enough to notice a changed input, and stable across Rust releases
/// (std's DefaultHasher is not).
struct Fnv(u64);

impl Default for Fnv {
    fn default() -> Self {
        Fnv(0xcbf2_9ce4_8422_2325)
    }
}

impl Fnv {
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 ^= u64::from(b);
            self.0 = self.0.wrapping_mul(0x0100_0000_01b3);
        }
    }
}

fn install_moto(cache: &Path) -> Result<PathBuf> {
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

fn test(cargo_test_args: &[String]) -> Result<ExitCode> {
    let deps = deps()?;
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let target = match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) if !dir.is_empty() => PathBuf::from(dir),
        _ => cache_dir()?.join("target"),
    };
    let mut test_args = vec!["test", "--workspace"];
    test_args.extend(cargo_test_args.iter().map(String::as_str));
    let checks: [(&str, Vec<&str>); 3] = [
        ("cargo fmt", vec!["fmt", "--all", "--", "--check"]),
        (
            "cargo clippy",
            vec![
                "clippy",
                "--workspace",
                "--all-targets",
                "--",
                "-D",
                "warnings",
            ],
        ),
        ("cargo test", test_args),
    ];
    let started = Instant::now();
    for (name, args) in checks {
        eprintln!("xtask: [{name}] start");
        let t = Instant::now();
        let mut cmd = Command::new(&cargo);
        cmd.args(&args)
            .current_dir(workspace_root())
            .env("CARGO_TARGET_DIR", &target);
        for (var, path) in deps.vars() {
            cmd.env(var, path);
        }
        let status = cmd
            .status()
            .with_context(|| format!("cannot start {}", describe(&cmd)))?;
        let took = fmt_duration(t.elapsed());
        if !status.success() {
            eprintln!("xtask: [{name}] FAILED ({took}): {status}");
            eprintln!("xtask: command: {}", describe(&cmd));
            let code = status.code().unwrap_or(1).clamp(1, 255);
            return Ok(ExitCode::from(code as u8));
        }
        eprintln!("xtask: [{name}] ok ({took})");
    }
    let code = step("cluster test", || {
        cluster_with(&deps, &target, &["test".into()])
    })?;
    if code != ExitCode::SUCCESS {
        return Ok(code);
    }
    eprintln!(
        "xtask: all checks passed in {}",
        fmt_duration(started.elapsed())
    );
    Ok(ExitCode::SUCCESS)
}

/// The host tools the VM cluster needs (.ci/run installs them).
const CLUSTER_TOOLS: [(&str, &str); 6] = [
    ("systemd-nspawn", "systemd-container"),
    ("debootstrap", "debootstrap"),
    ("ip", "iproute2"),
    ("nsenter", "util-linux"),
    ("journalctl", "systemd"),
    ("mount", "mount"),
];

fn on_path(tool: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|d| d.join(tool).is_file()))
}

/// The Debian packages of missing cluster tools, installed when possible
/// (root with apt-get: the machine kind this runs on), so that `cluster up`
/// works on a fresh machine; otherwise an error naming them.
fn install_cluster_tools() -> Result<()> {
    let mut missing: Vec<&str> = CLUSTER_TOOLS
        .iter()
        .filter(|(tool, _)| !on_path(tool))
        .map(|(_, package)| *package)
        .collect();
    missing.dedup();
    if missing.is_empty() {
        return Ok(());
    }
    let root = capture(Command::new("id").arg("-u")).is_ok_and(|uid| uid == "0");
    if !root || !on_path("apt-get") {
        bail!(
            "the VM cluster needs root and these packages: apt-get install {}",
            missing.join(" ")
        );
    }
    step(&format!("apt-get install {}", missing.join(" ")), || {
        run_logged(
            Command::new("apt-get").args(["update", "-qq"]),
            &cache_dir()?.join("logs/apt-update.log"),
        )?;
        run_logged(
            Command::new("apt-get")
                .args(["install", "-y", "-qq", "--no-install-recommends"])
                .args(&missing)
                .env("DEBIAN_FRONTEND", "noninteractive"),
            &cache_dir()?.join("logs/apt-install.log"),
        )
    })
}

fn cluster(args: &[String]) -> Result<ExitCode> {
    let target = match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) if !dir.is_empty() => PathBuf::from(dir),
        _ => cache_dir()?.join("target"),
    };
    let deps = deps()?;
    cluster_with(&deps, &target, args)
}

/// Builds what the VMs run (the agent, the fake IMDS, the web service, the
/// harness) and the image, then runs the harness (tests/cluster).
fn cluster_with(deps: &Deps, target: &Path, args: &[String]) -> Result<ExitCode> {
    if args.is_empty() {
        eprintln!("{USAGE}");
        return Ok(ExitCode::from(2));
    }
    install_cluster_tools()?;
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let root = cache_dir()?.join("cluster");
    fs::create_dir_all(&root)?;
    let bin = target.join("debug");
    // Only `up`, `test` and `bench` boot VMs: `status` and `down` work with what is
    // running, even if the sources changed since.
    let boots = matches!(args[0].as_str(), "up" | "test" | "bench");
    let mut packages = vec!["kraken-cluster"];
    if boots {
        packages.extend(["kraken-agent", "kraken-fake-imds", "kraken-web"]);
    }
    step("build the cluster's binaries", || {
        let mut cmd = Command::new(&cargo);
        cmd.args(["build", "--quiet"])
            .current_dir(workspace_root())
            .env("CARGO_TARGET_DIR", target);
        for p in &packages {
            cmd.args(["-p", p]);
        }
        let status = cmd.status()?;
        if !status.success() {
            bail!("{} failed: {status}", describe(&cmd));
        }
        Ok(())
    })?;
    let image = root.join("image");
    if boots {
        step("the local image", || {
            // The running VMs' lower layer must not change under them.
            run_logged(
                Command::new(bin.join("kraken-cluster"))
                    .args(harness_paths(deps, &root, &image, &bin))
                    .arg("down"),
                &root.join("down.log"),
            )?;
            let mut cmd = Command::new("bash");
            cmd.arg(workspace_root().join("packer/build-local-image.sh"))
                .arg(&image)
                .env("KRAKEN_AGENT_BIN", bin.join("kraken-agent"))
                .env("KRAKEN_CONSUL_BIN", &deps.consul)
                .env("KRAKEN_NOMAD_BIN", &deps.nomad)
                // Nomad clients run Docker, as on AWS (Debian's docker.io
                // here, Docker CE in the AMI): doctor checks it on real nodes.
                .env("KRAKEN_INSTALL_DOCKER", "1");
            capture(&mut cmd).map(drop)
        })?;
    }
    let status = Command::new(bin.join("kraken-cluster"))
        .args(harness_paths(deps, &root, &image, &bin))
        .args(args)
        .status()
        .context("cannot start kraken-cluster")?;
    Ok(if status.success() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(status.code().unwrap_or(1).clamp(1, 255) as u8)
    })
}

fn harness_paths(deps: &Deps, root: &Path, image: &Path, bin: &Path) -> Vec<std::ffi::OsString> {
    let path = |p: &Path| p.as_os_str().to_owned();
    vec![
        "--root".into(),
        path(root),
        "--image".into(),
        path(image),
        "--imds-bin".into(),
        path(&bin.join("kraken-fake-imds")),
        "--web-bin".into(),
        path(&bin.join("kraken-web")),
        "--moto-server".into(),
        path(&deps.moto_server),
        "--web-job".into(),
        path(&workspace_root().join("jobs/web.nomad.hcl")),
    ]
}

/// Runs a command with stdout and stderr in `log`; on failure the error
/// carries the command line and the log's tail.
fn run_logged(cmd: &mut Command, log: &Path) -> Result<()> {
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
fn capture(cmd: &mut Command) -> Result<String> {
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
fn describe(cmd: &Command) -> String {
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

fn shell_quote(s: &str) -> String {
    let plain = !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_./=:,+@%".contains(&b));
    if plain {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

fn fmt_duration(d: Duration) -> String {
    let secs = d.as_secs_f64();
    if secs < 60.0 {
        format!("{secs:.1}s")
    } else {
        format!("{}m{:02}s", d.as_secs() / 60, d.as_secs() % 60)
    }
}
