//! The IETF MLS passive-client test vectors (`mlswg/mls-implementations`,
//! copied to `../shared/mls-vectors/`) run against openmls on Rathaus'
//! SQLite-backed provider ([`SqliteMlsProvider`] with [`StateCodec`]).
//!
//! For every cipher-suite-1 case, the joiner's KeyPackage and private keys are
//! injected into a fresh SQLite file through openmls' public storage API: the
//! `KeyPackageBundle` constructor is private, but the type is `Deserialize`,
//! so it is built from the serde shape of its parts and written with
//! `StorageProvider::write_key_package`. External PSKs go in through
//! `PreSharedKeyId::store`. Then the Welcome is processed and, epoch by
//! epoch, the proposals and the commit; the connection is closed and the file
//! reopened between epochs, so every epoch starts from what SQLite holds.
//! After each step the `epoch_authenticator` must match the vector's.
//!
//! The credentials in the vectors are not Rathaus device identities, so the
//! cases drive openmls directly over the engine's provider rather than
//! through `MlsEngine`, whose identity checks would refuse them.

use std::path::{Path, PathBuf};
use std::time::Instant;

use openmls::prelude::tls_codec::Deserialize as _;
use openmls::prelude::{
    HpkePrivateKey, KeyPackage, KeyPackageBundle, KeyPackageIn, KeyPackageVerifyError, MlsGroup,
    MlsGroupJoinConfig, MlsMessageBodyIn, MlsMessageIn, ProcessedMessageContent, ProtocolVersion,
    RatchetTreeIn, StagedWelcome, MIXED_PLAINTEXT_WIRE_FORMAT_POLICY,
};
use openmls::schedule::psk::PreSharedKeyId;
use openmls_rust_crypto::RustCrypto;
use openmls_traits::storage::StorageProvider as _;
use openmls_traits::OpenMlsProvider as _;
use rathaus_client::mls::SqliteMlsProvider;
use rusqlite::Connection;
use serde_json::{json, Value};

/// `MLS_128_DHKEMX25519_AES128GCM_SHA256_Ed25519`, the Rathaus suite.
const CIPHER_SUITE: u64 = 1;

/// Resumption PSKs kept per group: the handling-commit vectors reference
/// earlier epochs.
const RESUMPTION_PSKS: usize = 32;

type CaseResult = Result<(), String>;

#[test]
fn passive_client_welcome() {
    run_file("passive-client-welcome.json");
}

#[test]
fn passive_client_handling_commit() {
    run_file("passive-client-handling-commit.json");
}

#[test]
fn passive_client_random() {
    run_file("passive-client-random.json");
}

fn vectors_dir() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/mls-vectors");
    assert!(
        dir.is_dir(),
        "MLS test vectors not found at {} — they belong in ../shared/mls-vectors/ next to the \
         project root (see its README); this test must not pass without them",
        dir.display()
    );
    dir
}

fn run_file(name: &str) {
    let path = vectors_dir().join(name);
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    let cases: Vec<Value> =
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{name} is not JSON: {e}"));
    let started = Instant::now();
    let mut ran = 0;
    let mut epochs = 0;
    let mut failures = Vec::new();
    for (i, case) in cases.iter().enumerate() {
        if case["cipher_suite"].as_u64() != Some(CIPHER_SUITE) {
            continue;
        }
        ran += 1;
        epochs += case["epochs"].as_array().map_or(0, Vec::len);
        if let Err(e) = run_case(case) {
            failures.push(format!("case {i}: {e}"));
        }
    }
    println!(
        "{name}: {ran} cipher-suite-{CIPHER_SUITE} cases, {epochs} epochs, {} failed, {:.1?}",
        failures.len(),
        started.elapsed()
    );
    assert!(ran > 0, "{name} holds no cipher suite {CIPHER_SUITE} case");
    assert!(failures.is_empty(), "{name}:\n{}", failures.join("\n"));
}

/// One SQLite-backed provider on the case's file; dropped to close the file.
struct Profile {
    connection: Connection,
    crypto: RustCrypto,
}

