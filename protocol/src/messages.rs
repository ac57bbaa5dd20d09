//! Requests, responses and pushed events.
//!
//! One bidirectional QUIC stream carries one request: the client writes one [`Request`]
//! frame, the server answers with one or more [`Response`] frames. Two exchanges use more
//! than one frame:
//!
//! - authentication: `Hello` → `Challenge`, then on the same stream `Prove` →
//!   `Authenticated` (or `Error`);
//! - `Subscribe` → `Subscribed`, then a [`Response::Event`] for everything that happens,
//!   until the connection closes.
//!
//! New variants are only ever appended, so the postcard variant indices stay stable.

use serde::{Deserialize, Serialize};

use crate::blobs::{BlobScope, DocEntry, DocPath};
use crate::content::{Content, ContentIn};
use crate::error::ErrorCode;
use crate::ids::{
    ClientMsgId, DepartmentSlug, DeviceId, DeviceKey, GroupHandle, Role, Signature, UserId,
};

/// A client's request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Request {
    /// Liveness check; answered with `Pong`, authenticated or not.
    Ping,
    /// Creates the user's first device with a one-time enrollment code and sets the
    /// password. Unauthenticated. Answered with `Enrolled`.
    Enroll {
        /// The client's protocol version.
        protocol: u16,
        /// Personnel number.
        user: UserId,
        /// The enrollment code as given by the admin (grouping dashes are ignored).
        code: String,
        /// The password the user chooses.
        password: String,
        /// The new device's Ed25519 public key.
        device_key: DeviceKey,
        /// A name for the device ("Anna's phone").
        device_name: String,
    },
    /// Adds another device for an enrolled user, proven by the password. Unauthenticated.
    /// Answered with `Enrolled`.
    AddDevice {
        /// The client's protocol version.
        protocol: u16,
        /// Personnel number.
        user: UserId,
        /// The user's password.
        password: String,
        /// The new device's Ed25519 public key.
        device_key: DeviceKey,
        /// A name for the device.
        device_name: String,
    },
    /// Starts authentication of this connection as a device. Answered with `Challenge`.
    Hello {
        /// The client's protocol version.
        protocol: u16,
        /// Personnel number.
        user: UserId,
        /// The device to authenticate as.
        device: DeviceId,
    },
    /// Second frame on the `Hello` stream: the device's signature over
    /// [`auth_transcript`](crate::auth_transcript). Answered with `Authenticated`.
    Prove {
        /// Ed25519 signature by the device key.
        signature: Signature,
    },
    /// Who am I? Answered with `Me`.
    Whoami,
    /// The groups this user can see. Answered with `Groups`.
    ListGroups,
    /// Appends a message to a group's log. Answered with `Posted` once durably stored.
    Post {
        /// Target group.
        group: GroupHandle,
        /// Client-chosen id: a retried post with the same id is stored once.
        client_id: ClientMsgId,
        /// The message.
        body: PostBody,
    },
    /// Entries of a group's log with `seq > since`, oldest first. Answered with `Entries`.
    Fetch {
        /// Group to read.
        group: GroupHandle,
        /// Return entries after this seq (0 = from the start).
        since: u64,
        /// At most this many (capped at [`MAX_FETCH`](crate::limits::MAX_FETCH)).
        limit: u32,
    },
    /// Keeps this stream open for pushed events. Answered with `Subscribed`, then `Event`s.
    Subscribe,
    /// The members of a group. Answered with `Members`.
    Members {
        /// The group.
        group: GroupHandle,
    },
    /// Admin: creates a department with its public group. Answered with `Department`.
    AddDepartment {
        /// Short name, also the public group's handle.
        slug: DepartmentSlug,
        /// Display name ("Bauamt").
        name: String,
        /// Users who own the department's groups.
        owners: Vec<UserId>,
    },
    /// Admin: provisions a user. Answered with `UserAdded` carrying the enrollment code.
    AddUser {
        /// Personnel number.
        user: UserId,
        /// Display name.
        name: String,
        /// Departments the user belongs to.
        departments: Vec<DepartmentSlug>,
        /// Roles beyond `member` (which everybody has).
        roles: Vec<Role>,
    },
    /// Admin: offboards a user: ends their sessions, revokes devices, removes them from
    /// every roster. Their public posts remain. Answered with `Done`.
    RemoveUser {
        /// Personnel number.
        user: UserId,
    },
    /// Admin: lists all users. Answered with `Users`.
    ListUsers,
    /// Admin: lists all departments. Answered with `Departments`.
    ListDepartments,
    /// Admin: changes a user's roles. Answered with `User`.
    SetRoles {
        /// Personnel number.
        user: UserId,
        /// Roles to grant.
        add: Vec<Role>,
        /// Roles to take away (`member` cannot be taken away).
        remove: Vec<Role>,
    },
    /// Author/editor/admin: writes an announcement draft, visible only to its author until
    /// submitted. Answered with `Announcement`.
    AnnouncementDraft {
        /// Headline.
        title: String,
        /// Body text.
        text: String,
        /// Whether colleagues are asked to confirm they have read it.
        requires_ack: bool,
        /// When it disappears, Unix milliseconds.
        expires_at_ms: Option<i64>,
    },
    /// The author hands a draft to the editors. Answered with `Announcement`.
    AnnouncementSubmit {
        /// Announcement id.
        id: u64,
    },
    /// Editor: approves a submitted draft, publishing it to `announcements`.
    /// Answered with `Announcement`.
    AnnouncementApprove {
        /// Announcement id.
        id: u64,
    },
    /// Editor: sends a submitted draft back with a comment. Answered with `Announcement`.
    AnnouncementReject {
        /// Announcement id.
        id: u64,
        /// Why, for the author.
        comment: String,
    },
    /// Editor/admin: publishes a notice directly. Answered with `Announcement`.
    AnnouncementPublish {
        /// Headline.
        title: String,
        /// Body text.
        text: String,
        /// Whether colleagues are asked to confirm they have read it.
        requires_ack: bool,
        /// When it disappears, Unix milliseconds.
        expires_at_ms: Option<i64>,
    },
    /// "I have read it." Answered with `Announcement`.
    AnnouncementAck {
        /// Announcement id.
        id: u64,
    },
    /// Editor: pins or unpins a published announcement. Answered with `Announcement`.
    AnnouncementPin {
        /// Announcement id.
        id: u64,
        /// Pinned or not.
        pinned: bool,
    },
    /// Lists announcements: published and unexpired ones; with `pending`, editors see
    /// submitted drafts and authors their own drafts. Answered with `Announcements`.
    Announcements {
        /// Show drafts and submissions instead of published announcements.
        pending: bool,
    },
    /// Department owner/admin: removes a post from a public group, leaving a tombstone.
    /// Answered with `Done`.
    RemovePost {
        /// The group.
        group: GroupHandle,
        /// The post.
        seq: u64,
    },
    /// Admin: the hash-chained audit log from `since` (index, 0 = start). Answered with
    /// `Audit`.
    AuditLog {
        /// First index to return.
        since: u64,
        /// At most this many.
        limit: u32,
    },
    /// Admin: keep entries of a public group or `announcements` only this many days
    /// (`None`: forever). Answered with `Done`.
    SetRetention {
        /// The group.
        group: GroupHandle,
        /// Days to keep.
        days: Option<u32>,
    },
    /// Uploads this device's MLS KeyPackages (each a serialized `MLSMessage` of wire format
    /// `mls_key_package`): one-time ones are handed out once each, the last-resort one
    /// (replacing any earlier) when none remain. Answered with `KeyPackageStatus`.
    PublishKeyPackages {
        /// One-time packages.
        one_time: Vec<Vec<u8>>,
        /// The last-resort package, if it is to be replaced.
        last_resort: Option<Vec<u8>>,
    },
    /// How many one-time KeyPackages of this device the server still holds. Answered with
    /// `KeyPackageStatus`.
    KeyPackageStatus,
    /// Claims one KeyPackage for every active device of `user` (atomic; one-time packages
    /// first, then the last-resort one). Only owners of a secret group the user is rostered
    /// in may claim. Answered with `KeyPackages`.
    ClaimKeyPackages {
        /// The secret group the packages are for (authorises the claim).
        group: GroupHandle,
        /// Whose devices.
        user: UserId,
    },
    /// The secret groups this user is rostered in or owns, with roster and MLS status.
    /// Answered with `SecretGroups`.
    SecretGroups,
    /// An owner gives birth to an unborn secret group: the GroupInfo (`MLSMessage`) of
    /// epoch 0 and the ratchet tree. Answered with `Done`.
    CreateSecretGroup {
        /// The group (`slug/secret`).
        group: GroupHandle,
        /// GroupInfo `MLSMessage` bytes.
        group_info: Vec<u8>,
        /// TLS-serialized ratchet tree.
        ratchet_tree: Vec<u8>,
    },
    /// A commit (PublicMessage `MLSMessage`) for the group's current epoch, with the
    /// Welcome for added devices. Answered with `Committed`, or `StaleEpoch` if another
    /// commit won that epoch.
    Commit {
        /// The group.
        group: GroupHandle,
        /// The epoch the commit was made in.
        epoch: u64,
        /// The commit.
        commit: Vec<u8>,
        /// Welcome `MLSMessage` for added members.
        welcome: Option<Vec<u8>>,
        /// GroupInfo `MLSMessage` of the new epoch (for joiners).
        group_info: Option<Vec<u8>>,
    },
    /// Welcomes waiting for this device. Answered with `Welcomes`.
    FetchWelcomes,
    /// The current ratchet tree of a secret group (for joiners). Answered with
    /// `RatchetTree`.
    RatchetTree {
        /// The group.
        group: GroupHandle,
    },
    /// Admin: moves a user between departments (a transfer). Leaving a department cuts
    /// its secret group off at once and its removal is proposed; joining one is a pending
    /// invitation for its owners. Answered with `User`.
    SetDepartments {
        /// Personnel number.
        user: UserId,
        /// Departments to join.
        add: Vec<DepartmentSlug>,
        /// Departments to leave.
        remove: Vec<DepartmentSlug>,
    },
    /// Admin: a lost phone or a forgotten password: revokes every device of the user
    /// (removed from every secret group as for offboarding), clears the password, and
    /// issues a new enrollment code. Answered with `UserAdded`.
    ResetUser {
        /// Personnel number.
        user: UserId,
    },
    /// Changes one's own password (used to add devices). Answered with `Done`.
    ChangePassword {
        /// The current password.
        old: String,
        /// The new one.
        new: String,
    },
    /// One's own devices with their keys. Answered with `Devices`.
    OwnDevices,
    /// Revokes one of one's own devices (not the one asking). Answered with `Done`.
    RemoveDevice {
        /// The device.
        device: DeviceId,
    },
    /// Creates a secret project room (`room/slug`) owned by the requester, who is its
    /// first member. Answered with `Done`.
    CreateRoom {
        /// The room's short name.
        slug: DepartmentSlug,
        /// Display name ("Sanierung Rathausplatz").
        name: String,
    },
    /// Owner: invites a colleague to a room; they see a pending invitation. Answered with
    /// `Done`.
    InviteToRoom {
        /// The room.
        room: GroupHandle,
        /// The colleague.
        user: UserId,
    },
    /// Accepts an invitation: puts the requester on the room's roster, so an owner's
    /// client admits them. Answered with `Done`.
    JoinRoom {
        /// The room.
        room: GroupHandle,
    },
    /// Leaves a room: off its roster at once, devices removed from it. Answered with
    /// `Done`.
    LeaveRoom {
        /// The room.
        room: GroupHandle,
    },
    /// The rooms the requester is invited to and has not joined. Answered with
    /// `RoomInvitations`.
    RoomInvitations,
    /// Admin: provisions many users in one atomic batch (a chunk of an HR export).
    /// Idempotent: a row whose user exists exactly so is `Unchanged`. At most
    /// [`MAX_IMPORT_ROWS`](crate::limits::MAX_IMPORT_ROWS) rows. Answered with `Imported`.
    ImportUsers {
        /// The rows, each with its line in the file for the report.
        rows: Vec<ImportRow>,
    },
    /// Admin: changes a department's display name (the slug stays its handle). Answered
    /// with `Department`.
    RenameDepartment {
        /// The department.
        slug: DepartmentSlug,
        /// The new display name.
        name: String,
    },
    /// Admin: retires a department: its members are taken off, its public and secret
    /// groups end with a final entry and refuse new posts; the slug is never reused.
    /// Answered with `Done`.
    RemoveDepartment {
        /// The department.
        slug: DepartmentSlug,
    },
    /// A member whose group is ahead of the server's copy (the server was restored from
    /// an older copy of its data and lost commits) hands the server its current public
    /// state: the GroupInfo (`MLSMessage`, signed by this device's leaf) and the ratchet
    /// tree of its epoch. The server checks them as it checks a commit's tree and takes
    /// them over only if they are ahead of its own. Answered with `Done`.
    RepairSecretGroup {
        /// The group.
        group: GroupHandle,
        /// GroupInfo `MLSMessage` bytes of the member's epoch.
        group_info: Vec<u8>,
        /// TLS-serialized ratchet tree of that epoch.
        ratchet_tree: Vec<u8>,
    },
    /// Starts an upload of a blob of `size` bytes for `scope`, or resumes the upload
    /// `resume` (one of the requester's own, for the same scope and size). Refused with
    /// `TooLarge` before any byte is sent if `size` is over the server's per-file limit.
    /// Answered with `Upload`.
    BeginUpload {
        /// Where the blob will belong.
        scope: BlobScope,
        /// Bytes of the blob.
        size: u64,
        /// An upload begun earlier, to continue.
        resume: Option<u64>,
    },
    /// One chunk of an upload: chunk `index` of exactly the length the blob's size gives
    /// it ([`chunk_len`](crate::blobs::chunk_len)). Answered with `ChunkStored` once it is
    /// durable.
    UploadChunk {
        /// The upload.
        upload: u64,
        /// The chunk's index.
        index: u32,
        /// Its bytes (at most [`BLOB_CHUNK`](crate::blobs::BLOB_CHUNK)). Encoded as one
        /// byte string (the same bytes on the wire as a sequence of `u8`, but copied
        /// whole instead of visited byte by byte).
        #[serde(with = "serde_bytes")]
        bytes: Vec<u8>,
    },
    /// Completes an upload whose chunks are all stored: the server checks the SHA-256 of
    /// the whole and stores the blob. Answered with `BlobStored`.
    FinishUpload {
        /// The upload.
        upload: u64,
        /// SHA-256 of the blob's bytes.
        sha256: [u8; 32],
    },
    /// Chunk `index` of a stored blob of `scope`. Answered with `Chunk`.
    DownloadChunk {
        /// Where the blob belongs (decides who may read it).
        scope: BlobScope,
        /// The blob (SHA-256 of its bytes).
        blob: [u8; 32],
        /// The chunk's index.
        index: u32,
    },
    /// The author of an attachment post (or a moderator) lets go of its file: the blob
    /// goes once no other post or document refers to it. Answered with `Done`.
    ReleaseAttachment {
        /// The group.
        group: GroupHandle,
        /// The post.
        seq: u64,
    },
    /// A folder of the document library, or one document's entry. Answered with
    /// `DocEntries`.
    DocList {
        /// The folder (or document).
        path: DocPath,
    },
    /// Stores an uploaded blob (of scope `Docs`, uploaded by the requester) as the
    /// document `path`, replacing an earlier one. Answered with `Done`.
    DocPut {
        /// The document's path; its folder must exist.
        path: DocPath,
        /// The uploaded blob.
        blob: [u8; 32],
    },
    /// Creates a folder (its parent must exist). Answered with `Done`.
    DocMkdir {
        /// The new folder.
        path: DocPath,
    },
    /// Removes a document or an empty folder. Answered with `Done`.
    DocRemove {
        /// What to remove.
        path: DocPath,
    },
    /// Full-text search over what the server can read: public groups and announcements
    /// (secret groups are searched on the device only; the server never sees such a
    /// query). The query is plain words, at most
    /// [`MAX_SEARCH_QUERY`](crate::limits::MAX_SEARCH_QUERY) bytes; no operator syntax.
    /// Answered with `SearchResults`.
    Search {
        /// The words to look for.
        query: String,
        /// Only this group (a public group or `announcements`).
        group: Option<GroupHandle>,
        /// Most results wanted; 0 means the default
        /// ([`DEFAULT_SEARCH_RESULTS`](crate::limits::DEFAULT_SEARCH_RESULTS)), more than
        /// [`MAX_SEARCH_RESULTS`](crate::limits::MAX_SEARCH_RESULTS) is capped.
        limit: u32,
    },
}

