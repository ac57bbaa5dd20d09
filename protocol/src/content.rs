//! Message content: what a colleague writes. Plain in public groups, inside the MLS
//! ciphertext in secret groups. Versioned and extensible: new body kinds are appended as
//! new enum variants; a client that does not know a variant shows a placeholder.

use serde::{Deserialize, Serialize};

use crate::ids::UserId;
use crate::limits::{MAX_LIST, MAX_TEXT};

/// Current content format version.
pub const CONTENT_VERSION: u8 = 1;

/// One message's content.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Content {
    /// Format version ([`CONTENT_VERSION`] when written by this build).
    pub version: u8,
    /// What the message is.
    pub body: ContentBody,
    /// Colleagues mentioned (`@P1001`).
    pub mentions: Vec<UserId>,
}

/// The kinds of message content.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ContentBody {
    /// A text message, optionally replying to an earlier one and linking another message.
    Text {
        /// The text (UTF-8, at most [`MAX_TEXT`] bytes).
        text: String,
        /// `seq` of the message this replies to, in the same group.
        reply_to: Option<u64>,
        /// A link to another message, `rathaus://GROUP/SEQ`.
        link: Option<String>,
    },
    /// Replaces the text of an own earlier message.
    Edit {
        /// `seq` of the edited message.
        target: u64,
        /// The new text.
        text: String,
    },
    /// Withdraws an own earlier message.
    Delete {
        /// `seq` of the deleted message.
        target: u64,
    },
    /// A reaction (an emoji) to a message.
    Reaction {
        /// `seq` of the message reacted to.
        target: u64,
        /// The reaction, e.g. "👍".
        emoji: String,
    },
    /// A file, stored as a blob on the server (DESIGN §4): photos and documents.
    Attachment {
        /// The blob: SHA-256 of the stored bytes (the ciphertext, for secret groups).
        blob: [u8; 32],
        /// File name as shown.
        name: String,
        /// Size of the file in bytes.
        size: u64,
        /// SHA-256 of the file itself (checked by the receiver after download).
        sha256: [u8; 32],
        /// A caption, possibly empty.
        text: String,
        /// For secret groups, the key the blob is sealed with.
        file_key: Option<crate::blobs::FileKey>,
    },
    /// A published announcement (only in `announcements`, written by the server).
    Announcement {
        /// Announcement id (for `announce ack`).
        id: u64,
        /// Headline.
        title: String,
        /// Body text.
        text: String,
        /// Whether colleagues are asked to acknowledge it.
        requires_ack: bool,
        /// When it disappears, Unix milliseconds.
        expires_at_ms: Option<i64>,
    },
}

/// Why content was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid message content: {0}")]
pub struct InvalidContent(pub &'static str);

impl Content {
    /// A plain text message.
    pub fn text(text: impl Into<String>) -> Self {
        Self {
            version: CONTENT_VERSION,
            body: ContentBody::Text {
                text: text.into(),
                reply_to: None,
                link: None,
            },
            mentions: Vec::new(),
        }
    }

    /// Checks sizes and rules a server and client enforce on content.
    pub fn validate(&self) -> Result<(), InvalidContent> {
        if self.mentions.len() > MAX_LIST {
            return Err(InvalidContent("too many mentions"));
        }
        match &self.body {
            ContentBody::Text { text, link, .. } => {
                if text.len() > MAX_TEXT {
                    return Err(InvalidContent("text longer than 64 KiB"));
                }
                if text.trim().is_empty() {
                    return Err(InvalidContent("empty text"));
                }
                if let Some(link) = link {
                    if !link.starts_with("rathaus://") || link.len() > 256 {
                        return Err(InvalidContent("links must look like rathaus://GROUP/SEQ"));
                    }
                }
            }
            ContentBody::Edit { text, .. } => {
                if text.len() > MAX_TEXT || text.trim().is_empty() {
                    return Err(InvalidContent("edited text empty or longer than 64 KiB"));
                }
            }
            ContentBody::Delete { .. } => {}
            ContentBody::Reaction { emoji, .. } => {
                if emoji.is_empty() || emoji.len() > 32 {
                    return Err(InvalidContent("reaction must be 1 to 32 bytes"));
                }
            }
            ContentBody::Attachment { name, text, .. } => {
                if name.is_empty() || name.len() > 255 {
                    return Err(InvalidContent("file name must be 1 to 255 bytes"));
                }
                if name.contains(['/', '\\']) || name.chars().any(char::is_control) {
                    return Err(InvalidContent(
                        "file names may not contain slashes or control characters",
                    ));
                }
                if text.len() > MAX_TEXT {
                    return Err(InvalidContent("caption longer than 64 KiB"));
                }
            }
            ContentBody::Announcement { title, text, .. } => {
                if title.trim().is_empty() || title.len() > 256 {
                    return Err(InvalidContent("title must be 1 to 256 bytes"));
                }
                if text.len() > MAX_TEXT {
                    return Err(InvalidContent("text longer than 64 KiB"));
                }
            }
        }
        Ok(())
    }

    /// A one-line text rendering for timelines.
    pub fn summary(&self) -> String {
        match &self.body {
            ContentBody::Text { text, .. } => text.clone(),
            ContentBody::Edit { target, text } => format!("(edit of #{target}) {text}"),
            ContentBody::Delete { target } => format!("(deleted #{target})"),
            ContentBody::Reaction { target, emoji } => format!("(reacted {emoji} to #{target})"),
            ContentBody::Attachment {
                name, size, text, ..
            } => {
                if text.is_empty() {
                    format!("(file {name}, {size} bytes)")
                } else {
                    format!("{text} (file {name}, {size} bytes)")
                }
            }
            ContentBody::Announcement {
                id,
                title,
                text,
                requires_ack,
                ..
            } => {
                let ack = if *requires_ack {
                    format!(" [please acknowledge: rathaus announce ack {id}]")
                } else {
                    String::new()
                };
                format!("{title}: {text}{ack}")
            }
        }
    }

    /// A short kind name, as in `read --json` output.
    pub fn kind(&self) -> &'static str {
        match &self.body {
            ContentBody::Text { .. } => "text",
            ContentBody::Edit { .. } => "edit",
            ContentBody::Delete { .. } => "delete",
            ContentBody::Reaction { .. } => "reaction",
            ContentBody::Attachment { .. } => "attachment",
            ContentBody::Announcement { .. } => "announcement",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_rules() {
        assert!(Content::text("Guten Morgen").validate().is_ok());
        assert!(Content::text("   ").validate().is_err());
        assert!(Content::text("x".repeat(MAX_TEXT + 1)).validate().is_err());
    }
}
