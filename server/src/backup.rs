//! `rathaus-server backup`, `restore`, `verify-backup` and `admin-code`.
//!
//! A backup is a tar file (`tar tf` lists it) holding:
//!
//! ```text
//! rathaus-backup/files/config.json, cert.der, key.der, removal.key, reset.key
//! rathaus-backup/store.snapshot    every record of the database (format: store/snapshot.rs)
//! rathaus-backup/blobs/<sha256>    every stored file (attachments, library documents)
//! rathaus-backup/manifest.json     format, versions, org, record count, id floor and the
//!                                  size and SHA-256 of every other member; written last
//! ```
//!
//! The snapshot is one point in time: with the server running, `backup` asks it over
//! `DIR/ops.sock` and the server copies its store while holding every write back (see
//! `SledStore::snapshot`), so each request's atomic batch is in the backup wholly or not
//! at all, and every post acknowledged before the backup began is in it. With the server
//! stopped, `backup` opens the database itself. The records are copied as stored: a
//! secret group's messages stay MLS ciphertext, and no key that decrypts them exists on
//! the server to be backed up. The backup does hold the server's TLS key and removal key:
//! keep it as safe as the data directory.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rathaus_protocol::{UserId, PROTOCOL_VERSION};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::clock::{Clock, SystemClock};
use crate::data_dir::DataDir;
use crate::error::ServerError;
use crate::ops::socket::{self, OpsRequest};
use crate::service::{AdminCode, Service};
use crate::store::{Db, SledStore, SnapshotReader};

/// The format of backups this build writes and reads.
pub const BACKUP_FORMAT: u32 = 1;

/// Files of the data directory that go into a backup (all but the database).
const FILES: &[&str] = &[
    "config.json",
    "cert.der",
    "key.der",
    "removal.key",
    "reset.key",
];
/// Members of the archive.
const ROOT: &str = "rathaus-backup";
const MANIFEST: &str = "rathaus-backup/manifest.json";
const SNAPSHOT: &str = "rathaus-backup/store.snapshot";
const BLOBS: &str = "rathaus-backup/blobs/";

/// Whether `name` is a blob file's name: 64 lower-case hex digits.
fn is_blob_name(name: &str) -> bool {
    name.len() == 64
        && name
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// `manifest.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// [`BACKUP_FORMAT`].
    pub format: u32,
    /// When the backup was taken (Unix ms).
    pub created_at_ms: i64,
    /// `rathaus-server` version that took it.
    pub server_version: String,
    /// Its protocol version.
    pub protocol_version: u16,
    /// The organisation.
    pub org: String,
    /// Whether the server was running (snapshot over `ops.sock`) or stopped.
    pub online: bool,
    /// Key-value pairs in the snapshot.
    pub records: u64,
    /// Ids handed out by the restored store start above this.
    pub next_id: u64,
    /// Every other member with its size and SHA-256.
    pub members: Vec<Member>,
}

/// One member of the archive.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    /// Path in the archive.
    pub path: String,
    /// Bytes.
    pub size: u64,
    /// SHA-256, hex.
    pub sha256: String,
}

/// Writes a backup of the server in `data_dir` to `to` (refused if `to` exists). The
/// file appears only when complete (written beside it, then renamed).
pub fn backup(data_dir: &Path, to: &Path) -> Result<Manifest, ServerError> {
    backup_with_files(data_dir, None, to)
}

