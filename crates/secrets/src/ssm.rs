//! The SSM Parameter Store backend.

use std::time::Duration;

use aws_config::SdkConfig;
use aws_sdk_ssm::config::http::HttpResponse;
use aws_sdk_ssm::error::SdkError;
use aws_sdk_ssm::operation::put_parameter::PutParameterError;
use aws_sdk_ssm::types::{ParameterTier, ParameterType};
use kraken_aws::{ApiCalls, Failure};

use crate::error::SecretError;
use crate::secret::{REDACTED, Secret};
use crate::secret_store::{Created, SecretStore};
use crate::validate::{validate_cluster, validate_name};

/// An SSM client whose every HTTP attempt is counted in `calls`, configured
/// like every other AWS client of the agent (standard environment, retries).
pub fn ssm_client(sdk: &SdkConfig, calls: &ApiCalls) -> aws_sdk_ssm::Client {
    let config = aws_sdk_ssm::config::Builder::from(sdk)
        .interceptor(calls.clone())
        .build();
    aws_sdk_ssm::Client::from_conf(config)
}

/// Secrets as `SecureString` parameters named `/<prefix>/<cluster>/<name>`.
#[derive(Debug, Clone)]
pub struct SsmStore {
    client: aws_sdk_ssm::Client,
    /// `/<prefix>/<cluster>`
    base: String,
    cluster: String,
    kms_key_id: Option<String>,
}

// Concurrent writers of one parameter can be answered TooManyUpdates, which
// the SDK does not retry; and a parameter reported to exist can be deleted
// before it is read back. Both settle quickly.
const RACE_ATTEMPTS: u32 = 6;

/// The most names one `GetParameters` call takes (an SSM limit); each call
/// is one transaction against the account's throughput, whatever it holds.
pub const BATCH: usize = 10;

impl SsmStore {
    /// `kms_key_id` (an id, ARN or `alias/...`) encrypts what this store
    /// creates; `None` is the account's `aws/ssm` key.
    pub fn new(
        client: aws_sdk_ssm::Client,
        prefix: &str,
        cluster: &str,
        kms_key_id: Option<String>,
    ) -> Result<SsmStore, SecretError> {
        kraken_settings::validate_ssm_prefix(prefix)?;
        validate_cluster(cluster)?;
        Ok(SsmStore {
            client,
            base: format!("/{prefix}/{cluster}"),
            cluster: cluster.to_owned(),
            kms_key_id,
        })
    }

    /// The full parameter name of `name`.
    pub fn parameter_name(&self, name: &str) -> Result<String, SecretError> {
        validate_name(name)?;
        Ok(format!("{}/{name}", self.base))
    }

    async fn read(&self, name: &str, parameter: &str) -> Result<Option<Secret>, SecretError> {
        let out = match self
            .client
            .get_parameter()
            .name(parameter)
            .with_decryption(true)
            .send()
            .await
        {
            Ok(out) => out,
            Err(e)
                if e.as_service_error()
                    .is_some_and(|s| s.is_parameter_not_found()) =>
            {
                return Ok(None);
            }
            Err(e) => return Err(self.error(name, parameter, "ssm:GetParameter", &e, None)),
        };
        let Some(p) = out.parameter() else {
            return Err(corrupt(
                name,
                parameter,
                "SSM answered without the parameter",
            ));
        };
        usable(name, parameter, p).map(Some)
    }

    /// One `GetParameters` transaction for up to [`BATCH`] names: the
    /// values found, `None` for the ones SSM lists as invalid (missing).
    async fn read_batch(&self, names: &[&str]) -> Result<Vec<Option<Secret>>, SecretError> {
        let parameters = names
            .iter()
            .map(|n| self.parameter_name(n))
            .collect::<Result<Vec<_>, _>>()?;
        let out = self
            .client
            .get_parameters()
            .set_names(Some(parameters.clone()))
            .with_decryption(true)
            .send()
            .await
            .map_err(|e| {
                // Every name of the batch, so that a denial names each
                // parameter the role must be granted.
                self.error(
                    &names.join(", "),
                    &parameters.join(", "),
                    "ssm:GetParameters",
                    &e,
                    None,
                )
            })?;
        let found: std::collections::HashMap<&str, &aws_sdk_ssm::types::Parameter> = out
            .parameters()
            .iter()
            .filter_map(|p| Some((p.name()?, p)))
            .collect();
        names
            .iter()
            .zip(&parameters)
            .map(|(name, parameter)| match found.get(parameter.as_str()) {
                Some(p) => usable(name, parameter, p).map(Some),
                // Listed in InvalidParameters: it does not exist (yet).
                None => Ok(None),
            })
            .collect()
    }

