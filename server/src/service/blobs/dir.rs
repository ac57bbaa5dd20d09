//! The blob directory on disk: stored blobs named by their SHA-256, and the partial files
//! of uploads under way, whose chunks share syncs and are hashed as they arrive.

use std::collections::{BTreeSet, HashMap};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};

use rathaus_protocol::blobs::{chunk_count, chunk_len, BLOB_CHUNK};
use sha2::{Digest, Sha256};

/// Partial files kept open between chunks while nobody writes to them; beyond this the
/// idle ones are closed (a file being written to stays open until its write is done).
const OPEN_PARTIALS: usize = 64;

/// The blob directory: stored blobs by name, partial uploads by id.
#[derive(Debug, Clone)]
pub struct BlobDir {
    /// `DIR/blobs`, or the configured `[files] dir`.
    root: PathBuf,
    /// The partial files of uploads under way, open so that their chunks share syncs;
    /// a finishing upload's stays here, closed to writes, until it is a blob or gone.
    partials: Arc<Mutex<HashMap<u64, Arc<PartialFile>>>>,
}

/// Why a chunk was not written.
#[derive(Debug)]
pub(super) enum ChunkWrite {
    /// The upload is being finished: its bytes are being checked or already a blob.
    Finishing,
    /// The disk refused.
    Io(io::Error),
}

impl From<io::Error> for ChunkWrite {
    fn from(e: io::Error) -> Self {
        Self::Io(e)
    }
}

/// An upload's partial file while its chunks arrive.
///
/// - A group sync: every chunk write takes a ticket after it is written; a writer whose
///   ticket is not yet synced waits for the gate, and whoever holds it notes the newest
///   ticket, runs one `fdatasync` and marks everything up to that ticket synced. Chunks
///   in flight together thus share a sync instead of queueing one each on the same file.
/// - A running SHA-256 of the chunks written so far in order from the first, so that
///   finishing the upload need not read the whole file again (see [`PrefixHash`]).
/// - A gate that finishing closes: once the bytes are being checked against the
///   client's SHA-256, no chunk may change them, or a blob's name would no longer be the
///   hash of its bytes.
#[derive(Debug)]
struct PartialFile {
    file: File,
    /// The upload's size in bytes.
    size: u64,
    /// Tickets handed out (= chunk writes completed).
    written: AtomicU64,
    /// Every write up to this ticket is on disk.
    synced: AtomicU64,
    /// Serialises the syncs; held across one `fdatasync`, never anything else.
    gate: Mutex<()>,
    /// True once the upload is finishing; writers hold it shared across their write.
    finishing: RwLock<bool>,
    /// The hash of the chunks written so far from the first on.
    hash: Mutex<PrefixHash>,
}

/// The SHA-256 of an upload's chunks `0..next`, fed as chunks arrive: the chunk that
/// extends the prefix is hashed from memory, chunks that arrived ahead of it are read
/// back from the file (the page cache) once the prefix reaches them. A chunk written
/// twice spoils it (its first bytes may already be hashed), and finishing then reads the
/// whole file as before; so does an upload whose earlier chunks were written by another
/// process (before a restart, or through another node).
#[derive(Debug, Clone, Default)]
struct PrefixHash {
    hasher: Sha256,
    /// Chunks `0..next` are hashed.
    next: u64,
    /// Chunks written beyond `next`, not yet hashed (at most the upload's chunk count).
    ahead: BTreeSet<u64>,
    /// A chunk was written twice, or one could not be read back.
    spoilt: bool,
}

impl PrefixHash {
    /// Notes that chunk `index` (`bytes`) was written to `file` of an upload of `size`.
    fn add(&mut self, index: u64, bytes: &[u8], file: &File, size: u64) {
        if self.spoilt {
            return;
        }
        if index < self.next || !self.ahead.insert(index) {
            self.spoilt = true;
            return;
        }
        let mut buf = Vec::new();
        while self.ahead.remove(&self.next) {
            if self.next == index {
                self.hasher.update(bytes);
            } else {
                let len = chunk_len(size, self.next).unwrap_or(0);
                buf.resize(len, 0);
                if file
                    .read_exact_at(&mut buf, self.next * BLOB_CHUNK as u64)
                    .is_err()
                {
                    self.spoilt = true;
                    return;
                }
                self.hasher.update(&buf);
            }
            self.next += 1;
        }
    }

    /// The hash of the whole upload, if every chunk went through [`Self::add`] once.
    fn whole(&self, size: u64) -> Option<[u8; 32]> {
        (!self.spoilt && self.next == chunk_count(size) && self.ahead.is_empty())
            .then(|| self.hasher.clone().finalize().into())
    }
}

