//! The fake against the IMDS client the agent uses (`aws-config`), to prove
//! the official client is satisfied with it and to pin down how that client
//! reacts to each fault.

use std::time::{Duration, Instant};

use aws_config::imds::client::error::ImdsError;
use aws_config::imds::{Client, credentials::ImdsCredentialsProvider};
use aws_credential_types::provider::ProvideCredentials;
use kraken_fake_imds::{FakeImds, FakeImdsHandle, IamRole, InstanceData};

async fn start(data: InstanceData) -> FakeImdsHandle {
    FakeImds::start("127.0.0.1:0".parse().unwrap(), data)
        .await
        .unwrap()
}

fn client(imds: &FakeImdsHandle) -> Client {
    Client::builder().endpoint(imds.endpoint()).unwrap().build()
}

fn tagged() -> InstanceData {
    let mut data = InstanceData::default();
    data.tags.insert("kraken:cluster".into(), "blue".into());
    data.tags
        .insert("kraken:roles".into(), "consul-server,nomad-server".into());
    data
}

/// aws-config reports a read timeout as `Unexpected`, not `IoError`.
fn is_timeout(result: &Result<impl std::fmt::Debug, ImdsError>) -> bool {
    matches!(result, Err(ImdsError::Unexpected(_)))
        && format!("{result:?}").contains("HttpTimeoutError")
}

/// The HTTP status of an error response, or a description of another error.
fn status(result: Result<impl std::fmt::Debug, ImdsError>) -> Result<u16, String> {
    match result {
        Err(ImdsError::ErrorResponse(e)) => Ok(e.response().status().as_u16()),
        other => Err(format!("{other:?}")),
    }
}

#[tokio::test]
async fn official_client_reads_identity_and_tags_with_one_token() {
    let imds = start(tagged()).await;
    let client = client(&imds);
    let get = |path: &'static str| {
        let client = client.clone();
        async move { String::from(client.get(path).await.unwrap()) }
    };
    assert_eq!(
        get("/latest/meta-data/instance-id").await,
        "i-0123456789abcdef0"
    );
    assert_eq!(get("/latest/meta-data/placement/region").await, "us-east-1");
    assert_eq!(
        get("/latest/meta-data/placement/availability-zone").await,
        "us-east-1a"
    );
    assert_eq!(get("/latest/meta-data/local-ipv4").await, "10.0.1.10");
    // The VPC, under the primary interface's MAC, as the agent reads it.
    let mac = get("/latest/meta-data/mac").await;
    let vpc = client
        .get(&format!(
            "/latest/meta-data/network/interfaces/macs/{mac}/vpc-id"
        ))
        .await
        .unwrap();
    assert_eq!(String::from(vpc), "vpc-0123456789abcdef0");
    assert_eq!(
        get("/latest/meta-data/tags/instance").await,
        "kraken:cluster\nkraken:roles"
    );
    assert_eq!(
        get("/latest/meta-data/tags/instance/kraken:roles").await,
        "consul-server,nomad-server"
    );
    let doc: serde_json::Value =
        serde_json::from_str(&get("/latest/dynamic/instance-identity/document").await).unwrap();
    assert_eq!(doc["instanceId"], "i-0123456789abcdef0");

    let stats = imds.stats();
    assert_eq!(stats.token_puts, 1, "the client caches its token");
    assert_eq!(stats.gets, 9);
    assert_eq!(stats.unauthorized, 0);
}

#[tokio::test]
async fn disabled_metadata_tags_are_a_404_error_response() {
    let mut data = tagged();
    data.tags_in_metadata = false;
    let imds = start(data).await;
    let client = client(&imds);
    assert_eq!(
        status(client.get("/latest/meta-data/tags/instance").await),
        Ok(404)
    );
    assert_eq!(
        status(
            client
                .get("/latest/meta-data/tags/instance/kraken:cluster")
                .await
        ),
        Ok(404)
    );
    assert_eq!(
        imds.stats().path("/latest/meta-data/tags/instance"),
        1,
        "404 is not retried"
    );
}

