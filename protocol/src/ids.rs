//! Validated identifiers. Each one can only be constructed through its parser, and
//! deserialization goes through the same parser, so a handler never sees an invalid id.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Why a string is not a valid identifier.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {what} {value:?}: {rule}")]
pub struct InvalidId {
    /// Which kind of identifier.
    pub what: &'static str,
    /// The rejected input (truncated to 80 characters).
    pub value: String,
    /// The rule it breaks.
    pub rule: &'static str,
}

impl InvalidId {
    fn new(what: &'static str, value: &str, rule: &'static str) -> Self {
        Self {
            what,
            value: value.chars().take(80).collect(),
            rule,
        }
    }
}

/// A user's personnel number: `[A-Za-z0-9._-]{1,64}`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct UserId(String);

impl UserId {
    /// Parses a personnel number.
    pub fn parse(s: &str) -> Result<Self, InvalidId> {
        const RULE: &str = "1 to 64 of A-Z a-z 0-9 . _ -";
        if s.is_empty() || s.len() > 64 {
            return Err(InvalidId::new("user id", s, RULE));
        }
        if !s
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
        {
            return Err(InvalidId::new("user id", s, RULE));
        }
        Ok(Self(s.to_owned()))
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A department's short name, used as the public group's handle: `[a-z][a-z0-9-]{0,31}`,
/// never `announcements`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct DepartmentSlug(String);

impl DepartmentSlug {
    /// Parses a department slug.
    pub fn parse(s: &str) -> Result<Self, InvalidId> {
        const RULE: &str =
            "a lowercase letter, then up to 31 of a-z 0-9 -; not \"announcements\" or \"room\"";
        let mut bytes = s.bytes();
        let first_ok = bytes.next().is_some_and(|b| b.is_ascii_lowercase());
        let rest_ok = bytes.all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
        if !first_ok || !rest_ok || s.len() > 32 || s == ANNOUNCEMENTS || s == ROOM {
            return Err(InvalidId::new("department", s, RULE));
        }
        Ok(Self(s.to_owned()))
    }

    /// The slug as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether a new department may not take this name, because a link names something
    /// else with it: `rathaus://docs/PATH` is the document library. Records that carry
    /// such a slug already still decode; only creating one is refused.
    pub fn is_reserved_for_departments(&self) -> bool {
        RESERVED_FOR_DEPARTMENTS.contains(&self.0.as_str())
    }
}

/// Names no new department takes (see [`DepartmentSlug::is_reserved_for_departments`]).
pub const RESERVED_FOR_DEPARTMENTS: &[&str] = &["docs"];

const ANNOUNCEMENTS: &str = "announcements";
const SECRET_SUFFIX: &str = "/secret";
const ROOM: &str = "room";
const ROOM_PREFIX: &str = "room/";

/// A group handle: `bauamt` (public department group), `bauamt/secret` (secret group) or
/// `announcements`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum GroupHandle {
    /// The organisation-wide announcements group.
    Announcements,
    /// A department's public group.
    Public(DepartmentSlug),
    /// A department's MLS-encrypted secret group.
    Secret(DepartmentSlug),
    /// A secret project room not tied to a department (`room/slug`), MLS-encrypted like
    /// a secret group; its creator owns it and invites colleagues from any department.
    Room(DepartmentSlug),
}

impl GroupHandle {
    /// Parses a handle as typed by users.
    pub fn parse(s: &str) -> Result<Self, InvalidId> {
        if s == ANNOUNCEMENTS {
            return Ok(Self::Announcements);
        }
        if let Some(slug) = s.strip_prefix(ROOM_PREFIX) {
            return DepartmentSlug::parse(slug)
                .map(Self::Room)
                .map_err(|_| InvalidId::new("group", s, GROUP_RULE));
        }
        if let Some(slug) = s.strip_suffix(SECRET_SUFFIX) {
            return DepartmentSlug::parse(slug)
                .map(Self::Secret)
                .map_err(|_| InvalidId::new("group", s, GROUP_RULE));
        }
        DepartmentSlug::parse(s)
            .map(Self::Public)
            .map_err(|_| InvalidId::new("group", s, GROUP_RULE))
    }

    /// The department this group belongs to, if any.
    pub fn department(&self) -> Option<&DepartmentSlug> {
        match self {
            Self::Announcements | Self::Room(_) => None,
            Self::Public(d) | Self::Secret(d) => Some(d),
        }
    }

    /// The project room's slug, if this is a room.
    pub fn room(&self) -> Option<&DepartmentSlug> {
        match self {
            Self::Room(r) => Some(r),
            _ => None,
        }
    }