impl PartialFile {
    /// Writes chunk `index`; returns once a sync that began after the write ended.
    fn write_synced(&self, index: u64, bytes: &[u8]) -> Result<(), ChunkWrite> {
        {
            let finishing = self
                .finishing
                .read()
                .unwrap_or_else(PoisonError::into_inner);
            if *finishing {
                return Err(ChunkWrite::Finishing);
            }
            self.file.write_all_at(bytes, index * BLOB_CHUNK as u64)?;
            self.hash
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .add(index, bytes, &self.file, self.size);
        }
        let ticket = self.written.fetch_add(1, Ordering::SeqCst) + 1;
        if self.synced.load(Ordering::SeqCst) >= ticket {
            return Ok(());
        }
        // Guards no data of its own; a poisoned gate is as good as a fresh one.
        let _gate = self.gate.lock().unwrap_or_else(PoisonError::into_inner);
        if self.synced.load(Ordering::SeqCst) >= ticket {
            return Ok(());
        }
        // Every ticket up to `target` belongs to a write that had completed.
        let target = self.written.load(Ordering::SeqCst);
        self.file.sync_data()?;
        self.synced.fetch_max(target, Ordering::SeqCst);
        Ok(())
    }

    /// Closes the file to writes (waiting for those under way); returns the hash of the
    /// whole upload if the chunks written through this file make it up.
    fn finish(&self) -> Option<[u8; 32]> {
        *self
            .finishing
            .write()
            .unwrap_or_else(PoisonError::into_inner) = true;
        self.hash
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .whole(self.size)
    }
}

