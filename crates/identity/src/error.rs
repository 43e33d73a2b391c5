//! Why an identity could not be read, and whether to try again.

#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error(
        "instance metadata service unreachable at {endpoint} while reading {path}: {detail}; \
         check that IMDS is enabled on the instance (http-endpoint=enabled) and, inside a \
         container, that the PUT response hop limit is at least 2"
    )]
    ImdsUnreachable {
        endpoint: String,
        path: String,
        detail: String,
    },
    #[error("instance metadata service answered HTTP {status} for {path}")]
    ImdsStatus { path: String, status: u16 },
    #[error("instance metadata value {path} is not valid: {value:?} ({expected})")]
    ImdsValue {
        path: String,
        value: String,
        expected: &'static str,
    },
    #[error(
        "instance metadata tags are disabled and ec2:DescribeInstances on {instance_id} \
         was denied ({code}); grant ec2:DescribeInstances to the instance role, or enable \
         instance metadata tags (aws ec2 modify-instance-metadata-options \
         --instance-metadata-tags enabled)"
    )]
    TagsAccessDenied { instance_id: String, code: String },
    #[error("reading the tags of {instance_id} with ec2:DescribeInstances failed: {detail}")]
    TagsApi { instance_id: String, detail: String },
}

impl IdentityError {
    /// Whether trying again later can help (an unreachable or failing IMDS
    /// can; a denied permission or a malformed value cannot).
    pub fn is_transient(&self) -> bool {
        match self {
            IdentityError::ImdsUnreachable { .. } | IdentityError::TagsApi { .. } => true,
            IdentityError::ImdsStatus { status, .. } => *status >= 500 || *status == 401,
            IdentityError::ImdsValue { .. } | IdentityError::TagsAccessDenied { .. } => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn imds_status(status: u16) -> IdentityError {
        IdentityError::ImdsStatus {
            path: "/latest/meta-data/instance-id".into(),
            status,
        }
    }

    #[test]
    fn an_unreachable_or_failing_imds_is_worth_retrying() {
        let unreachable = IdentityError::ImdsUnreachable {
            endpoint: "http://169.254.169.254".into(),
            path: "/latest/meta-data/instance-id".into(),
            detail: "timed out".into(),
        };
        assert!(unreachable.is_transient());
        let api = IdentityError::TagsApi {
            instance_id: "i-0abc".into(),
            detail: "ec2:DescribeInstances failed: dispatch failure".into(),
        };
        assert!(api.is_transient());
        // 401: the session token expired between two requests.
        for status in [401, 500, 502, 503] {
            assert!(imds_status(status).is_transient(), "{status}");
        }
    }

    #[test]
    fn a_wrong_answer_or_a_denied_permission_is_not() {
        for status in [400, 403, 404] {
            assert!(!imds_status(status).is_transient(), "{status}");
        }
        let value = IdentityError::ImdsValue {
            path: "/latest/meta-data/local-ipv4".into(),
            value: "nonsense".into(),
            expected: "an IPv4 address",
        };
        assert!(!value.is_transient());
        let denied = IdentityError::TagsAccessDenied {
            instance_id: "i-0abc".into(),
            code: "UnauthorizedOperation".into(),
        };
        assert!(!denied.is_transient());
    }

    #[test]
    fn errors_name_the_input_and_the_fix() {
        let unreachable = IdentityError::ImdsUnreachable {
            endpoint: "http://127.0.0.1:9".into(),
            path: "/latest/meta-data/placement/region".into(),
            detail: "connection refused".into(),
        }
        .to_string();
        for part in [
            "http://127.0.0.1:9",
            "/latest/meta-data/placement/region",
            "connection refused",
            "http-endpoint=enabled",
            "hop limit",
        ] {
            assert!(unreachable.contains(part), "{part:?} in {unreachable}");
        }
        let denied = IdentityError::TagsAccessDenied {
            instance_id: "i-0abc".into(),
            code: "UnauthorizedOperation".into(),
        }
        .to_string();
        for part in [
            "i-0abc",
            "UnauthorizedOperation",
            "grant ec2:DescribeInstances",
            "--instance-metadata-tags enabled",
        ] {
            assert!(denied.contains(part), "{part:?} in {denied}");
        }
        assert_eq!(
            imds_status(404).to_string(),
            "instance metadata service answered HTTP 404 for /latest/meta-data/instance-id"
        );
    }
}
