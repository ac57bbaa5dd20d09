//! The network layer: a QUIC connection to the server whose certificate is pinned or
//! validated by a configured CA ([`ServerTrust`]), one bidirectional stream per request,
//! and a long-lived subscription stream for events.

mod ca;
mod pin;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use ed25519_dalek::{Signer, SigningKey};
use quinn::{ConnectionError, RecvStream, SendStream};
use rathaus_protocol::{
    fingerprint, frame, limits, DeviceId, Event, Request, Response, SessionInfo, Signature, UserId,
    PROTOCOL_VERSION,
};
use rustls::client::danger::ServerCertVerifier;

pub use ca::CaTrust;

use crate::error::{ClientError, Result};

/// How the client decides that it talks to the real server (DESIGN §3).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ServerTrust {
    /// Exactly the certificate with this SHA-256 fingerprint (`SHA256:…`), as printed by
    /// `rathaus-server init`.
    Pinned(String),
    /// Any certificate that one of these CAs issued for the server name.
    Ca(CaTrust),
}

impl ServerTrust {
    /// The pinned fingerprint, if the server is trusted by pinning.
    pub fn fingerprint(&self) -> Option<&str> {
        match self {
            ServerTrust::Pinned(fp) => Some(fp),
            ServerTrust::Ca(_) => None,
        }
    }
}

/// The addresses of a server list: `host:port`, or several nodes of one cluster separated
/// by commas (`a:4433,b:4433`), tried in that order. Blanks around an address are ignored.
pub fn server_addresses(servers: &str) -> Vec<&str> {
    servers
        .split(',')
        .map(str::trim)
        .filter(|a| !a.is_empty())
        .collect()
}

/// The host part of `addr` (`host:port`, `[v6]:port`), the default TLS server name for CA
/// validation; of a list of addresses, that of the first.
pub fn host_of(addr: &str) -> &str {
    let addr = server_addresses(addr).into_iter().next().unwrap_or(addr);
    match addr.rsplit_once(':') {
        Some((h, _)) => h.trim_start_matches('[').trim_end_matches(']'),
        None => addr,
    }
}

/// Application close code the server uses when it ends an offboarded user's session.
pub const CLOSE_ACCOUNT_REMOVED: u32 = rathaus_protocol::close::ACCOUNT_REMOVED;

/// How long to wait for the QUIC + TLS handshake.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long `close` waits for the close frame to go out.
const CLOSE_GRACE: Duration = Duration::from_millis(10);
/// How long to wait for the answer to one request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// An open connection to a Rathaus server. Clones share the connection (requests on
/// clones run at once, each on its own stream).
#[derive(Debug, Clone)]
pub struct Connection {
    /// Kept alive as long as the connection; closing it frees the UDP socket.
    endpoint: quinn::Endpoint,
    /// The QUIC connection.
    conn: quinn::Connection,
}

impl Connection {
    /// Connects to `addr` (`host:port`) and checks that the server's certificate matches
    /// `pinned_fingerprint` (`SHA256:…`). A mismatch is refused with
    /// [`ClientError::FingerprintMismatch`].
    pub async fn connect(addr: &str, pinned_fingerprint: &str) -> Result<Self> {
        Self::connect_inner(
            None,
            addr,
            &ServerTrust::Pinned(pinned_fingerprint.to_owned()),
        )
        .await
    }

    /// Connects to `addr` (`host:port`) and trusts the server as `trust` says: a pinned
    /// fingerprint (as [`Connection::connect`]) or a certificate issued by one of the
    /// profile's CAs for its server name; a certificate that fails the CA checks is
    /// refused with [`ClientError::UntrustedCertificate`].
    pub async fn connect_with_trust(addr: &str, trust: &ServerTrust) -> Result<Self> {
        Self::connect_inner(None, addr, trust).await
    }

