//! Wake-ups between the nodes of one database: PostgreSQL `LISTEN`/`NOTIFY` on the
//! channel `rathaus_log`.
//!
//! When a node has made entries of a group durable it notifies the range of seqs; every
//! other node reads those entries from the log and pushes them to its own subscribers. A
//! notification says only *where* to read, never *what*: a lost one (a node restarting, a
//! full queue, a dropped listener connection) only delays delivery until the subscriber's
//! client notices the gap and fetches by seq, as it does after any gap.
//!
//! When a node has ended a user's sessions (offboarding, a reset, a revoked device) it
//! names the user; every other node reads the user's record and ends the connections it
//! no longer admits. Here too the notification says only whom to look at. What a lost one
//! would leave open, the nodes' periodic check of their sessions ends (see
//! `Service::end_sessions_ended_elsewhere`), and a listener connection made again is
//! announced ([`NodeNotice::Listening`]) so the node checks them at once.
//!
//! When a node has written user or department records it says so, without naming them;
//! every other node reads again the ones it keeps between requests. A lost one is bounded
//! by how long such a record is kept (`SHARED_RECORDS_KEPT`).
//!
//! Notifications from one node are coalesced per group (and per user) while the previous
//! `NOTIFY` is on its way, so a burst of posts costs one statement per group and round,
//! not one per post.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_postgres::AsyncMessage;

use super::pg_tls::PgTls;

/// The channel every node listens on.
const CHANNEL: &str = "rathaus_log";
/// Notifications waiting to be sent; beyond this they are dropped (only a delay).
const OUTBOX: usize = 4096;
/// Notices from other nodes waiting for the service; beyond this they are dropped.
const INBOX: usize = 4096;
/// Pause before a dropped listener connection is made again.
const RECONNECT: Duration = Duration::from_secs(1);

/// Entries `from..=to` of `group` were made durable by another node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntryNotice {
    /// The group handle (`bauamt`, `bauamt/secret`, …).
    pub group: String,
    /// First seq.
    pub from: u64,
    /// Last seq.
    pub to: u64,
}

/// What another node told this one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NodeNotice {
    /// It made entries durable.
    Entries(EntryNotice),
    /// It ended sessions of this user (the personnel number as stored).
    Sessions(String),
    /// It wrote user or department records: the ones this node keeps are read again.
    Records,
    /// The listening connection was made (again): notices sent while it was down are
    /// lost, so every session this node holds is to be checked.
    Listening,
}

/// What this node tells the others.
#[derive(Debug)]
pub(super) enum Outgoing {
    /// Entry `seq` of the group is durable.
    Entry(String, u64),
    /// Sessions of the user ended.
    Sessions(String),
    /// User or department records were written.
    Records,
}

/// The second word of a session notification, where an entry notification has its first
/// seq (a node that does not know the word ignores the notice).
const SESSIONS: &str = "sessions";

/// The payload of a notification that records changed, as the second word (nothing
/// follows it).
const RECORDS: &str = "records";

/// The payload of one entry notification: `<node> <from> <to> <group>`.
fn payload(node: u64, group: &str, from: u64, to: u64) -> String {
    format!("{node:016x} {from} {to} {group}")
}

/// The payload of one session notification: `<node> sessions <user>`.
fn sessions_payload(node: u64, user: &str) -> String {
    format!("{node:016x} {SESSIONS} {user}")
}

/// Parses a payload; `None` for one of this node or one that is not ours.
fn parse(payload: &str, own_node: u64) -> Option<NodeNotice> {
    let mut parts = payload.splitn(4, ' ');
    let node = u64::from_str_radix(parts.next()?, 16).ok()?;
    if node == own_node {
        return None;
    }
    let second = parts.next()?;
    if second == RECORDS {
        return parts.next().is_none().then_some(NodeNotice::Records);
    }
    if second == SESSIONS {
        let user = parts.next()?;
        if user.is_empty() || parts.next().is_some() {
            return None;
        }
        return Some(NodeNotice::Sessions(user.to_owned()));
    }
    let from = second.parse().ok()?;
    let to = parts.next()?.parse().ok()?;
    let group = parts.next()?.to_owned();
    if from == 0 || to < from || group.is_empty() {
        return None;
    }
    Some(NodeNotice::Entries(EntryNotice { group, from, to }))
}

