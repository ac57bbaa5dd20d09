//! Welcomes waiting for devices (DESIGN §5.6): queued when a commit that adds them is
//! accepted, handed out by `FetchWelcomes`, and taken out of the queue once the device
//! reads the group's log from the Welcome's commit on (it joined).
//!
//! A commit's Welcome and ratchet tree are stored once, however many devices it adds;
//! each device's queue holds one small record per group naming them. An answer holds as
//! many Welcomes as fit in a frame (at least one), oldest first; the rest follow once the
//! first ones are taken.

use rathaus_protocol::messages::WelcomeInfo;
use rathaus_protocol::{DeviceId, GroupHandle, Response, UserId};

use super::groups::FETCH_BUDGET;
use super::secret::{Device, MAX_WELCOMES};
use super::{Refusal, Service, Session};
use crate::store::{QueuedWelcome, WelcomeBody, Writes};

/// Bytes an answer's Welcome costs beyond its Welcome and tree (group, seq, epoch, lengths).
const WELCOME_OVERHEAD: usize = 128;

impl Service {
    /// Queues, in `w`, the Welcome of the commit at `seq` (creating `epoch`) for every
    /// device in `added`. Call with the MLS lock held.
    pub(super) fn queue_welcomes(
        &self,
        w: &mut Writes,
        group: &GroupHandle,
        seq: u64,
        epoch: u64,
        body: &WelcomeBody,
        added: &[Device],
    ) -> Result<(), Refusal> {
        if added.is_empty() {
            return Ok(());
        }
        w.put_welcome_body(group, seq, body)?;
        let now = self.now_ms();
        for (user, device) in added {
            self.fold_legacy_welcomes(w, user, *device)?;
            let waiting = self.db.queued_welcomes(user, *device)?;
            let others: Vec<&QueuedWelcome> =
                waiting.iter().filter(|q| &q.group != group).collect();
            // Oldest first: those beyond the cap make room.
            let over = (others.len() + 1).saturating_sub(MAX_WELCOMES);
            for old in others.iter().take(over) {
                w.unqueue_welcome(user, *device, &old.group);
            }
            w.queue_welcome(
                user,
                *device,
                &QueuedWelcome {
                    group: group.clone(),
                    seq,
                    epoch,
                    queued_ms: now,
                },
            )?;
        }
        Ok(())
    }

    /// Moves the Welcomes an earlier release stored whole for a device into the queue (in
    /// `w`), so that one queue is written from here on.
    fn fold_legacy_welcomes(
        &self,
        w: &mut Writes,
        user: &UserId,
        device: DeviceId,
    ) -> Result<(), Refusal> {
        let legacy = self.db.legacy_welcomes(user, device)?;
        if legacy.is_empty() {
            return Ok(());
        }
        for (i, old) in legacy.iter().enumerate() {
            w.put_welcome_body(
                &old.group,
                old.seq,
                &WelcomeBody {
                    welcome: old.welcome.clone(),
                    ratchet_tree: old.ratchet_tree.clone(),
                },
            )?;
            w.queue_welcome(
                user,
                device,
                &QueuedWelcome {
                    group: old.group.clone(),
                    seq: old.seq,
                    epoch: old.epoch,
                    // Before anything queued since, in their order.
                    queued_ms: i64::try_from(i).unwrap_or(i64::MAX),
                },
            )?;
        }
        w.put_legacy_welcomes(user, device, &[])?;
        Ok(())
    }

    pub(super) fn fetch_welcomes(&self, session: &Session) -> Result<Response, Refusal> {
        let (user, device) = (&session.user, session.device);
        let mut waiting = self.db.legacy_welcomes(user, device)?;
        for queued in self.db.queued_welcomes(user, device)? {
            match self.db.welcome_body(&queued.group, queued.seq)? {
                Some(body) => waiting.push(WelcomeInfo {
                    group: queued.group,
                    welcome: body.welcome,
                    ratchet_tree: body.ratchet_tree,
                    seq: queued.seq,
                    epoch: queued.epoch,
                }),
                None => {
                    tracing::warn!(group = %queued.group, seq = queued.seq, "a queued Welcome has no body")
                }
            }
        }
        // Only for groups the user is still rostered in.
        let mut readable = Vec::with_capacity(waiting.len());
        for welcome in waiting {
            if self.secret_reader(session, &welcome.group)?.is_some() {
                readable.push(welcome);
            }
        }
        Ok(Response::Welcomes(fitting(readable, FETCH_BUDGET)))
    }

