//! The server's TLS identity and the QUIC server configuration (TLS 1.3 only, ALPN
//! `rathaus/1`, ring provider).

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use sha2::{Digest, Sha256};

use crate::error::ServerError;

/// How long a connection may be silent before it is dropped.
const IDLE_TIMEOUT: Duration = Duration::from_secs(60);

use super::admission::{
    PRE_AUTH_RECEIVE_WINDOW, PRE_AUTH_STREAMS, RECEIVE_WINDOW, STREAM_RECEIVE_WINDOW,
};

/// A certificate and its private key.
#[derive(Debug)]
pub struct TlsIdentity {
    /// The leaf certificate (DER).
    cert: CertificateDer<'static>,
    /// Intermediate CA certificates sent after the leaf (from a PEM bundle given with
    /// `--cert`), so clients that trust only the root can build the path.
    chain: Vec<CertificateDer<'static>>,
    /// Its private key.
    key: PrivateKeyDer<'static>,
}

impl TlsIdentity {
    /// A fresh self-signed ECDSA P-256 certificate for `localhost`, `127.0.0.1`, `::1`
    /// and `extra_names`.
    pub fn generate(extra_names: &[String]) -> Result<Self, ServerError> {
        let mut names = vec![
            "localhost".to_owned(),
            "127.0.0.1".to_owned(),
            "::1".to_owned(),
        ];
        for n in extra_names {
            if !names.contains(n) {
                names.push(n.clone());
            }
        }
        let certified = rcgen::generate_simple_self_signed(names)
            .map_err(|e| ServerError::Tls(format!("cannot generate certificate: {e}")))?;
        let key = PrivateKeyDer::try_from(certified.signing_key.serialize_der())
            .map_err(|e| ServerError::Tls(format!("generated key unusable: {e}")))?;
        Ok(Self {
            cert: certified.cert.der().clone(),
            chain: Vec::new(),
            key,
        })
    }

    /// Loads a certificate and key, each PEM or DER.
    pub fn load(cert: &Path, key: &Path) -> Result<Self, ServerError> {
        let cert_bytes = read(cert)?;
        let key_bytes = read(key)?;
        let (cert, chain) = if is_pem(&cert_bytes) {
            // The leaf first, then any intermediates, as web servers take them.
            let mut certs = CertificateDer::pem_slice_iter(&cert_bytes)
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| {
                    ServerError::Tls(format!("unreadable certificate in {}: {e}", cert.display()))
                })?
                .into_iter();
            let leaf = certs
                .next()
                .ok_or_else(|| ServerError::Tls(format!("no certificate in {}", cert.display())))?;
            (leaf, certs.collect())
        } else {
            (CertificateDer::from(cert_bytes), Vec::new())
        };
        let key = if is_pem(&key_bytes) {
            PrivateKeyDer::from_pem_slice(&key_bytes).map_err(|e| {
                ServerError::Tls(format!("no private key in {}: {e}", key.display()))
            })?
        } else {
            PrivateKeyDer::try_from(key_bytes)
                .map_err(|e| ServerError::Tls(format!("unusable key in {}: {e}", key.display())))?
        };
        Ok(Self { cert, chain, key })
    }

    /// The certificate, DER.
    pub fn cert_der(&self) -> &[u8] {
        self.cert.as_ref()
    }

    /// The private key, DER.
    pub fn key_der(&self) -> &[u8] {
        self.key.secret_der()
    }

    /// The fingerprint clients pin: `SHA256:<hex of the certificate DER's digest>`.
    pub fn fingerprint(&self) -> String {
        let digest: [u8; 32] = Sha256::digest(self.cert.as_ref()).into();
        rathaus_protocol::fingerprint::format(&digest)
    }

    /// The QUIC server configuration for this identity. Every connection starts as a
    /// stranger's: [`PRE_AUTH_STREAMS`] streams and [`PRE_AUTH_RECEIVE_WINDOW`] bytes in
    /// flight; the limits rise when it authenticates. The receive windows are set
    /// explicitly (quinn's connection-level default is unlimited).
    pub fn server_config(&self) -> Result<quinn::ServerConfig, ServerError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut tls = rustls::ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| ServerError::Tls(e.to_string()))?
            .with_no_client_auth()
            .with_single_cert(
                std::iter::once(&self.cert)
                    .chain(&self.chain)
                    .cloned()
                    .collect(),
                self.key.clone_key(),
            )
            .map_err(|e| ServerError::Tls(format!("certificate and key do not fit: {e}")))?;
        tls.alpn_protocols = vec![rathaus_protocol::ALPN.to_vec()];
        // No TLS session tickets: clients do not resume sessions (each connection makes
        // a fresh TLS configuration), and every ticket issued would be work, bytes on the
        // wire and an entry in the server's session cache for nothing.
        tls.send_tls13_tickets = 0;
        let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(tls)
            .map_err(|e| ServerError::Tls(e.to_string()))?;
        let mut config = quinn::ServerConfig::with_crypto(Arc::new(crypto));
        let mut transport = quinn::TransportConfig::default();
        transport
            .max_idle_timeout(Some(
                quinn::IdleTimeout::try_from(IDLE_TIMEOUT)
                    .map_err(|e| ServerError::Tls(e.to_string()))?,
            ))
            .max_concurrent_bidi_streams(quinn::VarInt::from_u32(PRE_AUTH_STREAMS))
            .max_concurrent_uni_streams(quinn::VarInt::from_u32(0))
            .receive_window(quinn::VarInt::from_u32(PRE_AUTH_RECEIVE_WINDOW))
            .stream_receive_window(quinn::VarInt::from_u32(STREAM_RECEIVE_WINDOW))
            .send_window(u64::from(RECEIVE_WINDOW));
        config.transport_config(Arc::new(transport));
        Ok(config)
    }
}

fn read(path: &Path) -> Result<Vec<u8>, ServerError> {
    std::fs::read(path).map_err(|e| ServerError::io(format!("cannot read {}", path.display()), e))
}

fn is_pem(bytes: &[u8]) -> bool {
    bytes
        .windows(b"-----BEGIN".len())
        .take(4096)
        .any(|w| w == b"-----BEGIN")
}
