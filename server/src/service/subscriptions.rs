//! Who receives what is pushed: one inbox per subscription, filled by the publisher.
//!
//! An event goes only into the inboxes of the subscriptions that may receive it, decided
//! once at publishing: a secret group's message reaches the devices in its tree, a
//! `Direct` event one user's devices, a `Users` event those users'. Only those
//! subscriptions' tasks wake. (A channel that every subscription reads would wake all of
//! them for every event, each to find out that it was not addressed: at 30,000 phones,
//! 30,000 wake-ups for one secret-group message of ten members.) Public entries,
//! `GroupsChanged` and `ShuttingDown` still go to everybody.
//!
//! Each inbox holds at most [`Subscriptions::capacity`] events; a subscriber further
//! behind loses the oldest and is told how many (`RecvError::Lagged`), and re-fetches. The
//! frames an inbox holds are counted in `PushedFrames` like any other reference to them.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use rathaus_protocol::{DeviceId, UserId};
use tokio::sync::broadcast::error::{RecvError, TryRecvError};
use tokio::sync::Notify;

use super::events::{Broadcast, Readers};

/// The subscriptions of this node, by user.
#[derive(Debug)]
pub(crate) struct Subscriptions {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    /// Events one inbox holds at most before its oldest are dropped.
    capacity: usize,
    registry: Mutex<Registry>,
}

#[derive(Debug, Default)]
struct Registry {
    /// user → the inboxes of their subscribed devices.
    by_user: HashMap<UserId, Vec<Arc<Inbox>>>,
    /// Inboxes that take every event, whoever it is for (the service's own tests).
    observers: Vec<Arc<Inbox>>,
}

/// One subscription's queue of events.
#[derive(Debug)]
struct Inbox {
    /// The subscribed device (`None`: an observer).
    device: Option<DeviceId>,
    queue: Mutex<Queue>,
    /// Signalled after an event was queued.
    ready: Notify,
}

#[derive(Debug, Default)]
struct Queue {
    events: VecDeque<Arc<Broadcast>>,
    /// Events dropped since the subscriber last took one.
    lagged: u64,
}

impl Subscriptions {
    /// Subscriptions whose inboxes hold at most `capacity` events each.
    pub(crate) fn new(capacity: usize) -> Self {
        Self {
            shared: Arc::new(Shared {
                capacity: capacity.max(1),
                registry: Mutex::new(Registry::default()),
            }),
        }
    }

    /// A new subscription of `device` of `user`: it receives what is published from now
    /// on that this device may receive, until it is dropped.
    pub(crate) fn subscribe(&self, user: &UserId, device: DeviceId) -> Subscription {
        let inbox = Inbox::new(Some(device));
        self.shared
            .registry()
            .by_user
            .entry(user.clone())
            .or_default()
            .push(inbox.clone());
        Subscription {
            shared: self.shared.clone(),
            user: Some(user.clone()),
            inbox,
        }
    }

    /// A subscription that receives every event, whoever it is for.
    #[cfg(test)]
    pub(crate) fn observe(&self) -> Subscription {
        let inbox = Inbox::new(None);
        self.shared.registry().observers.push(inbox.clone());
        Subscription {
            shared: self.shared.clone(),
            user: None,
            inbox,
        }
    }

    /// Queues `event` for every subscription that may receive it; how many got it.
    pub(crate) fn publish(&self, event: Broadcast) -> usize {
        let event = Arc::new(event);
        let capacity = self.shared.capacity;
        let registry = self.shared.registry();
        let mut delivered = 0;
        let mut give = |inbox: &Inbox| {
            inbox.put(&event, capacity);
            delivered += 1;
        };
        for inbox in &registry.observers {
            give(inbox);
        }
        let users = &registry.by_user;
        match &*event {
            Broadcast::Posted {
                readers: Readers::Everyone,
                ..
            }
            | Broadcast::GroupsChanged
            | Broadcast::ShuttingDown => {
                users.values().flatten().for_each(|i| give(i));
            }
            Broadcast::Posted {
                readers: Readers::Devices(devices),
                ..
            } => {
                let admitted = |inbox: &Inbox, allowed: &[DeviceId]| {
                    inbox.device.is_some_and(|d| allowed.contains(&d))
                };
                // Whichever side is smaller: the group's readers or who is subscribed.
                if devices.len() <= users.len() {
                    for (user, allowed) in devices.iter() {
                        for inbox in users.get(user).into_iter().flatten() {
                            if admitted(inbox, allowed) {
                                give(inbox);
                            }
                        }
                    }
                } else {
                    for (user, inboxes) in users {
                        if let Some(allowed) = devices.get(user) {
                            for inbox in inboxes.iter().filter(|i| admitted(i, allowed)) {
                                give(inbox);
                            }
                        }
                    }
                }
            }
            Broadcast::Direct { user, device, .. } => {
                for inbox in users.get(user).into_iter().flatten() {
                    if device.is_none() || inbox.device == *device {
                        give(inbox);
                    }
                }
            }
            Broadcast::Users { users: to, .. } => {
                for user in to.iter() {
                    users.get(user).into_iter().flatten().for_each(|i| give(i));
                }
            }
        }
        delivered
    }

