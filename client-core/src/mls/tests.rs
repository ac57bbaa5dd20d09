//! The engine end to end: an owner creates a secret group, admits two
//! members, everybody talks, and the DESIGN §5.4/§5.5 rules hold — with every
//! engine reopened from its SQLite file between steps.

use std::error::Error;
use std::path::{Path, PathBuf};

use ed25519_dalek::SigningKey;
use openmls::prelude::tls_codec::{Deserialize as _, Serialize as _};
use openmls::prelude::{
    ExternalProposal, GroupEpoch, GroupId, KeyPackageIn, LeafNodeIndex, MlsMessageBodyIn,
    MlsMessageIn, ProcessedMessageContent, ProtocolVersion, SenderExtensionIndex,
};
use openmls_sqlite_storage::SqliteStorageProvider;
use openmls_traits::OpenMlsProvider as _;

use rathaus_protocol::mls::CommitRefusal;

use super::provider::BINARY_V1;
use super::*;

type TestResult = Result<(), Box<dyn Error>>;

const GROUP: &[u8] = b"bauamt/secret";

struct Device {
    path: PathBuf,
    seed: [u8; 32],
    identity: DeviceIdentity,
}

impl Device {
    fn new(dir: &Path, user: &str, seed: u8) -> Result<Self, MlsError> {
        Ok(Self {
            path: dir.join(format!("{user}.sqlite")),
            seed: [seed; 32],
            identity: DeviceIdentity::new(user, "1")?,
        })
    }

    /// A fresh engine on the device's file: nothing survives in memory.
    fn engine(&self) -> Result<MlsEngine, MlsError> {
        MlsEngine::open(
            &self.path,
            SigningKey::from_bytes(&self.seed),
            self.identity.clone(),
        )
    }
}

/// Joining without the client's Welcome checks (those are the secret module's, tested
/// end to end); returns the group id.
trait JoinUnchecked {
    fn join(&self, welcome: &[u8], tree: &[u8]) -> Result<Vec<u8>, MlsError>;
}

impl JoinUnchecked for MlsEngine {
    fn join(&self, welcome: &[u8], tree: &[u8]) -> Result<Vec<u8>, MlsError> {
        let key = server_key().verifying_key().to_bytes();
        Ok(self
            .join_from_welcome(welcome, tree, &key, |_| Ok(()))?
            .group_id)
    }
}

fn server_key() -> SigningKey {
    SigningKey::from_bytes(&[0xee; 32])
}

fn key_package_in(bytes: &[u8]) -> Result<KeyPackageIn, Box<dyn Error>> {
    match MlsMessageIn::tls_deserialize_exact(bytes)?.extract() {
        MlsMessageBodyIn::KeyPackage(kp) => Ok(kp),
        _ => Err("not a key package".into()),
    }
}

fn authenticators(devices: &[&Device]) -> Result<Vec<Vec<u8>>, MlsError> {
    devices
        .iter()
        .map(|d| d.engine()?.epoch_authenticator(GROUP))
        .collect()
}

fn assert_in_sync(devices: &[&Device]) -> TestResult {
    let all = authenticators(devices)?;
    assert!(all.windows(2).all(|w| w[0] == w[1]), "members diverged");
    Ok(())
}

#[test]
fn identity_round_trips_and_rejects_garbage() -> TestResult {
    let id = DeviceIdentity::new("P1001", "2")?;
    assert_eq!(id.to_bytes(), b"P1001/2");
    assert_eq!(DeviceIdentity::parse(b"P1001/2")?, id);
    for bad in [
        &b"P1001"[..],
        b"/1",
        b"u/",
        b"a b/1",
        b"u/1/2",
        b"\xff/1",
        b"u/phone",
        b"u/02",
    ] {
        assert!(DeviceIdentity::parse(bad).is_err(), "{bad:?}");
    }
    Ok(())
}

