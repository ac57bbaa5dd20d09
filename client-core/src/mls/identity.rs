//! Who a group member is: the device identity in its MLS credential and the
//! device's Ed25519 key, which doubles as its MLS signature key.

use std::fmt;

use ed25519_dalek::{Signer as _, SigningKey};
use openmls::prelude::{BasicCredential, Credential, CredentialWithKey, SignaturePublicKey};
use openmls_traits::signatures::{Signer, SignerError};
use openmls_traits::types::SignatureScheme;

use rathaus_protocol::mls::DeviceCredential;
use rathaus_protocol::UserId;

use super::MlsError;

/// The identity carried in a member's MLS `BasicCredential`:
/// the UTF-8 bytes `"<user_id>/<device_id>"`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DeviceIdentity {
    user_id: String,
    device_id: String,
    /// The same identity, parsed.
    credential: DeviceCredential,
}

impl DeviceIdentity {
    /// Builds an identity: a personnel number and a device number in canonical
    /// decimal, the one credential form both sides accept
    /// ([`DeviceCredential`](rathaus_protocol::mls::DeviceCredential)).
    pub fn new(user_id: &str, device_id: &str) -> Result<Self, MlsError> {
        let text = format!("{user_id}/{device_id}");
        let credential = DeviceCredential::parse(text.as_bytes())
            .ok_or_else(|| MlsError::InvalidIdentity(text))?;
        Ok(Self {
            user_id: user_id.to_owned(),
            device_id: device_id.to_owned(),
            credential,
        })
    }

    /// The identity as the protocol's credential type.
    pub fn credential_id(&self) -> &DeviceCredential {
        &self.credential
    }

    /// Parses credential identity bytes of the form `"<user_id>/<device_id>"`.
    pub fn parse(bytes: &[u8]) -> Result<Self, MlsError> {
        let invalid = || MlsError::InvalidIdentity(String::from_utf8_lossy(bytes).into_owned());
        let text = std::str::from_utf8(bytes).map_err(|_| invalid())?;
        let (user_id, device_id) = text.split_once('/').ok_or_else(invalid)?;
        Self::new(user_id, device_id).map_err(|_| invalid())
    }

    /// Reads the identity out of a member's credential, which must be a
    /// `BasicCredential`.
    pub fn from_credential(credential: &Credential) -> Result<Self, MlsError> {
        let basic = BasicCredential::try_from(credential.clone())
            .map_err(|_| MlsError::InvalidIdentity("not a basic credential".to_owned()))?;
        Self::parse(basic.identity())
    }

    /// The personnel number of the user owning the device.
    pub fn user_id(&self) -> &str {
        &self.user_id
    }

    /// The personnel number of the user owning the device, typed.
    pub fn user(&self) -> &UserId {
        &self.credential.user
    }

    /// The device id, unique per user.
    pub fn device_id(&self) -> &str {
        &self.device_id
    }

    /// The credential identity bytes, `"<user_id>/<device_id>"`.
    pub fn to_bytes(&self) -> Vec<u8> {
        self.to_string().into_bytes()
    }

    pub(crate) fn credential(&self) -> Credential {
        BasicCredential::new(self.to_bytes()).into()
    }
}

impl fmt::Display for DeviceIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.user_id, self.device_id)
    }
}

/// The device's Ed25519 key as an openmls [`Signer`].
///
/// The same key proves possession at login (DESIGN §3); the contexts cannot
/// collide because MLS signs `SignContent` structures with an `"MLS 1.0 "`
/// label prefix, while the login proof starts with `"rathaus-auth-v1"`.
pub struct DeviceSigner {
    key: SigningKey,
}

impl DeviceSigner {
    /// Wraps a device key.
    pub fn new(key: SigningKey) -> Self {
        Self { key }
    }

    /// The 32-byte Ed25519 public key, which is the MLS signature key.
    pub fn public_key(&self) -> [u8; 32] {
        self.key.verifying_key().to_bytes()
    }

    pub(crate) fn credential_with_key(&self, identity: &DeviceIdentity) -> CredentialWithKey {
        CredentialWithKey {
            credential: identity.credential(),
            signature_key: SignaturePublicKey::from(self.public_key().to_vec()),
        }
    }
}

impl fmt::Debug for DeviceSigner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print the secret half.
        f.debug_struct("DeviceSigner")
            .field("public_key", &self.public_key())
            .finish()
    }
}

impl Signer for DeviceSigner {
    fn sign(&self, payload: &[u8]) -> Result<Vec<u8>, SignerError> {
        Ok(self.key.sign(payload).to_bytes().to_vec())
    }

    fn signature_scheme(&self) -> SignatureScheme {
        SignatureScheme::ED25519
    }
}
