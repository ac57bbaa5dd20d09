//! The client's MLS engine (RFC 9420) for secret groups.
//!
//! [`MlsEngine`] owns the profile's SQLite connection and keeps every piece
//! of MLS state (key packages, groups, secret trees, pending proposals and
//! commits) in openmls' tables inside that file, written through on every
//! change, so the connection can be dropped and reopened between any two
//! operations, and a crash loses at most the operation in flight. Each
//! operation runs inside a SQLite savepoint, so a failed operation leaves no
//! half-written state, and an operation called inside the caller's own
//! transaction commits or rolls back together with the caller's history rows.
//!
//! The last group used is kept in memory as well, so a run of operations on
//! one group (a page of incoming messages) does not re-read and re-decode its
//! ratchet tree every time. The copy is used only while it provably matches
//! the file: every write of the engine also writes a fresh random *state
//! token* in the same savepoint, and the copy remembers the token it belongs
//! to. A rollback (of the engine's savepoint or of the caller's transaction)
//! or a write by another connection changes the token, and the group is read
//! from SQLite again.
//!
//! A page of incoming application messages can be processed with
//! [`MlsEngine::in_batch`]: openmls rewrites a group's whole message secrets
//! store (every member's leaf once per kept past epoch) after each decrypted
//! message, and inside one transaction only the last write counts, so the
//! engine holds those writes back and writes the store once, before the
//! caller's transaction commits; every other operation writes it first.
//!
//! The engine is sans-IO: it turns bytes into bytes and typed results; the
//! sync layer moves them to and from the delivery service.
//!
//! Wire formats follow DESIGN §5.6: handshake messages (proposals, commits)
//! go out as PublicMessage so the server can validate them, application
//! messages always as PrivateMessage. The ratchet tree extension is off:
//! the server serves the tree to joiners.
//!
//! Own commits are *staged*, not applied: the server decides which commit of
//! an epoch wins. After the server accepted it, call
//! [`MlsEngine::merge_pending_commit`]; after a `StaleEpoch`, call
//! [`MlsEngine::discard_pending_commit`], process what came in and retry.
//!
//! ```
//! use rathaus_client::mls::{DeviceIdentity, MlsEngine};
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let dir = tempfile::tempdir()?;
//! let key = ed25519_dalek::SigningKey::from_bytes(&[7; 32]);
//! let me = DeviceIdentity::new("P1001", "1")?;
//! let engine = MlsEngine::open(&dir.path().join("profile.sqlite"), key, me)?;
//! let server_removal_key = [9u8; 32];
//! engine.create_group(b"bauamt/secret", &server_removal_key)?;
//! assert_eq!(engine.epoch(b"bauamt/secret")?, 0);
//! # Ok(()) }
//! ```

mod error;
mod identity;
mod provider;
#[cfg(test)]
mod tests;

use std::cell::{Cell, RefCell};
use std::path::Path;

use ed25519_dalek::SigningKey;
use openmls::prelude::tls_codec::{Deserialize as _, Serialize as _};
use openmls::prelude::{
    BasicCredential, Capabilities, Ciphersuite, ContentType, Credential, Extension, ExtensionType,
    Extensions, ExternalSender, GroupContext, GroupId, KeyPackage, KeyPackageIn, LeafNodeIndex,
    MlsGroup, MlsGroupCreateConfig, MlsGroupJoinConfig, MlsMessageBodyIn, MlsMessageIn,
    MlsMessageOut, ProcessedMessageContent, Proposal, ProtocolVersion, QueuedProposal,
    RatchetTreeIn, RequiredCapabilitiesExtension, Sender, SignaturePublicKey, StagedWelcome,
    UnknownExtension, MIXED_PLAINTEXT_WIRE_FORMAT_POLICY,
};
use openmls_rust_crypto::RustCrypto;
use openmls_traits::OpenMlsProvider as _;
use rathaus_protocol::mls::{
    judge_commit, CommitFacts, Committer, Leaf, Roster, Verdict, WelcomeFacts, SERVER_IDENTITY,
};
use rusqlite::{Connection, OptionalExtension as _};

pub use error::MlsError;
pub use identity::{DeviceIdentity, DeviceSigner};
pub use provider::{
    HeldSecrets, JsonCodec, MlsStorage, SqliteMlsProvider, StateCodec, StateCodecError,
};

/// The one ciphersuite Rathaus uses (DESIGN §2).
pub const CIPHERSUITE: Ciphersuite = Ciphersuite::MLS_128_DHKEMX25519_AES128GCM_SHA256_Ed25519;

/// How many past resumption secrets a group keeps; Rathaus uses no
/// resumption PSKs itself, but a small store costs nothing.
const RESUMPTION_PSKS: usize = 8;

/// How many past epochs' message secrets a member keeps. A committer may
/// merge its own commit before it fetched application messages sent just
/// before it in the log; those stay readable. Forward secrecy is delayed by
/// at most this many epochs.
pub const PAST_EPOCHS: usize = 3;

/// Extension type of the Rathaus group policy in the group context (defined with the
/// rest of the client–server contract in `rathaus_protocol::mls`).
pub use rathaus_protocol::mls::GROUP_POLICY_EXTENSION;

/// Leaf capabilities of every Rathaus device: a group context extension must
/// be supported by every member (RFC 9420 §12.1.7), so key packages and the
/// creator's leaf announce the group policy extension.
fn rathaus_capabilities() -> Capabilities {
    Capabilities::builder()
        .extensions(vec![
            ExtensionType::LastResort,
            ExtensionType::Unknown(GROUP_POLICY_EXTENSION),
        ])
        .build()
}

