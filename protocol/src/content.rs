//! Message content: what a colleague writes. Plain in public groups, inside the MLS
//! ciphertext in secret groups. Versioned and extensible: new body kinds are appended as
//! new enum variants; a client that does not know a variant shows a placeholder.

use serde::{Deserialize, Serialize};

use crate::ids::{GroupHandle, UserId};
use crate::limits::MAX_TEXT;

/// Most colleagues one message may mention.
pub const MAX_MENTIONS: usize = 32;

/// Most `rathaus://GROUP/SEQ` links one message may carry.
pub const MAX_LINKS: usize = 16;

/// Longest link, in bytes.
pub const MAX_LINK: usize = 256;

/// Longest reaction, in bytes (an emoji with modifiers and joiners fits easily).
pub const MAX_REACTION_BYTES: usize = 32;

/// Most characters (Unicode scalar values) in one reaction: one emoji, perhaps a
/// composed one, not a sentence.
pub const MAX_REACTION_CHARS: usize = 8;

/// The scheme of links to messages and documents.
pub const LINK_SCHEME: &str = "rathaus://";

/// Current content format version.
pub const CONTENT_VERSION: u8 = 1;

/// One message's content, valid by the rules of [`Content::validate`].
///
/// Decoding goes through [`ContentIn`] and its checks (`#[serde(try_from)]`), so a
/// `Content` decoded from a peer's bytes is always valid; one built in code through its
/// public fields is checked with [`Content::validate`] before it is sent. Encoded, it is
/// exactly a [`ContentIn`].
///
/// One exception, on purpose: content *recorded* earlier (a log entry the server accepted
/// when it was posted, a row of the device's own history) is not judged again when read
/// back, so a log stays readable when the rules become stricter (see
/// [`ContentIn::into_recorded`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "ContentIn")]
pub struct Content {
    /// Format version ([`CONTENT_VERSION`] when written by this build).
    pub version: u8,
    /// What the message is.
    pub body: ContentBody,
    /// Colleagues mentioned (`@P1001`).
    pub mentions: Vec<UserId>,
}

/// Message content as it arrives, not yet checked: the plain wire shape of [`Content`]
/// (the same fields, the same bytes). A request carries this; the server turns it into a
/// [`Content`] with [`ContentIn::validate`] at the edge of its handler, so a refusal
/// names the rule that was broken.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContentIn {
    /// Format version.
    pub version: u8,
    /// What the message is.
    pub body: ContentBody,
    /// Colleagues mentioned.
    pub mentions: Vec<UserId>,
}

impl ContentIn {
    /// Checks the rules of [`Content::validate`] and gives the valid content.
    pub fn validate(self) -> Result<Content, InvalidContent> {
        let content = self.into_recorded();
        content.validate()?;
        Ok(content)
    }

    /// The content without judging it again: only for content this system recorded
    /// after it was accepted (a log entry read back from the store or fetched from the
    /// server, a row of the local history), which may predate a stricter rule (release
    /// 0.1.0 took reactions of up to 32 bytes, spaces included). Never for a peer's
    /// new input.
    pub fn into_recorded(self) -> Content {
        Content {
            version: self.version,
            body: self.body,
            mentions: self.mentions,
        }
    }
}

impl TryFrom<ContentIn> for Content {
    type Error = InvalidContent;

    fn try_from(content: ContentIn) -> Result<Self, Self::Error> {
        content.validate()
    }
}

