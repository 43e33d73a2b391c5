//! Step 5 of the boot flow: the configs Consul, Nomad and Docker read.
//!
//! Templates are data: Handlebars files embedded in the binary, each
//! replaceable by a file of the same name in `paths.templates_dir`. Strict
//! mode makes a missing variable an error instead of an empty string, and
//! every `{{value}}` is escaped for the file's own syntax (HCL or JSON), so
//! a hostile tag value cannot add a line to a config.

mod context;
mod escape;
mod tls_files;
mod write;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use handlebars::Handlebars;
use kraken_discovery::Peers;
use kraken_identity::Identity;
use kraken_intent::NodeSpec;
use kraken_settings::Settings;
use serde::Serialize;

pub use context::{
    AgentVars, ConsulVars, Context, DockerVars, NodeVars, NomadVars, RenderSecrets, RoleVars,
    SecretVars, TlsFileVars, TlsVars,
};
pub use tls_files::TlsFiles;
pub use write::{Change, WriteError, resolve_owner, write_atomic};

/// The service that reads a rendered file, and so must restart when it
/// changes.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Service {
    Consul,
    Docker,
    Nomad,
    /// Read by people who log in (the operator environment); nothing
    /// restarts for it.
    Operator,
}

impl Service {
    /// As in configs, labels and messages: `consul`, `docker`, `nomad`,
    /// `operator` (the serde name).
    pub fn as_str(self) -> &'static str {
        match self {
            Service::Consul => "consul",
            Service::Docker => "docker",
            Service::Nomad => "nomad",
            Service::Operator => "operator",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Syntax {
    Hcl,
    Json,
    Shell,
}

struct TemplateDef {
    name: &'static str,
    syntax: Syntax,
    service: Service,
    embedded: &'static str,
}

const TEMPLATES: [TemplateDef; 4] = [
    TemplateDef {
        name: "consul.hcl.hbs",
        syntax: Syntax::Hcl,
        service: Service::Consul,
        embedded: include_str!("../templates/consul.hcl.hbs"),
    },
    TemplateDef {
        name: "nomad.hcl.hbs",
        syntax: Syntax::Hcl,
        service: Service::Nomad,
        embedded: include_str!("../templates/nomad.hcl.hbs"),
    },
    TemplateDef {
        name: "docker-daemon.json.hbs",
        syntax: Syntax::Json,
        service: Service::Docker,
        embedded: include_str!("../templates/docker-daemon.json.hbs"),
    },
    TemplateDef {
        name: "kraken-env.sh.hbs",
        syntax: Syntax::Shell,
        service: Service::Operator,
        embedded: include_str!("../templates/kraken-env.sh.hbs"),
    },
];

/// Names of the templates a `templates_dir` may override.
pub fn template_names() -> impl Iterator<Item = &'static str> {
    TEMPLATES.iter().map(|t| t.name)
}

/// The embedded template `name` (one of [`template_names`]): where an
/// override starts from.
pub fn embedded_template(name: &str) -> Option<&'static str> {
    TEMPLATES
        .iter()
        .find(|t| t.name == name)
        .map(|t| t.embedded)
}

/// One config file, rendered and not yet written.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RenderedFile {
    pub template: &'static str,
    pub service: Service,
    /// Where the agent installs it.
    pub path: PathBuf,
    pub contents: String,
    pub mode: u32,
    pub owner: String,
    pub group: String,
    /// Where the template came from: "embedded" or the override's path.
    pub source: String,
}

impl RenderedFile {
    /// The name `render --out DIR` gives it.
    pub fn file_name(&self) -> &str {
        self.template.trim_end_matches(".hbs")
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    #[error("cannot read template override directory {dir}: {source}")]
    OverrideDir {
        dir: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "template override {path} has no embedded template of that name (overridable: {})",
        template_names().collect::<Vec<_>>().join(", ")
    )]
    UnknownOverride { path: PathBuf },
    #[error("template {source_name} does not parse: {detail}")]
    Syntax { source_name: String, detail: String },
    #[error("template {source_name} failed to render: {detail}")]
    Render { source_name: String, detail: String },
}

pub struct Renderer {
    hcl: Handlebars<'static>,
    json: Handlebars<'static>,
    shell: Handlebars<'static>,
    sources: BTreeMap<&'static str, String>,
}