#[test]
fn secret_group_lifecycle() -> TestResult {
    let dir = tempfile::tempdir()?;
    let owner = Device::new(dir.path(), "P1001", 1)?;
    let anna = Device::new(dir.path(), "P2002", 2)?;
    let jonas = Device::new(dir.path(), "P3003", 3)?;
    let server = DeviceSigner::new(server_key());

    // Key packages, then birth of the group with the server's removal key.
    let anna_kps = anna.engine()?.generate_key_packages(2)?;
    let jonas_kps = jonas.engine()?.generate_key_packages(2)?;
    assert_eq!(anna_kps.one_time.len(), 2);
    assert!(key_package_in(&anna_kps.last_resort).is_ok());

    owner.engine()?.create_group(GROUP, &server.public_key())?;
    let out = owner.engine()?.add_members(
        GROUP,
        &[anna_kps.one_time[0].clone(), jonas_kps.one_time[0].clone()],
    )?;
    assert_eq!(out.new_epoch, 1);
    assert!(out.group_info.is_some());
    // Staged, not applied, until the server accepts it.
    assert_eq!(owner.engine()?.epoch(GROUP)?, 0);
    assert_eq!(owner.engine()?.merge_pending_commit(GROUP)?, 1);

    // Handshake messages are PublicMessage, so the server can validate them.
    let commit = MlsMessageIn::tls_deserialize_exact(out.commit.as_slice())?;
    assert!(matches!(
        commit.extract(),
        MlsMessageBodyIn::PublicMessage(_)
    ));

    let tree = owner.engine()?.ratchet_tree(GROUP)?;
    let welcome = out.welcome.ok_or("no welcome")?;
    assert_eq!(anna.engine()?.join(&welcome, &tree)?, GROUP);
    assert_eq!(jonas.engine()?.join(&welcome, &tree)?, GROUP);
    assert_in_sync(&[&owner, &anna, &jonas])?;
    let members = anna.engine()?.members(GROUP)?;
    assert_eq!(members.len(), 3);
    let owner_key = owner.engine()?.signature_key();
    assert!(members
        .iter()
        .any(|m| m.identity == owner.identity && m.signature_key == owner_key));

    // Application messages round trip, as PrivateMessage.
    let ct = owner.engine()?.encrypt(GROUP, b"Sitzung um 10")?;
    let parsed = MlsMessageIn::tls_deserialize_exact(ct.as_slice())?;
    assert!(matches!(
        parsed.extract(),
        MlsMessageBodyIn::PrivateMessage(_)
    ));
    for member in [&anna, &jonas] {
        assert_eq!(
            member.engine()?.process_message(&ct, &Default::default())?,
            Incoming::Application {
                sender: owner.identity.clone(),
                plaintext: b"Sitzung um 10".to_vec(),
            }
        );
    }
    let reply = anna.engine()?.encrypt(GROUP, b"ok")?;
    match owner
        .engine()?
        .process_message(&reply, &Default::default())?
    {
        Incoming::Application { sender, plaintext } => {
            assert_eq!(sender, anna.identity);
            assert_eq!(plaintext, b"ok");
        }
        other => return Err(format!("unexpected {other:?}").into()),
    }

    // The server proposes adding someone: the engine refuses to store it ...
    let mallory = Device::new(dir.path(), "P6666", 6)?;
    let mallory_kp = key_package_in(&mallory.engine()?.generate_key_packages(0)?.last_resort)?;
    let provider_crypto = openmls_rust_crypto::RustCrypto::default();
    let mallory_kp = mallory_kp.validate(&provider_crypto, ProtocolVersion::Mls10)?;
    let external_add = ExternalProposal::new_add::<SqliteMlsProvider<'_>>(
        mallory_kp,
        GroupId::from_slice(GROUP),
        GroupEpoch::from(1),
        &server,
        SenderExtensionIndex::new(0),
    )?
    .to_bytes()?;
    assert!(matches!(
        anna.engine()?
            .process_message(&external_add, &Default::default()),
        Err(MlsError::ExternalAdd { committer: None })
    ));

    // ... and a rogue member who stores and commits it anyway is refused.
    // The owner simulates a client that had stored the proposal: the commit
    // then parses and the engine's own rule rejects it; Anna never stored it,
    // so openmls already fails to resolve the reference.
    for member in [&jonas, &owner] {
        store_proposal_bypassing_engine(member, &external_add)?;
    }
    let rogue_commit = {
        let engine = jonas.engine()?;
        let provider = engine.provider();
        let mut group = engine.load(&provider, GROUP)?;
        let (commit, _, _) = group.commit_to_pending_proposals(&provider, &engine.signer)?;
        commit.tls_serialize_detached()?
    };
    match owner
        .engine()?
        .process_message(&rogue_commit, &Default::default())
    {
        Err(MlsError::Refused(CommitRefusal::ExternalAdd)) => {}
        other => return Err(format!("rogue commit not refused: {other:?}").into()),
    }
    assert!(anna
        .engine()?
        .process_message(&rogue_commit, &Default::default())
        .is_err());
    for member in [&owner, &anna] {
        assert_eq!(member.engine()?.epoch(GROUP)?, 1);
    }
    jonas.engine()?.discard_pending_commit(GROUP)?;

    // A self-update by the owner moves everyone on, the rogue proposal is gone.
    let update = owner.engine()?.self_update(GROUP)?;
    owner.engine()?.merge_pending_commit(GROUP)?;
    for member in [&anna, &jonas] {
        match member
            .engine()?
            .process_message(&update.commit, &Default::default())?
        {
            Incoming::Commit(summary) => {
                assert_eq!(&summary.verdict.committer, owner.identity.credential_id());
                let v = &summary.verdict;
                assert!(v.added.is_empty() && v.removed.is_empty());
                assert_eq!(summary.epoch, 2);
            }
            other => return Err(format!("unexpected {other:?}").into()),
        }
    }
    assert_in_sync(&[&owner, &anna, &jonas])?;

    // The server proposes removing Jonas; Anna commits it (DESIGN §5.5).
    let jonas_leaf = anna
        .engine()?
        .members(GROUP)?
        .into_iter()
        .find(|m| m.identity == jonas.identity)
        .ok_or("jonas missing")?
        .leaf_index;
    let external_remove = ExternalProposal::new_remove::<SqliteMlsProvider<'_>>(
        LeafNodeIndex::new(jonas_leaf),
        GroupId::from_slice(GROUP),
        GroupEpoch::from(2),
        &server,
        SenderExtensionIndex::new(0),
    )?
    .to_bytes()?;
    for member in [&owner, &anna, &jonas] {
        assert_eq!(
            member
                .engine()?
                .process_message(&external_remove, &Default::default())?,
            Incoming::Proposal {
                sender: ProposalSender::External,
                kind: ProposalKind::Remove(jonas.identity.clone()),
            }
        );
    }
    let removal = anna.engine()?.commit_pending_proposals(GROUP)?;
    anna.engine()?.merge_pending_commit(GROUP)?;
    match owner
        .engine()?
        .process_message(&removal.commit, &Default::default())?
    {
        Incoming::Commit(summary) => {
            assert_eq!(&summary.verdict.committer, anna.identity.credential_id());
            let removed: Vec<_> = summary
                .verdict
                .removed
                .iter()
                .map(|d| &d.credential)
                .collect();
            assert_eq!(removed, vec![jonas.identity.credential_id()]);
            assert!(!summary.self_removed);
        }
        other => return Err(format!("unexpected {other:?}").into()),
    }
    match jonas
        .engine()?
        .process_message(&removal.commit, &Default::default())?
    {
        Incoming::Commit(summary) => assert!(summary.self_removed),
        other => return Err(format!("unexpected {other:?}").into()),
    }
    assert_in_sync(&[&owner, &anna])?;
    assert_eq!(owner.engine()?.members(GROUP)?.len(), 2);
    assert!(owner.engine()?.group_info(GROUP).is_ok());
    Ok(())
}