/// Sends this node's notifications, coalesced, through the pool.
pub(super) fn spawn_sender(
    rt: &tokio::runtime::Runtime,
    pool: deadpool_postgres::Pool,
    node: u64,
) -> mpsc::Sender<Outgoing> {
    let (tx, mut rx) = mpsc::channel::<Outgoing>(OUTBOX);
    rt.spawn(async move {
        while let Some(first) = rx.recv().await {
            let mut ranges: BTreeMap<String, (u64, u64)> = BTreeMap::new();
            let mut users = BTreeSet::new();
            let mut records = false;
            let mut next = Some(first);
            while let Some(outgoing) = next.take().or_else(|| rx.try_recv().ok()) {
                match outgoing {
                    Outgoing::Entry(group, seq) => {
                        let range = ranges.entry(group).or_insert((seq, seq));
                        range.0 = range.0.min(seq);
                        range.1 = range.1.max(seq);
                    }
                    Outgoing::Sessions(user) => {
                        users.insert(user);
                    }
                    Outgoing::Records => records = true,
                }
            }
            let Ok(client) = pool.get().await else {
                if !users.is_empty() {
                    tracing::warn!(
                        users = users.len(),
                        "cannot tell the other nodes of ended sessions; their periodic check ends them"
                    );
                }
                continue;
            };
            let records = records.then(|| format!("{node:016x} {RECORDS}"));
            let texts = records
                .into_iter()
                .chain(users.iter().map(|user| sessions_payload(node, user)))
                .chain(
                ranges
                    .iter()
                    .map(|(group, (from, to))| payload(node, group, *from, *to)),
            );
            for text in texts {
                if let Err(e) = client
                    .execute("SELECT pg_notify($1, $2)", &[&CHANNEL, &text])
                    .await
                {
                    tracing::debug!(error = %e, "cannot notify the other nodes");
                }
            }
        }
    });
    tx
}

/// Listens for the other nodes' notifications on a connection of its own, made again
/// when it drops; returns where the notices arrive.
pub(super) fn spawn_listener(
    rt: &tokio::runtime::Runtime,
    config: tokio_postgres::Config,
    tls: PgTls,
    node: u64,
) -> mpsc::Receiver<NodeNotice> {
    let (tx, rx) = mpsc::channel(INBOX);
    rt.spawn(async move {
        loop {
            if tx.is_closed() {
                return;
            }
            if let Err(e) = listen_once(&config, &tls, node, &tx).await {
                tracing::warn!(error = %e, "lost the connection for the other nodes' posts");
            }
            tokio::time::sleep(RECONNECT).await;
        }
    });
    rx
}

async fn listen_once(
    config: &tokio_postgres::Config,
    tls: &PgTls,
    node: u64,
    tx: &mpsc::Sender<NodeNotice>,
) -> Result<(), tokio_postgres::Error> {
    let (client, mut connection) = config.connect(tls.clone()).await?;
    let (messages, mut incoming) = mpsc::unbounded_channel();
    let driver = tokio::spawn(async move {
        while let Some(message) = std::future::poll_fn(|cx| connection.poll_message(cx)).await {
            match message {
                Ok(AsyncMessage::Notification(n)) => {
                    if messages.send(n.payload().to_owned()).is_err() {
                        return;
                    }
                }
                Ok(_) => {}
                Err(_) => return,
            }
        }
    });
    client.batch_execute(&format!("LISTEN {CHANNEL}")).await?;
    // Whatever was sent while no connection listened is lost: the sessions are checked.
    let mut open = !matches!(
        tx.try_send(NodeNotice::Listening),
        Err(mpsc::error::TrySendError::Closed(_))
    );
    while open {
        let Some(text) = incoming.recv().await else {
            break;
        };
        if let Some(notice) = parse(&text, node) {
            // A full inbox drops the notice: the subscribers' clients fetch the gap, and
            // the periodic check ends the sessions a dropped one named.
            open = !matches!(
                tx.try_send(notice),
                Err(mpsc::error::TrySendError::Closed(_))
            );
        }
    }
    driver.abort();
    drop(client);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_round_trip_and_own_or_foreign_ones_are_ignored() {
        let text = payload(7, "bauamt/secret", 3, 9);
        assert_eq!(
            parse(&text, 8),
            Some(NodeNotice::Entries(EntryNotice {
                group: "bauamt/secret".into(),
                from: 3,
                to: 9
            }))
        );
        assert_eq!(parse(&text, 7), None, "this node's own");
        let text = sessions_payload(7, "P1002");
        assert_eq!(parse(&text, 8), Some(NodeNotice::Sessions("P1002".into())));
        assert_eq!(parse(&text, 7), None, "this node's own");
        assert_eq!(
            parse("0000000000000007 records", 8),
            Some(NodeNotice::Records)
        );
        assert_eq!(parse("0000000000000007 records", 7), None);
        for bad in [
            "0000000000000007 records extra",
            "",
            "zz 1 2 g",
            "0000000000000007 0 2 g",
            "0000000000000007 5 2 g",
            "0000000000000007 sessions",
            "0000000000000007 sessions ",
            "0000000000000007 sessions P1 P2",
        ] {
            assert_eq!(parse(bad, 8), None, "{bad:?}");
        }
    }
}
