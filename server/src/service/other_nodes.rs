//! What the other nodes on a shared store tell this one: the entries they made durable
//! (pushed to this node's subscribers, see `group_log`) and the users whose sessions they
//! ended (offboarding, a reset, a revoked device), whose connections here end too.
//!
//! Other nodes also say when they wrote user or department records: the ones this node
//! keeps between requests (a connection's user record, the departments known to exist)
//! are then read again.
//!
//! A notice only says whom to look at: the user's record, read fresh, decides which of
//! this node's connections it still admits. Notices can be lost (a node dying between
//! its commit and its `NOTIFY`, a full queue, a dropped listening connection), so every
//! node also checks all of its sessions every [`SESSION_CHECK`] and whenever its
//! listening connection is made again.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use rathaus_protocol::{DeviceId, UserId};
use tokio::sync::{mpsc, watch};

use super::{admits_device, Service};
use crate::store::{NodeNotice, UserRecord};

/// How often a node on a shared store checks every session it holds against the users'
/// records: the longest a session another node ended stays open here if that node's
/// notice is lost.
const SESSION_CHECK: Duration = Duration::from_secs(60);

impl Service {
    /// Acts on the other nodes' notices until `stop`, and checks this node's sessions
    /// every [`SESSION_CHECK`].
    pub async fn follow_other_nodes(
        self: Arc<Self>,
        mut notices: mpsc::Receiver<NodeNotice>,
        mut stop: watch::Receiver<bool>,
    ) {
        let mut check =
            tokio::time::interval_at(tokio::time::Instant::now() + SESSION_CHECK, SESSION_CHECK);
        check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let notice = tokio::select! {
                _ = stop.changed() => return,
                _ = check.tick() => {
                    self.end_sessions_ended_elsewhere(None).await;
                    continue;
                }
                n = notices.recv() => match n {
                    Some(n) => n,
                    None => return,
                },
            };
            match notice {
                NodeNotice::Entries(entries) => self.relay_entries(entries).await,
                NodeNotice::Sessions(user) => {
                    if let Ok(user) = UserId::parse(&user) {
                        self.end_sessions_ended_elsewhere(Some(vec![user])).await;
                    }
                }
                NodeNotice::Records => self.others_changed_records(),
                NodeNotice::Listening => {
                    // What was said while nobody listened is lost: nothing kept counts.
                    self.others_changed_records();
                    self.end_sessions_ended_elsewhere(None).await;
                }
            }
        }
    }

    /// Another node wrote user or department records (or may have, unheard): the ones
    /// this node keeps are read again before the next request relies on them.
    fn others_changed_records(&self) {
        self.db.others_changed_records();
        self.open_departments.forget_all();
    }

    /// Ends this node's connections of `users` (of everyone connected, for `None`) whose
    /// user was offboarded or whose device was revoked, as their records say now; returns
    /// how many it ended. A connection that authenticated after the records were read is
    /// left alone: its device was checked at its login.
    pub(crate) async fn end_sessions_ended_elsewhere(
        self: &Arc<Self>,
        users: Option<Vec<UserId>>,
    ) -> usize {
        // Listed before the records are read: every listed session's device was stored
        // before the read, so a record without it was changed after the login.
        let listed = self.live.listed(users.as_deref());
        if listed.is_empty() {
            return 0;
        }
        let mut ids: Vec<UserId> = listed.iter().map(|(user, _, _)| user.clone()).collect();
        // `listed` gives each user's connections together.
        ids.dedup();
        let service = self.clone();
        let read = tokio::task::spawn_blocking(move || {
            let records = service.db.users_by_id(&ids)?;
            Ok::<_, crate::store::StoreError>(ids.into_iter().zip(records).collect())
        })
        .await;
        let records: HashMap<UserId, Option<UserRecord>> = match read {
            Ok(Ok(records)) => records,
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "cannot read the users' records to check the sessions; tried again later");
                return 0;
            }
            Err(e) => {
                tracing::warn!(error = %e, "the check of the sessions failed; tried again later");
                return 0;
            }
        };
        let mut ended = 0;
        for (user, connections) in ended_elsewhere(&listed, &records) {
            let n = self.live.end_connections(&user, &connections);
            self.metrics.sessions_ended_by_other_nodes.inc_by(n as u64);
            tracing::info!(%user, connections_ended = n, "sessions ended on another node");
            ended += n;
        }
        ended
    }
}

