//! A hostile operator (DESIGN §5.9): everything the person who runs the server can do to
//! a secret group without any member's keys, done to the *stopped* server's data
//! directory with the server's own store code — append forged log entries, forget a
//! group, substitute KeyPackages, deliver Welcomes of their own making, change the
//! roster — and, with openmls, the MLS messages such an operator can build from what the
//! server holds (GroupInfo, ratchet tree, KeyPackages, the removal key).
//!
//! Tests stop the [`crate::TestBackend`], apply an attack, start it again, and assert
//! what a member would notice.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{anyhow, bail, Context, Result};
use openmls::prelude::tls_codec::{Deserialize as _, Serialize as _};
use openmls::prelude::{
    BasicCredential, Capabilities, CredentialWithKey, Extension, ExtensionType, Extensions,
    ExternalSender, GroupId, KeyPackageIn, MlsGroup, MlsGroupCreateConfig, MlsGroupJoinConfig,
    MlsMessageBodyIn, MlsMessageIn, ProtocolVersion, PublicGroup, RatchetTreeIn,
    RequiredCapabilitiesExtension, SignaturePublicKey, UnknownExtension,
    MIXED_PLAINTEXT_WIRE_FORMAT_POLICY,
};
use openmls_rust_crypto::OpenMlsRustCrypto;
use rathaus_client::mls::DeviceSigner;
use rathaus_protocol::messages::WelcomeInfo;
use rathaus_protocol::mls::{group_id, GroupPolicy, GROUP_POLICY_EXTENSION, SERVER_IDENTITY};
use rathaus_protocol::{ClientMsgId, DeviceId, EntryBody, GroupHandle, UserId};
use rathaus_server::store::{
    Batch, Db, KeyPackageRecord, LeafRecord, QueuedWelcome, Store, StoredEntry, WelcomeBody, Writes,
};

/// The operator of a stopped server.
pub struct Operator {
    data_dir: PathBuf,
}

/// An MLS device of the operator's own making (a "ghost"), with its group state.
pub struct Ghost {
    /// Crypto and the ghost's MLS storage, in memory.
    pub provider: OpenMlsRustCrypto,
    /// The ghost's signature key.
    pub signer: DeviceSigner,
    /// The group the ghost believes it is in.
    pub group: MlsGroup,
}

impl Operator {
    /// The operator of the server whose data directory is `data_dir` (stopped).
    pub fn new(data_dir: &Path) -> Self {
        Self {
            data_dir: data_dir.to_path_buf(),
        }
    }

    fn open(&self) -> Result<(Arc<dyn Store>, Db)> {
        let store = rathaus_server::open_records(&self.data_dir)
            .context("open the stopped server's database")?;
        let db = Db::new(store.clone());
        Ok((store, db))
    }

    fn write(&self, f: impl FnOnce(&Db, &mut Writes) -> Result<()>) -> Result<()> {
        let (store, db) = self.open()?;
        let mut writes = Writes::new();
        f(&db, &mut writes)?;
        db.apply(writes)?;
        store.flush_blocking()?;
        Ok(())
    }

    /// Appends an entry to a group's log as if `sender` had sent it; returns its seq.
    /// The server's MLS state is left as it is, as a database edit would leave it.
    pub fn append_entry(&self, group: &GroupHandle, sender: &str, mls: Vec<u8>) -> Result<u64> {
        let mut seq = 0;
        self.write(|db, writes| {
            seq = db.head(group)? + 1;
            let mut id = [0u8; 16];
            id[..8].copy_from_slice(&seq.to_be_bytes());
            writes.put_entry(
                group,
                seq,
                &StoredEntry {
                    sender: UserId::parse(sender)?,
                    sender_name: sender.to_owned(),
                    sent_at_ms: crate::now_ms(),
                    client_id: ClientMsgId(id),
                    body: EntryBody::Mls(mls),
                },
            )?;
            Ok(())
        })?;
        Ok(seq)
    }

    /// Deletes the server's record and MLS state of a secret group, so the server
    /// reports it as never created (`born: false`): the two keys an operator would delete.
    pub fn forget_group(&self, group: &GroupHandle) -> Result<()> {
        let (store, _db) = self.open()?;
        let mut batch = Batch::default();
        batch.remove(format!("secret/{group}").into_bytes());
        batch.remove(format!("mls/{group}").into_bytes());
        store.apply(batch)?;
        store.flush_blocking()?;
        Ok(())
    }