/// One colleague of a bulk import.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImportRow {
    /// The row's line in the imported file (for the report; the server only echoes it).
    pub line: u32,
    /// Personnel number.
    pub user: UserId,
    /// Display name.
    pub name: String,
    /// Departments.
    pub departments: Vec<DepartmentSlug>,
    /// Roles beyond `member`.
    pub roles: Vec<Role>,
}

/// What an import did with one row.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ImportOutcome {
    /// The user was created.
    Created {
        /// One-time enrollment code, grouped like `K7QF-2M9X-…`.
        enrollment_code: String,
        /// When the code expires, Unix milliseconds.
        expires_at_ms: i64,
    },
    /// The user exists with exactly this name, these departments and roles.
    Unchanged,
    /// Nothing was done.
    Refused {
        /// Why, for the admin.
        reason: String,
    },
}

/// One row's result of a bulk import.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImportResult {
    /// The row's line, as sent.
    pub line: u32,
    /// Personnel number.
    pub user: UserId,
    /// What happened.
    pub outcome: ImportOutcome,
}

/// What is posted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum PostBody {
    /// Server-readable content, for public groups and announcements (and the plaintext
    /// of a secret post waiting in a device's outbox). Checked by the server's handler,
    /// which answers a broken rule with `Invalid` and the rule.
    Public(ContentIn),
    /// An MLS message (opaque to the server's log), for secret groups.
    Mls(Vec<u8>),
    /// An MLS message carrying an attachment, for secret groups: the server learns which
    /// blob the post refers to (never its key), so that the blob lives as long as the post.
    MlsAttachment {
        /// The MLS message.
        message: Vec<u8>,
        /// The blob it refers to, uploaded to this group by the sender.
        blob: [u8; 32],
    },
}

