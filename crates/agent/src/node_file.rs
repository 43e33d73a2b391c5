//! A node description file: identity, tags and peers in one TOML or JSON
//! document, so `render --node FILE` works with no AWS at all.

use std::path::Path;

use kraken_discovery::Peers;
use kraken_identity::{Identity, TagsSource};
use serde::Deserialize;

use crate::BootError;

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