/// A device's MLS state: its key packages and every group it is in.
// Debug is written by hand below: the signer must never be printed.
pub struct MlsEngine {
    /// The profile's SQLite file; openmls' tables live next to the client's own.
    connection: Connection,
    /// Crypto and randomness for openmls.
    crypto: RustCrypto,
    /// The device key, which signs leaves, key packages and handshake messages.
    signer: DeviceSigner,
    /// This device's identity, as put into its credentials.
    identity: DeviceIdentity,
    /// The last group used, with the state token it matches (see the module docs).
    cache: RefCell<Option<CachedGroup>>,
    /// The group an operation in flight changed, to become `cache` once its savepoint
    /// is released.
    changed: RefCell<Option<MlsGroup>>,
    /// Message secrets of `cache` not yet written to the file (see [`MlsEngine::in_batch`]).
    held: HeldSecrets,
    /// Inside [`MlsEngine::in_batch`]: application messages may hold their writes back.
    batch: Cell<bool>,
}

/// A group as loaded from (or written to) SQLite at the state `token`.
struct CachedGroup {
    token: StateToken,
    group: MlsGroup,
}

/// Random value written with every change of the engine's state; equal tokens mean
/// equal state.
type StateToken = [u8; 16];

impl std::fmt::Debug for MlsEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MlsEngine")
            .field("identity", &self.identity)
            .finish_non_exhaustive()
    }
}

/// Key packages to upload to the delivery service (DESIGN §5.3).
///
/// Each entry is a TLS-serialized `MLSMessage` with wire format
/// `mls_key_package` (an `MlsMessageOut`), which is what
/// [`MlsEngine::add_members`] takes.
#[derive(Debug, Clone)]
pub struct KeyPackageBatch {
    /// One-time packages; each is consumed by the Welcome that uses it.
    pub one_time: Vec<Vec<u8>>,
    /// The last-resort package, handed out when the one-time ones ran out;
    /// its private keys stay until replaced.
    pub last_resort: Vec<u8>,
}

/// A staged commit of this device, to be sent to the delivery service.
#[derive(Debug, Clone)]
pub struct CommitOutput {
    /// The commit, a PublicMessage `MLSMessage`.
    pub commit: Vec<u8>,
    /// The Welcome for added members, if the commit adds any.
    pub welcome: Option<Vec<u8>>,
    /// The GroupInfo `MLSMessage` of the epoch the commit creates (without
    /// ratchet tree), for the server to keep.
    pub group_info: Option<Vec<u8>>,
    /// The epoch the commit creates once merged.
    pub new_epoch: u64,
}

/// A group member as listed by [`MlsEngine::members`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupMember {
    /// Who the member is.
    pub identity: DeviceIdentity,
    /// The member's Ed25519 signature key (its device key).
    pub signature_key: Vec<u8>,
    /// The member's position in the ratchet tree.
    pub leaf_index: u32,
}

/// Who sent a proposal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProposalSender {
    /// A group member.
    Member(DeviceIdentity),
    /// An entry of the `external_senders` extension: the server.
    External,
}

/// What a proposal asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProposalKind {
    /// Add the device of this key package.
    Add(DeviceIdentity),
    /// Remove this member.
    Remove(DeviceIdentity),
    /// The sender replaces its own leaf.
    Update,
    /// Anything else (PSK, group context extensions, ...).
    Other,
}

/// The outcome of a commit that the membership rule accepted and that was merged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommitSummary {
    /// What the commit changed, as judged from the tree (committer, devices added and
    /// removed, the policy change).
    pub verdict: Verdict,
    /// Whether this device was removed; the group is then inactive.
    pub self_removed: bool,
    /// The epoch after the commit.
    pub epoch: u64,
}

/// A group joined from a Welcome.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Joined {
    /// The MLS group id.
    pub group_id: Vec<u8>,
    /// The epoch joined, read from the Welcome itself.
    pub epoch: u64,
}

/// What an incoming message turned out to be.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Incoming {
    /// An application message, decrypted.
    Application {
        /// The member who sent it.
        sender: DeviceIdentity,
        /// The decrypted payload (Rathaus message content).
        plaintext: Vec<u8>,
    },
    /// A commit, validated and merged: the group is in the next epoch.
    Commit(CommitSummary),
    /// A proposal, validated and stored until a commit covers it.
    Proposal {
        /// Who proposed.
        sender: ProposalSender,
        /// What was proposed.
        kind: ProposalKind,
    },
}

impl MlsEngine {
    /// Opens (or creates) the MLS state in the SQLite file at `path`.
    pub fn open(
        path: &Path,
        device_key: SigningKey,
        identity: DeviceIdentity,
    ) -> Result<Self, MlsError> {
        Self::with_connection(Connection::open(path)?, device_key, identity)
    }

