//! Nomad workload identity to Consul, as `nomad setup consul` sets it up,
//! made and kept by the Nomad servers' agent: the `nomad-workloads` JWT
//! auth method, its binding rules (a service's token is that service's
//! identity, a task's token the role of its namespace), and a policy and
//! role per Nomad namespace.
//!
//! The auth method holds Nomad's public keys (`JWTValidationPubKeys`), not
//! a `JWKSURL`: Nomad's HTTPS verifies its callers' certificates
//! (`verify_https_client`) and Consul cannot present one, so Consul could
//! not fetch the keys itself. The agent fetches them with the node's
//! certificate and writes them again whenever Nomad's set changes (a root
//! key rotation, an old key collected): `docs/workload-identity.md`.

use base64::Engine;
use kraken_hashi::{Consul, Jwk, Nomad, Token};
use kraken_secrets::{SecretStore, names};
use serde::Serialize;

use crate::error::BootstrapError;
use crate::run::Bootstrap;

/// The auth method's name: Nomad's default `service_auth_method` and
/// `task_auth_method`.
pub const AUTH_METHOD: &str = "nomad-workloads";
/// The audience Nomad's servers put in Consul identities (`nomad.hcl.hbs`).
pub const AUDIENCE: &str = "consul.io";
/// The per-namespace policy and role: this prefix and the namespace.
pub const TASKS_PREFIX: &str = "nomad-tasks-";

const TASKS_POLICY: &str = include_str!("../policies/nomad-tasks.hcl");

/// What one round found and changed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Workload {
    /// The key ids Nomad publishes now (what the auth method holds).
    pub keys: Vec<String>,
    /// The auth method was created or its keys or claims changed.
    pub auth_method_changed: bool,
    /// Binding rules created (and stale ones of ours deleted).
    pub rules_changed: usize,
    /// Namespaces whose policy or role was created or updated.
    pub namespaces_changed: Vec<String>,
}

impl Workload {
    pub fn changed(&self) -> bool {
        self.auth_method_changed || self.rules_changed > 0 || !self.namespaces_changed.is_empty()
    }
}

/// The binding rules: (description, selector, bind type, bind name).
const RULES: [(&str, &str, &str, &str); 2] = [
    (
        "kraken: a Nomad service's identity registers that service",
        "\"nomad_service\" in value",
        "service",
        "${value.nomad_service}",
    ),
    (
        "kraken: a Nomad task's identity takes its namespace's role",
        "\"nomad_service\" not in value",
        "role",
        "nomad-tasks-${value.nomad_namespace}",
    ),
];

