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

use crate::content::Content;
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
}

/// What is posted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum PostBody {
    /// Server-readable content, for public groups and announcements.
    Public(Content),
    /// An MLS message (opaque to the server's log), for secret groups.
    Mls(Vec<u8>),
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
    /// Readable content.
    Content(Content),
    /// An MLS message, opaque to the server.
    Mls(Vec<u8>),
    /// A post removed by a moderator; its content is gone from the server.
    Removed {
        /// Who removed it.
        by: UserId,
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

impl Response {
    /// An error response.
    pub fn error(code: ErrorCode, message: impl Into<String>) -> Self {
        Response::Error {
            code,
            message: message.into(),
        }
    }
}
