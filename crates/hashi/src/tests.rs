//! What the clients guarantee before any server is involved: tokens stay
//! out of `Debug` output, addresses are checked, errors say what they are.
//! The calls themselves run against real Consul and Nomad in
//! `tests/integration/live_peers/` and `bootstrap/`.

use std::path::Path;

use crate::{ClientTls, Consul, HashiError, Nomad, Token};

const SECRET: &str = "0b4c7a1e-8d2f-4f6b-9a3c-5e1d2f3a4b5c";

#[test]
fn a_token_never_shows_in_debug_output() {
    let token = Token::new(SECRET);
    assert_eq!(format!("{token:?}"), "Token(<redacted>)");
    assert_eq!(
        format!("{:?}", Some(token.clone())),
        "Some(Token(<redacted>))"
    );
    assert_eq!(token.expose(), SECRET);
}

#[test]
fn a_client_with_a_token_never_shows_it_in_debug_output() {
    let consul = Consul::new("http://127.0.0.1:8500", Some(Token::new(SECRET))).unwrap();
    let nomad = Nomad::new("http://127.0.0.1:4646", None)
        .unwrap()
        .with_token(Some(Token::new(SECRET)));
    for shown in [
        format!("{consul:?}"),
        format!("{:#?}", consul.with_token(Some(Token::new(SECRET)))),
        format!("{nomad:?}"),
    ] {
        assert!(!shown.contains(SECRET), "{shown}");
        assert!(shown.contains("<redacted>"), "{shown}");
        assert!(shown.contains("http://127.0.0.1:"), "{shown}");
    }
}

#[test]
fn an_address_that_is_not_an_http_url_is_refused_by_name() {
    for bad in [
        "127.0.0.1:8500",
        "consul.service.consul:8500",
        "ftp://127.0.0.1:8500",
        "unix:///run/consul.sock",
        "",
        "http://",
        "https://exa mple:8501",
    ] {
        // Named as it is used: without trailing slashes.
        let named = bad.trim_end_matches('/');
        let err = Consul::new(bad, None).unwrap_err();
        assert!(
            matches!(&err, HashiError::BadUrl { service: "Consul", url } if url == named),
            "{bad:?}: {err:?}"
        );
        assert_eq!(
            err.to_string(),
            format!("Consul address {named:?} is not a valid http(s) URL")
        );
    }
    let err = Nomad::with_tls("localhost:4646", None, None).unwrap_err();
    assert!(
        matches!(
            &err,
            HashiError::BadUrl {
                service: "Nomad",
                ..
            }
        ),
        "{err:?}"
    );
}

#[test]
fn trailing_slashes_are_dropped_from_the_address() {
    let consul = Consul::new("https://10.0.0.1:8501//", None).unwrap();
    assert_eq!(consul.address(), "https://10.0.0.1:8501");
    let nomad = Nomad::new("http://10.0.0.1:4646/", None).unwrap();
    assert_eq!(nomad.address(), "http://10.0.0.1:4646");
}

#[test]
fn only_an_http_answer_has_a_status_and_only_silence_is_unreachable() {
    let status = HashiError::Status {
        service: "Consul",
        method: reqwest::Method::GET,
        url: "http://127.0.0.1:8500/v1/acl/token/self".into(),
        status: 403,
        body: "ACL not found".into(),
    };
    assert_eq!(status.status(), Some(403));
    assert!(!status.is_unreachable());
    assert_eq!(
        status.to_string(),
        "Consul answered GET http://127.0.0.1:8500/v1/acl/token/self with HTTP 403: ACL not found"
    );

    let unreachable = HashiError::Unreachable {
        service: "Nomad",
        url: "http://127.0.0.1:4646/v1/status/leader".into(),
        detail: "connection refused".into(),
    };
    assert_eq!(unreachable.status(), None);
    assert!(unreachable.is_unreachable());

    for other in [
        HashiError::Decode {
            service: "Consul",
            url: "/v1/kv/x".into(),
            detail: "EOF".into(),
        },
        HashiError::BadUrl {
            service: "Consul",
            url: "x".into(),
        },
        HashiError::Tls {
            service: "Nomad",
            detail: "the CA file is not PEM".into(),
        },
    ] {
        assert_eq!(other.status(), None, "{other}");
        assert!(!other.is_unreachable(), "{other}");
    }
}

#[tokio::test]
async fn a_closed_port_is_unreachable_and_named_with_the_call() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    drop(listener);
    let err = Consul::new(&base, Some(Token::new(SECRET)))
        .unwrap()
        .leader()
        .await
        .unwrap_err();
    assert!(err.is_unreachable(), "{err:?}");
    let text = err.to_string();
    assert!(
        text.starts_with(&format!(
            "Consul is not answering at {base}/v1/status/leader: "
        )),
        "{text}"
    );
    assert!(!text.contains(SECRET), "{text}");
}

#[test]
fn tls_files_that_cannot_be_read_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca.pem");
    let missing = Path::new("/nonexistent/kraken/consul.pem");
    let err = ClientTls::from_files(missing, None).unwrap_err();
    assert!(
        matches!(&err, HashiError::Tls { .. })
            && err.to_string().contains(&missing.display().to_string()),
        "{err}"
    );
    std::fs::write(&ca, "ca").unwrap();
    let cert = dir.path().join("consul.pem");
    std::fs::write(&cert, "cert").unwrap();
    let key = dir.path().join("consul-key.pem");
    let err = ClientTls::from_files(&ca, Some((&cert, &key))).unwrap_err();
    assert!(err.to_string().contains("consul-key.pem"), "{err}");
}

#[test]
fn tls_settings_never_show_the_key_in_debug_output() {
    let tls = ClientTls::from_pem(
        b"-----BEGIN CERTIFICATE-----\nca\n-----END CERTIFICATE-----\n",
        Some(
            format!("-----BEGIN PRIVATE KEY-----\n{SECRET}\n-----END PRIVATE KEY-----\n")
                .as_bytes(),
        ),
    );
    let shown = format!("{tls:?}");
    assert!(
        !shown.contains(SECRET) && !shown.contains("PRIVATE"),
        "{shown}"
    );
    assert!(shown.contains("client_certificate: true"), "{shown}");
}
