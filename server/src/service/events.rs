//! What the service tells connected clients, and which clients are connected.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use bytes::Bytes;

use rathaus_protocol::{frame, DeviceId, Event, GroupHandle, Response, UserId};

use super::Service;

/// Something to push to subscribers.
#[derive(Debug, Clone)]
pub enum Broadcast {
    /// A durable entry; `frame` is the encoded `Response::Event(Event::Posted{..})`, built
    /// once and shared by every subscriber (each stream holds a reference, not a copy).
    Posted {
        /// Its group.
        group: GroupHandle,
        /// The ready-to-send frame.
        frame: Bytes,
        /// Who may receive it, decided once for every subscriber.
        readers: Readers,
    },
    /// The visible groups or rosters changed: clients re-fetch.
    GroupsChanged,
    /// An event for one user only, or one device of theirs; `frame` is the encoded
    /// `Response::Event`.
    Direct {
        /// The user.
        user: UserId,
        /// Only this device of the user; `None`: all of them.
        device: Option<DeviceId>,
        /// The ready-to-send frame.
        frame: Bytes,
    },
    /// The same event for several users (all their devices): one broadcast instead of one
    /// per user, e.g. `SecretGroupsChanged` for everyone a commit touched.
    Users {
        /// The users.
        users: Arc<std::collections::HashSet<UserId>>,
        /// The ready-to-send frame.
        frame: Bytes,
    },
    /// The server is going down.
    ShuttingDown,
}

/// Who may receive an entry's event.
#[derive(Debug, Clone)]
pub enum Readers {
    /// Every colleague (public groups and announcements).
    Everyone,
    /// Only these devices: for a secret group, those in its MLS tree whose users are still
    /// on the roster. Computed once per entry, so a message to a group of N costs one
    /// roster read, not one per subscriber.
    Devices(Arc<HashMap<UserId, Vec<DeviceId>>>),
}

impl Readers {
    /// Whether `device` of `user` may receive it.
    pub fn admits(&self, user: &UserId, device: DeviceId) -> bool {
        match self {
            Readers::Everyone => true,
            Readers::Devices(devices) => devices.get(user).is_some_and(|d| d.contains(&device)),
        }
    }
}

/// The bytes of pushed entry frames that a subscription's inbox or stream still holds.
///
/// A frame stays in every inbox it was queued in until that subscriber has taken it, so
/// one subscriber that stops reading (its phone accepts nothing, its connection stays
/// open) would hold every frame published for it since, up to its inbox's 4,096 of up to
/// 512 KiB each. Past the bound, entries are stored as always but not pushed: subscribers
/// see the gap at the next event, or at their next sync, and fetch.
#[derive(Debug)]
pub(crate) struct PushedFrames {
    /// Bytes held now.
    held: Arc<AtomicUsize>,
    /// The bound.
    max: AtomicUsize,
}

/// Bytes of pushed frames held at most, by default.
pub(crate) const PUSHED_BYTES_MAX: usize = 64 * 1024 * 1024;

impl PushedFrames {
    pub(crate) fn new(max: usize) -> Self {
        Self {
            held: Arc::new(AtomicUsize::new(0)),
            max: AtomicUsize::new(max),
        }
    }

    /// `bytes` as a frame whose release is counted; `None` past the bound (a frame alone
    /// larger than the bound still goes out when nothing else is held).
    pub(crate) fn frame(&self, bytes: Vec<u8>) -> Option<Bytes> {
        let n = bytes.len();
        let before = self.held.fetch_add(n, Ordering::AcqRel);
        if before > 0 && before + n > self.max.load(Ordering::Relaxed) {
            self.held.fetch_sub(n, Ordering::AcqRel);
            return None;
        }
        Some(Bytes::from_owner(HeldFrame {
            bytes,
            held: self.held.clone(),
        }))
    }

    /// Bytes held now.
    pub(crate) fn held(&self) -> usize {
        self.held.load(Ordering::Acquire)
    }

    /// Sets the bound (for tests).
    #[cfg(test)]
    pub(crate) fn set_max(&self, max: usize) {
        self.max.store(max, Ordering::Relaxed);
    }
}

