//! Connection authentication (DESIGN §3): `Hello` → `Challenge(nonce)` → `Prove(signature
//! over "rathaus-auth-v1" ‖ TLS exporter ‖ nonce)` → `Authenticated`.
//!
//! A challenge is issued even for unknown users and devices, so `Hello` does not reveal
//! who exists; every way of failing the proof gets the same generic answer.
//!
//! Proofs are not throttled: an Ed25519 signature over a fresh nonce bound to this TLS
//! session cannot be guessed, so backing a user off after failed proofs would protect
//! nothing and would let anyone lock a named colleague out of their own device. Failed
//! proofs are counted and logged; the transport closes a connection that keeps failing.

use std::net::IpAddr;

use ed25519_dalek::{Signature as Ed25519Signature, VerifyingKey};
use rand::rngs::OsRng;
use rand::RngCore;
use rathaus_protocol::{
    auth_transcript, DeviceId, SessionInfo, Signature, UserId, PROTOCOL_VERSION,
};

use super::refused::SessionRefused;
use super::{Refusal, Service, Session};

/// An issued challenge, waiting for its proof on the same stream.
#[derive(Debug, Clone)]
pub struct PendingAuth {
    /// Who claims to connect.
    pub user: UserId,
    /// As which device.
    pub device: DeviceId,
    /// The random nonce the device must sign.
    pub nonce: [u8; 32],
}

impl Service {
    /// Answers `Hello`: a fresh nonce, unless the protocol differs. Failed password or code
    /// attempts never refuse it.
    pub fn challenge(
        &self,
        peer: IpAddr,
        protocol: u16,
        user: UserId,
        device: DeviceId,
    ) -> Result<PendingAuth, Refusal> {
        check_version(protocol)?;
        let user = self.canonical_user(&user)?;
        tracing::debug!(%peer, %user, "challenge");
        let mut nonce = [0u8; 32];
        OsRng.fill_bytes(&mut nonce);
        Ok(PendingAuth {
            user,
            device,
            nonce,
        })
    }

    /// Answers `Prove`: checks the signature over the transcript bound to this TLS session.
    pub fn prove(
        &self,
        peer: IpAddr,
        pending: &PendingAuth,
        exporter: &[u8; 32],
        signature: &Signature,
    ) -> Result<(Session, SessionInfo), Refusal> {
        let user = self.db.user(&pending.user)?;
        let key = user.as_ref().filter(|u| !u.removed).and_then(|u| {
            u.active_devices()
                .find(|d| d.id == pending.device)
                .map(|d| d.key)
        });
        let verified = key.is_some_and(|key| {
            let transcript = auth_transcript(exporter, &pending.nonce);
            VerifyingKey::from_bytes(&key.0).is_ok_and(|vk| {
                vk.verify_strict(
                    &transcript,
                    &Ed25519Signature::from_bytes(&signature.to_bytes()),
                )
                .is_ok()
            })
        });
        match (verified, user) {
            (true, Some(user)) => {
                let session = Session {
                    user: pending.user.clone(),
                    device: pending.device,
                };
                let info = self.session_info(&user, pending.device);
                Ok((session, info))
            }
            _ => {
                let n = self
                    .throttle_counters
                    .failed_proofs
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
                    + 1;
                if super::attempts::worth_logging(n) {
                    tracing::warn!(
                        %peer,
                        user = %pending.user,
                        device = %pending.device,
                        failed_proofs = n,
                        "device-key proof failed"
                    );
                }
                Err(SessionRefused::AuthFailed.into())
            }
        }
    }
}

pub(super) fn check_version(protocol: u16) -> Result<(), Refusal> {
    if protocol == PROTOCOL_VERSION {
        return Ok(());
    }
    Err(SessionRefused::VersionMismatch {
        server: PROTOCOL_VERSION,
        client: protocol,
    }
    .into())
}
