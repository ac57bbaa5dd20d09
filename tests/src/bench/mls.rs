//! client-core's MLS engine (state in the profile's SQLite file) against bare openmls,
//! doing the same operation on the same inputs: key packages arrive as `MLSMessage` bytes
//! and are validated, commits are staged, then merged, and Welcomes and ratchet trees are
//! parsed from bytes on both sides. Both keep the same number of past epochs' message
//! secrets ([`PAST_EPOCHS`]): openmls rewrites them, every member's leaf included, with
//! every decrypted message and merged commit, so a baseline keeping none (openmls'
//! default) would measure a cheaper operation.
//!
//! The baseline of every bar is bare openmls with the same durability as the engine
//! (DESIGN §10, second round): `openmls_sqlite_storage` in a SQLite file with the journal
//! settings of a client profile (WAL, `synchronous = FULL`) and the engine's value codec,
//! each operation one transaction, the group kept in memory between operations as openmls
//! does. `mls-message-memory` keeps the figure against the in-memory provider as
//! information, without a bar.

use std::path::Path;
use std::rc::Rc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Result};
use ed25519_dalek::SigningKey;
use openmls::prelude::tls_codec::{Deserialize as _, Serialize as _};
use openmls::prelude::{
    BasicCredential, Capabilities, CredentialWithKey, Extension, ExtensionType, Extensions,
    ExternalSender, GroupId, KeyPackage, KeyPackageIn, MlsGroup, MlsGroupCreateConfig,
    MlsGroupJoinConfig, MlsMessageBodyIn, MlsMessageIn, MlsMessageOut, ProcessedMessageContent,
    ProtocolVersion, RatchetTreeIn, SignaturePublicKey, StagedWelcome,
    MIXED_PLAINTEXT_WIRE_FORMAT_POLICY,
};
use openmls_rust_crypto::{OpenMlsRustCrypto, RustCrypto};
use openmls_sqlite_storage::SqliteStorageProvider;
use openmls_traits::OpenMlsProvider;
use rand::rngs::OsRng;
use rathaus_client::mls::{
    DeviceIdentity, DeviceSigner, Incoming, MlsEngine, StateCodec, CIPHERSUITE,
    GROUP_POLICY_EXTENSION, PAST_EPOCHS,
};

use super::report::Row;

/// The server's removal key in every group's `external_senders` (any Ed25519 key will do).
const REMOVAL_KEY: [u8; 32] = [0x5a; 32];
/// Size of an application message in `mls-message`.
const MESSAGE: &[u8] = b"Die Sitzung beginnt um 10 Uhr im Raum 2.14 - bitte Unterlagen mitbringen.";

