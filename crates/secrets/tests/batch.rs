//! Batched reads: `get_many` on both backends, and `Store::snapshot`, whose
//! point is counted SSM transactions (docs/benchmarks.md).

use kraken_aws::ApiCalls;
use kraken_secrets::{Secret, SecretStore, SsmStore, Store, names, ssm_client};
use kraken_testkit::Moto;

async fn ssm_store(moto: &Moto, key: (&str, &str)) -> (Store, ApiCalls) {
    let sdk = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .region(aws_config::Region::new("us-east-1"))
        .endpoint_url(moto.endpoint())
        .credentials_provider(aws_sdk_ssm::config::Credentials::new(
            key.0, key.1, None, None, "test",
        ))
        .load()
        .await;
    let calls = ApiCalls::default();
    let store = SsmStore::new(
        ssm_client(&sdk, &calls),
        "kraken",
        "c1",
        Some("alias/k".into()),
    )
    .unwrap();
    (Store::from(store), calls)
}

/// Eleven names, so that a batch needs two `GetParameters` calls.
const ELEVEN: [&str; 11] = [
    names::GOSSIP_KEY,
    names::CONSUL_INITIAL_MANAGEMENT,
    names::CONSUL_AGENT,
    names::CONSUL_NOMAD_SERVER,
    names::CONSUL_NOMAD_CLIENT,
    names::CONSUL_SERVER,
    names::NOMAD_MANAGEMENT,
    names::NOMAD_AGENT,
    names::NOMAD_GOSSIP_KEY,
    names::PKI_CA,
    names::PKI_CONSUL_CLIENT,
];

