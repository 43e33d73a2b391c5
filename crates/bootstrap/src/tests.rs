//! The bootstrap's pure logic: step order and phases, the recorded state,
//! which failures are retried, and the policies the steps rely on. The
//! protocol itself runs against real Consul, Nomad and SSM in
//! `tests/integration/bootstrap/`.

use std::collections::BTreeSet;
use std::time::Duration;

use kraken_hashi::{Consul, HashiError};
use kraken_secrets::{DirStore, SecretError, Store};

use crate::error::transient;
use crate::policies::{DNS_POLICY, parse_version};
use crate::*;

fn consul_status(status: u16, body: &str) -> HashiError {
    HashiError::Status {
        service: "Consul",
        method: "PUT".parse().unwrap(),
        url: "http://127.0.0.1:8500/v1/kv/kraken/blue/bootstrap/lock".into(),
        status,
        body: body.into(),
    }
}

fn unreachable() -> HashiError {
    HashiError::Unreachable {
        service: "Consul",
        url: "http://127.0.0.1:8500/v1/kv/kraken/blue/bootstrap/state".into(),
        detail: "connection refused".into(),
    }
}

fn state_with(steps: &[Step]) -> State {
    State {
        done: steps.iter().map(|s| s.name().to_owned()).collect(),
        ..State::default()
    }
}

#[test]
fn steps_run_in_their_declared_order_consul_before_nomad() {
    let mut sorted = Step::ALL;
    sorted.sort();
    assert_eq!(sorted, Step::ALL, "ALL is the order the steps run in");
    let phases: Vec<Phase> = Step::ALL.iter().map(|s| s.phase()).collect();
    assert_eq!(
        phases,
        [
            Phase::Consul,
            Phase::Consul,
            Phase::Consul,
            Phase::Consul,
            Phase::Consul,
            Phase::Consul,
            Phase::Consul,
            Phase::Nomad,
            Phase::Nomad,
            Phase::Nomad,
            Phase::Nomad
        ]
    );
    // The role tokens need the policies; the anonymous token's DNS policy
    // too.
    assert_eq!(Step::ALL[0], Step::ConsulPolicies);
}

#[test]
fn step_names_are_the_ones_recorded_in_consul() {
    // A cluster's recorded state names its steps: renaming one would make
    // every running cluster redo it.
    let names: Vec<&str> = Step::ALL.iter().map(|s| s.name()).collect();
    assert_eq!(
        names,
        [
            "consul-policies",
            "consul-token-agent",
            "consul-token-nomad-server",
            "consul-token-nomad-client",
            "consul-anonymous-dns",
            "consul-token-server",
            "consul-token-metrics",
            "nomad-acl-bootstrap",
            "nomad-token-agent",
            "nomad-token-drain",
            "nomad-workload-identity",
        ]
    );
}

#[test]
fn a_phase_is_done_when_all_of_its_steps_are() {
    let consul_steps: Vec<Step> = Step::ALL
        .into_iter()
        .filter(|s| s.phase() == Phase::Consul)
        .collect();
    let nothing = State::default();
    assert!(!nothing.phase_done(Phase::Consul));
    assert!(!nothing.phase_done(Phase::Nomad));

    for missing in &consul_steps {
        let rest: Vec<Step> = consul_steps
            .iter()
            .copied()
            .filter(|s| s != missing)
            .collect();
        let state = state_with(&rest);
        assert!(!state.is_done(*missing));
        assert!(
            !state.phase_done(Phase::Consul),
            "Consul phase without {}",
            missing.name()
        );
    }
    let consul = state_with(&consul_steps);
    assert!(consul.phase_done(Phase::Consul));
    assert!(!consul.phase_done(Phase::Nomad), "each phase on its own");

    // A cluster bootstrapped before the drain token existed has its Nomad
    // phase to finish: the next holder makes only that token.
    let older = state_with(&[Step::NomadAclBootstrap, Step::NomadAgentToken]);
    assert!(!older.phase_done(Phase::Nomad));
    let before_wi = state_with(&[
        Step::NomadAclBootstrap,
        Step::NomadAgentToken,
        Step::NomadDrainToken,
    ]);
    assert!(
        !before_wi.phase_done(Phase::Nomad),
        "workload identity to do"
    );
    let nomad = state_with(&[
        Step::NomadAclBootstrap,
        Step::NomadAgentToken,
        Step::NomadDrainToken,
        Step::NomadWorkloadIdentity,
    ]);
    assert!(nomad.phase_done(Phase::Nomad));
    assert!(!nomad.phase_done(Phase::Consul));
}

