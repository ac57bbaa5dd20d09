//! The delivery service's view of MLS (RFC 9420): parsing untrusted MLS bytes, the
//! public state of a secret group, device identities in leaves, and the removal key.
//!
//! The server never holds group secrets. It keeps each born group's openmls
//! [`PublicGroup`] — tree, group context, pending proposals — which is enough to verify
//! commits and proposals. openmls writes that state through a storage provider; the
//! server uses an in-memory one per operation and persists its key-value pairs as one
//! record ([`PublicStateRecord`]), so the state lands in the same atomic batch as the
//! log entry of the commit that produced it.

use ed25519_dalek::{Signer as _, SigningKey};
use openmls::messages::group_info::VerifiableGroupInfo;
use openmls::prelude::tls_codec::{Deserialize as _, Serialize as _};
use openmls::prelude::{
    BasicCredential, Ciphersuite, Credential, ExternalSender, GroupId, KeyPackage, KeyPackageIn,
    MlsMessageBodyIn, MlsMessageIn, ProposalStore, ProtocolVersion, PublicGroup, RatchetTreeIn,
    SignaturePublicKey,
};
use openmls_memory_storage::MemoryStorage;
use openmls_rust_crypto::RustCrypto;
use openmls_traits::signatures::{Signer, SignerError};
use openmls_traits::types::SignatureScheme;
use rathaus_protocol::mls::DeviceCredential;
use rathaus_protocol::{DeviceId, GroupHandle, UserId};

use super::refused::MlsRefused;
use super::Refusal;
use crate::store::PublicStateRecord;

/// The one ciphersuite Rathaus uses (DESIGN §2).
pub(crate) const CIPHERSUITE: Ciphersuite =
    Ciphersuite::MLS_128_DHKEMX25519_AES128GCM_SHA256_Ed25519;

/// Credential identity of the server in the `external_senders` extension.
pub(crate) const SERVER_IDENTITY: &[u8] = rathaus_protocol::mls::SERVER_IDENTITY.as_bytes();

/// The MLS group id of a secret group: `"rathaus:<slug>/secret"`.
pub(crate) fn group_id(group: &GroupHandle) -> Vec<u8> {
    rathaus_protocol::mls::group_id(group)
}

/// The server's removal key: the only external sender of every secret group, used to
/// sign Remove proposals when a user leaves a roster (DESIGN §5.5).
pub struct RemovalKey {
    /// The Ed25519 key; its public half is in every group's `external_senders`.
    key: SigningKey,
}

impl RemovalKey {
    /// Wraps the key read from the data directory.
    pub fn new(key: SigningKey) -> Self {
        Self { key }
    }

    /// The public key clients put into `external_senders`.
    pub fn public_key(&self) -> [u8; 32] {
        self.key.verifying_key().to_bytes()
    }

    /// The one `external_senders` entry a secret group must have.
    pub(crate) fn external_sender(&self) -> ExternalSender {
        ExternalSender::new(
            SignaturePublicKey::from(self.public_key().to_vec()),
            BasicCredential::new(SERVER_IDENTITY.to_vec()).into(),
        )
    }
}

impl std::fmt::Debug for RemovalKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the secret half.
        f.debug_struct("RemovalKey")
            .field("public_key", &self.public_key())
            .finish()
    }
}

impl Signer for RemovalKey {
    fn sign(&self, payload: &[u8]) -> Result<Vec<u8>, SignerError> {
        Ok(self.key.sign(payload).to_bytes().to_vec())
    }

    fn signature_scheme(&self) -> SignatureScheme {
        SignatureScheme::ED25519
    }
}

/// The device a leaf credential names, in the one canonical form both sides accept
/// ([`DeviceCredential`]).
pub(crate) fn device_of(credential: &Credential) -> Option<(UserId, DeviceId)> {
    let basic = BasicCredential::try_from(credential.clone()).ok()?;
    let device = DeviceCredential::parse(basic.identity())?;
    Some((device.user, device.device))
}

/// Parses MLS bytes; `Invalid` with `what` on garbage.
pub(crate) fn parse_message(bytes: &[u8], what: &'static str) -> Result<MlsMessageIn, Refusal> {
    MlsMessageIn::tls_deserialize_exact(bytes).map_err(|_| MlsRefused::Undecodable(what).into())
}

