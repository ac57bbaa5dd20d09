//! Size and count limits shared by both ends of a connection.

/// Largest control frame body (requests, responses, events), in bytes.
pub const MAX_CONTROL_FRAME: usize = 1024 * 1024;

/// Largest attachment chunk carried by one frame, in bytes.
pub const MAX_ATTACHMENT_CHUNK: usize = 256 * 1024;

/// Largest text of one message, in bytes (UTF-8).
pub const MAX_TEXT: usize = 64 * 1024;

/// Largest opaque payload of one post (an MLS message for secret groups), in bytes.
pub const MAX_POST_PAYLOAD: usize = 512 * 1024;

/// Most entries returned by one `Fetch`.
pub const MAX_FETCH: u32 = 1000;

/// Longest display name, in bytes.
pub const MAX_NAME: usize = 128;

/// Longest password accepted, in bytes (Argon2 works on any length; this bounds the work).
pub const MAX_PASSWORD: usize = 1024;

/// Shortest password accepted at enrollment, in characters.
pub const MIN_PASSWORD: usize = 8;

/// Most departments, roles, owners or mentions in one request.
pub const MAX_LIST: usize = 256;

/// Most rows in one `ImportUsers` request (a client sends a large file in chunks; the
/// control-frame limit bounds the bytes as well).
pub const MAX_IMPORT_ROWS: usize = 1000;

/// Longest search query, in bytes.
pub const MAX_SEARCH_QUERY: usize = 256;

/// Most words of a search query that are looked for (the rest are ignored), which bounds
/// the work of one search.
pub const MAX_SEARCH_TERMS: usize = 16;

/// Search results returned when the request does not say.
pub const DEFAULT_SEARCH_RESULTS: u32 = 20;

/// Most search results one request returns.
pub const MAX_SEARCH_RESULTS: u32 = 100;