impl Profile {
    fn open(path: &Path) -> Result<Self, String> {
        let mut connection = Connection::open(path).map_err(|e| e.to_string())?;
        SqliteMlsProvider::migrate(&mut connection).map_err(|e| e.to_string())?;
        Ok(Self {
            connection,
            crypto: RustCrypto::default(),
        })
    }

    fn execute(&self, sql: &str) -> CaseResult {
        self.connection
            .execute_batch(sql)
            .map_err(|e| format!("{sql}: {e}"))
    }

    fn provider(&self) -> SqliteMlsProvider<'_> {
        SqliteMlsProvider::new(&self.crypto, &self.connection)
    }
}

fn run_case(case: &Value) -> CaseResult {
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let file = dir.path().join("profile.sqlite");
    let config = MlsGroupJoinConfig::builder()
        .wire_format_policy(MIXED_PLAINTEXT_WIRE_FORMAT_POLICY)
        .number_of_resumption_psks(RESUMPTION_PSKS)
        .build();

    let group_id = {
        let profile = Profile::open(&file)?;
        let provider = profile.provider();
        for psk in case["external_psks"].as_array().into_iter().flatten() {
            PreSharedKeyId::external(hex_field(psk, "psk_id")?, Vec::new())
                .store(&provider, &hex_field(psk, "psk")?)
                .map_err(|e| format!("storing PSK: {e:?}"))?;
        }
        inject_key_package(&provider, case)?;

        let welcome = match message(&hex_field(case, "welcome")?)?.extract() {
            MlsMessageBodyIn::Welcome(welcome) => welcome,
            _ => return Err("welcome field is not a Welcome".into()),
        };
        // The trees hold leaves whose lifetimes ran out since the vectors
        // were generated; RFC 9420 §7.3 leaves that check to the client.
        let mut join = StagedWelcome::build_from_welcome(&provider, &config, welcome)
            .map_err(|e| format!("welcome: {e:?}"))?
            .skip_lifetime_validation();
        if let Some(tree) = case["ratchet_tree"].as_str() {
            let tree = RatchetTreeIn::tls_deserialize_exact(hex(tree)?)
                .map_err(|e| format!("ratchet tree: {e:?}"))?;
            join = join.with_ratchet_tree(tree);
        }
        let group = join
            .build()
            .and_then(|staged| staged.into_group(&provider))
            .map_err(|e| format!("join: {e:?}"))?;
        expect_authenticator(&group, case, "initial_epoch_authenticator", "after welcome")?;
        group.group_id().clone()
    };

    for (n, epoch) in case["epochs"].as_array().into_iter().flatten().enumerate() {
        // A fresh connection per epoch: only what SQLite holds carries over.
        let profile = Profile::open(&file)?;
        // One transaction per epoch, as the client does per operation;
        // without it every openmls write is its own fsync.
        profile.execute("BEGIN")?;
        let provider = profile.provider();
        let mut group = MlsGroup::load(provider.storage(), &group_id)
            .map_err(|e| e.to_string())?
            .ok_or_else(|| format!("epoch {n}: group not in storage"))?;
        let proposals = epoch["proposals"].as_array().into_iter().flatten();
        for bytes in proposals {
            let bytes = hex(bytes.as_str().ok_or("proposal is not a string")?)?;
            match process(&provider, &mut group, &bytes)? {
                ProcessedMessageContent::ProposalMessage(p)
                | ProcessedMessageContent::ExternalJoinProposalMessage(p) => group
                    .store_pending_proposal(provider.storage(), *p)
                    .map_err(|e| format!("epoch {n}: store proposal: {e}"))?,
                _ => return Err(format!("epoch {n}: proposal is not a proposal")),
            }
        }
        match process(&provider, &mut group, &hex_field(epoch, "commit")?)? {
            ProcessedMessageContent::StagedCommitMessage(staged) => group
                .merge_staged_commit(&provider, *staged)
                .map_err(|e| format!("epoch {n}: merge: {e:?}"))?,
            _ => return Err(format!("epoch {n}: commit is not a commit")),
        }
        profile.execute("COMMIT")?;
        expect_authenticator(&group, epoch, "epoch_authenticator", &format!("epoch {n}"))?;
    }
    Ok(())
}

