//! Steps 3 and 5 for the cluster PKI (design in `docs/pki.md`): the CA and
//! the role intermediates in the secret store, the node's leaf certificates
//! on disk.

use std::net::IpAddr;
use std::path::Path;
use std::time::{Duration, SystemTime};

use kraken_identity::Identity;
use kraken_intent::{NodeSpec, Role};
use kraken_pki::{Authority, Ca, CertInfo, ClusterNames, Intermediate};
use kraken_render::{Change, Service, TlsFiles};
use kraken_secrets::{Secret, SecretStore, Store, names};
use kraken_settings::Settings;

use crate::BootError;
use crate::steps::secrets::{SecretsMode, wait_for_secret};

/// Consul's `domain`; the agent does not change it.
pub const CONSUL_DOMAIN: &str = "consul";

/// Where each intermediate lives in the secret store.
pub fn secret_name(authority: Authority) -> &'static str {
    match authority {
        Authority::ConsulServer => names::PKI_CONSUL_SERVER,
        Authority::ConsulClient => names::PKI_CONSUL_CLIENT,
        Authority::NomadServer => names::PKI_NOMAD_SERVER,
        Authority::NomadClient => names::PKI_NOMAD_CLIENT,
    }
}

pub fn cluster_names(spec: &NodeSpec) -> ClusterNames {
    ClusterNames {
        cluster: spec.cluster.clone(),
        consul_datacenter: spec.datacenter.clone(),
        consul_domain: CONSUL_DOMAIN.into(),
        nomad_region: spec.nomad_region.clone(),
    }
}

/// The authority whose certificate this node's Consul presents.
pub fn consul_authority(spec: &NodeSpec) -> Authority {
    if spec.has(Role::ConsulServer) {
        Authority::ConsulServer
    } else {
        Authority::ConsulClient
    }
}

/// The authority whose certificate this node's Nomad presents; a node that
/// is both Nomad server and client runs one agent, with the server's.
pub fn nomad_authority(spec: &NodeSpec) -> Option<Authority> {
    if spec.has(Role::NomadServer) {
        Some(Authority::NomadServer)
    } else if spec.has(Role::NomadClient) {
        Some(Authority::NomadClient)
    } else {
        None
    }
}

/// The intermediates this node's roles may use.
#[derive(Debug)]
pub struct NodeAuthorities {
    pub consul: Intermediate,
    pub nomad: Option<Intermediate>,
}

/// Step 3 for the PKI. Consul servers, the one role IAM lets hold the root
/// key, create the CA and every role's intermediate once per cluster
/// (atomic create: racing servers all end up with the first one's). Every
/// node then reads the intermediates of its own roles; in `Boot` mode it
/// waits for them to appear.
pub async fn authorities(
    store: &Store,
    spec: &NodeSpec,
    settings: &Settings,
    mode: SecretsMode,
) -> Result<Option<NodeAuthorities>, BootError> {
    let cluster = cluster_names(spec);
    if mode == SecretsMode::Boot && spec.has(Role::ConsulServer) {
        let lifetime = Duration::from_secs(settings.tls.ca_lifetime_days * 86_400);
        let ca = create_once(store, names::PKI_CA, || {
            Ok(Ca::generate(&spec.cluster, lifetime)?.to_bundle())
        })
        .await?;
        let ca = Ca::from_bundle(ca.expose())?;
        for authority in Authority::ALL {
            create_once(store, secret_name(authority), || {
                Ok(ca.issue_intermediate(authority, &cluster)?.to_bundle())
            })
            .await?;
        }
    }
    let read = |authority: Authority| async move {
        let name = secret_name(authority);
        let bundle = match mode {
            SecretsMode::Boot => Some(wait_for_secret(store, name, settings).await?),
            SecretsMode::ReadOnly => store.get(name).await?,
        };
        match bundle {
            Some(b) => Ok::<_, BootError>(Some(Intermediate::from_bundle(
                b.expose(),
                &format!("secret {name}"),
            )?)),
            None => Ok(None),
        }
    };
    let Some(consul) = read(consul_authority(spec)).await? else {
        return Ok(None);
    };
    let nomad = match nomad_authority(spec) {
        Some(a) => match read(a).await? {
            Some(i) => Some(i),
            None => return Ok(None),
        },
        None => None,
    };
    Ok(Some(NodeAuthorities { consul, nomad }))
}

/// `get_or_create` for a value whose making can fail: nothing is stored
/// unless it was made.
async fn create_once(
    store: &Store,
    name: &str,
    make: impl FnOnce() -> Result<String, BootError>,
) -> Result<Secret, BootError> {
    if let Some(existing) = store.get(name).await? {
        return Ok(existing);
    }
    let value = Secret::new(make()?);
    Ok(match store.create(name, &value).await? {
        kraken_secrets::Created::Won => {
            log::info!("secret {name}: created");
            value
        }
        kraken_secrets::Created::Lost(winner) => {
            log::info!("secret {name}: another node created it first; using theirs");
            winner
        }
    })
}