/// Stores a proposal through raw openmls, the way a client ignoring
/// DESIGN §5.4 would.
fn store_proposal_bypassing_engine(device: &Device, proposal: &[u8]) -> TestResult {
    let engine = device.engine()?;
    let provider = engine.provider();
    let mut group = engine.load(&provider, GROUP)?;
    let message = MlsMessageIn::tls_deserialize_exact(proposal)?.try_into_protocol_message()?;
    match group.process_message(&provider, message)?.into_content() {
        ProcessedMessageContent::ProposalMessage(p) => {
            group.store_pending_proposal(provider.storage(), *p)?;
            Ok(())
        }
        _ => Err("expected a proposal".into()),
    }
}

#[test]
fn failed_operation_leaves_no_trace_and_shares_the_file() -> TestResult {
    let dir = tempfile::tempdir()?;
    let owner = Device::new(dir.path(), "P1001", 1)?;
    let engine = owner.engine()?;
    // The client's own tables live in the same file.
    engine
        .connection()
        .execute_batch("CREATE TABLE history (seq INTEGER PRIMARY KEY, body BLOB);")?;
    engine.create_group(GROUP, &[9; 32])?;
    assert!(matches!(
        engine.process_message(b"\x00\x01garbage", &Default::default()),
        Err(MlsError::Malformed { .. })
    ));
    assert!(matches!(
        engine.epoch(b"no such group"),
        Err(MlsError::UnknownGroup(_))
    ));
    assert!(matches!(
        engine.add_members(GROUP, &[vec![0, 1, 0, 5]]),
        Err(MlsError::Malformed { .. })
    ));
    assert_eq!(engine.epoch(GROUP)?, 0);
    Ok(())
}