    /// Replaces the server's MLS state of a secret group with `state` (garbage, say, so
    /// that the server fails every commit it is sent with an internal error, which
    /// clients take as transient); returns what was there.
    pub fn replace_public_state(&self, group: &GroupHandle, state: Vec<u8>) -> Result<Vec<u8>> {
        let (store, _db) = self.open()?;
        let key = format!("mls/{group}").into_bytes();
        let old = store
            .get(&key)?
            .ok_or_else(|| anyhow!("{group} has no MLS state"))?;
        let mut batch = Batch::default();
        batch.put(key, state);
        store.apply(batch)?;
        store.flush_blocking()?;
        Ok(old)
    }

    /// The KeyPackages the server holds for a device.
    pub fn key_packages(&self, user: &UserId, device: DeviceId) -> Result<KeyPackageRecord> {
        Ok(self.open()?.1.key_packages(user, device)?)
    }

    /// Replaces every KeyPackage the server holds for a device with `package`.
    pub fn substitute_key_packages(
        &self,
        user: &UserId,
        device: DeviceId,
        package: Vec<u8>,
    ) -> Result<()> {
        self.write(|_, writes| {
            writes.put_key_packages(
                user,
                device,
                &KeyPackageRecord {
                    one_time: vec![package.clone()],
                    last_resort: Some(package),
                },
            )?;
            Ok(())
        })
    }

    /// Puts a Welcome into a device's queue.
    pub fn deliver_welcome(
        &self,
        user: &UserId,
        device: DeviceId,
        welcome: WelcomeInfo,
    ) -> Result<()> {
        self.write(|_, writes| {
            writes
                .put_welcome_body(
                    &welcome.group,
                    welcome.seq,
                    &WelcomeBody {
                        welcome: welcome.welcome.clone(),
                        ratchet_tree: welcome.ratchet_tree.clone(),
                    },
                )?
                .queue_welcome(
                    user,
                    device,
                    &QueuedWelcome {
                        group: welcome.group.clone(),
                        seq: welcome.seq,
                        epoch: welcome.epoch,
                        queued_ms: crate::now_ms(),
                    },
                )?;
            Ok(())
        })
    }

    /// The MLS bytes of every entry of a group's log, in seq order.
    pub fn entries(&self, group: &GroupHandle) -> Result<Vec<Vec<u8>>> {
        Ok(self
            .open()?
            .1
            .entries(group, 0, usize::MAX)?
            .into_iter()
            .filter_map(|(_, entry, _)| match entry.body {
                EntryBody::Mls(bytes) => Some(bytes),
                _ => None,
            })
            .collect())
    }

    /// Lists a device as a member in the server's record of a secret group (not in its
    /// MLS state), so the server delivers the group's Welcomes and log to it.
    pub fn list_as_member(
        &self,
        group: &GroupHandle,
        user: &UserId,
        device: DeviceId,
    ) -> Result<()> {
        self.write(|db, writes| {
            let mut record = db
                .secret_group(group)?
                .ok_or_else(|| anyhow!("{group} is not born"))?;
            let head = db.head(group)?;
            record.members.push(LeafRecord {
                leaf: 999,
                user: user.clone(),
                device,
                joined_seq: head,
            });
            writes.put_secret_group(group, &record)?;
            Ok(())
        })
    }

    /// Enrolls a device of the operator's making under `user` (its public `key`), with
    /// `package` as every KeyPackage the server holds for it: the server then lists it
    /// among `user`'s devices and hands the package out when a member claims for `user`.
    pub fn enroll_ghost_device(
        &self,
        user: &UserId,
        device: DeviceId,
        key: [u8; 32],
        package: Vec<u8>,
    ) -> Result<()> {
        self.write(|db, writes| {
            let mut record = db.user(user)?.ok_or_else(|| anyhow!("no user {user}"))?;
            record.devices.push(rathaus_server::store::DeviceRecord {
                id: device,
                key: rathaus_protocol::DeviceKey(key),
                name: "Telefon".to_owned(),
                created_ms: crate::now_ms(),
                revoked: false,
            });
            writes.put_user(&record)?;
            Ok(())
        })?;
        self.substitute_key_packages(user, device, package)
    }