/// A pushed frame's bytes, counted in [`PushedFrames`] until the last reference goes.
struct HeldFrame {
    bytes: Vec<u8>,
    held: Arc<AtomicUsize>,
}

impl AsRef<[u8]> for HeldFrame {
    fn as_ref(&self) -> &[u8] {
        &self.bytes
    }
}

impl Drop for HeldFrame {
    fn drop(&mut self) {
        self.held.fetch_sub(self.bytes.len(), Ordering::AcqRel);
    }
}

/// A live, authenticated connection, as far as the rules need to know it.
pub trait LiveConnection: Send + Sync + 'static {
    /// Ends the connection because its user was offboarded.
    fn end_account_removed(&self);
}

/// (connection id, device, connection) of one user's connections. A user has a few at
/// most, so a list: one small allocation where a map took a table of ~200 bytes for one
/// connection, at every idle connection the server holds.
type UserConnections = Vec<(u64, DeviceId, Arc<dyn LiveConnection>)>;

/// The live authenticated connections per user: offboarding ends them, and "who is online"
/// is read from here.
#[derive(Default)]
pub struct LiveConnections {
    /// user → connection id → connection.
    by_user: Mutex<HashMap<UserId, UserConnections>>,
}

impl std::fmt::Debug for LiveConnections {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LiveConnections").finish_non_exhaustive()
    }
}

impl LiveConnections {
    /// Adds a connection that authenticated as `device` of `user`.
    pub fn register(
        &self,
        user: &UserId,
        device: DeviceId,
        id: u64,
        conn: Arc<dyn LiveConnection>,
    ) {
        self.with(|m| {
            let conns = m
                .entry(user.clone())
                .or_insert_with(|| Vec::with_capacity(1));
            // A connection authenticates once; should it ever again, it is listed once.
            conns.retain(|(known, _, _)| *known != id);
            conns.push((id, device, conn));
        });
    }

    /// Drops a connection that ended.
    pub fn unregister(&self, user: &UserId, id: u64) {
        self.with(|m| {
            if let Some(conns) = m.get_mut(user) {
                conns.retain(|(known, _, _)| *known != id);
                if conns.is_empty() {
                    m.remove(user);
                }
            }
        });
    }

    /// Ends every connection of `user`; returns how many there were.
    pub fn end_all(&self, user: &UserId) -> usize {
        let conns = self.with(|m| m.remove(user)).unwrap_or_default();
        for (_, _, conn) in &conns {
            conn.end_account_removed();
        }
        conns.len()
    }

    /// Ends every connection of one device of `user` (revoked); returns how many.
    pub fn end_device(&self, user: &UserId, device: DeviceId) -> usize {
        self.end_where(user, |_, d| d == device)
    }

    /// The connections open now, as (user, connection id, device): `users`' only, or
    /// everyone's.
    pub fn listed(&self, users: Option<&[UserId]>) -> Vec<(UserId, u64, DeviceId)> {
        let list = |user: &UserId, conns: &UserConnections| {
            conns
                .iter()
                .map(|(id, device, _)| (user.clone(), *id, *device))
                .collect::<Vec<_>>()
        };
        self.with(|m| match users {
            Some(users) => users
                .iter()
                .filter_map(|u| m.get(u).map(|conns| list(u, conns)))
                .flatten()
                .collect(),
            None => m.iter().flat_map(|(u, conns)| list(u, conns)).collect(),
        })
    }

    /// Ends the connections `ids` of `user`; returns how many were still open.
    pub fn end_connections(&self, user: &UserId, ids: &[u64]) -> usize {
        self.end_where(user, |id, _| ids.contains(&id))
    }

    /// Ends the connections of `user` that `ends` picks by (connection id, device).
    fn end_where(&self, user: &UserId, ends: impl Fn(u64, DeviceId) -> bool) -> usize {
        let ended: Vec<Arc<dyn LiveConnection>> = self.with(|m| {
            let Some(conns) = m.get_mut(user) else {
                return Vec::new();
            };
            let mut ended = Vec::new();
            conns.retain(|(id, d, conn)| {
                let end = ends(*id, *d);
                if end {
                    ended.push(conn.clone());
                }
                !end
            });
            if conns.is_empty() {
                m.remove(user);
            }
            ended
        });
        for conn in &ended {
            conn.end_account_removed();
        }
        ended.len()
    }