#[test]
fn group_policy_travels_in_the_group_context() -> TestResult {
    let dir = tempfile::tempdir()?;
    let owner = Device::new(dir.path(), "P1001", 1)?;
    let anna = Device::new(dir.path(), "P2002", 2)?;
    let server = DeviceSigner::new(server_key());

    owner
        .engine()?
        .create_group_with_policy(GROUP, &server.public_key(), Some(b"\x01owners"))?;
    let kps = anna.engine()?.generate_key_packages(1)?;
    let out = owner
        .engine()?
        .add_members(GROUP, &[kps.one_time[0].clone()])?;
    owner.engine()?.merge_pending_commit(GROUP)?;
    let tree = owner.engine()?.ratchet_tree(GROUP)?;
    anna.engine()?.join_from_welcome(
        &out.welcome.ok_or("no welcome")?,
        &tree,
        &server_key().verifying_key().to_bytes(),
        |_| Ok(()),
    )?;
    for device in [&owner, &anna] {
        assert_eq!(
            device.engine()?.group_policy(GROUP)?.as_deref(),
            Some(&b"\x01owners"[..])
        );
    }
    assert_eq!(anna.engine()?.pending_proposals(GROUP)?, 0);
    anna.engine()?.delete_group(GROUP)?;
    assert!(!anna.engine()?.has_group(GROUP)?);
    Ok(())
}

/// Errors logged through `log` (openmls' logging), with the thread that logged them.
static LOGGED: std::sync::Mutex<Vec<(std::thread::ThreadId, String)>> =
    std::sync::Mutex::new(Vec::new());

struct Captured;

impl log::Log for Captured {
    fn enabled(&self, metadata: &log::Metadata<'_>) -> bool {
        metadata.level() <= log::Level::Error
    }

    fn log(&self, record: &log::Record<'_>) {
        if self.enabled(record.metadata()) {
            if let Ok(mut logged) = LOGGED.lock() {
                logged.push((std::thread::current().id(), record.args().to_string()));
            }
        }
    }

    fn flush(&self) {}
}

fn errors_logged_here() -> Vec<String> {
    let here = std::thread::current().id();
    LOGGED
        .lock()
        .map(|l| {
            l.iter()
                .filter(|(t, _)| *t == here)
                .map(|(_, m)| m.clone())
                .collect()
        })
        .unwrap_or_default()
}