impl Renderer {
    /// Loads the embedded templates and the overrides in `templates_dir`.
    pub fn new(templates_dir: Option<&Path>) -> Result<Renderer, RenderError> {
        let mut overrides = BTreeMap::new();
        if let Some(dir) = templates_dir {
            let entries = std::fs::read_dir(dir).map_err(|source| RenderError::OverrideDir {
                dir: dir.to_owned(),
                source,
            })?;
            for entry in entries {
                let entry = entry.map_err(|source| RenderError::OverrideDir {
                    dir: dir.to_owned(),
                    source,
                })?;
                let path = entry.path();
                let name = entry.file_name().to_string_lossy().into_owned();
                let Some(def) = TEMPLATES.iter().find(|t| t.name == name) else {
                    return Err(RenderError::UnknownOverride { path });
                };
                let text =
                    std::fs::read_to_string(&path).map_err(|source| RenderError::OverrideDir {
                        dir: dir.to_owned(),
                        source,
                    })?;
                overrides.insert(def.name, (path, text));
            }
        }

        let mut renderer = Renderer {
            hcl: registry(Syntax::Hcl),
            json: registry(Syntax::Json),
            shell: registry(Syntax::Shell),
            sources: BTreeMap::new(),
        };
        for def in &TEMPLATES {
            let (source, text) = match overrides.remove(def.name) {
                Some((path, text)) => (path.display().to_string(), text),
                None => ("embedded".to_owned(), def.embedded.to_owned()),
            };
            let registry = match def.syntax {
                Syntax::Hcl => &mut renderer.hcl,
                Syntax::Json => &mut renderer.json,
                Syntax::Shell => &mut renderer.shell,
            };
            registry
                .register_template_string(def.name, text)
                .map_err(|e| RenderError::Syntax {
                    source_name: source_name(def.name, &source),
                    detail: e.to_string(),
                })?;
            renderer.sources.insert(def.name, source);
        }
        Ok(renderer)
    }

    /// Renders every file this node needs.
    pub fn render(
        &self,
        identity: &Identity,
        spec: &NodeSpec,
        peers: &Peers,
        settings: &Settings,
        secrets: &RenderSecrets,
    ) -> Result<Vec<RenderedFile>, RenderError> {
        let ctx = Context::new(identity, spec, peers, settings, secrets);
        let mut files = Vec::new();
        for def in &TEMPLATES {
            let (path, owner, group, mode) = match def.service {
                Service::Consul => (
                    settings.paths.consul_config_dir.join("consul.hcl"),
                    &settings.consul.user,
                    &settings.consul.group,
                    private_mode(&settings.consul.group),
                ),
                Service::Nomad if spec.runs_nomad() => (
                    settings.paths.nomad_config_dir.join("nomad.hcl"),
                    &settings.nomad.user,
                    &settings.nomad.group,
                    private_mode(&settings.nomad.group),
                ),
                Service::Docker if spec.runs_docker(&settings.docker) => (
                    settings.paths.docker_daemon_json.clone(),
                    &"root".to_owned(),
                    &"root".to_owned(),
                    0o644,
                ),
                // Addresses and file names only, no secret: world-readable
                // like the rest of /etc/profile.d.
                Service::Operator => (
                    settings.paths.operator_env.clone(),
                    &"root".to_owned(),
                    &"root".to_owned(),
                    0o644,
                ),
                _ => continue,
            };
            let registry = match def.syntax {
                Syntax::Hcl => &self.hcl,
                Syntax::Json => &self.json,
                Syntax::Shell => &self.shell,
            };
            let source = &self.sources[def.name];
            let contents = registry
                .render(def.name, &ctx)
                .map_err(|e| RenderError::Render {
                    source_name: source_name(def.name, source),
                    detail: e.to_string(),
                })?;
            files.push(RenderedFile {
                template: def.name,
                service: def.service,
                path,
                contents,
                mode,
                owner: owner.clone(),
                group: group.clone(),
                source: source.clone(),
            });
        }
        Ok(files)
    }
}

fn source_name(name: &str, source: &str) -> String {
    if source == "embedded" {
        format!("{name} (embedded)")
    } else {
        source.to_owned()
    }
}

fn registry(syntax: Syntax) -> Handlebars<'static> {
    let mut hb = Handlebars::new();
    hb.set_strict_mode(true);
    hb.register_escape_fn(match syntax {
        Syntax::Hcl => escape::hcl_string,
        Syntax::Json => escape::json_string,
        Syntax::Shell => escape::shell_word,
    });
    hb.register_helper("hcl-list", Box::new(escape::hcl_list_helper));
    hb
}

/// 0640, or 0600 when the group is root: Nomad 1.11.1 runs every task
/// that sets `user` with root among its supplementary groups (its executor
/// pads the group list with zeros), so on a client group root is no
/// boundary (docs/iam.md).
pub fn private_mode(group: &str) -> u32 {
    if group == "root" { 0o600 } else { 0o640 }
}
