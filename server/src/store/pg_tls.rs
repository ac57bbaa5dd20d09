//! TLS to PostgreSQL (rustls), chosen as libpq chooses it: by the URL's `sslmode` and
//! `sslrootcert` parameters.
//!
//! | `sslmode` | encrypted | certificate checked |
//! |---|---|---|
//! | `disable` | no | — |
//! | `prefer` (the default) | with `sslrootcert`: if the server offers TLS; without: no | chain, as `verify-ca` |
//! | `require` | yes, or no connection; needs `sslrootcert` | chain, as `verify-ca` |
//! | `verify-ca` | yes | chain up to `sslrootcert` |
//! | `verify-full` | yes | chain up to `sslrootcert`, and the host name or address of the URL |
//!
//! Rathaus never makes a TLS session whose certificate it does not check: where libpq's
//! `require` and `prefer` would encrypt to whoever answers, `require` without
//! `sslrootcert` is refused and `prefer` without it connects in plain text, with a
//! warning in the log. `verify-full` is the mode the README recommends. Over a Unix socket
//! there is no TLS, whatever `sslmode` says (PostgreSQL offers none there, and libpq
//! ignores `sslmode` for sockets).
//!
//! tokio-postgres parses neither `verify-*` nor `sslrootcert`, so [`settings`] takes
//! them out of the URL before handing the rest to it.

use std::future::Future;
use std::io;
use std::path::PathBuf;
use std::pin::Pin;
use std::str::FromStr;
use std::sync::Arc;
use std::task::{Context, Poll};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, RootCertStore, SignatureScheme};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_postgres::config::{Host, SslMode};
use tokio_postgres::tls::{ChannelBinding, MakeTlsConnect, TlsConnect};

use super::StoreError;

/// libpq's `sslmode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    Disable,
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::Disable => "disable",
            Mode::Prefer => "prefer",
            Mode::Require => "require",
            Mode::VerifyCa => "verify-ca",
            Mode::VerifyFull => "verify-full",
        }
    }
}

/// Makes the TLS session of each new connection: cheap to clone, one per store.
#[derive(Clone)]
pub(crate) struct PgTls {
    /// What the URL asked for (for error messages).
    mode: Mode,
    /// The `sslrootcert` file, if any (for error messages).
    root: Option<PathBuf>,
    /// The rustls configuration every connection's session starts from.
    config: Arc<rustls::ClientConfig>,
}

impl std::fmt::Debug for PgTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgTls")
            .field("mode", &self.mode)
            .field("root", &self.root)
            .finish_non_exhaustive()
    }
}

/// The tokio-postgres configuration of `url` and the TLS to connect with.
pub(crate) fn settings(url: &str) -> Result<(tokio_postgres::Config, PgTls), StoreError> {
    let invalid = |reason: String| StoreError::Backend(format!("invalid PostgreSQL URL: {reason}"));
    let (rest, mode, root) = take_tls_params(url).map_err(invalid)?;
    let mut config = tokio_postgres::Config::from_str(&rest)
        .map_err(|e| StoreError::Backend(format!("invalid PostgreSQL URL: {e}")))?;
    let mode = mode.unwrap_or(Mode::Prefer);
    let sockets_only = !config.get_hosts().is_empty()
        && config
            .get_hosts()
            .iter()
            .all(|h| !matches!(h, Host::Tcp(_)));
    if !sockets_only
        && matches!(mode, Mode::Require | Mode::VerifyCa | Mode::VerifyFull)
        && root.is_none()
    {
        return Err(invalid(format!(
            "sslmode={} needs sslrootcert=PATH (the CA certificate(s) the database server's \
             certificate is checked against, PEM): Rathaus does not encrypt to a server it \
             cannot check",
            mode.name()
        )));
    }
    config.ssl_mode(match mode {
        _ if sockets_only => SslMode::Disable,
        Mode::Disable => SslMode::Disable,
        Mode::Prefer if root.is_none() => {
            tracing::warn!(
                "connecting to PostgreSQL over TCP without TLS: give sslmode=verify-full and \
                 sslrootcert=PATH in the store URL to encrypt and check the server"
            );
            SslMode::Disable
        }
        Mode::Prefer => SslMode::Prefer,
        Mode::Require | Mode::VerifyCa | Mode::VerifyFull => SslMode::Require,
    });
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier: Arc<dyn ServerCertVerifier> = match &root {
        Some(path) => {
            let roots = Arc::new(read_roots(path)?);
            let webpki = WebPkiServerVerifier::builder_with_provider(roots, provider.clone())
                .build()
                .map_err(|e| {
                    StoreError::Backend(format!(
                        "sslrootcert {}: no usable CA certificate: {e}",
                        path.display()
                    ))
                })?;
            if mode == Mode::VerifyFull {
                webpki
            } else {
                Arc::new(ChainOnly(webpki))
            }
        }
        // No TLS session is made without a root (see the module docs); the verifier of an
        // empty root store refuses every certificate, should one be offered anyway.
        None => Arc::new(RefuseAll(provider.clone())),
    };
    let tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| StoreError::Backend(format!("TLS to PostgreSQL: {e}")))?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    Ok((
        config,
        PgTls {
            mode,
            root,
            config: Arc::new(tls),
        },
    ))
}

