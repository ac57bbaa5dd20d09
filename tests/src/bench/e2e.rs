//! `e2e-secret`: a message in a secret group from `send` on one client until `listen`
//! shows it on another, through client-core's API as `rathaus send` and `rathaus listen`
//! use it (`Client::send_text` with its durable ack; `Client::subscribe`, then
//! `Client::apply_event` for every pushed event, which for a secret group fetches the new
//! entries and decrypts them). Baseline: the same for the department's public group, in
//! the same run, with the same two clients, the two groups taking turns in blocks.

use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Result};
use rathaus_client::{Approval, Client};
use rathaus_protocol::{GroupHandle, UserId};
use rathaus_tests::TestBackend;

use super::report::{Row, Samples};

/// Messages sent before the timed ones, to warm up connections, caches and the page
/// cache.
const WARM_UP: usize = 5;
/// Blocks of messages in which the public and the secret group take turns.
const BLOCKS: usize = 10;
/// Upper bound for one message to arrive.
const WAIT: Duration = Duration::from_secs(30);

/// Runs `messages` timed messages through the secret group and through the public one.
pub(crate) async fn e2e(messages: usize, suffix: &str) -> Result<Vec<Row>> {
    let mut backend = TestBackend::start().await?;
    let mut admin = backend.admin().await?;
    let anna_code = backend
        .provision(&mut admin, "P1001", "Anna Berg", &[], &[])
        .await?;
    backend.department(&mut admin, "bauamt", &["P1001"]).await?;
    let jonas_code = backend
        .provision(&mut admin, "P1002", "Jonas Weber", &["bauamt"], &[])
        .await?;
    admin.disconnect().await;
    let mut anna = backend.enroll("P1001", &anna_code).await?;
    let mut jonas = backend.enroll("P1002", &jonas_code).await?;
    let secret = GroupHandle::parse("bauamt/secret")?;
    let public = GroupHandle::parse("bauamt")?;
    // Anna's client gives birth to the group, she admits Jonas, his client joins.
    anna.sync().await?;
    let approval = anna.approve(&secret, &UserId::parse("P1002")?).await?;
    ensure!(
        matches!(approval, Approval::Added { .. }),
        "Jonas was not admitted: {approval:?}"
    );
    jonas.sync().await?;
    ensure!(
        jonas.group_code(&secret)?.is_some(),
        "Jonas did not join the secret group"
    );

    // The two groups take turns in blocks, so that a busy moment of the shared machine
    // falls on both alike rather than on whichever ran second.
    let mut rows = Vec::new();
    let (mut public_t, mut secret_t) = (Samples::default(), Samples::default());
    let block = messages.div_ceil(BLOCKS);
    let mut left = messages;
    while left > 0 {
        let n = block.min(left);
        public_t.extend(deliveries(&mut anna, &mut jonas, &public, n).await?);
        secret_t.extend(deliveries(&mut anna, &mut jonas, &secret, n).await?);
        left -= n;
    }
    anna.disconnect().await;
    jonas.disconnect().await;
    backend.stop().await;

    let what = |q: &str| {
        format!(
            "{q} of {messages}: `send` on one client until `listen` shows it on another; \
             baseline the same in the public group"
        )
    };
    rows.push(
        Row::new(
            format!("e2e-secret-p50{suffix}"),
            secret_t.median_ms(),
            "ms",
        )
        .baseline(public_t.median_ms())
        .note(what("median")),
    );
    rows.push(
        Row::new(
            format!("e2e-secret-p99{suffix}"),
            secret_t.quantile_ms(0.99),
            "ms",
        )
        .baseline(public_t.quantile_ms(0.99))
        .bar(2.0 * public_t.quantile_ms(0.99))
        .note(what("p99")),
    );
    Ok(rows)
}

/// `WARM_UP` + `messages` messages from `sender` to `group`, one at a time, each timed
/// from the start of its send until `listener`'s event handling returned its row.
async fn deliveries(
    sender: &mut Client,
    listener: &mut Client,
    group: &GroupHandle,
    messages: usize,
) -> Result<Samples> {
    let mut subscription = listener.subscribe().await?;
    let mut samples = Samples::default();
    for i in 0..WARM_UP + messages {
        let text = format!("Termin {i}: Bauausschuss, Raum 2.14 ({group})");
        let started = Instant::now();
        let listen = async {
            let deadline = Instant::now() + WAIT;
            loop {
                let Some(left) = deadline.checked_duration_since(Instant::now()) else {
                    bail!("message {i} in {group} did not arrive within {WAIT:?}");
                };
                let event = tokio::time::timeout(left, subscription.next()).await??;
                let shown = listener.apply_event(&event).await?;
                if shown.iter().any(|row| row.text == text) {
                    return anyhow::Ok(started.elapsed());
                }
            }
        };
        let send = async {
            sender.send_text(group, &text).await?;
            anyhow::Ok(())
        };
        let (elapsed, sent) = tokio::join!(listen, send);
        sent?;
        let elapsed = elapsed?;
        if i >= WARM_UP {
            samples.push(elapsed);
        }
    }
    ensure!(samples.len() == messages, "lost samples in {group}");
    Ok(samples)
}
