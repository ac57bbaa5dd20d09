//! The rules of the delivery service, without sockets.
//!
//! [`Service`] holds the [`Db`], an injected [`Clock`], the throttle, the group-commit
//! state, the event channel and the registry of live connections. The transport layer
//! turns frames into calls on it and its answers back into frames; everything here can be
//! driven from a unit test with a [`MemoryStore`](crate::store::MemoryStore) and a
//! [`ManualClock`](crate::clock::ManualClock).

mod announcements;
mod attempts;
mod audit;
mod auth;
pub mod blobs;
mod departments;
mod devices;
mod docs;
mod durability;
mod editorial;
mod enrollment;
pub mod enrollment_codes;
mod events;
mod group_log;
mod groups;
mod import;
mod key_packages;
mod mls;
mod moderation;
mod open_departments;
mod operations;
mod other_nodes;
mod posts;
mod provisioning;
pub mod refused;
mod removal;
mod retention;
mod roles;
mod rooms;
mod search;
mod secret;
mod secret_commit;
mod subscriptions;
pub mod throttle;
mod welcomes;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use openmls_rust_crypto::RustCrypto;
use rathaus_protocol::{DeviceId, GroupHandle, Request, Response, Role, SessionInfo, UserId};

use crate::clock::Clock;
use crate::store::{Db, StoreError, UserRecord};
use refused::SessionRefused;

pub(crate) use attempts::worth_logging;
pub use attempts::ThrottleStats;
pub use auth::PendingAuth;
pub use enrollment::NewDevice;
pub use events::{Broadcast, LiveConnection, LiveConnections, Readers};
pub use mls::RemovalKey;
pub use operations::AdminCode;
pub use provisioning::bootstrap;
pub use refused::{Reason, Refusal};
pub use retention::RetentionRun;
pub use subscriptions::Subscription;
pub use throttle::{Throttle, ThrottlePolicy};

use audit::AuditChain;
use durability::Durability;
use group_log::GroupLog;

/// Organisation name used when the store has none (only in tests).
const DEFAULT_ORG: &str = "Rathaus";

/// Searches run at once; more wait for a slot.
const SEARCH_SLOTS: usize = 4;

/// How many events a slow subscriber may fall behind before it is told to re-fetch.
const EVENT_BUFFER: usize = 4096;

