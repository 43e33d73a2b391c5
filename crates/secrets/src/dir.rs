//! The directory backend: one file per secret.

use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io::{ErrorKind, Read, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::error::SecretError;
use crate::secret::Secret;
use crate::secret_store::{Created, SecretStore};
use crate::validate::{validate_cluster, validate_name};

/// Secrets as files `<dir>/<cluster>/<name>`, mode 0600, in directories of
/// mode 0700, owned by the agent's user (root).
///
/// A file appears under its name only complete and synced: it is written
/// to a temporary name first and then linked (create) or renamed (put) into
/// place, so a reader sees a whole value or none. Temporary names start
/// with `.`, which no secret name can.
#[derive(Debug, Clone)]
pub struct DirStore {
    dir: PathBuf,
    cluster_dir: PathBuf,
}

// A file deleted between losing the race and reading the winner reopens the
// race; it settles in a round or two.
const RACE_ATTEMPTS: u32 = 6;

impl DirStore {
    /// Touches nothing yet: directories are made on the first write, so a
    /// read-only node never needs write access.
    pub fn new(dir: &Path, cluster: &str) -> Result<DirStore, SecretError> {
        validate_cluster(cluster)?;
        Ok(DirStore {
            dir: dir.to_owned(),
            cluster_dir: dir.join(cluster),
        })
    }

    /// The file that holds `name`.
    pub fn path(&self, name: &str) -> Result<PathBuf, SecretError> {
        validate_name(name)?;
        Ok(self.cluster_dir.join(name))
    }

    fn job(&self, name: &str) -> Result<Job, SecretError> {
        Ok(Job {
            name: name.to_owned(),
            path: self.path(name)?,
            dir: self.dir.clone(),
        })
    }
}

impl SecretStore for DirStore {
    async fn get(&self, name: &str) -> Result<Option<Secret>, SecretError> {
        let job = self.job(name)?;
        blocking(move || job.read()).await
    }

    /// Files cost no transaction: one read each, all on one blocking task.
    async fn get_many(&self, names: &[&str]) -> Result<Vec<Option<Secret>>, SecretError> {
        let jobs = names
            .iter()
            .map(|n| self.job(n))
            .collect::<Result<Vec<_>, _>>()?;
        blocking(move || jobs.iter().map(|j| j.read()).collect()).await
    }

    async fn create(&self, name: &str, value: &Secret) -> Result<Created, SecretError> {
        let job = self.job(name)?;
        non_empty(name, value)?;
        let value = value.clone();
        blocking(move || job.create(&value)).await
    }

    async fn put(&self, name: &str, value: &Secret) -> Result<(), SecretError> {
        let job = self.job(name)?;
        non_empty(name, value)?;
        let value = value.clone();
        blocking(move || job.put(&value)).await
    }

    async fn delete(&self, name: &str) -> Result<(), SecretError> {
        let job = self.job(name)?;
        blocking(move || job.delete()).await
    }
}

// fsync can take a while on a busy disk; it must not stall the runtime's
// worker threads, which also run the lease renewals.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, SecretError> + Send + 'static,
) -> Result<T, SecretError> {
    match tokio::task::spawn_blocking(f).await {
        Ok(result) => result,
        Err(e) => std::panic::resume_unwind(e.into_panic()),
    }
}

fn non_empty(name: &str, value: &Secret) -> Result<(), SecretError> {
    if value.expose().is_empty() {
        return Err(SecretError::EmptyValue {
            name: name.to_owned(),
        });
    }
    Ok(())
}

/// One operation on one secret file, owned so it can move to a blocking
/// thread.
struct Job {
    name: String,
    path: PathBuf,
    /// The configured root, whose ancestors get ordinary modes.
    dir: PathBuf,
}

impl Job {
    fn err(&self, op: &'static str, path: &Path, source: std::io::Error) -> SecretError {
        SecretError::Dir {
            name: self.name.clone(),
            op,
            path: path.to_owned(),
            source,
        }
    }

    fn parent(&self) -> &Path {
        self.path.parent().expect("a secret path has a parent")
    }

