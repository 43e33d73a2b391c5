//! Every Nomad server replaced with its data while Consul, where the
//! bootstrap state lives, kept its own: the Nomad phase is recorded as
//! done, yet Nomad knows no token. The next participant notices and runs
//! the Nomad steps again with the stored SecretIDs.

use super::cluster::{EVERYTHING_ONCE, captured, cluster, store};
use kraken_hashi::{Nomad, Token};
use kraken_secrets::{SecretStore, names};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_nomad_that_lost_its_data_gets_its_acls_again_with_the_stored_management_token() {
    captured();
    let mut c = cluster("nomadlost").await;
    let store = store(&c.moto, &c.cluster).await;
    c.participant(0, None).await.unwrap();
    assert_eq!(c.census().await, EVERYTHING_ONCE);
    let stored = |name: &'static str| {
        let store = &store;
        async move { Token::new(store.get(name).await.unwrap().expect(name).expose()) }
    };
    let management = stored(names::NOMAD_MANAGEMENT).await;
    let agent_before = stored(names::NOMAD_AGENT).await;

    c.nomad.replace_losing_data().await;
    let nomad = |token: Token| Nomad::new(&c.nomad.http_url(), Some(token)).unwrap();
    assert!(
        nomad(management.clone())
            .acl_token_self()
            .await
            .unwrap()
            .is_none(),
        "the replaced Nomad must not know the old management token"
    );

    // A participant that finds both phases recorded as done.
    let reports = c.participant(1, None).await.unwrap();
    assert!(
        reports[0].performed.is_empty(),
        "the Consul phase had nothing to do: {:?}",
        reports[0]
    );
    assert!(
        !reports[1].performed.is_empty(),
        "the Nomad phase ran again: {:?}",
        reports[1]
    );

    // The same management SecretID: whatever an operator holds works again.
    assert_eq!(
        stored(names::NOMAD_MANAGEMENT).await.expose(),
        management.expose()
    );
    let me = nomad(management.clone()).acl_token_self().await.unwrap();
    assert!(
        me.is_some(),
        "Nomad knows the stored management token again"
    );
    // The agent's Nomad token was remade (Nomad cannot take a given
    // SecretID for a client token) and the store holds the new one.
    let agent_after = stored(names::NOMAD_AGENT).await;
    assert_ne!(agent_after.expose(), agent_before.expose());
    assert!(nomad(agent_after).acl_token_self().await.unwrap().is_some());
    assert!(
        nomad(agent_before)
            .acl_token_self()
            .await
            .unwrap()
            .is_none()
    );
    assert_eq!(c.census().await, EVERYTHING_ONCE);
    c.tokens_work().await;

    // Settled again: the next participant finds nothing to do in either.
    let reports = c.participant(2, None).await.unwrap();
    assert!(
        reports.iter().all(|r| r.performed.is_empty()),
        "{reports:?}"
    );
}