    /// Forgets every connection (at shutdown, once they are closed).
    pub fn clear(&self) {
        self.with(HashMap::clear);
    }

    /// Whether `user` has a live connection.
    pub fn is_online(&self, user: &UserId) -> bool {
        self.with(|m| m.contains_key(user))
    }

    /// Whether `device` of `user` has a live connection.
    pub fn is_device_online(&self, user: &UserId, device: DeviceId) -> bool {
        self.with(|m| {
            m.get(user)
                .is_some_and(|conns| conns.iter().any(|(_, d, _)| *d == device))
        })
    }

    /// Number of users online.
    pub fn users_online(&self) -> usize {
        self.with(|m| m.len())
    }

    /// Number of authenticated connections.
    pub fn connections(&self) -> usize {
        self.with(|m| m.values().map(Vec::len).sum())
    }

    fn with<R>(&self, f: impl FnOnce(&mut HashMap<UserId, UserConnections>) -> R) -> R {
        // Each closure is a single map operation, so a poisoned lock still holds a
        // consistent map.
        let mut m = self.by_user.lock().unwrap_or_else(PoisonError::into_inner);
        f(&mut m)
    }
}

impl Service {
    /// Pushes `event` to the live subscriptions of `user` (or one device of theirs).
    pub(super) fn push_to(&self, user: &UserId, device: Option<DeviceId>, event: Event) {
        match frame::encode(&Response::Event(event)) {
            Ok(bytes) => self.publish(Broadcast::Direct {
                user: user.clone(),
                device,
                frame: Bytes::from(bytes),
            }),
            Err(e) => tracing::error!(%user, error = %e, "cannot encode event"),
        }
    }

    /// Pushes `event` to every device of every user in `users`, as one broadcast.
    pub(super) fn push_to_all(&self, users: impl IntoIterator<Item = UserId>, event: Event) {
        let users: std::collections::HashSet<UserId> = users.into_iter().collect();
        if users.is_empty() {
            return;
        }
        match frame::encode(&Response::Event(event)) {
            Ok(bytes) => self.publish(Broadcast::Users {
                users: Arc::new(users),
                frame: Bytes::from(bytes),
            }),
            Err(e) => tracing::error!(error = %e, "cannot encode event"),
        }
    }

    /// Queues `event` for the subscriptions that may receive it (see `subscriptions`).
    pub(super) fn publish(&self, event: Broadcast) {
        self.subscriptions.publish(event);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    struct Counted(Arc<AtomicUsize>);

    impl LiveConnection for Counted {
        fn end_account_removed(&self) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[test]
    fn connections_are_ended_per_device_and_per_user() {
        let live = LiveConnections::default();
        let anna = UserId::parse("anna").unwrap();
        let ended = Arc::new(AtomicUsize::new(0));
        let conn = || -> Arc<dyn LiveConnection> { Arc::new(Counted(ended.clone())) };
        live.register(&anna, DeviceId(1), 10, conn());
        live.register(&anna, DeviceId(1), 11, conn());
        live.register(&anna, DeviceId(2), 12, conn());
        // Registered again, still one connection.
        live.register(&anna, DeviceId(2), 12, conn());
        assert_eq!(live.connections(), 3);
        assert_eq!(live.users_online(), 1);

        assert_eq!(live.end_device(&anna, DeviceId(1)), 2);
        assert_eq!(ended.load(Ordering::SeqCst), 2);
        assert!(!live.is_device_online(&anna, DeviceId(1)));
        assert!(live.is_device_online(&anna, DeviceId(2)));

        live.unregister(&anna, 12);
        assert!(!live.is_online(&anna));
        assert_eq!(live.end_all(&anna), 0);

        live.register(&anna, DeviceId(3), 13, conn());
        assert_eq!(live.end_all(&anna), 1);
        assert_eq!(ended.load(Ordering::SeqCst), 3);
        assert_eq!(live.connections(), 0);
    }
}