    /// Takes `user` off a department's roster (as a transfer or offboarding would) and
    /// marks the removal of their leaves as already proposed in this epoch, so the
    /// server never proposes it: a dropped removal.
    pub fn drop_removal(&self, slug: &str, user: &UserId) -> Result<()> {
        let slug = rathaus_protocol::DepartmentSlug::parse(slug)?;
        let group = GroupHandle::Secret(slug.clone());
        self.write(|db, writes| {
            let mut dept = db
                .department(&slug)?
                .ok_or_else(|| anyhow!("no department {slug}"))?;
            dept.members.retain(|m| m != user);
            dept.owners.retain(|m| m != user);
            writes.put_department(&dept)?;
            let mut record = db
                .secret_group(&group)?
                .ok_or_else(|| anyhow!("{group} is not born"))?;
            let leaves: Vec<u32> = record
                .members
                .iter()
                .filter(|m| &m.user == user)
                .map(|m| m.leaf)
                .collect();
            record.proposed_removals.extend(leaves);
            writes.put_secret_group(&group, &record)?;
            Ok(())
        })
    }

    /// Puts `user` on a project room's roster without any invitation or consent.
    pub fn put_on_room_roster(&self, slug: &str, user: &UserId) -> Result<()> {
        let slug = rathaus_protocol::DepartmentSlug::parse(slug)?;
        self.write(|db, writes| {
            let mut room = db.room(&slug)?.ok_or_else(|| anyhow!("no room {slug}"))?;
            room.members.push(user.clone());
            writes.put_room(&room)?;
            Ok(())
        })
    }

    /// The current head of a group's log.
    pub fn head(&self, group: &GroupHandle) -> Result<u64> {
        Ok(self.open()?.1.head(group)?)
    }

    /// The server's removal key (from the data directory).
    pub fn removal_key(&self) -> Result<ed25519_dalek::SigningKey> {
        let seed: [u8; 32] = std::fs::read(self.data_dir.join("removal.key"))?
            .try_into()
            .map_err(|_| anyhow!("removal.key is not 32 bytes"))?;
        Ok(ed25519_dalek::SigningKey::from_bytes(&seed))
    }

    /// The stored GroupInfo and the ratchet tree of a secret group's current epoch.
    pub fn group_info_and_tree(&self, group: &GroupHandle) -> Result<(Vec<u8>, Vec<u8>)> {
        let (_store, db) = self.open()?;
        let record = db
            .secret_group(group)?
            .ok_or_else(|| anyhow!("{group} is not born"))?;
        let state = db
            .public_state(group)?
            .ok_or_else(|| anyhow!("{group} has no MLS state"))?;
        let storage = openmls_memory_storage::MemoryStorage::default();
        storage
            .values
            .write()
            .map_err(|_| anyhow!("poisoned"))?
            .extend(state.values);
        let public = PublicGroup::load(&storage, &GroupId::from_slice(&group_id(group)))?
            .ok_or_else(|| anyhow!("incomplete MLS state"))?;
        Ok((
            record.group_info,
            public.export_ratchet_tree().tls_serialize_detached()?,
        ))
    }

    /// An MLS external commit by a ghost device `identity` (e.g. `P1001/4242`), built from
    /// the GroupInfo and tree the server holds: the commit to append, and the ghost.
    pub fn external_commit(&self, group: &GroupHandle, identity: &str) -> Result<(Vec<u8>, Ghost)> {
        let (info, tree) = self.group_info_and_tree(group)?;
        let info = match MlsMessageIn::tls_deserialize_exact(info.as_slice())?.extract() {
            MlsMessageBodyIn::GroupInfo(info) => info,
            other => bail!("stored GroupInfo is {other:?}"),
        };
        let provider = OpenMlsRustCrypto::default();
        let signer = DeviceSigner::new(ed25519_dalek::SigningKey::from_bytes(&rand::random()));
        #[allow(deprecated)]
        let (group, commit, _) = MlsGroup::join_by_external_commit(
            &provider,
            &signer,
            Some(RatchetTreeIn::tls_deserialize_exact(tree.as_slice())?),
            info,
            &join_config(),
            Some(capabilities()),
            None,
            &[],
            credential(&signer, identity),
        )
        .map_err(|e| anyhow!("external commit: {e:?}"))?;
        Ok((
            commit.tls_serialize_detached()?,
            Ghost {
                provider,
                signer,
                group,
            },
        ))
    }

