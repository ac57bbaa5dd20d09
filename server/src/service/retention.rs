//! Retention: an administrator sets how many days a public group or `announcements`
//! keeps its entries; older entries are deleted from the server (and the deletion is
//! audited with how many entries of which group went).
//!
//! [`Service::enforce_retention`] is a plain function of the store and the injected clock:
//! the server runs it at start, hourly, and whenever a policy is set; tests call it after
//! moving a manual clock. Deleted seqs are never reused (the log's floor keeps the head),
//! and the cursor model of clients copes with old seqs that are gone.

use rathaus_protocol::{ContentBody, EntryBody, GroupHandle, Response};

use super::refused::{NotFound, PostRefused};
use super::{Refusal, Service};
use crate::store::{RetentionRecord, StoreError, UserRecord, Writes};

/// Longest retention period accepted (100 years).
const MAX_DAYS: u32 = 36_500;
/// Entries deleted per batch (each batch carries its own audit record).
const DELETE_PAGE: usize = 1000;
const DAY_MS: i64 = 24 * 60 * 60 * 1000;

/// What one retention run deleted from one group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetentionRun {
    /// The group.
    pub group: GroupHandle,
    /// How many entries were deleted.
    pub deleted: u64,
}

impl Service {
    pub(super) async fn set_retention(
        &self,
        me: &UserRecord,
        group: GroupHandle,
        days: Option<u32>,
    ) -> Result<Response, Refusal> {
        self.require_admin(me, "set retention periods")?;
        match &group {
            GroupHandle::Announcements => {}
            GroupHandle::Public(slug) => {
                if self.db.department(slug)?.is_none() {
                    return Err(NotFound::Group(group).into());
                }
            }
            GroupHandle::Secret(_) | GroupHandle::Room(_) => {
                return Err(PostRefused::RetentionSecret.into())
            }
        }
        let days = days.filter(|d| *d > 0);
        if days.is_some_and(|d| d > MAX_DAYS) {
            return Err(PostRefused::RetentionTooLong(MAX_DAYS).into());
        }
        let now = self.now_ms();
        let ticket = {
            let _editorial = self.editorial();
            let mut w = Writes::new();
            let detail = match days {
                Some(d) => {
                    w.put_retention(&RetentionRecord {
                        group: group.clone(),
                        days: d,
                        set_by: me.id.clone(),
                        set_ms: now,
                    })?;
                    format!("keep {d} days")
                }
                None => {
                    w.remove_retention(&group);
                    "keep forever".to_owned()
                }
            };
            let mut audit = self.audit()?;
            audit.record(
                &mut w,
                now,
                &me.id,
                "retention.set",
                group.to_string(),
                detail,
            )?;
            self.db.apply(w)?;
            audit.commit();
            self.durability.written()
        };
        self.durable(ticket).await?;
        tracing::info!(%group, ?days, by = %me.id, "retention set");
        self.enforce_retention().await?;
        Ok(Response::Done)
    }

    /// The background loop's periodic work (on the node that runs the background loops):
    /// enforces retention and drops stale uploads. Failures are logged and retried at the
    /// next run.
    pub async fn run_housekeeping(&self) {
        self.metrics.housekeeping_runs.inc();
        tracing::info!("housekeeping: enforcing retention, dropping stale uploads");
        if let Err(e) = self.enforce_retention().await {
            tracing::error!(error = %e, "retention run failed; retrying at the next interval");
        }
        if let Err(e) = self.clean_blobs(false).await {
            tracing::error!(error = %e, "cleaning up stale uploads failed; retrying at the next interval");
        }
    }

    /// Deletes every entry older than its group's retention period (by the injected
    /// clock) and waits until the deletions are durable. Returns what was deleted.
    pub async fn enforce_retention(&self) -> Result<Vec<RetentionRun>, StoreError> {
        let mut runs = Vec::new();
        let mut ticket = None;
        let mut orphans = Vec::new();
        for policy in self.retention_policies()? {
            let cutoff = self
                .now_ms()
                .saturating_sub(i64::from(policy.days).saturating_mul(DAY_MS));
            let mut deleted = 0u64;
            loop {
                let (n, more, t) = self.delete_page(&policy, cutoff, &mut orphans)?;
                deleted += n;
                ticket = t.or(ticket);
                if !more {
                    break;
                }
            }
            if deleted > 0 {
                tracing::info!(group = %policy.group, deleted, days = policy.days, "retention deleted old entries");
                runs.push(RetentionRun {
                    group: policy.group,
                    deleted,
                });
            }
        }
        if let Some(ticket) = ticket {
            self.durability
                .durable(self.db.store().as_ref(), ticket)
                .await?;
        }
        self.remove_unreferenced(&orphans);
        Ok(runs)
    }

    /// Deletes up to one page of the oldest entries sent before `cutoff`, with the
    /// announcements they published, in one batch with its audit record. Returns how
    /// many went, whether more may follow, and the batch's ticket.
    fn delete_page(
        &self,
        policy: &RetentionRecord,
        cutoff: i64,
        orphans: &mut Vec<[u8; 32]>,
    ) -> Result<(u64, bool, Option<u64>), StoreError> {
        let group = &policy.group;
        // Lock order: editorial, log, audit. Holding the log lock keeps moderation from
        // rewriting an entry this batch deletes.
        let _editorial = self.editorial();
        let _log = self.log_lock();
        let page = self.db.entries(group, 0, DELETE_PAGE)?;
        let full = page.len() == DELETE_PAGE;
        let mut w = Writes::new();
        let mut range: Option<(u64, u64)> = None;
        let mut deleted = 0u64;
        let mut reached_newer = false;
        let mut changes = super::blobs::BlobChanges::default();
        let mut gone = Vec::new();
        for (seq, entry, _) in page {
            // Entries are in seq order and (but for clock steps) in time order: stop at
            // the first one that is young enough, so nothing newer is ever deleted.
            if entry.sent_at_ms >= cutoff {
                reached_newer = true;
                break;
            }
            if let EntryBody::Content(c) = &entry.body {
                if let ContentBody::Announcement { id, .. } = c.body {
                    let acks = self.db.acks(id)?;
                    w.remove_announcement(id, &acks);
                }
            }
            changes.drop_post(self, &mut w, group, seq)?;
            w.remove_entry(group, seq, &entry);
            gone.push(seq);
            range = Some((range.map_or(seq, |r| r.0), seq));
            deleted += 1;
        }
        let Some((first, last)) = range else {
            return Ok((0, false, None));
        };
        orphans.extend(changes.write(&mut w)?);
        let floor = self.db.log_floor(group)?.max(last);
        w.put_log_floor(group, floor)?;
        let mut audit = self.audit()?;
        audit.record(
            &mut w,
            self.now_ms(),
            &policy.set_by,
            "retention.delete",
            group.to_string(),
            format!(
                "deleted {deleted} {} (seq {first} to {last}) older than {} days",
                if deleted == 1 { "entry" } else { "entries" },
                policy.days
            ),
        )?;
        self.db.apply(w)?;
        audit.commit();
        for seq in gone {
            self.unindex(group, seq);
        }
        Ok((
            deleted,
            full && !reached_newer,
            Some(self.durability.written()),
        ))
    }
}