/// Of the `listed` connections (user, connection id, device), those whose user's record
/// no longer admits their device, per user. A user missing from `records` was not read
/// and keeps their connections; one read as `None` is gone.
fn ended_elsewhere(
    listed: &[(UserId, u64, DeviceId)],
    records: &HashMap<UserId, Option<UserRecord>>,
) -> Vec<(UserId, Vec<u64>)> {
    let mut ended: Vec<(UserId, Vec<u64>)> = Vec::new();
    for (user, id, device) in listed {
        let Some(record) = records.get(user) else {
            continue;
        };
        if admits_device(record.as_ref(), *device) {
            continue;
        }
        match ended.iter_mut().find(|(u, _)| u == user) {
            Some((_, ids)) => ids.push(*id),
            None => ended.push((user.clone(), vec![*id])),
        }
    }
    ended
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::store::DeviceRecord;

    fn record(id: &str, devices: &[(u64, bool)], removed: bool) -> UserRecord {
        UserRecord {
            id: UserId::parse(id).unwrap(),
            name: id.to_owned(),
            roles: vec![rathaus_protocol::Role::Member],
            departments: Vec::new(),
            password_hash: None,
            devices: devices
                .iter()
                .map(|(d, revoked)| DeviceRecord {
                    id: DeviceId(*d),
                    key: rathaus_protocol::DeviceKey([0; 32]),
                    name: format!("device {d}"),
                    created_ms: 0,
                    revoked: *revoked,
                })
                .collect(),
            removed,
            created_ms: 0,
        }
    }

    #[test]
    fn connections_end_where_the_record_no_longer_admits_their_device() {
        let (anna, ben, cem, dora) = (
            UserId::parse("P1").unwrap(),
            UserId::parse("P2").unwrap(),
            UserId::parse("P3").unwrap(),
            UserId::parse("P4").unwrap(),
        );
        let listed = vec![
            (anna.clone(), 1, DeviceId(1)),
            (anna.clone(), 2, DeviceId(2)),
            (anna.clone(), 3, DeviceId(2)),
            (ben.clone(), 4, DeviceId(1)),
            (cem.clone(), 5, DeviceId(1)),
            (dora.clone(), 6, DeviceId(1)),
        ];
        let records = HashMap::from([
            // Device 2 revoked: its two connections end, device 1's stays.
            (
                anna.clone(),
                Some(record("P1", &[(1, false), (2, true)], false)),
            ),
            // Offboarded.
            (ben.clone(), Some(record("P2", &[(1, false)], true))),
            // Gone from the store.
            (cem.clone(), None),
            // Dora was not read: nothing is decided for her.
        ]);
        let mut ended = ended_elsewhere(&listed, &records);
        ended.sort();
        assert_eq!(
            ended,
            vec![(anna, vec![2, 3]), (ben, vec![4]), (cem, vec![5])]
        );
    }

    struct Counted(Arc<std::sync::atomic::AtomicUsize>);

    impl super::super::LiveConnection for Counted {
        fn end_account_removed(&self) {
            self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
    }

    #[tokio::test]
    async fn the_check_ends_the_sessions_another_node_ended_and_keeps_the_others() {
        let f = super::super::testing::Fixture::new().await;
        let anna = f.user("P1001", &[]).await;
        let ben = f.user("P1002", &[]).await;
        let ended = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let live = f.service.live();
        live.register(&anna.user, anna.device, 1, Arc::new(Counted(ended.clone())));
        live.register(&ben.user, ben.device, 2, Arc::new(Counted(ended.clone())));

        // Another node offboards Anna: her record changes in the store, and nothing on
        // this node ends her connection (the other node's notice is lost).
        let mut record = f.service.db.user(&anna.user).unwrap().unwrap();
        record.removed = true;
        let mut w = crate::store::Writes::new();
        w.put_user(&record).unwrap();
        f.service.db.apply(w).unwrap();
        let service = Arc::new(f.service);
        assert!(service.live().is_online(&anna.user));

        // This node's check ends her session, and only hers.
        assert_eq!(service.end_sessions_ended_elsewhere(None).await, 1);
        assert_eq!(ended.load(std::sync::atomic::Ordering::SeqCst), 1);
        assert!(!service.live().is_online(&anna.user));
        assert!(service.live().is_online(&ben.user));
        assert_eq!(service.end_sessions_ended_elsewhere(None).await, 0);
        assert_eq!(
            service
                .end_sessions_ended_elsewhere(Some(vec![ben.user.clone()]))
                .await,
            0
        );
    }
}
