//! How failed calls are classified and described, and the SDK set-up from
//! the standard environment (in child processes, which have an environment
//! of their own), against a loopback port where nothing listens. Calls that
//! reach a service run against moto in `tests/integration/boot.rs`.

use std::ffi::OsStr;

use aws_sdk_ec2::operation::describe_instances::DescribeInstancesError;
use aws_smithy_runtime_api::client::orchestrator::HttpResponse;
use aws_smithy_runtime_api::client::result::ConnectorError;
use aws_smithy_runtime_api::http::StatusCode;
use aws_smithy_types::body::SdkBody;
use aws_smithy_types::error::ErrorMetadata;

use super::*;

type Ec2Error = SdkError<DescribeInstancesError, HttpResponse>;

fn service_error(code: Option<&str>, message: &str, status: u16) -> Ec2Error {
    let mut meta = ErrorMetadata::builder().message(message);
    if let Some(code) = code {
        meta = meta.code(code);
    }
    SdkError::service_error(
        DescribeInstancesError::generic(meta.build()),
        HttpResponse::new(StatusCode::try_from(status).unwrap(), SdkBody::empty()),
    )
}

#[test]
fn denied_actions_are_access_denied_with_code_and_message() {
    for code in [
        "UnauthorizedOperation",
        "AccessDenied",
        "AccessDeniedException",
    ] {
        let failure = Failure::classify(&service_error(Some(code), "not authorized", 403));
        assert_eq!(
            failure,
            Failure::AccessDenied {
                code: code.into(),
                message: "not authorized".into()
            }
        );
        assert!(!failure.is_transient(), "{code}");
    }
}

#[test]
fn bad_credentials_are_named_as_such() {
    for code in [
        "AuthFailure",
        "InvalidClientTokenId",
        "UnrecognizedClientException",
        "SignatureDoesNotMatch",
        "ExpiredToken",
        "ExpiredTokenException",
        "RequestExpired",
    ] {
        let failure = Failure::classify(&service_error(Some(code), "nope", 401));
        assert_eq!(
            failure,
            Failure::Credentials {
                detail: format!("{code}: nope")
            }
        );
        assert!(!failure.is_transient(), "{code}");
    }
}

#[test]
fn throttling_and_server_trouble_are_transient() {
    for code in [
        "RequestLimitExceeded",
        "Throttling",
        "ThrottlingException",
        "TooManyRequestsException",
    ] {
        let failure = Failure::classify(&service_error(Some(code), "slow down", 503));
        assert_eq!(failure, Failure::Throttled { code: code.into() });
        assert!(failure.is_transient());
    }
    for code in [
        Some("InternalError"),
        Some("InternalFailure"),
        Some("Unavailable"),
        None,
    ] {
        let failure = Failure::classify(&service_error(code, "try later", 500));
        assert!(
            matches!(failure, Failure::Transient { .. }),
            "{code:?}: {failure:?}"
        );
        assert!(failure.is_transient());
    }
}

#[test]
fn other_service_errors_are_rejections_that_keep_code_and_message() {
    let failure = Failure::classify(&service_error(
        Some("InvalidInstanceID.Malformed"),
        "Invalid id: \"x\"",
        400,
    ));
    assert_eq!(
        failure,
        Failure::Rejected {
            code: "InvalidInstanceID.Malformed".into(),
            message: "Invalid id: \"x\"".into()
        }
    );
    assert!(!failure.is_transient());
}

#[test]
fn failures_before_an_answer_are_classified_by_what_went_wrong() {
    let missing_credentials: Ec2Error =
        SdkError::construction_failure("no credentials in the provider chain");
    assert!(matches!(
        Failure::classify(&missing_credentials),
        Failure::Credentials { detail } if detail.contains("no credentials in the provider chain")
    ));
    let malformed: Ec2Error = SdkError::construction_failure("InstanceIds must not be empty");
    assert!(matches!(
        Failure::classify(&malformed),
        Failure::Rejected { code, message }
            if code == "ConstructionFailure" && message.contains("InstanceIds must not be empty")
    ));
    let user: Ec2Error = SdkError::dispatch_failure(ConnectorError::user(
        "the credential provider failed".into(),
    ));
    assert!(matches!(
        Failure::classify(&user),
        Failure::Credentials { .. }
    ));
    for transient in [
        SdkError::dispatch_failure(ConnectorError::io("connection refused".into())),
        SdkError::timeout_error("attempt timeout"),
        SdkError::response_error(
            "truncated body",
            HttpResponse::new(StatusCode::try_from(200).unwrap(), SdkBody::empty()),
        ),
    ] {
        let failure = Failure::classify::<DescribeInstancesError, _>(&transient);
        assert!(matches!(failure, Failure::Transient { .. }), "{failure:?}");
    }
}

