//! The UDP socket under the QUIC endpoint.
//!
//! A server with thousands of connections receives bursts: a post fanned out to a large
//! group is answered by an ACK from every recipient within a millisecond or two, and the
//! Linux default receive buffer (~208 KiB) holds only about 150 full-sized datagrams. What
//! does not fit is dropped by the kernel and has to be recovered by QUIC's loss detection,
//! which costs a probe timeout (tens to hundreds of milliseconds) per dropped packet. So
//! the socket asks for large buffers; the kernel caps them at `net.core.rmem_max` /
//! `net.core.wmem_max`, and a warning names the sysctl when the cap bites.

use std::io;
use std::net::{SocketAddr, UdpSocket};

use socket2::{Domain, Protocol, Socket, Type};

/// Send and receive buffer the server asks for: room for a few thousand datagrams.
pub const SERVER_SOCKET_BUFFER: usize = 8 << 20;

/// The buffer sizes a socket got.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SocketBuffers {
    /// Receive buffer, as the kernel reports it.
    pub recv: usize,
    /// Send buffer, as the kernel reports it.
    pub send: usize,
}

/// Binds a UDP socket on `addr` and asks for `buffer` bytes of send and receive buffer.
/// Returns the socket and the sizes the kernel granted (Linux reports twice the usable
/// size; a request above the sysctl cap is silently reduced to it).
pub fn bind(addr: SocketAddr, buffer: usize) -> io::Result<(UdpSocket, SocketBuffers)> {
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    // A failing size request is not fatal: the defaults still work, only bursts suffer.
    let _ = socket.set_recv_buffer_size(buffer);
    let _ = socket.set_send_buffer_size(buffer);
    socket.bind(&addr.into())?;
    let buffers = SocketBuffers {
        recv: socket.recv_buffer_size()?,
        send: socket.send_buffer_size()?,
    };
    Ok((socket.into(), buffers))
}

/// The endpoint configuration for a server whose stateless-reset secret is `secret`
/// (see `DataDir::reset_key`): reset tokens and connection ids both derive from it, so a
/// restarted server recognises the ids it handed out before and resets their connections.
pub(crate) fn endpoint_config(secret: &[u8; 32]) -> quinn::EndpointConfig {
    use sha2::{Digest, Sha256};
    let reset = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret);
    let mut config = quinn::EndpointConfig::new(std::sync::Arc::new(reset));
    // A separate key for the connection ids, derived so the two never coincide.
    let digest = Sha256::new()
        .chain_update(b"rathaus quic connection ids")
        .chain_update(secret)
        .finalize();
    let mut cid_key = [0u8; 8];
    cid_key.copy_from_slice(&digest[..8]);
    let cid_key = u64::from_le_bytes(cid_key);
    config.cid_generator(move || {
        Box::new(quinn_proto::HashedConnectionIdGenerator::from_key(cid_key))
    });
    config
}

/// Binds the server's socket with the `wanted` buffers and warns when the kernel granted
/// much less than asked.
pub(crate) fn bind_server(addr: SocketAddr, wanted: SocketBuffers) -> io::Result<UdpSocket> {
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    // A failing size request is not fatal: the defaults still work, only bursts suffer.
    let _ = socket.set_recv_buffer_size(wanted.recv);
    let _ = socket.set_send_buffer_size(wanted.send);
    socket.bind(&addr.into())?;
    let buffers = SocketBuffers {
        recv: socket.recv_buffer_size()?,
        send: socket.send_buffer_size()?,
    };
    // Linux reports double the size it grants; a figure below the request itself means
    // the sysctl cap is less than half of what was asked for.
    if buffers.recv < wanted.recv {
        tracing::warn!(
            granted = buffers.recv,
            wanted = wanted.recv,
            "UDP receive buffer capped by the kernel; with many connected clients raise \
             net.core.rmem_max (sysctl) to at least {}",
            wanted.recv
        );
    }
    if buffers.send < wanted.send {
        tracing::warn!(
            granted = buffers.send,
            wanted = wanted.send,
            "UDP send buffer capped by the kernel; raise net.core.wmem_max (sysctl) to at \
             least {}",
            wanted.send
        );
    }
    tracing::debug!(
        recv = buffers.recv,
        send = buffers.send,
        "UDP socket buffers"
    );
    Ok(socket.into())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    /// The kernel grants what was asked for up to its cap (Linux: `net.core.rmem_max`).
    #[test]
    fn asks_the_kernel_for_large_buffers() {
        let (socket, buffers) = bind("127.0.0.1:0".parse().unwrap(), SERVER_SOCKET_BUFFER).unwrap();
        assert!(socket.local_addr().unwrap().port() != 0);
        let Ok(cap) = std::fs::read_to_string("/proc/sys/net/core/rmem_max") else {
            return; // not Linux: nothing to compare with
        };
        let cap: usize = cap.trim().parse().unwrap();
        assert!(
            buffers.recv >= SERVER_SOCKET_BUFFER.min(cap),
            "asked for {SERVER_SOCKET_BUFFER}, cap {cap}, got {}",
            buffers.recv
        );
    }
}
