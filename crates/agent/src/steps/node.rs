//! Steps 1 and 2: who this instance is, and what it should be.

use kraken_identity::{Identity, IdentityProvider};
use kraken_intent::NodeSpec;
use kraken_settings::Settings;

use crate::BootError;

/// Step 1.
pub async fn identity<P: IdentityProvider>(provider: &P) -> Result<Identity, BootError> {
    Ok(provider.identity().await?)
}

/// Step 2.
pub fn intent(identity: &Identity, settings: &Settings) -> Result<NodeSpec, BootError> {
    Ok(NodeSpec::from_tags(&identity.tags, &settings.intent)?)
}