impl From<Content> for ContentIn {
    fn from(content: Content) -> Self {
        Self {
            version: content.version,
            body: content.body,
            mentions: content.mentions,
        }
    }
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
        /// Links to other messages, `rathaus://GROUP/SEQ`, in the order the text has them.
        /// (Encoded like the single optional link of format 1: `None` and `[]`, `Some(l)`
        /// and `[l]` are the same bytes, so older stored posts decode unchanged.)
        links: Vec<String>,
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
                links: Vec::new(),
            },
            mentions: Vec::new(),
        }
    }

    /// A post as a colleague writes it: its mentions (`@P1001`) and links
    /// (`rathaus://GROUP/SEQ`) are taken from the text.
    pub fn post(text: impl Into<String>, reply_to: Option<u64>) -> Self {
        let text = text.into();
        let mentions = parse_mentions(&text);
        let links = parse_links(&text).iter().map(Link::to_string).collect();
        Self {
            version: CONTENT_VERSION,
            body: ContentBody::Text {
                text,
                reply_to,
                links,
            },
            mentions,
        }
    }

    /// A new text for the own post `target`; its mentions are taken from the text.
    pub fn edit(target: u64, text: impl Into<String>) -> Self {
        let text = text.into();
        Self {
            version: CONTENT_VERSION,
            mentions: parse_mentions(&text),
            body: ContentBody::Edit { target, text },
        }
    }

    /// Withdraws the own post `target`.
    pub fn delete(target: u64) -> Self {
        Self {
            version: CONTENT_VERSION,
            body: ContentBody::Delete { target },
            mentions: Vec::new(),
        }
    }

    /// A reaction to `target` (sent again, it takes the reaction back).
    pub fn reaction(target: u64, emoji: impl Into<String>) -> Self {
        Self {
            version: CONTENT_VERSION,
            body: ContentBody::Reaction {
                target,
                emoji: emoji.into(),
            },
            mentions: Vec::new(),
        }
    }

    /// The post this content changes (edit, delete, reaction), if any.
    pub fn target(&self) -> Option<u64> {
        match &self.body {
            ContentBody::Edit { target, .. }
            | ContentBody::Delete { target }
            | ContentBody::Reaction { target, .. } => Some(*target),
            _ => None,
        }
    }

    /// Checks sizes and rules a server and client enforce on content.
    pub fn validate(&self) -> Result<(), InvalidContent> {
        if self.mentions.len() > MAX_MENTIONS {
            return Err(InvalidContent(
                "at most 32 colleagues can be mentioned in one message",
            ));
        }
        match &self.body {
            ContentBody::Text { text, links, .. } => {
                if text.len() > MAX_TEXT {
                    return Err(InvalidContent("text longer than 64 KiB"));
                }
                if text.trim().is_empty() {
                    return Err(InvalidContent("empty text"));
                }
                if links.len() > MAX_LINKS {
                    return Err(InvalidContent("at most 16 links in one message"));
                }
                if links
                    .iter()
                    .any(|l| l.len() > MAX_LINK || Link::parse(l).is_err())
                {
                    return Err(InvalidContent("links must look like rathaus://GROUP/SEQ"));
                }
            }
            ContentBody::Edit { text, .. } => {
                if text.len() > MAX_TEXT || text.trim().is_empty() {
                    return Err(InvalidContent("edited text empty or longer than 64 KiB"));
                }
            }
            ContentBody::Delete { .. } => {}
            ContentBody::Reaction { emoji, .. } => {
                if emoji.trim().is_empty()
                    || emoji.len() > MAX_REACTION_BYTES
                    || emoji.chars().count() > MAX_REACTION_CHARS
                    || emoji.chars().any(|c| c.is_control() || c.is_whitespace())
                {
                    return Err(InvalidContent(
                        "a reaction is one emoji: 1 to 8 characters, at most 32 bytes, no \
                         spaces or control characters",
                    ));
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

/// A link to a message: `rathaus://GROUP/SEQ`, e.g. `rathaus://bauamt/12` or
/// `rathaus://bauamt/secret/3`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Link {
    /// The group of the linked message.
    pub group: GroupHandle,
    /// Its seq.
    pub seq: u64,
}

impl Link {
    /// Parses `rathaus://GROUP/SEQ`.
    pub fn parse(s: &str) -> Result<Self, InvalidContent> {
        const RULE: InvalidContent =
            InvalidContent("a link looks like rathaus://GROUP/SEQ, e.g. rathaus://bauamt/12");
        if s.len() > MAX_LINK {
            return Err(RULE);
        }
        let rest = s.strip_prefix(LINK_SCHEME).ok_or(RULE)?;
        let (group, seq) = rest.rsplit_once('/').ok_or(RULE)?;
        if seq.is_empty() || !seq.bytes().all(|b| b.is_ascii_digit()) {
            return Err(RULE);
        }
        let seq: u64 = seq.parse().map_err(|_| RULE)?;
        if seq == 0 {
            return Err(RULE);
        }
        let group = GroupHandle::parse(group).map_err(|_| RULE)?;
        Ok(Self { group, seq })
    }
}

impl std::fmt::Display for Link {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{LINK_SCHEME}{}/{}", self.group, self.seq)
    }
}

/// The colleagues a text mentions: every `@ID` (a personnel number) that does not
/// continue a word (so `anna@stadt.de` mentions nobody), each once (compared without
/// regard to case, as personnel numbers are), in order of first mention. A trailing `.`
/// or `-` ends the sentence, not the number. At most one more than [`MAX_MENTIONS`] are
/// returned (so that [`Content::validate`] refuses a text with too many).
pub fn parse_mentions(text: &str) -> Vec<UserId> {
    let mut out: Vec<UserId> = Vec::new();
    let bytes = text.as_bytes();
    for (i, _) in text.match_indices('@') {
        if i > 0 && is_id_byte(bytes[i - 1]) {
            continue;
        }
        let rest = &text[i + 1..];
        let end = rest
            .bytes()
            .position(|b| !is_id_byte(b))
            .unwrap_or(rest.len());
        let id = rest[..end].trim_end_matches(['.', '-']);
        if id.is_empty() {
            continue;
        }
        let Ok(user) = UserId::parse(id) else {
            continue;
        };
        if !out
            .iter()
            .any(|u| u.as_str().eq_ignore_ascii_case(user.as_str()))
        {
            out.push(user);
        }
        if out.len() > MAX_MENTIONS {
            // One more than allowed is enough for `validate` to refuse the message.
            break;
        }
    }
    out
}

/// The message links in a text (`rathaus://GROUP/SEQ`), each once, in order. At most one
/// more than [`MAX_LINKS`] are returned; anything after `rathaus://` that is not a message link
/// (e.g. a document link) is left out.
pub fn parse_links(text: &str) -> Vec<Link> {
    let mut out: Vec<Link> = Vec::new();
    for (i, _) in text.match_indices(LINK_SCHEME) {
        let rest = &text[i + LINK_SCHEME.len()..];
        let end = rest
            .bytes()
            .position(|b| !(b.is_ascii_alphanumeric() || matches!(b, b'/' | b'-' | b'_')))
            .unwrap_or(rest.len());
        let candidate = &text[i..i + LINK_SCHEME.len() + end];
        if let Ok(link) = Link::parse(candidate.trim_end_matches('/')) {
            if !out.contains(&link) {
                out.push(link);
            }
        }
        if out.len() > MAX_LINKS {
            break;
        }
    }
    out
}

/// Decodes recorded content (see [`ContentIn::into_recorded`]); for
/// `#[serde(deserialize_with)]` on the records that hold it.
pub(crate) fn deserialize_recorded<'de, D>(deserializer: D) -> Result<Content, D::Error>
where
    D: serde::Deserializer<'de>,
{
    ContentIn::deserialize(deserializer).map(ContentIn::into_recorded)
}

fn is_id_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mentions_are_personnel_numbers_after_an_at_sign() {
        let ids = |t: &str| -> Vec<String> {
            parse_mentions(t)
                .into_iter()
                .map(|u| u.as_str().to_owned())
                .collect()
        };
        assert_eq!(ids("@P1001 und @p2002, bitte."), vec!["P1001", "p2002"]);
        assert_eq!(ids("Danke @P1001."), vec!["P1001"]);
        assert_eq!(ids("@P1001 @p1001 @P1001"), vec!["P1001"]);
        assert!(ids("anna@stadt.de schreibt").is_empty());
        assert!(ids("@ allein, @@").is_empty());
        let many: String = (0..100).map(|i| format!("@P{i} ")).collect();
        assert_eq!(ids(&many).len(), MAX_MENTIONS + 1);
        assert!(Content::post(many, None).validate().is_err());
    }

    #[test]
    fn links_name_a_group_and_a_seq() {
        let links: Vec<String> = parse_links(
            "siehe rathaus://bauamt/12, rathaus://bauamt/secret/3 und rathaus://room/x-y/7. \
             Nicht: rathaus://bauamt/ rathaus://docs/plan.pdf rathaus://bauamt/0 \
             nochmal rathaus://bauamt/12",
        )
        .iter()
        .map(Link::to_string)
        .collect();
        assert_eq!(
            links,
            vec![
                "rathaus://bauamt/12",
                "rathaus://bauamt/secret/3",
                "rathaus://room/x-y/7"
            ]
        );
        assert_eq!(
            Link::parse("rathaus://announcements/4").unwrap().group,
            GroupHandle::Announcements
        );
        assert!(Link::parse("rathaus://Bauamt/4").is_err());
        assert!(Link::parse("https://bauamt/4").is_err());
        assert!(Link::parse("rathaus://bauamt/99999999999999999999999").is_err());
    }

    #[test]
    fn a_post_carries_the_mentions_and_links_of_its_text() {
        let c = Content::post("@P1001 siehe rathaus://bauamt/2", Some(1));
        assert_eq!(c.mentions, vec![UserId::parse("P1001").unwrap()]);
        match &c.body {
            ContentBody::Text {
                links, reply_to, ..
            } => {
                assert_eq!(links, &vec!["rathaus://bauamt/2".to_owned()]);
                assert_eq!(*reply_to, Some(1));
            }
            other => panic!("{other:?}"),
        }
        assert!(c.validate().is_ok());
    }

    #[test]
    fn sizes_are_bounded() {
        let mut c = Content::post("hallo", None);
        c.mentions = (0..=MAX_MENTIONS)
            .map(|i| UserId::parse(&format!("P{i}")).unwrap())
            .collect();
        assert!(c.validate().is_err());
        let mut c = Content::post("hallo", None);
        if let ContentBody::Text { links, .. } = &mut c.body {
            *links = (1..=MAX_LINKS as u64 + 1)
                .map(|i| format!("rathaus://bauamt/{i}"))
                .collect();
        }
        assert!(c.validate().is_err());
        let mut c = Content::post("hallo", None);
        if let ContentBody::Text { links, .. } = &mut c.body {
            *links = vec!["rathaus://nicht ok".into()];
        }
        assert!(c.validate().is_err());
        assert!(Content::reaction(1, "👍").validate().is_ok());
        assert!(Content::reaction(1, "👩‍🔧").validate().is_ok());
        assert!(Content::reaction(1, "").validate().is_err());
        assert!(Content::reaction(1, "sehr gut gemacht").validate().is_err());
        assert!(Content::reaction(1, "\u{1b}[31m").validate().is_err());
        assert!(Content::edit(1, " ").validate().is_err());
    }

    /// Posts stored by format 1 (one optional link) decode as posts with a list of links.
    #[test]
    fn format_one_posts_decode_with_their_link() {
        #[derive(Serialize)]
        enum OldBody {
            Text {
                text: String,
                reply_to: Option<u64>,
                link: Option<String>,
            },
        }
        #[derive(Serialize)]
        struct Old {
            version: u8,
            body: OldBody,
            mentions: Vec<UserId>,
        }
        for link in [None, Some("rathaus://bauamt/1".to_owned())] {
            let old = Old {
                version: 1,
                body: OldBody::Text {
                    text: "alt".into(),
                    reply_to: Some(3),
                    link: link.clone(),
                },
                mentions: vec![],
            };
            let bytes = postcard::to_allocvec(&old).unwrap();
            let new: Content = postcard::from_bytes(&bytes).unwrap();
            assert_eq!(
                new.body,
                ContentBody::Text {
                    text: "alt".into(),
                    reply_to: Some(3),
                    links: link.into_iter().collect(),
                }
            );
        }
    }

    #[test]
    fn invalid_content_does_not_decode_but_its_wire_shape_does() {
        let broken = [
            Content::text("   "),
            Content::reaction(1, "sehr gut gemacht"),
            Content::edit(1, ""),
        ];
        for content in broken {
            let bytes = postcard::to_allocvec(&content).unwrap();
            assert!(
                postcard::from_bytes::<Content>(&bytes).is_err(),
                "{content:?}"
            );
            // The same bytes as the unchecked wire shape, which names the broken rule.
            let wire: ContentIn = postcard::from_bytes(&bytes).unwrap();
            assert_eq!(postcard::to_allocvec(&wire).unwrap(), bytes);
            assert_eq!(
                wire.clone().validate(),
                Err(content.validate().unwrap_err())
            );
            assert_eq!(
                Content::try_from(wire),
                Err(content.validate().unwrap_err())
            );
        }
        let fine = Content::post("Hallo @P1001, siehe rathaus://bauamt/3", Some(2));
        let bytes = postcard::to_allocvec(&fine).unwrap();
        assert_eq!(postcard::from_bytes::<Content>(&bytes).unwrap(), fine);
        let wire: ContentIn = postcard::from_bytes(&bytes).unwrap();
        assert_eq!(wire.validate().unwrap(), fine);
    }

    #[test]
    fn a_recorded_log_entry_reads_back_under_the_rules_it_was_accepted_by() {
        use crate::messages::{EntryBody, PostBody};
        // Release 0.1.0 accepted reactions of up to 32 bytes, spaces included.
        let old = Content::reaction(4, "sehr gut");
        let entry = EntryBody::Content(old.clone());
        let bytes = postcard::to_allocvec(&entry).unwrap();
        assert_eq!(postcard::from_bytes::<EntryBody>(&bytes).unwrap(), entry);
        // A new post carries the unchecked shape; the server's check refuses it.
        let post = PostBody::Public(old.clone().into());
        let bytes = postcard::to_allocvec(&post).unwrap();
        match postcard::from_bytes::<PostBody>(&bytes).unwrap() {
            PostBody::Public(content) => assert!(content.validate().is_err()),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn text_rules() {
        assert!(Content::text("Guten Morgen").validate().is_ok());
        assert!(Content::text("   ").validate().is_err());
        assert!(Content::text("x".repeat(MAX_TEXT + 1)).validate().is_err());
    }
}