/// The delivery service.
pub struct Service {
    /// Typed storage.
    db: Db,
    /// Time, injected.
    clock: Arc<dyn Clock>,
    /// Organisation name, shown to clients.
    org: String,
    /// Failed-attempt counters for passwords and enrollment codes.
    throttle: Mutex<Throttle>,
    /// What the throttle did, for operators.
    throttle_counters: attempts::ThrottleCounters,
    /// Argon2 checks running at once (each holds ~19 MiB and a core): bounded, and
    /// refused beyond that rather than queued.
    argon2: attempts::Argon2Pool,
    /// The groups' logs: heads, seq allocation, posts in flight (see [`GroupLog`]).
    log: GroupLog,
    /// Held across read-modify-write of users and departments.
    directory: Mutex<()>,
    /// Departments known to exist, so a post need not look its department up (only on
    /// a store no other node writes).
    open_departments: open_departments::OpenDepartments,
    /// Which writes are durable.
    durability: Durability,
    /// Pushed events: each subscription's inbox.
    subscriptions: subscriptions::Subscriptions,
    /// The bytes of pushed entry frames still held, bounded.
    pushed: events::PushedFrames,
    /// Live authenticated connections per user.
    live: LiveConnections,
    /// The end of the audit log's hash chain.
    audit: AuditChain,
    /// Held across read-modify-write of announcements and retention runs; taken before
    /// `log`.
    editorial: Mutex<()>,
    /// Signs the server's Remove proposals; its public key is every secret group's only
    /// external sender.
    removal_key: RemovalKey,
    /// openmls' cryptography, for verifying KeyPackages, GroupInfos and commits.
    crypto: RustCrypto,
    /// Held across every read-modify-write of secret-group state (KeyPackage claims,
    /// births, commits, removal proposals), so the epoch check and the acceptance of a
    /// commit are one step and a KeyPackage is handed out once. Never held across a
    /// flush; taken before `log` when both are needed.
    mls: Mutex<()>,
    /// Pending removals: whom the server asked to commit them, per group (memory only;
    /// after a restart the server simply asks again).
    removals: Mutex<HashMap<GroupHandle, removal::Asking>>,
    /// What `/metrics` reports about requests, posts and commits.
    metrics: crate::metrics::ServiceMetrics,
    /// Posts whose body encodes larger are refused (`[limits] max_upload_bytes`).
    max_post_bytes: std::sync::atomic::AtomicUsize,
    /// Retention period of groups without a policy of their own, in days; 0: forever
    /// (`[retention] default_days`).
    default_retention_days: std::sync::atomic::AtomicU32,
    /// Where blobs (attachments, library documents) are stored; unset: files are refused.
    blobs: std::sync::OnceLock<blobs::BlobDir>,
    /// Held across read-modify-write of blob records and uploads, after `log` where both
    /// are needed (see `blobs`).
    blob_lock: Mutex<()>,
    /// Files larger than this are refused before upload (`[limits] max_upload_bytes`).
    max_upload_bytes: std::sync::atomic::AtomicU64,
    /// The full-text index of public groups and announcements, once attached.
    search: std::sync::OnceLock<Arc<crate::search::SearchIndex>>,
    /// Searches running at once (each takes a core for a moment); more wait.
    search_slots: tokio::sync::Semaphore,
}

impl std::fmt::Debug for Service {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Service")
            .field("org", &self.org)
            .finish_non_exhaustive()
    }
}

/// The identity of an authenticated connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    /// The user.
    pub user: UserId,
    /// The device that proved possession of its key.
    pub device: DeviceId,
}

/// The user record a connection last used, kept while no user record changed since.
///
/// One per authenticated connection: a request then costs an atomic load instead of a
/// read and decode of the user's record. Any write of any user record (offboarding, a
/// role or department change, a revoked device) makes every cache re-read before its
/// next request is decided, so a change applies to open connections at once. On a store
/// that other server nodes write too, their changes count as soon as their notice
/// arrives (`NOTIFY`, within milliseconds), and a record is kept for at most
/// [`crate::store::SHARED_RECORDS_KEPT`] in case a notice is lost.
#[derive(Debug, Default)]
pub struct SessionCache {
    kept: Mutex<Option<Kept>>,
}

/// The session's user record, as a request read it.
#[derive(Debug)]
struct Kept {
    /// The generation of [`Db::users_generation`] read before the record was.
    generation: u64,
    /// When the read began.
    at: std::time::Instant,
    user: Arc<UserRecord>,
}