/// [`backup`] of a server whose blob directory is `files_dir` (`[files] dir`; `None`:
/// `DIR/blobs`). A running server names its own blob directory, which then wins.
pub fn backup_with_files(
    data_dir: &Path,
    files_dir: Option<&Path>,
    to: &Path,
) -> Result<Manifest, ServerError> {
    let dir = DataDir::new(data_dir);
    let config = dir.read_config()?;
    if config.store.is_some() {
        return Err(ServerError::Invalid(
            "this server keeps its records in PostgreSQL: back them up with pg_dump (e.g. \
             pg_dump --format=custom), and keep a copy of the data directory for the \
             certificate and keys"
                .into(),
        ));
    }
    if to.exists() {
        return Err(ServerError::Invalid(format!(
            "{} exists already; choose a new file",
            to.display()
        )));
    }
    let partial = partial_path(to);
    let result = write_archive(&dir, files_dir, &config.org, &partial);
    match result {
        Ok(manifest) => {
            std::fs::rename(&partial, to).map_err(|e| {
                ServerError::io(
                    format!("cannot rename {} to {}", partial.display(), to.display()),
                    e,
                )
            })?;
            Ok(manifest)
        }
        Err(e) => {
            let _ = std::fs::remove_file(&partial);
            Err(e)
        }
    }
}

/// Checks a backup: every member listed in the manifest with its size and checksum, none
/// missing or extra, the snapshot readable to its end with the recorded number of pairs.
pub fn verify(file: &Path) -> Result<Manifest, ServerError> {
    let mut found = Vec::new();
    let mut manifest = None;
    let mut records = None;
    for_each_member(file, |path, entry| {
        if path == MANIFEST {
            let mut bytes = Vec::new();
            entry
                .read_to_end(&mut bytes)
                .map_err(|e| bad(file, &format!("manifest: {e}")))?;
            manifest = Some(
                serde_json::from_slice::<Manifest>(&bytes)
                    .map_err(|e| bad(file, &format!("manifest: {e}")))?,
            );
            return Ok(());
        }
        let mut hashing = Hashing::new(entry);
        if path == SNAPSHOT {
            let mut reader = SnapshotReader::new(&mut hashing);
            let mut n = 0u64;
            while reader
                .next_pair()
                .map_err(|e| bad(file, &e.to_string()))?
                .is_some()
            {
                n += 1;
            }
            records = Some(n);
        }
        std::io::copy(&mut hashing, &mut std::io::sink())
            .map_err(|e| bad(file, &format!("{path}: {e}")))?;
        found.push(hashing.member(path));
        Ok(())
    })?;
    let manifest = manifest.ok_or_else(|| bad(file, "no manifest.json"))?;
    if manifest.format != BACKUP_FORMAT {
        return Err(bad(
            file,
            &format!(
                "format {} (this build reads {BACKUP_FORMAT})",
                manifest.format
            ),
        ));
    }
    for member in &manifest.members {
        match found.iter().find(|m| m.path == member.path) {
            None => return Err(bad(file, &format!("{} is missing", member.path))),
            Some(m) if m != member => {
                return Err(bad(
                    file,
                    &format!(
                        "{}: checksum or size differs (manifest {} bytes sha256 {}, found {} bytes sha256 {})",
                        member.path, member.size, member.sha256, m.size, m.sha256
                    ),
                ))
            }
            Some(_) => {}
        }
    }
    if let Some(extra) = found
        .iter()
        .find(|m| !manifest.members.iter().any(|x| x.path == m.path))
    {
        return Err(bad(file, &format!("{} is not in the manifest", extra.path)));
    }
    if records != Some(manifest.records) {
        return Err(bad(
            file,
            &format!(
                "the snapshot holds {} records, the manifest says {}",
                records.unwrap_or(0),
                manifest.records
            ),
        ));
    }
    Ok(manifest)
}

/// Rebuilds a data directory from a backup, after verifying it. `data_dir` must not exist
/// or be empty.
///
/// The backup is older than what the server's clients may have seen: every log of the
/// restored server continues in the next generation (`rathaus_protocol::log`), so that no
/// seq a client holds is given to another entry.
pub fn restore(from: &Path, data_dir: &Path) -> Result<Manifest, ServerError> {
    restore_with_files(from, data_dir, None)
}

