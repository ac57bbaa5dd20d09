//! The editorial workflow of announcements: draft, submit, approve or reject, publish,
//! acknowledge, pin.

use rathaus_protocol::ErrorCode;

/// Why a step of the editorial workflow was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AnnouncementRefused {
    /// Writing needs the author, editor or admin role.
    #[error(
        "only authors, editors and administrators may write announcements; ask an \
         administrator for the author role"
    )]
    AuthorsOnly,
    /// The step is an editor's.
    #[error("only editors and administrators may {0}")]
    EditorsOnly(&'static str),
    /// Submitting is the author's.
    #[error("only its author may submit announcement {0}")]
    SubmitByAuthor(u64),
    /// Submitted once already.
    #[error("announcement {0} was submitted already")]
    SubmittedAlready(u64),
    /// Published already.
    #[error("announcement {0} is published already")]
    PublishedAlready(u64),
    /// Only a submission is approved.
    #[error("announcement {id} is {state}; only submitted announcements can be approved")]
    ApproveUnsubmitted {
        /// The announcement.
        id: u64,
        /// Its state.
        state: &'static str,
    },
    /// Only a submission is rejected.
    #[error("announcement {id} is {state}; only submitted announcements can be rejected")]
    RejectUnsubmitted {
        /// The announcement.
        id: u64,
        /// Its state.
        state: &'static str,
    },
    /// A rejection tells the author why.
    #[error("a rejection needs a comment for the author (1 byte to 64 KiB)")]
    RejectionComment,
    /// Only a published announcement is acknowledged.
    #[error("announcement {0} is not published; only published ones are acknowledged")]
    AckUnpublished(u64),
    /// The announcement does not ask for acknowledgement.
    #[error("announcement {0} does not ask for acknowledgement")]
    NoAckAsked(u64),
    /// Only a published announcement is pinned.
    #[error("announcement {0} is not published; only published ones can be pinned")]
    PinUnpublished(u64),
    /// An expiry before now.
    #[error("the expiry time lies in the past")]
    ExpiryPast,
    /// The announcement expired.
    #[error("announcement {0} has expired")]
    Expired(u64),
    /// Title or text break the content rules.
    #[error("{0}")]
    Content(String),
}

impl AnnouncementRefused {
    /// The stable code the peer acts on.
    pub fn code(&self) -> ErrorCode {
        match self {
            Self::AuthorsOnly | Self::EditorsOnly(_) | Self::SubmitByAuthor(_) => {
                ErrorCode::Forbidden
            }
            Self::SubmittedAlready(_)
            | Self::PublishedAlready(_)
            | Self::ApproveUnsubmitted { .. }
            | Self::RejectUnsubmitted { .. }
            | Self::RejectionComment
            | Self::AckUnpublished(_)
            | Self::NoAckAsked(_)
            | Self::PinUnpublished(_)
            | Self::ExpiryPast
            | Self::Expired(_)
            | Self::Content(_) => ErrorCode::Invalid,
        }
    }
}