    fn read(&self) -> Result<Option<Secret>, SecretError> {
        let mut file = match File::open(&self.path) {
            Ok(f) => f,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(self.err("open", &self.path, e)),
        };
        let mode = file
            .metadata()
            .map_err(|e| self.err("stat", &self.path, e))?
            .mode();
        if mode & 0o137 != 0 {
            log::warn!(
                "secret {}: {} has mode {:o}, wider than 0640; chmod 0600 it",
                self.name,
                self.path.display(),
                mode & 0o7777
            );
        }
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes)
            .map_err(|e| self.err("read", &self.path, e))?;
        let corrupt = |reason| SecretError::Corrupt {
            name: self.name.clone(),
            location: self.path.display().to_string(),
            reason,
        };
        let mut text = String::from_utf8(bytes).map_err(|_| corrupt("it is not UTF-8 text"))?;
        // A file written by hand with `echo` ends in a newline that is not
        // part of the secret.
        if text.ends_with('\n') {
            text.pop();
        }
        if text.is_empty() {
            return Err(corrupt("the file is empty"));
        }
        Ok(Some(Secret::new(text)))
    }

    fn create(&self, value: &Secret) -> Result<Created, SecretError> {
        for _ in 0..RACE_ATTEMPTS {
            let tmp = self.write_temp(value)?;
            // link(2) is the atomic create-if-absent that also publishes a
            // complete file: O_EXCL on the final name would expose it empty
            // while it is written.
            let linked = fs::hard_link(&tmp, &self.path);
            self.remove_temp(&tmp);
            match linked {
                Ok(()) => {
                    self.sync_parent()?;
                    return Ok(Created::Won);
                }
                Err(e) if e.kind() == ErrorKind::AlreadyExists => {
                    if let Some(winner) = self.read()? {
                        return Ok(Created::Lost(winner));
                    }
                }
                Err(e) => return Err(self.err("link into place", &self.path, e)),
            }
        }
        Err(SecretError::Vanished {
            name: self.name.clone(),
            location: self.path.display().to_string(),
            attempts: RACE_ATTEMPTS,
        })
    }

    fn put(&self, value: &Secret) -> Result<(), SecretError> {
        let tmp = self.write_temp(value)?;
        if let Err(e) = fs::rename(&tmp, &self.path) {
            self.remove_temp(&tmp);
            return Err(self.err("rename into place", &self.path, e));
        }
        self.sync_parent()
    }

    fn delete(&self) -> Result<(), SecretError> {
        match fs::remove_file(&self.path) {
            Ok(()) => self.sync_parent(),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
            Err(e) => Err(self.err("remove", &self.path, e)),
        }
    }

    fn make_dirs(&self) -> Result<(), SecretError> {
        let parent = self.parent();
        if parent.is_dir() {
            return Ok(());
        }
        // Only the store's own directories are private; ancestors such as
        // /var/lib/kraken may hold things other services read.
        if let Some(above) = self.dir.parent() {
            DirBuilder::new()
                .recursive(true)
                .mode(0o755)
                .create(above)
                .map_err(|e| self.dir_error(above, e))?;
        }
        DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(parent)
            .map_err(|e| self.dir_error(parent, e))
    }

    // mkdir says only "File exists" when a file sits where a directory must
    // be; the person fixing it needs to know which file.
    fn dir_error(&self, dir: &Path, e: std::io::Error) -> SecretError {
        if matches!(
            e.kind(),
            ErrorKind::AlreadyExists | ErrorKind::NotADirectory
        ) {
            let blocker = dir
                .ancestors()
                .find(|a| fs::metadata(a).is_ok_and(|m| !m.is_dir()));
            if let Some(blocker) = blocker {
                let e = std::io::Error::new(
                    ErrorKind::NotADirectory,
                    format!("{} is a file, not a directory", blocker.display()),
                );
                return self.err("create directory", dir, e);
            }
        }
        self.err("create directory", dir, e)
    }

    fn write_temp(&self, value: &Secret) -> Result<PathBuf, SecretError> {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        self.make_dirs()?;
        let base = self
            .path
            .file_name()
            .expect("a secret path has a file name")
            .to_string_lossy();
        let tmp = self.parent().join(format!(
            ".{base}.{}.{}.tmp",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        let written = (|| {
            let mut file = OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&tmp)?;
            // The umask may have narrowed the mode; never widened, but be
            // exact so what `doctor` checks is what was meant.
            file.set_permissions(fs::Permissions::from_mode(0o600))?;
            file.write_all(value.expose().as_bytes())?;
            file.sync_all()
        })();
        if let Err(e) = written {
            self.remove_temp(&tmp);
            return Err(self.err("write temporary file", &tmp, e));
        }
        Ok(tmp)
    }

    fn remove_temp(&self, tmp: &Path) {
        match fs::remove_file(tmp) {
            Ok(()) => {}
            Err(e) if e.kind() == ErrorKind::NotFound => {}
            // Harmless clutter: temporary names cannot collide with secrets.
            Err(e) => log::warn!(
                "secret {}: could not remove {}: {e}",
                self.name,
                tmp.display()
            ),
        }
    }

    // A new name is durable only once its directory is synced; callers act
    // on Won (create a token with this SecretID) right after.
    fn sync_parent(&self) -> Result<(), SecretError> {
        let parent = self.parent();
        File::open(parent)
            .and_then(|d| d.sync_all())
            .map_err(|e| self.err("sync directory", parent, e))
    }
}