/// [`restore`] with the files going to `files_dir` (the server's `[files] dir`; `None`:
/// `DIR/blobs`).
pub fn restore_with_files(
    from: &Path,
    data_dir: &Path,
    files_dir: Option<&Path>,
) -> Result<Manifest, ServerError> {
    let manifest = rebuild(from, data_dir, files_dir)?;
    let db = Db::new(Arc::new(SledStore::open(&DataDir::new(data_dir).db())?));
    let generation = db.log_generation()? + 1;
    let mut w = crate::store::Writes::new();
    w.put_log_generation(generation)?;
    db.apply(w)?;
    db.store().flush_blocking()?;
    Ok(manifest)
}

/// [`restore_with_files`]'s rebuild of the data directory, records as they were.
fn rebuild(
    from: &Path,
    data_dir: &Path,
    files_dir: Option<&Path>,
) -> Result<Manifest, ServerError> {
    let manifest = verify(from)?;
    if data_dir.exists() {
        let empty = std::fs::read_dir(data_dir)
            .map_err(|e| ServerError::io(format!("cannot read {}", data_dir.display()), e))?
            .next()
            .is_none();
        if !empty {
            return Err(ServerError::Invalid(format!(
                "{} is not empty; restore into a new directory",
                data_dir.display()
            )));
        }
    }
    std::fs::create_dir_all(data_dir)
        .map_err(|e| ServerError::io(format!("cannot create {}", data_dir.display()), e))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(data_dir, std::fs::Permissions::from_mode(0o700))
            .map_err(|e| ServerError::io(format!("cannot restrict {}", data_dir.display()), e))?;
    }
    let dir = DataDir::new(data_dir);
    let mut restored = Vec::new();
    for_each_member(from, |path, entry| {
        let mut hashing = Hashing::new(entry);
        if path == SNAPSHOT {
            let mut reader = SnapshotReader::new(&mut hashing);
            SledStore::restore(&dir.db(), &mut reader, manifest.next_id)?;
        } else if let Some(name) = path.strip_prefix(BLOBS) {
            if !is_blob_name(name) {
                return Err(bad(from, &format!("unexpected member {path}")));
            }
            let blobs = files_dir.map_or_else(|| dir.blobs(), Path::to_path_buf);
            std::fs::create_dir_all(&blobs)
                .map_err(|e| ServerError::io(format!("cannot create {}", blobs.display()), e))?;
            let target = blobs.join(name);
            let mut out = socket::create_private(&target)
                .map_err(|e| ServerError::io(format!("cannot create {}", target.display()), e))?;
            std::io::copy(&mut hashing, &mut out)
                .and_then(|_| out.sync_all())
                .map_err(|e| ServerError::io(format!("cannot write {}", target.display()), e))?;
        } else if let Some(name) = path.strip_prefix(&format!("{ROOT}/files/")) {
            if !FILES.contains(&name) {
                return Err(bad(from, &format!("unexpected member {path}")));
            }
            let target = data_dir.join(name);
            let mut out = socket::create_private(&target)
                .map_err(|e| ServerError::io(format!("cannot create {}", target.display()), e))?;
            std::io::copy(&mut hashing, &mut out)
                .and_then(|_| out.sync_all())
                .map_err(|e| ServerError::io(format!("cannot write {}", target.display()), e))?;
        } else {
            return Ok(());
        }
        std::io::copy(&mut hashing, &mut std::io::sink())
            .map_err(|e| bad(from, &format!("{path}: {e}")))?;
        restored.push(hashing.member(path));
        Ok(())
    })?;
    // The file was verified a moment ago; a change in between is still caught here.
    if restored.len() != manifest.members.len()
        || restored.iter().any(|m| !manifest.members.contains(m))
    {
        return Err(bad(from, "the file changed while it was restored"));
    }
    Ok(manifest)
}

