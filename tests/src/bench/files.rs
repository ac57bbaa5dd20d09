//! `files`: a 50 MiB file up to a secret group and down again at another member (sealed,
//! chunked, every chunk durable before its acknowledgement), against bare quinn streaming
//! the same bytes up and down on one stream of a connection with Rathaus' TLS and
//! transport settings, in the same run: three rounds of each, alternating, and the
//! median of each direction.

use std::time::{Duration, Instant};

use anyhow::{anyhow, Context, Result};
use rand::RngCore;
use rathaus_client::net::Connection;
use rathaus_client::Approval;
use rathaus_protocol::{GroupHandle, UserId};
use rathaus_server::transport::tls::TlsIdentity;
use rathaus_tests::TestBackend;

use super::report::{perf_control, Row};

/// Upper bound for any single wait, so a broken server fails the run instead of hanging.
const WAIT: Duration = Duration::from_secs(300);

/// Transfers each way, for Rathaus and bare quinn alike; the figures are their medians.
const ROUNDS: usize = 3;

/// The median of `times` (sorted in place; the upper middle for an even count).
fn median(times: &mut [Duration]) -> Duration {
    times.sort();
    times.get(times.len() / 2).copied().unwrap_or_default()
}

pub(crate) async fn transfer(mib: usize, suffix: &str) -> Result<Vec<Row>> {
    let size = mib * 1024 * 1024;
    let tmp = tempfile::tempdir()?;
    let mut bytes = vec![0u8; size];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    let path = tmp.path().join("bauplan.bin");
    std::fs::write(&path, &bytes)?;

    // Rathaus: Anna posts the file to bauamt/secret, Jonas downloads it.
    let mut backend = TestBackend::start().await?;
    let mut admin = backend.admin().await?;
    let anna_code = backend
        .provision(&mut admin, "P1001", "Anna Berg", &[], &[])
        .await?;
    backend.department(&mut admin, "bauamt", &["P1001"]).await?;
    let jonas_code = backend
        .provision(&mut admin, "P1002", "Jonas Weber", &["bauamt"], &[])
        .await?;
    let mut anna = backend.enroll("P1001", &anna_code).await?;
    let mut jonas = backend.enroll("P1002", &jonas_code).await?;
    let group = GroupHandle::parse("bauamt/secret")?;
    anna.sync().await?;
    let approval = anna.approve(&group, &UserId::parse("P1002")?).await?;
    if !matches!(approval, Approval::Added { .. }) {
        return Err(anyhow!("Jonas was not admitted: {approval:?}"));
    }
    jonas.sync().await?;

    // Rounds of Rathaus and bare quinn alternate, so that both meet the same moments of
    // a shared machine; each figure is the median of its rounds.
    let mut ups = Vec::new();
    let mut downs = Vec::new();
    let mut bare_ups = Vec::new();
    let mut bare_downs = Vec::new();
    for round in 0..ROUNDS {
        perf_control("upload", "enable");
        let t = Instant::now();
        let sent = tokio::time::timeout(WAIT, anna.send_file(&group, &path, None, &mut |_| {}))
            .await
            .context("upload timed out")??;
        ups.push(t.elapsed());
        perf_control("upload", "disable");
        jonas.read(&group).await?;
        let out = tmp.path().join(format!("bauplan-jonas-{round}.bin"));
        perf_control("download", "enable");
        let t = Instant::now();
        let got = tokio::time::timeout(
            WAIT,
            jonas.download(&group, sent.receipt.seq, Some(&out), &mut |_| {}),
        )
        .await
        .context("download timed out")??;
        downs.push(t.elapsed());
        perf_control("download", "disable");
        if got.sha256 != sent.attachment.sha256 {
            return Err(anyhow!("the file did not arrive intact"));
        }
        std::fs::remove_file(&out)?;

        // Bare quinn: the same bytes up and down one stream, nothing stored or sealed.
        let (bare_up, bare_down) = bare_stream(&bytes).await?;
        bare_ups.push(bare_up);
        bare_downs.push(bare_down);
    }
    backend.stop().await;
    let ms = |ds: &[Duration]| {
        ds.iter()
            .map(|d| format!("{:.0}", d.as_secs_f64() * 1e3))
            .collect::<Vec<_>>()
            .join("/")
    };
    eprintln!(
        "   ms per round: rathaus up {}, down {}; bare quinn up {}, down {}",
        ms(&ups),
        ms(&downs),
        ms(&bare_ups),
        ms(&bare_downs)
    );
    let (up, down) = (median(&mut ups), median(&mut downs));
    let (bare_up, bare_down) = (median(&mut bare_ups), median(&mut bare_downs));

    let mb = size as f64 / 1e6;
    let rate = |d: Duration| mb / d.as_secs_f64();
    let total = rate(up + down) * 2.0;
    let bare_total = rate(bare_up + bare_down) * 2.0;
    Ok(vec![
        Row::new(format!("file-{mib}mib-secret{suffix}"), total, "MB/s")
            .baseline(bare_total)
            .bar(bare_total * 0.5)
            .higher_is_better()
            .note(
                "upload + download of one file in a secret group (sealed, chunks durable \
                 before ack, SHA-256 checked); baseline: bare quinn streaming the same bytes \
                 up and down; medians of 3 alternating rounds",
            ),
        Row::new(format!("file-{mib}mib-upload{suffix}"), rate(up), "MB/s")
            .baseline(rate(bare_up))
            .higher_is_better()
            .note("upload alone"),
        Row::new(
            format!("file-{mib}mib-download{suffix}"),
            rate(down),
            "MB/s",
        )
        .baseline(rate(bare_down))
        .higher_is_better()
        .note("download alone"),
    ])
}