/// Catching up, a joiner meets the commit its Welcome already took it past: refused as
/// openmls refuses it (the caller shows nothing for it), and without an error in the log
/// of an app that bridges `log`.
#[test]
fn a_commit_of_an_epoch_left_behind_is_refused_without_an_error_logged() -> TestResult {
    static LOGGER: Captured = Captured;
    // Another test of this binary may have set it first; it is the same logger.
    let _ = log::set_logger(&LOGGER);
    log::set_max_level(log::LevelFilter::Error);

    let dir = tempfile::tempdir()?;
    let owner = Device::new(dir.path(), "P1001", 1)?;
    let anna = Device::new(dir.path(), "P2002", 2)?;
    let server = DeviceSigner::new(server_key());
    owner.engine()?.create_group(GROUP, &server.public_key())?;
    let kps = anna.engine()?.generate_key_packages(1)?;
    let out = owner
        .engine()?
        .add_members(GROUP, &[kps.one_time[0].clone()])?;
    owner.engine()?.merge_pending_commit(GROUP)?;
    let tree = owner.engine()?.ratchet_tree(GROUP)?;
    anna.engine()?
        .join(&out.welcome.ok_or("no welcome")?, &tree)?;
    assert_eq!(anna.engine()?.epoch(GROUP)?, 1);

    match anna
        .engine()?
        .process_message(&out.commit, &Default::default())
    {
        Err(MlsError::Protocol { operation, detail }) => {
            assert_eq!(operation, "process message");
            assert_eq!(detail, "ValidationError(WrongEpoch)");
        }
        other => return Err(format!("expected a refusal, got {other:?}").into()),
    }
    assert_eq!(anna.engine()?.epoch(GROUP)?, 1);
    assert_eq!(errors_logged_here(), Vec::<String>::new());

    // A message of the epoch the group is in still goes through openmls.
    let ct = owner.engine()?.encrypt(GROUP, b"Willkommen")?;
    assert!(matches!(
        anna.engine()?.process_message(&ct, &Default::default())?,
        Incoming::Application { .. }
    ));
    Ok(())
}

/// The group kept in memory never outlives the file's state: a message processed inside a
/// transaction the caller rolls back can be processed again, and a change made through a
/// second connection is seen.
#[test]
fn in_memory_group_follows_rollbacks_and_other_connections() -> TestResult {
    let dir = tempfile::tempdir()?;
    let (anna, jonas) = (
        Device::new(dir.path(), "P1001", 1)?,
        Device::new(dir.path(), "P1002", 2)?,
    );
    let (a, j) = (anna.engine()?, jonas.engine()?);
    a.create_group(GROUP, &server_key().verifying_key().to_bytes())?;
    let out = a.add_members(GROUP, &j.generate_key_packages(1)?.one_time)?;
    a.merge_pending_commit(GROUP)?;
    j.join_from_welcome(
        &out.welcome.ok_or("no welcome")?,
        &a.ratchet_tree(GROUP)?,
        &server_key().verifying_key().to_bytes(),
        |_| Ok(()),
    )?;

    let first = a.encrypt(GROUP, b"erste")?;
    j.connection().execute_batch("BEGIN IMMEDIATE")?;
    assert!(matches!(
        j.process_message(&first, &Default::default())?,
        Incoming::Application { .. }
    ));
    j.connection().execute_batch("ROLLBACK")?;
    // The rolled-back decryption consumed nothing.
    match j.process_message(&first, &Default::default())? {
        Incoming::Application { plaintext, .. } => assert_eq!(plaintext, b"erste"),
        other => panic!("{other:?}"),
    }
    // Processed for good now: a replay is refused.
    assert!(j.process_message(&first, &Default::default()).is_err());

    // Another connection to Anna's file moves the group on; this engine notices.
    assert_eq!(a.epoch(GROUP)?, 1);
    let other = anna.engine()?;
    other.self_update(GROUP)?;
    other.merge_pending_commit(GROUP)?;
    assert_eq!(a.epoch(GROUP)?, 2);
    let second = a.encrypt(GROUP, b"zweite")?;
    assert!(
        j.process_message(&second, &Default::default()).is_err(),
        "Jonas is still in epoch 1"
    );
    Ok(())
}

/// The stored message secrets of [`GROUP`], as this connection sees them.
fn stored_secrets(connection: &Connection) -> Result<Vec<u8>, rusqlite::Error> {
    connection.query_row(
        "SELECT group_data FROM openmls_group_data WHERE data_type = 'message_secrets'",
        [],
        |row| row.get(0),
    )
}