/// A server's answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Response {
    /// Answer to `Ping`.
    Pong,
    /// The request was refused.
    Error {
        /// Stable reason.
        code: ErrorCode,
        /// Human-readable explanation (never internal details).
        message: String,
    },
    /// A device was created.
    Enrolled {
        /// The new device's id; use it in `Hello`.
        device: DeviceId,
        /// Organisation name, for display.
        org: String,
        /// The personnel number as the server stores it (typed in any case at
        /// enrollment); use it in `Hello`.
        user: UserId,
    },
    /// Sign this nonce (see [`auth_transcript`](crate::auth_transcript)).
    Challenge {
        /// The server's protocol version.
        protocol: u16,
        /// 32 random bytes.
        nonce: [u8; 32],
    },
    /// The connection is now authenticated.
    Authenticated(SessionInfo),
    /// Answer to `Whoami`.
    Me(SessionInfo),
    /// Answer to `ListGroups`.
    Groups(Vec<GroupSummary>),
    /// The post is durably stored.
    Posted {
        /// Its sequence number in the group.
        seq: u64,
        /// Server receive time, Unix milliseconds.
        sent_at_ms: i64,
        /// True if this `client_id` had been stored before (a retry).
        duplicate: bool,
    },
    /// Answer to `Fetch`.
    Entries {
        /// The group.
        group: GroupHandle,
        /// Entries, oldest first.
        entries: Vec<LogEntry>,
        /// The group's latest seq (more remain if it is above the last entry's).
        head: u64,
    },
    /// The subscription is open; `Event`s follow on this stream.
    Subscribed,
    /// A pushed event.
    Event(Event),
    /// Answer to `Members`.
    Members {
        /// The group.
        group: GroupHandle,
        /// Its members.
        members: Vec<MemberInfo>,
    },
    /// Generic success.
    Done,
    /// A user was provisioned.
    UserAdded {
        /// Personnel number.
        user: UserId,
        /// One-time enrollment code, grouped like `K7QF-2M9X-…`.
        enrollment_code: String,
        /// When the code expires, Unix milliseconds.
        expires_at_ms: i64,
    },
    /// Answer to `ListUsers`.
    Users(Vec<UserSummary>),
    /// A department (answer to `AddDepartment`).
    Department(DepartmentInfo),
    /// Answer to `ListDepartments`.
    Departments(Vec<DepartmentInfo>),
    /// A user (answer to `SetRoles`).
    User(UserSummary),
    /// An announcement.
    Announcement(AnnouncementInfo),
    /// A list of announcements.
    Announcements(Vec<AnnouncementInfo>),
    /// Audit log entries, oldest first.
    Audit {
        /// The entries.
        entries: Vec<AuditEntry>,
        /// Number of entries in the whole log.
        total: u64,
    },
    /// How many one-time KeyPackages of this device remain on the server.
    KeyPackageStatus {
        /// One-time packages not yet claimed.
        one_time: u32,
        /// Whether a last-resort package is stored.
        last_resort: bool,
    },
    /// Claimed KeyPackages, one per active device of the user.
    KeyPackages {
        /// The user.
        user: UserId,
        /// The packages.
        packages: Vec<ClaimedKeyPackage>,
    },
    /// Answer to `SecretGroups`.
    SecretGroups(Vec<SecretGroupInfo>),
    /// The commit was accepted and stored.
    Committed {
        /// Its seq in the group's log.
        seq: u64,
        /// The group's epoch now.
        epoch: u64,
    },
    /// Answer to `FetchWelcomes`.
    Welcomes(Vec<WelcomeInfo>),
    /// Answer to `RatchetTree`.
    RatchetTree {
        /// The group.
        group: GroupHandle,
        /// The epoch the tree belongs to.
        epoch: u64,
        /// TLS-serialized ratchet tree.
        ratchet_tree: Vec<u8>,
    },
    /// Answer to `OwnDevices`.
    Devices(Vec<DeviceInfo>),
    /// Answer to `RoomInvitations`.
    RoomInvitations(Vec<RoomInvitation>),
    /// Answer to `ImportUsers`: one result per row, in the order sent.
    Imported(Vec<ImportResult>),
    /// An upload, new or resumed.
    Upload {
        /// Its id, for `UploadChunk` and `FinishUpload`, and to resume it later.
        upload: u64,
        /// One bit per chunk (chunk `i` is bit `i % 8` of byte `i / 8`): set for the
        /// chunks stored already.
        received: Vec<u8>,
        /// The server's per-file limit, in bytes.
        limit: u64,
    },
    /// The chunk is durably stored.
    ChunkStored {
        /// Its index.
        index: u32,
    },
    /// The upload is complete and its blob durably stored.
    BlobStored {
        /// The blob (SHA-256 of its bytes).
        blob: [u8; 32],
        /// Its size.
        size: u64,
    },
    /// A chunk of a blob.
    Chunk {
        /// Its bytes, encoded as one byte string (as `UploadChunk`'s).
        #[serde(with = "serde_bytes")]
        bytes: Vec<u8>,
    },
    /// Entries of the document library.
    DocEntries(Vec<DocEntry>),
    /// Answer to `Search`: best first (by relevance, newest first among equals).
    SearchResults(Vec<SearchHit>),
}