    async fn send_put(
        &self,
        parameter: &str,
        value: &Secret,
        overwrite: bool,
    ) -> Result<(), SdkError<PutParameterError>> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            let result = self
                .client
                .put_parameter()
                .name(parameter)
                .value(value.expose())
                .r#type(ParameterType::SecureString)
                .tier(ParameterTier::Standard)
                .overwrite(overwrite)
                .set_key_id(self.kms_key_id.clone())
                .description(format!(
                    "kraken-agent secret of cluster {}; see docs/secrets.md",
                    self.cluster
                ))
                .send()
                .await;
            match result {
                Err(e)
                    if attempt < RACE_ATTEMPTS
                        && e.as_service_error()
                            .is_some_and(|s| s.is_too_many_updates()) =>
                {
                    pause(attempt).await;
                }
                other => return other.map(drop),
            }
        }
    }

    fn error<E>(
        &self,
        name: &str,
        parameter: &str,
        action: &'static str,
        err: &SdkError<E, HttpResponse>,
        value: Option<&Secret>,
    ) -> SecretError
    where
        E: aws_sdk_ssm::error::ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    {
        let failure = match Failure::classify(err) {
            Failure::Rejected { code, .. } if code == "TooManyUpdates" => {
                Failure::Throttled { code }
            }
            Failure::Transient { .. } if forbidden(err) => forbidden_failure(err),
            f => f,
        };
        SecretError::Ssm {
            name: name.to_owned(),
            parameter: parameter.to_owned(),
            action,
            failure: Box::new(match value {
                Some(v) => scrub(failure, v),
                None => failure,
            }),
            kms_key_id: self.kms_key_id.clone(),
        }
    }
}

impl SecretStore for SsmStore {
    async fn get(&self, name: &str) -> Result<Option<Secret>, SecretError> {
        let parameter = self.parameter_name(name)?;
        self.read(name, &parameter).await
    }

    async fn get_many(&self, names: &[&str]) -> Result<Vec<Option<Secret>>, SecretError> {
        let mut values = Vec::with_capacity(names.len());
        for chunk in names.chunks(BATCH) {
            values.extend(self.read_batch(chunk).await?);
        }
        Ok(values)
    }

    async fn create(&self, name: &str, value: &Secret) -> Result<Created, SecretError> {
        let parameter = self.parameter_name(name)?;
        non_empty(name, value)?;
        for attempt in 1..=RACE_ATTEMPTS {
            match self.send_put(&parameter, value, false).await {
                Ok(()) => return Ok(Created::Won),
                Err(e)
                    if e.as_service_error()
                        .is_some_and(|s| s.is_parameter_already_exists()) =>
                {
                    if let Some(winner) = self.read(name, &parameter).await? {
                        return Ok(Created::Lost(winner));
                    }
                    // Deleted between the two calls: the race is open again.
                    pause(attempt).await;
                }
                Err(e) => {
                    return Err(self.error(name, &parameter, "ssm:PutParameter", &e, Some(value)));
                }
            }
        }
        Err(SecretError::Vanished {
            name: name.to_owned(),
            location: format!("SSM parameter {parameter}"),
            attempts: RACE_ATTEMPTS,
        })
    }

    async fn put(&self, name: &str, value: &Secret) -> Result<(), SecretError> {
        let parameter = self.parameter_name(name)?;
        non_empty(name, value)?;
        self.send_put(&parameter, value, true)
            .await
            .map_err(|e| self.error(name, &parameter, "ssm:PutParameter", &e, Some(value)))
    }

