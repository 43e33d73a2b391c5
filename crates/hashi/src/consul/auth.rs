//! Consul's auth methods, binding rules and roles: what Nomad's workload
//! identities log in with (`nomad setup consul` makes the same).

use serde::Deserialize;

use super::Consul;
use crate::http::HashiError;

/// An auth method as Consul returns it (its `Config` kept as JSON).
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct AuthMethod {
    #[serde(rename = "Name")]
    pub name: String,
    #[serde(rename = "Type")]
    pub kind: String,
    #[serde(rename = "Config", default)]
    pub config: serde_json::Value,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct BindingRule {
    #[serde(rename = "ID")]
    pub id: String,
    #[serde(rename = "Selector", default)]
    pub selector: String,
    #[serde(rename = "BindType")]
    pub bind_type: String,
    #[serde(rename = "BindName")]
    pub bind_name: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct AclRole {
    #[serde(rename = "ID")]
    pub id: String,
    #[serde(rename = "Name")]
    pub name: String,
    #[serde(rename = "Policies", default)]
    pub policies: Option<Vec<super::acl::PolicyLink>>,
}

/// Consul answers a missing ACL object with 404, older versions with 403
/// "not found".
fn missing(e: &HashiError) -> bool {
    match e {
        HashiError::Status { status: 404, .. } => true,
        HashiError::Status {
            status: 403, body, ..
        } => body.contains("not found"),
        _ => false,
    }
}

impl Consul {
    pub async fn acl_auth_method(&self, name: &str) -> Result<Option<AuthMethod>, HashiError> {
        match self
            .http
            .get_json(&format!("/v1/acl/auth-method/{name}"))
            .await
        {
            Ok(m) => Ok(Some(m)),
            Err(e) if missing(&e) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Creates the auth method `name`, or replaces its description and
    /// config (`acl:write`). Its tokens are local and never expire: Nomad
    /// cannot renew a workload's Consul token (Nomad's docs).
    pub async fn acl_auth_method_upsert(
        &self,
        name: &str,
        kind: &str,
        description: &str,
        config: &serde_json::Value,
        exists: bool,
    ) -> Result<AuthMethod, HashiError> {
        let body = serde_json::json!({
            "Name": name,
            "Type": kind,
            "Description": description,
            "TokenLocality": "local",
            "Config": config,
        });
        let path = if exists {
            format!("/v1/acl/auth-method/{name}")
        } else {
            "/v1/acl/auth-method".to_owned()
        };
        self.http.put_json(&path, &body).await
    }

    pub async fn acl_binding_rules(&self, method: &str) -> Result<Vec<BindingRule>, HashiError> {
        self.http
            .get_json(&format!("/v1/acl/binding-rules?authmethod={method}"))
            .await
    }

    pub async fn acl_binding_rule_create(
        &self,
        method: &str,
        description: &str,
        selector: &str,
        bind_type: &str,
        bind_name: &str,
    ) -> Result<BindingRule, HashiError> {
        let body = serde_json::json!({
            "AuthMethod": method,
            "Description": description,
            "Selector": selector,
            "BindType": bind_type,
            "BindName": bind_name,
        });
        self.http.put_json("/v1/acl/binding-rule", &body).await
    }

    pub async fn acl_role_by_name(&self, name: &str) -> Result<Option<AclRole>, HashiError> {
        match self
            .http
            .get_json::<Option<AclRole>>(&format!("/v1/acl/role/name/{name}"))
            .await
        {
            Ok(r) => Ok(r),
            Err(e) if missing(&e) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Creates the role `name` with `policies`, or gives an existing one
    /// exactly those (`acl:write`).
    pub async fn acl_role_upsert(
        &self,
        existing: Option<&AclRole>,
        name: &str,
        description: &str,
        policies: &[&str],
    ) -> Result<AclRole, HashiError> {
        let body = serde_json::json!({
            "Name": name,
            "Description": description,
            "Policies": policies.iter().map(|p| serde_json::json!({ "Name": p })).collect::<Vec<_>>(),
        });
        let path = match existing {
            Some(r) => format!("/v1/acl/role/{}", r.id),
            None => "/v1/acl/role".to_owned(),
        };
        self.http.put_json(&path, &body).await
    }
}