/// One search result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SearchHit {
    /// What was found.
    pub source: SearchSource,
    /// Who wrote it.
    pub sender: UserId,
    /// Their display name at the time.
    pub sender_name: String,
    /// When the server received it, Unix ms.
    pub sent_at_ms: i64,
    /// A short excerpt around the words found (plain text).
    pub snippet: String,
    /// Relevance in thousandths (BM25); only comparable within one answer.
    pub score_millis: u32,
}

/// Where a search result is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum SearchSource {
    /// A post of a group's log.
    Post {
        /// The group.
        group: GroupHandle,
        /// The post's seq.
        seq: u64,
    },
    /// A document of the document library, by its path (`rathaus://docs/PATH`).
    Document {
        /// The document's path in the library.
        path: String,
    },
}

/// A room someone invited the requester to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoomInvitation {
    /// The room (`room/slug`).
    pub room: GroupHandle,
    /// Its display name.
    pub name: String,
    /// Its owners, as the server's record lists them.
    pub owners: Vec<UserId>,
}

/// One of a user's devices, as `OwnDevices` lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceInfo {
    /// The device number.
    pub device: DeviceId,
    /// Its name ("Anna's phone").
    pub name: String,
    /// Its Ed25519 key, as the server registered it (a device links another only after
    /// comparing this key with the link code the new device shows).
    pub key: DeviceKey,
    /// When it was enrolled, Unix ms.
    pub created_ms: i64,
}

