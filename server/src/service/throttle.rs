//! Backoff for guessable credentials: enrollment codes and passwords.
//!
//! An attempt is counted *before* its (expensive) check: [`Throttle::begin`] charges it as
//! a failure to the user's counter for that factor and to the source network's counter,
//! and [`Throttle::finish`] refunds the charge if the credential was right (or was never
//! checked). So a burst sent in parallel is counted like the same attempts one after the
//! other. At most one attempt per user and factor, and [`ThrottlePolicy::in_flight_per_network`]
//! per network, are being checked at a time; more are refused at once.
//!
//! After a number of free failures, each further failure blocks the key for an
//! exponentially growing time (1 s, 2 s, 4 s, …) capped at five minutes, so a guessing
//! attacker is slowed to a crawl while the real user is never locked out for longer than
//! the cap. While blocked, an attempt is refused *without* checking its credentials.
//!
//! What this never touches: device-key proofs. An Ed25519 signature cannot be guessed, so
//! counting failed proofs against a user would only give an outsider a way to lock a
//! named colleague out of their own device; a valid proof is accepted whatever was tried
//! with the user's password or code. The password counter and the code counter of a user
//! are separate, so failing one factor never blocks the other. A success refunds only its
//! own attempt: it does not wipe the failures an attacker built up. Counters are
//! forgotten after an hour without failures.
//!
//! IPv6 sources are counted per /64 (one subscriber's allocation), IPv4 per address.
//! Counters are plain data ([`Failures`]) keyed by [`Subject`]; the service persists every
//! change, so a restart does not hand out fresh free attempts.

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, Ipv6Addr};
use std::time::Duration;

use rathaus_protocol::UserId;
use serde::{Deserialize, Serialize};

/// The guessable secrets a user can be asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Factor {
    /// The user's password (`AddDevice`).
    Password,
    /// The one-time enrollment code (`Enroll`).
    EnrollmentCode,
}

impl Factor {
    /// A name for logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Factor::Password => "password",
            Factor::EnrollmentCode => "enrollment code",
        }
    }
}

/// What a counter counts failures of.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Subject {
    /// One factor of one personnel number (also for ids that do not exist, so probing
    /// costs the same).
    User(Factor, UserId),
    /// A source network: an IPv4 address or an IPv6 /64 (see [`network_of`]).
    Network(IpAddr),
}

/// The network an address is counted under: IPv4 (also IPv4-mapped IPv6) whole, IPv6 by
/// its /64 prefix, since one subscriber usually holds a whole /64.
pub fn network_of(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V4(v4) => IpAddr::V4(v4),
        IpAddr::V6(v6) => {
            let bits = u128::from(v6) & !((1u128 << 64) - 1);
            IpAddr::V6(Ipv6Addr::from(bits))
        }
    }
}

/// How strict the throttle is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ThrottlePolicy {
    /// Failures per user and factor before backoff starts.
    pub free_failures_per_user: u32,
    /// Failures per source network before backoff starts. Higher than per user because a
    /// whole town hall may sit behind one NAT address.
    pub free_failures_per_addr: u32,
    /// Attempts from one network being checked at the same time.
    pub in_flight_per_network: u32,
    /// The first backoff.
    pub base: Duration,
    /// The longest backoff.
    pub cap: Duration,
    /// A counter without failures for this long starts over.
    pub forget_after: Duration,
}

impl Default for ThrottlePolicy {
    fn default() -> Self {
        Self {
            free_failures_per_user: 5,
            free_failures_per_addr: 20,
            in_flight_per_network: 4,
            base: Duration::from_secs(1),
            cap: Duration::from_secs(300),
            forget_after: Duration::from_secs(3600),
        }
    }
}

/// A counter's stored state.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Failures {
    /// Consecutive failures (attempts being checked included).
    pub count: u32,
    /// Time of the last failure, Unix ms.
    pub last_ms: i64,
    /// Attempts before this time are refused, Unix ms.
    pub blocked_until_ms: i64,
}

/// Failure counters.
#[derive(Debug, Default)]
pub struct Throttle {
    /// The rules.
    policy: ThrottlePolicy,
    /// Every counter.
    counters: HashMap<Subject, Counter>,
    /// Counters changed since the last [`Throttle::take_changes`], to persist.
    changed: HashSet<Subject>,
}