    /// Connects to the first reachable address of `servers` (see [`server_addresses`]),
    /// starting at index `first`; returns the connection and the index that answered. An
    /// address that cannot be reached ([`ClientError::Unreachable`]) passes to the next;
    /// any other failure (a wrong certificate, …) ends the attempt, since every node of a
    /// cluster serves the same certificate.
    pub async fn connect_any(
        servers: &str,
        first: usize,
        trust: &ServerTrust,
    ) -> Result<(Self, usize)> {
        let addrs = server_addresses(servers);
        if addrs.is_empty() {
            return Err(ClientError::Invalid(format!(
                "no server address in {servers:?} (expected host:port)"
            )));
        }
        let mut unreachable = None;
        for i in 0..addrs.len() {
            let at = (first + i) % addrs.len();
            match Self::connect_inner(None, addrs[at], trust).await {
                Ok(conn) => return Ok((conn, at)),
                Err(e @ ClientError::Unreachable { .. }) => {
                    tracing::info!(addr = addrs[at], error = %e, "server unreachable, trying the next");
                    unreachable = Some(e);
                }
                Err(e) => return Err(e),
            }
        }
        Err(unreachable.unwrap_or_else(|| ClientError::Invalid("no server address".into())))
    }

    /// Like [`Connection::connect`], but over a caller-built client endpoint: many
    /// connections can share one UDP socket (load tools), or the socket can be a custom
    /// [`quinn::AsyncUdpSocket`] (network simulation in tests). The pinned-certificate
    /// configuration is applied to this connection only; the endpoint's default client
    /// configuration is left alone.
    pub async fn connect_with_endpoint(
        endpoint: quinn::Endpoint,
        addr: &str,
        pinned_fingerprint: &str,
    ) -> Result<Self> {
        let trust = ServerTrust::Pinned(pinned_fingerprint.to_owned());
        Self::connect_inner(Some(endpoint), addr, &trust).await
    }

    async fn connect_inner(
        endpoint: Option<quinn::Endpoint>,
        addr: &str,
        trust: &ServerTrust,
    ) -> Result<Self> {
        let unreachable = |reason: String| ClientError::Unreachable {
            addr: addr.to_owned(),
            reason,
        };
        let remote = resolve(addr).await.map_err(unreachable)?;

        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let (verifier, refusal, server_name): (Arc<dyn ServerCertVerifier>, _, _) = match trust {
            ServerTrust::Pinned(pinned_fingerprint) => {
                let pinned = fingerprint::parse(pinned_fingerprint)
                    .map_err(|e| ClientError::Invalid(e.to_string()))?;
                let (verifier, seen) = pin::PinnedCertVerifier::new(pinned, provider.clone());
                (
                    Arc::new(verifier),
                    Refusal::Pinned { pinned, seen },
                    pinned_server_name(addr),
                )
            }
            ServerTrust::Ca(ca) => {
                let (verifier, refused) = ca.verifier(provider.clone())?;
                let name = ca.server_name().to_owned();
                (
                    Arc::new(verifier),
                    Refusal::Ca {
                        server_name: name.clone(),
                        refused,
                    },
                    name,
                )
            }
        };
        let mut tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| ClientError::Invalid(format!("TLS configuration: {e}")))?
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_no_client_auth();
        tls.alpn_protocols = vec![rathaus_protocol::ALPN.to_vec()];
        let quic_tls = quinn::crypto::rustls::QuicClientConfig::try_from(tls)
            .map_err(|e| ClientError::Invalid(format!("TLS configuration: {e}")))?;
        let mut config = quinn::ClientConfig::new(Arc::new(quic_tls));
        let mut transport = quinn::TransportConfig::default();
        transport.keep_alive_interval(Some(Duration::from_secs(15)));
        transport.max_idle_timeout(Some(
            quinn::IdleTimeout::try_from(Duration::from_secs(60))
                .map_err(|e| ClientError::Invalid(e.to_string()))?,
        ));
        config.transport_config(Arc::new(transport));

