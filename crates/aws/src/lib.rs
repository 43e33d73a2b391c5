//! The one way the agent reaches AWS APIs.
//!
//! Everything honours the SDK's standard environment (`AWS_REGION`,
//! `AWS_ENDPOINT_URL`, `AWS_ENDPOINT_URL_EC2`, the credential chain): that is
//! how tests point the agent at moto and how users point it anywhere else.
//! Retries are the SDK's own standard mode (jittered exponential backoff on
//! throttling, 5xx and timeouts), capped by [`AwsSettings`]; every HTTP
//! attempt is counted so the API cost of a boot can be reported.

mod lifecycle;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::error::Error as StdError;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use aws_config::meta::region::RegionProviderChain;
use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_config::{BehaviorVersion, Region, SdkConfig};
use aws_sdk_ec2::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_smithy_runtime_api::box_error::BoxError;
use aws_smithy_runtime_api::client::interceptors::Intercept;
use aws_smithy_runtime_api::client::interceptors::context::{
    BeforeTransmitInterceptorContextRef, FinalizerInterceptorContextRef,
};
use aws_smithy_runtime_api::client::orchestrator::Metadata;
use aws_smithy_runtime_api::client::runtime_components::RuntimeComponents;
use aws_smithy_types::config_bag::ConfigBag;

pub use lifecycle::{HookAnswer, HookResult, LifecycleHooks};

/// Retry and timeout limits for AWS API calls.
#[derive(Debug, Clone, PartialEq)]
pub struct AwsSettings {
    /// Attempts per call, the first included.
    pub max_attempts: u32,
    pub initial_backoff: Duration,
    /// Cap on one backoff sleep.
    pub max_backoff: Duration,
    pub attempt_timeout: Duration,
}

impl Default for AwsSettings {
    fn default() -> Self {
        AwsSettings {
            max_attempts: 6,
            initial_backoff: Duration::from_millis(200),
            max_backoff: Duration::from_secs(20),
            attempt_timeout: Duration::from_secs(10),
        }
    }
}

/// SDK configuration from the standard environment. The region is
/// `AWS_REGION`/`AWS_DEFAULT_REGION` when set, otherwise the instance's own
/// (`region_hint`, read from IMDS).
pub async fn sdk_config(region_hint: &str, settings: &AwsSettings) -> SdkConfig {
    let region = RegionProviderChain::first_try(
        aws_config::environment::region::EnvironmentVariableRegionProvider::new(),
    )
    .or_else(Region::new(region_hint.to_owned()));
    aws_config::defaults(BehaviorVersion::latest())
        .region(region)
        .retry_config(
            RetryConfig::standard()
                .with_max_attempts(settings.max_attempts.max(1))
                .with_initial_backoff(settings.initial_backoff)
                .with_max_backoff(settings.max_backoff),
        )
        .timeout_config(
            TimeoutConfig::builder()
                .operation_attempt_timeout(settings.attempt_timeout)
                .build(),
        )
        .load()
        .await
}

/// An EC2 client whose every HTTP attempt is counted in `calls`.
pub fn ec2_client(sdk: &SdkConfig, calls: &ApiCalls) -> aws_sdk_ec2::Client {
    let config = aws_sdk_ec2::config::Builder::from(sdk)
        .interceptor(calls.clone())
        .build();
    aws_sdk_ec2::Client::from_conf(config)
}

/// An S3 client whose every HTTP attempt is counted in `calls`. The
/// endpoint comes from the standard environment like every other client's
/// (`AWS_ENDPOINT_URL_S3`, then `AWS_ENDPOINT_URL`); `force_path_style`
/// is the SDK's own knob, for S3-compatible stores that do not serve a
/// bucket as a host name of its own.
pub fn s3_client(sdk: &SdkConfig, calls: &ApiCalls, force_path_style: bool) -> aws_sdk_s3::Client {
    let config = aws_sdk_s3::config::Builder::from(sdk)
        .force_path_style(force_path_style)
        .interceptor(calls.clone())
        .build();
    aws_sdk_s3::Client::from_conf(config)
}

/// Counts HTTP attempts (retries included) made through a client, and in
/// the process-wide [`totals`] by service and operation.
#[derive(Debug, Clone, Default)]
pub struct ApiCalls(Arc<AtomicU64>);

/// Attempts and failed attempts of one AWS operation, since the process
/// started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CallTotals {
    pub attempts: u64,
    pub errors: u64,
}

/// Every client made here shares these: the agent's metrics
/// (`kraken_aws_*`) read them, whichever step made the client.
static TOTALS: std::sync::Mutex<BTreeMap<(String, String), CallTotals>> =
    std::sync::Mutex::new(BTreeMap::new());

/// Attempts and errors so far, by (service, operation), e.g. `("ssm",
/// "GetParameters")`.
pub fn totals() -> Vec<((String, String), CallTotals)> {
    let totals = TOTALS.lock().unwrap_or_else(|e| e.into_inner());
    totals.iter().map(|(k, v)| (k.clone(), *v)).collect()
}

