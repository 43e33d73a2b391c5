//! Doctor on the real nodes (issue #6): every node all ok, then each fault
//! of [`FAULTS`] in turn: injected, named by doctor (check, level, finding,
//! and the command it says to run next), undone, and doctor all ok again.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};

use crate::api;
use crate::cluster::Cluster;
use crate::doctor::{self, Expect, Level};
use crate::vm::Vm;

/// A running VM by role: the `nth` running VM of a group, in launch order.
#[derive(Clone, Copy)]
struct On {
    group: &'static str,
    nth: usize,
}

const CLIENT: On = On {
    group: "client",
    nth: 0,
};

const fn server(nth: usize) -> On {
    On {
        group: "server",
        nth,
    }
}

/// A change made to the cluster, to break something or to mend it; what a
/// mend needs from the break is kept in [`Saved`].
enum Change {
    /// A command run in the fault's VM.
    Run(&'static [&'static str]),
    /// A command run in each of these VMs; they are checked all ok again
    /// after the undo, as the fault's VM is.
    RunOn(&'static [On], &'static [&'static str]),
    /// Text appended to a file in the VM.
    Append {
        path: &'static str,
        text: &'static str,
    },
    /// The node's EC2 endpoint (its agent.env, which doctor reads like the
    /// unit) set to one that answers every call as EC2 does for a role
    /// without the permission. moto's IAM enforcement is all-or-nothing for
    /// the whole moto, so the refusal comes from a small endpoint of ours.
    DenyEc2,
    /// The file `Append` or `DenyEc2` changed, as it was.
    RestoreFile,
    /// A file written in the VM.
    Write {
        path: &'static str,
        contents: fn() -> Result<String>,
    },
    Remove(&'static str),
    /// An instance tag as the VM's IMDS reports it.
    Tag {
        key: &'static str,
        value: &'static str,
    },
    RestoreTag,
    StopImds,
    StartImds,
    /// The Consul servers' shared agent token, deleted in Consul.
    DeleteAgentToken,
    /// ... and put back with the same ids (the agent's config still holds
    /// its secret).
    RestoreAgentToken,
}

/// What the injection changed, for the undo.
#[derive(Default)]
struct Saved {
    file: Option<(PathBuf, String)>,
    tag: Option<(&'static str, Option<String>)>,
    /// The Consul server, the management token, the token's PUT body.
    token: Option<(String, String, serde_json::Value)>,
}

struct Fault {
    /// What is broken, as the log says it.
    name: &'static str,
    /// Where it is injected and doctor runs.
    on: On,
    /// Run in order; once the first has run, the undo runs whatever happens.
    inject: &'static [Change],
    /// What doctor must report.
    expect: Expect,
    undo: &'static [Change],
    /// How long doctor may take to see it; zero: at its first look.
    within: Duration,
    /// Only when Consul and Nomad run with TLS.
    tls_only: bool,
}

const FAULTS: &[Fault] = &[
    Fault {
        // The agent first: its watch starts a stopped Consul again within a
        // refresh period, which would race doctor.
        name: "Consul stopped",
        on: CLIENT,
        inject: &[
            Change::Run(&["systemctl", "stop", "kraken-agent"]),
            Change::Run(&["systemctl", "stop", "consul"]),
        ],
        expect: Expect {
            check: "units",
            level: Level::Fail,
            says: &["consul.service is enabled and inactive"],
            says_one_of: &[],
            next: "systemctl status consul.service",
        },
        undo: &[
            Change::Run(&["systemctl", "start", "consul"]),
            Change::Run(&["systemctl", "start", "kraken-agent"]),
        ],
        within: Duration::ZERO,
        tls_only: false,
    },
    Fault {
        name: "nomad.hcl edited by hand",
        on: CLIENT,
        inject: &[Change::Append {
            path: "/etc/nomad.d/nomad.hcl",
            text: "\n# edited by hand\n",
        }],
        expect: Expect {
            check: "configs",
            level: Level::Warn,
            says: &["nomad.hcl"],
            says_one_of: &[],
            next: "kraken-agent render --out /tmp/kraken-plan",
        },
        undo: &[Change::RestoreFile],
        within: Duration::ZERO,
        tls_only: false,
    },
    // Next to the node's own certificates: past the point where it should
    // have been renewed.
    Fault {
        name: "a certificate expiring in 5 days",
        on: CLIENT,
        inject: &[Change::Write {
            path: "/etc/consul.d/tls/expiring.pem",
            contents: expiring_certificate,
        }],
        expect: Expect {
            check: "tls",
            level: Level::Warn,
            says: &["past its renewal time"],
            says_one_of: &["has 4d left", "has 5d left"],
            next: "journalctl -u kraken-agent | grep -i certificate",
        },
        undo: &[Change::Remove("/etc/consul.d/tls/expiring.pem")],
        within: Duration::ZERO,
        tls_only: true,
    },
    // A 16 MiB tmpfs over Docker's data root, 15 MiB of it taken. Docker
    // keeps running on its open files underneath.
    Fault {
        name: "Docker's data root 94% full",
        on: CLIENT,
        inject: &[
            Change::Run(&[
                "mount",
                "-t",
                "tmpfs",
                "-o",
                "size=16m",
                "kraken-fill",
                "/var/lib/docker",
            ]),
            Change::Run(&[
                "dd",
                "if=/dev/zero",
                "of=/var/lib/docker/fill",
                "bs=1M",
                "count=15",
                "status=none",
            ]),
        ],
        expect: Expect {
            check: "docker-disk",
            level: Level::Fail,
            says: &["/var/lib/docker is 94% full"],
            says_one_of: &[],
            next: "docker system df",
        },
        undo: &[Change::Run(&["umount", "/var/lib/docker"])],
        within: Duration::ZERO,
        tls_only: false,
    },
    Fault {
        name: "EC2 access denied",
        on: CLIENT,
        inject: &[Change::DenyEc2],
        expect: Expect {
            check: "aws",
            level: Level::Fail,
            says: &["ec2:DescribeInstances was denied"],
            says_one_of: &[],
            next: "docs/iam.md",
        },
        undo: &[Change::RestoreFile],
        within: Duration::ZERO,
        tls_only: false,
    },
    Fault {
        name: "a bad tag",
        on: CLIENT,
        inject: &[Change::Tag {
            key: "kraken:node-class",
            value: "no spaces allowed",
        }],
        expect: Expect {
            check: "tags",
            level: Level::Fail,
            says: &["kraken:node-class has value \"no spaces allowed\""],
            says_one_of: &[],
            next: "aws ec2 describe-tags",
        },
        undo: &[Change::RestoreTag],
        within: Duration::ZERO,
        tls_only: false,
    },
    Fault {
        name: "IMDS unreachable",
        on: CLIENT,
        inject: &[Change::StopImds],
        expect: Expect {
            check: "imds",
            level: Level::Fail,
            says: &["instance metadata service unreachable"],
            says_one_of: &[],
            next: "curl -sX PUT http://169.254.169.254/latest/api/token",
        },
        undo: &[Change::StartImds],
        within: Duration::ZERO,
        tls_only: false,
    },
    Fault {
        // The Consul servers' shared agent token: deleted, it stays deleted.
        // A client's own token deleted in Consul is made again at once
        // with its stored secret by the Consul leader's agent.
        name: "the servers' Consul agent token deleted",
        on: server(0),
        inject: &[Change::DeleteAgentToken],
        expect: Expect {
            check: "consul",
            level: Level::Fail,
            says: &["does not know this node's agent token"],
            says_one_of: &[],
            next: "consul acl token list",
        },
        undo: &[Change::RestoreAgentToken],
        within: Duration::ZERO,
        tls_only: false,
    },
    // No leader, seen from the third server; Raft takes a while to notice.
    Fault {
        name: "2 of 3 Consul servers stopped",
        on: server(2),
        inject: &[
            // Their agents first, as for "Consul stopped".
            Change::RunOn(
                &[server(0), server(1)],
                &["systemctl", "stop", "kraken-agent"],
            ),
            Change::RunOn(&[server(0), server(1)], &["systemctl", "stop", "consul"]),
        ],
        expect: Expect {
            check: "consul",
            level: Level::Fail,
            says: &["no Raft leader"],
            says_one_of: &[],
            next: "consul operator raft list-peers",
        },
        undo: &[
            Change::RunOn(&[server(0), server(1)], &["systemctl", "start", "consul"]),
            Change::RunOn(
                &[server(0), server(1)],
                &["systemctl", "start", "kraken-agent"],
            ),
        ],
        within: Duration::from_secs(60),
        tls_only: false,
    },
];

/// Every node's doctor says all is well; then each fault of [`FAULTS`]
/// that exists in this cluster, one at a time; then all is well again.
pub async fn doctor_round(cluster: &mut Cluster) -> Result<()> {
    // Polled, not one shot: right after a server changed, doctor rightly
    // warns that the configs' server lists differ from a fresh render until
    // the agent's next refresh rewrites them.
    for n in cluster.nodes() {
        doctor::all_ok(n.vm, "the cluster converged").await?;
    }
    cluster.log("doctor: every node all ok");
    for fault in FAULTS {
        if fault.tls_only && !api::tls() {
            continue;
        }
        run(cluster, fault).await?;
    }
    for n in cluster.nodes() {
        doctor::all_ok(n.vm, "every fault was undone").await?;
    }
    cluster.log("doctor: every node all ok again");
    Ok(())
}

/// Inject, doctor names it, undo, doctor all ok on every VM it touched.
async fn run(cluster: &mut Cluster, fault: &Fault) -> Result<()> {
    let at = running(cluster, fault.on)?;
    let mut saved = Saved::default();
    for (i, change) in fault.inject.iter().enumerate() {
        if let Err(e) = apply(cluster, at, change, &mut saved).await {
            if i > 0 {
                undo(cluster, at, fault, &mut saved).await?;
            }
            return Err(e);
        }
    }
    let named = doctor::names(
        cluster,
        &cluster.vms[at],
        fault.name,
        &fault.expect,
        fault.within,
    )
    .await;
    undo(cluster, at, fault, &mut saved).await?;
    named?;
    let after = format!("undoing {}", fault.name);
    doctor::all_ok(&cluster.vms[at], &after).await?;
    for change in fault.inject {
        if let Change::RunOn(others, _) = change {
            for &on in *others {
                doctor::all_ok(&cluster.vms[running(cluster, on)?], &after).await?;
            }
        }
    }
    Ok(())
}

async fn undo(cluster: &mut Cluster, at: usize, fault: &Fault, saved: &mut Saved) -> Result<()> {
    for change in fault.undo {
        apply(cluster, at, change, saved)
            .await
            .with_context(|| format!("undoing {}", fault.name))?;
    }
    Ok(())
}

/// The index in `cluster.vms` of the VM `on` names.
fn running(cluster: &Cluster, on: On) -> Result<usize> {
    cluster
        .vms
        .iter()
        .enumerate()
        .filter(|(_, v)| v.group == on.group && !v.gone)
        .nth(on.nth)
        .map(|(i, _)| i)
        .with_context(|| format!("no running {} #{}", on.group, on.nth + 1))
}

async fn apply(cluster: &mut Cluster, at: usize, change: &Change, saved: &mut Saved) -> Result<()> {
    let vm_path = |vm: &Vm, path: &str| vm.path(path).context("VM not running");
    match change {
        Change::Run(args) => drop(cluster.vms[at].exec(args)?),
        Change::RunOn(others, args) => {
            for &on in *others {
                cluster.vms[running(cluster, on)?].exec(args)?;
            }
        }
        Change::Append { path, text } => {
            let path = vm_path(&cluster.vms[at], path)?;
            append(saved, path, text)?;
        }
        Change::DenyEc2 => {
            let denied = deny_ec2_endpoint().await?;
            let path = vm_path(&cluster.vms[at], "/etc/kraken/agent.env")?;
            append(saved, path, &format!("AWS_ENDPOINT_URL_EC2={denied}\n"))?;
        }
        Change::RestoreFile => {
            let (path, original) = saved.file.take().context("no file was changed")?;
            std::fs::write(&path, original)?;
        }
        Change::Write { path, contents } => {
            std::fs::write(vm_path(&cluster.vms[at], path)?, contents()?)?;
        }
        Change::Remove(path) => std::fs::remove_file(vm_path(&cluster.vms[at], path)?)?,
        Change::Tag { key, value } => {
            let old = cluster.vms[at].set_imds_tag(key, Some(value))?;
            saved.tag = Some((key, old));
        }
        Change::RestoreTag => {
            let (key, old) = saved.tag.take().context("no tag was changed")?;
            cluster.vms[at].set_imds_tag(key, old.as_deref())?;
        }
        Change::StopImds => cluster.vms[at].stop_imds(),
        Change::StartImds => cluster.vms[at].start_imds()?,
        Change::DeleteAgentToken => saved.token = Some(delete_agent_token(cluster).await?),
        Change::RestoreAgentToken => {
            let (server, management, body) = saved.token.take().context("no token was deleted")?;
            cluster
                .api
                .send_json(
                    reqwest::Method::PUT,
                    &api::consul_url(&server, "/v1/acl/token"),
                    ("X-Consul-Token", &management),
                    &body,
                )
                .await?;
        }
    }
    Ok(())
}

fn append(saved: &mut Saved, path: PathBuf, text: &str) -> Result<()> {
    let original =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    std::fs::write(&path, format!("{original}{text}"))?;
    saved.file = Some((path, original));
    Ok(())
}

/// Deletes the Consul servers' shared agent token; returns what
/// puts it back: a Consul server, the management token, the PUT body.
async fn delete_agent_token(cluster: &Cluster) -> Result<(String, String, serde_json::Value)> {
    let tokens = cluster.tokens().await?;
    let agent_secret = tokens
        .all
        .get(kraken_secrets::names::CONSUL_AGENT)
        .context("no agent token")?
        .clone();
    let server = cluster
        .nodes()
        .iter()
        .find(|n| n.group.is_consul_server())
        .map(|n| n.vm.address.clone())
        .context("no Consul server")?;
    let token = cluster
        .api
        .get_ok(
            &api::consul_url(&server, "/v1/acl/token/self"),
            Some(("X-Consul-Token", &agent_secret)),
        )
        .await?;
    let accessor = token["AccessorID"]
        .as_str()
        .context("no AccessorID")?
        .to_owned();
    cluster
        .api
        .send_json(
            reqwest::Method::DELETE,
            &api::consul_url(&server, &format!("/v1/acl/token/{accessor}")),
            ("X-Consul-Token", &tokens.consul),
            &serde_json::Value::Null,
        )
        .await?;
    let body = serde_json::json!({
        "AccessorID": accessor,
        "SecretID": agent_secret,
        "Description": token["Description"],
        "Policies": token["Policies"],
    });
    Ok((server, tokens.consul, body))
}

/// A self-signed certificate that expires in 5 days.
fn expiring_certificate() -> Result<String> {
    let mut params = rcgen::CertificateParams::new(vec!["server.dc1.consul".to_owned()])?;
    params.not_before = rcgen::date_time_ymd(2020, 1, 1);
    params.not_after = (std::time::SystemTime::now() + Duration::from_secs(5 * 86_400)).into();
    Ok(params.self_signed(&rcgen::KeyPair::generate()?)?.pem())
}

/// An EC2 endpoint that refuses every call as EC2 refuses a role without
/// the permission (HTTP 403, `UnauthorizedOperation`, EC2's XML error
/// document). Its URL.
async fn deny_ec2_endpoint() -> Result<String> {
    const DENIED: &str = "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Response><Errors><Error><Code>UnauthorizedOperation</Code><Message>You are not authorized to perform this operation. User: arn:aws:sts::123456789012:assumed-role/kraken-node/i-0 is not authorized to perform: ec2:DescribeInstances because no identity-based policy allows the ec2:DescribeInstances action</Message></Error></Errors><RequestID>9e1c7c6c-0b1d-4b3a-8f5e-000000000000</RequestID></Response>";
    let listener = tokio::net::TcpListener::bind((crate::host::HUB_IP, 0)).await?;
    let url = format!("http://{}", listener.local_addr()?);
    let app = axum::Router::new().fallback(|| async {
        (
            axum::http::StatusCode::FORBIDDEN,
            [(axum::http::header::CONTENT_TYPE, "text/xml;charset=UTF-8")],
            DENIED,
        )
    });
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Ok(url)
}