#[test]
fn batch_writes_message_secrets_once_before_commit() -> TestResult {
    let dir = tempfile::tempdir()?;
    let (anna, jonas) = (
        Device::new(dir.path(), "P1001", 1)?,
        Device::new(dir.path(), "P1002", 2)?,
    );
    let (a, j) = (anna.engine()?, jonas.engine()?);
    a.create_group(GROUP, &server_key().verifying_key().to_bytes())?;
    let out = a.add_members(GROUP, &j.generate_key_packages(1)?.one_time)?;
    a.merge_pending_commit(GROUP)?;
    j.join(&out.welcome.ok_or("no welcome")?, &a.ratchet_tree(GROUP)?)?;
    let texts: [&[u8]; 3] = [b"eins", b"zwei", b"drei"];
    let sent = texts
        .iter()
        .map(|t| a.encrypt(GROUP, t))
        .collect::<Result<Vec<_>, _>>()?;
    let roster = Roster::default();
    let plaintext = |incoming: Incoming| match incoming {
        Incoming::Application { plaintext, .. } => Ok(plaintext),
        other => Err(MlsError::protocol("test", format!("{other:?}"))),
    };

    // A batch that is rolled back consumes nothing.
    j.connection().execute_batch("BEGIN IMMEDIATE")?;
    let failed: Result<(), MlsError> = j.in_batch(|| {
        plaintext(j.process_message(&sent[0], &roster)?)?;
        Err(MlsError::protocol("test", "the page fails"))
    });
    assert!(failed.is_err());
    j.connection().execute_batch("ROLLBACK")?;

    // A batch holds the writes back until its end, also across a refused replay.
    let before = stored_secrets(j.connection())?;
    j.connection().execute_batch("BEGIN IMMEDIATE")?;
    let read = j.in_batch(|| {
        let mut read = vec![plaintext(j.process_message(&sent[0], &roster)?)?];
        assert_eq!(stored_secrets(j.connection())?, before, "written at once");
        assert!(
            j.process_message(&sent[0], &roster).is_err(),
            "a replay is refused"
        );
        for message in &sent[1..] {
            read.push(plaintext(j.process_message(message, &roster)?)?);
        }
        assert_eq!(stored_secrets(j.connection())?, before, "written at once");
        Ok::<_, MlsError>(read)
    })?;
    assert_ne!(
        stored_secrets(j.connection())?,
        before,
        "not written at the end"
    );
    j.connection().execute_batch("COMMIT")?;
    assert_eq!(read, texts.map(<[u8]>::to_vec));

    // In the file: the keys are gone, a replay is refused after a restart.
    drop(j);
    let j = jonas.engine()?;
    for message in &sent {
        assert!(j.process_message(message, &roster).is_err());
    }

    // A commit in the middle of a batch: the held secrets are written first, and the
    // messages of both epochs are read once.
    let before_commit = a.encrypt(GROUP, b"vorher")?;
    let commit = a.self_update(GROUP)?;
    a.merge_pending_commit(GROUP)?;
    let after_commit = a.encrypt(GROUP, b"nachher")?;
    j.connection().execute_batch("BEGIN IMMEDIATE")?;
    j.in_batch(|| {
        assert_eq!(
            plaintext(j.process_message(&before_commit, &roster)?)?,
            b"vorher"
        );
        assert!(matches!(
            j.process_message(&commit.commit, &roster)?,
            Incoming::Commit(_)
        ));
        assert_eq!(
            plaintext(j.process_message(&after_commit, &roster)?)?,
            b"nachher"
        );
        Ok::<_, MlsError>(())
    })?;
    j.connection().execute_batch("COMMIT")?;
    drop(j);
    let j = jonas.engine()?;
    assert_eq!(j.epoch(GROUP)?, a.epoch(GROUP)?);
    assert!(j.process_message(&before_commit, &roster).is_err());
    assert!(j.process_message(&after_commit, &roster).is_err());
    let last = a.encrypt(GROUP, b"zuletzt")?;
    assert_eq!(plaintext(j.process_message(&last, &roster)?)?, b"zuletzt");
    Ok(())
}