#[tokio::test]
async fn invalidated_tokens() {
    let imds = start(tagged()).await;
    let cached = client(&imds);
    cached.get("/latest/meta-data/instance-id").await.unwrap();
    imds.invalidate_tokens();
    imds.reset_stats();

    // aws-config retries a 401 but keeps its cached token until the token is
    // within two minutes of its TTL, so its retries all fail the same way.
    let result = cached.get("/latest/meta-data/instance-id").await;
    assert_eq!(status(result), Ok(401));
    let stats = imds.stats();
    assert_eq!(
        (stats.gets, stats.unauthorized, stats.token_puts),
        (4, 4, 0),
        "4 attempts"
    );

    // A client whose token TTL is inside that window fetches a token for
    // every request, so it recovers at once.
    let short = Client::builder()
        .endpoint(imds.endpoint())
        .unwrap()
        .token_ttl(Duration::from_secs(60))
        .build();
    let id = short.get("/latest/meta-data/instance-id").await.unwrap();
    assert_eq!(id.as_ref(), "i-0123456789abcdef0");
    imds.invalidate_tokens();
    assert!(short.get("/latest/meta-data/instance-id").await.is_ok());
    assert_eq!(imds.stats().token_puts, 2);
}

#[tokio::test]
async fn server_errors_are_retried_until_attempts_run_out() {
    let imds = start(tagged()).await;
    let client = client(&imds);
    imds.fail_next(2, 503);
    let id = client.get("/latest/meta-data/instance-id").await.unwrap();
    assert_eq!(id.as_ref(), "i-0123456789abcdef0");
    // The token request is an operation of its own, retried the same way.
    let stats = imds.stats();
    assert_eq!((stats.token_puts, stats.gets), (3, 1));

    imds.fail_next(4, 500);
    assert_eq!(
        status(client.get("/latest/meta-data/instance-id").await),
        Ok(500)
    );
    assert_eq!(
        imds.stats().path("/latest/meta-data/instance-id"),
        5,
        "4 attempts"
    );
}

#[tokio::test]
async fn a_slow_or_hung_service_times_out() {
    let imds = start(tagged()).await;
    let client = Client::builder()
        .endpoint(imds.endpoint())
        .unwrap()
        .read_timeout(Duration::from_millis(200))
        .build();
    client.get("/latest/meta-data/instance-id").await.unwrap();

    imds.set_delay(Duration::from_secs(2), Some("/latest/meta-data/placement/"));
    let started = Instant::now();
    let result = client.get("/latest/meta-data/placement/region").await;
    assert!(is_timeout(&result), "{result:?}");
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
    assert!(
        client.get("/latest/meta-data/instance-id").await.is_ok(),
        "other paths answer"
    );
    imds.set_delay(Duration::ZERO, None);
    assert_eq!(
        client
            .get("/latest/meta-data/placement/region")
            .await
            .unwrap()
            .as_ref(),
        "us-east-1"
    );

    imds.set_hang(true);
    let result = client.get("/latest/meta-data/instance-id").await;
    assert!(is_timeout(&result), "{result:?}");
    imds.set_hang(false);
    assert!(client.get("/latest/meta-data/instance-id").await.is_ok());
}

#[tokio::test]
async fn instance_profile_credentials_load() {
    let mut data = tagged();
    data.iam_role = Some(IamRole {
        name: "kraken-node".into(),
        access_key_id: "AKIAFAKEKRAKEN".into(),
        secret_access_key: "fake-secret".into(),
        token: "fake-session-token".into(),
    });
    let imds = start(data).await;
    let provider = ImdsCredentialsProvider::builder()
        .imds_client(client(&imds))
        .build();
    let credentials = provider.provide_credentials().await.unwrap();
    assert_eq!(credentials.access_key_id(), "AKIAFAKEKRAKEN");
    assert_eq!(credentials.secret_access_key(), "fake-secret");
    assert_eq!(credentials.session_token(), Some("fake-session-token"));
    assert!(
        credentials.expiry().unwrap() > std::time::SystemTime::now() + Duration::from_secs(3600)
    );
}