/// Writes the vector's KeyPackage with its private keys the way openmls
/// stores its own: as a `KeyPackageBundle` under the package's hash ref.
fn inject_key_package(provider: &SqliteMlsProvider<'_>, case: &Value) -> CaseResult {
    let key_package: KeyPackageIn = match message(&hex_field(case, "key_package")?)?.extract() {
        MlsMessageBodyIn::KeyPackage(kp) => kp,
        _ => return Err("key_package field is not a KeyPackage".into()),
    };
    // The vectors' packages expired in 2024. Their signatures are still
    // checked; only an expired lifetime is tolerated, as openmls' own KAT
    // runner does. `KeyPackageIn` and `KeyPackage` share their serde shape.
    let key_package: KeyPackage = match key_package
        .clone()
        .validate(provider.crypto(), ProtocolVersion::Mls10)
    {
        Ok(key_package) => key_package,
        Err(KeyPackageVerifyError::LifetimeError(_)) => serde_json::to_value(&key_package)
            .and_then(serde_json::from_value)
            .map_err(|e| format!("key package shape: {e}"))?,
        Err(e) => return Err(format!("key package: {e:?}")),
    };
    let private_key = |field| -> Result<Value, String> {
        serde_json::to_value(HpkePrivateKey::from(hex_field(case, field)?))
            .map_err(|e| e.to_string())
    };
    // Same serde shape as openmls' `KeyPackageBundle` (whose constructor is
    // private outside openmls' test-utils).
    let bundle: KeyPackageBundle = serde_json::from_value(json!({
        "key_package": serde_json::to_value(&key_package).map_err(|e| e.to_string())?,
        "private_init_key": private_key("init_priv")?,
        "private_encryption_key": { "key": private_key("encryption_priv")? },
    }))
    .map_err(|e| format!("bundle shape: {e}"))?;
    let hash_ref = key_package
        .hash_ref(provider.crypto())
        .map_err(|e| e.to_string())?;
    provider
        .storage()
        .write_key_package(&hash_ref, &bundle)
        .map_err(|e| e.to_string())
}

fn process(
    provider: &SqliteMlsProvider<'_>,
    group: &mut MlsGroup,
    bytes: &[u8],
) -> Result<ProcessedMessageContent, String> {
    let message = message(bytes)?
        .try_into_protocol_message()
        .map_err(|e| format!("not a protocol message: {e:?}"))?;
    group
        .process_message(provider, message)
        .map(|processed| processed.into_content())
        .map_err(|e| format!("process: {e:?}"))
}

fn expect_authenticator(group: &MlsGroup, obj: &Value, field: &str, when: &str) -> CaseResult {
    let expected = hex_field(obj, field)?;
    let actual = group.epoch_authenticator().as_slice();
    if actual == expected.as_slice() {
        Ok(())
    } else {
        Err(format!("{when}: epoch authenticator differs"))
    }
}

fn message(bytes: &[u8]) -> Result<MlsMessageIn, String> {
    MlsMessageIn::tls_deserialize_exact(bytes).map_err(|e| format!("MLSMessage: {e:?}"))
}

fn hex_field(obj: &Value, field: &str) -> Result<Vec<u8>, String> {
    hex(obj[field]
        .as_str()
        .ok_or_else(|| format!("missing field {field}"))?)
}

fn hex(text: &str) -> Result<Vec<u8>, String> {
    text.as_bytes()
        .chunks(2)
        .enumerate()
        .map(|(i, pair)| {
            std::str::from_utf8(pair)
                .ok()
                .filter(|pair| pair.len() == 2)
                .and_then(|pair| u8::from_str_radix(pair, 16).ok())
                .ok_or_else(|| format!("bad hex at byte {}", 2 * i))
        })
        .collect()
}