/// All four MLS workloads for groups of `n` members; `reps` repetitions of each
/// (medians reported), `messages` application messages.
pub(crate) fn all(n: usize, reps: usize, messages: usize, suffix: &str) -> Result<Vec<Row>> {
    let tmp = tempfile::tempdir()?;
    let mut engines = 0usize;
    let mut fresh_engine = |name: &str| -> Result<MlsEngine> {
        engines += 1;
        let path = tmp.path().join(format!("profile-{engines}.sqlite"));
        let identity = DeviceIdentity::new(name, "1")?;
        Ok(MlsEngine::with_connection(
            profile_connection(&path)?,
            SigningKey::generate(&mut OsRng),
            identity,
        )?)
    };
    let mut files = 0usize;
    let mut durable = |name: &str| -> Result<Bare<Durable>> {
        files += 1;
        let path = tmp.path().join(format!("bare-{files}.sqlite"));
        Bare::durable(name, &path)
    };
    eprintln!("  mls: {} key packages of the other members", n - 1);
    let others: Vec<Vec<u8>> = (1..n)
        .map(|i| Bare::in_memory(&format!("M{i}")).key_package())
        .collect::<Result<_>>()?;
    let mut rows = Vec::new();

    // Create a group of n in one commit.
    let (mut engine_times, mut bare_times) = (Vec::new(), Vec::new());
    let mut kept = None;
    for r in 0..reps {
        let gid = format!("bauamt/secret-{r}").into_bytes();
        let engine = fresh_engine(&format!("C{r}"))?;
        let t = Instant::now();
        engine.create_group(&gid, &REMOVAL_KEY)?;
        engine.add_members(&gid, &others)?;
        engine.merge_pending_commit(&gid)?;
        engine_times.push(t.elapsed());

        let bare = durable(&format!("B{r}"))?;
        let t = Instant::now();
        let mut group = bare.create_group(&gid)?;
        bare.add(&mut group, &others)?;
        bare_times.push(t.elapsed());
        kept = Some((engine, gid, bare, group));
    }
    rows.push(ratio_row(
        &format!("mls-create-{n}{suffix}"),
        &engine_times,
        &bare_times,
        format!("create + one commit adding {} members + merge", n - 1),
    ));
    let (engine, gid, bare, mut group) = kept.ok_or_else(|| anyhow!("no repetition ran"))?;

    // Add one member to the group of n.
    let (mut engine_times, mut bare_times) = (Vec::new(), Vec::new());
    for r in 0..reps.max(3) {
        let newcomer = Bare::in_memory(&format!("N{r}")).key_package()?;
        let t = Instant::now();
        engine.add_members(&gid, std::slice::from_ref(&newcomer))?;
        engine.merge_pending_commit(&gid)?;
        engine_times.push(t.elapsed());
        let t = Instant::now();
        bare.add(&mut group, std::slice::from_ref(&newcomer))?;
        bare_times.push(t.elapsed());
    }
    rows.push(ratio_row(
        &format!("mls-add-one-{n}{suffix}"),
        &engine_times,
        &bare_times,
        format!("one commit adding 1 member to a group of {n} + merge"),
    ));
    drop((engine, group));

    // Join a group of n from a Welcome (and the ratchet tree the server would serve).
    let joiners_engine = (0..reps)
        .map(|r| fresh_engine(&format!("JE{r}")))
        .collect::<Result<Vec<_>>>()?;
    let joiners_bare = (0..reps)
        .map(|r| durable(&format!("JB{r}")))
        .collect::<Result<Vec<_>>>()?;
    let mut invited: Vec<Vec<u8>> = others[..n - 1 - 2 * reps].to_vec();
    for j in &joiners_engine {
        invited.push(j.generate_key_packages(1)?.one_time.remove(0));
    }
    for j in &joiners_bare {
        invited.push(j.key_package()?);
    }
    let creator = Bare::in_memory("JC");
    let mut group = creator.create_group(b"join")?;
    let welcome = creator.add(&mut group, &invited)?;
    let tree = group.export_ratchet_tree().tls_serialize_detached()?;
    let (mut engine_times, mut bare_times) = (Vec::new(), Vec::new());
    for (je, jb) in joiners_engine.iter().zip(&joiners_bare) {
        let t = Instant::now();
        je.join_from_welcome(&welcome, &tree, &REMOVAL_KEY, |_| Ok(()))?;
        engine_times.push(t.elapsed());
        let t = Instant::now();
        jb.join(&welcome, &tree)?;
        bare_times.push(t.elapsed());
    }
    rows.push(ratio_row(
        &format!("mls-join-{n}{suffix}"),
        &engine_times,
        &bare_times,
        format!("join a group of {n} from a Welcome + ratchet tree"),
    ));
    drop(joiners_engine);

    // Application message: encrypt at one member, decrypt at the other.
    let a = fresh_engine("MA")?;
    let b = fresh_engine("MB")?;
    a.create_group(b"chat", &REMOVAL_KEY)?;
    let out = a.add_members(b"chat", &b.generate_key_packages(1)?.one_time)?;
    a.merge_pending_commit(b"chat")?;
    let welcome = out.welcome.ok_or_else(|| anyhow!("no welcome"))?;
    b.join_from_welcome(
        &welcome,
        &a.ratchet_tree(b"chat")?,
        &REMOVAL_KEY,
        |_| Ok(()),
    )?;
    let mut durable_pair = Pair::new(durable("BA")?, durable("BB")?)?;
    let mut memory_pair = Pair::new(Bare::in_memory("MA"), Bare::in_memory("MB"))?;
    let (mut engine_total, mut durable_total, mut memory_total) =
        (Duration::ZERO, Duration::ZERO, Duration::ZERO);
    for _ in 0..messages {
        let t = Instant::now();
        let ct = a.encrypt(b"chat", MESSAGE)?;
        match b.process_message(&ct, &Default::default())? {
            Incoming::Application { plaintext, .. } if plaintext == MESSAGE => {}
            other => return Err(anyhow!("unexpected: {other:?}")),
        }
        engine_total += t.elapsed();
        let t = Instant::now();
        durable_pair.message()?;
        durable_total += t.elapsed();
        let t = Instant::now();
        memory_pair.message()?;
        memory_total += t.elapsed();
    }
    let per = |d: Duration| d.as_secs_f64() * 1e6 / messages as f64;
    let (e, d, m) = (per(engine_total), per(durable_total), per(memory_total));
    let what = format!(
        "encrypt + decrypt of a {} B message in a 2-member group, mean of {messages}",
        MESSAGE.len()
    );
    rows.push(
        Row::new(format!("mls-message{suffix}"), e, "µs")
            .baseline(d)
            .bar(1.25 * d)
            .note(format!(
                "{what}; baseline openmls_sqlite_storage, one durable transaction each"
            )),
    );
    rows.push(
        Row::new(format!("mls-message-memory{suffix}"), e, "µs")
            .baseline(m)
            .note(format!("{what}; baseline openmls in memory (no bar)")),
    );
    Ok(rows)
}

