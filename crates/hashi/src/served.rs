//! The certificate a Consul or Nomad port actually serves, read off the
//! socket: the only proof that a renewal reached the process, since a
//! service that ignored its reload keeps serving the certificate it loaded
//! at start, whatever the file says.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use tokio::io::AsyncWriteExt;

use crate::http::{ClientTls, HashiError};

/// A TLS port of Consul or Nomad, and how to reach TLS on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsPort {
    /// HTTPS (Consul's 8501, Nomad's 4646) and Consul's gRPC-TLS (8503):
    /// TLS from the first byte.
    Direct,
    /// Consul's server RPC (8300): one byte `RPCTLS` (3) first.
    ConsulRpc,
    /// Nomad's server RPC (4647): one byte `RpcTLS` (4) first.
    NomadRpc,
}

impl TlsPort {
    fn prefix(self) -> Option<u8> {
        match self {
            TlsPort::Direct => None,
            TlsPort::ConsulRpc => Some(3),
            TlsPort::NomadRpc => Some(4),
        }
    }
}

const PROBE_TIMEOUT: Duration = Duration::from_secs(5);

/// The end-entity certificate (DER) that `addr` presents in a TLS
/// handshake. `client` supplies the certificate to present where the port
/// requires one (the handshake may still fail after the server has shown
/// its certificate; that certificate is what is returned).
///
/// The server's certificate is recorded, not judged: this reads what is
/// served so the caller can compare it with the file, and nothing but the
/// handshake is sent, so there is nothing to protect from a wrong peer.
pub async fn served_certificate(
    addr: SocketAddr,
    port: TlsPort,
    client: Option<&ClientTls>,
) -> Result<Vec<u8>, HashiError> {
    let service = match port {
        TlsPort::NomadRpc => "Nomad",
        _ => "Consul/Nomad",
    };
    let url = format!("tls://{addr}");
    let unreachable = |detail: String| HashiError::Unreachable {
        service,
        url: url.clone(),
        detail,
    };
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let seen = Arc::new(Mutex::new(None));
    let verifier = Arc::new(Recorder {
        seen: seen.clone(),
        provider: provider.clone(),
    });
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| tls_err(service, e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(verifier);
    let config = match client.and_then(ClientTls::identity_pem) {
        Some(pem) => {
            let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(pem)
                .collect::<Result<_, _>>()
                .map_err(|e| tls_err(service, format!("the client certificate: {e}")))?;
            let key = PrivateKeyDer::from_pem_slice(pem)
                .map_err(|e| tls_err(service, format!("the client key: {e}")))?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| tls_err(service, e.to_string()))?
        }
        None => builder.with_no_client_auth(),
    };
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let handshake = async {
        let mut tcp = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|e| unreachable(e.to_string()))?;
        if let Some(byte) = port.prefix() {
            tcp.write_all(&[byte])
                .await
                .map_err(|e| unreachable(e.to_string()))?;
        }
        let name = ServerName::IpAddress(addr.ip().into());
        // A refusal after the server showed its certificate (our client
        // certificate not wanted, say) still tells what it serves.
        let outcome = connector.connect(name, tcp).await;
        match (seen.lock().expect("not poisoned").take(), outcome) {
            (Some(der), _) => Ok(der),
            (None, Err(e)) => Err(unreachable(format!("TLS handshake: {e}"))),
            (None, Ok(_)) => Err(unreachable("no certificate presented".into())),
        }
    };
    tokio::time::timeout(PROBE_TIMEOUT, handshake)
        .await
        .unwrap_or_else(|_| Err(unreachable("no TLS handshake within 5s".into())))
}

fn tls_err(service: &'static str, detail: String) -> HashiError {
    HashiError::Tls { service, detail }
}

#[derive(Debug)]
struct Recorder {
    seen: Arc<Mutex<Option<Vec<u8>>>>,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for Recorder {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        *self.seen.lock().expect("not poisoned") = Some(end_entity.to_vec());
        Ok(ServerCertVerified::assertion())
    }

    // The signatures are checked for real: a server that cannot prove it
    // holds the certificate's key is not serving that certificate.
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}