        let endpoint = match endpoint {
            Some(endpoint) => endpoint,
            None => {
                let bind: SocketAddr = if remote.is_ipv6() {
                    "[::]:0"
                        .parse()
                        .map_err(|_| unreachable("bad bind address".into()))?
                } else {
                    "0.0.0.0:0"
                        .parse()
                        .map_err(|_| unreachable("bad bind address".into()))?
                };
                quinn::Endpoint::client(bind)
                    .map_err(|e| unreachable(format!("cannot open a UDP socket: {e}")))?
            }
        };
        let connecting = endpoint
            .connect_with(config, remote, &server_name)
            .map_err(|e| unreachable(e.to_string()))?;
        // Where nothing listens, the host answers with ICMP "port unreachable", which quinn
        // does not report: the handshake would wait for CONNECT_TIMEOUT. A connected UDP
        // socket does hear it, so a refusal probe races the handshake and ends it at once.
        let handshake = async {
            tokio::select! {
                connected = connecting => Ok(connected),
                refused = refused_probe(remote) => Err(refused),
            }
        };
        let conn = match tokio::time::timeout(CONNECT_TIMEOUT, handshake).await {
            Err(_) => return Err(unreachable("no answer (timed out)".into())),
            Ok(Err(refused)) => return Err(unreachable(refused)),
            Ok(Ok(Err(e))) => {
                return Err(refusal
                    .error()
                    .unwrap_or_else(|| unreachable(e.to_string())))
            }
            Ok(Ok(Ok(conn))) => conn,
        };
        Ok(Self { endpoint, conn })
    }

    /// Sends one request on a new stream and returns the server's single answer.
    /// `Response::Error` becomes [`ClientError::Server`].
    pub async fn request(&self, request: &Request) -> Result<Response> {
        let (mut send, mut recv) = self.open().await?;
        let written = match request {
            Request::UploadChunk { .. } => write_bulk_frame(&mut send, request).await,
            _ => write_frame(&mut send, request).await,
        };
        written.map_err(|e| self.map(e))?;
        let _ = send.finish();
        let response = self.read_response(&mut recv).await?;
        Ok(response)
    }

    /// Sends chunk `index` of upload `upload` on a new stream, its bytes handed to the
    /// stream as they are (not copied into the frame), and returns the server's answer.
    pub async fn upload_chunk(&self, upload: u64, index: u32, bytes: Vec<u8>) -> Result<Response> {
        let (mut send, mut recv) = self.open().await?;
        let chunk = |bytes| Request::UploadChunk {
            upload,
            index,
            bytes,
        };
        let (head, tail) = frame::encode_split(chunk, bytes, limits::MAX_CONTROL_FRAME)
            .map_err(|e| self.map(FrameIoError::Protocol(e)))?;
        let mut parts = [head.into(), tail.into()];
        let mut rest = &mut parts[..];
        while !rest.is_empty() {
            let written = send
                .write_chunks(rest)
                .await
                .map_err(|e| self.map(FrameIoError::Stream(e.to_string())))?;
            rest = &mut rest[written.chunks..];
        }
        let _ = send.finish();
        self.read_response(&mut recv).await
    }

    /// Sends `request` (a `DownloadChunk`) on a new stream and returns the chunk in the
    /// frame it arrived in, with where its bytes start: taken out of the frame without a
    /// copy. `Response::Error` becomes [`ClientError::Server`].
    pub async fn download_chunk(&self, request: &Request) -> Result<(Vec<u8>, usize)> {
        let (mut send, mut recv) = self.open().await?;
        write_frame(&mut send, request)
            .await
            .map_err(|e| self.map(e))?;
        let _ = send.finish();
        let read = tokio::time::timeout(REQUEST_TIMEOUT, read_raw_frame(&mut recv)).await;
        let frame = match read {
            Err(_) => return Err(ClientError::Timeout(REQUEST_TIMEOUT.as_secs())),
            Ok(Err(e)) => return Err(self.map(e)),
            Ok(Ok(None)) => return Err(self.map(FrameIoError::Closed)),
            Ok(Ok(Some(frame))) => frame,
        };
        let body = &frame[frame::HEADER_LEN..];
        if let Some(at) = frame::split_offset(|bytes| Response::Chunk { bytes }, body) {
            return Ok((frame, frame::HEADER_LEN + at));
        }
        match frame::decode_body::<Response>(body) {
            Ok(Response::Error { code, message }) => Err(ClientError::Server { code, message }),
            Ok(_) => Err(ClientError::UnexpectedResponse("DownloadChunk")),
            Err(e) => Err(self.map(FrameIoError::Protocol(e))),
        }
    }

    /// Authenticates this connection as `user`'s device `device` by signing the server's
    /// challenge, bound to this TLS session (DESIGN §3).
    pub async fn authenticate(
        &self,
        user: &UserId,
        device: DeviceId,
        key: &SigningKey,
    ) -> Result<SessionInfo> {
        let (mut send, mut recv) = self.open().await?;
        let hello = Request::Hello {
            protocol: PROTOCOL_VERSION,
            user: user.clone(),
            device,
        };
        write_frame(&mut send, &hello)
            .await
            .map_err(|e| self.map(e))?;
        let nonce = match self.read_response(&mut recv).await? {
            Response::Challenge { nonce, .. } => nonce,
            _ => return Err(ClientError::UnexpectedResponse("Hello")),
        };
        let mut exporter = [0u8; 32];
        self.conn
            .export_keying_material(&mut exporter, rathaus_protocol::AUTH_EXPORTER_LABEL, b"")
            .map_err(|_| ClientError::ConnectionLost("TLS exporter unavailable".into()))?;
        let transcript = rathaus_protocol::auth_transcript(&exporter, &nonce);
        let signature = Signature::new(key.sign(&transcript).to_bytes());
        write_frame(&mut send, &Request::Prove { signature })
            .await
            .map_err(|e| self.map(e))?;
        let _ = send.finish();
        match self.read_response(&mut recv).await? {
            Response::Authenticated(info) => Ok(info),
            _ => Err(ClientError::UnexpectedResponse("Prove")),
        }
    }

    /// Opens the event subscription stream.
    pub async fn subscribe(&self) -> Result<Subscription> {
        let (mut send, mut recv) = self.open().await?;
        write_frame(&mut send, &Request::Subscribe)
            .await
            .map_err(|e| self.map(e))?;
        // Nothing more goes this way: the server lets go of its receiving half, and quinn
        // reuses that state for the connection's next stream instead of keeping it.
        let _ = send.finish();
        match self.read_response(&mut recv).await? {
            Response::Subscribed => Ok(Subscription {
                recv,
                conn: self.conn.clone(),
            }),
            _ => Err(ClientError::UnexpectedResponse("Subscribe")),
        }
    }

    /// Closes the connection politely and waits briefly for the close to be sent.
    ///
    /// `wait_idle` only returns after QUIC's draining period (three probe timeouts, about
    /// 90 ms even on loopback), which would dominate a short CLI command; the
    /// CONNECTION_CLOSE frame itself leaves within a few milliseconds, and if it is lost
    /// the server's idle timeout ends the connection anyway.
    pub async fn close(&self) {
        self.conn.close(0u32.into(), b"bye");
        let _ = tokio::time::timeout(CLOSE_GRACE, self.endpoint.wait_idle()).await;
    }

    /// The underlying QUIC connection (for tests and tools that need raw streams).
    pub fn raw(&self) -> &quinn::Connection {
        &self.conn
    }

    async fn open(&self) -> Result<(SendStream, RecvStream)> {
        self.conn.open_bi().await.map_err(|e| connection_error(&e))
    }

    async fn read_response(&self, recv: &mut RecvStream) -> Result<Response> {
        let read = tokio::time::timeout(REQUEST_TIMEOUT, read_frame::<Response>(recv)).await;
        match read {
            Err(_) => Err(ClientError::Timeout(REQUEST_TIMEOUT.as_secs())),
            Ok(Err(e)) => Err(self.map(e)),
            Ok(Ok(None)) => Err(self.map(FrameIoError::Closed)),
            Ok(Ok(Some(Response::Error { code, message }))) => {
                Err(ClientError::Server { code, message })
            }
            Ok(Ok(Some(r))) => Ok(r),
        }
    }

    fn map(&self, e: FrameIoError) -> ClientError {
        map_frame_error(&self.conn, e)
    }
}