#[derive(Debug, Clone, Copy, Default)]
struct Counter {
    /// What is persisted.
    failures: Failures,
    /// Attempts being checked now (memory only: after a restart nothing is in flight).
    in_flight: u32,
}

/// Why an attempt was refused without being checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// Too many failures: wait.
    Backoff(Backoff),
    /// Another attempt for this user is being checked, or too many from this network.
    Busy(&'static str),
}

impl Refused {
    /// A human message for the refused attempt.
    pub fn message(&self) -> String {
        match self {
            Refused::Backoff(b) => b.message(),
            Refused::Busy(why) => format!("{why}; try again in a moment"),
        }
    }
}

/// An attempt refused because of earlier failures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// When the next attempt will be considered, Unix ms.
    pub retry_at_ms: i64,
    /// How long from now, in ms.
    pub retry_in_ms: i64,
    /// Whose counter blocks: the user's or the network's.
    pub by_network: bool,
}

impl Backoff {
    /// A human message for the refused attempt.
    pub fn message(&self) -> String {
        let secs = (self.retry_in_ms + 999) / 1000;
        format!("too many failed attempts; try again in {secs} s")
    }
}

/// An attempt being checked: hand it back to [`Throttle::finish`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attempt {
    /// The factor tried.
    factor: Factor,
    /// For whom.
    user: UserId,
    /// From which network (see [`network_of`]); `None` for a check on a session.
    network: Option<IpAddr>,
    /// The user's counter before the charge (the only attempt in flight for that key).
    user_before: Failures,
    /// The network's block before the charge, and the one the charge set.
    network_blocks: (i64, i64),
    /// Whether the charge started a new backoff (an engagement, worth a warning).
    engaged: bool,
}

impl Attempt {
    /// Whether charging this attempt started (or extended) a backoff.
    pub fn engaged(&self) -> bool {
        self.engaged
    }

    /// The user the attempt was for.
    pub fn user(&self) -> &UserId {
        &self.user
    }

    /// The factor tried.
    pub fn factor(&self) -> Factor {
        self.factor
    }

    /// The source network, if the attempt came from one.
    pub fn network(&self) -> Option<IpAddr> {
        self.network
    }

    fn user_key(&self) -> Subject {
        Subject::User(self.factor, self.user.clone())
    }

    fn network_key(&self) -> Option<Subject> {
        self.network.map(Subject::Network)
    }
}

/// How a checked attempt ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The credential was wrong: the charge stays.
    Failed,
    /// The credential was right: the charge is refunded.
    Succeeded,
    /// The credential was never checked (the server was busy): refunded.
    NotChecked,
}

/// Beyond this many tracked keys, stale ones are dropped so the map cannot grow without
/// bound under a spray of made-up ids.
const PRUNE_ABOVE: usize = 100_000;

impl Throttle {
    /// A throttle with `policy`.
    pub fn new(policy: ThrottlePolicy) -> Self {
        Self {
            policy,
            ..Self::default()
        }
    }

    /// Counters as stored before a restart (stale ones are skipped).
    pub fn restore(&mut self, saved: impl IntoIterator<Item = (Subject, Failures)>, now_ms: i64) {
        let forget = millis(self.policy.forget_after);
        for (subject, failures) in saved {
            if now_ms.saturating_sub(failures.last_ms) < forget {
                self.counters.insert(
                    subject,
                    Counter {
                        failures,
                        in_flight: 0,
                    },
                );
            }
        }
    }

    /// Starts an attempt with `factor` for `user` from `addr`: refused if either counter
    /// is blocked or busy, otherwise charged as a failure until [`Throttle::finish`].
    pub fn begin(
        &mut self,
        factor: Factor,
        user: &UserId,
        addr: IpAddr,
        now_ms: i64,
    ) -> Result<Attempt, Refused> {
        self.begin_from(factor, user, Some(addr), now_ms)
    }