impl SessionCache {
    fn kept(&self) -> MutexGuard<'_, Option<Kept>> {
        // Replaced in one assignment: a poisoned lock holds a whole value.
        self.kept.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Service {
    /// A service over `db`, reading the organisation name from it.
    pub fn new(db: Db, clock: Arc<dyn Clock>, removal_key: RemovalKey) -> Result<Self, StoreError> {
        Self::with_policy(db, clock, removal_key, ThrottlePolicy::default())
    }

    /// A service with a non-default throttle policy.
    pub fn with_policy(
        db: Db,
        clock: Arc<dyn Clock>,
        removal_key: RemovalKey,
        policy: ThrottlePolicy,
    ) -> Result<Self, StoreError> {
        let org = db
            .meta()?
            .map(|m| m.org)
            .unwrap_or_else(|| DEFAULT_ORG.to_owned());
        let indexed = db.index_user_ids()?;
        if indexed > 0 {
            tracing::info!(
                users = indexed,
                "indexed personnel numbers for matching in any case"
            );
        }
        let edits = db.index_edits()?;
        if edits > 0 {
            tracing::info!(
                edits,
                "indexed the edits of posts stored before the edit index"
            );
        }
        let log_generation = db.log_generation()?;
        let mut throttle = Throttle::new(policy);
        throttle.restore(attempts::stored_counters(&db)?, clock.now_ms());
        Ok(Self {
            db,
            clock,
            org,
            throttle: Mutex::new(throttle),
            throttle_counters: attempts::ThrottleCounters::default(),
            argon2: attempts::Argon2Pool::new(attempts::argon2_slots()),
            log: GroupLog::new(log_generation),
            directory: Mutex::new(()),
            open_departments: open_departments::OpenDepartments::default(),
            durability: Durability::default(),
            subscriptions: subscriptions::Subscriptions::new(EVENT_BUFFER),
            pushed: events::PushedFrames::new(events::PUSHED_BYTES_MAX),
            live: LiveConnections::default(),
            audit: AuditChain::default(),
            editorial: Mutex::new(()),
            removal_key,
            crypto: RustCrypto::default(),
            mls: Mutex::new(()),
            removals: Mutex::new(HashMap::new()),
            metrics: crate::metrics::ServiceMetrics::default(),
            max_post_bytes: std::sync::atomic::AtomicUsize::new(
                rathaus_protocol::limits::MAX_POST_PAYLOAD,
            ),
            default_retention_days: std::sync::atomic::AtomicU32::new(0),
            blobs: std::sync::OnceLock::new(),
            blob_lock: Mutex::new(()),
            max_upload_bytes: std::sync::atomic::AtomicU64::new(blobs::DEFAULT_MAX_UPLOAD),
            search: std::sync::OnceLock::new(),
            search_slots: tokio::sync::Semaphore::new(SEARCH_SLOTS),
        })
    }

    /// The organisation name.
    pub fn org(&self) -> &str {
        &self.org
    }

    /// The storage.
    pub fn db(&self) -> &Db {
        &self.db
    }

    /// Live connections per user.
    pub fn live(&self) -> &LiveConnections {
        &self.live
    }

    /// A subscription of `device` of `user`: everything pushed from now on that this
    /// device may receive.
    pub fn subscribe(&self, user: &UserId, device: DeviceId) -> Subscription {
        self.subscriptions.subscribe(user, device)
    }

    /// A subscription to everything pushed from now on, whoever it is for.
    #[cfg(test)]
    pub(crate) fn observe(&self) -> Subscription {
        self.subscriptions.observe()
    }

    /// Tells every subscriber that the server is going down.
    pub fn announce_shutdown(&self) {
        self.subscriptions.publish(Broadcast::ShuttingDown);
    }

    /// Waits until every write so far is durable (used at shutdown).
    pub async fn flush(&self) -> Result<(), StoreError> {
        let ticket = self.durability.latest();
        self.durability
            .durable(self.db.store().as_ref(), ticket)
            .await
    }

    /// Answers a request on an authenticated connection. Authentication, enrollment and
    /// subscriptions have their own entry points; sending them here is `Invalid`.
    pub async fn handle(&self, session: &Session, request: Request) -> Result<Response, Refusal> {
        self.handle_cached(session, &SessionCache::default(), request)
            .await
    }

    /// [`Service::handle`] for a connection that keeps its user record in `cache`
    /// between requests.
    pub async fn handle_cached(
        &self,
        session: &Session,
        cache: &SessionCache,
        request: Request,
    ) -> Result<Response, Refusal> {
        let kind = crate::transport::request_kind(&request);
        let result = match self.check_post_size(&request) {
            Ok(()) => self.dispatch(session, cache, request).await,
            Err(refusal) => Err(refusal),
        };
        self.count_request(kind, &result);
        result
    }

    async fn dispatch(
        &self,
        session: &Session,
        cache: &SessionCache,
        request: Request,
    ) -> Result<Response, Refusal> {
        let me = self.cached_session_user(session, cache).await?;
        let request = self.canonical_request(request)?;
        match request {
            Request::Ping => Ok(Response::Pong),
            Request::Whoami => Ok(Response::Me(self.session_info(&me, session.device))),
            Request::ListGroups => self.list_groups(&me),
            Request::Post {
                group,
                client_id,
                body,
            } => self.post(session, &me, group, client_id, body).await,
            Request::Fetch {
                group: GroupHandle::Announcements,
                since,
                limit,
            } => self.fetch_announcements(since, limit),
            Request::Fetch {
                group,
                since,
                limit,
            } => self.fetch(session, &me, group, since, limit),
            Request::Members { group } => self.members(&me, group),
            Request::AddDepartment { slug, name, owners } => {
                self.add_department(&me, slug, name, owners).await
            }
            Request::AddUser {
                user,
                name,
                departments,
                roles,
            } => self.add_user(&me, user, name, departments, roles).await,
            Request::RemoveUser { user } => self.remove_user(&me, &user).await,
            Request::ListUsers => self.list_users(&me),
            Request::ListDepartments => self.list_departments(&me),
            Request::PublishKeyPackages {
                one_time,
                last_resort,
            } => {
                self.publish_key_packages(session, one_time, last_resort)
                    .await
            }
            Request::KeyPackageStatus => self.key_package_status(session),
            Request::ClaimKeyPackages { group, user } => {
                self.claim_key_packages(session, &me, group, user).await
            }
            Request::SecretGroups => self.secret_groups(&me),
            Request::CreateSecretGroup {
                group,
                group_info,
                ratchet_tree,
            } => {
                self.create_secret_group(session, &me, group, group_info, ratchet_tree)
                    .await
            }
            Request::RepairSecretGroup {
                group,
                group_info,
                ratchet_tree,
            } => {
                self.repair_secret_group(session, &me, group, group_info, ratchet_tree)
                    .await
            }
            Request::Commit {
                group,
                epoch,
                commit,
                welcome,
                group_info,
            } => {
                self.commit(session, &me, group, epoch, commit, welcome, group_info)
                    .await
            }
            Request::FetchWelcomes => self.fetch_welcomes(session),
            Request::SetDepartments { user, add, remove } => {
                self.set_departments(&me, &user, add, remove).await
            }
            Request::ResetUser { user } => self.reset_user(&me, &user).await,
            Request::ChangePassword { old, new } => {
                self.change_password(session, &me, old, new).await
            }
            Request::OwnDevices => self.own_devices(&me),
            Request::RemoveDevice { device } => self.remove_device(session, &me, device).await,
            Request::CreateRoom { slug, name } => self.create_room(&me, slug, name).await,
            Request::InviteToRoom { room, user } => self.invite_to_room(&me, room, user).await,
            Request::JoinRoom { room } => self.join_room(&me, room).await,
            Request::LeaveRoom { room } => self.leave_room(&me, room).await,
            Request::RoomInvitations => self.room_invitations(&me),
            Request::RatchetTree { group } => self.ratchet_tree(session, &me, group),
            Request::ImportUsers { rows } => self.import_users(&me, rows).await,
            Request::RenameDepartment { slug, name } => {
                self.rename_department(&me, &slug, name).await
            }
            Request::RemoveDepartment { slug } => self.remove_department(&me, &slug).await,
            Request::BeginUpload {
                scope,
                size,
                resume,
            } => self.begin_upload(session, &me, scope, size, resume).await,
            Request::UploadChunk {
                upload,
                index,
                bytes,
            } => self.upload_chunk(&me, upload, index, bytes).await,
            Request::FinishUpload { upload, sha256 } => {
                self.finish_upload(&me, upload, sha256).await
            }
            Request::DownloadChunk { scope, blob, index } => {
                self.download_chunk(session, &me, scope, blob, index).await
            }
            Request::ReleaseAttachment { group, seq } => {
                self.release_attachment(&me, group, seq).await
            }
            Request::DocList { path } => self.doc_list(path),
            Request::DocPut { path, blob } => self.doc_put(&me, path, blob).await,
            Request::DocMkdir { path } => self.doc_mkdir(&me, path).await,
            Request::DocRemove { path } => self.doc_remove(&me, path).await,
            Request::Search {
                query,
                group,
                limit,
            } => self.search(session, query, group, limit).await,
            Request::Hello { .. } => Err(SessionRefused::AlreadyAuthenticated.into()),
            editorial @ (Request::SetRoles { .. }
            | Request::AnnouncementDraft { .. }
            | Request::AnnouncementSubmit { .. }
            | Request::AnnouncementApprove { .. }
            | Request::AnnouncementReject { .. }
            | Request::AnnouncementPublish { .. }
            | Request::AnnouncementAck { .. }
            | Request::AnnouncementPin { .. }
            | Request::Announcements { .. }
            | Request::RemovePost { .. }
            | Request::AuditLog { .. }
            | Request::SetRetention { .. }) => self.handle_editorial(&me, editorial).await,
            Request::Enroll { .. }
            | Request::AddDevice { .. }
            | Request::Prove { .. }
            | Request::Subscribe => Err(SessionRefused::NotHere.into()),
        }
    }

    /// The current record of a session's user, if the session is still valid (the user
    /// was not offboarded and the device not revoked since it authenticated).
    /// The stored spelling of a personnel number typed in any case (`p1001` → `P1001`);
    /// the typed one if no user has it, so the caller's own "no such user" applies.
    pub(crate) fn canonical_user(&self, id: &UserId) -> Result<UserId, Refusal> {
        Ok(self.db.canonical_user_id(id)?.unwrap_or_else(|| id.clone()))
    }

    /// A request with every personnel number it names in its stored spelling, so that
    /// colleagues are matched ignoring case everywhere (and `AddUser` of `p1001` finds the
    /// existing `P1001`).
    fn canonical_request(&self, request: Request) -> Result<Request, Refusal> {
        let c = |id: UserId| self.canonical_user(&id);
        Ok(match request {
            Request::AddUser {
                user,
                name,
                departments,
                roles,
            } => Request::AddUser {
                user: c(user)?,
                name,
                departments,
                roles,
            },
            Request::RemoveUser { user } => Request::RemoveUser { user: c(user)? },
            Request::SetRoles { user, add, remove } => Request::SetRoles {
                user: c(user)?,
                add,
                remove,
            },
            Request::SetDepartments { user, add, remove } => Request::SetDepartments {
                user: c(user)?,
                add,
                remove,
            },
            Request::ResetUser { user } => Request::ResetUser { user: c(user)? },
            Request::InviteToRoom { room, user } => Request::InviteToRoom {
                room,
                user: c(user)?,
            },
            Request::ClaimKeyPackages { group, user } => Request::ClaimKeyPackages {
                group,
                user: c(user)?,
            },
            Request::AddDepartment { slug, name, owners } => Request::AddDepartment {
                slug,
                name,
                owners: owners.into_iter().map(c).collect::<Result<_, _>>()?,
            },
            Request::ImportUsers { rows } => Request::ImportUsers {
                rows: rows
                    .into_iter()
                    .map(|row| {
                        Ok(rathaus_protocol::ImportRow {
                            user: c(row.user)?,
                            ..row
                        })
                    })
                    .collect::<Result<_, Refusal>>()?,
            },
            other => other,
        })
    }

    /// [`Service::session_user`], from `cache` while no user record changed since it was
    /// filled (and on a store other nodes write too, for at most
    /// [`Db::records_kept_for`]).
    async fn cached_session_user(
        &self,
        session: &Session,
        cache: &SessionCache,
    ) -> Result<Arc<UserRecord>, Refusal> {
        let generation = self.db.users_generation();
        let kept_for = self.db.records_kept_for();
        if let Some(kept) = cache.kept().as_ref() {
            if kept.generation == generation && kept_for.is_none_or(|k| kept.at.elapsed() < k) {
                return Ok(kept.user.clone());
            }
        }
        let at = std::time::Instant::now();
        let user = match kept_for {
            // Other nodes write the store: read without holding this thread for the
            // database's round trip.
            Some(_) => Arc::new(session_user_of(
                session,
                self.db.user_async(&session.user).await?,
            )?),
            None => Arc::new(self.session_user(session)?),
        };
        *cache.kept() = Some(Kept {
            generation,
            at,
            user: user.clone(),
        });
        Ok(user)
    }

    pub fn session_user(&self, session: &Session) -> Result<UserRecord, Refusal> {
        session_user_of(session, self.db.user(&session.user)?)
    }

    /// Whether the device of `session` may read `group` (and so receive its events).
    /// Every colleague reads public groups and announcements (DESIGN §4); a secret group
    /// only the devices in its MLS tree whose users are still on its roster (§5.5).
    pub fn can_read(&self, session: &Session, group: &GroupHandle) -> bool {
        self.readers_of(group).admits(&session.user, session.device)
    }

    /// Who may read `group` now (see [`Service::can_read`]); for a secret group the devices,
    /// read once. A failed read admits nobody.
    pub(crate) fn readers_of(&self, group: &GroupHandle) -> Readers {
        if !group.is_secret() {
            return Readers::Everyone;
        }
        match self.secret_devices(group) {
            Ok(devices) => Readers::Devices(Arc::new(devices)),
            Err(e) => {
                tracing::warn!(%group, error = ?e.detail, "cannot check secret-group access");
                Readers::Devices(Arc::default())
            }
        }
    }

    fn session_info(&self, me: &UserRecord, device: DeviceId) -> SessionInfo {
        SessionInfo {
            user: me.id.clone(),
            name: me.name.clone(),
            device,
            roles: me.roles.clone(),
            departments: me.departments.clone(),
            org: self.org.clone(),
        }
    }

    fn require_admin(&self, me: &UserRecord, what: &'static str) -> Result<(), Refusal> {
        if me.has_role(Role::Admin) {
            return Ok(());
        }
        Err(SessionRefused::AdminOnly(what).into())
    }

    fn now_ms(&self) -> i64 {
        self.clock.now_ms()
    }

    fn throttle(&self) -> MutexGuard<'_, Throttle> {
        // Throttle updates are single map operations; a poisoned lock holds valid counters.
        self.throttle.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn directory(&self) -> MutexGuard<'_, ()> {
        self.directory
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    async fn durable(&self, ticket: u64) -> Result<(), Refusal> {
        self.durability
            .durable(self.db.store().as_ref(), ticket)
            .await
            .map_err(Refusal::from)
    }
}

/// The user of `session`, given their stored record: refused once the user is offboarded
/// or the session's device is no longer active.
fn session_user_of(session: &Session, user: Option<UserRecord>) -> Result<UserRecord, Refusal> {
    match user {
        Some(u) if admits_device(Some(&u), session.device) => Ok(u),
        _ => Err(SessionRefused::Ended.into()),
    }
}

/// Whether `user`'s record admits a session of `device`: the user exists and is not
/// offboarded, and the device is not revoked.
fn admits_device(user: Option<&UserRecord>, device: DeviceId) -> bool {
    user.is_some_and(|u| !u.removed && u.active_devices().any(|d| d.id == device))
}

#[cfg(test)]
pub(crate) mod testing;

#[cfg(test)]
mod tests;

#[cfg(test)]
mod editorial_tests;

#[cfg(test)]
mod secret_tests;

#[cfg(test)]
mod import_tests;
