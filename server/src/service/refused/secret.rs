//! Secret groups and rooms: who may create, repair, read, post, commit and claim, and
//! the shape of the MLS bytes they send. These are the server's courtesy checks (DESIGN
//! §5.9: members' clients decide); a refusal here is what an honest client is told.

use rathaus_protocol::mls::CommitRefusal;
use rathaus_protocol::{DeviceId, ErrorCode, GroupHandle, UserId};

/// Why a request about a secret group or room was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SecretRefused {
    /// A handle that is not a secret group or room.
    #[error("{0} is not a secret group")]
    NotSecret(GroupHandle),
    /// Only the department's owners create its secret group.
    #[error("only owners of {0} may create it")]
    CreateByOwners(GroupHandle),
    /// The group or room exists.
    #[error("{0} exists already")]
    Exists(GroupHandle),
    /// A repair comes from an owner's device in the group.
    #[error("only an owner's member device of {0} may repair it")]
    RepairByOwners(GroupHandle),
    /// A repair must be ahead of the server's epoch.
    #[error("{group} is at epoch {epoch} here; a repair must be ahead of it")]
    RepairBehind {
        /// The group.
        group: GroupHandle,
        /// The server's epoch.
        epoch: u64,
    },
    /// The repaired tree leaves out the device sending it.
    #[error("this device is not a member of the repaired tree")]
    RepairWithoutMe,
    /// Reading the tree is for the group's devices.
    #[error("only devices in {0} may read its tree")]
    TreeByMembers(GroupHandle),
    /// Reading the log is for the group's devices.
    #[error("only devices in {0} may read it")]
    NotAReader(GroupHandle),
    /// Posting is for the group's devices.
    #[error("only devices in {0} may post to it")]
    NotAPoster(GroupHandle),
    /// Committing is for the group's devices.
    #[error("only devices in {0} may commit to it")]
    NotACommitter(GroupHandle),
    /// The caller is not on the department's (or room's) roster.
    #[error("you are not on the roster of {0}")]
    YouAreNotOnRoster(GroupHandle),
    /// A device of someone not on the roster in a tree.
    #[error("{0} is not on the roster of this group")]
    NotOnRoster(UserId),
    /// A claim of KeyPackages for someone not on the roster.
    #[error("{user} is not on the roster of {group}")]
    ClaimOffRoster {
        /// Whose packages.
        user: UserId,
        /// The group.
        group: GroupHandle,
    },
    /// Claims for a born group are the members'.
    #[error("only members of {0} may claim KeyPackages for it")]
    ClaimByMembers(GroupHandle),
    /// Claims before the birth are the owners'.
    #[error("only owners of {0} may claim KeyPackages before it exists")]
    ClaimByOwners(GroupHandle),
    /// The group moved on; the client fetches and retries.
    #[error("{group} moved to epoch {epoch}; fetch and retry")]
    Stale {
        /// The group.
        group: GroupHandle,
        /// Its current epoch.
        epoch: u64,
    },
    /// A commit signed by a leaf other than the sending device's.
    #[error("a commit must come from the leaf of the device sending it")]
    ForeignLeaf,
    /// The members' rule refused the commit (DESIGN §5.9).
    #[error("commit refused: {0}")]
    Judged(CommitRefusal),
    /// Too many KeyPackages in one request.
    #[error("at most {0} KeyPackages at once")]
    TooManyKeyPackages(usize),
    /// The device's KeyPackage store is full.
    #[error("the server holds {held} KeyPackages of this device; at most {room} more fit")]
    KeyPackagesFull {
        /// How many it holds.
        held: usize,
        /// How many more fit.
        room: usize,
    },
    /// A room's name is empty or too long.
    #[error("a room needs a name of at most 128 bytes")]
    RoomName,
    /// A handle that is not a room.
    #[error("{0} is not a room; rooms are named like room/sanierung")]
    NotARoom(GroupHandle),
    /// Invitations are the room owners'.
    #[error("only owners of {0} invite colleagues")]
    InviteByOwners(GroupHandle),
    /// The room's invitation list is full.
    #[error("{group} has {max} open invitations already")]
    TooManyInvitations {
        /// The room.
        group: GroupHandle,
        /// The limit.
        max: usize,
    },
    /// Joining a room needs an invitation.
    #[error("nobody invited you to {0}; ask one of its owners")]
    NotInvited(GroupHandle),
    /// The colleague owns as many rooms as one may.
    #[error("you own {max} rooms already, the most one colleague may; hand one over or close one")]
    TooManyRooms {
        /// The limit.
        max: usize,
    },
    /// The invitee has as many open invitations as one may.
    #[error("{user} has {max} open room invitations already; they accept or decline some first")]
    InviteeHasTooMany {
        /// The invitee.
        user: UserId,
        /// The limit.
        max: usize,
    },
    /// A commit too large to be read back from the log in one answer.
    #[error(
        "this server accepts commits of at most {limit} bytes, this one has {size}; add fewer \
         colleagues at once"
    )]
    CommitTooLarge {
        /// The limit.
        limit: usize,
        /// The commit's size.
        size: usize,
    },
    /// The MLS bytes are malformed or of the wrong shape.
    #[error(transparent)]
    Mls(#[from] MlsRefused),
}