/// The journal settings of a client profile (client-core's store): WAL, and every commit
/// durable, as forward secrecy needs deleted keys to stay deleted.
fn profile_connection(path: &Path) -> Result<rusqlite::Connection> {
    let connection = rusqlite::Connection::open(path)?;
    connection.pragma_update(None, "journal_mode", "WAL")?;
    connection.pragma_update(None, "synchronous", "FULL")?;
    Ok(connection)
}

/// Two bare members of one group, for `mls-message`.
struct Pair<P: OpenMlsProvider> {
    sender: Bare<P>,
    receiver: Bare<P>,
    sender_group: MlsGroup,
    receiver_group: MlsGroup,
}

impl<P: OpenMlsProvider> Pair<P> {
    fn new(sender: Bare<P>, receiver: Bare<P>) -> Result<Self> {
        let mut sender_group = sender.create_group(b"chat")?;
        let welcome = sender.add(&mut sender_group, &[receiver.key_package()?])?;
        let receiver_group = receiver.join(
            &welcome,
            &sender_group
                .export_ratchet_tree()
                .tls_serialize_detached()?,
        )?;
        Ok(Self {
            sender,
            receiver,
            sender_group,
            receiver_group,
        })
    }

    /// Encrypts [`MESSAGE`] (one transaction) and decrypts it (another).
    fn message(&mut self) -> Result<()> {
        let (sender, group) = (&self.sender, &mut self.sender_group);
        let ct = sender.transaction(|| {
            group
                .create_message(&sender.provider, &sender.signer, MESSAGE)
                .map_err(failed)?
                .tls_serialize_detached()
                .map_err(failed)
        })?;
        self.receiver.decrypt(&mut self.receiver_group, &ct)
    }
}

/// The provider of a durable bare member: RustCrypto and `openmls_sqlite_storage` in a
/// SQLite file of its own, with the engine's codec for the values.
pub(crate) struct Durable {
    crypto: RustCrypto,
    storage: SqliteStorageProvider<StateCodec, Rc<rusqlite::Connection>>,
}

impl OpenMlsProvider for Durable {
    type CryptoProvider = RustCrypto;
    type RandProvider = RustCrypto;
    type StorageProvider = SqliteStorageProvider<StateCodec, Rc<rusqlite::Connection>>;

    fn storage(&self) -> &Self::StorageProvider {
        &self.storage
    }

    fn crypto(&self) -> &Self::CryptoProvider {
        &self.crypto
    }

    fn rand(&self) -> &Self::RandProvider {
        &self.crypto
    }
}

/// openmls' errors are generic over the storage error; the bench only reports them.
fn failed(e: impl std::fmt::Debug) -> anyhow::Error {
    anyhow!("openmls: {e:?}")
}

fn ratio_row(name: &str, engine: &[Duration], bare: &[Duration], what: String) -> Row {
    let median = |v: &[Duration]| {
        let mut v = v.to_vec();
        v.sort_unstable();
        v[v.len() / 2].as_secs_f64() * 1e3
    };
    let (e, b) = (median(engine), median(bare));
    Row::new(name, e, "ms")
        .baseline(b)
        .bar(1.25 * b)
        .note(format!("{what}; median of {}", engine.len()))
}

/// A device running bare openmls, with the in-memory provider or a durable one.
pub(crate) struct Bare<P: OpenMlsProvider = OpenMlsRustCrypto> {
    provider: P,
    signer: DeviceSigner,
    credential: CredentialWithKey,
    /// The durable provider's file, where each operation is one transaction.
    connection: Option<Rc<rusqlite::Connection>>,
}