/// `url` without `sslmode` and `sslrootcert`, and their values.
fn take_tls_params(url: &str) -> Result<(String, Option<Mode>, Option<PathBuf>), String> {
    let Some((base, query)) = url.split_once('?') else {
        return Ok((url.to_owned(), None, None));
    };
    let (mut mode, mut root) = (None, None);
    let mut kept = Vec::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        match key {
            "sslmode" => {
                mode = Some(match percent_decode(value)?.as_str() {
                    "disable" => Mode::Disable,
                    "prefer" => Mode::Prefer,
                    "require" => Mode::Require,
                    "verify-ca" => Mode::VerifyCa,
                    "verify-full" => Mode::VerifyFull,
                    other => {
                        return Err(format!(
                            "sslmode={other:?}: expected disable, prefer, require, verify-ca \
                             or verify-full"
                        ))
                    }
                })
            }
            "sslrootcert" => root = Some(PathBuf::from(percent_decode(value)?)),
            _ => kept.push(pair),
        }
    }
    let rest = if kept.is_empty() {
        base.to_owned()
    } else {
        format!("{base}?{}", kept.join("&"))
    };
    Ok((rest, mode, root))
}

fn percent_decode(value: &str) -> Result<String, String> {
    let bytes = value.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = value
                .get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| format!("bad percent-encoding in {value:?}"))?;
            out.push(hex);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| format!("{value:?} is not UTF-8"))
}

fn read_roots(path: &PathBuf) -> Result<RootCertStore, StoreError> {
    let unreadable =
        |e: String| StoreError::Backend(format!("cannot read sslrootcert {}: {e}", path.display()));
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(path).map_err(|e| unreadable(e.to_string()))? {
        let cert = cert.map_err(|e| unreadable(e.to_string()))?;
        roots.add(cert).map_err(|e| unreadable(e.to_string()))?;
    }
    if roots.is_empty() {
        return Err(unreadable("it holds no PEM certificate".into()));
    }
    Ok(roots)
}

/// `verify-ca`: the chain up to the roots, not the name (libpq's meaning).
#[derive(Debug)]
struct ChainOnly(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        // webpki checks the name after the chain: a name error means the chain is good.
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
        {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

/// Without `sslrootcert` no TLS session is made; should one be attempted anyway, no
/// certificate passes.
#[derive(Debug)]
struct RefuseAll(Arc<CryptoProvider>);

impl ServerCertVerifier for RefuseAll {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Err(rustls::Error::InvalidCertificate(
            CertificateError::UnknownIssuer,
        ))
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(rustls::Error::InvalidCertificate(
            CertificateError::UnknownIssuer,
        ))
    }

    fn verify_tls13_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(rustls::Error::InvalidCertificate(
            CertificateError::UnknownIssuer,
        ))
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

impl<S> MakeTlsConnect<S> for PgTls
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = PgTlsStream<S>;
    type TlsConnect = PgTlsConnect;
    type Error = io::Error;

    /// `domain`: the URL's host (empty for a Unix socket, which never gets here with
    /// TLS: see [`settings`]).
    fn make_tls_connect(&mut self, domain: &str) -> Result<PgTlsConnect, io::Error> {
        Ok(PgTlsConnect {
            tls: self.clone(),
            host: domain.to_owned(),
        })
    }
}

/// The TLS handshake of one connection to `host`.
pub(crate) struct PgTlsConnect {
    tls: PgTls,
    host: String,
}

impl<S> TlsConnect<S> for PgTlsConnect
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = PgTlsStream<S>;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = Result<PgTlsStream<S>, io::Error>> + Send>>;

    fn connect(self, stream: S) -> Self::Future {
        Box::pin(async move {
            let name = ServerName::try_from(self.host.clone()).map_err(|_| {
                io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("{:?} is no host name or address for TLS", self.host),
                )
            })?;
            tokio_rustls::TlsConnector::from(self.tls.config.clone())
                .connect(name, stream)
                .await
                .map(PgTlsStream)
                .map_err(|e| self.tls.explain(&self.host, e))
        })
    }
}

