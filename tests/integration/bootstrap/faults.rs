//! What goes wrong from outside: a Nomad bootstrapped by hand, SSM
//! throttling, SSM access denied.

use super::cluster::{EVERYTHING_ONCE, captured, cluster};
use crate::common::*;
use kraken_bootstrap::{BootstrapError, POLICIES, ROLE_TOKENS};
use kraken_testkit::Moto;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_nomad_bootstrapped_by_hand_is_a_loud_specific_error() {
    let c = cluster("byhand").await;
    // Someone ran `nomad acl bootstrap` before the agent got there.
    let by_hand: serde_json::Value = kraken_testkit::http_client()
        .put(format!("{}/v1/acl/bootstrap", c.nomad.http_url()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(by_hand["SecretID"].is_string());
    let err = c.participant(0, None).await.unwrap_err();
    let text = err.to_string();
    assert!(
        matches!(err, BootstrapError::NomadBootstrappedByHand { .. }),
        "{text}"
    );
    assert!(
        text.contains("/kraken/byhand/nomad/tokens/management"),
        "{text}"
    );
    assert!(!err.is_transient());
    // The Consul half is untouched by the failure.
    let (policies, tokens, _) = {
        let admin = c.consul(0, Some(c.management.clone()));
        (
            admin
                .acl_policies()
                .await
                .unwrap()
                .iter()
                .filter(|p| p.name.starts_with("kraken-"))
                .count(),
            admin
                .acl_tokens()
                .await
                .unwrap()
                .iter()
                .filter(|t| t.description.starts_with("kraken:"))
                .count(),
            0,
        )
    };
    assert_eq!((policies, tokens), (POLICIES.len(), ROLE_TOKENS.len()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn throttled_ssm_is_retried_and_the_bootstrap_completes() {
    captured();
    let c = cluster("throttled").await;
    let (proxy, seen) = throttling_proxy(c.moto.endpoint(), 4, &SSM_THROTTLED).await;
    let throttled = moto_store(
        &format!("http://{proxy}"),
        &c.cluster,
        ("testing", "testing"),
    )
    .await;
    c.participant_with(0, None, &throttled).await.unwrap();
    assert!(seen.load(std::sync::atomic::Ordering::SeqCst) > 4);
    assert_eq!(c.census().await, EVERYTHING_ONCE);
    c.tokens_work().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ssm_access_denied_is_named_and_does_no_damage() {
    captured();
    let c = cluster("denied").await;
    // A second moto that enforces IAM from its 4th request: a node whose
    // role may not write the secret store.
    let strict = Moto::start_with_env(&[("INITIAL_NO_AUTH_ACTION_COUNT", "3")]).await;
    let (key_id, key_secret) = restricted_user(&strict.endpoint(), "ssm:GetParameter").await;
    let denied = moto_store(&strict.endpoint(), &c.cluster, (&key_id, &key_secret)).await;
    let err = c.participant_with(0, None, &denied).await.unwrap_err();
    let text = err.to_string();
    assert!(!err.is_transient(), "{text}");
    assert!(text.contains("ssm:PutParameter"), "{text}");
    assert!(
        text.contains("/kraken/denied/consul/tokens/agent"),
        "{text}"
    );
    // No token was created without its secret stored first.
    let admin = c.consul(0, Some(c.management.clone()));
    let tokens = admin.acl_tokens().await.unwrap();
    assert!(
        tokens.iter().all(|t| !t.description.starts_with("kraken:")),
        "{tokens:?}"
    );
    // A node that may write then finishes the job.
    c.participant(1, None).await.unwrap();
    assert_eq!(c.census().await, EVERYTHING_ONCE);
    c.tokens_work().await;
}