    /// Like [`Throttle::begin`]; without an address (a check made on an authenticated
    /// session, which names the user) only the user's counter applies.
    pub fn begin_from(
        &mut self,
        factor: Factor,
        user: &UserId,
        addr: Option<IpAddr>,
        now_ms: i64,
    ) -> Result<Attempt, Refused> {
        let p = self.policy;
        self.prune(now_ms);
        let network = addr.map(network_of);
        let user_key = Subject::User(factor, user.clone());
        let network_key = network.map(Subject::Network);
        let user_c = self.fresh(&user_key, now_ms);
        let network_c = network_key
            .as_ref()
            .map_or_else(Counter::default, |k| self.fresh(k, now_ms));
        for (c, by_network) in [(user_c, false), (network_c, true)] {
            let until = c.failures.blocked_until_ms;
            if now_ms < until {
                return Err(Refused::Backoff(Backoff {
                    retry_at_ms: until,
                    retry_in_ms: until - now_ms,
                    by_network,
                }));
            }
        }
        if user_c.in_flight >= 1 {
            return Err(Refused::Busy(
                "another attempt for this user is being checked",
            ));
        }
        if network_c.in_flight >= p.in_flight_per_network {
            return Err(Refused::Busy(
                "too many attempts from your network are being checked",
            ));
        }
        let user_after = charge(user_c, p.free_failures_per_user, &p, now_ms);
        let network_after = charge(network_c, p.free_failures_per_addr, &p, now_ms);
        let engaged = user_after.failures.blocked_until_ms > user_c.failures.blocked_until_ms
            || (network_key.is_some()
                && network_after.failures.blocked_until_ms > network_c.failures.blocked_until_ms);
        self.set(user_key, user_after);
        if let Some(key) = network_key {
            self.set(key, network_after);
        }
        Ok(Attempt {
            factor,
            user: user.clone(),
            network,
            user_before: user_c.failures,
            network_blocks: (
                network_c.failures.blocked_until_ms,
                network_after.failures.blocked_until_ms,
            ),
            engaged,
        })
    }

    /// Ends an attempt: a failure keeps its charge, anything else is refunded.
    pub fn finish(&mut self, attempt: Attempt, outcome: Outcome) {
        let refund = outcome != Outcome::Failed;
        let user_key = attempt.user_key();
        let network_key = attempt.network_key();
        if let Some(mut c) = self.counters.get(&user_key).copied() {
            c.in_flight = c.in_flight.saturating_sub(1);
            if refund {
                // Only one attempt per user and factor is in flight: restoring is exact.
                c.failures = attempt.user_before;
            }
            self.set(user_key, c);
        }
        let network_counter = network_key
            .as_ref()
            .and_then(|k| Some((k.clone(), self.counters.get(k).copied()?)));
        if let Some((network_key, mut c)) = network_counter {
            c.in_flight = c.in_flight.saturating_sub(1);
            if refund {
                c.failures.count = c.failures.count.saturating_sub(1);
                // Undo this attempt's block unless a later attempt has moved it since.
                let (before, set) = attempt.network_blocks;
                if c.failures.blocked_until_ms == set {
                    c.failures.blocked_until_ms = before;
                }
            }
            self.set(network_key, c);
        }
    }

    /// The counters changed since the last call: `Some` to store, `None` to delete.
    pub fn take_changes(&mut self) -> Vec<(Subject, Option<Failures>)> {
        let changed = std::mem::take(&mut self.changed);
        changed
            .into_iter()
            .map(|s| {
                let f = self
                    .counters
                    .get(&s)
                    .map(|c| c.failures)
                    .filter(|f| f.count > 0);
                (s, f)
            })
            .collect()
    }

    /// A counter as it stands at `now_ms` (a stale one starts over).
    fn fresh(&self, key: &Subject, now_ms: i64) -> Counter {
        let mut c = self.counters.get(key).copied().unwrap_or_default();
        if c.in_flight == 0
            && now_ms.saturating_sub(c.failures.last_ms) >= millis(self.policy.forget_after)
        {
            c.failures = Failures::default();
        }
        c
    }

    fn set(&mut self, key: Subject, c: Counter) {
        if c.in_flight == 0 && c.failures.count == 0 {
            self.counters.remove(&key);
        } else {
            self.counters.insert(key.clone(), c);
        }
        self.changed.insert(key);
    }

    fn prune(&mut self, now_ms: i64) {
        if self.counters.len() <= PRUNE_ABOVE {
            return;
        }
        let forget = millis(self.policy.forget_after);
        let before: Vec<Subject> = self
            .counters
            .iter()
            .filter(|(_, c)| {
                c.in_flight == 0 && now_ms.saturating_sub(c.failures.last_ms) >= forget
            })
            .map(|(k, _)| k.clone())
            .collect();
        for k in before {
            self.counters.remove(&k);
            self.changed.insert(k);
        }
    }
}