    async fn delete(&self, name: &str) -> Result<(), SecretError> {
        let parameter = self.parameter_name(name)?;
        match self.client.delete_parameter().name(&parameter).send().await {
            Ok(_) => Ok(()),
            Err(e)
                if e.as_service_error()
                    .is_some_and(|s| s.is_parameter_not_found()) =>
            {
                Ok(())
            }
            Err(e) => Err(self.error(name, &parameter, "ssm:DeleteParameter", &e, None)),
        }
    }
}

// A 403 whose body is not SSM's JSON (moto answers XML; a proxy may answer
// HTML) is still a refusal: retrying cannot help, a grant can.
fn forbidden<E>(err: &SdkError<E, HttpResponse>) -> bool {
    err.raw_response()
        .is_some_and(|r| r.status().as_u16() == 403)
}

fn forbidden_failure<E>(err: &SdkError<E, HttpResponse>) -> Failure {
    let body = err
        .raw_response()
        .and_then(|r| r.body().bytes())
        .map(String::from_utf8_lossy)
        .unwrap_or_default();
    let element = |tag: &str| {
        let start = body.find(&format!("<{tag}>"))? + tag.len() + 2;
        let end = body[start..].find(&format!("</{tag}>"))? + start;
        Some(body[start..end].to_owned())
    };
    Failure::AccessDenied {
        code: element("Code").unwrap_or_else(|| "HTTP 403".to_owned()),
        message: element("Message").unwrap_or_default(),
    }
}

/// The value of a parameter SSM returned, checked the same way for single
/// and batched reads.
fn usable(
    name: &str,
    parameter: &str,
    p: &aws_sdk_ssm::types::Parameter,
) -> Result<Secret, SecretError> {
    if p.r#type() != Some(&ParameterType::SecureString) {
        // Readable, so usable; but stored in plain text, which someone
        // should fix by recreating it as a SecureString.
        log::warn!(
            "secret {name}: SSM parameter {parameter} is not a SecureString; recreate it \
             with type SecureString"
        );
    }
    match p.value() {
        Some(v) if !v.is_empty() => Ok(Secret::new(v)),
        _ => Err(corrupt(name, parameter, "the parameter has no value")),
    }
}

fn non_empty(name: &str, value: &Secret) -> Result<(), SecretError> {
    if value.expose().is_empty() {
        return Err(SecretError::EmptyValue {
            name: name.to_owned(),
        });
    }
    Ok(())
}

fn corrupt(name: &str, parameter: &str, reason: &'static str) -> SecretError {
    SecretError::Corrupt {
        name: name.to_owned(),
        location: format!("SSM parameter {parameter}"),
        reason,
    }
}

// A service's error message may quote the request (validation errors do);
// the value must not reach a log through it.
fn scrub(failure: Failure, value: &Secret) -> Failure {
    let v = value.expose();
    let clean = |s: String| {
        if v.is_empty() {
            s
        } else {
            s.replace(v, REDACTED)
        }
    };
    match failure {
        Failure::AccessDenied { code, message } => Failure::AccessDenied {
            code: clean(code),
            message: clean(message),
        },
        Failure::Credentials { detail } => Failure::Credentials {
            detail: clean(detail),
        },
        Failure::Throttled { code } => Failure::Throttled { code: clean(code) },
        Failure::Transient { detail } => Failure::Transient {
            detail: clean(detail),
        },
        Failure::Rejected { code, message } => Failure::Rejected {
            code: clean(code),
            message: clean(message),
        },
    }
}

// Jittered, so that racing nodes do not retry in lockstep.
async fn pause(attempt: u32) {
    let base = 50u64 << attempt.min(5);
    let jitter = u64::from(getrandom::u32().unwrap_or(0)) % base;
    tokio::time::sleep(Duration::from_millis(base + jitter)).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scrub_removes_the_value_wherever_it_is_quoted() {
        let v = Secret::new("s3cr3t-value");
        let f = scrub(
            Failure::Rejected {
                code: "ValidationException".into(),
                message: "Value 's3cr3t-value' at 'value' failed".into(),
            },
            &v,
        );
        assert_eq!(
            f,
            Failure::Rejected {
                code: "ValidationException".into(),
                message: "Value '<redacted>' at 'value' failed".into(),
            }
        );
    }
}