impl SecretRefused {
    /// The stable code the peer acts on.
    pub fn code(&self) -> ErrorCode {
        match self {
            Self::CreateByOwners(_)
            | Self::RepairByOwners(_)
            | Self::TreeByMembers(_)
            | Self::NotAReader(_)
            | Self::NotAPoster(_)
            | Self::NotACommitter(_)
            | Self::YouAreNotOnRoster(_)
            | Self::NotOnRoster(_)
            | Self::ClaimOffRoster { .. }
            | Self::ClaimByMembers(_)
            | Self::ClaimByOwners(_)
            | Self::ForeignLeaf
            | Self::Judged(_)
            | Self::InviteByOwners(_)
            | Self::NotInvited(_) => ErrorCode::Forbidden,
            Self::Exists(_) => ErrorCode::AlreadyExists,
            Self::RepairBehind { .. } | Self::Stale { .. } => ErrorCode::StaleEpoch,
            Self::TooManyInvitations { .. }
            | Self::CommitTooLarge { .. }
            | Self::TooManyRooms { .. }
            | Self::InviteeHasTooMany { .. } => ErrorCode::TooLarge,
            Self::NotSecret(_)
            | Self::RepairWithoutMe
            | Self::TooManyKeyPackages(_)
            | Self::KeyPackagesFull { .. }
            | Self::RoomName
            | Self::NotARoom(_)
            | Self::Mls(_) => ErrorCode::Invalid,
        }
    }
}

/// MLS bytes that are malformed or not what the request needs (`ErrorCode::Invalid`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum MlsRefused {
    /// Not an `MLSMessage` at all.
    #[error("{0} is not a valid MLS message")]
    Undecodable(&'static str),
    /// A message of another kind where a KeyPackage belongs.
    #[error("expected a KeyPackage message")]
    NotAKeyPackage,
    /// A KeyPackage whose signature or contents do not verify.
    #[error("invalid KeyPackage: {0}")]
    KeyPackage(String),
    /// A KeyPackage in another ciphersuite.
    #[error("KeyPackages must use MLS_128_DHKEMX25519_AES128GCM_SHA256_Ed25519")]
    KeyPackageSuite,
    /// A KeyPackage whose credential names another device.
    #[error("KeyPackage credentials must name this device ({user}/{device})")]
    KeyPackageCredential {
        /// The session's user.
        user: UserId,
        /// The session's device.
        device: DeviceId,
    },
    /// A KeyPackage signed with another key than the device's.
    #[error("KeyPackages must be signed with this device's registered key")]
    KeyPackageKey,
    /// A message of another kind where a GroupInfo belongs.
    #[error("expected a GroupInfo message")]
    NotAGroupInfo,
    /// A ratchet tree that does not decode.
    #[error("the ratchet tree is not a valid TLS-serialized tree")]
    RatchetTree,
    /// A GroupInfo and tree that do not verify together.
    #[error("GroupInfo and ratchet tree do not form a valid group: {0}")]
    Group(String),
    /// The MLS group id is not this group's.
    #[error("the MLS group id of {0} must be \"rathaus:{0}\"")]
    GroupId(GroupHandle),
    /// A group in another ciphersuite.
    #[error("secret groups use MLS_128_DHKEMX25519_AES128GCM_SHA256_Ed25519")]
    GroupSuite,
    /// A new group not at epoch 0.
    #[error("a new group starts at epoch 0")]
    NotEpochZero,
    /// A new or repaired group without exactly the server's removal key.
    #[error("external_senders must hold the server's removal key and nothing else")]
    ExternalSenders,
    /// A commit that changes the external senders.
    #[error("external_senders must keep the server's removal key and nothing else")]
    ExternalSendersChanged,
    /// A new group with another member than its creator.
    #[error("a new group has exactly one member: its creator")]
    NotOnlyCreator,
    /// The creator's leaf is not this device with its key.
    #[error("the creator's leaf must be this device with its registered key")]
    CreatorLeaf,
    /// A leaf whose credential is not `user/device`.
    #[error("leaf {0} does not name a Rathaus device")]
    LeafCredential(u32),
    /// A device with two leaves.
    #[error("device {user}/{device} appears twice")]
    DeviceTwice {
        /// Its user.
        user: UserId,
        /// The device.
        device: DeviceId,
    },
    /// A leaf with another key than its device's.
    #[error("leaf {leaf} must carry the registered key of device {user}/{device}")]
    LeafKey {
        /// The leaf.
        leaf: u32,
        /// Its user.
        user: UserId,
        /// The device.
        device: DeviceId,
    },
    /// A commit that is a PrivateMessage (the server must read commits).
    #[error("a commit must be a PublicMessage")]
    CommitNotPublic,
    /// A message that is not a commit where one belongs.
    #[error("expected a commit")]
    NotACommit,
    /// A commit for another group.
    #[error("the commit is not for {0}")]
    CommitElsewhere(GroupHandle),
    /// A Welcome that is not one.
    #[error("expected a Welcome message")]
    NotAWelcome,
    /// A commit with Add proposals but no Welcome.
    #[error("a commit that adds devices needs its Welcome")]
    WelcomeMissing,
    /// openmls refused the commit against the group's state.
    #[error("commit rejected: {0}")]
    CommitRejected(String),
    /// A server-readable post to a secret group.
    #[error("{0} is end-to-end encrypted; post MLS messages only")]
    PlaintextPost(GroupHandle),
    /// An application message that is not a PrivateMessage.
    #[error("application messages must be PrivateMessages")]
    NotPrivate,
    /// An application message for another group.
    #[error("the message is not for {0}")]
    MessageElsewhere(GroupHandle),
}