/// `c` with one more failure at `now_ms`, and the backoff it earns.
fn charge(mut c: Counter, free: u32, policy: &ThrottlePolicy, now_ms: i64) -> Counter {
    let f = &mut c.failures;
    f.count = f.count.saturating_add(1);
    f.last_ms = now_ms;
    if f.count >= free {
        let doublings = (f.count - free).min(30);
        let delay = millis(policy.base)
            .saturating_mul(1i64 << doublings)
            .min(millis(policy.cap));
        f.blocked_until_ms = f.blocked_until_ms.max(now_ms.saturating_add(delay));
    }
    c.in_flight += 1;
    c
}

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    const T0: i64 = 1_700_000_000_000;

    fn ip(last: u8) -> IpAddr {
        IpAddr::from([10, 0, 0, last])
    }

    fn fail(t: &mut Throttle, user: &UserId, from: IpAddr, now: i64) -> Result<(), Refused> {
        let a = t.begin(Factor::Password, user, from, now)?;
        t.finish(a, Outcome::Failed);
        Ok(())
    }

    fn anna() -> UserId {
        UserId::parse("P1001").unwrap()
    }

    #[test]
    fn backoff_grows_exponentially_up_to_the_cap() {
        let mut t = Throttle::new(ThrottlePolicy::default());
        let anna = anna();
        let mut now = T0;
        let mut waits = Vec::new();
        for i in 0..40 {
            match t.begin(Factor::Password, &anna, ip(i), now) {
                Ok(a) => t.finish(a, Outcome::Failed),
                Err(Refused::Backoff(b)) => {
                    assert!(!b.by_network);
                    waits.push(b.retry_in_ms);
                    now = b.retry_at_ms;
                }
                Err(busy) => panic!("{busy:?}"),
            }
        }
        // 1 s, 2 s, 4 s, … and never longer than the cap: the real user gets a chance
        // every five minutes.
        assert_eq!(&waits[..4], &[1000, 2000, 4000, 8000]);
        assert_eq!(waits.iter().max(), Some(&300_000));
    }

    #[test]
    fn the_fifth_failure_blocks_for_a_second_then_two() {
        let mut t = Throttle::new(ThrottlePolicy::default());
        let anna = anna();
        for _ in 0..4 {
            fail(&mut t, &anna, ip(1), T0).unwrap();
        }
        fail(&mut t, &anna, ip(1), T0).unwrap();
        let Err(Refused::Backoff(b)) = t.begin(Factor::Password, &anna, ip(2), T0) else {
            panic!("expected a backoff");
        };
        assert_eq!(b.retry_in_ms, 1000);
        fail(&mut t, &anna, ip(1), T0 + 1000).unwrap();
        let Err(Refused::Backoff(b)) = t.begin(Factor::Password, &anna, ip(2), T0 + 1000) else {
            panic!("expected a backoff");
        };
        assert_eq!(b.retry_in_ms, 2000);
    }

    #[test]
    fn parallel_attempts_are_counted_before_their_check() {
        let mut t = Throttle::new(ThrottlePolicy::default());
        let anna = anna();
        let first = t.begin(Factor::Password, &anna, ip(1), T0).unwrap();
        // One per user at a time, from anywhere.
        assert!(matches!(
            t.begin(Factor::Password, &anna, ip(2), T0),
            Err(Refused::Busy(_))
        ));
        // A handful per network, for different users.
        let mut held = Vec::new();
        for i in 0..3 {
            let u = UserId::parse(&format!("P{i}")).unwrap();
            held.push(t.begin(Factor::Password, &u, ip(1), T0).unwrap());
        }
        let fifth = UserId::parse("P9").unwrap();
        assert!(matches!(
            t.begin(Factor::Password, &fifth, ip(1), T0),
            Err(Refused::Busy(_))
        ));
        t.finish(first, Outcome::Failed);
        assert!(t.begin(Factor::Password, &fifth, ip(1), T0).is_ok());
    }

    #[test]
    fn a_success_refunds_its_attempt_but_not_earlier_failures() {
        let mut t = Throttle::new(ThrottlePolicy::default());
        let anna = anna();
        for _ in 0..4 {
            fail(&mut t, &anna, ip(1), T0).unwrap();
        }
        let a = t.begin(Factor::Password, &anna, ip(1), T0).unwrap();
        assert!(a.engaged());
        t.finish(a, Outcome::Succeeded);
        // Refunded: not blocked now…
        assert!(t.begin(Factor::Password, &anna, ip(1), T0).is_ok_and(|a| {
            t.finish(a, Outcome::Failed);
            true
        }));
        // …but the four failures before still count: the fifth blocks.
        assert!(matches!(
            t.begin(Factor::Password, &anna, ip(1), T0),
            Err(Refused::Backoff(_))
        ));
    }

    #[test]
    fn the_factors_of_a_user_are_counted_apart() {
        let mut t = Throttle::new(ThrottlePolicy::default());
        let anna = anna();
        for i in 0..10 {
            let _ = fail(&mut t, &anna, ip(i), T0);
        }
        assert!(t.begin(Factor::Password, &anna, ip(50), T0).is_err());
        assert!(t.begin(Factor::EnrollmentCode, &anna, ip(50), T0).is_ok());
    }

    #[test]
    fn an_address_spraying_many_users_is_slowed_down_and_others_are_not() {
        let mut t = Throttle::new(ThrottlePolicy::default());
        for i in 0..20 {
            let u = UserId::parse(&format!("P{i}")).unwrap();
            fail(&mut t, &u, ip(7), T0).unwrap();
        }
        let fresh = UserId::parse("P999").unwrap();
        let Err(Refused::Backoff(b)) = t.begin(Factor::Password, &fresh, ip(7), T0) else {
            panic!("expected a backoff");
        };
        assert!(b.by_network);
        assert!(b.message().contains("try again in 1 s"));
        assert!(t.begin(Factor::Password, &fresh, ip(8), T0).is_ok());
    }

    #[test]
    fn ipv6_is_counted_per_slash_64() {
        let a: IpAddr = "2001:db8:0:1::1".parse().unwrap();
        let b: IpAddr = "2001:db8:0:1:abcd:ef01:2345:6789".parse().unwrap();
        let c: IpAddr = "2001:db8:0:2::1".parse().unwrap();
        assert_eq!(network_of(a), network_of(b));
        assert_ne!(network_of(a), network_of(c));
        let mapped: IpAddr = "::ffff:10.0.0.1".parse().unwrap();
        assert_eq!(network_of(mapped), ip(1));
        let mut t = Throttle::new(ThrottlePolicy::default());
        for i in 0..20 {
            let u = UserId::parse(&format!("P{i}")).unwrap();
            let host = Ipv6Addr::from(
                u128::from(match a {
                    IpAddr::V6(v6) => v6,
                    IpAddr::V4(_) => unreachable!(),
                }) + i,
            );
            fail(&mut t, &u, IpAddr::V6(host), T0).unwrap();
        }
        let fresh = UserId::parse("P999").unwrap();
        assert!(t.begin(Factor::Password, &fresh, b, T0).is_err());
        assert!(t.begin(Factor::Password, &fresh, c, T0).is_ok());
    }

    #[test]
    fn counters_are_forgotten_after_an_hour() {
        let mut t = Throttle::new(ThrottlePolicy::default());
        let anna = anna();
        for _ in 0..5 {
            fail(&mut t, &anna, ip(1), T0).unwrap();
        }
        let later = T0 + 3_600_000;
        fail(&mut t, &anna, ip(1), later).unwrap();
        assert!(t.begin(Factor::Password, &anna, ip(1), later).is_ok());
    }

    #[test]
    fn changes_round_trip_through_restore() {
        let mut t = Throttle::new(ThrottlePolicy::default());
        let anna = anna();
        for _ in 0..5 {
            fail(&mut t, &anna, ip(1), T0).unwrap();
        }
        let saved: Vec<_> = t
            .take_changes()
            .into_iter()
            .filter_map(|(s, f)| Some((s, f?)))
            .collect();
        assert_eq!(saved.len(), 2);
        let mut restarted = Throttle::new(ThrottlePolicy::default());
        restarted.restore(saved.clone(), T0);
        assert!(restarted.begin(Factor::Password, &anna, ip(2), T0).is_err());
        let mut much_later = Throttle::new(ThrottlePolicy::default());
        much_later.restore(saved, T0 + 3_600_000);
        assert!(much_later
            .begin(Factor::Password, &anna, ip(2), T0 + 3_600_000)
            .is_ok());
    }
}