async fn seeded(store: &Store) -> Vec<Option<Secret>> {
    // Every other name exists.
    let mut want = Vec::new();
    for (i, name) in ELEVEN.iter().enumerate() {
        if i % 2 == 0 {
            let v = Secret::random_token();
            store.create(name, &v).await.unwrap();
            want.push(Some(v));
        } else {
            want.push(None);
        }
    }
    want
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ssm_batches_ten_names_a_transaction_and_missing_ones_are_none() {
    let moto = Moto::start().await;
    let (store, calls) = ssm_store(&moto, ("testing", "testing")).await;
    let want = seeded(&store).await;
    let before = calls.get();
    assert_eq!(store.get_many(&ELEVEN).await.unwrap(), want);
    assert_eq!(calls.get() - before, 2, "11 names: two GetParameters calls");
    let before = calls.get();
    let some = [names::PKI_CA, names::CONSUL_SERVER, names::GOSSIP_KEY];
    assert_eq!(
        store.get_many(&some).await.unwrap(),
        vec![want[9].clone(), None, want[0].clone()],
        "in the order asked"
    );
    assert_eq!(calls.get() - before, 1);
    assert_eq!(
        store.get_many(&[]).await.unwrap(),
        Vec::<Option<Secret>>::new()
    );
    assert_eq!(calls.get() - before, 1, "nothing asked, nothing sent");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_is_one_transaction_then_reads_nothing_it_holds() {
    let moto = Moto::start().await;
    let (store, calls) = ssm_store(&moto, ("testing", "testing")).await;
    let want = seeded(&store).await;
    let before = calls.get();
    let view = store.snapshot(&ELEVEN[..10]).await.unwrap();
    assert_eq!(calls.get() - before, 1);
    for _ in 0..2 {
        for (name, value) in ELEVEN[..10].iter().zip(&want) {
            if value.is_some() {
                assert_eq!(&view.get(name).await.unwrap(), value);
            }
        }
    }
    assert_eq!(
        calls.get() - before,
        1,
        "present values come from the snapshot"
    );

    // A missing name is answered once, then read again: a wait for it
    // polls the store and sees it appear.
    assert_eq!(
        view.get(names::CONSUL_INITIAL_MANAGEMENT).await.unwrap(),
        None
    );
    assert_eq!(calls.get() - before, 1);
    let made = Secret::random_token();
    store
        .create(names::CONSUL_INITIAL_MANAGEMENT, &made)
        .await
        .unwrap();
    let before = calls.get();
    assert_eq!(
        view.get(names::CONSUL_INITIAL_MANAGEMENT).await.unwrap(),
        Some(made)
    );
    assert_eq!(calls.get() - before, 1);

    // A write through the snapshot drops the value it held.
    let rotated = Secret::random_token();
    view.put(names::GOSSIP_KEY, &rotated).await.unwrap();
    assert_eq!(view.get(names::GOSSIP_KEY).await.unwrap(), Some(rotated));
    // A name it does not hold is read from SSM; the store it came from has
    // no snapshot.
    let before = calls.get();
    assert_eq!(
        view.get(names::PKI_CONSUL_CLIENT).await.unwrap(),
        want[10].clone()
    );
    assert_eq!(store.get(names::PKI_CA).await.unwrap(), want[9].clone());
    assert_eq!(calls.get() - before, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_denied_batch_names_every_parameter_and_the_grant() {
    // moto enforces IAM from the fifth request on: one to seed, three to
    // make the user.
    let moto = Moto::start_with_env(&[("INITIAL_NO_AUTH_ACTION_COUNT", "4")]).await;
    let (admin, _) = ssm_store(&moto, ("testing", "testing")).await;
    let value = Secret::gossip_key();
    admin.create(names::GOSSIP_KEY, &value).await.unwrap();
    let iam = aws_sdk_iam::Client::new(
        &aws_config::defaults(aws_config::BehaviorVersion::latest())
            .region(aws_config::Region::new("us-east-1"))
            .endpoint_url(moto.endpoint())
            .credentials_provider(aws_sdk_ssm::config::Credentials::new(
                "testing", "testing", None, None, "test",
            ))
            .load()
            .await,
    );
    iam.create_user().user_name("one").send().await.unwrap();
    iam.put_user_policy()
        .user_name("one")
        .policy_name("single-reads-only")
        .policy_document(
            r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"ssm:GetParameter","Resource":"*"}]}"#,
        )
        .send()
        .await
        .unwrap();
    let key = iam
        .create_access_key()
        .user_name("one")
        .send()
        .await
        .unwrap();
    let key = key.access_key().unwrap();
    let (user, _) = ssm_store(&moto, (key.access_key_id(), key.secret_access_key())).await;
    assert_eq!(
        user.get(names::GOSSIP_KEY).await.unwrap(),
        Some(value.clone())
    );
    let e = user
        .get_many(&[names::GOSSIP_KEY, names::CONSUL_AGENT])
        .await
        .unwrap_err();
    let t = e.to_string();
    for needle in [
        "secrets consul/gossip-key, consul/tokens/agent",
        "ssm:GetParameters was denied",
        "grant ssm:GetParameters",
        "parameter/kraken/c1/consul/gossip-key",
        "parameter/kraken/c1/consul/tokens/agent",
        "kms:Decrypt",
    ] {
        assert!(t.contains(needle), "missing {needle:?} in {t}");
    }
    assert!(!t.contains(value.expose()));
    assert!(e.is_access_denied() && !e.is_transient(), "{e:?}");
}

#[tokio::test]
async fn the_directory_backend_reads_a_batch_in_order() {
    let tmp = tempfile::tempdir().unwrap();
    let store = Store::from(kraken_secrets::DirStore::new(tmp.path(), "c1").unwrap());
    let want = seeded(&store).await;
    assert_eq!(store.get_many(&ELEVEN).await.unwrap(), want);
    let view = store.snapshot(&ELEVEN).await.unwrap();
    std::fs::remove_dir_all(tmp.path().join("c1")).unwrap();
    assert_eq!(
        view.get(names::GOSSIP_KEY).await.unwrap(),
        want[0],
        "held by the snapshot"
    );
    assert_eq!(view.get(names::PKI_CONSUL_CLIENT).await.unwrap(), want[10]);
    assert_eq!(view.get(names::CONSUL_AGENT).await.unwrap(), want[2]);
    assert_eq!(
        view.get(names::CONSUL_INITIAL_MANAGEMENT).await.unwrap(),
        None
    );
}