/// Rewrites the stopped server's database from its live records, so that nothing a
/// delete, moderation or retention took out of the records survives in the files.
///
/// sled is log-structured: a record that is overwritten or removed keeps its old bytes in
/// the log until segment cleaning happens to reclaim them. `compact` takes a snapshot of
/// the live records (as `backup` does), restores it into a fresh directory beside
/// `data_dir`, moves every other file of the data directory over, and swaps the two;
/// the old directory is then deleted, and with it the search index, which the next start
/// rebuilds from the records. Refused while the server runs.
pub fn compact(data_dir: &Path) -> Result<Manifest, ServerError> {
    let sibling = |suffix: &str| {
        let mut name = data_dir
            .file_name()
            .map(|n| n.to_os_string())
            .unwrap_or_default();
        name.push(suffix);
        data_dir.with_file_name(name)
    };
    let archive = sibling(".compact.tar");
    let fresh = sibling(".compacting");
    let old = sibling(".before-compact");
    for leftover in [&fresh, &old] {
        if leftover.exists() {
            return Err(ServerError::Invalid(format!(
                "{} exists (an interrupted compaction?); check it and remove it first",
                leftover.display()
            )));
        }
    }
    let _ = std::fs::remove_file(&archive);
    let manifest = backup(data_dir, &archive)?;
    let result = (|| {
        if manifest.online {
            return Err(ServerError::Invalid(
                "the server is running; stop it before compacting its database".into(),
            ));
        }
        rebuild(&archive, &fresh, None)?;
        let io = |what: String| move |e| ServerError::io(what, e);
        // Everything but the database itself (e.g. stored files) moves over as it is. The
        // search index is derived from the records and keeps removed posts' words in its
        // segments until they merge: it is left behind and rebuilt at the next start.
        let entries = std::fs::read_dir(data_dir)
            .map_err(io(format!("cannot read {}", data_dir.display())))?;
        for entry in entries {
            let entry = entry.map_err(io(format!("cannot read {}", data_dir.display())))?;
            let name = entry.file_name();
            let target = fresh.join(&name);
            if name == "db" || name == "search" || name == socket::SOCKET || target.exists() {
                continue;
            }
            std::fs::rename(entry.path(), &target)
                .map_err(io(format!("cannot move {}", entry.path().display())))?;
        }
        std::fs::rename(data_dir, &old)
            .map_err(io(format!("cannot move {} aside", data_dir.display())))?;
        std::fs::rename(&fresh, data_dir).map_err(io(format!(
            "cannot move the compacted database into place; the old data directory is {}",
            old.display()
        )))?;
        std::fs::remove_dir_all(&old).map_err(io(format!("cannot remove {}", old.display())))?;
        Ok(())
    })();
    let _ = std::fs::remove_file(&archive);
    if result.is_err() && fresh.exists() && data_dir.exists() {
        let _ = std::fs::remove_dir_all(&fresh);
    }
    result.map(|()| manifest)
}

/// `admin-code`: through the running server if there is one, else on the database.
pub async fn admin_code(data_dir: &Path, user: &UserId) -> Result<AdminCode, ServerError> {
    let request = OpsRequest::AdminCode {
        user: user.to_string(),
    };
    let dir_path = data_dir.to_path_buf();
    let online = tokio::task::spawn_blocking(move || socket::request(&dir_path, &request))
        .await
        .map_err(|e| ServerError::Invalid(format!("operations task: {e}")))??;
    if let Some((answer, _)) = online {
        return match (answer.ok, answer.admin_code) {
            (true, Some(code)) => Ok(code),
            _ => Err(ServerError::Invalid(
                answer.error.unwrap_or_else(|| "the server refused".into()),
            )),
        };
    }
    let dir = DataDir::new(data_dir);
    let config = dir.read_config()?;
    let store = dir.open_records(&config, None)?;
    let service = Service::new(Db::new(store), Arc::new(SystemClock), dir.removal_key()?)?;
    let code = service
        .break_glass_admin_code(user)
        .await
        .map_err(|r| ServerError::Invalid(r.detail.clone().unwrap_or_else(|| r.message())))?;
    service.flush().await?;
    Ok(code)
}