/// Key packages of `n` throwaway devices (in-memory files), as `MLSMessage` bytes.
fn throwaway_key_packages(n: usize) -> Result<Vec<Vec<u8>>, MlsError> {
    (0..n)
        .map(|i| {
            let engine = MlsEngine::with_connection(
                Connection::open_in_memory()?,
                SigningKey::from_bytes(&[0x40 + i as u8; 32]),
                DeviceIdentity::new(&format!("M{i}"), "1")?,
            )?;
            Ok(engine.generate_key_packages(1)?.one_time.remove(0))
        })
        .collect()
}

/// The group data types (`tree`, `message_secrets`, ...) stored in binary in `path`.
fn binary_types(path: &Path) -> Result<Vec<String>, Box<dyn Error>> {
    let connection = Connection::open(path)?;
    let mut statement = connection
        .prepare("SELECT data_type FROM openmls_group_data WHERE substr(group_data, 1, 1) = ?1")?;
    let types = statement
        .query_map([[BINARY_V1]], |row| row.get(0))?
        .collect::<Result<Vec<String>, _>>()?;
    Ok(types)
}

#[test]
fn large_state_is_stored_in_binary_and_reloads() -> TestResult {
    let dir = tempfile::tempdir()?;
    let (anna, jonas) = (
        Device::new(dir.path(), "P1001", 1)?,
        Device::new(dir.path(), "P1002", 2)?,
    );
    anna.engine()?
        .create_group(GROUP, &server_key().verifying_key().to_bytes())?;
    let mut invited = throwaway_key_packages(30)?;
    invited.push(jonas.engine()?.generate_key_packages(1)?.one_time.remove(0));
    let out = anna.engine()?.add_members(GROUP, &invited)?;
    // The staged commit (a large pending state) survives a reopen.
    assert!(binary_types(&anna.path)?.contains(&"group_state".to_owned()));
    anna.engine()?.merge_pending_commit(GROUP)?;
    jonas.engine()?.join_from_welcome(
        &out.welcome.ok_or("no welcome")?,
        &anna.engine()?.ratchet_tree(GROUP)?,
        &server_key().verifying_key().to_bytes(),
        |_| Ok(()),
    )?;
    // A few epochs, so past epochs' message secrets (every member's leaf) are kept.
    for round in 0..4 {
        let commit = anna.engine()?.self_update(GROUP)?;
        anna.engine()?.merge_pending_commit(GROUP)?;
        assert!(matches!(
            jonas
                .engine()?
                .process_message(&commit.commit, &Default::default())?,
            Incoming::Commit(_)
        ));
        let text = format!("Runde {round}");
        let message = anna.engine()?.encrypt(GROUP, text.as_bytes())?;
        match jonas
            .engine()?
            .process_message(&message, &Default::default())?
        {
            Incoming::Application { plaintext, .. } => assert_eq!(plaintext, text.as_bytes()),
            other => panic!("{other:?}"),
        }
    }
    assert_in_sync(&[&anna, &jonas])?;
    for device in [&anna, &jonas] {
        let binary = binary_types(&device.path)?;
        for data_type in ["tree", "message_secrets"] {
            assert!(
                binary.contains(&data_type.to_owned()),
                "{data_type}: {binary:?}"
            );
        }
        // Keys stay JSON: the group id is looked up by its JSON form.
        let connection = Connection::open(&device.path)?;
        let key: Vec<u8> =
            connection.query_row("SELECT group_id FROM openmls_group_data LIMIT 1", [], |r| {
                r.get(0)
            })?;
        assert_eq!(key, serde_json::to_vec(&GroupId::from_slice(GROUP))?);
    }
    Ok(())
}

/// An openmls provider storing everything as JSON, as earlier Rathaus versions did.
struct JsonProvider<'a> {
    crypto: &'a RustCrypto,
    storage: SqliteStorageProvider<JsonCodec, &'a Connection>,
}

impl<'a> openmls_traits::OpenMlsProvider for JsonProvider<'a> {
    type CryptoProvider = RustCrypto;
    type RandProvider = RustCrypto;
    type StorageProvider = SqliteStorageProvider<JsonCodec, &'a Connection>;

