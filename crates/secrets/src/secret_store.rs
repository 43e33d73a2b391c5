//! What every backend offers: the store trait and its create-once outcome.

use crate::error::SecretError;
use crate::secret::Secret;

/// What [`SecretStore::create`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Created {
    /// This call's value is the secret now.
    Won,
    /// Someone created it first; this is their value, to be used instead.
    Lost(Secret),
}

/// Where a cluster's secrets live.
///
/// Every method takes a relative name (see the crate docs) and scopes it to
/// the store's cluster.
pub trait SecretStore: Send + Sync {
    /// The secret, or `None` when it has not been created yet.
    fn get(&self, name: &str) -> impl Future<Output = Result<Option<Secret>, SecretError>> + Send;

    /// Several secrets at once, in the order of `names`: `None` for each
    /// one not created yet. On SSM this is one `GetParameters` transaction
    /// per 10 names instead of one `GetParameter` each, which is what keeps
    /// a fleet's boot storm under the account's throughput
    /// (`docs/benchmarks.md`).
    fn get_many(
        &self,
        names: &[&str],
    ) -> impl Future<Output = Result<Vec<Option<Secret>>, SecretError>> + Send;

    /// Creates the secret unless it exists, atomically: of any number of
    /// concurrent creators exactly one gets [`Created::Won`], every other
    /// one [`Created::Lost`] with the winner's value.
    fn create(
        &self,
        name: &str,
        value: &Secret,
    ) -> impl Future<Output = Result<Created, SecretError>> + Send;

    /// Writes the secret whether or not it exists (rotation). Readers see
    /// the old value or the new one, never a mix.
    fn put(
        &self,
        name: &str,
        value: &Secret,
    ) -> impl Future<Output = Result<(), SecretError>> + Send;

    /// Removes the secret; removing one that does not exist is not an error.
    fn delete(&self, name: &str) -> impl Future<Output = Result<(), SecretError>> + Send;

    /// The secret, created with `generate` if it does not exist yet. Racing
    /// callers all get the same value: the first creator's.
    fn get_or_create(
        &self,
        name: &str,
        generate: impl FnOnce() -> Secret + Send,
    ) -> impl Future<Output = Result<Secret, SecretError>> + Send {
        async move {
            if let Some(existing) = self.get(name).await? {
                return Ok(existing);
            }
            let value = generate();
            match self.create(name, &value).await? {
                Created::Won => {
                    log::info!("secret {name}: created");
                    Ok(value)
                }
                Created::Lost(winner) => {
                    log::info!("secret {name}: another node created it first; using theirs");
                    Ok(winner)
                }
            }
        }
    }
}
