//! Backoff for failed credential attempts (enrollment codes, passwords, device proofs).
//!
//! Failures are counted per user and per source address. After a number of free failures,
//! each further failure blocks the key for an exponentially growing time (1 s, 2 s, 4 s, …)
//! capped at five minutes, so a guessing attacker is slowed to a crawl while the real user
//! is never locked out for longer than the cap. While blocked, an attempt is refused
//! *without* checking its credentials. A success resets the user's counter; counters are
//! forgotten after an hour without failures.

use std::collections::HashMap;
use std::hash::Hash;
use std::net::IpAddr;
use std::time::Duration;

use rathaus_protocol::UserId;

/// How strict the throttle is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ThrottlePolicy {
    /// Failures per user before backoff starts.
    pub free_failures_per_user: u32,
    /// Failures per source address before backoff starts. Higher than per user because a
    /// whole town hall may sit behind one NAT address.
    pub free_failures_per_addr: u32,
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
            base: Duration::from_secs(1),
            cap: Duration::from_secs(300),
            forget_after: Duration::from_secs(3600),
        }
    }
}

/// Failure counters.
#[derive(Debug, Default)]
pub struct Throttle {
    /// The rules.
    policy: ThrottlePolicy,
    /// Per personnel number (also for ids that do not exist, so probing costs the same).
    users: HashMap<UserId, Failures>,
    /// Per source address.
    addrs: HashMap<IpAddr, Failures>,
}

/// An attempt refused because of earlier failures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// When the next attempt will be considered, Unix ms.
    pub retry_at_ms: i64,
    /// How long from now, in ms.
    pub retry_in_ms: i64,
}

impl Backoff {
    /// A human message for the refused attempt.
    pub fn message(&self) -> String {
        let secs = (self.retry_in_ms + 999) / 1000;
        format!("too many failed attempts; try again in {secs} s")
    }
}

#[derive(Debug, Clone, Copy, Default)]
struct Failures {
    /// Consecutive failures.
    count: u32,
    /// Time of the last failure, Unix ms.
    last_ms: i64,
    /// Attempts before this time are refused, Unix ms.
    blocked_until_ms: i64,
}

/// Beyond this many tracked keys, stale ones are dropped so the maps cannot grow without
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

    /// Whether an attempt for `user` from `addr` may be checked now.
    pub fn check(&self, user: Option<&UserId>, addr: IpAddr, now_ms: i64) -> Result<(), Backoff> {
        let user_block = user
            .and_then(|u| self.users.get(u))
            .map_or(i64::MIN, |f| f.blocked_until_ms);
        let addr_block = self
            .addrs
            .get(&addr)
            .map_or(i64::MIN, |f| f.blocked_until_ms);
        let until = user_block.max(addr_block);
        if now_ms < until {
            return Err(Backoff {
                retry_at_ms: until,
                retry_in_ms: until - now_ms,
            });
        }
        Ok(())
    }

    /// Records a failed attempt.
    pub fn failure(&mut self, user: Option<&UserId>, addr: IpAddr, now_ms: i64) {
        let p = self.policy;
        if let Some(user) = user {
            record(
                &mut self.users,
                user.clone(),
                p.free_failures_per_user,
                &p,
                now_ms,
            );
        }
        record(&mut self.addrs, addr, p.free_failures_per_addr, &p, now_ms);
    }

    /// Records a successful attempt: the user starts over.
    pub fn success(&mut self, user: &UserId) {
        self.users.remove(user);
    }
}

fn record<K: Eq + Hash>(
    map: &mut HashMap<K, Failures>,
    key: K,
    free: u32,
    policy: &ThrottlePolicy,
    now_ms: i64,
) {
    let forget_ms = millis(policy.forget_after);
    if map.len() > PRUNE_ABOVE {
        map.retain(|_, f| now_ms.saturating_sub(f.last_ms) < forget_ms);
    }
    let f = map.entry(key).or_default();
    if now_ms.saturating_sub(f.last_ms) >= forget_ms {
        *f = Failures::default();
    }
    f.count = f.count.saturating_add(1);
    f.last_ms = now_ms;
    if f.count >= free {
        let doublings = (f.count - free).min(30);
        let delay = millis(policy.base)
            .saturating_mul(1i64 << doublings)
            .min(millis(policy.cap));
        f.blocked_until_ms = now_ms.saturating_add(delay);
    }
}

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: i64 = 1_700_000_000_000;

    fn ip(last: u8) -> IpAddr {
        IpAddr::from([10, 0, 0, last])
    }

    #[test]
    fn backoff_grows_exponentially_up_to_the_cap() {
        let mut t = Throttle::new(ThrottlePolicy::default());
        let anna = UserId::parse("P1001").unwrap();
        let mut now = T0;
        for _ in 0..4 {
            t.failure(Some(&anna), ip(1), now);
            assert!(t.check(Some(&anna), ip(2), now).is_ok());
        }
        // Fifth failure: 1 s, then 2 s, 4 s, … each time the wait has passed.
        let mut expected = 1000;
        for _ in 0..12 {
            t.failure(Some(&anna), ip(1), now);
            let b = t.check(Some(&anna), ip(2), now).unwrap_err();
            assert_eq!(b.retry_in_ms, expected.min(300_000));
            assert!(t
                .check(Some(&anna), ip(2), now + expected.min(300_000) - 1)
                .is_err());
            now += expected.min(300_000);
            assert!(
                t.check(Some(&anna), ip(2), now).is_ok(),
                "the cap lets the user back in"
            );
            expected *= 2;
        }
    }

    #[test]
    fn success_resets_the_user_and_other_users_are_unaffected() {
        let mut t = Throttle::new(ThrottlePolicy::default());
        let anna = UserId::parse("P1001").unwrap();
        let jonas = UserId::parse("P1002").unwrap();
        for _ in 0..5 {
            t.failure(Some(&anna), ip(1), T0);
        }
        assert!(t.check(Some(&anna), ip(9), T0).is_err());
        assert!(t.check(Some(&jonas), ip(9), T0).is_ok());
        t.success(&anna);
        assert!(t.check(Some(&anna), ip(9), T0).is_ok());
    }

    #[test]
    fn an_address_spraying_many_users_is_slowed_down() {
        let mut t = Throttle::new(ThrottlePolicy::default());
        for i in 0..20 {
            let u = UserId::parse(&format!("P{i}")).unwrap();
            t.failure(Some(&u), ip(7), T0);
        }
        let fresh = UserId::parse("P999").unwrap();
        let b = t.check(Some(&fresh), ip(7), T0).unwrap_err();
        assert!(b.message().contains("try again in 1 s"));
        assert!(t.check(Some(&fresh), ip(8), T0).is_ok());
    }

    #[test]
    fn counters_are_forgotten_after_an_hour() {
        let mut t = Throttle::new(ThrottlePolicy::default());
        let anna = UserId::parse("P1001").unwrap();
        for _ in 0..5 {
            t.failure(Some(&anna), ip(1), T0);
        }
        let later = T0 + 3_600_000;
        t.failure(Some(&anna), ip(1), later);
        assert!(t.check(Some(&anna), ip(1), later).is_ok());
    }
}
