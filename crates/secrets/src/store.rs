use kraken_aws::ApiCalls;
use kraken_settings::{Backend, SecretSettings};

use crate::dir::DirStore;
use crate::error::SecretError;
use crate::secret::Secret;
use crate::secret_store::{Created, SecretStore};
use crate::ssm::{SsmStore, ssm_client};

/// The store `[secrets]` asks for. An enum rather than a trait object,
/// because the trait's methods return `impl Future`.
#[derive(Debug, Clone)]
pub enum Store {
    Ssm(SsmStore),
    Dir(DirStore),
}

impl Store {
    /// The backend `settings` name, for `cluster`. `sdk` is used only by
    /// the SSM backend; its API calls are counted in `calls`.
    pub fn from_settings(
        settings: &SecretSettings,
        cluster: &str,
        sdk: &aws_config::SdkConfig,
        calls: &ApiCalls,
    ) -> Result<Store, SecretError> {
        settings.validate()?;
        Ok(match settings.backend {
            Backend::Ssm => Store::Ssm(SsmStore::new(
                ssm_client(sdk, calls),
                &settings.ssm_prefix,
                cluster,
                settings.kms_key_id.clone(),
            )?),
            Backend::Dir => Store::Dir(DirStore::new(&settings.dir, cluster)?),
        })
    }

    /// Where `name` lives: the SSM parameter name or the file path, for
    /// messages and `doctor`.
    pub fn location(&self, name: &str) -> Result<String, SecretError> {
        match self {
            Store::Ssm(s) => s.parameter_name(name),
            Store::Dir(d) => d.path(name).map(|p| p.display().to_string()),
        }
    }
}

impl SecretStore for Store {
    async fn get(&self, name: &str) -> Result<Option<Secret>, SecretError> {
        match self {
            Store::Ssm(s) => s.get(name).await,
            Store::Dir(d) => d.get(name).await,
        }
    }

    async fn create(&self, name: &str, value: &Secret) -> Result<Created, SecretError> {
        match self {
            Store::Ssm(s) => s.create(name, value).await,
            Store::Dir(d) => d.create(name, value).await,
        }
    }

    async fn put(&self, name: &str, value: &Secret) -> Result<(), SecretError> {
        match self {
            Store::Ssm(s) => s.put(name, value).await,
            Store::Dir(d) => d.put(name, value).await,
        }
    }

    async fn delete(&self, name: &str) -> Result<(), SecretError> {
        match self {
            Store::Ssm(s) => s.delete(name).await,
            Store::Dir(d) => d.delete(name).await,
        }
    }
}
