//! `kraken-agent render`: the boot flow up to writing configs, with every
//! config written into a directory of the caller's and nothing started.

use std::path::Path;

use kraken_discovery::{Ec2Peers, PeerSource, Peers, StaticPeers};
use kraken_identity::{Identity, IdentityProvider, ImdsIdentity, StaticIdentity, TagsSource};
use kraken_render::RenderSecrets;
use kraken_secrets::Store;
use kraken_settings::Settings;
use serde::Deserialize;
use serde_json::json;

use crate::steps::{discovery, node, render as rendering, secrets};
use crate::{BootError, tuning};

/// Renders into `out`, printing the plan as text or JSON on stdout.
pub async fn render(
    settings: &Settings,
    node: Option<&Path>,
    out: &Path,
    as_json: bool,
) -> Result<(), BootError> {
    match node {
        Some(path) => {
            let node = NodeFile::load(path)?;
            plan(
                settings,
                &StaticIdentity(node.identity),
                Source::Static(StaticPeers(node.peers)),
                out,
                as_json,
            )
            .await
        }
        None => {
            let provider = ImdsIdentity::new(tuning::imds(settings), tuning::aws(settings));
            plan(settings, &provider, Source::Ec2, out, as_json).await
        }
    }
}

enum Source {
    Static(StaticPeers),
    Ec2,
}

async fn plan<P: IdentityProvider>(
    settings: &Settings,
    provider: &P,
    source: Source,
    out: &Path,
    as_json: bool,
) -> Result<(), BootError> {
    let identity = node::identity(provider).await?;
    let spec = node::intent(&identity, settings)?;
    let (peers, ec2_calls, secrets) = match source {
        // A node file describes a node without a cluster behind it: no
        // secrets, and the configs show where they would go.
        Source::Static(s) => (
            s.discover(&spec.cluster).await?,
            0,
            RenderSecrets::default(),
        ),
        Source::Ec2 => {
            let sdk = kraken_aws::sdk_config(&identity.region, &tuning::aws(settings)).await;
            let calls = kraken_aws::ApiCalls::default();
            let ec2 = Ec2Peers::new(kraken_aws::ec2_client(&sdk, &calls), calls)
                .in_vpc(identity.vpc_id.clone());
            // A dry run reports what it finds now; it does not wait, and it
            // reads secrets without creating any.
            let peers = discovery::discover(&ec2, &spec).await?;
            let ssm_calls = kraken_aws::ApiCalls::default();
            let node = &identity.instance_id;
            let names = secrets::boot_names(&spec, settings);
            let names: Vec<&str> = names.iter().map(String::as_str).collect();
            let store = Store::from_settings(&settings.secrets, &spec.cluster, &sdk, &ssm_calls)?
                .snapshot(&names)
                .await?;
            let mode = secrets::SecretsMode::ReadOnly;
            let secrets = secrets::secrets(&store, &spec, node, settings, mode).await?;
            (peers, ec2.api_calls(), secrets)
        }
    };
    let files = rendering::render(&identity, &spec, &peers, settings, &secrets)?;
    let changes = rendering::install(&files, Some(out))?;
    let shortfall = peers.shortfall(discovery::needed(&spec));

    if as_json {
        let doc = json!({
            "identity": identity,
            "spec": spec,
            "peers": peers,
            "shortfall": shortfall,
            "ec2_api_calls": ec2_calls,
            "files": files.iter().zip(&changes).map(|(f, (_, change))| json!({
                "template": f.template,
                "source": f.source,
                "service": f.service,
                "installs_to": f.path,
                "written_to": out.join(f.file_name()),
                "mode": format!("{:04o}", f.mode),
                "owner": format!("{}:{}", f.owner, f.group),
                "change": change,
            })).collect::<Vec<_>>(),
        });
        println!(
            "{}",
            serde_json::to_string_pretty(&doc).expect("plan serialises")
        );
        return Ok(());
    }
    let roles: Vec<&str> = spec.roles.iter().map(|r| r.as_str()).collect();
    println!(
        "node      {} ({}) in {} / {}",
        identity.instance_id, identity.private_ipv4, identity.region, identity.availability_zone
    );
    println!("cluster   {}  roles {}", spec.cluster, roles.join(","));
    println!(
        "expects   {} Consul servers, {} Nomad servers",
        spec.consul_servers, spec.nomad_servers
    );
    let list = |s: &std::collections::BTreeSet<std::net::Ipv4Addr>| {
        s.iter()
            .map(|ip| ip.to_string())
            .collect::<Vec<_>>()
            .join(", ")
    };
    println!("consul    servers [{}]", list(&peers.consul_servers));
    println!("nomad     servers [{}]", list(&peers.nomad_servers));
    if let Some(short) = shortfall {
        println!("warning   {short}: `run` would keep looking before writing these");
    }
    for (f, (_, change)) in files.iter().zip(&changes) {
        println!(
            "file      {} -> {} ({:04o} {}:{}, {}, {:?})",
            out.join(f.file_name()).display(),
            f.path.display(),
            f.mode,
            f.owner,
            f.group,
            f.source,
            change
        );
    }
    println!("start     nothing (dry run)");
    Ok(())
}

/// A node description file: identity, tags and peers in one TOML or JSON
/// document, so `render --node FILE` works with no AWS at all.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeFile {
    pub identity: Identity,
    #[serde(default)]
    pub peers: Peers,
}

impl NodeFile {
    pub fn load(path: &Path) -> Result<NodeFile, BootError> {
        let err = |message: String| BootError::NodeFile {
            path: path.display().to_string(),
            message,
        };
        let text = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
        let mut node: NodeFile = if path.extension().is_some_and(|e| e == "json") {
            serde_json::from_str(&text).map_err(|e| err(e.to_string()))?
        } else {
            toml::from_str(&text).map_err(|e| err(e.to_string()))?
        };
        node.identity.tags_source = TagsSource::NodeFile;
        Ok(node)
    }
}
