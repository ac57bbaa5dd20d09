//! What the reliability tests and benchmarks measure: memory, CPU time, store size, and
//! a shared client endpoint; and searching files for bytes that must not be there.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, Result};
use rathaus_server::store::{SledStore, Store as _};

/// A client endpoint on `127.0.0.1:0` that many connections can share (one UDP socket
/// instead of one per connection). It stands in for many devices, each of which would
/// have a socket of its own, so it gets the server's large socket buffers: a burst to a
/// thousand connections must not overflow one default-sized receive buffer.
pub fn shared_endpoint() -> Result<quinn::Endpoint> {
    let (socket, _) = rathaus_server::transport::udp::bind(
        "127.0.0.1:0".parse()?,
        rathaus_server::transport::udp::SERVER_SOCKET_BUFFER,
    )?;
    Ok(quinn::Endpoint::new(
        quinn::EndpointConfig::default(),
        None,
        socket,
        Arc::new(quinn::TokioRuntime),
    )?)
}

/// Resident set size of process `pid` in KiB (Linux `/proc`).
pub fn rss_kib(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| anyhow!("no VmRSS for process {pid}"))
}

/// CPU time (user + system) this process has used so far, all threads (Linux `/proc`).
/// `/proc` counts in USER_HZ ticks, which the kernel ABI fixes at 100 per second, so the
/// resolution is 10 ms: measure phases of a second or more.
pub fn process_cpu_time() -> Result<Duration> {
    cpu_time_of("self")
}

/// [`process_cpu_time`] of another process, by pid.
pub fn process_cpu_time_of(pid: u32) -> Result<Duration> {
    cpu_time_of(&pid.to_string())
}

fn cpu_time_of(process: &str) -> Result<Duration> {
    const USER_HZ: u64 = 100;
    let stat = std::fs::read_to_string(format!("/proc/{process}/stat"))?;
    // Field 2 (the command) may contain spaces; everything after its ')' is fixed.
    let rest = stat
        .rsplit_once(')')
        .map(|(_, r)| r)
        .ok_or_else(|| anyhow!("unexpected /proc/{process}/stat"))?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After the command: state is field 3, utime field 14, stime field 15.
    let ticks = |i: usize| -> Result<u64> {
        fields
            .get(i - 3)
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| anyhow!("no field {i} in /proc/{process}/stat"))
    };
    let total = ticks(14)? + ticks(15)?;
    Ok(Duration::from_millis(total * 1000 / USER_HZ))
}

/// Bytes of every key and value live in a (stopped) server's store: unlike the size of
/// the files, this does not depend on when the storage engine allocates or reclaims space.
pub fn store_bytes(data_dir: &Path) -> Result<u64> {
    let store = SledStore::open(&data_dir.join("db"))?;
    Ok(store
        .range(&[], &[0xff; 16], usize::MAX)?
        .iter()
        .map(|(k, v)| (k.len() + v.len()) as u64)
        .sum())
}

/// Total size in bytes of the files below `dir`.
pub fn dir_size(dir: &Path) -> Result<u64> {
    let mut total = 0;
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let meta = entry.metadata()?;
        total += if meta.is_dir() {
            dir_size(&entry.path())?
        } else {
            meta.len()
        };
    }
    Ok(total)
}

/// Every file below `dir` whose raw bytes contain `needle` (for canary checks: secret
/// content must appear nowhere in what the server stores).
pub fn files_containing(dir: &Path, needle: &[u8]) -> Result<Vec<PathBuf>> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(path) = stack.pop() {
        let meta = std::fs::symlink_metadata(&path)?;
        if meta.is_dir() {
            for entry in std::fs::read_dir(&path)? {
                stack.push(entry?.path());
            }
        } else if meta.is_file() {
            let bytes = std::fs::read(&path)?;
            if contains(&bytes, needle) {
                found.push(path);
            }
        }
    }
    Ok(found)
}

/// Whether `haystack` contains `needle` as a contiguous byte string.
pub fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && haystack.windows(needle.len()).any(|w| w == needle)
}
