use std::path::{Path, PathBuf};

/// A temp dir that is removed on drop, except while the thread panics: then
/// it is kept and its path printed, with the peers' logs and data in it.
#[derive(Debug)]
pub struct TestDir {
    path: PathBuf,
    keep: bool,
}

impl TestDir {
    /// Creates `$TMPDIR/kraken-<prefix>-XXXXXX`.
    pub fn new(prefix: &str) -> TestDir {
        let dir = tempfile::Builder::new()
            .prefix(&format!("kraken-{prefix}-"))
            .tempdir()
            .unwrap_or_else(|e| panic!("cannot create a temp dir: {e}"));
        let path = dir.keep();
        // 0711, as a node's Nomad data directory: a task that runs as an
        // unprivileged user (the clients refuse root) passes through to its
        // allocation directory, and cannot list anything.
        std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o711))
            .unwrap_or_else(|e| panic!("cannot chmod {}: {e}", path.display()));
        TestDir { path, keep: false }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Keeps the dir after the test, whatever its outcome.
    pub fn keep(&mut self) {
        self.keep = true;
    }
}

impl Drop for TestDir {
    fn drop(&mut self) {
        if self.keep || std::thread::panicking() {
            eprintln!("kraken-testkit: kept {}", self.path.display());
            return;
        }
        // A killed Nomad client leaves its allocations' secrets tmpfs (and
        // the exec driver's bind mounts) behind; removal fails under them.
        unmount_under(&self.path);
        if let Err(e) = std::fs::remove_dir_all(&self.path) {
            eprintln!(
                "kraken-testkit: could not remove {}: {e}",
                self.path.display()
            );
        }
    }
}

fn unmount_under(dir: &Path) {
    let Ok(mountinfo) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return;
    };
    let mut points: Vec<PathBuf> = mountinfo
        .lines()
        .filter_map(|line| line.split(' ').nth(4))
        .map(|p| PathBuf::from(unescape_mount_path(p)))
        .filter(|p| p.starts_with(dir))
        .collect();
    // Deepest first: a mount on top of another must go before it.
    points.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    for point in points {
        let _ = nix::mount::umount2(&point, nix::mount::MntFlags::MNT_DETACH);
    }
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo`.
fn unescape_mount_path(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes
            .get(i + 1..i + 4)
            .and_then(|d| std::str::from_utf8(d).ok())
            .and_then(|d| u8::from_str_radix(d, 8).ok());
        if bytes[i] == b'\\'
            && let Some(v) = octal
        {
            out.push(v);
            i += 4;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mount_paths_are_unescaped() {
        assert_eq!(unescape_mount_path(r"/tmp/a\040b"), "/tmp/a b");
        assert_eq!(unescape_mount_path("/plain"), "/plain");
        assert_eq!(unescape_mount_path(r"/end\"), r"/end\");
    }

    #[test]
    fn removed_on_drop_and_kept_on_panic() {
        let dir = TestDir::new("dir-test");
        let path = dir.path().to_path_buf();
        assert!(path.is_dir());
        drop(dir);
        assert!(!path.exists());

        let kept = std::panic::catch_unwind(|| {
            let dir = TestDir::new("dir-test");
            let path = dir.path().to_path_buf();
            std::panic::panic_any(path);
        })
        .unwrap_err();
        let path = kept.downcast::<PathBuf>().unwrap();
        assert!(path.is_dir(), "a panicking test's dir is kept");
        std::fs::remove_dir_all(*path).unwrap();
    }
}
