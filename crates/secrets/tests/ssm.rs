//! The SSM backend against moto's SSM, reached through the SDK's endpoint
//! override: the code path production takes.

use std::sync::Arc;

use kraken_aws::ApiCalls;
use kraken_secrets::{
    Created, Secret, SecretError, SecretStore, SsmStore, Store, names, ssm_client,
};
use kraken_settings::{Backend, SecretSettings};
use kraken_testkit::Moto;

const REGION: &str = "us-east-1";

async fn sdk_for(endpoint: &str, key: &str, secret: &str) -> aws_config::SdkConfig {
    aws_config::defaults(aws_config::BehaviorVersion::latest())
        .region(aws_config::Region::new(REGION))
        .endpoint_url(endpoint)
        .credentials_provider(aws_sdk_ssm::config::Credentials::new(
            key, secret, None, None, "test",
        ))
        .load()
        .await
}

async fn store(moto: &Moto, cluster: &str, kms: Option<&str>) -> (SsmStore, ApiCalls) {
    let sdk = sdk_for(&moto.endpoint(), "testing", "testing").await;
    let calls = ApiCalls::default();
    let store = SsmStore::new(
        ssm_client(&sdk, &calls),
        "kraken",
        cluster,
        kms.map(str::to_owned),
    )
    .unwrap();
    (store, calls)
}

