//! Posts to public groups and announcements, their replies, edits, deletes and
//! reactions, moderation and retention.

use rathaus_protocol::{DepartmentSlug, ErrorCode, GroupHandle, UserId};

/// Why a post, a change to one, a moderation or a retention setting was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PostRefused {
    /// Announcements are posted by editors and administrators.
    #[error("only editors and administrators may post announcements")]
    AnnouncementsByEditors,
    /// An MLS message sent to a server-readable group.
    #[error("{0} is server-readable; MLS messages belong in secret groups")]
    MlsInPublic(GroupHandle),
    /// The content does not meet the protocol's rules.
    #[error("{0}")]
    Content(String),
    /// Over the server's configured post size.
    #[error("this server accepts posts of at most {limit} bytes, this one has {size}")]
    TooLarge {
        /// The configured limit.
        limit: usize,
        /// The post's encoded size.
        size: usize,
    },
    /// A post edited as often as a post may be.
    #[error("{group}/{seq} was edited {max} times already; post a new message instead")]
    TooManyEdits {
        /// The group.
        group: GroupHandle,
        /// The post.
        seq: u64,
        /// The limit.
        max: usize,
    },
    /// The department was retired; its groups take no new posts.
    #[error(
        "the department {name} ({slug}) was retired by {by}; its groups are closed to new posts"
    )]
    Retired {
        /// The department.
        slug: DepartmentSlug,
        /// Its name.
        name: String,
        /// Who retired it.
        by: UserId,
    },
    /// Announcements change through the editorial workflow.
    #[error("announcements are changed through `rathaus announce`, not by posts")]
    AnnouncementChange,
    /// The post was deleted or removed.
    #[error("post #{seq} of {group} was deleted")]
    Deleted {
        /// The group.
        group: GroupHandle,
        /// The post.
        seq: u64,
    },
    /// The target is an entry that is not a post (a change, a moderation…).
    #[error("#{seq} of {group} is not a post that can be changed")]
    NotAPost {
        /// The group.
        group: GroupHandle,
        /// The entry.
        seq: u64,
    },
    /// Only a post's author edits or deletes it.
    #[error("only its author may {verb} post #{seq} of {group} (it is {author}'s)")]
    NotAuthor {
        /// "edit" or "delete".
        verb: &'static str,
        /// The group.
        group: GroupHandle,
        /// The post.
        seq: u64,
        /// Its author.
        author: UserId,
    },
    /// The server cannot read, so cannot moderate, secret groups.
    #[error(
        "secret groups are end-to-end encrypted; the server can neither read nor remove their \
         posts"
    )]
    ModerateSecret,
    /// Announcements expire rather than being moderated.
    #[error(
        "announcements are not moderated; let them expire or ask an administrator to set a \
         retention period"
    )]
    ModerateAnnouncements,
    /// Moderation is for the group's owners and administrators.
    #[error("only the owners of {0} and administrators may remove its posts")]
    NotModerator(GroupHandle),
    /// The post was removed already.
    #[error("post #{seq} of {group} was removed already")]
    RemovedAlready {
        /// The group.
        group: GroupHandle,
        /// The post.
        seq: u64,
    },
    /// Retention of ciphertext the server cannot judge.
    #[error(
        "retention applies to public groups and announcements; secret groups hold only \
         ciphertext the server cannot judge"
    )]
    RetentionSecret,
    /// A retention period over the maximum.
    #[error("retention is at most {0} days")]
    RetentionTooLong(u32),
}

impl PostRefused {
    /// The stable code the peer acts on.
    pub fn code(&self) -> ErrorCode {
        match self {
            Self::AnnouncementsByEditors
            | Self::Retired { .. }
            | Self::NotAuthor { .. }
            | Self::NotModerator(_) => ErrorCode::Forbidden,
            Self::TooLarge { .. } | Self::TooManyEdits { .. } => ErrorCode::TooLarge,
            Self::MlsInPublic(_)
            | Self::Content(_)
            | Self::AnnouncementChange
            | Self::Deleted { .. }
            | Self::NotAPost { .. }
            | Self::ModerateSecret
            | Self::ModerateAnnouncements
            | Self::RemovedAlready { .. }
            | Self::RetentionSecret
            | Self::RetentionTooLong(_) => ErrorCode::Invalid,
        }
    }
}
