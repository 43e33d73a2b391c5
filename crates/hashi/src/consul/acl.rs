//! Consul's ACL API: policies and tokens, as the bootstrap and its upkeep
//! use them.

use reqwest::Method;
use serde::Deserialize;

use super::Consul;
use crate::http::{DEFAULT_TIMEOUT, HashiError, Token};

/// A Consul ACL token as the API returns it (SecretID omitted: the agent
/// knows the secrets it cares about and never reads others).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct AclToken {
    #[serde(rename = "AccessorID")]
    pub accessor_id: String,
    #[serde(rename = "Description", default)]
    pub description: String,
    #[serde(rename = "Policies", default)]
    pub policies: Vec<PolicyLink>,
    /// RFC 3339, when the token expires; `None` for tokens that do not.
    #[serde(rename = "ExpirationTime", default)]
    pub expiration_time: Option<String>,
    /// The nodes this token may act as (Consul's node identities): a node
    /// agent token has exactly its own.
    #[serde(rename = "NodeIdentities", default, deserialize_with = "null_as_empty")]
    pub node_identities: Vec<NodeIdentity>,
}

/// A node identity: `node "<name>" write` and `service_prefix "" read`,
/// in one datacenter.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, serde::Serialize)]
pub struct NodeIdentity {
    #[serde(rename = "NodeName")]
    pub node_name: String,
    #[serde(rename = "Datacenter")]
    pub datacenter: String,
}

