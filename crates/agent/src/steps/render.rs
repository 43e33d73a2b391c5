//! Step 5: the configs, rendered and written.

use std::path::Path;

use kraken_discovery::Peers;
use kraken_identity::Identity;
use kraken_intent::NodeSpec;
use kraken_render::{Change, RenderSecrets, RenderedFile, Renderer, Service};
use kraken_settings::Settings;

use crate::BootError;

/// Renders every file this node needs.
pub fn render(
    identity: &Identity,
    spec: &NodeSpec,
    peers: &Peers,
    settings: &Settings,
    secrets: &RenderSecrets,
) -> Result<Vec<RenderedFile>, BootError> {
    let renderer = Renderer::new(settings.paths.templates_dir.as_deref())?;
    Ok(renderer.render(identity, spec, peers, settings, secrets)?)
}

/// Writes the rendered files. With `out_dir`, into that directory under
/// their plain names and without changing owners (a dry run); otherwise to
/// their real paths, owned as configured.
pub fn install(
    files: &[RenderedFile],
    out_dir: Option<&Path>,
) -> Result<Vec<(Service, Change)>, BootError> {
    // Resolve every owner before writing anything: a missing user should
    // not leave half the configs new and half old.
    let mut targets = Vec::with_capacity(files.len());
    for file in files {
        match out_dir {
            Some(dir) => targets.push((dir.join(file.file_name()), None)),
            None => {
                let owner = kraken_render::resolve_owner(&file.path, &file.owner, &file.group)?;
                targets.push((file.path.clone(), Some(owner)));
            }
        }
    }
    let mut changes = Vec::with_capacity(files.len());
    for (file, (path, owner)) in files.iter().zip(targets) {
        if let Some(parent) = path.parent()
            && !parent.exists()
        {
            std::fs::create_dir_all(parent).map_err(|source| kraken_render::WriteError::Io {
                op: "create directory",
                path: parent.to_owned(),
                source,
            })?;
        }
        let change =
            kraken_render::write_atomic(&path, file.contents.as_bytes(), file.mode, owner)?;
        log::info!("{}: {change:?}", path.display());
        changes.push((file.service, change));
    }
    Ok(changes)
}

/// Whether any of `service`'s files changed in a way it must re-read.
pub fn changed(changes: &[(Service, Change)], service: Service) -> bool {
    changes
        .iter()
        .any(|(s, c)| *s == service && c.needs_restart())
}