/// The names and addresses a node's certificate for `authority` carries:
/// the role name Consul or Nomad verifies, `localhost`, loopback and the
/// node's private address.
pub fn leaf_names(
    authority: Authority,
    spec: &NodeSpec,
    identity: &Identity,
) -> (Vec<String>, Vec<IpAddr>) {
    let dns = authority.permitted_names(&cluster_names(spec));
    let mut ips = vec![IpAddr::from([127, 0, 0, 1])];
    if identity.private_ipv4 != std::net::Ipv4Addr::LOCALHOST {
        ips.push(IpAddr::V4(identity.private_ipv4));
    }
    (dns, ips)
}

/// What [`ensure_leaf`] found or did.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct LeafReport {
    pub service: Service,
    pub change: Change,
    pub serial: String,
    pub not_after_unix: u64,
}

/// Step 5 for certificates: keeps each service's certificate current.
/// Issues a new one when there is none, when it is not from this node's
/// intermediate or not for this node's names, or when it has lived
/// `tls.renew_fraction` of its lifetime. Returns, per service, whether its
/// files changed (a running service then needs a reload).
pub fn ensure_leaves(
    identity: &Identity,
    spec: &NodeSpec,
    settings: &Settings,
    authorities: &NodeAuthorities,
) -> Result<Vec<LeafReport>, BootError> {
    let mut reports = vec![ensure_leaf(
        Service::Consul,
        &TlsFiles::consul(settings),
        consul_authority(spec),
        &authorities.consul,
        identity,
        spec,
        settings,
        (&settings.consul.user, &settings.consul.group),
    )?];
    if let (Some(authority), Some(intermediate)) = (nomad_authority(spec), &authorities.nomad) {
        reports.push(ensure_leaf(
            Service::Nomad,
            &TlsFiles::nomad(settings),
            authority,
            intermediate,
            identity,
            spec,
            settings,
            (&settings.nomad.user, &settings.nomad.group),
        )?);
    }
    Ok(reports)
}

#[allow(clippy::too_many_arguments)]
fn ensure_leaf(
    service: Service,
    files: &TlsFiles,
    authority: Authority,
    intermediate: &Intermediate,
    identity: &Identity,
    spec: &NodeSpec,
    settings: &Settings,
    (user, group): (&String, &String),
) -> Result<LeafReport, BootError> {
    let (dns, ips) = leaf_names(authority, spec, identity);
    let now = SystemTime::now();
    let current = std::fs::read_to_string(&files.cert).ok().and_then(|pem| {
        let certs = kraken_pki::certificates(&pem);
        let issued_by_ours = certs.get(1).is_some_and(|der| {
            kraken_pki::certificates(intermediate.cert_pem()).first() == Some(der)
        });
        let info = kraken_pki::inspect(&pem, "current").ok()?;
        (issued_by_ours
            && info.dns_names == dns
            && info.ips == ips
            && files.key.exists()
            && !info.due_for_renewal(now, settings.tls.renew_fraction))
        .then_some(info)
    });
    let dir = files.cert.parent().unwrap_or(Path::new("/"));
    if !dir.exists() {
        std::fs::create_dir_all(dir).map_err(|source| kraken_render::WriteError::Io {
            op: "create directory",
            path: dir.to_owned(),
            source,
        })?;
    }
    let owner = kraken_render::resolve_owner(&files.key, user, group)?;
    let root = kraken_render::resolve_owner(&files.ca, "root", "root")?;
    // The root certificate is public; rewriting it when it is unchanged is
    // a no-op.
    let ca_change = kraken_render::write_atomic(
        &files.ca,
        intermediate.root_pem().as_bytes(),
        0o644,
        Some(root),
    )?;
    let had_one = files.cert.exists();
    let (info, change) = match current {
        Some(info) => (info, ca_change),
        None => {
            let lifetime = Duration::from_secs(settings.tls.leaf_lifetime_secs);
            let leaf = intermediate.issue(&dns, &ips, lifetime)?;
            // Key first: a service that reads between the two writes sees
            // the old certificate with the new key only if it reloads on
            // its own, which neither does; the agent reloads after both.
            // The configs' rule: group-readable, never for group root.
            let key_mode = kraken_render::private_mode(group);
            kraken_render::write_atomic(
                &files.key,
                leaf.key_pem.as_bytes(),
                key_mode,
                Some(owner),
            )?;
            kraken_render::write_atomic(
                &files.cert,
                leaf.chain_pem.as_bytes(),
                0o644,
                Some(owner),
            )?;
            log::info!(
                "{}: new certificate for {} (serial {}, expires in {}s)",
                files.cert.display(),
                dns.join(", "),
                leaf.info.serial,
                leaf.info.remaining(now).as_secs()
            );
            if had_one {
                crate::metrics::renewed(service);
            }
            (leaf.info, Change::Updated)
        }
    };
    crate::metrics::certificate(service, &files.cert, unix(info.not_after));
    if let Ok(root) = kraken_pki::inspect(intermediate.root_pem(), "the cluster CA") {
        crate::metrics::certificate(service, &files.ca, unix(root.not_after));
    }
    Ok(LeafReport {
        service,
        change,
        serial: info.serial.clone(),
        not_after_unix: unix(info.not_after),
    })
}

fn unix(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// The certificate in `path`, if it is there and parses.
pub fn read_cert(path: &Path) -> Option<CertInfo> {
    let pem = std::fs::read_to_string(path).ok()?;
    kraken_pki::inspect(&pem, &path.display().to_string()).ok()
}