async fn raw_ssm(moto: &Moto) -> aws_sdk_ssm::Client {
    let sdk = sdk_for(&moto.endpoint(), "testing", "testing").await;
    aws_sdk_ssm::Client::new(&sdk)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn first_create_wins_and_later_ones_get_the_winner() {
    let moto = Moto::start().await;
    let (s, calls) = store(&moto, "c1", None).await;

    assert_eq!(s.get(names::GOSSIP_KEY).await.unwrap(), None);
    let first = Secret::gossip_key();
    let second = Secret::gossip_key();
    assert_eq!(
        s.create(names::GOSSIP_KEY, &first).await.unwrap(),
        Created::Won
    );
    assert_eq!(
        s.create(names::GOSSIP_KEY, &second).await.unwrap(),
        Created::Lost(first.clone())
    );
    assert_eq!(s.get(names::GOSSIP_KEY).await.unwrap(), Some(first.clone()));

    // Scoped per cluster: another cluster's store does not see it.
    let (other, _) = store(&moto, "c2", None).await;
    assert_eq!(other.get(names::GOSSIP_KEY).await.unwrap(), None);
    let raw = raw_ssm(&moto).await;
    let p = raw
        .get_parameter()
        .name("/kraken/c1/consul/gossip-key")
        .with_decryption(true)
        .send()
        .await
        .unwrap();
    assert_eq!(p.parameter().unwrap().value(), Some(first.expose()));

    s.put(names::GOSSIP_KEY, &second).await.unwrap();
    assert_eq!(s.get(names::GOSSIP_KEY).await.unwrap(), Some(second));
    s.delete(names::GOSSIP_KEY).await.unwrap();
    assert_eq!(s.get(names::GOSSIP_KEY).await.unwrap(), None);
    s.delete(names::GOSSIP_KEY).await.unwrap();

    assert!(calls.get() >= 9, "{} calls counted", calls.get());
    let e = s.get("../x").await.unwrap_err();
    assert!(matches!(e, SecretError::InvalidName { .. }), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_racing_nodes_end_with_one_value() {
    let moto = Moto::start().await;
    for round in 0..3 {
        let name = format!("consul/tokens/race-{round}");
        let barrier = Arc::new(tokio::sync::Barrier::new(10));
        let generated = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let mut tasks = Vec::new();
        for _ in 0..10 {
            // One client each, as ten nodes would have.
            let (s, _) = store(&moto, "race", None).await;
            let (barrier, name, generated) = (barrier.clone(), name.clone(), generated.clone());
            tasks.push(tokio::spawn(async move {
                let mine = Secret::random_token();
                let offered = mine.clone();
                barrier.wait().await;
                let got = s
                    .get_or_create(&name, move || {
                        generated.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                        offered
                    })
                    .await
                    .unwrap();
                (got == mine, got)
            }));
        }
        let mut results = Vec::new();
        for t in tasks {
            results.push(t.await.unwrap());
        }
        let winner = results[0].1.clone();
        assert!(
            results.iter().all(|(_, v)| *v == winner),
            "round {round}: nodes disagree"
        );
        let winners = results.iter().filter(|(won, _)| *won).count();
        assert_eq!(winners, 1, "round {round}: {winners} nodes think they won");
        // Several found it missing and tried to create it: the atomic create
        // decided, not the order of the gets.
        let tried = generated.load(std::sync::atomic::Ordering::SeqCst);
        assert!(
            tried >= 2,
            "round {round}: only {tried} node(s) tried to create"
        );
        let (s, _) = store(&moto, "race", None).await;
        assert_eq!(s.get(&name).await.unwrap(), Some(winner));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parameters_are_secure_strings_with_the_configured_key() {
    let moto = Moto::start().await;
    let raw = raw_ssm(&moto).await;
    let (plain, _) = store(&moto, "c1", None).await;
    plain
        .create(names::GOSSIP_KEY, &Secret::gossip_key())
        .await
        .unwrap();
    let (custom, _) = store(&moto, "c1", Some("alias/kraken-secrets")).await;
    let token = Secret::random_token();
    custom
        .create(names::CONSUL_INITIAL_MANAGEMENT, &token)
        .await
        .unwrap();

    let described = raw
        .describe_parameters()
        .parameter_filters(
            aws_sdk_ssm::types::ParameterStringFilter::builder()
                .key("Path")
                .option("Recursive")
                .values("/kraken/c1")
                .build()
                .unwrap(),
        )
        .send()
        .await
        .unwrap();
    let params = described.parameters();
    assert_eq!(params.len(), 2, "{params:?}");
    for p in params {
        assert_eq!(
            p.r#type(),
            Some(&aws_sdk_ssm::types::ParameterType::SecureString),
            "{p:?}"
        );
        assert!(
            p.description().unwrap_or("").contains("kraken-agent"),
            "{p:?}"
        );
    }
    let key_of = |n: &str| {
        params
            .iter()
            .find(|p| p.name() == Some(n))
            .and_then(|p| p.key_id())
            .map(str::to_owned)
    };
    assert_eq!(
        key_of("/kraken/c1/consul/tokens/initial-management").as_deref(),
        Some("alias/kraken-secrets")
    );
    assert_eq!(
        key_of("/kraken/c1/consul/gossip-key").as_deref(),
        Some("alias/aws/ssm")
    );

    let undecrypted = raw
        .get_parameter()
        .name("/kraken/c1/consul/tokens/initial-management")
        .with_decryption(false)
        .send()
        .await
        .unwrap();
    let p = undecrypted.parameter().unwrap();
    assert_eq!(
        p.r#type(),
        Some(&aws_sdk_ssm::types::ParameterType::SecureString)
    );
    assert_ne!(p.value(), Some(token.expose()));
    assert_eq!(
        custom
            .get(names::CONSUL_INITIAL_MANAGEMENT)
            .await
            .unwrap()
            .as_ref(),
        Some(&token)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_from_settings_uses_the_ssm_prefix() {
    let moto = Moto::start().await;
    let sdk = sdk_for(&moto.endpoint(), "testing", "testing").await;
    let settings = SecretSettings {
        backend: Backend::Ssm,
        ssm_prefix: "org/kraken".into(),
        ..Default::default()
    };
    let calls = ApiCalls::default();
    let store = Store::from_settings(&settings, "prod", &sdk, &calls).unwrap();
    assert_eq!(
        store.location(names::NOMAD_MANAGEMENT).unwrap(),
        "/org/kraken/prod/nomad/tokens/management"
    );
    let v = store
        .get_or_create(names::NOMAD_MANAGEMENT, Secret::random_token)
        .await
        .unwrap();
    let raw = raw_ssm(&moto).await;
    let p = raw
        .get_parameter()
        .name("/org/kraken/prod/nomad/tokens/management")
        .with_decryption(true)
        .send()
        .await
        .unwrap();
    assert_eq!(p.parameter().unwrap().value(), Some(v.expose()));
    assert_eq!(calls.get(), 2, "a get and a put through the counted client");
}

/// A user in moto with `actions` allowed on every resource, and its keys.
async fn user(iam: &aws_sdk_iam::Client, name: &str, actions: &[&str]) -> (String, String) {
    iam.create_user().user_name(name).send().await.unwrap();
    let actions = actions
        .iter()
        .map(|a| format!("\"{a}\""))
        .collect::<Vec<_>>()
        .join(",");
    iam.put_user_policy()
        .user_name(name)
        .policy_name("only-this")
        .policy_document(format!(
            r#"{{"Version":"2012-10-17","Statement":[{{"Effect":"Allow","Action":[{actions}],"Resource":"*"}}]}}"#
        ))
        .send()
        .await
        .unwrap();
    let key = iam
        .create_access_key()
        .user_name(name)
        .send()
        .await
        .unwrap();
    let key = key.access_key().unwrap();
    (
        key.access_key_id().to_owned(),
        key.secret_access_key().to_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_denied_names_the_action_and_parameter_and_not_the_value() {
    // moto enforces IAM from the eighth request on: one to seed a secret,
    // then three per user.
    let moto = Moto::start_with_env(&[("INITIAL_NO_AUTH_ACTION_COUNT", "7")]).await;
    let (admin, _) = store(&moto, "c1", None).await;
    let seeded = Secret::gossip_key();
    admin.create(names::GOSSIP_KEY, &seeded).await.unwrap();
    let iam = aws_sdk_iam::Client::new(&sdk_for(&moto.endpoint(), "testing", "testing").await);
    let (none_id, none_key) = user(&iam, "nothing", &["sts:GetCallerIdentity"]).await;
    let (reader_id, reader_key) = user(&iam, "reader", &["ssm:GetParameter"]).await;

    let as_user = |id: String, key: String| {
        let endpoint = moto.endpoint();
        async move {
            let sdk = sdk_for(&endpoint, &id, &key).await;
            SsmStore::new(
                ssm_client(&sdk, &ApiCalls::default()),
                "kraken",
                "c1",
                Some("alias/kraken-secrets".into()),
            )
            .unwrap()
        }
    };
    let nothing = as_user(none_id, none_key.clone()).await;
    let reader = as_user(reader_id, reader_key.clone()).await;

    let e = nothing.get(names::GOSSIP_KEY).await.unwrap_err();
    let t = e.to_string();
    for needle in [
        "secret consul/gossip-key",
        "SSM parameter /kraken/c1/consul/gossip-key",
        "ssm:GetParameter was denied",
        "grant ssm:GetParameter",
        "kms:Decrypt",
    ] {
        assert!(t.contains(needle), "missing {needle:?} in {t}");
    }
    assert!(e.is_access_denied() && !e.is_transient(), "{e:?}");

    // The reader may read, so what it is refused is exactly the write.
    assert_eq!(reader.get(names::GOSSIP_KEY).await.unwrap(), Some(seeded));
    let value = Secret::random_token();
    let offered = value.clone();
    let e = reader
        .get_or_create(names::CONSUL_NOMAD_CLIENT, move || offered)
        .await
        .unwrap_err();
    let t = format!("{e} {e:?}");
    for needle in [
        "secret consul/tokens/nomad-client",
        "/kraken/c1/consul/tokens/nomad-client",
        "ssm:PutParameter was denied",
        "grant ssm:PutParameter",
        "kms:Encrypt",
    ] {
        assert!(t.contains(needle), "missing {needle:?} in {t}");
    }
    assert!(!t.contains(value.expose()), "secret leaked: {t}");
    for key in [&none_key, &reader_key] {
        assert!(!t.contains(key.as_str()), "credential leaked: {t}");
    }
    assert!(e.is_access_denied() && !e.is_transient(), "{e:?}");
}