fn write_archive(
    dir: &DataDir,
    files_dir: Option<&Path>,
    org: &str,
    partial: &Path,
) -> Result<Manifest, ServerError> {
    let file = socket::create_private(partial)
        .map_err(|e| ServerError::io(format!("cannot create {}", partial.display()), e))?;
    let mut tar = tar::Builder::new(std::io::BufWriter::new(file));
    let mut members = Vec::new();
    for name in FILES {
        let path = dir.root().join(name);
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && *name == "reset.key" => continue,
            Err(e) => {
                return Err(ServerError::io(
                    format!("cannot read {}", path.display()),
                    e,
                ))
            }
        };
        let member = format!("{ROOT}/files/{name}");
        append(&mut tar, &member, bytes.len() as u64, bytes.as_slice())?;
        members.push(Member {
            path: member,
            size: bytes.len() as u64,
            sha256: hex::encode(Sha256::digest(&bytes)),
        });
    }

    let request = OpsRequest::Backup;
    let mut blobs_dir = files_dir.map_or_else(|| dir.blobs(), Path::to_path_buf);
    let (online, records, next_id) = match socket::request(dir.root(), &request)? {
        Some((answer, mut stream)) => {
            if let Some(served) = &answer.files_dir {
                blobs_dir.clone_from(served);
            }
            if !answer.ok {
                return Err(ServerError::Invalid(format!(
                    "the running server refused the backup: {}",
                    answer.error.unwrap_or_default()
                )));
            }
            let mut hashing = Hashing::new((&mut stream).take(answer.bytes));
            append(&mut tar, SNAPSHOT, answer.bytes, &mut hashing)?;
            if hashing.size != answer.bytes {
                return Err(ServerError::Invalid(
                    "the server ended the snapshot early".into(),
                ));
            }
            members.push(hashing.member(SNAPSHOT));
            (true, answer.records, answer.next_id)
        }
        None => {
            // No server runs: take the snapshot from the database itself (its lock keeps
            // a server from starting meanwhile).
            let store = dir.open_store()?;
            let tmp = partial_path(&partial.with_extension("snapshot"));
            let result = (|| {
                let file = socket::create_private(&tmp)
                    .map_err(|e| ServerError::io(format!("cannot create {}", tmp.display()), e))?;
                let mut out = std::io::BufWriter::new(file);
                let info = crate::store::Store::snapshot(&store, &mut out)?;
                out.flush()
                    .map_err(|e| ServerError::io(format!("cannot write {}", tmp.display()), e))?;
                drop(out);
                let size = std::fs::metadata(&tmp)
                    .map_err(|e| ServerError::io(format!("cannot read {}", tmp.display()), e))?
                    .len();
                let file = std::fs::File::open(&tmp)
                    .map_err(|e| ServerError::io(format!("cannot read {}", tmp.display()), e))?;
                let mut hashing = Hashing::new(file);
                append(&mut tar, SNAPSHOT, size, &mut hashing)?;
                members.push(hashing.member(SNAPSHOT));
                Ok::<_, ServerError>(info)
            })();
            let _ = std::fs::remove_file(&tmp);
            let info = result?;
            (false, info.records, info.next_id)
        }
    };

    // Blobs are immutable and named by their hash; those of the snapshot's records were
    // durable before it was taken. One removed since then is simply not in the backup.
    if blobs_dir.exists() {
        let listing = std::fs::read_dir(&blobs_dir)
            .map_err(|e| ServerError::io(format!("cannot read {}", blobs_dir.display()), e))?;
        let mut names = Vec::new();
        for entry in listing {
            let entry = entry
                .map_err(|e| ServerError::io(format!("cannot read {}", blobs_dir.display()), e))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if is_blob_name(&name) {
                names.push(name);
            }
        }
        names.sort();
        for name in names {
            let path = blobs_dir.join(&name);
            let file = match std::fs::File::open(&path) {
                Ok(f) => f,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => {
                    return Err(ServerError::io(
                        format!("cannot read {}", path.display()),
                        e,
                    ))
                }
            };
            let size = file
                .metadata()
                .map_err(|e| ServerError::io(format!("cannot read {}", path.display()), e))?
                .len();
            let member = format!("{BLOBS}{name}");
            let mut hashing = Hashing::new(file.take(size));
            append(&mut tar, &member, size, &mut hashing)?;
            members.push(hashing.member(&member));
        }
    }

    let manifest = Manifest {
        format: BACKUP_FORMAT,
        created_at_ms: SystemClock.now_ms(),
        server_version: env!("CARGO_PKG_VERSION").to_owned(),
        protocol_version: PROTOCOL_VERSION,
        org: org.to_owned(),
        online,
        records,
        next_id,
        members,
    };
    let json =
        serde_json::to_vec_pretty(&manifest).map_err(|e| ServerError::Invalid(e.to_string()))?;
    append(&mut tar, MANIFEST, json.len() as u64, json.as_slice())?;
    let out = tar
        .into_inner()
        .map_err(|e| ServerError::io(format!("cannot write {}", partial.display()), e))?;
    let file = out.into_inner().map_err(|e| {
        ServerError::io(
            format!("cannot write {}", partial.display()),
            e.into_error(),
        )
    })?;
    file.sync_all()
        .map_err(|e| ServerError::io(format!("cannot write {}", partial.display()), e))?;
    Ok(manifest)
}