/// Something that happened, pushed to subscribed clients.
// Events are short-lived values on their way to or from the wire; boxing the large
// variant would only add an allocation.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Event {
    /// A new entry in a group the client can read.
    Posted {
        /// The group.
        group: GroupHandle,
        /// The entry.
        entry: LogEntry,
    },
    /// The set of groups visible to this user changed (e.g. a new department).
    GroupsChanged,
    /// The server is shutting down; reconnect later.
    ShuttingDown,
    /// Something changed about secret groups this user is in (roster, pending invitation,
    /// a Welcome waiting): call `SecretGroups` / `FetchWelcomes`.
    SecretGroupsChanged,
    /// The server asks this device to commit the pending removal proposals of `group`
    /// (the proposals are in the group's log).
    CommitRequested {
        /// The group.
        group: GroupHandle,
    },
    /// This device's one-time KeyPackages run low; publish more.
    KeyPackagesLow {
        /// How many remain.
        remaining: u32,
    },
}

/// The authenticated identity of a connection.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionInfo {
    /// Personnel number.
    pub user: UserId,
    /// Display name.
    pub name: String,
    /// This device.
    pub device: DeviceId,
    /// The user's roles.
    pub roles: Vec<Role>,
    /// The user's departments.
    pub departments: Vec<DepartmentSlug>,
    /// Organisation name.
    pub org: String,
}