/// A stream of pushed events.
#[derive(Debug)]
pub struct Subscription {
    /// Where events arrive.
    recv: RecvStream,
    /// For the close reason when the stream ends.
    conn: quinn::Connection,
}

impl Subscription {
    /// The next event; an error when the connection ends (with the reason, e.g.
    /// [`ClientError::AccountRemoved`]).
    pub async fn next(&mut self) -> Result<Event> {
        match read_frame::<Response>(&mut self.recv).await {
            Ok(Some(Response::Event(event))) => Ok(event),
            Ok(Some(Response::Error { code, message })) => {
                Err(ClientError::Server { code, message })
            }
            Ok(Some(_)) => Err(ClientError::UnexpectedResponse("Subscribe")),
            Ok(None) => Err(map_frame_error(&self.conn, FrameIoError::Closed)),
            Err(e) => Err(map_frame_error(&self.conn, e)),
        }
    }
}

/// Frame-level IO failure on one stream.
#[derive(Debug)]
pub(crate) enum FrameIoError {
    /// The stream ended (cleanly) before a frame.
    Closed,
    /// The stream or connection failed.
    Stream(String),
    /// The bytes were not a valid frame.
    Protocol(rathaus_protocol::ProtocolError),
}

fn map_frame_error(conn: &quinn::Connection, e: FrameIoError) -> ClientError {
    if let Some(reason) = conn.close_reason() {
        return connection_error(&reason);
    }
    match e {
        FrameIoError::Closed => ClientError::ConnectionLost("the server closed the stream".into()),
        FrameIoError::Stream(s) => ClientError::ConnectionLost(s),
        FrameIoError::Protocol(p) => ClientError::Protocol(p),
    }
}