#[test]
fn names_that_are_no_step_do_not_count() {
    let state = State {
        done: BTreeSet::from(["consul-tokens".to_owned(), "nomad".to_owned()]),
        ..State::default()
    };
    assert!(Step::ALL.iter().all(|s| !state.is_done(*s)));
}

#[test]
fn the_recorded_state_reads_back_and_an_old_one_without_a_log_still_reads() {
    let mut state = state_with(&[Step::ConsulPolicies, Step::ConsulAgentToken]);
    state
        .log
        .push("consul-policies by node-1 at 1700000000".into());
    let json = serde_json::to_vec(&state).unwrap();
    assert_eq!(serde_json::from_slice::<State>(&json).unwrap(), state);

    let old: State = serde_json::from_str(r#"{"done":["consul-policies"]}"#).unwrap();
    assert!(old.is_done(Step::ConsulPolicies));
    assert!(old.log.is_empty());
}

#[test]
fn elections_outages_and_lost_leases_are_retried() {
    for source in [
        unreachable(),
        consul_status(500, "No cluster leader"),
        consul_status(503, ""),
        // Consul forwards to the leader; mid-election that fails with
        // these, not always with a 5xx.
        consul_status(400, "No cluster leader"),
        consul_status(400, "rpc error making call: EOF"),
    ] {
        let shown = source.to_string();
        assert!(transient(&source), "{shown}");
        let consul = BootstrapError::Consul {
            action: "record a bootstrap step",
            source,
        };
        assert!(consul.is_transient(), "{shown}");
    }
    let nomad = BootstrapError::Nomad {
        action: "bootstrap Nomad's ACLs",
        source: HashiError::Status {
            service: "Nomad",
            method: "PUT".parse().unwrap(),
            url: "http://127.0.0.1:4646/v1/acl/bootstrap".into(),
            status: 500,
            body: "No cluster leader".into(),
        },
    };
    assert!(nomad.is_transient());
    let lost = BootstrapError::LeaseLost {
        key: "kraken/blue/bootstrap/lock".into(),
    };
    assert!(lost.is_transient());
    let vanished = BootstrapError::Secret(SecretError::Vanished {
        name: "consul/tokens/agent".into(),
        location: "/kraken/blue/consul/tokens/agent".into(),
        attempts: 5,
    });
    assert!(vanished.is_transient());
}

#[test]
fn refusals_and_bad_answers_are_not_retried() {
    for source in [
        consul_status(403, "Permission denied: token lacks key:write"),
        consul_status(400, "Invalid session"),
        HashiError::Decode {
            service: "Consul",
            url: "/v1/kv/kraken/blue/bootstrap/state".into(),
            detail: "expected value".into(),
        },
        HashiError::BadUrl {
            service: "Consul",
            url: "127.0.0.1:8500".into(),
        },
        HashiError::Tls {
            service: "Consul",
            detail: "the CA file is not PEM".into(),
        },
    ] {
        let shown = source.to_string();
        assert!(!transient(&source), "{shown}");
        let consul = BootstrapError::Consul {
            action: "create an ACL token",
            source,
        };
        assert!(!consul.is_transient(), "{shown}");
    }
    for err in [
        BootstrapError::NomadBootstrappedByHand {
            location: "/kraken/blue/nomad/tokens/management".into(),
        },
        BootstrapError::BadState {
            key: "kraken/blue/bootstrap/state".into(),
            detail: "EOF".into(),
        },
        BootstrapError::CrashPoint {
            step: "consul-policies",
        },
        BootstrapError::Secret(SecretError::InvalidName {
            name: "Consul/Agent".into(),
            reason: "upper case",
        }),
    ] {
        assert!(!err.is_transient(), "{err}");
    }
}

#[test]
fn a_nomad_bootstrapped_by_hand_names_where_the_token_goes_and_how_to_reset() {
    let text = BootstrapError::NomadBootstrappedByHand {
        location: "/kraken/blue/nomad/tokens/management".into(),
    }
    .to_string();
    for part in [
        "/kraken/blue/nomad/tokens/management",
        "nomad acl bootstrap -reset-index",
        "docs/operations.md",
    ] {
        assert!(text.contains(part), "{part:?} in {text}");
    }
}

#[test]
fn every_policy_a_token_is_given_is_one_the_bootstrap_creates() {
    let created: BTreeSet<&str> = POLICIES.iter().map(|(name, _, _)| *name).collect();
    assert_eq!(created.len(), POLICIES.len(), "policy names are unique");
    for (secret, _, policy) in ROLE_TOKENS {
        assert!(created.contains(policy), "{secret}: {policy}");
    }
    assert!(created.contains(DNS_POLICY));
}

#[test]
fn the_nomad_server_policy_covers_the_lease_and_the_state() {
    // The Nomad phase holds the lease with the nomad-server token.
    let (_, _, rules) = POLICIES
        .iter()
        .find(|(name, _, _)| *name == "kraken-nomad-server")
        .unwrap();
    let rules = rules.replace("@CLUSTER@", "blue");
    let prefix = rules
        .split("key_prefix \"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .expect("a key_prefix rule");
    // Only for the struct: nothing is read or written.
    let store = Store::from(DirStore::new(&std::env::temp_dir(), "blue").unwrap());
    let bootstrap = Bootstrap {
        consul: Consul::new("http://127.0.0.1:8500", None).unwrap(),
        nomad: None,
        store: &store,
        cluster: "blue".into(),
        node: "node-1".into(),
        lease: LeaseSettings::default(),
        crash_after: None,
    };
    for key in [bootstrap.lock_key(), bootstrap.state_key()] {
        assert!(key.starts_with(prefix), "{key} outside {prefix}");
    }
    assert!(rules.contains("session_prefix \"\""), "{rules}");
}

#[test]
fn no_policy_keeps_the_cluster_placeholder() {
    for (name, _, rules) in POLICIES {
        let rules = rules.replace("@CLUSTER@", "blue");
        assert!(!rules.contains('@'), "{name}: {rules}");
        assert!(rules.contains("policy = "), "{name}: {rules}");
    }
}

#[test]
fn the_default_lease_is_one_consul_accepts() {
    let d = LeaseSettings::default();
    // Consul refuses session TTLs outside 10 s to 24 h.
    assert!(d.ttl >= Duration::from_secs(10) && d.ttl <= Duration::from_secs(86_400));
    // Sent in whole seconds: a fraction would be lost.
    assert_eq!(u128::from(d.ttl.as_secs()) * 1000, d.ttl.as_millis());
    assert_eq!(
        u128::from(d.lock_delay.as_secs()) * 1000,
        d.lock_delay.as_millis()
    );
    // A dead holder's successor waits out the lock-delay after the TTL:
    // it must be the shorter of the two.
    assert!(d.lock_delay < d.ttl);
}

#[test]
fn a_policy_is_updated_only_by_an_agent_at_least_as_new_as_its_writer() {
    let ours = parse_version(AGENT_VERSION).unwrap();
    let written = versioned("Consul agents of kraken nodes");
    assert_eq!(version_of(&written), Some(ours.clone()));
    // Descriptions of older agents carry no version: any agent updates them.
    assert_eq!(version_of("Consul agents of kraken nodes"), None);
    let newer = "x (rules of kraken-agent 99.0.0)";
    assert!(version_of(newer).unwrap() > ours);
    assert_eq!(
        version_of("x (rules of kraken-agent 0.2.0-rc1)"),
        Some(vec![0, 2, 0])
    );
    assert!(parse_version("1.10.0").unwrap() > parse_version("1.9.9").unwrap());
}

#[test]
fn an_old_state_without_token_records_still_reads() {
    let old: State = serde_json::from_str(r#"{"done":["consul-policies"],"log":[]}"#).unwrap();
    assert!(old.tokens.is_empty() && old.retired.is_empty());
    let mut state = old.clone();
    state.tokens.insert(
        "consul/tokens/agent".into(),
        TokenRecord {
            accessor: "a".into(),
            secret_sha256: crate::state::sha256_hex("s"),
        },
    );
    let json = serde_json::to_vec(&state).unwrap();
    assert_eq!(serde_json::from_slice::<State>(&json).unwrap(), state);
    // The record holds a digest of the secret, never the secret.
    assert!(!String::from_utf8(json).unwrap().contains("\"s\""));
}

#[test]
fn servers_have_a_token_for_the_restart_lock_and_autopilot() {
    let (_, _, rules) = POLICIES
        .iter()
        .find(|(name, _, _)| *name == "kraken-server")
        .unwrap();
    let rules = rules.replace("@CLUSTER@", "blue");
    assert!(rules.contains("key_prefix \"kraken/blue/\""), "{rules}");
    assert!(rules.contains("operator = \"read\""), "{rules}");
    assert!(rules.contains("acl = \"read\""), "{rules}");
    assert!(!rules.contains("acl = \"write\""), "{rules}");
    // Every node's agent token may join: a client that lost every server
    // rejoins the ones EC2 knows.
    let (_, _, agent) = POLICIES
        .iter()
        .find(|(name, _, _)| *name == "kraken-agent")
        .unwrap();
    assert!(
        agent.contains("agent_prefix \"\" {\n  policy = \"write\""),
        "{agent}"
    );
}
