use std::collections::HashSet;
use std::fs::File;
use std::hash::{BuildHasher, Hasher, RandomState};
use std::net::{Ipv4Addr, TcpListener};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

/// Unique loopback addresses, so that every peer can listen on its product's
/// default ports. Linux routes all of 127.0.0.0/8 to `lo`: no setup needed.
pub struct LoopbackAddrs;

/// Claims held for the life of the process; the kernel drops them at exit,
/// however the process ends, so no claim outlives its user.
static CLAIMS: Mutex<Vec<File>> = Mutex::new(Vec::new());
static COUNTER: AtomicU64 = AtomicU64::new(0);

impl LoopbackAddrs {
    /// `n` addresses `127.X.Y.1 ..= 127.X.Y.n` (1 <= n <= 254), with an X.Y
    /// no other call in this process or any other process on the machine
    /// holds. X is never 0, which keeps clear of 127.0.0.1 and anything a
    /// developer runs there.
    pub fn allocate(n: usize) -> Vec<Ipv4Addr> {
        assert!(
            (1..=254).contains(&n),
            "1 to 254 addresses per call, not {n}"
        );
        let dir = std::env::temp_dir().join("kraken-testkit-loopback");
        std::fs::create_dir_all(&dir)
            .unwrap_or_else(|e| panic!("cannot create {}: {e}", dir.display()));
        // Random per process (RandomState is seeded from the OS), varied by
        // pid and a counter; the lock file settles the rare collision.
        let seed = RandomState::new();
        for _ in 0..10_000 {
            let mut h = seed.build_hasher();
            h.write_u32(std::process::id());
            h.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
            let h = h.finish();
            let x = 1 + (h % 254) as u8;
            let y = (h >> 16) as u8;
            let path = dir.join(format!("127.{x}.{y}"));
            let Ok(file) = File::create(&path) else {
                continue;
            };
            // flock is per open file: a second claim from this same process
            // fails too.
            if file.try_lock().is_ok() {
                CLAIMS.lock().unwrap().push(file);
                return (1..=n as u8).map(|z| Ipv4Addr::new(127, x, y, z)).collect();
            }
        }
        panic!("no free loopback /24 found under 127.0.0.0/8");
    }
}

/// A TCP port on 127.0.0.1 that was free a moment ago. Never the same port
/// twice in one process; another process can still take it (peers that fail
/// to bind are restarted by their starters).
pub fn free_port() -> u16 {
    static GIVEN: Mutex<Option<HashSet<u16>>> = Mutex::new(None);
    loop {
        let port = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .unwrap_or_else(|e| panic!("cannot bind 127.0.0.1:0: {e}"));
        if GIVEN
            .lock()
            .unwrap()
            .get_or_insert_with(HashSet::new)
            .insert(port)
        {
            return port;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allocations_are_disjoint_and_bindable() {
        let a = LoopbackAddrs::allocate(3);
        let b = LoopbackAddrs::allocate(3);
        assert_eq!(a.len(), 3);
        for ip in a.iter().chain(&b) {
            assert_eq!(ip.octets()[0], 127);
            assert_ne!(ip.octets()[1], 0);
        }
        assert_ne!(a[0].octets()[1..3], b[0].octets()[1..3]);
        // Binding works without any interface setup.
        let l = TcpListener::bind((a[2], 0)).unwrap();
        assert_eq!(l.local_addr().unwrap().ip(), a[2]);
    }

    #[test]
    fn free_ports_differ() {
        let ports: HashSet<u16> = (0..20).map(|_| free_port()).collect();
        assert_eq!(ports.len(), 20);
    }
}
