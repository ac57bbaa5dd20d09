//! Certificate pinning: the server is trusted if and only if its end-entity certificate
//! hashes to the fingerprint the profile was enrolled with. The TLS 1.3 handshake signature
//! is still verified against that certificate's key, so possession of the private key is
//! proven, not just presentation of the certificate.

use std::sync::{Arc, Mutex};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{verify_tls13_signature, CryptoProvider};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use sha2::{Digest, Sha256};

/// Verifies the server certificate against a pinned SHA-256 fingerprint.
#[derive(Debug)]
pub(crate) struct PinnedCertVerifier {
    /// The only certificate digest accepted.
    pinned: [u8; 32],
    /// The digest seen on a mismatch, so the caller can report it after the handshake fails.
    seen_mismatch: Arc<Mutex<Option<[u8; 32]>>>,
    /// Signature algorithms for the handshake signature check.
    provider: Arc<CryptoProvider>,
}

impl PinnedCertVerifier {
    pub(crate) fn new(
        pinned: [u8; 32],
        provider: Arc<CryptoProvider>,
    ) -> (Self, Arc<Mutex<Option<[u8; 32]>>>) {
        let seen = Arc::new(Mutex::new(None));
        (
            Self {
                pinned,
                seen_mismatch: seen.clone(),
                provider,
            },
            seen,
        )
    }
}

impl ServerCertVerifier for PinnedCertVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let digest: [u8; 32] = Sha256::digest(end_entity.as_ref()).into();
        if digest == self.pinned {
            Ok(ServerCertVerified::assertion())
        } else {
            if let Ok(mut seen) = self.seen_mismatch.lock() {
                *seen = Some(digest);
            }
            Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::ApplicationVerificationFailure,
            ))
        }
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        // The client config only enables TLS 1.3; a TLS 1.2 handshake never gets here.
        Err(rustls::Error::PeerIncompatible(
            rustls::PeerIncompatible::Tls12NotOffered,
        ))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
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