    /// Subscriptions open now (observers not counted).
    #[cfg(test)]
    pub(crate) fn count(&self) -> usize {
        self.shared.registry().by_user.values().map(Vec::len).sum()
    }
}

impl Shared {
    fn registry(&self) -> MutexGuard<'_, Registry> {
        // Single list operations only: a poisoned lock holds a consistent registry.
        self.registry.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Inbox {
    fn new(device: Option<DeviceId>) -> Arc<Self> {
        Arc::new(Self {
            device,
            queue: Mutex::new(Queue::default()),
            ready: Notify::new(),
        })
    }

    fn queue(&self) -> MutexGuard<'_, Queue> {
        // Single queue operations only: a poisoned lock holds a consistent queue.
        self.queue.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn put(&self, event: &Arc<Broadcast>, capacity: usize) {
        let mut q = self.queue();
        if q.events.len() >= capacity {
            q.events.pop_front();
            q.lagged += 1;
        }
        q.events.push_back(event.clone());
        drop(q);
        self.ready.notify_one();
    }

    fn take(&self) -> Result<Arc<Broadcast>, TryRecvError> {
        let mut q = self.queue();
        if q.lagged > 0 {
            return Err(TryRecvError::Lagged(std::mem::take(&mut q.lagged)));
        }
        let event = q.events.pop_front().ok_or(TryRecvError::Empty)?;
        if q.events.is_empty() {
            // An idle phone's inbox holds no buffer.
            q.events = VecDeque::new();
        }
        Ok(event)
    }
}

/// One subscription: what was published for it, in order. Dropping it unsubscribes.
#[derive(Debug)]
pub struct Subscription {
    shared: Arc<Shared>,
    /// Whose (`None`: an observer).
    user: Option<UserId>,
    inbox: Arc<Inbox>,
}

impl Subscription {
    /// The next event, waiting for one; `Lagged(n)` once after `n` were dropped for a
    /// full inbox (the subscriber re-fetches).
    pub async fn recv(&mut self) -> Result<Arc<Broadcast>, RecvError> {
        loop {
            match self.inbox.take() {
                Ok(event) => return Ok(event),
                Err(TryRecvError::Lagged(n)) => return Err(RecvError::Lagged(n)),
                Err(_) => self.inbox.ready.notified().await,
            }
        }
    }

    /// The next event if one is queued.
    pub fn try_recv(&mut self) -> Result<Broadcast, TryRecvError> {
        self.inbox.take().map(Arc::unwrap_or_clone)
    }

    /// Events queued now.
    pub fn len(&self) -> usize {
        self.inbox.queue().events.len()
    }