fn connection_error(e: &ConnectionError) -> ClientError {
    match e {
        ConnectionError::ApplicationClosed(close)
            if close.error_code == quinn::VarInt::from_u32(CLOSE_ACCOUNT_REMOVED) =>
        {
            ClientError::AccountRemoved
        }
        ConnectionError::ApplicationClosed(close)
            if close.error_code
                == quinn::VarInt::from_u32(rathaus_protocol::close::SHUTTING_DOWN) =>
        {
            ClientError::ServerShuttingDown
        }
        ConnectionError::ApplicationClosed(close) => {
            let reason = String::from_utf8_lossy(&close.reason).into_owned();
            ClientError::ConnectionLost(format!("closed by the server: {reason}"))
        }
        other => ClientError::ConnectionLost(other.to_string()),
    }
}

/// Writes one frame. The encoded bytes are wiped afterwards: requests may carry a
/// password or enrollment code.
pub(crate) async fn write_frame<T: serde::Serialize>(
    send: &mut SendStream,
    value: &T,
) -> Result<(), FrameIoError> {
    let bytes = zeroize::Zeroizing::new(frame::encode(value).map_err(FrameIoError::Protocol)?);
    send.write_all(&bytes)
        .await
        .map_err(|e| FrameIoError::Stream(e.to_string()))
}

/// Writes one frame that holds no secret of the device's (a file's chunk, sealed in a
/// secret group): the stream takes the encoded bytes themselves, without a copy, and they
/// are not wiped afterwards as [`write_frame`] wipes every other request.
async fn write_bulk_frame<T: serde::Serialize>(
    send: &mut SendStream,
    value: &T,
) -> Result<(), FrameIoError> {
    let bytes = frame::encode(value).map_err(FrameIoError::Protocol)?;
    send.write_chunk(bytes.into())
        .await
        .map_err(|e| FrameIoError::Stream(e.to_string()))
}

/// Largest piece read from a stream at a time.
const READ_CHUNK: usize = 64 * 1024;

/// Reads one frame; `Ok(None)` if the stream ended cleanly before it. Goes through the
/// protocol's incremental decoder and reads only what the frame still needs, so memory
/// grows with the bytes that arrived, not with what the length prefix announces; a
/// stream that ends inside a frame is [`rathaus_protocol::ProtocolError::Truncated`].
pub(crate) async fn read_frame<T: serde::de::DeserializeOwned>(
    recv: &mut RecvStream,
) -> Result<Option<T>, FrameIoError> {
    match read_raw_frame(recv).await? {
        Some(frame) => frame::decode_body(&frame[frame::HEADER_LEN..])
            .map(Some)
            .map_err(FrameIoError::Protocol),
        None => Ok(None),
    }
}