impl Bare {
    fn in_memory(user: &str) -> Self {
        Self::with_credential(
            OpenMlsRustCrypto::default(),
            None,
            SigningKey::generate(&mut OsRng),
            format!("{user}/1").into_bytes(),
        )
    }

    /// A bare device with a Rathaus device key and identity, so the delivery service
    /// accepts its key packages.
    pub(crate) fn with_key(key: SigningKey, identity: &DeviceIdentity) -> Self {
        Self::with_credential(OpenMlsRustCrypto::default(), None, key, identity.to_bytes())
    }
}

impl Bare<Durable> {
    /// A bare device whose state is in a new SQLite file at `path`.
    fn durable(user: &str, path: &Path) -> Result<Self> {
        let mut connection = profile_connection(path)?;
        SqliteStorageProvider::<StateCodec, &mut rusqlite::Connection>::new(&mut connection)
            .run_migrations()
            .map_err(failed)?;
        let connection = Rc::new(connection);
        let provider = Durable {
            crypto: RustCrypto::default(),
            storage: SqliteStorageProvider::new(connection.clone()),
        };
        Ok(Self::with_credential(
            provider,
            Some(connection),
            SigningKey::generate(&mut OsRng),
            format!("{user}/1").into_bytes(),
        ))
    }
}

impl<P: OpenMlsProvider> Bare<P> {
    fn with_credential(
        provider: P,
        connection: Option<Rc<rusqlite::Connection>>,
        key: SigningKey,
        identity: Vec<u8>,
    ) -> Self {
        let signer = DeviceSigner::new(key);
        let credential = CredentialWithKey {
            credential: BasicCredential::new(identity).into(),
            signature_key: SignaturePublicKey::from(signer.public_key().to_vec()),
        };
        Self {
            provider,
            signer,
            credential,
            connection,
        }
    }

    /// Runs `f` as one durable transaction of the device's file (in memory: just `f`).
    fn transaction<T>(&self, f: impl FnOnce() -> Result<T>) -> Result<T> {
        let Some(connection) = &self.connection else {
            return f();
        };
        connection.execute_batch("BEGIN IMMEDIATE")?;
        match f() {
            Ok(value) => {
                connection.execute_batch("COMMIT")?;
                Ok(value)
            }
            Err(e) => {
                let _ = connection.execute_batch("ROLLBACK");
                Err(e)
            }
        }
    }

    /// A key package as `MLSMessage` bytes, with the capabilities Rathaus clients use
    /// (last resort, and the group policy extension in every secret group's context).
    pub(crate) fn key_package(&self) -> Result<Vec<u8>> {
        let capabilities = Capabilities::builder()
            .extensions(vec![
                ExtensionType::LastResort,
                ExtensionType::Unknown(GROUP_POLICY_EXTENSION),
            ])
            .build();
        let bundle = self.transaction(|| {
            KeyPackage::builder()
                .leaf_node_capabilities(capabilities)
                .build(
                    CIPHERSUITE,
                    &self.provider,
                    &self.signer,
                    self.credential.clone(),
                )
                .map_err(failed)
        })?;
        Ok(MlsMessageOut::from(bundle.key_package().clone()).tls_serialize_detached()?)
    }

    fn create_group(&self, gid: &[u8]) -> Result<MlsGroup> {
        let external_senders = vec![ExternalSender::new(
            SignaturePublicKey::from(REMOVAL_KEY.to_vec()),
            BasicCredential::new(b"rathaus-server".to_vec()).into(),
        )];
        let config = MlsGroupCreateConfig::builder()
            .ciphersuite(CIPHERSUITE)
            .wire_format_policy(MIXED_PLAINTEXT_WIRE_FORMAT_POLICY)
            .use_ratchet_tree_extension(false)
            .number_of_resumption_psks(8)
            .max_past_epochs(PAST_EPOCHS)
            .with_group_context_extensions(Extensions::single(Extension::ExternalSenders(
                external_senders,
            ))?)
            .build();
        self.transaction(|| {
            MlsGroup::new_with_group_id(
                &self.provider,
                &self.signer,
                &config,
                GroupId::from_slice(gid),
                self.credential.clone(),
            )
            .map_err(failed)
        })
    }