    /// Uses an already open connection to the profile's SQLite file, creating
    /// the openmls tables in it if needed.
    pub fn with_connection(
        mut connection: Connection,
        device_key: SigningKey,
        identity: DeviceIdentity,
    ) -> Result<Self, MlsError> {
        SqliteMlsProvider::migrate(&mut connection)?;
        // Every operation runs in a savepoint, and SQLite copies each page an operation
        // changes to a sub-journal first, so the savepoint can be rolled back. Kept in
        // memory, not in a temporary file: it only serves rollbacks within the open
        // transaction and is never needed after a crash (the WAL is), and for a large
        // group a decrypted message changes hundreds of KiB of state, all written to
        // that file once more otherwise.
        connection.pragma_update(None, "temp_store", "MEMORY")?;
        connection.execute_batch(
            "CREATE TABLE IF NOT EXISTS rathaus_mls_state (
                 id INTEGER PRIMARY KEY CHECK (id = 0),
                 token BLOB NOT NULL
             )",
        )?;
        Ok(Self {
            connection,
            crypto: RustCrypto::default(),
            signer: DeviceSigner::new(device_key),
            identity,
            cache: RefCell::new(None),
            changed: RefCell::new(None),
            held: HeldSecrets::default(),
            batch: Cell::new(false),
        })
    }

    /// The connection, for the client's own tables in the same file.
    pub fn connection(&self) -> &Connection {
        &self.connection
    }

    /// Gives the connection back, ending the engine.
    pub fn into_connection(self) -> Connection {
        self.connection
    }

    /// This device's identity.
    pub fn identity(&self) -> &DeviceIdentity {
        &self.identity
    }

    /// This device's Ed25519 public key, its MLS signature key.
    pub fn signature_key(&self) -> [u8; 32] {
        self.signer.public_key()
    }

    /// Generates `count` one-time key packages and one last-resort package;
    /// their private keys are stored in the profile.
    pub fn generate_key_packages(&self, count: usize) -> Result<KeyPackageBatch, MlsError> {
        self.atomically(|provider| {
            let credential = self.signer.credential_with_key(&self.identity);
            let build = |last_resort: bool| -> Result<Vec<u8>, MlsError> {
                // RFC 9420 §10.1: an extension in a key package must be listed
                // in its leaf's capabilities, or peers reject the package.
                let mut builder =
                    KeyPackage::builder().leaf_node_capabilities(rathaus_capabilities());
                if last_resort {
                    builder = builder.mark_as_last_resort();
                }
                let bundle = builder
                    .build(CIPHERSUITE, provider, &self.signer, credential.clone())
                    .map_err(|e| MlsError::protocol("generate key package", e))?;
                encode(MlsMessageOut::from(bundle.key_package().clone()))
            };
            let one_time = (0..count)
                .map(|_| build(false))
                .collect::<Result<Vec<_>, _>>()?;
            Ok(KeyPackageBatch {
                one_time,
                last_resort: build(true)?,
            })
        })
    }

    /// Creates a group at epoch 0 with this device as its only member.
    ///
    /// `server_removal_key` (Ed25519 public key) becomes the only entry of the
    /// `external_senders` extension, so the server can propose removals
    /// (DESIGN §5.2, §5.5).
    pub fn create_group(
        &self,
        group_id: &[u8],
        server_removal_key: &[u8; 32],
    ) -> Result<(), MlsError> {
        self.create_group_with_policy(group_id, server_removal_key, None)
    }

    /// Like [`MlsEngine::create_group`], and puts `policy` (opaque bytes
    /// defined by the caller) into the group context as the
    /// [`GROUP_POLICY_EXTENSION`], where only members can change it.
    pub fn create_group_with_policy(
        &self,
        group_id: &[u8],
        server_removal_key: &[u8; 32],
        policy: Option<&[u8]>,
    ) -> Result<(), MlsError> {
        let external_senders = vec![server_sender(server_removal_key)];
        let mut extensions = vec![Extension::ExternalSenders(external_senders)];
        if let Some(policy) = policy {
            extensions.push(Extension::Unknown(
                GROUP_POLICY_EXTENSION,
                UnknownExtension(policy.to_vec()),
            ));
        }
        let extensions =
            Extensions::from_vec(extensions).map_err(|e| MlsError::protocol("create group", e))?;
        let config = MlsGroupCreateConfig::builder()
            .ciphersuite(CIPHERSUITE)
            .capabilities(rathaus_capabilities())
            .wire_format_policy(MIXED_PLAINTEXT_WIRE_FORMAT_POLICY)
            .use_ratchet_tree_extension(false)
            .number_of_resumption_psks(RESUMPTION_PSKS)
            .max_past_epochs(PAST_EPOCHS)
            .with_group_context_extensions(extensions)
            .build();
        self.atomically(|provider| {
            MlsGroup::new_with_group_id(
                provider,
                &self.signer,
                &config,
                GroupId::from_slice(group_id),
                self.signer.credential_with_key(&self.identity),
            )
            .map_err(|e| MlsError::protocol("create group", e))?;
            Ok(())
        })
    }

    /// Stages one commit adding the devices of `key_packages` (each an
    /// `MLSMessage` key package as produced by
    /// [`MlsEngine::generate_key_packages`]).
    pub fn add_members(
        &self,
        group_id: &[u8],
        key_packages: &[Vec<u8>],
    ) -> Result<CommitOutput, MlsError> {
        let key_packages = key_packages
            .iter()
            .map(|bytes| self.validate_key_package(bytes))
            .collect::<Result<Vec<_>, _>>()?;
        self.stage_commit(group_id, "add members", Change::Add(key_packages))
    }

    /// Who a KeyPackage says it is, after checking its signature: the credential
    /// identity bytes and the signature key of its leaf. The caller compares both with
    /// the device it asked for before using the package (DESIGN §5.9).
    pub fn key_package_identity(&self, bytes: &[u8]) -> Result<(Vec<u8>, Vec<u8>), MlsError> {
        let key_package = self.validate_key_package(bytes)?;
        let leaf = key_package.leaf_node();
        Ok((
            basic_identity(leaf.credential()),
            leaf.signature_key().as_slice().to_vec(),
        ))
    }

    /// Stages one commit removing the given devices.
    pub fn remove_members(
        &self,
        group_id: &[u8],
        members: &[DeviceIdentity],
    ) -> Result<CommitOutput, MlsError> {
        let current = self.members(group_id)?;
        let indexes = members
            .iter()
            .map(|who| {
                current
                    .iter()
                    .find(|m| &m.identity == who)
                    .map(|m| LeafNodeIndex::new(m.leaf_index))
                    .ok_or_else(|| MlsError::NotAMember(who.clone()))
            })
            .collect::<Result<Vec<_>, _>>()?;
        self.stage_commit(group_id, "remove members", Change::Remove(indexes))
    }

    /// Stages one commit that replaces the group policy (the
    /// [`GROUP_POLICY_EXTENSION`]) with `policy` through a
    /// GroupContextExtensions proposal; every other group context extension
    /// (the server's `external_senders`) is kept as it is.
    pub fn update_group_policy(
        &self,
        group_id: &[u8],
        policy: &[u8],
    ) -> Result<CommitOutput, MlsError> {
        let mut extensions = self.read(group_id, |group| Ok(group.extensions().clone()))?;
        extensions
            .add_or_replace(Extension::Unknown(
                GROUP_POLICY_EXTENSION,
                UnknownExtension(policy.to_vec()),
            ))
            .map_err(|e| MlsError::protocol("update group policy", e))?;
        // RFC 9420 §12.1.7: a GroupContextExtensions proposal may only carry extensions
        // every member must support, so the policy extension becomes required (every
        // Rathaus leaf and key package supports it, see `rathaus_capabilities`).
        extensions
            .add_or_replace(Extension::RequiredCapabilities(
                RequiredCapabilitiesExtension::new(
                    &[ExtensionType::Unknown(GROUP_POLICY_EXTENSION)],
                    &[],
                    &[],
                ),
            ))
            .map_err(|e| MlsError::protocol("update group policy", e))?;
        self.stage_commit(
            group_id,
            "update group policy",
            Change::ContextExtensions(extensions),
        )
    }

    /// Stages a commit that refreshes this device's leaf (post-compromise
    /// security) and covers any pending proposals.
    pub fn self_update(&self, group_id: &[u8]) -> Result<CommitOutput, MlsError> {
        self.stage_commit(group_id, "self update", Change::SelfUpdate)
    }

    /// Stages a commit covering the stored proposals, e.g. the server's
    /// Remove after the roster changed (DESIGN §5.5).
    pub fn commit_pending_proposals(&self, group_id: &[u8]) -> Result<CommitOutput, MlsError> {
        self.stage_commit(group_id, "commit proposals", Change::PendingOnly)
    }

    /// Applies this device's staged commit after the server accepted it.
    pub fn merge_pending_commit(&self, group_id: &[u8]) -> Result<u64, MlsError> {
        self.atomically(|provider| {
            let mut group = self.load(provider, group_id)?;
            group
                .merge_pending_commit(provider)
                .map_err(|e| MlsError::protocol("merge commit", e))?;
            let epoch = group.epoch().as_u64();
            self.keep(group);
            Ok(epoch)
        })
    }

    /// Whether this device has a staged commit for the group that is not merged yet.
    pub fn has_pending_commit(&self, group_id: &[u8]) -> Result<bool, MlsError> {
        self.read(group_id, |group| Ok(group.pending_commit().is_some()))
    }

    /// Drops this device's staged commit, e.g. after the server answered
    /// `StaleEpoch`.
    pub fn discard_pending_commit(&self, group_id: &[u8]) -> Result<(), MlsError> {
        self.atomically(|provider| {
            let mut group = self.load(provider, group_id)?;
            group
                .clear_pending_commit(provider.storage())
                .map_err(|e| MlsError::protocol("discard commit", e))?;
            self.keep(group);
            Ok(())
        })
    }

    /// Joins a group from a Welcome and the ratchet tree served by the server
    /// (TLS-serialized `RatchetTree`).
    ///
    /// The Welcome is staged first and `check` sees the staged group as plain data
    /// ([`WelcomeFacts`]: group id, epoch, whether the only external sender is
    /// `server_removal_key`, policy and adder, all read
    /// from the Welcome, not from the server's labels); only if it passes is anything
    /// written. State this device holds for the same group is replaced, inside the same
    /// savepoint; whether that may happen is the caller's decision (DESIGN §5.9: only
    /// after this device processed its own removal).
    pub fn join_from_welcome(
        &self,
        welcome: &[u8],
        ratchet_tree: &[u8],
        server_removal_key: &[u8; 32],
        check: impl FnOnce(&WelcomeFacts) -> Result<(), MlsError>,
    ) -> Result<Joined, MlsError> {
        let welcome = match decode_message(welcome)?.extract() {
            MlsMessageBodyIn::Welcome(welcome) => welcome,
            _ => return Err(MlsError::malformed("welcome", "not a Welcome message")),
        };
        let tree = RatchetTreeIn::tls_deserialize_exact(ratchet_tree)
            .map_err(|e| MlsError::malformed("ratchet tree", e))?;
        let config = MlsGroupJoinConfig::builder()
            .wire_format_policy(MIXED_PLAINTEXT_WIRE_FORMAT_POLICY)
            .use_ratchet_tree_extension(false)
            .number_of_resumption_psks(RESUMPTION_PSKS)
            .max_past_epochs(PAST_EPOCHS)
            .build();
        self.atomically(|provider| {
            let staged = StagedWelcome::build_from_welcome(provider, &config, welcome)
                .and_then(|builder| builder.with_ratchet_tree(tree).replace_old_group().build())
                .map_err(|e| MlsError::protocol("join from welcome", e))?;
            let context = staged.group_context();
            let facts = WelcomeFacts {
                group_id: context.group_id().as_slice().to_vec(),
                epoch: context.epoch().as_u64(),
                only_removal_key: context.extensions().external_senders()
                    == Some(&vec![server_sender(server_removal_key)]),
                policy: policy_extension(context.extensions()),
                adder: staged
                    .welcome_sender()
                    .map(|leaf| basic_identity(leaf.credential()))
                    .unwrap_or_default(),
                adder_key: staged
                    .welcome_sender()
                    .map(|leaf| leaf.signature_key().as_slice().to_vec())
                    .unwrap_or_default(),
            };
            check(&facts)?;
            if let Some(mut old) = MlsGroup::load(provider.storage(), context.group_id())? {
                old.delete(provider.storage())
                    .map_err(|e| MlsError::protocol("replace group", e))?;
            }
            let group = staged
                .into_group(provider)
                .map_err(|e| MlsError::protocol("join from welcome", e))?;
            let joined = Joined {
                group_id: group.group_id().as_slice().to_vec(),
                epoch: group.epoch().as_u64(),
            };
            self.keep(group);
            Ok(joined)
        })
    }

    /// Encrypts an application message as a PrivateMessage `MLSMessage`.
    pub fn encrypt(&self, group_id: &[u8], plaintext: &[u8]) -> Result<Vec<u8>, MlsError> {
        self.atomically(|provider| {
            let mut group = self.load(provider, group_id)?;
            let message = group
                .create_message(provider, &self.signer, plaintext)
                .map_err(|e| MlsError::protocol("encrypt", e))?;
            self.keep(group);
            encode(message)
        })
    }

    /// Processes a PublicMessage or PrivateMessage `MLSMessage` for one of
    /// this device's groups (the group id is read from the message).
    ///
    /// Proposals are stored. A commit is merged only if the membership rule accepts
    /// it ([`judge_commit`]: the tree before and after, the policy before, and the
    /// group's `roster` as the caller knows it); a refused commit is
    /// [`MlsError::Refused`] and changes nothing, so the group stays at its epoch. A
    /// proposal to add a member on behalf of an external sender is refused with
    /// [`MlsError::ExternalAdd`] (DESIGN §5.4, §5.9).
    pub fn process_message(&self, message: &[u8], roster: &Roster) -> Result<Incoming, MlsError> {
        let message = decode_message(message)?
            .try_into_protocol_message()
            .map_err(|e| MlsError::malformed("protocol message", e))?;
        let group_id = message.group_id().as_slice().to_vec();
        // A PrivateMessage's content is parsed as the type its header names, so this
        // can only turn out to be an application message.
        if self.batch.get()
            && message.content_type() == ContentType::Application
            && !self.connection.is_autocommit()
        {
            return self.decrypt_held(&group_id, message);
        }
        self.atomically(|provider| {
            let mut group = self.load(provider, &group_id)?;
            if message.content_type() != ContentType::Application
                && message.epoch() < group.epoch()
            {
                // A handshake message of an epoch this group has left: a joiner meets the
                // commit its Welcome already took it past, a returning member the ones
                // before its own. openmls refuses it the same way but logs an error for
                // it; catching up meets such entries in the normal course.
                return Err(MlsError::protocol(
                    "process message",
                    openmls::prelude::ProcessMessageError::<std::convert::Infallible>::ValidationError(
                        openmls::prelude::ValidationError::WrongEpoch,
                    ),
                ));
            }
            let processed = group
                .process_message(provider, message)
                .map_err(|e| MlsError::protocol("process message", e))?;
            let sender = processed.sender().clone();
            let credential = processed.credential().clone();
            let incoming = match processed.into_content() {
                ProcessedMessageContent::ApplicationMessage(message) => Ok(Incoming::Application {
                    sender: DeviceIdentity::from_credential(&credential)?,
                    plaintext: message.into_bytes(),
                }),
                ProcessedMessageContent::ProposalMessage(proposal)
                | ProcessedMessageContent::ExternalJoinProposalMessage(proposal) => {
                    if is_external_add(&proposal) {
                        return Err(MlsError::ExternalAdd { committer: None });
                    }
                    let kind = proposal_kind(&group, proposal.proposal())?;
                    let sender = match sender {
                        Sender::External(_) => ProposalSender::External,
                        _ => ProposalSender::Member(DeviceIdentity::from_credential(&credential)?),
                    };
                    group
                        .store_pending_proposal(provider.storage(), *proposal)
                        .map_err(|e| MlsError::protocol("store proposal", e))?;
                    Ok(Incoming::Proposal { sender, kind })
                }
                ProcessedMessageContent::StagedCommitMessage(staged) => {
                    // The facts before the merge; the merge happens inside this
                    // operation's savepoint, so a refusal below rolls it back.
                    let committer = match sender {
                        Sender::Member(index) => Committer::Member(index.u32()),
                        Sender::NewMemberCommit => Committer::NewMember,
                        Sender::External(_) | Sender::NewMemberProposal => Committer::External,
                    };
                    let before = leaves(&group);
                    let policy_before = policy_extension(group.extensions());
                    let senders_before = group.extensions().external_senders().cloned();
                    let vacated = staged
                        .remove_proposals()
                        .map(|r| r.remove_proposal().removed().u32())
                        .collect();
                    let external_add = staged.queued_proposals().any(is_external_add);
                    let self_removed = staged.self_removed();
                    group
                        .merge_staged_commit(provider, *staged)
                        .map_err(|e| MlsError::protocol("merge commit", e))?;
                    let facts = CommitFacts {
                        committer,
                        before,
                        after: leaves(&group),
                        vacated,
                        external_add,
                        policy_before,
                        policy_after: policy_extension(group.extensions()),
                        external_senders_changed: group.extensions().external_senders().cloned()
                            != senders_before,
                    };
                    let verdict = judge_commit(&facts, roster).map_err(MlsError::Refused)?;
                    Ok(Incoming::Commit(CommitSummary {
                        verdict,
                        self_removed,
                        epoch: group.epoch().as_u64(),
                    }))
                }
                #[allow(unreachable_patterns)]
                _ => Err(MlsError::protocol(
                    "process message",
                    "unsupported message content",
                )),
            }?;
            self.keep(group);
            Ok(incoming)
        })
    }

    /// Runs `f`, a run of [`MlsEngine::process_message`] calls inside one transaction
    /// of the caller, with the message secrets that decrypting application messages
    /// changes kept in memory, and writes them to the file once, at the end.
    ///
    /// The caller must commit its transaction only after this returned `Ok` (the
    /// secrets are then in it) and roll it back if this returns an error. A crash
    /// before the commit loses the whole transaction, processed messages, rows and
    /// cursor together, so no message is lost or processed twice. Every other
    /// operation of the engine (a commit, a send, an operation on another group)
    /// writes the held secrets first. Outside a transaction, nothing is held.
    pub fn in_batch<T, E: From<MlsError>>(&self, f: impl FnOnce() -> Result<T, E>) -> Result<T, E> {
        let outer = self.batch.replace(true);
        let result = f();
        self.batch.set(outer);
        match result {
            Ok(value) if !outer => {
                if let Err(e) = self.write_held() {
                    self.forget_held();
                    return Err(e.into());
                }
                Ok(value)
            }
            Ok(value) => Ok(value),
            Err(e) => {
                // The caller rolls its transaction back: what was held goes with it.
                if !outer {
                    self.forget_held();
                }
                Err(e)
            }
        }
    }

    /// An application message within [`MlsEngine::in_batch`]: processed like any
    /// other, except that openmls' write of the group's message secrets is held back.
    fn decrypt_held(
        &self,
        group_id: &[u8],
        message: openmls::prelude::ProtocolMessage,
    ) -> Result<Incoming, MlsError> {
        if self.held.pending.get() && !self.caches(group_id) {
            self.write_held()?;
        }
        self.in_savepoint(|provider| {
            let mut group = self.load(provider, group_id)?;
            self.held.active.set(true);
            let processed = group.process_message(provider, message);
            self.held.active.set(false);
            // openmls applies a sender ratchet step only to a message it processed
            // successfully, so after a failure the group is as it was, and it stays the
            // up-to-date copy of the secrets held so far; this operation's own writes
            // (none but the state token) are kept.
            let incoming = processed
                .map_err(|e| MlsError::protocol("process message", e))
                .and_then(|processed| {
                    let credential = processed.credential().clone();
                    match processed.into_content() {
                        ProcessedMessageContent::ApplicationMessage(message) => {
                            Ok(Incoming::Application {
                                sender: DeviceIdentity::from_credential(&credential)?,
                                plaintext: message.into_bytes(),
                            })
                        }
                        _ => Err(MlsError::protocol(
                            "process message",
                            "not an application message",
                        )),
                    }
                });
            self.keep(group);
            Ok(incoming)
        })?
    }

    /// Writes the message secrets held back in the cached group, if any.
    fn write_held(&self) -> Result<(), MlsError> {
        if !self.held.pending.get() {
            return Ok(());
        }
        let token = self.state_token()?;
        let mut cache = self.cache.borrow_mut();
        let Some(cached) = cache.as_mut().filter(|c| Some(c.token) == token) else {
            // The copy that held them is gone (a failure in the middle of a batch): the
            // caller's transaction must not commit.
            return Err(MlsError::HeldSecretsLost);
        };
        // Setting the policy the group already has changes nothing but writes the join
        // config and the whole message secrets store: openmls' one public way to write
        // the store on its own.
        let policy = cached.group.past_epoch_deletion_policy().clone();
        cached
            .group
            .set_past_epoch_deletion_policy(&self.provider(), policy)
            .map_err(|e| MlsError::protocol("write message secrets", e))?;
        self.held.pending.set(false);
        Ok(())
    }

    /// Drops the cached group and whatever it held (the caller rolls back).
    fn forget_held(&self) {
        if self.held.pending.replace(false) {
            self.cache.borrow_mut().take();
        }
    }

    /// Whether the cached group is `group_id`.
    fn caches(&self, group_id: &[u8]) -> bool {
        self.cache
            .borrow()
            .as_ref()
            .is_some_and(|c| c.group.group_id().as_slice() == group_id)
    }

    /// The group's current epoch.
    pub fn epoch(&self, group_id: &[u8]) -> Result<u64, MlsError> {
        self.read(group_id, |group| Ok(group.epoch().as_u64()))
    }

    /// The epoch authenticator of the current epoch: equal for all members
    /// who see the same group (DESIGN §5.8, group code).
    pub fn epoch_authenticator(&self, group_id: &[u8]) -> Result<Vec<u8>, MlsError> {
        self.read(group_id, |group| {
            Ok(group.epoch_authenticator().as_slice().to_vec())
        })
    }

    /// The TLS-serialized ratchet tree, for the server to serve to joiners.
    pub fn ratchet_tree(&self, group_id: &[u8]) -> Result<Vec<u8>, MlsError> {
        self.read(group_id, |group| {
            group
                .export_ratchet_tree()
                .tls_serialize_detached()
                .map_err(|e| MlsError::protocol("export ratchet tree", e))
        })
    }

    /// A signed GroupInfo `MLSMessage` of the current epoch (without tree).
    pub fn group_info(&self, group_id: &[u8]) -> Result<Vec<u8>, MlsError> {
        self.read(group_id, |group| {
            let info = group
                .export_group_info(&self.crypto, &self.signer, false)
                .map_err(|e| MlsError::protocol("export group info", e))?;
            encode(info)
        })
    }

    /// The group's members with their signature keys.
    pub fn members(&self, group_id: &[u8]) -> Result<Vec<GroupMember>, MlsError> {
        self.read(group_id, |group| {
            group
                .members()
                .map(|member| {
                    Ok(GroupMember {
                        identity: DeviceIdentity::from_credential(&member.credential)?,
                        signature_key: member.signature_key,
                        leaf_index: member.index.u32(),
                    })
                })
                .collect()
        })
    }

    /// The group policy bytes from the group context, if the group has one
    /// (see [`MlsEngine::create_group_with_policy`]).
    pub fn group_policy(&self, group_id: &[u8]) -> Result<Option<Vec<u8>>, MlsError> {
        self.read(group_id, |group| {
            Ok(group
                .extensions()
                .unknown(GROUP_POLICY_EXTENSION)
                .map(|e| e.0.clone()))
        })
    }

    /// How many proposals wait for a commit in this group.
    pub fn pending_proposals(&self, group_id: &[u8]) -> Result<usize, MlsError> {
        self.read(group_id, |group| Ok(group.pending_proposals().count()))
    }

    /// Drops every stored proposal of the group, e.g. a server Remove the
    /// client refused because its target is still on the roster.
    pub fn clear_pending_proposals(&self, group_id: &[u8]) -> Result<(), MlsError> {
        self.atomically(|provider| {
            let mut group = self.load(provider, group_id)?;
            group
                .clear_pending_proposals(provider.storage())
                .map_err(|e| MlsError::protocol("clear proposals", e))?;
            self.keep(group);
            Ok(())
        })
    }

    /// Deletes all state of the group from the profile (e.g. a group created
    /// locally whose birth the server refused). Unknown groups are ignored.
    pub fn delete_group(&self, group_id: &[u8]) -> Result<(), MlsError> {
        self.atomically(|provider| {
            let Some(mut group) =
                MlsGroup::load(provider.storage(), &GroupId::from_slice(group_id))?
            else {
                return Ok(());
            };
            group
                .delete(provider.storage())
                .map_err(|e| MlsError::protocol("delete group", e))
        })
    }

    /// Whether the profile holds state for this group.
    pub fn has_group(&self, group_id: &[u8]) -> Result<bool, MlsError> {
        match self.read(group_id, |_| Ok(())) {
            Ok(()) => Ok(true),
            Err(MlsError::UnknownGroup(_)) => Ok(false),
            Err(e) => Err(e),
        }
    }

    fn provider(&self) -> SqliteMlsProvider<'_> {
        SqliteMlsProvider::holding(&self.crypto, &self.connection, &self.held)
    }

    /// The group, from memory if the copy there matches the file, else from SQLite.
    /// The in-memory copy is handed out (moved): an operation that changes the group
    /// gives it back with [`MlsEngine::keep`], a failed one drops it.
    fn load(
        &self,
        provider: &SqliteMlsProvider<'_>,
        group_id: &[u8],
    ) -> Result<MlsGroup, MlsError> {
        Ok(self.load_at(provider, group_id)?.1)
    }

    fn load_at(
        &self,
        provider: &SqliteMlsProvider<'_>,
        group_id: &[u8],
    ) -> Result<(Option<StateToken>, MlsGroup), MlsError> {
        let token = self.state_token()?;
        let cached = self.cache.borrow_mut().take();
        if let (Some(cached), Some(token)) = (cached, token) {
            if cached.token == token && cached.group.group_id().as_slice() == group_id {
                return Ok((Some(token), cached.group));
            }
        }
        if self.held.pending.get() {
            // Only reachable if the file changed under a batch: its secrets are gone.
            return Err(MlsError::HeldSecretsLost);
        }
        let group = MlsGroup::load(provider.storage(), &GroupId::from_slice(group_id))?
            .ok_or_else(|| MlsError::UnknownGroup(group_id.to_vec()))?;
        Ok((token, group))
    }

    fn read<T>(
        &self,
        group_id: &[u8],
        f: impl FnOnce(&MlsGroup) -> Result<T, MlsError>,
    ) -> Result<T, MlsError> {
        if self.held.pending.get() && !self.caches(group_id) {
            self.write_held()?;
        }
        let provider = self.provider();
        let (token, group) = self.load_at(&provider, group_id)?;
        let result = f(&group);
        if let Some(token) = token {
            *self.cache.borrow_mut() = Some(CachedGroup { token, group });
        }
        result
    }

    /// Marks `group` as the state the operation in flight leaves behind; it becomes the
    /// in-memory copy once the operation's savepoint is released.
    fn keep(&self, group: MlsGroup) {
        *self.changed.borrow_mut() = Some(group);
    }

    fn state_token(&self) -> Result<Option<StateToken>, MlsError> {
        Ok(self
            .connection
            .prepare_cached("SELECT token FROM rathaus_mls_state WHERE id = 0")?
            .query_row([], |row| row.get::<_, StateToken>(0))
            .optional()?)
    }

    /// Writes a fresh state token (inside the operation's savepoint).
    fn new_state_token(&self) -> Result<StateToken, MlsError> {
        let token: StateToken = rand::random();
        self.connection
            .prepare_cached("INSERT OR REPLACE INTO rathaus_mls_state (id, token) VALUES (0, ?1)")?
            .execute([&token[..]])?;
        Ok(token)
    }

    /// Runs `f` inside a savepoint: everything openmls wrote is kept if `f`
    /// succeeds and rolled back if it fails. Savepoints nest, so this also
    /// works inside a transaction of the caller. Message secrets held back in a
    /// batch are written first, outside the savepoint.
    fn atomically<T>(
        &self,
        f: impl FnOnce(&SqliteMlsProvider<'_>) -> Result<T, MlsError>,
    ) -> Result<T, MlsError> {
        self.write_held()?;
        self.in_savepoint(f)
    }

    fn in_savepoint<T>(
        &self,
        f: impl FnOnce(&SqliteMlsProvider<'_>) -> Result<T, MlsError>,
    ) -> Result<T, MlsError> {
        self.changed.borrow_mut().take();
        self.connection.execute_batch("SAVEPOINT rathaus_mls")?;
        match f(&self.provider()).and_then(|value| Ok((value, self.new_state_token()?))) {
            Ok((value, token)) => {
                let changed = self.changed.borrow_mut().take();
                self.connection.execute_batch("RELEASE rathaus_mls")?;
                if let Some(group) = changed {
                    *self.cache.borrow_mut() = Some(CachedGroup { token, group });
                }
                Ok(value)
            }
            Err(error) => {
                // Whatever the operation changed in memory is rolled back in the file.
                self.changed.borrow_mut().take();
                self.cache.borrow_mut().take();
                // Report the operation's error; a failing rollback would
                // surface on the next statement anyway.
                let _ = self
                    .connection
                    .execute_batch("ROLLBACK TO rathaus_mls; RELEASE rathaus_mls");
                Err(error)
            }
        }
    }

    fn stage_commit(
        &self,
        group_id: &[u8],
        operation: &'static str,
        change: Change,
    ) -> Result<CommitOutput, MlsError> {
        self.atomically(|provider| {
            let mut group = self.load(provider, group_id)?;
            let builder = group.commit_builder().consume_proposal_store(true);
            let builder = match change {
                Change::Add(key_packages) => builder.propose_adds(key_packages),
                Change::Remove(indexes) => builder.propose_removals(indexes),
                Change::SelfUpdate => builder.force_self_update(true),
                Change::PendingOnly => builder,
                Change::ContextExtensions(extensions) => builder
                    .propose_group_context_extensions(extensions)
                    .map_err(|e| MlsError::protocol(operation, e))?,
            };
            let builder = builder
                .load_psks(provider.storage())
                .map_err(|e| MlsError::protocol(operation, e))?
                .create_group_info(true);
            // Never commit an Add an external sender proposed (DESIGN §5.4).
            let bundle = builder
                .build(
                    provider.rand(),
                    provider.crypto(),
                    &self.signer,
                    |proposal| !is_external_add(proposal),
                )
                .map_err(|e| MlsError::protocol(operation, e))?
                .stage_commit(provider)
                .map_err(|e| MlsError::protocol(operation, e))?;
            let (commit, welcome, group_info) = bundle.into_messages();
            let output = CommitOutput {
                commit: encode(commit)?,
                welcome: welcome.map(encode).transpose()?,
                group_info: group_info.map(encode).transpose()?,
                new_epoch: group.epoch().as_u64() + 1,
            };
            self.keep(group);
            Ok(output)
        })
    }

    fn validate_key_package(&self, bytes: &[u8]) -> Result<KeyPackage, MlsError> {
        let key_package: KeyPackageIn = match decode_message(bytes)?.extract() {
            MlsMessageBodyIn::KeyPackage(key_package) => key_package,
            _ => {
                return Err(MlsError::malformed(
                    "key package",
                    "not a KeyPackage message",
                ))
            }
        };
        let key_package = key_package
            .validate(&self.crypto, ProtocolVersion::Mls10)
            .map_err(|e| MlsError::malformed("key package", e))?;
        // The credential must name a Rathaus device.
        DeviceIdentity::from_credential(key_package.leaf_node().credential())?;
        Ok(key_package)
    }
}

/// What a commit of this device changes besides the pending proposals.
enum Change {
    Add(Vec<KeyPackage>),
    Remove(Vec<LeafNodeIndex>),
    SelfUpdate,
    PendingOnly,
    ContextExtensions(Extensions<GroupContext>),
}

/// Whether `message` is an application message, as its unencrypted header says; `false`
/// for handshake messages and for anything that does not parse. A PrivateMessage's
/// content is parsed as the type its header names, so a message that says
/// "application" can only turn out to be one.
pub fn is_application_message(message: &[u8]) -> bool {
    decode_message(message)
        .ok()
        .and_then(|m| m.try_into_protocol_message().ok())
        .is_some_and(|m| m.content_type() == ContentType::Application)
}

fn decode_message(bytes: &[u8]) -> Result<MlsMessageIn, MlsError> {
    MlsMessageIn::tls_deserialize_exact(bytes).map_err(|e| MlsError::malformed("message", e))
}

fn encode(message: MlsMessageOut) -> Result<Vec<u8>, MlsError> {
    message
        .tls_serialize_detached()
        .map_err(|e| MlsError::protocol("encode message", e))
}

fn is_external_add(proposal: &QueuedProposal) -> bool {
    matches!(proposal.proposal(), Proposal::Add(_))
        && matches!(
            proposal.sender(),
            Sender::External(_) | Sender::NewMemberProposal
        )
}

fn member_identity(group: &MlsGroup, index: LeafNodeIndex) -> Result<DeviceIdentity, MlsError> {
    let credential = group
        .member(index)
        .ok_or_else(|| MlsError::protocol("read member", "no member at leaf index"))?;
    DeviceIdentity::from_credential(credential)
}

fn proposal_kind(group: &MlsGroup, proposal: &Proposal) -> Result<ProposalKind, MlsError> {
    Ok(match proposal {
        Proposal::Add(add) => ProposalKind::Add(DeviceIdentity::from_credential(
            add.key_package().leaf_node().credential(),
        )?),
        Proposal::Remove(remove) => ProposalKind::Remove(member_identity(group, remove.removed())?),
        Proposal::Update(_) => ProposalKind::Update,
        _ => ProposalKind::Other,
    })
}

/// The leaves of the group's tree as plain data for the membership rule. A leaf whose
/// credential is not a `BasicCredential` gets empty identity bytes, which the rule
/// refuses as not naming a device.
fn leaves(group: &MlsGroup) -> Vec<Leaf> {
    group
        .members()
        .map(|m| Leaf {
            index: m.index.u32(),
            identity: BasicCredential::try_from(m.credential)
                .map(|c| c.identity().to_vec())
                .unwrap_or_default(),
            signature_key: m.signature_key,
        })
        .collect()
}

/// The one `external_senders` entry of every Rathaus group: the server's removal key.
fn server_sender(removal_key: &[u8; 32]) -> ExternalSender {
    ExternalSender::new(
        SignaturePublicKey::from(removal_key.to_vec()),
        BasicCredential::new(SERVER_IDENTITY.as_bytes().to_vec()).into(),
    )
}

/// The identity bytes of a `BasicCredential`; empty for any other credential type.
fn basic_identity(credential: &Credential) -> Vec<u8> {
    BasicCredential::try_from(credential.clone())
        .map(|c| c.identity().to_vec())
        .unwrap_or_default()
}

fn policy_extension<T>(extensions: &Extensions<T>) -> Option<Vec<u8>> {
    extensions
        .unknown(GROUP_POLICY_EXTENSION)
        .map(|e| e.0.clone())
}
