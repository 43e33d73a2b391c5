//! Nomad's namespaces and the public keys its workload identities are
//! signed with.

use reqwest::Method;
use serde::Deserialize;

use super::Nomad;
use crate::http::{DEFAULT_TIMEOUT, HashiError};

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct NomadNamespace {
    #[serde(rename = "Name")]
    pub name: String,
    #[serde(rename = "Description", default)]
    pub description: String,
}

/// One key of Nomad's JSON Web Key Set.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Jwk {
    pub kid: String,
    pub kty: String,
    #[serde(default)]
    pub alg: String,
    /// RSA modulus and exponent, base64url without padding.
    #[serde(default)]
    pub n: String,
    #[serde(default)]
    pub e: String,
}

#[derive(Debug, Deserialize)]
struct Jwks {
    keys: Vec<Jwk>,
}

impl Nomad {
    /// The namespaces this token may see (all of them for `management`).
    pub async fn namespaces(&self) -> Result<Vec<NomadNamespace>, HashiError> {
        self.http.get_json("/v1/namespaces").await
    }

    /// Creates or updates a namespace's description (`management`).
    pub async fn namespace_upsert(&self, name: &str, description: &str) -> Result<(), HashiError> {
        let body = serde_json::json!({ "Name": name, "Description": description });
        self.http
            .send(
                Method::POST,
                &format!("/v1/namespace/{name}"),
                Some(body.to_string().into_bytes()),
                DEFAULT_TIMEOUT,
            )
            .await?;
        Ok(())
    }

    /// The keys workload identities are signed with, prepublished ones
    /// included (`/.well-known/jwks.json`; no token, the client's TLS
    /// certificate where Nomad verifies callers).
    pub async fn jwks(&self) -> Result<Vec<Jwk>, HashiError> {
        let set: Jwks = self.http.get_json("/.well-known/jwks.json").await?;
        Ok(set.keys)
    }
}