    fn storage(&self) -> &Self::StorageProvider {
        &self.storage
    }

    fn crypto(&self) -> &Self::CryptoProvider {
        self.crypto
    }

    fn rand(&self) -> &Self::RandProvider {
        self.crypto
    }
}

/// Opens `device`'s file with JSON storage, as earlier versions did.
fn json_connection(device: &Device) -> Result<Connection, Box<dyn Error>> {
    let mut connection = Connection::open(&device.path)?;
    SqliteStorageProvider::<JsonCodec, &mut Connection>::new(&mut connection).run_migrations()?;
    Ok(connection)
}

#[test]
fn profiles_written_as_json_stay_readable() -> TestResult {
    let dir = tempfile::tempdir()?;
    let (anna, jonas) = (
        Device::new(dir.path(), "P1001", 1)?,
        Device::new(dir.path(), "P1002", 2)?,
    );
    let crypto = RustCrypto::default();
    // Jonas' key package and Anna's group of 32, both written with JSON only.
    let jonas_key_package = {
        let connection = json_connection(&jonas)?;
        let provider = JsonProvider {
            crypto: &crypto,
            storage: SqliteStorageProvider::new(&connection),
        };
        let signer = DeviceSigner::new(SigningKey::from_bytes(&jonas.seed));
        let bundle = KeyPackage::builder()
            .leaf_node_capabilities(rathaus_capabilities())
            .build(
                CIPHERSUITE,
                &provider,
                &signer,
                signer.credential_with_key(&jonas.identity),
            )?;
        encode(MlsMessageOut::from(bundle.key_package().clone()))?
    };
    let welcome = {
        let connection = json_connection(&anna)?;
        let provider = JsonProvider {
            crypto: &crypto,
            storage: SqliteStorageProvider::new(&connection),
        };
        let signer = DeviceSigner::new(SigningKey::from_bytes(&anna.seed));
        let config = MlsGroupCreateConfig::builder()
            .ciphersuite(CIPHERSUITE)
            .capabilities(rathaus_capabilities())
            .wire_format_policy(MIXED_PLAINTEXT_WIRE_FORMAT_POLICY)
            .use_ratchet_tree_extension(false)
            .max_past_epochs(PAST_EPOCHS)
            .build();
        let mut group = MlsGroup::new_with_group_id(
            &provider,
            &signer,
            &config,
            GroupId::from_slice(GROUP),
            signer.credential_with_key(&anna.identity),
        )?;
        let mut invited = throwaway_key_packages(30)?;
        invited.push(jonas_key_package);
        let key_packages = invited
            .iter()
            .map(|bytes| {
                key_package_in(bytes)?
                    .validate(&crypto, ProtocolVersion::Mls10)
                    .map_err(Into::into)
            })
            .collect::<Result<Vec<_>, Box<dyn Error>>>()?;
        let (_, welcome, _) = group.add_members(&provider, &signer, &key_packages)?;
        group.merge_pending_commit(&provider)?;
        welcome.tls_serialize_detached()?
    };
    assert!(binary_types(&anna.path)?.is_empty());
    assert!(binary_types(&jonas.path)?.is_empty());

    // The engine reads both files: Anna's group, Jonas' key package (found by its JSON
    // key), and carries on, writing what it rewrites in binary.
    let tree = anna.engine()?.ratchet_tree(GROUP)?;
    jonas.engine()?.join(&welcome, &tree)?;
    let commit = anna.engine()?.self_update(GROUP)?;
    anna.engine()?.merge_pending_commit(GROUP)?;
    jonas
        .engine()?
        .process_message(&commit.commit, &Default::default())?;
    let message = anna.engine()?.encrypt(GROUP, b"nach dem Update")?;
    match jonas
        .engine()?
        .process_message(&message, &Default::default())?
    {
        Incoming::Application { plaintext, .. } => assert_eq!(plaintext, b"nach dem Update"),
        other => panic!("{other:?}"),
    }
    assert_in_sync(&[&anna, &jonas])?;
    assert!(binary_types(&anna.path)?.contains(&"tree".to_owned()));
    Ok(())
}
