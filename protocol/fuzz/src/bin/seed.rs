//! Writes the seed corpus: every MLS message of the IETF test vectors in
//! `../shared/mls-vectors/messages.json`, wrapped in each Rathaus message type that
//! carries MLS bytes, plus a few plain frames.
//!
//! ```text
//! cargo run --bin seed -- [PATH/TO/messages.json] [CORPUS_DIR]
//! ```
//! Defaults: `../../../shared/mls-vectors/messages.json` and `corpus/` (run from
//! `protocol/fuzz/`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use rathaus_protocol::frame;
use rathaus_protocol::messages::{
    ClaimedKeyPackage, EntryBody, Event, LogEntry, PostBody, Request, Response, WelcomeInfo,
};
use rathaus_protocol::{ClientMsgId, Content, DeviceId, GroupHandle, UserId};
use serde::Serialize;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let vectors = PathBuf::from(
        args.next()
            .unwrap_or_else(|| "../../../shared/mls-vectors/messages.json".into()),
    );
    let corpus = PathBuf::from(args.next().unwrap_or_else(|| "corpus".into()));
    let text = std::fs::read_to_string(&vectors).map_err(|e| {
        format!(
            "cannot read the MLS vectors at {} ({e}); pass the path of messages.json",
            vectors.display()
        )
    })?;
    let entries: Vec<BTreeMap<String, String>> = serde_json::from_str(&text)?;
    let secret = GroupHandle::parse("bauamt/secret")?;
    let public = GroupHandle::parse("bauamt")?;
    let user = UserId::parse("P1001")?;
    let mut written = 0usize;
    for (i, entry) in entries.iter().enumerate() {
        for (field, hex_bytes) in entry {
            let Ok(mls) = hex::decode(hex_bytes) else {
                continue;
            };
            let name = format!("{i}-{field}");
            let log_entry = LogEntry {
                seq: i as u64 + 1,
                sender: user.clone(),
                sender_name: "Anna Berg".into(),
                sent_at_ms: 1_700_000_000_000,
                client_id: ClientMsgId([i as u8; 16]),
                body: EntryBody::Mls(mls.clone()),
            };
            let welcome = WelcomeInfo {
                group: secret.clone(),
                welcome: mls.clone(),
                ratchet_tree: mls.clone(),
                seq: 1,
                epoch: 1,
            };
            let claimed = ClaimedKeyPackage {
                device: DeviceId(7),
                key_package: mls.clone(),
                last_resort: false,
            };
            let post = Request::Post {
                group: secret.clone(),
                client_id: ClientMsgId([1; 16]),
                body: PostBody::Mls(mls.clone()),
            };
            let commit = Request::Commit {
                group: secret.clone(),
                epoch: 1,
                commit: mls.clone(),
                welcome: Some(mls.clone()),
                group_info: Some(mls.clone()),
            };
            write_frame(&corpus.join("frame"), &name, &post)?;
            write_body(&corpus.join("request"), &format!("{name}-post"), &post)?;
            write_body(&corpus.join("request"), &format!("{name}-commit"), &commit)?;
            write_body(
                &corpus.join("request"),
                &format!("{name}-publish"),
                &Request::PublishKeyPackages {
                    one_time: vec![mls.clone()],
                    last_resort: Some(mls.clone()),
                },
            )?;
            write_body(
                &corpus.join("response"),
                &format!("{name}-welcomes"),
                &Response::Welcomes(vec![welcome.clone()]),
            )?;
            write_body(
                &corpus.join("response"),
                &format!("{name}-entries"),
                &Response::Entries {
                    group: secret.clone(),
                    entries: vec![log_entry.clone()],
                    head: i as u64 + 1,
                },
            )?;
            write_body(
                &corpus.join("response"),
                &format!("{name}-keypackages"),
                &Response::KeyPackages {
                    user: user.clone(),
                    packages: vec![claimed.clone()],
                },
            )?;
            write_body(
                &corpus.join("event"),
                &name,
                &Event::Posted {
                    group: secret.clone(),
                    entry: log_entry.clone(),
                },
            )?;
            write_body(
                &corpus.join("post_body"),
                &name,
                &PostBody::Mls(mls.clone()),
            )?;
            write_body(&corpus.join("entry_body"), &name, &log_entry.body)?;
            write_body(&corpus.join("log_entry"), &name, &log_entry)?;
            write_body(&corpus.join("welcome_info"), &name, &welcome)?;
            write_body(&corpus.join("claimed_key_package"), &name, &claimed)?;
            written += 1;
        }
    }
    let hello = Content::text("Die Baustelle ist ab Montag gesperrt.");
    write_body(&corpus.join("content"), "text", &hello)?;
    write_body(&corpus.join("content_body"), "text", &hello.body)?;
    write_body(&corpus.join("group_handle"), "public", &public)?;
    write_body(&corpus.join("group_handle"), "secret", &secret)?;
    write_body(&corpus.join("user_id"), "p1001", &user)?;
    write_frame(&corpus.join("frame"), "ping", &Request::Ping)?;
    println!(
        "{written} MLS messages from {} seeded into {}",
        vectors.display(),
        corpus.display()
    );
    Ok(())
}

fn write_body<T: Serialize>(
    dir: &Path,
    name: &str,
    value: &T,
) -> Result<(), Box<dyn std::error::Error>> {
    let framed = frame::encode(value)?;
    std::fs::create_dir_all(dir)?;
    std::fs::write(dir.join(name), &framed[frame::HEADER_LEN..])?;
    Ok(())
}

fn write_frame<T: Serialize>(
    dir: &Path,
    name: &str,
    value: &T,
) -> Result<(), Box<dyn std::error::Error>> {
    // The frame target reads a limit pick and a chunk size before the stream.
    let mut bytes = vec![3u8, 200];
    bytes.extend(frame::encode(value)?);
    std::fs::create_dir_all(dir)?;
    std::fs::write(dir.join(name), bytes)?;
    Ok(())
}