fn append<W: Write>(
    tar: &mut tar::Builder<W>,
    path: &str,
    size: u64,
    data: impl Read,
) -> Result<(), ServerError> {
    let mut header = tar::Header::new_gnu();
    header.set_size(size);
    header.set_mode(0o600);
    header.set_mtime(u64::try_from(SystemClock.now_ms() / 1000).unwrap_or(0));
    header.set_entry_type(tar::EntryType::Regular);
    tar.append_data(&mut header, path, data)
        .map_err(|e| ServerError::io(format!("cannot add {path} to the backup"), e))
}

/// Calls `f` with each member's path and contents, in archive order.
fn for_each_member(
    file: &Path,
    mut f: impl FnMut(&str, &mut dyn Read) -> Result<(), ServerError>,
) -> Result<(), ServerError> {
    let input = std::fs::File::open(file)
        .map_err(|e| ServerError::io(format!("cannot open {}", file.display()), e))?;
    let mut archive = tar::Archive::new(std::io::BufReader::new(input));
    let entries = archive
        .entries()
        .map_err(|e| bad(file, &format!("not a backup: {e}")))?;
    for entry in entries {
        let mut entry = entry.map_err(|e| bad(file, &format!("damaged: {e}")))?;
        let path = entry
            .path()
            .map_err(|e| bad(file, &format!("damaged: {e}")))?
            .to_string_lossy()
            .into_owned();
        f(&path, &mut entry)?;
    }
    Ok(())
}

/// A reader that hashes and counts what passes through it.
struct Hashing<R> {
    inner: R,
    hasher: Sha256,
    size: u64,
}

impl<R: Read> Hashing<R> {
    fn new(inner: R) -> Self {
        Self {
            inner,
            hasher: Sha256::new(),
            size: 0,
        }
    }

    fn member(self, path: &str) -> Member {
        Member {
            path: path.to_owned(),
            size: self.size,
            sha256: hex::encode(self.hasher.finalize()),
        }
    }
}

impl<R: Read> Read for Hashing<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.size += n as u64;
        Ok(n)
    }
}

fn partial_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".partial");
    path.with_file_name(name)
}

fn bad(file: &Path, reason: &str) -> ServerError {
    ServerError::Invalid(format!(
        "{} is not a valid backup: {reason}",
        file.display()
    ))
}