impl Bootstrap<'_> {
    /// The Nomad client with the stored management token.
    pub(crate) async fn nomad_management(&self) -> Result<Nomad, BootstrapError> {
        let management = self
            .store
            .get(names::NOMAD_MANAGEMENT)
            .await?
            .map(|s| Token::new(s.expose()));
        Ok(self
            .nomad
            .as_ref()
            .expect("the Nomad phase is run with a Nomad client")
            .with_token(management))
    }

    /// Brings Consul's side of workload identity to what Nomad has now:
    /// its keys, its namespaces. Idempotent; writes only what differs.
    /// `self.consul` needs `acl:write` (the Nomad servers' token).
    pub async fn workload_identity(&self) -> Result<Workload, BootstrapError> {
        let nomad = self.nomad_management().await?;
        let mut report = Workload::default();
        let keys = nomad.jwks().await.map_err(BootstrapError::nomad(
            "read Nomad's workload identity keys (/.well-known/jwks.json)",
        ))?;
        let mut pems = Vec::new();
        for key in &keys {
            pems.push(jwk_pem(key)?);
            report.keys.push(key.kid.clone());
        }
        if pems.is_empty() {
            return Err(BootstrapError::NoWorkloadKeys);
        }
        // In Nomad's order changes nothing; sorted, a reorder is no change.
        pems.sort();
        report.auth_method_changed = self.auth_method(&self.consul, &pems).await?;
        report.rules_changed = self.binding_rules(&self.consul).await?;
        let namespaces = nomad
            .namespaces()
            .await
            .map_err(BootstrapError::nomad("list Nomad's namespaces"))?;
        for ns in namespaces {
            if self.namespace_role(&self.consul, &ns.name).await? {
                report.namespaces_changed.push(ns.name);
            }
        }
        Ok(report)
    }

    async fn auth_method(&self, consul: &Consul, pems: &[String]) -> Result<bool, BootstrapError> {
        let config = serde_json::json!({
            "JWTValidationPubKeys": pems,
            "JWTSupportedAlgs": ["RS256"],
            "BoundAudiences": [AUDIENCE],
            "ClaimMappings": {
                "nomad_namespace": "nomad_namespace",
                "nomad_job_id": "nomad_job_id",
                "nomad_task": "nomad_task",
                "nomad_service": "nomad_service",
            },
        });
        let existing =
            consul
                .acl_auth_method(AUTH_METHOD)
                .await
                .map_err(BootstrapError::consul(
                    "read the nomad-workloads auth method",
                ))?;
        let same = existing.as_ref().is_some_and(|m| {
            config
                .as_object()
                .expect("an object")
                .iter()
                .all(|(k, v)| m.config.get(k) == Some(v))
        });
        if same {
            return Ok(false);
        }
        consul
            .acl_auth_method_upsert(
                AUTH_METHOD,
                "jwt",
                "kraken: Nomad workload identities (keys kept by the Nomad servers' agent)",
                &config,
                existing.is_some(),
            )
            .await
            .map_err(BootstrapError::consul(
                "write the nomad-workloads auth method",
            ))?;
        log::info!(
            "auth method {AUTH_METHOD}: {} Nomad signing key(s) written",
            pems.len()
        );
        Ok(true)
    }

    /// Creates the missing rules and deletes the method's others: the
    /// method is the agent's, and a rule it did not make could bind
    /// workloads to anything.
    async fn binding_rules(&self, consul: &Consul) -> Result<usize, BootstrapError> {
        let existing =
            consul
                .acl_binding_rules(AUTH_METHOD)
                .await
                .map_err(BootstrapError::consul(
                    "list the nomad-workloads binding rules",
                ))?;
        let mut changed = 0;
        for (description, selector, bind_type, bind_name) in RULES {
            let found = existing.iter().any(|r| {
                r.selector == selector && r.bind_type == bind_type && r.bind_name == bind_name
            });
            if !found {
                consul
                    .acl_binding_rule_create(
                        AUTH_METHOD,
                        description,
                        selector,
                        bind_type,
                        bind_name,
                    )
                    .await
                    .map_err(BootstrapError::consul(
                        "create a nomad-workloads binding rule",
                    ))?;
                changed += 1;
            }
        }
        Ok(changed)
    }

    /// The namespace's policy (this agent's rules) and role. Returns
    /// whether either was created or changed.
    async fn namespace_role(
        &self,
        consul: &Consul,
        namespace: &str,
    ) -> Result<bool, BootstrapError> {
        let name = format!("{TASKS_PREFIX}{namespace}");
        let rules = TASKS_POLICY.replace("@NAMESPACE@", namespace);
        let description = format!("Tasks of Nomad namespace {namespace}");
        let mut changed =
            crate::policies::ensure_one(consul, consul, &name, &description, &rules).await?;
        let role = consul
            .acl_role_by_name(&name)
            .await
            .map_err(BootstrapError::consul("read a Nomad namespace's role"))?;
        let linked = role.as_ref().is_some_and(|r| {
            r.policies
                .as_deref()
                .unwrap_or_default()
                .iter()
                .map(|p| p.name.as_str())
                .eq([name.as_str()])
        });
        if !linked {
            consul
                .acl_role_upsert(role.as_ref(), &name, &description, &[&name])
                .await
                .map_err(BootstrapError::consul("write a Nomad namespace's role"))?;
            log::info!("Consul role {name}: made for Nomad namespace {namespace}");
            changed = true;
        }
        Ok(changed)
    }
}