    /// Whether no event is queued.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        let mut registry = self.shared.registry();
        let mine = |i: &Arc<Inbox>| Arc::ptr_eq(i, &self.inbox);
        match &self.user {
            None => registry.observers.retain(|i| !mine(i)),
            Some(user) => {
                if let Some(inboxes) = registry.by_user.get_mut(user) {
                    inboxes.retain(|i| !mine(i));
                    if inboxes.is_empty() {
                        registry.by_user.remove(user);
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::collections::HashSet;

    use bytes::Bytes;
    use rathaus_protocol::GroupHandle;

    use super::*;

    fn user(id: &str) -> UserId {
        UserId::parse(id).unwrap()
    }

    fn posted(group: &str, readers: Readers) -> Broadcast {
        Broadcast::Posted {
            group: GroupHandle::parse(group).unwrap(),
            frame: Bytes::from_static(b"frame"),
            readers,
        }
    }

    fn kinds(sub: &mut Subscription) -> Vec<String> {
        let mut seen = Vec::new();
        while let Ok(event) = sub.try_recv() {
            seen.push(match event {
                Broadcast::Posted { group, .. } => format!("posted {group}"),
                Broadcast::GroupsChanged => "groups".into(),
                Broadcast::Direct { .. } => "direct".into(),
                Broadcast::Users { .. } => "users".into(),
                Broadcast::ShuttingDown => "shutdown".into(),
            });
        }
        seen
    }

    /// Each event reaches exactly the subscriptions that may receive it; nobody else's
    /// inbox (and so nobody else's task) sees it.
    #[test]
    fn an_event_reaches_only_the_devices_it_is_for() {
        let subs = Subscriptions::new(16);
        let (anna, lena) = (user("P1001"), user("P1002"));
        let mut anna_phone = subs.subscribe(&anna, DeviceId(1));
        let mut anna_laptop = subs.subscribe(&anna, DeviceId(2));
        let mut lena_phone = subs.subscribe(&lena, DeviceId(7));

        let mut tree = HashMap::new();
        tree.insert(anna.clone(), vec![DeviceId(2)]);
        tree.insert(user("P1003"), vec![DeviceId(9)]);
        assert_eq!(
            subs.publish(posted("bauamt/secret", Readers::Devices(Arc::new(tree)))),
            1
        );
        assert_eq!(subs.publish(posted("bauamt", Readers::Everyone)), 3);
        assert_eq!(
            subs.publish(Broadcast::Direct {
                user: anna.clone(),
                device: Some(DeviceId(1)),
                frame: Bytes::new(),
            }),
            1
        );
        assert_eq!(
            subs.publish(Broadcast::Direct {
                user: lena.clone(),
                device: None,
                frame: Bytes::new(),
            }),
            1
        );
        let users: HashSet<UserId> = [anna.clone()].into();
        assert_eq!(
            subs.publish(Broadcast::Users {
                users: Arc::new(users),
                frame: Bytes::new(),
            }),
            2
        );
        assert_eq!(subs.publish(Broadcast::GroupsChanged), 3);

        assert_eq!(
            kinds(&mut anna_phone),
            ["posted bauamt", "direct", "users", "groups"]
        );
        assert_eq!(
            kinds(&mut anna_laptop),
            ["posted bauamt/secret", "posted bauamt", "users", "groups"]
        );
        assert_eq!(
            kinds(&mut lena_phone),
            ["posted bauamt", "direct", "groups"]
        );
    }

    /// A secret group's readers are matched whichever side is larger: a group of many
    /// with few subscribed, and the other way round.
    #[test]
    fn secret_readers_are_matched_from_either_side() {
        let subs = Subscriptions::new(16);
        let mut phones: Vec<Subscription> = (0..5)
            .map(|i| subs.subscribe(&user(&format!("P20{i:02}")), DeviceId(1)))
            .collect();
        let many: HashMap<UserId, Vec<DeviceId>> = (0..50)
            .map(|i| (user(&format!("P20{i:02}")), vec![DeviceId(1)]))
            .collect();
        assert_eq!(
            subs.publish(posted("amt/secret", Readers::Devices(Arc::new(many)))),
            5
        );
        let few: HashMap<UserId, Vec<DeviceId>> =
            [(user("P2003"), vec![DeviceId(1)])].into_iter().collect();
        assert_eq!(
            subs.publish(posted("amt/secret", Readers::Devices(Arc::new(few)))),
            1
        );
        let seen: Vec<usize> = phones.iter_mut().map(|p| kinds(p).len()).collect();
        assert_eq!(seen, [1, 1, 1, 2, 1]);
    }

    /// A subscriber that falls behind loses the oldest events, learns how many once, and
    /// then gets the newest in order; a dropped subscription leaves the registry.
    #[tokio::test]
    async fn a_full_inbox_drops_the_oldest_and_says_how_many() {
        let subs = Subscriptions::new(3);
        let anna = user("P1001");
        let mut phone = subs.subscribe(&anna, DeviceId(1));
        for i in 0..5 {
            subs.publish(posted(&format!("amt-{i}"), Readers::Everyone));
        }
        assert_eq!(phone.len(), 3);
        assert!(matches!(phone.recv().await, Err(RecvError::Lagged(2))));
        let mut groups = Vec::new();
        for _ in 0..3 {
            if let Broadcast::Posted { group, .. } = &*phone.recv().await.unwrap() {
                groups.push(group.to_string());
            }
        }
        assert_eq!(groups, ["amt-2", "amt-3", "amt-4"]);
        assert!(matches!(phone.try_recv(), Err(TryRecvError::Empty)));
        assert_eq!(subs.count(), 1);
        drop(phone);
        assert_eq!(subs.count(), 0);
        assert_eq!(subs.publish(Broadcast::GroupsChanged), 0);
    }

    /// A subscriber waiting for its next event wakes for one addressed to it.
    #[tokio::test]
    async fn a_waiting_subscriber_wakes_for_its_event() {
        let subs = Arc::new(Subscriptions::new(16));
        let anna = user("P1001");
        let mut phone = subs.subscribe(&anna, DeviceId(1));
        let publisher = {
            let (subs, anna) = (subs.clone(), anna.clone());
            tokio::spawn(async move {
                tokio::task::yield_now().await;
                subs.publish(Broadcast::Direct {
                    user: user("P1002"),
                    device: None,
                    frame: Bytes::new(),
                });
                subs.publish(Broadcast::Direct {
                    user: anna,
                    device: None,
                    frame: Bytes::from_static(b"for anna"),
                });
            })
        };
        let event = tokio::time::timeout(std::time::Duration::from_secs(10), phone.recv())
            .await
            .unwrap()
            .unwrap();
        let Broadcast::Direct { frame, .. } = &*event else {
            panic!("expected Direct, got {event:?}");
        };
        assert_eq!(&frame[..], b"for anna");
        publisher.await.unwrap();
    }
}
