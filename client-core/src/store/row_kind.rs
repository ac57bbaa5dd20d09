//! What a timeline row shows: a post, a change of a post, or a row this device wrote
//! itself (membership changes, warnings, notices).
//!
//! The `kind` column of the profile's `timeline` and `trust_notices` tables holds
//! [`RowKind::as_str`], the same string `read --json` prints (DESIGN §9), so profiles
//! written before this type existed read unchanged. The SQL of `crate::store` names
//! kinds by these strings too (`kind IN ('text', 'attachment')`).

use std::fmt;

use rathaus_protocol::{Content, ContentBody};
use rusqlite::types::{FromSql, FromSqlError, FromSqlResult, ToSql, ToSqlOutput, ValueRef};

/// The kind of a [`TimelineRow`](super::TimelineRow).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RowKind {
    /// A text post (public or secret).
    Text,
    /// An edit of an earlier post of the same sender.
    Edit,
    /// A delete of an earlier post of the same sender, as sent.
    Delete,
    /// A reaction to a post (given or taken back).
    Reaction,
    /// A post with a file.
    Attachment,
    /// A published announcement.
    Announcement,
    /// An MLS message of a secret group as the server holds it, not (yet) processed here.
    Mls,
    /// A post its author withdrew: it keeps its place without text.
    Deleted,
    /// A post a moderator removed.
    Removed,
    /// The moderator's entry that removed a post.
    Moderation,
    /// A change of a secret group's members or policy, as this device judged it.
    Membership,
    /// Something this device refused or found wrong (a key change, a refused commit, …).
    Warning,
    /// Something worth knowing that is not wrong (a new device of a known colleague).
    Notice,
    /// A secret message this device could not decrypt.
    Undecryptable,
}

/// A stored kind this build does not know (the profile was written by a newer Rathaus
/// or edited by hand).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown timeline row kind {0:?} (written by a newer Rathaus?)")]
pub struct UnknownRowKind(pub String);

impl RowKind {
    /// Every kind, in declaration order.
    pub const ALL: [RowKind; 14] = [
        RowKind::Text,
        RowKind::Edit,
        RowKind::Delete,
        RowKind::Reaction,
        RowKind::Attachment,
        RowKind::Announcement,
        RowKind::Mls,
        RowKind::Deleted,
        RowKind::Removed,
        RowKind::Moderation,
        RowKind::Membership,
        RowKind::Warning,
        RowKind::Notice,
        RowKind::Undecryptable,
    ];

    /// The stable name: stored in the profile and printed by `read --json`.
    pub const fn as_str(self) -> &'static str {
        match self {
            RowKind::Text => "text",
            RowKind::Edit => "edit",
            RowKind::Delete => "delete",
            RowKind::Reaction => "reaction",
            RowKind::Attachment => "attachment",
            RowKind::Announcement => "announcement",
            RowKind::Mls => "mls",
            RowKind::Deleted => "deleted",
            RowKind::Removed => "removed",
            RowKind::Moderation => "moderation",
            RowKind::Membership => "membership",
            RowKind::Warning => "warning",
            RowKind::Notice => "notice",
            RowKind::Undecryptable => "undecryptable",
        }
    }

    /// The kind named `name` ([`RowKind::as_str`]).
    pub fn parse(name: &str) -> Result<Self, UnknownRowKind> {
        RowKind::ALL
            .into_iter()
            .find(|k| k.as_str() == name)
            .ok_or_else(|| UnknownRowKind(name.to_owned()))
    }

    /// The kind of a row showing `content`.
    pub fn of(content: &Content) -> Self {
        match &content.body {
            ContentBody::Text { .. } => RowKind::Text,
            ContentBody::Edit { .. } => RowKind::Edit,
            ContentBody::Delete { .. } => RowKind::Delete,
            ContentBody::Reaction { .. } => RowKind::Reaction,
            ContentBody::Attachment { .. } => RowKind::Attachment,
            ContentBody::Announcement { .. } => RowKind::Announcement,
        }
    }

    /// Whether the row changes an earlier post rather than being one.
    pub fn is_change(self) -> bool {
        matches!(self, RowKind::Edit | RowKind::Delete | RowKind::Reaction)
    }
}

impl fmt::Display for RowKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl ToSql for RowKind {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(ToSqlOutput::Borrowed(ValueRef::Text(
            self.as_str().as_bytes(),
        )))
    }
}

impl FromSql for RowKind {
    fn column_result(value: ValueRef<'_>) -> FromSqlResult<Self> {
        let name = value.as_str()?;
        RowKind::parse(name).map_err(|e| FromSqlError::Other(Box::new(e)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_reads_back_from_its_name() {
        for kind in RowKind::ALL {
            assert_eq!(RowKind::parse(kind.as_str()), Ok(kind));
            assert_eq!(kind.to_string(), kind.as_str());
        }
        assert_eq!(
            RowKind::parse("post"),
            Err(UnknownRowKind("post".to_owned()))
        );
    }

    #[test]
    fn kinds_of_content_are_the_protocol_names() {
        let text = Content::text("hallo");
        assert_eq!(RowKind::of(&text), RowKind::Text);
        assert_eq!(RowKind::of(&text).as_str(), text.kind());
        let edit = Content::edit(1, "neu");
        assert_eq!(RowKind::of(&edit).as_str(), edit.kind());
    }

    /// The kinds the store's SQL names by their strings (`kind IN ('text', …)`), taken
    /// from its source outside the tests.
    fn kinds_named_in_sql(source: &str) -> Vec<String> {
        let code = source.split("#[cfg(test)]").next().unwrap_or(source);
        let mut names = Vec::new();
        for line in code.lines().filter(|l| l.contains("kind")) {
            let Some(at) = line.find("kind") else {
                continue;
            };
            // Every quoted word after `kind` on the line: `kind = 'x'`, `kind IN ('x', 'y')`.
            let mut rest = &line[at..];
            while let Some(open) = rest.find('\'') {
                let Some(len) = rest[open + 1..].find('\'') else {
                    break;
                };
                let word = &rest[open + 1..open + 1 + len];
                if !word.is_empty() && word.bytes().all(|b| b.is_ascii_lowercase()) {
                    names.push(word.to_owned());
                }
                rest = &rest[open + len + 2..];
            }
        }
        names
    }

    #[test]
    fn every_kind_the_store_names_in_sql_is_a_row_kind() {
        let mut named = kinds_named_in_sql(include_str!("mod.rs"));
        for source in [
            include_str!("fork.rs"),
            include_str!("outbox.rs"),
            include_str!("schema.rs"),
            include_str!("search.rs"),
        ] {
            named.extend(kinds_named_in_sql(source));
        }
        for kind in [
            "text",
            "announcement",
            "removed",
            "deleted",
            "edit",
            "warning",
        ] {
            assert!(
                named.iter().any(|n| n == kind),
                "{kind} not found in {named:?}"
            );
        }
        for name in named {
            assert!(
                RowKind::parse(&name).is_ok(),
                "the store's SQL names a kind {name:?} that RowKind does not know"
            );
        }
    }
}