/// Which kind of group.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum GroupKind {
    /// A department's public group.
    Public,
    /// A department's secret (MLS) group.
    Secret,
    /// Organisation-wide announcements.
    Announcements,
}

impl GroupKind {
    /// Lower-case name for output.
    pub fn as_str(self) -> &'static str {
        match self {
            GroupKind::Public => "public",
            GroupKind::Secret => "secret",
            GroupKind::Announcements => "announcements",
        }
    }
}

/// A group visible to the user.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupSummary {
    /// Handle (`bauamt`, `bauamt/secret`, `announcements`).
    pub handle: GroupHandle,
    /// Kind.
    pub kind: GroupKind,
    /// Display name.
    pub name: String,
    /// Latest seq in the group's log.
    pub head: u64,
}

/// One entry of a group's log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogEntry {
    /// Dense, server-assigned sequence number (1, 2, …).
    pub seq: u64,
    /// Who posted it.
    pub sender: UserId,
    /// The sender's display name at the time of posting.
    pub sender_name: String,
    /// Server receive time, Unix milliseconds.
    pub sent_at_ms: i64,
    /// The sender's client id for it.
    pub client_id: ClientMsgId,
    /// What it holds.
    pub body: EntryBody,
}

/// What a log entry holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum EntryBody {
    /// Readable content, as the server accepted it when it was posted: read back without
    /// being judged again (see [`ContentIn::into_recorded`]).
    Content(#[serde(deserialize_with = "crate::content::deserialize_recorded")] Content),
    /// An MLS message, opaque to the server.
    Mls(Vec<u8>),
    /// A post removed by a moderator; its content is gone from the server.
    Removed {
        /// Who removed it.
        by: UserId,
    },
    /// A moderator removed the post `target` (appended to the log, so clients that hold
    /// the post locally replace it with a tombstone too). The entry's sender is the
    /// moderator.
    Moderated {
        /// The removed post.
        target: u64,
    },
}