    /// Validates the key packages, stages one commit adding them, merges it; returns the
    /// Welcome bytes. Staging and merging are one transaction each, as in the engine.
    fn add(&self, group: &mut MlsGroup, key_packages: &[Vec<u8>]) -> Result<Vec<u8>> {
        let key_packages = key_packages
            .iter()
            .map(|bytes| {
                let MlsMessageBodyIn::KeyPackage(kp) =
                    MlsMessageIn::tls_deserialize_exact(bytes)?.extract()
                else {
                    return Err(anyhow!("not a key package"));
                };
                let kp: KeyPackageIn = kp;
                Ok(kp.validate(self.provider.crypto(), ProtocolVersion::Mls10)?)
            })
            .collect::<Result<Vec<_>>>()?;
        let welcome = self.transaction(|| {
            let bundle = group
                .commit_builder()
                .consume_proposal_store(true)
                .propose_adds(key_packages)
                .load_psks(self.provider.storage())
                .map_err(failed)?
                .create_group_info(true)
                .build(
                    self.provider.rand(),
                    self.provider.crypto(),
                    &self.signer,
                    |_| true,
                )
                .map_err(failed)?
                .stage_commit(&self.provider)
                .map_err(failed)?;
            let (commit, welcome, group_info) = bundle.into_messages();
            // Serialised as the engine does, for the delivery service.
            commit.tls_serialize_detached()?;
            if let Some(info) = group_info {
                info.tls_serialize_detached()?;
            }
            Ok(welcome
                .ok_or_else(|| anyhow!("no welcome"))?
                .tls_serialize_detached()?)
        })?;
        self.transaction(|| group.merge_pending_commit(&self.provider).map_err(failed))?;
        Ok(welcome)
    }

    pub(crate) fn join(&self, welcome: &[u8], tree: &[u8]) -> Result<MlsGroup> {
        let MlsMessageBodyIn::Welcome(welcome) =
            MlsMessageIn::tls_deserialize_exact(welcome)?.extract()
        else {
            return Err(anyhow!("not a welcome"));
        };
        let tree = RatchetTreeIn::tls_deserialize_exact(tree)?;
        let config = MlsGroupJoinConfig::builder()
            .wire_format_policy(MIXED_PLAINTEXT_WIRE_FORMAT_POLICY)
            .use_ratchet_tree_extension(false)
            .number_of_resumption_psks(8)
            .max_past_epochs(PAST_EPOCHS)
            .build();
        self.transaction(|| {
            StagedWelcome::new_from_welcome(&self.provider, &config, welcome, Some(tree))
                .map_err(failed)?
                .into_group(&self.provider)
                .map_err(failed)
        })
    }

    /// Processes one handshake or application message as a member does: decrypts
    /// application messages, stores proposals, merges commits. Returns whether it was an
    /// application message.
    pub(crate) fn process(&self, group: &mut MlsGroup, message: &[u8]) -> Result<bool> {
        let message = MlsMessageIn::tls_deserialize_exact(message)?.try_into_protocol_message()?;
        self.transaction(|| {
            match group
                .process_message(&self.provider, message)
                .map_err(failed)?
                .into_content()
            {
                ProcessedMessageContent::ApplicationMessage(m) => {
                    drop(m.into_bytes());
                    Ok(true)
                }
                ProcessedMessageContent::ProposalMessage(p)
                | ProcessedMessageContent::ExternalJoinProposalMessage(p) => {
                    group
                        .store_pending_proposal(self.provider.storage(), *p)
                        .map_err(failed)?;
                    Ok(false)
                }
                ProcessedMessageContent::StagedCommitMessage(staged) => {
                    group
                        .merge_staged_commit(&self.provider, *staged)
                        .map_err(failed)?;
                    Ok(false)
                }
                #[allow(unreachable_patterns)]
                _ => Err(anyhow!("unsupported message content")),
            }
        })
    }

    fn decrypt(&self, group: &mut MlsGroup, message: &[u8]) -> Result<()> {
        let message = MlsMessageIn::tls_deserialize_exact(message)?.try_into_protocol_message()?;
        self.transaction(|| {
            match group
                .process_message(&self.provider, message)
                .map_err(failed)?
                .into_content()
            {
                ProcessedMessageContent::ApplicationMessage(m) => {
                    if m.into_bytes() == MESSAGE {
                        Ok(())
                    } else {
                        Err(anyhow!("wrong plaintext"))
                    }
                }
                _ => Err(anyhow!("not the application message")),
            }
        })
    }
}
