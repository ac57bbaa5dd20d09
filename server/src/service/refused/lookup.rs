//! Something a request names does not exist (`ErrorCode::NotFound`).

use rathaus_protocol::{DepartmentSlug, DeviceId, GroupHandle, UserId};

/// What could not be found.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum NotFound {
    /// No department (so no public group) of that name, asked for as a group.
    #[error("group {0} does not exist")]
    PublicGroup(DepartmentSlug),
    /// No department of that name.
    #[error("department {0} does not exist")]
    Department(DepartmentSlug),
    /// A group handle that names nothing served here.
    #[error("group {0} does not exist")]
    Group(GroupHandle),
    /// A secret group whose department exists but that no owner has created.
    #[error("secret group {0} does not exist yet")]
    SecretGroup(GroupHandle),
    /// A secret group or room not created yet, for commits.
    #[error("{0} has not been created yet")]
    NotCreated(GroupHandle),
    /// A secret group with no MLS state to repair.
    #[error("{0} is not born")]
    NotBorn(GroupHandle),
    /// No room of that name.
    #[error("room {0} does not exist")]
    Room(GroupHandle),
    /// No room of that name, for invitations.
    #[error("{0} does not exist")]
    NoSuchRoom(GroupHandle),
    /// No entry at that seq.
    #[error("{group} has no post #{seq}")]
    Post {
        /// The group.
        group: GroupHandle,
        /// The seq asked for.
        seq: u64,
    },
    /// A reply to a post that is not there.
    #[error("{group} has no post #{seq} to reply to")]
    ReplyTarget {
        /// The group.
        group: GroupHandle,
        /// The seq replied to.
        seq: u64,
    },
    /// No user with that personnel number.
    #[error("user {0} does not exist")]
    User(UserId),
    /// No colleague with that personnel number, for invitations.
    #[error("there is no colleague {0}")]
    Colleague(UserId),
    /// A device that is not (or no longer) active.
    #[error("device {user}/{device} is not active")]
    Device {
        /// Its owner.
        user: UserId,
        /// The device.
        device: DeviceId,
    },
    /// One of the caller's own devices that is not active.
    #[error("you have no active device {0}")]
    OwnDevice(DeviceId),
    /// No announcement with that id.
    #[error("announcement {0} does not exist")]
    Announcement(u64),
}