/// A member of a group.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberInfo {
    /// Personnel number.
    pub user: UserId,
    /// Display name.
    pub name: String,
    /// Whether the user owns the group.
    pub owner: bool,
    /// The user's active devices.
    pub devices: Vec<DeviceId>,
}

/// A user, as an admin sees them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserSummary {
    /// Personnel number.
    pub user: UserId,
    /// Display name.
    pub name: String,
    /// Roles.
    pub roles: Vec<Role>,
    /// Departments.
    pub departments: Vec<DepartmentSlug>,
    /// Whether the user has enrolled a device.
    pub enrolled: bool,
    /// Number of active devices.
    pub devices: u32,
}

/// A department.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DepartmentInfo {
    /// Short name.
    pub slug: DepartmentSlug,
    /// Display name.
    pub name: String,
    /// Owners.
    pub owners: Vec<UserId>,
    /// Number of members.
    pub members: u32,
}

/// A KeyPackage claimed for one device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClaimedKeyPackage {
    /// The device.
    pub device: DeviceId,
    /// The KeyPackage `MLSMessage` bytes.
    pub key_package: Vec<u8>,
    /// Whether this was the last-resort package (no one-time package was left).
    pub last_resort: bool,
}

/// A secret group as the server knows it: roster and MLS status, never content.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SecretGroupInfo {
    /// Handle (`slug/secret`).
    pub group: GroupHandle,
    /// The MLS group id.
    pub group_id: Vec<u8>,
    /// Whether an owner has created the MLS group yet.
    pub born: bool,
    /// The current epoch (0 if unborn).
    pub epoch: u64,
    /// Users on the roster (who may be members).
    pub roster: Vec<UserId>,
    /// Owners as seeded by the department record (after birth, the group's own owners
    /// list inside the MLS group context is authoritative).
    pub owners: Vec<UserId>,
    /// Rostered users with no device in the MLS group yet (pending invitations).
    pub pending: Vec<UserId>,
    /// Devices in the MLS group (as the server's public state shows them).
    pub members: Vec<(UserId, DeviceId)>,
    /// The server's removal key, the only entry of `external_senders`.
    pub removal_key: [u8; 32],
    /// Revoked devices of rostered users: those still in the MLS group are due for
    /// removal, and a member processing a removal proposal after it was committed still
    /// finds the device here.
    pub revoked: Vec<(UserId, DeviceId)>,
    /// Number of entries in the group's log.
    pub head: u64,
}