/// Reads one frame as it arrived, header included, undecoded (see [`read_frame`]).
async fn read_raw_frame(recv: &mut RecvStream) -> Result<Option<Vec<u8>>, FrameIoError> {
    let mut decoder = frame::FrameDecoder::new(limits::MAX_CONTROL_FRAME);
    loop {
        if let Some(frame) = decoder.next_raw_frame().map_err(FrameIoError::Protocol)? {
            return Ok(Some(frame));
        }
        let want = decoder.wanted().clamp(1, READ_CHUNK);
        match recv.read_chunk(want, true).await {
            Ok(Some(chunk)) => {
                decoder.push(&chunk.bytes);
                // The server's answer, a file's chunk among them, goes into place once.
                decoder.reserve_announced();
            }
            Ok(None) => {
                decoder.finish().map_err(FrameIoError::Protocol)?;
                return Ok(None);
            }
            Err(e) => return Err(FrameIoError::Stream(e.to_string())),
        }
    }
}

/// Completes only when `remote` refuses UDP datagrams (nothing listens there), with the
/// reason; otherwise it never completes. It sends a single byte, which a QUIC server drops
/// as too short to be a packet.
async fn refused_probe(remote: SocketAddr) -> String {
    let bind: SocketAddr = if remote.is_ipv6() {
        SocketAddr::from((std::net::Ipv6Addr::UNSPECIFIED, 0))
    } else {
        SocketAddr::from((std::net::Ipv4Addr::UNSPECIFIED, 0))
    };
    let socket = match tokio::net::UdpSocket::bind(bind).await {
        Ok(socket) => socket,
        Err(_) => return std::future::pending().await,
    };
    if socket.connect(remote).await.is_err() || socket.send(&[0]).await.is_err() {
        return std::future::pending().await;
    }
    let mut buf = [0u8; 64];
    match socket.recv(&mut buf).await {
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
            "nothing is listening there (connection refused); is the server running, and is \
             the address right?"
                .to_owned()
        }
        // Any answer or other error says nothing about a refusal: the handshake decides.
        Ok(_) | Err(_) => std::future::pending().await,
    }
}

async fn resolve(addr: &str) -> Result<SocketAddr, String> {
    let mut addrs = tokio::net::lookup_host(addr)
        .await
        .map_err(|e| format!("cannot resolve {addr:?} (expected host:port): {e}"))?;
    addrs
        .next()
        .ok_or_else(|| format!("{addr:?} resolves to no address"))
}

/// Why the certificate verifier refused the server, read after a failed handshake (quinn
/// only reports a TLS alert).
enum Refusal {
    /// Pinning: the digest the server presented instead of the pinned one.
    Pinned {
        /// The pinned digest.
        pinned: [u8; 32],
        /// The digest seen on a mismatch.
        seen: Arc<std::sync::Mutex<Option<[u8; 32]>>>,
    },
    /// CA validation: rustls' reason for refusing the certificate.
    Ca {
        /// The name the certificate had to carry.
        server_name: String,
        /// rustls' error.
        refused: Arc<std::sync::Mutex<Option<rustls::Error>>>,
    },
}

impl Refusal {
    /// The error to report, if the verifier refused the certificate.
    fn error(&self) -> Option<ClientError> {
        match self {
            Refusal::Pinned { pinned, seen } => {
                let actual = seen.lock().ok().and_then(|s| *s)?;
                Some(ClientError::FingerprintMismatch {
                    expected: fingerprint::format(pinned),
                    actual: fingerprint::format(&actual),
                })
            }
            Refusal::Ca {
                server_name,
                refused,
            } => {
                let reason = refused.lock().ok().and_then(|r| r.clone())?;
                Some(ClientError::UntrustedCertificate {
                    server_name: server_name.clone(),
                    reason: ca::describe_refusal(&reason),
                })
            }
        }
    }
}

/// The TLS server name for a pinned certificate: the host part of `addr`, or `localhost`
/// for IP literals (the certificate is pinned, so the name only matters for SNI).
fn pinned_server_name(addr: &str) -> String {
    let host = host_of(addr);
    if host.parse::<std::net::IpAddr>().is_ok() || host.is_empty() {
        "localhost".to_owned()
    } else {
        host.to_owned()
    }
}