/// Streams `bytes` to a bare quinn server on one stream and back; returns both times.
async fn bare_stream(bytes: &[u8]) -> Result<(Duration, Duration)> {
    let identity = TlsIdentity::generate(&[])?;
    let endpoint = quinn::Endpoint::server(identity.server_config()?, "127.0.0.1:0".parse()?)?;
    let addr = endpoint.local_addr()?;
    let echo = bytes.len();
    let server = endpoint.clone();
    tokio::spawn(async move {
        let Some(incoming) = server.accept().await else {
            return;
        };
        let Ok(conn) = incoming.await else { return };
        let Ok((mut send, mut recv)) = conn.accept_bi().await else {
            return;
        };
        // Read the upload to its end, then send as many bytes back.
        let mut got = 0usize;
        while let Ok(Some(chunk)) = recv.read_chunk(256 * 1024, true).await {
            got += chunk.bytes.len();
        }
        let block = vec![7u8; 256 * 1024];
        let mut left = got.min(echo);
        while left > 0 {
            let n = left.min(block.len());
            if send.write_all(&block[..n]).await.is_err() {
                return;
            }
            left -= n;
        }
        let _ = send.finish();
        let _ = send.stopped().await;
    });
    let conn = Connection::connect(&addr.to_string(), &identity.fingerprint()).await?;
    let (mut send, mut recv) = conn.raw().open_bi().await?;
    let t = Instant::now();
    for chunk in bytes.chunks(256 * 1024) {
        send.write_all(chunk).await?;
    }
    send.finish()?;
    // The upload is done once the server starts answering (it reads to the end first).
    let first = recv
        .read_chunk(256 * 1024, true)
        .await?
        .ok_or_else(|| anyhow!("the bare server sent nothing back"))?;
    let up = t.elapsed();
    let t = Instant::now();
    let mut got = first.bytes.len();
    while let Some(chunk) = recv.read_chunk(256 * 1024, true).await? {
        got += chunk.bytes.len();
    }
    let down = t.elapsed();
    if got != bytes.len() {
        return Err(anyhow!("bare quinn echoed {got} of {} bytes", bytes.len()));
    }
    conn.close().await;
    endpoint.close(0u32.into(), b"done");
    Ok((up, down))
}