    /// A group of the operator's making under `group`'s MLS id, created by the ghost
    /// device `creator` with the given owners and `external_sender` key (the server's
    /// removal key, or another), which admits the device of `victim_key_package`.
    /// Returns the Welcome addressed to the victim, labelled with `epoch`.
    pub fn fake_welcome(
        &self,
        group: &GroupHandle,
        creator: &str,
        owners: &[&str],
        external_sender: [u8; 32],
        victim_key_package: &[u8],
        epoch: u64,
    ) -> Result<WelcomeInfo> {
        let provider = OpenMlsRustCrypto::default();
        let signer = DeviceSigner::new(ed25519_dalek::SigningKey::from_bytes(&rand::random()));
        let policy = GroupPolicy {
            owners: owners
                .iter()
                .map(|o| UserId::parse(o))
                .collect::<Result<_, _>>()?,
            auto_admit: false,
        };
        let extensions = Extensions::from_vec(vec![
            Extension::ExternalSenders(vec![ExternalSender::new(
                SignaturePublicKey::from(external_sender.to_vec()),
                BasicCredential::new(SERVER_IDENTITY.as_bytes().to_vec()).into(),
            )]),
            Extension::Unknown(GROUP_POLICY_EXTENSION, UnknownExtension(policy.encode())),
            Extension::RequiredCapabilities(RequiredCapabilitiesExtension::new(
                &[ExtensionType::Unknown(GROUP_POLICY_EXTENSION)],
                &[],
                &[],
            )),
        ])?;
        let config = MlsGroupCreateConfig::builder()
            .ciphersuite(rathaus_client::mls::CIPHERSUITE)
            .capabilities(capabilities())
            .wire_format_policy(MIXED_PLAINTEXT_WIRE_FORMAT_POLICY)
            .use_ratchet_tree_extension(false)
            .with_group_context_extensions(extensions)
            .build();
        let mut fake = MlsGroup::new_with_group_id(
            &provider,
            &signer,
            &config,
            GroupId::from_slice(&group_id(group)),
            credential(&signer, creator),
        )?;
        let key_package = match MlsMessageIn::tls_deserialize_exact(victim_key_package)?.extract() {
            MlsMessageBodyIn::KeyPackage(kp) => kp,
            other => bail!("not a KeyPackage: {other:?}"),
        };
        let key_package = KeyPackageIn::validate(
            key_package,
            &openmls_rust_crypto::RustCrypto::default(),
            ProtocolVersion::Mls10,
        )?;
        let (_, welcome, _) = fake
            .add_members(&provider, &signer, &[key_package])
            .map_err(|e| anyhow!("add: {e:?}"))?;
        fake.merge_pending_commit(&provider)?;
        Ok(WelcomeInfo {
            group: group.clone(),
            welcome: welcome.tls_serialize_detached()?,
            ratchet_tree: fake.export_ratchet_tree().tls_serialize_detached()?,
            seq: self.head(group)?,
            epoch,
        })
    }
}

impl Ghost {
    /// Whether the ghost can read an application message of the group.
    pub fn can_read(&mut self, message: &[u8]) -> bool {
        let Ok(message) = MlsMessageIn::tls_deserialize_exact(message) else {
            return false;
        };
        let Ok(message) = message.try_into_protocol_message() else {
            return false;
        };
        self.group.process_message(&self.provider, message).is_ok()
    }
}

fn capabilities() -> Capabilities {
    Capabilities::builder()
        .extensions(vec![
            ExtensionType::LastResort,
            ExtensionType::Unknown(GROUP_POLICY_EXTENSION),
        ])
        .build()
}

fn join_config() -> MlsGroupJoinConfig {
    MlsGroupJoinConfig::builder()
        .wire_format_policy(MIXED_PLAINTEXT_WIRE_FORMAT_POLICY)
        .use_ratchet_tree_extension(false)
        .build()
}

fn credential(signer: &DeviceSigner, identity: &str) -> CredentialWithKey {
    CredentialWithKey {
        credential: BasicCredential::new(identity.as_bytes().to_vec()).into(),
        signature_key: SignaturePublicKey::from(signer.public_key().to_vec()),
    }
}