fn add_total(cfg: &ConfigBag, f: impl FnOnce(&mut CallTotals)) {
    let (service, operation) = cfg
        .load::<Metadata>()
        .map(|m| (m.service().to_ascii_lowercase(), m.name().to_owned()))
        .unwrap_or_else(|| ("unknown".into(), "unknown".into()));
    let mut totals = TOTALS.lock().unwrap_or_else(|e| e.into_inner());
    f(totals.entry((service, operation)).or_default());
}

impl ApiCalls {
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

impl Intercept for ApiCalls {
    fn name(&self) -> &'static str {
        "kraken-api-calls"
    }

    fn read_before_attempt(
        &self,
        _context: &BeforeTransmitInterceptorContextRef<'_>,
        _runtime_components: &RuntimeComponents,
        cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        self.0.fetch_add(1, Ordering::Relaxed);
        add_total(cfg, |t| t.attempts += 1);
        Ok(())
    }

    fn read_after_attempt(
        &self,
        context: &FinalizerInterceptorContextRef<'_>,
        _runtime_components: &RuntimeComponents,
        cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        // An error answer (throttling, denied, 5xx) or no answer at all
        // (timeout, connection refused): each attempt counts once.
        if matches!(context.output_or_error(), Some(Err(_))) {
            add_total(cfg, |t| t.errors += 1);
        }
        Ok(())
    }
}

/// What a failed AWS call means for the caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// IAM said no: retrying cannot help until a person grants the action.
    AccessDenied { code: String, message: String },
    /// The credentials themselves are missing, invalid or expired.
    Credentials { detail: String },
    /// Still throttled after the SDK's own retries.
    Throttled { code: String },
    /// Timeouts, connection failures, 5xx: worth another try later.
    Transient { detail: String },
    /// Anything else: a request the service rejects as malformed.
    Rejected { code: String, message: String },
}

const ACCESS_DENIED: &[&str] = &[
    "UnauthorizedOperation",
    "AccessDenied",
    "AccessDeniedException",
];
const BAD_CREDENTIALS: &[&str] = &[
    "AuthFailure",
    "InvalidClientTokenId",
    "UnrecognizedClientException",
    "SignatureDoesNotMatch",
    "ExpiredToken",
    "ExpiredTokenException",
    "RequestExpired",
];
const THROTTLED: &[&str] = &[
    "RequestLimitExceeded",
    "Throttling",
    "ThrottlingException",
    "TooManyRequestsException",
];

impl Failure {
    pub fn classify<E, R>(err: &SdkError<E, R>) -> Failure
    where
        E: ProvideErrorMetadata + StdError + Send + Sync + 'static,
        R: std::fmt::Debug,
    {
        let detail = DisplayErrorContext(err).to_string();
        match err {
            SdkError::ServiceError(service) => {
                let code = service.err().code().unwrap_or("Unknown").to_owned();
                let message = service.err().message().unwrap_or("").to_owned();
                if ACCESS_DENIED.contains(&code.as_str()) {
                    Failure::AccessDenied { code, message }
                } else if BAD_CREDENTIALS.contains(&code.as_str()) {
                    Failure::Credentials {
                        detail: format!("{code}: {message}"),
                    }
                } else if THROTTLED.contains(&code.as_str()) {
                    Failure::Throttled { code }
                } else if code == "Unknown" || code.starts_with("Internal") || code == "Unavailable"
                {
                    Failure::Transient { detail }
                } else {
                    Failure::Rejected { code, message }
                }
            }
            // Missing credentials surface while the request is built.
            SdkError::ConstructionFailure(_) if detail.contains("credential") => {
                Failure::Credentials { detail }
            }
            SdkError::DispatchFailure(d) if d.is_user() && detail.contains("credential") => {
                Failure::Credentials { detail }
            }
            SdkError::ConstructionFailure(_) => Failure::Rejected {
                code: "ConstructionFailure".into(),
                message: detail,
            },
            _ => Failure::Transient { detail },
        }
    }

    pub fn is_transient(&self) -> bool {
        matches!(self, Failure::Throttled { .. } | Failure::Transient { .. })
    }

    /// A sentence for a person: what failed, on which IAM action, what to do.
    pub fn describe(&self, action: &str) -> String {
        match self {
            Failure::AccessDenied { code, message } => format!(
                "{action} was denied ({code}: {message}); grant {action} to the instance role \
                 (docs/iam.md lists the policy)"
            ),
            Failure::Credentials { detail } => format!(
                "{action} failed: no usable AWS credentials ({detail}); attach an instance \
                 profile or set the standard AWS credential environment"
            ),
            Failure::Throttled { code } => {
                format!("{action} is still throttled ({code}) after retries")
            }
            Failure::Transient { detail } => format!("{action} failed: {detail}"),
            Failure::Rejected { code, message } => {
                format!("{action} was rejected ({code}: {message})")
            }
        }
    }
}