impl BlobDir {
    /// Opens (creating if needed) the blob directory `root`.
    pub fn open(root: &Path) -> io::Result<Self> {
        fs::create_dir_all(root.join(PARTIAL))?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            fs::set_permissions(root, fs::Permissions::from_mode(0o700))?;
        }
        Ok(Self {
            root: root.to_path_buf(),
            partials: Arc::default(),
        })
    }

    /// The directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Where the blob named `sha256` is stored.
    pub fn blob_path(&self, sha256: &[u8; 32]) -> PathBuf {
        self.root.join(hex::encode(sha256))
    }

    fn partial_path(&self, upload: u64) -> PathBuf {
        self.root.join(PARTIAL).join(upload.to_string())
    }

    /// Writes chunk `index` of `upload` (of `size` bytes) at its offset of the partial
    /// file and syncs it.
    pub(super) fn write_chunk(
        &self,
        upload: u64,
        size: u64,
        index: u32,
        bytes: &[u8],
    ) -> Result<(), ChunkWrite> {
        self.partial_file(upload, size)?
            .write_synced(u64::from(index), bytes)
    }

    /// The open partial file of `upload`, opened (and created) if need be.
    fn partial_file(&self, upload: u64, size: u64) -> io::Result<Arc<PartialFile>> {
        let mut open = self.partials.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(partial) = open.get(&upload) {
            return Ok(partial.clone());
        }
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(self.partial_path(upload))?;
        let partial = Arc::new(PartialFile {
            file,
            size,
            written: AtomicU64::new(0),
            synced: AtomicU64::new(0),
            gate: Mutex::new(()),
            finishing: RwLock::new(false),
            hash: Mutex::default(),
        });
        if open.len() >= OPEN_PARTIALS {
            // Close the files nobody is writing to; a finishing upload's stays, so
            // that no write can reopen it.
            open.retain(|_, p| {
                Arc::strong_count(p) > 1
                    || *p.finishing.read().unwrap_or_else(PoisonError::into_inner)
            });
        }
        open.insert(upload, partial.clone());
        Ok(partial)
    }

    /// Forgets the partial file of `upload` (it is a blob now, or dropped).
    fn close_partial(&self, upload: u64) {
        self.partials
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&upload);
    }

    /// Closes the partial file of `upload` (of `size` bytes, which it must have) to
    /// chunk writes for good and returns its SHA-256: the hash of its chunks as they
    /// arrived if they all went through this process once, else read from the file.
    pub(super) fn finish_partial(&self, upload: u64, size: u64) -> io::Result<[u8; 32]> {
        let partial = self.partial_file(upload, size)?;
        let arrived = partial.finish();
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(self.partial_path(upload))?;
        if file.metadata()?.len() < size {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the partial file is shorter than the upload",
            ));
        }
        file.set_len(size)?;
        let sha = match arrived {
            Some(sha) => sha,
            None => {
                let mut hasher = Sha256::new();
                let mut buf = vec![0u8; 1024 * 1024];
                let mut left = size;
                while left > 0 {
                    let want = left.min(buf.len() as u64) as usize;
                    file.read_exact(&mut buf[..want])?;
                    hasher.update(&buf[..want]);
                    left -= want as u64;
                }
                hasher.finalize().into()
            }
        };
        file.sync_all()?;
        Ok(sha)
    }

    /// Makes the partial file the blob `sha256` (dropping it if that blob exists) and
    /// syncs the directory, so the name survives a crash.
    /// The partial file stays closed to writes until it has its new name: a chunk that
    /// arrives later opens a new partial file, which housekeeping removes.
    pub(super) fn promote(&self, upload: u64, sha256: &[u8; 32]) -> io::Result<()> {
        let partial = self.partial_path(upload);
        let target = self.blob_path(sha256);
        let moved = if target.exists() {
            fs::remove_file(&partial)
        } else {
            (|| {
                if !partial.exists() {
                    // An empty blob never had chunks written.
                    File::create(&partial)?.sync_all()?;
                }
                fs::rename(&partial, &target)
            })()
        };
        self.close_partial(upload);
        moved?;
        File::open(&self.root)?.sync_all()
    }

    /// Chunk `index` of the blob `sha256`, `len` bytes.
    pub(super) fn read_chunk(
        &self,
        sha256: &[u8; 32],
        index: u32,
        len: usize,
    ) -> io::Result<Vec<u8>> {
        let file = File::open(self.blob_path(sha256))?;
        let mut bytes = vec![0u8; len];
        file.read_exact_at(&mut bytes, u64::from(index) * BLOB_CHUNK as u64)?;
        Ok(bytes)
    }

    pub(super) fn remove_partial(&self, upload: u64) {
        self.close_partial(upload);
        match fs::remove_file(self.partial_path(upload)) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => tracing::warn!(upload, error = %e, "cannot remove a partial upload"),
        }
    }

    pub(super) fn remove_blob(&self, sha256: &[u8; 32]) {
        match fs::remove_file(self.blob_path(sha256)) {
            Ok(()) => tracing::debug!(blob = %hex::encode(sha256), "blob removed"),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => {
                tracing::warn!(blob = %hex::encode(sha256), error = %e, "cannot remove a blob")
            }
        }
    }

    /// Names of the stored blob files and ids of the partial uploads, of those last
    /// changed (written, or renamed) before `before`.
    pub(super) fn listing(
        &self,
        before: std::time::SystemTime,
    ) -> io::Result<(Vec<[u8; 32]>, Vec<u64>)> {
        let older = |entry: &fs::DirEntry| {
            use std::os::unix::fs::MetadataExt;
            entry.metadata().is_ok_and(|m| {
                let changed = std::time::UNIX_EPOCH
                    + std::time::Duration::from_secs(m.ctime().max(m.mtime()).max(0) as u64);
                changed < before
            })
        };
        let mut blobs = Vec::new();
        for entry in fs::read_dir(&self.root)? {
            let entry = entry?;
            let name = entry.file_name();
            let name = name.to_string_lossy();
            let mut sha = [0u8; 32];
            if hex::decode_to_slice(name.as_bytes(), &mut sha).is_ok() && older(&entry) {
                blobs.push(sha);
            }
        }
        let mut partials = Vec::new();
        for entry in fs::read_dir(self.root.join(PARTIAL))? {
            let entry = entry?;
            if let Ok(id) = entry.file_name().to_string_lossy().parse::<u64>() {
                if older(&entry) {
                    partials.push(id);
                }
            }
        }
        Ok((blobs, partials))
    }

    /// Bytes of the stored blobs and partial uploads (for the metrics; 0 for what
    /// cannot be read).
    pub fn size_bytes(&self) -> u64 {
        let sum = |dir: &Path| {
            fs::read_dir(dir).map_or(0, |entries| {
                entries
                    .flatten()
                    .filter_map(|e| e.metadata().ok())
                    .filter(|m| m.is_file())
                    .map(|m| m.len())
                    .sum::<u64>()
            })
        };
        sum(&self.root) + sum(&self.root.join(PARTIAL))
    }
}

/// Subdirectory of partial uploads.
pub(super) const PARTIAL: &str = "partial";

#[cfg(test)]
mod tests {
    use super::*;

    fn chunk_bytes(i: u8, len: usize) -> Vec<u8> {
        vec![i + 1; len]
    }

    /// The bytes of an upload of `chunks` whole chunks and a short last one.
    fn upload_of(chunks: u8) -> (Vec<u8>, u64) {
        let mut bytes = Vec::new();
        for i in 0..chunks {
            bytes.extend(chunk_bytes(i, BLOB_CHUNK));
        }
        bytes.extend(chunk_bytes(chunks, 100));
        let size = bytes.len() as u64;
        (bytes, size)
    }

    fn sha(bytes: &[u8]) -> [u8; 32] {
        Sha256::digest(bytes).into()
    }