/// A KeyPackage `MLSMessage`, signature-checked, in Rathaus' ciphersuite.
pub(crate) fn validate_key_package(
    crypto: &RustCrypto,
    bytes: &[u8],
) -> Result<KeyPackage, Refusal> {
    let key_package: KeyPackageIn = match parse_message(bytes, "a KeyPackage")?.extract() {
        MlsMessageBodyIn::KeyPackage(kp) => kp,
        _ => return Err(MlsRefused::NotAKeyPackage.into()),
    };
    let key_package = key_package
        .validate(crypto, ProtocolVersion::Mls10)
        .map_err(|e| MlsRefused::KeyPackage(e.to_string()))?;
    if key_package.ciphersuite() != CIPHERSUITE {
        return Err(MlsRefused::KeyPackageSuite.into());
    }
    Ok(key_package)
}

/// A GroupInfo `MLSMessage` (signature not yet verified).
pub(crate) fn parse_group_info(bytes: &[u8]) -> Result<VerifiableGroupInfo, Refusal> {
    match parse_message(bytes, "the GroupInfo")?.extract() {
        MlsMessageBodyIn::GroupInfo(info) => Ok(info),
        _ => Err(MlsRefused::NotAGroupInfo.into()),
    }
}

/// A TLS-serialized ratchet tree.
pub(crate) fn parse_ratchet_tree(bytes: &[u8]) -> Result<RatchetTreeIn, Refusal> {
    RatchetTreeIn::tls_deserialize_exact(bytes).map_err(|_| MlsRefused::RatchetTree.into())
}

/// A secret group's public state, loaded for one operation.
pub(crate) struct PublicState {
    /// openmls' storage for this operation; persisted as a [`PublicStateRecord`].
    pub(crate) storage: MemoryStorage,
    /// The group.
    pub(crate) group: PublicGroup,
}

impl PublicState {
    /// Builds the state of a new group from its first GroupInfo and tree; openmls checks
    /// the tree against the GroupInfo and the GroupInfo's signature.
    pub(crate) fn from_external(
        crypto: &RustCrypto,
        ratchet_tree: RatchetTreeIn,
        group_info: VerifiableGroupInfo,
    ) -> Result<Self, Refusal> {
        let storage = MemoryStorage::default();
        let (group, _info) = PublicGroup::from_external(
            crypto,
            &storage,
            ratchet_tree,
            group_info,
            ProposalStore::new(),
        )
        .map_err(|e| MlsRefused::Group(e.to_string()))?;
        Ok(Self { storage, group })
    }

    /// Loads the persisted state.
    pub(crate) fn load(record: PublicStateRecord, group: &GroupHandle) -> Result<Self, Refusal> {
        let storage = MemoryStorage::default();
        {
            let mut values = storage
                .values
                .write()
                .map_err(|_| Refusal::internal("MLS storage lock poisoned"))?;
            values.extend(record.values);
        }
        let loaded = PublicGroup::load(&storage, &GroupId::from_slice(&group_id(group)))
            .map_err(|e| Refusal::internal(format!("cannot load MLS state of {group}: {e}")))?
            .ok_or_else(|| Refusal::internal(format!("MLS state of {group} is incomplete")))?;
        Ok(Self {
            storage,
            group: loaded,
        })
    }

    /// The state to persist.
    pub(crate) fn record(&self) -> Result<PublicStateRecord, Refusal> {
        let values = self
            .storage
            .values
            .read()
            .map_err(|_| Refusal::internal("MLS storage lock poisoned"))?;
        let mut values: Vec<(Vec<u8>, Vec<u8>)> =
            values.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        values.sort();
        Ok(PublicStateRecord { values })
    }

    /// The current epoch.
    pub(crate) fn epoch(&self) -> u64 {
        self.group.group_context().epoch().as_u64()
    }

    /// The TLS-serialized ratchet tree of the current epoch.
    pub(crate) fn ratchet_tree(&self) -> Result<Vec<u8>, Refusal> {
        self.group
            .export_ratchet_tree()
            .tls_serialize_detached()
            .map_err(|e| Refusal::internal(format!("cannot export ratchet tree: {e}")))
    }
}
