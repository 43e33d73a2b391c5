use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use kraken_aws::ApiCalls;
use kraken_settings::{Backend, SecretSettings};

use crate::dir::DirStore;
use crate::error::SecretError;
use crate::secret::Secret;
use crate::secret_store::{Created, SecretStore};
use crate::ssm::{SsmStore, ssm_client};

/// The store `[secrets]` asks for: an SSM or a directory backend, optionally
/// seen through a [`Store::snapshot`]. A concrete type rather than a trait
/// object, because the trait's methods return `impl Future`.
#[derive(Debug, Clone)]
pub struct Store {
    backend: Kind,
    /// Values read ahead in one batch, shared by this store's clones.
    snapshot: Option<Arc<Mutex<ReadAhead>>>,
}

/// A snapshot's values by name; `None`: found missing.
type ReadAhead = HashMap<String, Option<Secret>>;

#[derive(Debug, Clone)]
enum Kind {
    Ssm(SsmStore),
    Dir(DirStore),
}

impl From<SsmStore> for Store {
    fn from(s: SsmStore) -> Store {
        Store {
            backend: Kind::Ssm(s),
            snapshot: None,
        }
    }
}

impl From<DirStore> for Store {
    fn from(d: DirStore) -> Store {
        Store {
            backend: Kind::Dir(d),
            snapshot: None,
        }
    }
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
            Backend::Ssm => Store::from(SsmStore::new(
                ssm_client(sdk, calls),
                &settings.ssm_prefix,
                cluster,
                settings.kms_key_id.clone(),
            )?),
            Backend::Dir => Store::from(DirStore::new(&settings.dir, cluster)?),
        })
    }

    /// Where `name` lives: the SSM parameter name or the file path, for
    /// messages and `doctor`.
    pub fn location(&self, name: &str) -> Result<String, SecretError> {
        match &self.backend {
            Kind::Ssm(s) => s.parameter_name(name),
            Kind::Dir(d) => d.path(name).map(|p| p.display().to_string()),
        }
    }

    /// This store, with `names` read ahead in one batch (one SSM
    /// transaction per 10 names): for a step that reads several secrets
    /// one by one through code that takes a store (the boot's step 3, a
    /// server's token check), so that it costs one transaction.
    ///
    /// A value read ahead is answered from the snapshot for as long as the
    /// snapshot lives, so use it for one step, not a node's life. A name
    /// found missing is answered `None` once, then read from the backend
    /// again: a wait for a secret another node makes still polls the store.
    /// Writes through the snapshot go to the backend and drop the name's
    /// read-ahead value.
    pub async fn snapshot(&self, names: &[&str]) -> Result<Store, SecretError> {
        let mut unique: Vec<&str> = Vec::with_capacity(names.len());
        for n in names {
            if !unique.contains(n) {
                unique.push(n);
            }
        }
        let values = self.backend_get_many(&unique).await?;
        let read: HashMap<String, Option<Secret>> =
            unique.iter().map(|n| (*n).to_owned()).zip(values).collect();
        Ok(Store {
            backend: self.backend.clone(),
            snapshot: Some(Arc::new(Mutex::new(read))),
        })
    }

    /// The same store without a snapshot: reads go to the backend.
    pub fn unsnapshotted(&self) -> Store {
        Store {
            backend: self.backend.clone(),
            snapshot: None,
        }
    }

    /// What the snapshot answers for `name`: `Some(value)` when it holds the
    /// name (a missing name only once), `None` when the backend must be read.
    fn ahead(&self, name: &str) -> Option<Option<Secret>> {
        let mut read = self.snapshot.as_ref()?.lock().expect("snapshot lock");
        match read.get(name)? {
            Some(value) => Some(Some(value.clone())),
            None => read.remove(name),
        }
    }

    fn forget(&self, name: &str) {
        if let Some(read) = &self.snapshot {
            read.lock().expect("snapshot lock").remove(name);
        }
    }

    async fn backend_get_many(&self, names: &[&str]) -> Result<Vec<Option<Secret>>, SecretError> {
        if names.is_empty() {
            return Ok(Vec::new());
        }
        match &self.backend {
            Kind::Ssm(s) => s.get_many(names).await,
            Kind::Dir(d) => d.get_many(names).await,
        }
    }
}

impl SecretStore for Store {
    async fn get(&self, name: &str) -> Result<Option<Secret>, SecretError> {
        if let Some(value) = self.ahead(name) {
            return Ok(value);
        }
        match &self.backend {
            Kind::Ssm(s) => s.get(name).await,
            Kind::Dir(d) => d.get(name).await,
        }
    }

    async fn get_many(&self, names: &[&str]) -> Result<Vec<Option<Secret>>, SecretError> {
        let ahead: Vec<Option<Option<Secret>>> = names.iter().map(|n| self.ahead(n)).collect();
        let rest: Vec<&str> = names
            .iter()
            .zip(&ahead)
            .filter(|(_, a)| a.is_none())
            .map(|(n, _)| *n)
            .collect();
        let mut read = self.backend_get_many(&rest).await?.into_iter();
        Ok(ahead
            .into_iter()
            .map(|a| match a {
                Some(value) => value,
                None => read.next().flatten(),
            })
            .collect())
    }

    async fn create(&self, name: &str, value: &Secret) -> Result<Created, SecretError> {
        self.forget(name);
        match &self.backend {
            Kind::Ssm(s) => s.create(name, value).await,
            Kind::Dir(d) => d.create(name, value).await,
        }
    }

    async fn put(&self, name: &str, value: &Secret) -> Result<(), SecretError> {
        self.forget(name);
        match &self.backend {
            Kind::Ssm(s) => s.put(name, value).await,
            Kind::Dir(d) => d.put(name, value).await,
        }
    }

    async fn delete(&self, name: &str) -> Result<(), SecretError> {
        self.forget(name);
        match &self.backend {
            Kind::Ssm(s) => s.delete(name).await,
            Kind::Dir(d) => d.delete(name).await,
        }
    }
}