    #[test]
    fn chunks_written_at_once_share_the_partial_file_and_finishing_closes_it() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = BlobDir::open(tmp.path()).unwrap();
        let (expected, size) = upload_of(6);
        std::thread::scope(|s| {
            for i in 0..=6u8 {
                let (dir, expected) = (&dir, &expected);
                s.spawn(move || {
                    let at = usize::from(i) * BLOB_CHUNK;
                    let end = (at + BLOB_CHUNK).min(expected.len());
                    dir.write_chunk(9, size, u32::from(i), &expected[at..end])
                        .unwrap()
                });
            }
        });
        assert_eq!(dir.partials.lock().unwrap().len(), 1);
        let sha = dir.finish_partial(9, size).unwrap();
        assert_eq!(sha, self::sha(&expected));
        // Finishing leaves the file closed to writes until it is a blob.
        let late = dir.write_chunk(9, size, 0, &chunk_bytes(9, BLOB_CHUNK));
        assert!(matches!(late, Err(ChunkWrite::Finishing)), "{late:?}");
        dir.promote(9, &sha).unwrap();
        assert!(dir.partials.lock().unwrap().is_empty());
        assert_eq!(fs::read(dir.blob_path(&sha)).unwrap(), expected);
        assert!(!dir.partial_path(9).exists());
    }

    #[test]
    fn chunks_arriving_out_of_order_are_hashed_in_the_files_order() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = BlobDir::open(tmp.path()).unwrap();
        let (expected, size) = upload_of(4);
        for i in [2u8, 0, 4, 1, 3] {
            let at = usize::from(i) * BLOB_CHUNK;
            let end = (at + BLOB_CHUNK).min(expected.len());
            dir.write_chunk(5, size, u32::from(i), &expected[at..end])
                .unwrap();
        }
        let arrived = dir.partials.lock().unwrap()[&5]
            .hash
            .lock()
            .unwrap()
            .whole(size);
        assert_eq!(
            arrived,
            Some(sha(&expected)),
            "hashed as the chunks arrived"
        );
        assert_eq!(dir.finish_partial(5, size).unwrap(), sha(&expected));
    }

    #[test]
    fn a_chunk_written_twice_is_hashed_as_the_file_holds_it() {
        // A client that rewrites a chunk after the running hash took its first bytes
        // must not get a blob named by bytes the file no longer holds.
        let tmp = tempfile::tempdir().unwrap();
        let dir = BlobDir::open(tmp.path()).unwrap();
        let (first, size) = upload_of(2);
        for i in 0..=2u8 {
            let at = usize::from(i) * BLOB_CHUNK;
            let end = (at + BLOB_CHUNK).min(first.len());
            dir.write_chunk(6, size, u32::from(i), &first[at..end])
                .unwrap();
        }
        let other = chunk_bytes(7, BLOB_CHUNK);
        dir.write_chunk(6, size, 1, &other).unwrap();
        let mut held = first.clone();
        held[BLOB_CHUNK..2 * BLOB_CHUNK].copy_from_slice(&other);
        let sha = dir.finish_partial(6, size).unwrap();
        assert_ne!(sha, self::sha(&first));
        assert_eq!(sha, self::sha(&held));
    }

    #[test]
    fn chunks_written_before_a_restart_are_read_back_when_finishing() {
        let tmp = tempfile::tempdir().unwrap();
        let (expected, size) = upload_of(3);
        {
            let before = BlobDir::open(tmp.path()).unwrap();
            before
                .write_chunk(4, size, 0, &expected[..BLOB_CHUNK])
                .unwrap();
        }
        let dir = BlobDir::open(tmp.path()).unwrap();
        for i in 1..=3u8 {
            let at = usize::from(i) * BLOB_CHUNK;
            let end = (at + BLOB_CHUNK).min(expected.len());
            dir.write_chunk(4, size, u32::from(i), &expected[at..end])
                .unwrap();
        }
        assert_eq!(dir.finish_partial(4, size).unwrap(), sha(&expected));
    }

    #[test]
    fn uploads_beyond_the_open_files_kept_still_store_their_chunks() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = BlobDir::open(tmp.path()).unwrap();
        let uploads = OPEN_PARTIALS as u64 + 2;
        let size = BLOB_CHUNK as u64 + 10;
        for upload in 0..uploads {
            dir.write_chunk(upload, size, 1, &[upload as u8; 10])
                .unwrap();
        }
        // Idle files were closed to make room.
        assert!(dir.partials.lock().unwrap().len() <= OPEN_PARTIALS);
        for upload in 0..uploads {
            let bytes = fs::read(dir.partial_path(upload)).unwrap();
            assert_eq!(bytes.len(), BLOB_CHUNK + 10);
            assert_eq!(&bytes[BLOB_CHUNK..], &[upload as u8; 10]);
        }
        dir.remove_partial(uploads - 1);
        assert!(!dir.partials.lock().unwrap().contains_key(&(uploads - 1)));
        assert!(!dir.partial_path(uploads - 1).exists());
    }
}
