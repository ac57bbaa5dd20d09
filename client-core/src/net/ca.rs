//! CA validation: the server is trusted if its certificate chains to one of the CA
//! certificates the profile was enrolled with (and only those, never the system roots),
//! is valid now, and names the expected server. rustls' WebPKI verifier does the checks,
//! including the TLS 1.3 handshake signature; this module keeps the CA certificates as
//! the profile stores them and records why a certificate was refused, so the caller can
//! say so after the handshake failed.

use std::sync::{Arc, Mutex};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, RootCertStore, SignatureScheme};
use sha2::{Digest, Sha256};

use crate::error::{ClientError, Result};

/// Trust in the server through a certificate authority: the CA certificates (DER) and the
/// name the server's certificate must carry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaTrust {
    /// The trusted CA certificates, DER, in the order given. Never empty.
    certificates: Vec<CertificateDer<'static>>,
    /// The TLS server name (DNS name or IP address) checked against the certificate.
    server_name: String,
}

impl CaTrust {
    /// Parses one or more PEM `CERTIFICATE` blocks (a CA file as IT hands it out) and the
    /// server name to check. Fails if there is no certificate, one is not a usable CA
    /// certificate, or the name is neither a DNS name nor an IP address.
    pub fn from_pem(pem: &[u8], server_name: &str) -> Result<Self> {
        let certificates = CertificateDer::pem_slice_iter(pem)
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(|e| ClientError::Invalid(format!("cannot read the CA file: {e}")))?;
        if certificates.is_empty() {
            return Err(ClientError::Invalid(
                "the CA file holds no PEM certificate (-----BEGIN CERTIFICATE-----)".into(),
            ));
        }
        Self::from_der(certificates, server_name)
    }

    /// The CA certificates as DER (as stored in the profile) and the server name; checked
    /// like [`CaTrust::from_pem`].
    pub fn from_der(certificates: Vec<CertificateDer<'static>>, server_name: &str) -> Result<Self> {
        if certificates.is_empty() {
            return Err(ClientError::Invalid("no CA certificate given".into()));
        }
        let trust = Self {
            certificates,
            server_name: server_name.to_owned(),
        };
        trust.root_store()?;
        ServerName::try_from(server_name).map_err(|_| {
            ClientError::Invalid(format!(
                "{server_name:?} is not a valid TLS server name (a DNS name or an IP address)"
            ))
        })?;
        Ok(trust)
    }

    /// The trusted CA certificates, DER.
    pub fn certificates(&self) -> &[CertificateDer<'static>] {
        &self.certificates
    }

    /// The name the server's certificate must carry.
    pub fn server_name(&self) -> &str {
        &self.server_name
    }

    /// The SHA-256 fingerprints (`SHA256:…`) of the CA certificates, for display.
    pub fn fingerprints(&self) -> Vec<String> {
        self.certificates
            .iter()
            .map(|c| {
                let digest: [u8; 32] = Sha256::digest(c.as_ref()).into();
                rathaus_protocol::fingerprint::format(&digest)
            })
            .collect()
    }

    /// Exactly these CAs as WebPKI trust anchors.
    fn root_store(&self) -> Result<RootCertStore> {
        let mut roots = RootCertStore::empty();
        for (n, cert) in self.certificates.iter().enumerate() {
            roots.add(cert.clone()).map_err(|e| {
                ClientError::Invalid(format!(
                    "CA certificate {} is not usable as a trust anchor: {e}",
                    n + 1
                ))
            })?;
        }
        Ok(roots)
    }

    /// A verifier that accepts what rustls' WebPKI verifier accepts with these CAs, and
    /// the slot where it leaves the reason of a refusal.
    pub(crate) fn verifier(
        &self,
        provider: Arc<CryptoProvider>,
    ) -> Result<(CaVerifier, Arc<Mutex<Option<rustls::Error>>>)> {
        let inner =
            WebPkiServerVerifier::builder_with_provider(Arc::new(self.root_store()?), provider)
                .build()
                .map_err(|e| ClientError::Invalid(format!("TLS configuration: {e}")))?;
        let refused = Arc::new(Mutex::new(None));
        Ok((
            CaVerifier {
                inner,
                refused: refused.clone(),
            },
            refused,
        ))
    }
}

/// Describes why a certificate was refused, for a user who has to act on it.
pub(crate) fn describe_refusal(e: &rustls::Error) -> String {
    match e {
        rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer) => {
            "it was not issued by a CA this profile trusts (unknown issuer)".into()
        }
        rustls::Error::InvalidCertificate(
            reason @ (CertificateError::Expired | CertificateError::ExpiredContext { .. }),
        ) => format!("it has expired ({reason})"),
        rustls::Error::InvalidCertificate(
            reason @ (CertificateError::NotValidForName
            | CertificateError::NotValidForNameContext { .. }),
        ) => format!("it is issued for another name ({reason})"),
        other => other.to_string(),
    }
}

/// rustls' WebPKI verifier over the profile's CAs, remembering the reason of a refusal.
#[derive(Debug)]
pub(crate) struct CaVerifier {
    /// Does all the checking.
    inner: Arc<WebPkiServerVerifier>,
    /// The error of the last refused certificate, read after the handshake failed.
    refused: Arc<Mutex<Option<rustls::Error>>>,
}

impl ServerCertVerifier for CaVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let verdict = self.inner.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        );
        if let Err(e) = &verdict {
            if let Ok(mut refused) = self.refused.lock() {
                *refused = Some(e.clone());
            }
        }
        verdict
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
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ca_pem() -> String {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.self_signed(&key).unwrap().pem()
    }

    #[test]
    fn reads_every_certificate_of_a_pem_bundle() {
        let bundle = format!("{}{}", ca_pem(), ca_pem());
        let trust = CaTrust::from_pem(bundle.as_bytes(), "rathaus.example").unwrap();
        assert_eq!(trust.certificates().len(), 2);
        assert_eq!(trust.fingerprints().len(), 2);
        assert!(trust.fingerprints()[0].starts_with("SHA256:"));
        let again = CaTrust::from_der(trust.certificates().to_vec(), trust.server_name()).unwrap();
        assert_eq!(again, trust);
    }

    #[test]
    fn refuses_files_without_certificates_and_bad_names() {
        let err = CaTrust::from_pem(b"not a certificate", "rathaus.example").unwrap_err();
        assert!(err.to_string().contains("no PEM certificate"), "{err}");
        let err = CaTrust::from_pem(ca_pem().as_bytes(), "not a name!").unwrap_err();
        assert!(
            err.to_string().contains("not a valid TLS server name"),
            "{err}"
        );
        let garbage = "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n";
        let err = CaTrust::from_pem(garbage.as_bytes(), "rathaus.example").unwrap_err();
        assert!(err.to_string().contains("trust anchor"), "{err}");
    }
}