/// A Welcome waiting for a device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WelcomeInfo {
    /// The group.
    pub group: GroupHandle,
    /// The Welcome `MLSMessage`.
    pub welcome: Vec<u8>,
    /// The ratchet tree of the epoch the Welcome is for.
    pub ratchet_tree: Vec<u8>,
    /// Seq of the commit that added the device: the joiner reads the log after it.
    pub seq: u64,
    /// The epoch the Welcome is for.
    pub epoch: u64,
}

/// Where an announcement is in its workflow.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum AnnouncementState {
    /// Being written; only its author sees it.
    Draft,
    /// Waiting for an editor.
    Submitted,
    /// Visible to everybody in `announcements`.
    Published,
    /// Sent back by an editor.
    Rejected {
        /// The editor.
        by: UserId,
        /// Why.
        comment: String,
    },
}

impl AnnouncementState {
    /// Lower-case name for output.
    pub fn as_str(&self) -> &'static str {
        match self {
            AnnouncementState::Draft => "draft",
            AnnouncementState::Submitted => "submitted",
            AnnouncementState::Published => "published",
            AnnouncementState::Rejected { .. } => "rejected",
        }
    }
}

/// An announcement as a user sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AnnouncementInfo {
    /// Id.
    pub id: u64,
    /// Who wrote it.
    pub author: UserId,
    /// The author's display name.
    pub author_name: String,
    /// Headline.
    pub title: String,
    /// Body text.
    pub text: String,
    /// Workflow state.
    pub state: AnnouncementState,
    /// Whether colleagues are asked to acknowledge it.
    pub requires_ack: bool,
    /// When it disappears, Unix milliseconds.
    pub expires_at_ms: Option<i64>,
    /// Pinned by an editor.
    pub pinned: bool,
    /// Its entry in `announcements`, once published.
    pub seq: Option<u64>,
    /// Created, Unix milliseconds.
    pub created_at_ms: i64,
    /// Number of colleagues who acknowledged it.
    pub acks: u32,
    /// Who acknowledged it (filled for editors and admins only).
    pub acked_by: Vec<UserId>,
    /// Whether the asking user acknowledged it.
    pub acked_by_me: bool,
}

/// One entry of the hash-chained audit log. `hash` commits to every other field,
/// including the previous entry's hash, so editing or removing an entry breaks the chain
/// (see [`crate::audit`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEntry {
    /// Position in the log (0, 1, …).
    pub index: u64,
    /// When, Unix milliseconds.
    pub at_ms: i64,
    /// Who did it.
    pub actor: UserId,
    /// What, e.g. `user.add`, `user.remove`, `announcement.approve`, `post.remove`.
    pub action: String,
    /// On what, e.g. a user id or `bauamt#12`.
    pub target: String,
    /// Details (never content of secret groups).
    pub detail: String,
    /// Hash of the previous entry (zeros for the first).
    pub prev_hash: [u8; 32],
    /// SHA-256 over this entry's other fields.
    pub hash: [u8; 32],
}

impl Response {
    /// An error response.
    pub fn error(code: ErrorCode, message: impl Into<String>) -> Self {
        Response::Error {
            code,
            message: message.into(),
        }
    }
}