/// Consul writes an empty list as `null` in some answers.
fn null_as_empty<'de, D, T>(d: D) -> Result<Vec<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    Ok(Option::<Vec<T>>::deserialize(d)?.unwrap_or_default())
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize, serde::Serialize)]
pub struct PolicyLink {
    #[serde(rename = "ID", default, skip_serializing_if = "String::is_empty")]
    pub id: String,
    #[serde(rename = "Name")]
    pub name: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct AclPolicy {
    #[serde(rename = "ID")]
    pub id: String,
    #[serde(rename = "Name")]
    pub name: String,
    #[serde(rename = "Description", default)]
    pub description: String,
    #[serde(rename = "Rules", default)]
    pub rules: String,
}

/// The accessor of Consul's built-in anonymous token.
pub const ANONYMOUS_TOKEN_ACCESSOR: &str = "00000000-0000-0000-0000-000000000002";

impl Consul {
    /// Reads a policy by name; `None` when there is none.
    pub async fn acl_policy_by_name(&self, name: &str) -> Result<Option<AclPolicy>, HashiError> {
        match self
            .http
            .get_json(&format!("/v1/acl/policy/name/{name}"))
            .await
        {
            Ok(p) => Ok(Some(p)),
            // Consul answers a missing policy with 404, older versions 403.
            Err(HashiError::Status { status: 404, .. }) => Ok(None),
            Err(HashiError::Status {
                status: 403, body, ..
            }) if body.contains("not found") => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Creates a policy, or returns the existing one of that name. The
    /// rules of an existing policy are not changed.
    pub async fn acl_policy_ensure(
        &self,
        name: &str,
        description: &str,
        rules: &str,
    ) -> Result<AclPolicy, HashiError> {
        if let Some(p) = self.acl_policy_by_name(name).await? {
            return Ok(p);
        }
        let body = serde_json::json!({ "Name": name, "Description": description, "Rules": rules });
        let path = "/v1/acl/policy";
        match self.http.put_json(path, &body).await {
            Ok(policy) => Ok(policy),
            // Someone else created it between our read and our write.
            Err(HashiError::Status { body, .. }) if body.contains("already exists") => self
                .acl_policy_by_name(name)
                .await?
                .ok_or_else(|| HashiError::Decode {
                    service: "Consul",
                    url: path.into(),
                    detail: format!("policy {name} exists but cannot be read"),
                }),
            Err(e) => Err(e),
        }
    }

    /// Replaces a policy's description and rules (`acl:write`).
    pub async fn acl_policy_update(
        &self,
        id: &str,
        name: &str,
        description: &str,
        rules: &str,
    ) -> Result<AclPolicy, HashiError> {
        let body = serde_json::json!({ "Name": name, "Description": description, "Rules": rules });
        self.http
            .put_json(&format!("/v1/acl/policy/{id}"), &body)
            .await
    }

    pub async fn acl_policies(&self) -> Result<Vec<AclPolicy>, HashiError> {
        self.http.get_json("/v1/acl/policies").await
    }

    pub async fn acl_tokens(&self) -> Result<Vec<AclToken>, HashiError> {
        self.http.get_json("/v1/acl/tokens").await
    }

    /// Creates a token with a SecretID chosen by the caller, so the secret
    /// can be stored before the token exists. Returns `None` when that
    /// SecretID is already in use (a previous attempt created it).
    pub async fn acl_token_create(
        &self,
        secret_id: &Token,
        description: &str,
        policies: &[&str],
    ) -> Result<Option<AclToken>, HashiError> {
        self.acl_token_create_with(secret_id, description, policies, None)
            .await
    }

    /// [`Consul::acl_token_create`] for a node's own agent token: the
    /// node identity of `node` in its datacenter, and `policies`.
    pub async fn acl_token_create_for_node(
        &self,
        secret_id: &Token,
        description: &str,
        policies: &[&str],
        node: &NodeIdentity,
    ) -> Result<Option<AclToken>, HashiError> {
        self.acl_token_create_with(secret_id, description, policies, Some(node))
            .await
    }

    async fn acl_token_create_with(
        &self,
        secret_id: &Token,
        description: &str,
        policies: &[&str],
        node: Option<&NodeIdentity>,
    ) -> Result<Option<AclToken>, HashiError> {
        let mut body = serde_json::json!({
            "SecretID": secret_id.expose(),
            "Description": description,
            "Policies": policies.iter().map(|p| serde_json::json!({ "Name": p })).collect::<Vec<_>>(),
        });
        if let Some(node) = node {
            body["NodeIdentities"] = serde_json::json!([node]);
        }
        match self.http.put_json("/v1/acl/token", &body).await {
            Ok(token) => Ok(Some(token)),
            Err(HashiError::Status { body, .. })
                if body.contains("already in use") || body.contains("already exists") =>
            {
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    /// Replaces a token's policies (keeping its description).
    pub async fn acl_token_set_policies(
        &self,
        accessor_id: &str,
        description: &str,
        policies: &[&str],
    ) -> Result<AclToken, HashiError> {
        let body = serde_json::json!({
            "Description": description,
            "Policies": policies.iter().map(|p| serde_json::json!({ "Name": p })).collect::<Vec<_>>(),
        });
        self.http
            .put_json(&format!("/v1/acl/token/{accessor_id}"), &body)
            .await
    }

    /// Deletes a token; one that is already gone is not an error.
    pub async fn acl_token_delete(&self, accessor_id: &str) -> Result<(), HashiError> {
        match self
            .http
            .send(
                Method::DELETE,
                &format!("/v1/acl/token/{accessor_id}"),
                None,
                DEFAULT_TIMEOUT,
            )
            .await
        {
            Ok(_) => Ok(()),
            Err(e) if e.status() == Some(404) => Ok(()),
            Err(HashiError::Status { body, .. }) if body.contains("not found") => Ok(()),
            Err(e) => Err(e),
        }
    }

    pub async fn acl_token_read(&self, accessor_id: &str) -> Result<AclToken, HashiError> {
        self.http
            .get_json(&format!("/v1/acl/token/{accessor_id}"))
            .await
    }

    /// The token this client authenticates with; `None` when Consul does
    /// not know it (deleted, never created, or expired).
    pub async fn acl_token_self(&self) -> Result<Option<AclToken>, HashiError> {
        match self.http.get_json("/v1/acl/token/self").await {
            Ok(t) => Ok(Some(t)),
            Err(HashiError::Status {
                status: 403, body, ..
            }) if body.contains("ACL not found") || body.contains("token not found") => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// A client for the same agent that authenticates with `token`.
    pub fn with_token(&self, token: Option<Token>) -> Consul {
        Consul {
            http: self.http.clone().with_token(token),
        }
    }
}
