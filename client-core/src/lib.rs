//! Everything a Rathaus client app needs: the connection to the server ([`net`]), the
//! local profile store ([`store`]), and synchronisation ([`Client`]: outbox, cursors,
//! timeline, events). The `rathaus` CLI is a thin shell over this crate; a phone app would
//! embed it the same way.
//!
//! A profile is a directory holding the device key (`device.key`, mode 0600) and one
//! SQLite file with settings, cursors, the timeline, the outbox, the MLS state and the
//! pinned device keys of colleagues ([`trust`]).
//!
//! ```no_run
//! # async fn demo() -> Result<(), rathaus_client::ClientError> {
//! use rathaus_client::Client;
//! use rathaus_protocol::GroupHandle;
//!
//! let mut client = Client::open(std::path::Path::new("/home/anna/.rathaus"))?;
//! let bauamt = GroupHandle::parse("bauamt").map_err(|e| rathaus_client::ClientError::Invalid(e.to_string()))?;
//! client.send_text(&bauamt, "Die Baustelle ist ab Montag gesperrt.").await?;
//! for row in client.read(&bauamt).await? {
//!     println!("{} {}: {}", row.seq, row.sender_name, row.text);
//! }
//! # Ok(()) }
//! ```
#![deny(missing_docs)]

mod announce;
mod client;
mod devices;
pub mod error;
pub mod files;
pub mod import;
pub mod mls;
pub mod net;
pub mod posts;
mod restore;
mod search;
mod secret;
pub mod store;
mod sync;
pub mod time_fmt;
pub mod trust;

pub use announce::AnnouncementDraft;
pub use client::{CatchUp, Client, EnrollOptions, GroupView, Identity};
pub use devices::{LinkedDevice, OwnDevice};
pub use error::{ClientError, Result};
pub use files::{Attachment, DownloadedFile, Progress, SentFile, TransferStats};
pub use import::{parse_import, ImportFile, ImportReport, ImportedUser, RefusedRow};
pub use net::{CaTrust, ServerTrust};
pub use search::{Found, SearchResult, Searched};
pub use secret::{
    key_fingerprint, mls_group_id, Approval, GroupPolicy, PolicyOutcome, SecretDevice,
    SecretGroupView, SecretMember, KEY_PACKAGE_LOW, KEY_PACKAGE_TARGET,
};
pub use store::{LocalHit, RowKind, TimelineRow};
pub use sync::{QueuedMessage, SendFailure, SendOutcome, SendReceipt, SyncReport};
