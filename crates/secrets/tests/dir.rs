//! The directory backend on a real file system.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use kraken_secrets::{Created, DirStore, Secret, SecretError, SecretStore, Store, names};
use kraken_settings::{Backend, SecretSettings};

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o7777
}

fn entries(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_get_put_delete_with_private_modes() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("lib/kraken/secrets");
    let s = DirStore::new(&root, "c1").unwrap();

    assert_eq!(s.get(names::CONSUL_NOMAD_SERVER).await.unwrap(), None);
    assert!(!root.exists(), "a read creates nothing");
    let first = Secret::random_token();
    assert_eq!(
        s.create(names::CONSUL_NOMAD_SERVER, &first).await.unwrap(),
        Created::Won
    );
    assert_eq!(
        s.create(names::CONSUL_NOMAD_SERVER, &Secret::random_token())
            .await
            .unwrap(),
        Created::Lost(first.clone())
    );

    let file = root.join("c1/consul/tokens/nomad-server");
    assert_eq!(std::fs::read_to_string(&file).unwrap(), first.expose());
    assert_eq!(mode(&file), 0o600);
    for d in ["", "c1", "c1/consul", "c1/consul/tokens"] {
        assert_eq!(mode(&root.join(d)), 0o700, "{d}");
    }
    // Ancestors of the store are not made private: they get what any
    // directory made with mode 0755 under this umask gets.
    let reference = tmp.path().join("reference");
    std::os::unix::fs::DirBuilderExt::mode(&mut std::fs::DirBuilder::new(), 0o755)
        .create(&reference)
        .unwrap();
    assert_eq!(mode(&tmp.path().join("lib/kraken")), mode(&reference));
    assert_eq!(entries(&root.join("c1/consul/tokens")), ["nomad-server"]);

    let second = Secret::random_token();
    s.put(names::CONSUL_NOMAD_SERVER, &second).await.unwrap();
    assert_eq!(
        s.get(names::CONSUL_NOMAD_SERVER).await.unwrap(),
        Some(second)
    );
    assert_eq!(mode(&file), 0o600);
    assert_eq!(entries(&root.join("c1/consul/tokens")), ["nomad-server"]);

    s.delete(names::CONSUL_NOMAD_SERVER).await.unwrap();
    assert_eq!(s.get(names::CONSUL_NOMAD_SERVER).await.unwrap(), None);
    s.delete(names::CONSUL_NOMAD_SERVER).await.unwrap();

    let e = s
        .create("../../etc/x", &Secret::random_token())
        .await
        .unwrap_err();
    assert!(matches!(e, SecretError::InvalidName { .. }), "{e}");
    let e = s.create("x", &Secret::new("")).await.unwrap_err();
    assert!(matches!(e, SecretError::EmptyValue { .. }), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hand_written_file_with_a_newline_reads_without_it() {
    let tmp = tempfile::tempdir().unwrap();
    let settings = SecretSettings {
        backend: Backend::Dir,
        dir: tmp.path().to_owned(),
        ..Default::default()
    };
    let sdk = aws_config::SdkConfig::builder().build();
    let s = Store::from_settings(&settings, "c1", &sdk, &Default::default()).unwrap();
    let path = tmp.path().join("c1/consul/gossip-key");
    assert_eq!(
        s.location(names::GOSSIP_KEY).unwrap(),
        path.display().to_string()
    );
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(&path, "a2V5\n").unwrap();
    assert_eq!(
        s.get(names::GOSSIP_KEY).await.unwrap(),
        Some(Secret::new("a2V5"))
    );
    std::fs::write(&path, "").unwrap();
    let e = s.get(names::GOSSIP_KEY).await.unwrap_err();
    assert!(e.to_string().contains("is empty"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ten_racing_creators_end_with_one_value() {
    let tmp = tempfile::tempdir().unwrap();
    for round in 0..20 {
        let name = format!("consul/tokens/race-{round}");
        let barrier = Arc::new(tokio::sync::Barrier::new(10));
        let mut tasks = Vec::new();
        for _ in 0..10 {
            let s = DirStore::new(tmp.path(), "race").unwrap();
            let (barrier, name) = (barrier.clone(), name.clone());
            tasks.push(tokio::spawn(async move {
                let mine = Secret::random_token();
                let offered = mine.clone();
                barrier.wait().await;
                let got = s.get_or_create(&name, move || offered).await.unwrap();
                (got == mine, got)
            }));
        }
        let mut results = Vec::new();
        for t in tasks {
            results.push(t.await.unwrap());
        }
        let winner = results[0].1.clone();
        assert!(results.iter().all(|(_, v)| *v == winner), "round {round}");
        let winners = results.iter().filter(|(won, _)| *won).count();
        assert_eq!(winners, 1, "round {round}: {winners} think they won");
    }
    // Every temporary file was cleaned up.
    let tokens = tmp.path().join("race/consul/tokens");
    assert!(
        entries(&tokens).iter().all(|n| n.starts_with("race-")),
        "{:?}",
        entries(&tokens)
    );
}

#[test]
fn racing_threads_with_their_own_runtimes_agree() {
    let tmp = tempfile::tempdir().unwrap();
    let barrier = Arc::new(std::sync::Barrier::new(10));
    let threads: Vec<_> = (0..10)
        .map(|_| {
            let (root, barrier) = (tmp.path().to_owned(), barrier.clone());
            std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .build()
                    .unwrap();
                let s = DirStore::new(&root, "threads").unwrap();
                let mine = Secret::gossip_key();
                barrier.wait();
                let created = rt.block_on(s.create(names::GOSSIP_KEY, &mine)).unwrap();
                match created {
                    Created::Won => mine,
                    Created::Lost(winner) => {
                        assert_ne!(winner, mine);
                        winner
                    }
                }
            })
        })
        .collect();
    let values: Vec<Secret> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    assert!(values.iter().all(|v| *v == values[0]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn readers_never_see_a_partial_value() {
    let tmp = tempfile::tempdir().unwrap();
    // Big enough that writing one takes many write(2)s' worth of time.
    const LEN: usize = 4 << 20;
    let values: Arc<Vec<Secret>> = Arc::new(
        ["a", "b", "c"]
            .iter()
            .map(|c| Secret::new(c.repeat(LEN)))
            .collect(),
    );
    let done = Arc::new(AtomicBool::new(false));
    let seen = Arc::new(AtomicUsize::new(0));
    let mut readers = Vec::new();
    for _ in 0..3 {
        let s = DirStore::new(tmp.path(), "partial").unwrap();
        let (done, seen) = (done.clone(), seen.clone());
        readers.push(tokio::spawn(async move {
            while !done.load(Ordering::Relaxed) {
                if let Some(v) = s.get("ca/key").await.unwrap() {
                    let v = v.expose();
                    let first = v.as_bytes()[0];
                    assert_eq!(v.len(), LEN, "a partial value was read");
                    assert!(v.bytes().all(|b| b == first), "a mixed value was read");
                    seen.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    let s = DirStore::new(tmp.path(), "partial").unwrap();
    for i in 0..15 {
        let v = &values[i % values.len()];
        if i % 2 == 0 {
            s.delete("ca/key").await.unwrap();
            s.create("ca/key", v).await.unwrap();
        } else {
            s.put("ca/key", v).await.unwrap();
        }
    }
    done.store(true, Ordering::Relaxed);
    for r in readers {
        r.await.unwrap();
    }
    assert!(
        seen.load(Ordering::Relaxed) > 0,
        "the readers never read anything"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unwritable_path_is_named() {
    let tmp = tempfile::tempdir().unwrap();
    let blocker = tmp.path().join("blocker");
    std::fs::write(&blocker, "not a directory").unwrap();
    let root = blocker.join("secrets");
    let s = DirStore::new(&root, "c1").unwrap();
    let value = Secret::gossip_key();
    let e = s.create(names::GOSSIP_KEY, &value).await.unwrap_err();
    let t = format!("{e} {e:?}");
    assert!(t.contains("secret consul/gossip-key"), "{t}");
    assert!(t.contains("could not create directory"), "{t}");
    assert!(t.contains(&blocker.display().to_string()), "{t}");
    assert!(t.contains("a file is in the way"), "{t}");
    assert!(!t.contains(value.expose()), "secret leaked: {t}");
    assert!(!e.is_transient());

    let e = s.get(names::GOSSIP_KEY).await.unwrap_err();
    assert!(
        e.to_string()
            .contains(&root.join("c1/consul/gossip-key").display().to_string()),
        "{e}"
    );
}