    /// The device of `session` reads `group`'s log from `since` on: a Welcome of a commit
    /// up to `since` was taken (the device joined after it), so it leaves the queue and
    /// the next ones fit in the answer.
    pub(super) fn welcome_taken(
        &self,
        session: &Session,
        group: &GroupHandle,
        since: u64,
    ) -> Result<(), Refusal> {
        let (user, device) = (&session.user, session.device);
        let (queued, legacy) = self.db.welcomes_waiting(user, device, group)?;
        let queued = queued.is_some_and(|q| q.seq <= since);
        let legacy_taken = legacy.iter().any(|l| &l.group == group && l.seq <= since);
        if !queued && !legacy_taken {
            return Ok(());
        }
        // Under the lock that commits queue Welcomes under, so none queued meanwhile is
        // taken out with the old one.
        let _mls = self.mls_lock();
        let mut w = Writes::new();
        if self
            .db
            .queued_welcome(user, device, group)?
            .is_some_and(|q| q.seq <= since)
        {
            w.unqueue_welcome(user, device, group);
        }
        if legacy_taken {
            let mut legacy = self.db.legacy_welcomes(user, device)?;
            legacy.retain(|l| !(&l.group == group && l.seq <= since));
            w.put_legacy_welcomes(user, device, &legacy)?;
        }
        // Not waited for: lost, the Welcome is only handed out once more.
        self.db.apply(w)?;
        Ok(())
    }
}

/// The first of `waiting` that fit in `budget` bytes, and always the first one.
fn fitting(waiting: Vec<WelcomeInfo>, mut budget: usize) -> Vec<WelcomeInfo> {
    let mut out = Vec::new();
    for welcome in waiting {
        let cost = welcome.welcome.len() + welcome.ratchet_tree.len() + WELCOME_OVERHEAD;
        if cost > budget && !out.is_empty() {
            break;
        }
        budget = budget.saturating_sub(cost);
        out.push(welcome);
    }
    out
}

#[cfg(test)]
mod tests {
    use rathaus_protocol::limits::MAX_CONTROL_FRAME;
    use rathaus_protocol::{frame, GroupHandle, Response};

    use super::*;

    fn welcome(group: &str, bytes: usize) -> WelcomeInfo {
        WelcomeInfo {
            group: GroupHandle::parse(group).unwrap_or(GroupHandle::Announcements),
            welcome: vec![7; bytes / 4],
            ratchet_tree: vec![9; bytes - bytes / 4],
            seq: 3,
            epoch: 2,
        }
    }

    #[test]
    fn an_answer_holds_the_oldest_welcomes_that_fit_in_a_frame() {
        // Three large groups' Welcomes (a tree of ~1,000 members each) for a new colleague.
        let waiting = vec![
            welcome("bauamt/secret", 400_000),
            welcome("kaemmerei/secret", 400_000),
            welcome("ordnungsamt/secret", 400_000),
        ];
        let all = Response::Welcomes(waiting.clone());
        assert!(
            frame::encode(&all).is_err(),
            "together they do not fit in a frame"
        );
        let first = fitting(waiting.clone(), FETCH_BUDGET);
        assert_eq!(first, waiting[..2].to_vec());
        let bytes = frame::encode(&Response::Welcomes(first)).unwrap_or_default();
        assert!(!bytes.is_empty() && bytes.len() <= MAX_CONTROL_FRAME);
        // The first one always, however large.
        let huge = vec![welcome("bauamt/secret", FETCH_BUDGET + 1)];
        assert_eq!(fitting(huge.clone(), FETCH_BUDGET), huge);
        assert!(fitting(Vec::new(), FETCH_BUDGET).is_empty());
    }
}
