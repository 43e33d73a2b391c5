//! The tokens the bootstrap makes, and their upkeep for the cluster's whole
//! life.
//!
//! Consul role tokens are made write-ahead: the SecretID goes to the secret
//! store first, then Consul learns it, so a crash between the two leaves a
//! stored secret for the next holder to finish with, never a token nobody
//! knows. The upkeep tells three ways a stored role token can be unknown
//! to Consul apart:
//! - **lost**: Consul's state is gone (every server replaced, an old
//!   snapshot restored); the bootstrap state went with it, and the Consul
//!   phase runs again with the stored SecretIDs;
//! - **revoked**: a person deleted the token and the state still records it
//!   with the stored secret: it stays deleted (to replace it, rotate the
//!   stored secret: `docs/operations.md`);
//! - **rotated**: the stored secret is new (deleted or overwritten in the
//!   store): a token is made with it, and the old one is deleted once
//!   every holder has had two check periods to read the new secret.

use std::time::Duration;

use kraken_hashi::{Consul, NomadBootstrap, Token};
use kraken_secrets::{Secret, SecretStore, names};
use serde::Serialize;

use crate::error::BootstrapError;
use crate::policies::ROLE_TOKENS;
use crate::run::Bootstrap;
use crate::state::{Phase, Retired, TokenRecord, now_unix, sha256_hex};

/// What one upkeep round found and did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Upkeep {
    /// The Consul phase ran again: Consul had lost its state.
    pub rebootstrapped: bool,
    /// Policies created or brought to this agent's rules.
    pub policies: Vec<&'static str>,
    /// Tokens made with a rotated secret.
    pub rotated: Vec<&'static str>,
    /// Tokens deleted on purpose, left deleted.
    pub revoked: Vec<&'static str>,
    /// Tokens made again with their stored secret (no record of them).
    pub recreated: Vec<&'static str>,
    /// Accessors of rotated-out tokens deleted now.
    pub retired: Vec<String>,
}