/// A JWK (RSA) as the PEM public key Consul's `JWTValidationPubKeys` takes:
/// a SubjectPublicKeyInfo, DER, base64.
pub fn jwk_pem(key: &Jwk) -> Result<String, BootstrapError> {
    let bad = |detail: &str| BootstrapError::BadWorkloadKey {
        kid: key.kid.clone(),
        detail: detail.to_owned(),
    };
    if key.kty != "RSA" {
        return Err(bad(&format!("key type {} (expected RSA)", key.kty)));
    }
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let n = b64
        .decode(key.n.trim_end_matches('='))
        .map_err(|e| bad(&e.to_string()))?;
    let e = b64
        .decode(key.e.trim_end_matches('='))
        .map_err(|e| bad(&e.to_string()))?;
    if n.is_empty() || e.is_empty() {
        return Err(bad("empty modulus or exponent"));
    }
    let rsa = der(0x30, &[der_uint(&n), der_uint(&e)].concat());
    // rsaEncryption (1.2.840.113549.1.1.1), NULL parameters.
    let algorithm = der(
        0x30,
        &[
            &[
                0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01,
            ][..],
            &[0x05, 0x00],
        ]
        .concat(),
    );
    let bits = der(0x03, &[&[0u8][..], &rsa].concat());
    let spki = der(0x30, &[algorithm, bits].concat());
    let body = base64::engine::general_purpose::STANDARD.encode(spki);
    let mut pem = String::from("-----BEGIN PUBLIC KEY-----\n");
    for line in body.as_bytes().chunks(64) {
        pem.push_str(std::str::from_utf8(line).expect("base64 is ASCII"));
        pem.push('\n');
    }
    pem.push_str("-----END PUBLIC KEY-----\n");
    Ok(pem)
}

fn der(tag: u8, content: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    let len = content.len();
    if len < 0x80 {
        out.push(len as u8);
    } else {
        let bytes: Vec<u8> = len
            .to_be_bytes()
            .into_iter()
            .skip_while(|b| *b == 0)
            .collect();
        out.push(0x80 | bytes.len() as u8);
        out.extend(bytes);
    }
    out.extend_from_slice(content);
    out
}

/// An unsigned big-endian integer as a DER INTEGER (a leading zero when its
/// high bit is set, none otherwise).
fn der_uint(bytes: &[u8]) -> Vec<u8> {
    let trimmed: &[u8] = match bytes.iter().position(|b| *b != 0) {
        Some(i) => &bytes[i..],
        None => &[0],
    };
    let mut content = Vec::with_capacity(trimmed.len() + 1);
    if trimmed[0] & 0x80 != 0 {
        content.push(0);
    }
    content.extend_from_slice(trimmed);
    der(0x02, &content)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_jwk_is_the_pem_openssl_writes_for_the_same_key() {
        // `openssl rsa -pubout` of a 1024-bit key, and its JWK.
        let jwk = Jwk {
            kid: "k".into(),
            kty: "RSA".into(),
            alg: "RS256".into(),
            n: "usEj5xs8dR1oCTAB7VqR35XXlHp3ZrcBzRlwP5bsfMikGeSFeBpec0BP6zmscf9SYYHALHd4fPcr_nrRfeTte\
                B7WwiTZtu1dEamxHrD9cqHpvdwTR3Xr_3js6TTG70GlGJvhIAwG0Dg3-mRmv-cAn9dnqLRnoNfV_haatdzLDa8"
                .into(),
            e: "AQAB".into(),
        };
        assert_eq!(
            jwk_pem(&jwk).unwrap(),
            "-----BEGIN PUBLIC KEY-----\n\
             MIGfMA0GCSqGSIb3DQEBAQUAA4GNADCBiQKBgQC6wSPnGzx1HWgJMAHtWpHfldeU\n\
             endmtwHNGXA/lux8yKQZ5IV4Gl5zQE/rOaxx/1JhgcAsd3h89yv+etF95O14HtbC\n\
             JNm27V0RqbEesP1yoem93BNHdev/eOzpNMbvQaUYm+EgDAbQODf6ZGa/5wCf12eo\n\
             tGeg19X+Fpq13MsNrwIDAQAB\n\
             -----END PUBLIC KEY-----\n"
        );
    }

    #[test]
    fn keys_consul_cannot_take_are_named() {
        let ec = Jwk {
            kid: "ec-1".into(),
            kty: "EC".into(),
            alg: "ES256".into(),
            n: String::new(),
            e: String::new(),
        };
        let err = jwk_pem(&ec).unwrap_err().to_string();
        assert!(err.contains("ec-1") && err.contains("EC"), "{err}");
    }
}