    /// Whether this is an MLS secret group (a department's secret group or a room).
    pub fn is_secret(&self) -> bool {
        matches!(self, Self::Secret(_) | Self::Room(_))
    }
}

const GROUP_RULE: &str =
    "\"announcements\", a department like \"bauamt\", \"bauamt/secret\", or a room like \"room/sanierung\"";

impl fmt::Display for GroupHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Announcements => f.write_str(ANNOUNCEMENTS),
            Self::Public(d) => f.write_str(d.as_str()),
            Self::Secret(d) => write!(f, "{}{SECRET_SUFFIX}", d.as_str()),
            Self::Room(r) => write!(f, "{ROOM_PREFIX}{}", r.as_str()),
        }
    }
}

macro_rules! string_id {
    ($t:ty) => {
        impl TryFrom<String> for $t {
            type Error = InvalidId;
            fn try_from(s: String) -> Result<Self, Self::Error> {
                Self::parse(&s)
            }
        }
        impl From<$t> for String {
            fn from(v: $t) -> String {
                v.to_string()
            }
        }
        impl std::str::FromStr for $t {
            type Err = InvalidId;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Self::parse(s)
            }
        }
    };
}

impl fmt::Display for UserId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Display for DepartmentSlug {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

string_id!(UserId);
string_id!(DepartmentSlug);
string_id!(GroupHandle);

/// A device of a user, numbered by the server at enrollment (unique per server).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct DeviceId(pub u64);

impl fmt::Display for DeviceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// A device's Ed25519 public key (32 bytes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct DeviceKey(pub [u8; 32]);

/// An Ed25519 signature (64 bytes). Carried as bytes and length-checked on decode.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "Vec<u8>", into = "Vec<u8>")]
pub struct Signature(Vec<u8>);

impl Signature {
    /// Wraps 64 signature bytes.
    pub fn new(bytes: [u8; 64]) -> Self {
        Self(bytes.to_vec())
    }

    /// The 64 signature bytes.
    pub fn to_bytes(&self) -> [u8; 64] {
        let mut out = [0u8; 64];
        // Length is checked at construction (`new` and `try_from`).
        out.copy_from_slice(&self.0);
        out
    }
}

impl TryFrom<Vec<u8>> for Signature {
    type Error = InvalidId;
    fn try_from(v: Vec<u8>) -> Result<Self, Self::Error> {
        if v.len() != 64 {
            return Err(InvalidId::new("signature", "", "exactly 64 bytes"));
        }
        Ok(Self(v))
    }
}

impl From<Signature> for Vec<u8> {
    fn from(s: Signature) -> Vec<u8> {
        s.0
    }
}

/// A client-generated message id (128 random bits) that makes a retried send idempotent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ClientMsgId(pub [u8; 16]);

impl fmt::Display for ClientMsgId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

/// A role of a user. Roles add up: an admin is also a member.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Role {
    /// Every colleague: reads and posts in public groups.
    Member,
    /// May propose announcements.
    Author,
    /// Communications office: approves, rejects and publishes announcements.
    Editor,
    /// IT: provisions and offboards; cannot read secret groups.
    Admin,
}

impl Role {
    /// The role's name as typed in the CLI.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Member => "member",
            Role::Author => "author",
            Role::Editor => "editor",
            Role::Admin => "admin",
        }
    }

    /// Parses a role name.
    pub fn parse(s: &str) -> Result<Self, InvalidId> {
        match s {
            "member" => Ok(Role::Member),
            "author" => Ok(Role::Author),
            "editor" => Ok(Role::Editor),
            "admin" => Ok(Role::Admin),
            _ => Err(InvalidId::new("role", s, "member, author, editor or admin")),
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Role {
    type Err = InvalidId;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_ids() {
        assert!(UserId::parse("P1001").is_ok());
        assert!(UserId::parse("anna.berg_2-x").is_ok());
        assert!(UserId::parse("").is_err());
        assert!(UserId::parse(&"a".repeat(65)).is_err());
        assert!(UserId::parse("anna berg").is_err());
        assert!(UserId::parse("ä").is_err());
    }

    #[test]
    fn group_handles() {
        assert_eq!(
            GroupHandle::parse("bauamt").unwrap(),
            GroupHandle::Public(DepartmentSlug::parse("bauamt").unwrap())
        );
        assert!(GroupHandle::parse("bauamt/secret").unwrap().is_secret());
        assert_eq!(
            GroupHandle::parse("announcements").unwrap(),
            GroupHandle::Announcements
        );
        assert!(GroupHandle::parse("announcements/secret").is_err());
        assert!(GroupHandle::parse("Bauamt").is_err());
        assert!(GroupHandle::parse("bauamt/other").is_err());
        assert!(GroupHandle::parse("").is_err());
        for s in ["bauamt", "bauamt/secret", "announcements"] {
            assert_eq!(GroupHandle::parse(s).unwrap().to_string(), s);
        }
    }

    #[test]
    fn invalid_ids_do_not_decode() {
        let bytes = postcard::to_allocvec(&"not valid!".to_string()).unwrap();
        assert!(postcard::from_bytes::<UserId>(&bytes).is_err());
        let bytes = postcard::to_allocvec(&vec![0u8; 63]).unwrap();
        assert!(postcard::from_bytes::<Signature>(&bytes).is_err());
    }
}
