use std::fs::{File, OpenOptions};
use std::io::{ErrorKind, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use nix::unistd::{Gid, Group, Uid, User, fchown};
use serde::Serialize;

/// What writing a file did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Change {
    Created,
    Updated,
    /// Same bytes; only mode or owner were corrected. No restart needed.
    PermissionsFixed,
    Unchanged,
}

impl Change {
    /// Whether the service reading the file must restart to see it.
    pub fn needs_restart(self) -> bool {
        matches!(self, Change::Created | Change::Updated)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    #[error("cannot {op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} should be owned by {kind} {name:?}, which does not exist on this machine")]
    NoSuchOwner {
        path: PathBuf,
        kind: &'static str,
        name: String,
    },
}

fn io<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> WriteError + 'a {
    move |source| WriteError::Io {
        op,
        path: path.to_owned(),
        source,
    }
}

/// Resolves user and group names to ids.
pub fn resolve_owner(path: &Path, user: &str, group: &str) -> Result<(Uid, Gid), WriteError> {
    let uid = User::from_name(user)
        .ok()
        .flatten()
        .ok_or_else(|| WriteError::NoSuchOwner {
            path: path.to_owned(),
            kind: "user",
            name: user.to_owned(),
        })?
        .uid;
    let gid = Group::from_name(group)
        .ok()
        .flatten()
        .ok_or_else(|| WriteError::NoSuchOwner {
            path: path.to_owned(),
            kind: "group",
            name: group.to_owned(),
        })?
        .gid;
    Ok((uid, gid))
}

/// Writes `contents` to `path` so that a reader sees either the old file or
/// the new one, never a mix, and a crash leaves one of them whole: a temp
/// file in the same directory (created with the final mode, so a secret is
/// never briefly world-readable), fsync, rename, fsync of the directory.
/// Identical contents are not rewritten.
pub fn write_atomic(
    path: &Path,
    contents: &[u8],
    mode: u32,
    owner: Option<(Uid, Gid)>,
) -> Result<Change, WriteError> {
    match std::fs::read(path) {
        Ok(existing) if existing == contents => {
            let meta = std::fs::metadata(path).map_err(io("inspect", path))?;
            let mut fixed = false;
            if meta.permissions().mode() & 0o7777 != mode {
                std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
                    .map_err(io("set the mode of", path))?;
                fixed = true;
            }
            if let Some((uid, gid)) = owner
                && (meta.uid() != uid.as_raw() || meta.gid() != gid.as_raw())
            {
                nix::unistd::chown(path, Some(uid), Some(gid))
                    .map_err(|e| io("change the owner of", path)(e.into()))?;
                fixed = true;
            }
            return Ok(if fixed {
                Change::PermissionsFixed
            } else {
                Change::Unchanged
            });
        }
        Ok(_) => {}
        Err(e) if e.kind() == ErrorKind::NotFound => {}
        Err(e) => return Err(io("read", path)(e)),
    }
    let existed = path.exists();

    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.kraken-{}.tmp", std::process::id()));
    // A temp file left by a crashed run of this same pid is stale.
    let _ = std::fs::remove_file(&tmp);

    let result = (|| {
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)
            .map_err(io("create", &tmp))?;
        if let Some((uid, gid)) = owner {
            fchown(&file, Some(uid), Some(gid))
                .map_err(|e| io("change the owner of", &tmp)(e.into()))?;
        }
        // The umask may have narrowed the mode given at creation.
        file.set_permissions(std::fs::Permissions::from_mode(mode))
            .map_err(io("set the mode of", &tmp))?;
        file.write_all(contents).map_err(io("write", &tmp))?;
        file.sync_all().map_err(io("flush", &tmp))?;
        std::fs::rename(&tmp, path).map_err(io("replace", path))?;
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(io("flush directory", dir))
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result?;
    Ok(if existed {
        Change::Updated
    } else {
        Change::Created
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn creates_updates_and_skips_identical_content() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.hcl");
        assert_eq!(
            write_atomic(&path, b"a", 0o640, None).unwrap(),
            Change::Created
        );
        assert_eq!(
            write_atomic(&path, b"a", 0o640, None).unwrap(),
            Change::Unchanged
        );
        let before = std::fs::metadata(&path).unwrap().ino();
        assert_eq!(
            write_atomic(&path, b"b", 0o640, None).unwrap(),
            Change::Updated
        );
        assert_ne!(
            std::fs::metadata(&path).unwrap().ino(),
            before,
            "replaced by rename"
        );
        assert_eq!(std::fs::read(&path).unwrap(), b"b");
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o640);
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o666)).unwrap();
        assert_eq!(
            write_atomic(&path, b"b", 0o640, None).unwrap(),
            Change::PermissionsFixed
        );
        let leftovers: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(leftovers.len(), 1, "no temp files left");
    }

    #[test]
    fn an_unwritable_directory_keeps_the_old_file_and_names_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.hcl");
        write_atomic(&path, b"old", 0o640, None).unwrap();
        // A directory in place of the temp file's parent: writing must fail.
        let bad = dir.path().join("missing-dir").join("x.hcl");
        let err = write_atomic(&bad, b"new", 0o640, None).unwrap_err();
        assert!(err.to_string().contains("missing-dir"), "{err}");
        assert_eq!(std::fs::read(&path).unwrap(), b"old");
    }

    #[test]
    fn unknown_owner_is_named() {
        let err = resolve_owner(Path::new("/x"), "no-such-user-kraken", "root").unwrap_err();
        assert!(err.to_string().contains("no-such-user-kraken"), "{err}");
    }
}