impl PgTls {
    /// A failed handshake, said so that an operator knows what to fix.
    fn explain(&self, host: &str, e: io::Error) -> io::Error {
        let rustls_error = e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>());
        let text = match (rustls_error, &self.root) {
            (Some(rustls::Error::InvalidCertificate(why)), Some(root)) => format!(
                "the database server {host} presented a certificate that does not verify \
                 (sslmode={}, sslrootcert={}): {why:?}",
                self.mode.name(),
                root.display()
            ),
            (Some(other), _) => format!(
                "TLS with the database server {host} failed (sslmode={}): {other}",
                self.mode.name()
            ),
            (None, _) => format!(
                "TLS with the database server {host} failed (sslmode={}): {e}",
                self.mode.name()
            ),
        };
        io::Error::new(e.kind(), text)
    }
}

/// A TLS session with the database server.
pub(crate) struct PgTlsStream<S>(tokio_rustls::client::TlsStream<S>);

impl<S: AsyncRead + AsyncWrite + Unpin> tokio_postgres::tls::TlsStream for PgTlsStream<S> {
    /// No channel binding: SCRAM authenticates without it (tokio-postgres' default
    /// `channel_binding=prefer`).
    fn channel_binding(&self) -> ChannelBinding {
        ChannelBinding::none()
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for PgTlsStream<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for PgTlsStream<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn the_tls_parameters_are_taken_out_of_the_url() {
        let (rest, mode, root) = take_tls_params(
            "postgres://u@db.example/rathaus?sslmode=verify-full&application_name=x&sslrootcert=/etc/ssl/ca%20bundle.pem",
        )
        .unwrap();
        assert_eq!(rest, "postgres://u@db.example/rathaus?application_name=x");
        assert_eq!(mode, Some(Mode::VerifyFull));
        assert_eq!(root, Some(PathBuf::from("/etc/ssl/ca bundle.pem")));
        let (rest, mode, root) = take_tls_params("postgres://u@h/db?sslmode=require").unwrap();
        assert_eq!(
            (rest.as_str(), mode, root),
            ("postgres://u@h/db", Some(Mode::Require), None)
        );
        assert!(take_tls_params("postgres://u@h/db?sslmode=allow-all").is_err());
    }

    #[test]
    fn verification_without_a_root_certificate_is_refused() {
        for mode in ["verify-full", "verify-ca", "require"] {
            let e =
                settings(&format!("postgres://u@db.example/rathaus?sslmode={mode}")).unwrap_err();
            assert!(e.to_string().contains("sslrootcert"), "{mode}: {e}");
        }
    }

    #[test]
    fn no_tls_session_is_made_without_a_certificate_to_check() {
        let (config, _) = settings("postgres://u@db.example/rathaus").unwrap();
        assert_eq!(
            config.get_ssl_mode(),
            SslMode::Disable,
            "plain, and a warning"
        );
        let (config, _) = settings("postgres://u@db.example/rathaus?sslmode=prefer").unwrap();
        assert_eq!(config.get_ssl_mode(), SslMode::Disable);
    }

    #[test]
    fn a_unix_socket_gets_no_tls_whatever_the_mode() {
        let (config, _) =
            settings("postgresql:///rathaus?host=/run/postgresql&sslmode=require").unwrap();
        assert_eq!(config.get_ssl_mode(), SslMode::Disable);
        let (config, _) = settings("postgres://u@db.example/rathaus?sslmode=disable").unwrap();
        assert_eq!(config.get_ssl_mode(), SslMode::Disable);
    }
}