#[test]
fn descriptions_name_the_action_and_what_to_do() {
    let denied = Failure::AccessDenied {
        code: "UnauthorizedOperation".into(),
        message: "You are not authorized".into(),
    }
    .describe("ec2:DescribeInstances");
    assert_eq!(
        denied,
        "ec2:DescribeInstances was denied (UnauthorizedOperation: You are not authorized); \
         grant ec2:DescribeInstances to the instance role (docs/iam.md lists the policy)"
    );
    let credentials = Failure::Credentials {
        detail: "ExpiredToken: expired".into(),
    }
    .describe("ssm:GetParameter");
    for part in [
        "ssm:GetParameter",
        "ExpiredToken: expired",
        "instance profile",
    ] {
        assert!(credentials.contains(part), "{part:?} in {credentials}");
    }
    assert_eq!(
        Failure::Throttled {
            code: "RequestLimitExceeded".into()
        }
        .describe("ec2:DescribeInstances"),
        "ec2:DescribeInstances is still throttled (RequestLimitExceeded) after retries"
    );
    assert_eq!(
        Failure::Rejected {
            code: "InvalidParameterValue".into(),
            message: "bad filter".into()
        }
        .describe("ec2:DescribeInstances"),
        "ec2:DescribeInstances was rejected (InvalidParameterValue: bad filter)"
    );
}

#[test]
fn defaults_are_the_documented_ones() {
    // docs/configuration.md, [aws]: backoff from 200 ms.
    let d = AwsSettings::default();
    assert_eq!(d.max_attempts, 6);
    assert_eq!(d.initial_backoff, Duration::from_millis(200));
    assert_eq!(d.max_backoff, Duration::from_secs(20));
    assert_eq!(d.attempt_timeout, Duration::from_secs(10));
}

/// Set in a child process that runs one test alone with the environment
/// it needs; the SDK reads its configuration from the process environment,
/// which a test must not change in the shared test process.
const CHILD: &str = "KRAKEN_AWS_TEST_CHILD";

/// Runs `test` of this binary alone in a child process whose AWS
/// environment is only `AWS_ENDPOINT_URL` (a loopback port where nothing
/// listens), a key pair, and `extra`: no profile, no instance metadata.
fn run_in_child(test: &str, extra: &[(&str, &str)]) {
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let endpoint = format!("http://{}", closed.local_addr().unwrap());
    drop(closed);
    let mut cmd = std::process::Command::new(std::env::current_exe().unwrap());
    cmd.args([test, "--exact", "--test-threads=1", "--nocapture"])
        .env(CHILD, "1");
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("AWS_") {
            cmd.env_remove(key);
        }
    }
    for (key, value) in [
        ("AWS_ENDPOINT_URL", endpoint.as_str()),
        ("AWS_ACCESS_KEY_ID", "testing"),
        ("AWS_SECRET_ACCESS_KEY", "testing"),
        ("AWS_CONFIG_FILE", "/nonexistent/aws/config"),
        (
            "AWS_SHARED_CREDENTIALS_FILE",
            "/nonexistent/aws/credentials",
        ),
        ("AWS_EC2_METADATA_DISABLED", "true"),
    ]
    .into_iter()
    .chain(extra.iter().copied())
    {
        cmd.env(key, OsStr::new(value));
    }
    let out = cmd.output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("1 passed"),
        "{test} in a child process: {}\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}

fn in_child() -> bool {
    std::env::var_os(CHILD).is_some()
}

fn fast(max_attempts: u32) -> AwsSettings {
    AwsSettings {
        max_attempts,
        initial_backoff: Duration::from_millis(1),
        max_backoff: Duration::from_millis(5),
        attempt_timeout: Duration::from_secs(5),
    }
}

/// One `DescribeInstances` against the unanswering endpoint: the failure
/// and the attempts counted.
async fn describe(settings: &AwsSettings) -> (Failure, u64) {
    let sdk = sdk_config("eu-west-3", settings).await;
    let calls = ApiCalls::default();
    let err = ec2_client(&sdk, &calls)
        .describe_instances()
        .send()
        .await
        .unwrap_err();
    (Failure::classify(&err), calls.get())
}

#[tokio::test]
async fn every_attempt_is_counted_and_a_closed_port_is_transient() {
    if !in_child() {
        return run_in_child(
            "tests::every_attempt_is_counted_and_a_closed_port_is_transient",
            &[],
        );
    }
    let (failure, calls) = describe(&fast(3)).await;
    assert!(matches!(failure, Failure::Transient { .. }), "{failure:?}");
    assert_eq!(calls, 3, "the first attempt and two retries");
    let (_, calls) = describe(&fast(0)).await;
    assert_eq!(calls, 1, "zero attempts means one");
}

#[tokio::test]
async fn the_region_is_the_instances_unless_the_environment_names_one() {
    if !in_child() {
        run_in_child(
            "tests::the_region_is_the_instances_unless_the_environment_names_one",
            &[("KRAKEN_AWS_TEST_WANT", "eu-west-3")],
        );
        return run_in_child(
            "tests::the_region_is_the_instances_unless_the_environment_names_one",
            &[
                ("AWS_REGION", "ap-south-2"),
                ("KRAKEN_AWS_TEST_WANT", "ap-south-2"),
            ],
        );
    }
    let sdk = sdk_config("eu-west-3", &fast(1)).await;
    let want = std::env::var("KRAKEN_AWS_TEST_WANT").unwrap();
    assert_eq!(sdk.region().map(|r| r.as_ref()), Some(want.as_str()));
}