impl Bootstrap<'_> {
    /// Makes the role token `name` with its stored SecretID (creating the
    /// secret first if need be) and returns what the state records of it.
    pub(crate) async fn role_token(
        &self,
        name: &str,
        description: &str,
        policy: &str,
    ) -> Result<TokenRecord, BootstrapError> {
        let secret = self.store.get_or_create(name, Secret::random_token).await?;
        let token = Token::new(secret.expose());
        let made = self
            .consul
            .acl_token_create(&token, description, &[policy])
            .await
            .map_err(BootstrapError::consul("create an ACL token"))?;
        let made = match made {
            Some(t) => t,
            // In use: an earlier holder made it and died before recording.
            None => self
                .consul
                .with_token(Some(token))
                .acl_token_self()
                .await
                .map_err(BootstrapError::consul("confirm an existing ACL token"))?
                .ok_or_else(|| BootstrapError::Consul {
                    action: "create an ACL token",
                    source: kraken_hashi::HashiError::Decode {
                        service: "Consul",
                        url: format!("/v1/acl/token ({name})"),
                        detail: "Consul says the SecretID is in use but does not accept it".into(),
                    },
                })?,
        };
        Ok(TokenRecord {
            accessor: made.accessor_id,
            secret_sha256: sha256_hex(secret.expose()),
        })
    }

    /// Token and policy upkeep, on Consul servers, every
    /// `bootstrap.token_check_secs`. `reader` holds the servers' own token
    /// (`acl:read`, the state): the routine checks use it; `self.consul`
    /// (the management token) only changes what must change. Does nothing
    /// before the Consul phase has ever run on this cluster.
    pub async fn upkeep(&self, reader: &Consul, grace: Duration) -> Result<Upkeep, BootstrapError> {
        let mut report = Upkeep::default();
        let reading = Bootstrap {
            consul: reader.clone(),
            nomad: None,
            store: self.store,
            cluster: self.cluster.clone(),
            node: self.node.clone(),
            lease: self.lease.clone(),
            crash_after: None,
        };
        let (mut state, index) = match reading.read_state().await {
            Ok(s) => s,
            // The server token itself may be what Consul lost.
            Err(_) => self.read_state().await?,
        };
        if !state.phase_done(Phase::Consul) {
            if state.done.is_empty() && self.store.get(names::CONSUL_AGENT).await?.is_some() {
                // Tokens were made once (their secrets are stored) and the
                // state is gone: Consul lost its data. Same SecretIDs.
                log::warn!(
                    "the bootstrap state is gone from Consul: running the Consul phase again"
                );
                self.run(Phase::Consul).await?;
                report.rebootstrapped = true;
            }
            return Ok(report);
        }
        report.policies = crate::policies::ensure(reader, &self.consul, &self.cluster).await?;
        let mut changed = false;
        // One batched read (one SSM transaction) for every role token.
        let all_stored = self
            .store
            .get_many(&ROLE_TOKENS.map(|(name, _, _)| name))
            .await?;
        for ((name, description, policy), stored) in ROLE_TOKENS.into_iter().zip(all_stored) {
            let record = state.tokens.get(name).cloned();
            let known = match &stored {
                Some(s) => self
                    .consul
                    .with_token(Some(Token::new(s.expose())))
                    .acl_token_self()
                    .await
                    .map_err(BootstrapError::consul("check a role token"))?,
                None => None,
            };
            let hash = stored.as_ref().map(|s| sha256_hex(s.expose()));
            match (known, record) {
                (Some(t), record) => {
                    // Known: record it if it is not (made by an older agent).
                    if record.as_ref().map(|r| &r.secret_sha256) != hash.as_ref() {
                        state.tokens.insert(
                            name.to_owned(),
                            TokenRecord {
                                accessor: t.accessor_id,
                                secret_sha256: hash.clone().unwrap_or_default(),
                            },
                        );
                        changed = true;
                    }
                }
                (None, Some(r)) if Some(&r.secret_sha256) == hash.as_ref() => {
                    log::warn!(
                        "Consul token {name} (accessor {}) was deleted and stays deleted; \
                         to replace it, rotate {} (docs/operations.md)",
                        r.accessor,
                        self.store
                            .location(name)
                            .unwrap_or_else(|_| name.to_owned())
                    );
                    report.revoked.push(name);
                }
                (None, record) => {
                    // A new secret (or none: made now), or a token an older
                    // agent made and Consul lost without its state.
                    let made = self.role_token(name, description, policy).await?;
                    if let Some(old) = record.filter(|r| r.accessor != made.accessor) {
                        log::info!(
                            "Consul token {name}: made with the rotated secret; the old one \
                             ({}) is deleted in {}s",
                            old.accessor,
                            grace.as_secs()
                        );
                        state.retired.push(Retired {
                            name: name.to_owned(),
                            accessor: old.accessor,
                            delete_after_unix: now_unix() + grace.as_secs(),
                        });
                        report.rotated.push(name);
                    } else if stored.is_none() {
                        // A token this agent version adds (the scraper's):
                        // clusters bootstrapped before get it here.
                        log::info!("Consul token {name}: made (new in this agent version)");
                        report.recreated.push(name);
                    } else {
                        log::warn!("Consul token {name} was gone from Consul; made again");
                        report.recreated.push(name);
                    }
                    state.tokens.insert(name.to_owned(), made);
                    changed = true;
                }
            }
        }
        let now = now_unix();
        let (due, kept): (Vec<_>, Vec<_>) = std::mem::take(&mut state.retired)
            .into_iter()
            .partition(|r| r.delete_after_unix <= now);
        state.retired = kept;
        for r in due {
            self.consul
                .acl_token_delete(&r.accessor)
                .await
                .map_err(BootstrapError::consul("delete a rotated-out token"))?;
            log::info!(
                "Consul token {} {}: rotated out, deleted",
                r.name,
                r.accessor
            );
            report.retired.push(r.accessor);
            changed = true;
        }
        if changed {
            // Another server doing the same upkeep may have written first;
            // the next round sees its record.
            let body = serde_json::to_vec(&state).expect("state serialises");
            self.consul
                .kv_cas(&self.state_key(), &body, index)
                .await
                .map_err(BootstrapError::consul("record the role tokens"))?;
        }
        Ok(report)
    }

    pub(crate) async fn nomad_bootstrap(&self) -> Result<(), BootstrapError> {
        let nomad = self
            .nomad
            .as_ref()
            .expect("the Nomad phase is run with a Nomad client");
        let secret = self
            .store
            .get_or_create(names::NOMAD_MANAGEMENT, Secret::random_token)
            .await?;
        let token = Token::new(secret.expose());
        match nomad
            .acl_bootstrap(&token)
            .await
            .map_err(BootstrapError::nomad("bootstrap Nomad's ACLs"))?
        {
            NomadBootstrap::Done => Ok(()),
            NomadBootstrap::AlreadyDone => {
                let works = nomad
                    .with_token(Some(token))
                    .acl_token_self()
                    .await
                    .map_err(BootstrapError::nomad(
                        "check the stored Nomad management token",
                    ))?;
                if works.is_some() {
                    Ok(())
                } else {
                    Err(BootstrapError::NomadBootstrappedByHand {
                        location: self
                            .store
                            .location(names::NOMAD_MANAGEMENT)
                            .unwrap_or_else(|_| names::NOMAD_MANAGEMENT.to_owned()),
                    })
                }
            }
        }
    }

    /// One of the agent's narrow Nomad tokens (its own on servers, the
    /// clients' drain token), stored as `secret`. Nomad chooses token secrets, so
    /// this cannot be write-ahead: the token is found by its name, and its
    /// secret stored after (a crash in between leaves a token the next
    /// holder finds by name, never a second one). The store is never
    /// overwritten (IAM denies nodes every overwrite): a stored secret Nomad
    /// no longer accepts is deleted, then stored anew.
    pub(crate) async fn nomad_token(
        &self,
        secret: &str,
        (name, description, rules): (&str, &str, &str),
    ) -> Result<(), BootstrapError> {
        let management = self
            .store
            .get(names::NOMAD_MANAGEMENT)
            .await?
            .map(|s| Token::new(s.expose()));
        let nomad = self
            .nomad
            .as_ref()
            .expect("the Nomad phase is run with a Nomad client")
            .with_token(management);
        nomad
            .acl_policy_upsert(name, description, rules)
            .await
            .map_err(BootstrapError::nomad(
                "write a Nomad ACL policy of the agent",
            ))?;
        if let Some(stored) = self.store.get(secret).await? {
            let works = nomad
                .with_token(Some(Token::new(stored.expose())))
                .acl_token_self()
                .await
                .map_err(BootstrapError::nomad("check the agent's Nomad token"))?;
            if works.is_some() {
                return Ok(());
            }
            // Nomad lost it (its servers replaced with their data): make it
            // again. Under the lease, removing the stale secret first is safe;
            // a reader in between waits for the new one.
            log::warn!("the Nomad token {name} is unknown to Nomad; making it again");
            if let Some(stale) = nomad
                .acl_token_named(name)
                .await
                .map_err(BootstrapError::nomad("look up the agent's Nomad token"))?
            {
                nomad
                    .acl_token_delete(&stale.accessor_id)
                    .await
                    .map_err(BootstrapError::nomad("delete a stale agent Nomad token"))?;
            }
            self.store.delete(secret).await?;
        }
        let token = match nomad
            .acl_token_named(name)
            .await
            .map_err(BootstrapError::nomad("look up the agent's Nomad token"))?
        {
            Some(t) => t,
            None => nomad
                .acl_token_create(name, &[name])
                .await
                .map_err(BootstrapError::nomad("create the agent's Nomad token"))?,
        };
        self.store
            .create(secret, &Secret::new(token.secret().expose()))
            .await?;
        Ok(())
    }
}
