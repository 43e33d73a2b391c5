//! Nomad's ACL API: the one-time bootstrap, and the agent's own narrow
//! policy and token.

use reqwest::Method;
use serde::Deserialize;

use super::Nomad;
use crate::http::{DEFAULT_TIMEOUT, HashiError, Token};

/// What a Nomad ACL bootstrap attempt found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NomadBootstrap {
    /// This call bootstrapped the cluster with the given secret.
    Done,
    /// The cluster was bootstrapped before (by us earlier, or by a person).
    AlreadyDone,
}

impl Nomad {
    /// `PUT /v1/acl/bootstrap` with a caller-chosen management secret, so
    /// the secret can be stored before the cluster knows it.
    pub async fn acl_bootstrap(&self, secret: &Token) -> Result<NomadBootstrap, HashiError> {
        let body = serde_json::json!({ "BootstrapSecret": secret.expose() });
        match self
            .http
            .send(
                Method::PUT,
                "/v1/acl/bootstrap",
                Some(body.to_string().into_bytes()),
                DEFAULT_TIMEOUT,
            )
            .await
        {
            Ok(_) => Ok(NomadBootstrap::Done),
            Err(HashiError::Status {
                status: 400, body, ..
            }) if body.contains("bootstrap already done") => Ok(NomadBootstrap::AlreadyDone),
            Err(e) => Err(e),
        }
    }

    /// Whether this client's token authenticates (`None`: Nomad does not
    /// know it).
    pub async fn acl_token_self(&self) -> Result<Option<serde_json::Value>, HashiError> {
        match self.http.get_json("/v1/acl/token/self").await {
            Ok(t) => Ok(Some(t)),
            Err(HashiError::Status {
                status: 403 | 404, ..
            }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    pub fn with_token(&self, token: Option<Token>) -> Nomad {
        Nomad {
            http: self.http.clone().with_token(token),
        }
    }
}

/// A Nomad ACL token, with its secret: only the management token may read
/// one, and the agent reads only the tokens it made.
#[derive(Clone, Deserialize)]
pub struct NomadToken {
    #[serde(rename = "AccessorID")]
    pub accessor_id: String,
    #[serde(rename = "SecretID", default)]
    secret_id: String,
    #[serde(rename = "Name", default)]
    pub name: String,
}

impl NomadToken {
    pub fn secret(&self) -> Token {
        Token::new(self.secret_id.clone())
    }
}

impl std::fmt::Debug for NomadToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NomadToken")
            .field("accessor_id", &self.accessor_id)
            .field("name", &self.name)
            .finish()
    }
}

impl Nomad {
    /// Creates or replaces a policy (`management`).
    pub async fn acl_policy_upsert(
        &self,
        name: &str,
        description: &str,
        rules: &str,
    ) -> Result<(), HashiError> {
        let body = serde_json::json!({ "Name": name, "Description": description, "Rules": rules });
        self.http
            .send(
                Method::POST,
                &format!("/v1/acl/policy/{name}"),
                Some(body.to_string().into_bytes()),
                DEFAULT_TIMEOUT,
            )
            .await?;
        Ok(())
    }

    /// The client token named `name`, with its secret, if one exists
    /// (`management`). Nomad chooses secrets itself, so a name is how the
    /// agent finds the token it made before.
    pub async fn acl_token_named(&self, name: &str) -> Result<Option<NomadToken>, HashiError> {
        let stubs: Vec<NomadToken> = self.http.get_json("/v1/acl/tokens").await?;
        match stubs.into_iter().find(|t| t.name == name) {
            Some(stub) => Ok(Some(
                self.http
                    .get_json(&format!("/v1/acl/token/{}", stub.accessor_id))
                    .await?,
            )),
            None => Ok(None),
        }
    }

    /// Deletes a token (`management`).
    pub async fn acl_token_delete(&self, accessor_id: &str) -> Result<(), HashiError> {
        self.http
            .send(
                Method::DELETE,
                &format!("/v1/acl/token/{accessor_id}"),
                None,
                DEFAULT_TIMEOUT,
            )
            .await?;
        Ok(())
    }

    /// Creates a client token with `policies` (`management`).
    pub async fn acl_token_create(
        &self,
        name: &str,
        policies: &[&str],
    ) -> Result<NomadToken, HashiError> {
        let body = serde_json::json!({ "Name": name, "Type": "client", "Policies": policies });
        self.http.put_json("/v1/acl/token", &body).await
    }
}
