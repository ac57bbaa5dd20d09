//! What the operator's tools need from the service: figures for `/metrics`, the upload
//! limit of the configuration, and the break-glass admin code of `rathaus-server
//! admin-code` (issued on the server's machine when every admin has lost their device).

use std::sync::atomic::Ordering;

use rathaus_protocol::limits::MAX_POST_PAYLOAD;
use rathaus_protocol::{PostBody, Request, Response, Role, UserId};

use rathaus_protocol::GroupHandle;

use super::refused::{DirectoryRefused, PostRefused};
use super::{enrollment_codes, removal, Refusal, Service};
use crate::metrics::{FlushMetrics, RequestLabels, ServiceMetrics};
use crate::store::{CodeRecord, RetentionRecord, StoreError, UserRecord, Writes};

/// A break-glass enrollment code, as `admin-code` prints it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct AdminCode {
    /// The administrator it enrolls a device for.
    pub user: String,
    /// The one-time code.
    pub enrollment_code: String,
    /// When it expires (Unix ms).
    pub expires_at_ms: i64,
    /// What else happened: `created` (a new admin user), `granted` (the user got the admin
    /// role) or `issued` (an existing admin got a new code).
    pub action: String,
}

impl Service {
    /// Refuses posts whose body encodes larger than `bytes` (at most the protocol's own
    /// bound, `MAX_POST_PAYLOAD`, which stays in force above it).
    pub fn set_max_post_bytes(&self, bytes: usize) {
        self.max_post_bytes
            .store(bytes.min(MAX_POST_PAYLOAD), Ordering::Relaxed);
    }

    /// Keeps the public groups and announcements that have no policy of their own for
    /// `days` (0: forever). Secret groups hold only ciphertext and are never aged out.
    pub fn set_default_retention_days(&self, days: u32) {
        self.default_retention_days.store(days, Ordering::Relaxed);
    }

    /// Every retention policy in force: the ones administrators set, and the default for
    /// every other public group and `announcements` (deletions it makes are audited as
    /// done by the server).
    pub(super) fn retention_policies(&self) -> Result<Vec<RetentionRecord>, StoreError> {
        let mut policies = self.db.retentions()?;
        let days = self.default_retention_days.load(Ordering::Relaxed);
        if days == 0 {
            return Ok(policies);
        }
        let Ok(server) = UserId::parse(removal::SERVER_USER) else {
            return Ok(policies);
        };
        let groups = self
            .db
            .departments()?
            .into_iter()
            .map(|d| GroupHandle::Public(d.slug))
            .chain([GroupHandle::Announcements]);
        let defaults: Vec<RetentionRecord> = groups
            .filter(|g| !policies.iter().any(|p| &p.group == g))
            .map(|group| RetentionRecord {
                group,
                days,
                set_by: server.clone(),
                set_ms: 0,
            })
            .collect();
        policies.extend(defaults);
        Ok(policies)
    }

    /// Groups whose removals the server waits to see committed.
    pub fn pending_removals(&self) -> usize {
        self.removals
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .len()
    }

    pub(crate) fn metrics(&self) -> &ServiceMetrics {
        &self.metrics
    }

    pub(crate) fn flush_metrics(&self) -> &FlushMetrics {
        &self.durability.metrics
    }

    pub(super) fn check_post_size(&self, request: &Request) -> Result<(), Refusal> {
        let limit = self.max_post_bytes.load(Ordering::Relaxed);
        let Request::Post { body, .. } = request else {
            return Ok(());
        };
        let size = match body {
            // Opaque bytes, bounded here alone: larger, the stored entry would not fit in
            // a `Fetch` answer, and every member's reading would stop at it.
            PostBody::Mls(message) | PostBody::MlsAttachment { message, .. } => message.len(),
            // Content is bounded by its validation (64 KiB of text and small fields), far
            // below the protocol's limit: only a configured limit below it costs an
            // encoding per post.
            PostBody::Public(_) if limit >= MAX_POST_PAYLOAD => return Ok(()),
            PostBody::Public(_) => postcard::to_allocvec(body).map_or(usize::MAX, |v| v.len()),
        };
        if size > limit {
            return Err(PostRefused::TooLarge { limit, size }.into());
        }
        Ok(())
    }

    /// Counts a request answered outside a session (login, enrollment, pings, and
    /// refusals for want of a session), in `rathaus_prelogin_requests_total`.
    pub(crate) fn count_prelogin_request(
        &self,
        kind: &'static str,
        result: &Result<Response, Refusal>,
    ) {
        let code = match result {
            Ok(Response::Error { code, .. }) => code.as_str(),
            Ok(_) => "ok",
            Err(refusal) => refusal.code().as_str(),
        };
        self.metrics
            .prelogin_requests
            .get_or_create(&RequestLabels { kind, code })
            .inc();
        if code == "RateLimited" {
            self.metrics.throttled.inc();
        }
    }

    pub(super) fn count_request(&self, kind: &'static str, result: &Result<Response, Refusal>) {
        let code = match result {
            Ok(Response::Error { code, .. }) => code.as_str(),
            Ok(_) => "ok",
            Err(refusal) => refusal.code().as_str(),
        };
        self.metrics
            .requests
            .get_or_create(&RequestLabels { kind, code })
            .inc();
        match (kind, code) {
            ("Post", "ok") => {
                self.metrics.posts.inc();
            }
            ("Commit", "ok") => {
                self.metrics.commits.inc();
            }
            (_, "RateLimited") => {
                self.metrics.throttled.inc();
            }
            _ => {}
        }
    }

    /// Issues a new enrollment code for the administrator `user`, audited as done by the
    /// server itself: creates the user as an administrator if it does not exist, grants
    /// the admin role if it lacks it, refuses an offboarded user. The code enrolls one more
    /// device; like every new device it holds no MLS state, so it reads no secret group
    /// and joins one only through an owner's commit (and, for a user with devices, after
    /// one of them approved it).
    pub async fn break_glass_admin_code(&self, user: &UserId) -> Result<AdminCode, Refusal> {
        if user.as_str() == removal::SERVER_USER {
            return Err(DirectoryRefused::ReservedUser(user.clone()).into());
        }
        let server =
            UserId::parse(removal::SERVER_USER).map_err(|e| Refusal::internal(e.to_string()))?;
        let now = self.now_ms();
        let code = enrollment_codes::generate();
        let record = CodeRecord {
            // A freshly generated code always normalises; the fallback only makes the code
            // unusable, never usable by someone else.
            sha256: enrollment_codes::digest(&code).unwrap_or([0xff; 32]),
            created_ms: now,
            expires_ms: now.saturating_add(enrollment_codes::CODE_LIFETIME_MS),
        };
        let (action, ticket) = {
            let _dir = self.directory();
            let (record_user, action) = match self.db.user(user)? {
                Some(u) if u.removed => {
                    return Err(DirectoryRefused::Offboarded(user.clone()).into())
                }
                Some(u) if u.has_role(Role::Admin) => (u, "issued"),
                Some(mut u) => {
                    u.roles.push(Role::Admin);
                    u.roles.sort();
                    u.roles.dedup();
                    (u, "granted")
                }
                None => (
                    UserRecord {
                        id: user.clone(),
                        name: "Administrator".into(),
                        roles: vec![Role::Member, Role::Admin],
                        departments: Vec::new(),
                        password_hash: None,
                        devices: Vec::new(),
                        removed: false,
                        created_ms: now,
                    },
                    "created",
                ),
            };
            let mut w = Writes::new();
            w.put_user(&record_user)?.put_code(user, &record)?;
            let detail = match action {
                "created" => "new administrator; code issued on the server's machine",
                "granted" => "admin role granted; code issued on the server's machine",
                _ => "code issued on the server's machine",
            };
            let mut audit = self.audit()?;
            audit.record(
                &mut w,
                now,
                &server,
                "admin.break-glass",
                user.as_str(),
                detail,
            )?;
            self.db.apply(w)?;
            audit.commit();
            (action, self.durability.written())
        };
        self.durable(ticket).await?;
        tracing::warn!(%user, action, "break-glass admin enrollment code issued");
        Ok(AdminCode {
            user: user.to_string(),
            enrollment_code: code,
            expires_at_ms: record.expires_ms,
            action: action.to_owned(),
        })
    }
}
