//! The document library: folders and documents every colleague reads; documents move as
//! blobs of scope `Docs` through the same chunked, resumable path as attachments.
//! A post links a document as `rathaus://docs/PATH`.

use std::path::Path;

use rathaus_protocol::{BlobScope, DocEntry, DocKind, DocPath, ErrorCode, Request, Response};

use super::{DownloadedFile, Progress, TransferStats};
use crate::client::Client;
use crate::error::{ClientError, Result};

/// How a link to a library document starts.
pub const DOCS_LINK_PREFIX: &str = "rathaus://docs/";

/// The library path a `rathaus://docs/PATH` link names; `None` for other links, an error
/// for a docs link with an invalid path.
pub fn docs_link_path(link: &str) -> Option<Result<DocPath>> {
    let rest = link.strip_prefix(DOCS_LINK_PREFIX)?;
    Some(DocPath::parse(rest).map_err(|e| ClientError::Invalid(e.to_string())))
}

/// A document stored in the library by [`Client::docs_put`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PutDocument {
    /// Its path.
    pub path: DocPath,
    /// Its size.
    pub size: u64,
    /// Its SHA-256.
    pub sha256: [u8; 32],
    /// The transfer.
    pub stats: TransferStats,
}

impl Client {
    /// The entries of library folder `path` (or the entry of the document at `path`).
    pub async fn docs_list(&mut self, path: &DocPath) -> Result<Vec<DocEntry>> {
        match self
            .request(&Request::DocList { path: path.clone() })
            .await?
        {
            Response::DocEntries(entries) => Ok(entries),
            _ => Err(ClientError::UnexpectedResponse("DocList")),
        }
    }

    /// Creates library folder `path`.
    pub async fn docs_mkdir(&mut self, path: &DocPath) -> Result<()> {
        self.docs_done(Request::DocMkdir { path: path.clone() }, "DocMkdir")
            .await
    }

    /// Removes the document or empty folder at `path`.
    pub async fn docs_remove(&mut self, path: &DocPath) -> Result<()> {
        self.docs_done(Request::DocRemove { path: path.clone() }, "DocRemove")
            .await
    }

    /// Uploads `file` and stores it as the document `path` (replacing an earlier one).
    pub async fn docs_put(
        &mut self,
        path: &DocPath,
        file: &Path,
        progress: &mut dyn FnMut(Progress),
    ) -> Result<PutDocument> {
        let uploaded = self
            .upload_blob(&BlobScope::Document(path.clone()), file, false, progress)
            .await?;
        self.docs_done(
            Request::DocPut {
                path: path.clone(),
                blob: uploaded.blob,
            },
            "DocPut",
        )
        .await?;
        Ok(PutDocument {
            path: path.clone(),
            size: uploaded.size,
            sha256: uploaded.sha256,
            stats: uploaded.stats,
        })
    }

    /// Downloads the document `path` to `out` (default: its name in the current
    /// directory, which must not exist yet), checking its SHA-256.
    pub async fn docs_get(
        &mut self,
        path: &DocPath,
        out: Option<&Path>,
        progress: &mut dyn FnMut(Progress),
    ) -> Result<DownloadedFile> {
        let entries = self.docs_list(path).await?;
        let (blob, size) = match entries.as_slice() {
            [DocEntry {
                path: p,
                kind: DocKind::Document { blob, size },
                ..
            }] if p == path => (*blob, *size),
            _ => {
                return Err(ClientError::Server {
                    code: ErrorCode::Invalid,
                    message: format!("{path} is a folder, not a document"),
                })
            }
        };
        let target = match out {
            Some(p) => p.to_path_buf(),
            None => {
                let p = std::path::PathBuf::from(path.name());
                if p.exists() {
                    return Err(ClientError::Invalid(format!(
                        "{} exists already; choose another name with --out",
                        p.display()
                    )));
                }
                p
            }
        };
        // Library documents are stored as they are: the blob's name is their SHA-256.
        self.download_blob(&BlobScope::Docs, blob, size, blob, None, &target, progress)
            .await
    }

    /// Follows a `rathaus://docs/PATH` link: downloads the document like
    /// [`Client::docs_get`]. Other links are refused as invalid.
    pub async fn open_docs_link(
        &mut self,
        link: &str,
        out: Option<&Path>,
        progress: &mut dyn FnMut(Progress),
    ) -> Result<DownloadedFile> {
        let path = docs_link_path(link).ok_or_else(|| {
            ClientError::Invalid(format!("{link} is not a link to the document library"))
        })??;
        self.docs_get(&path, out, progress).await
    }

    async fn docs_done(&mut self, request: Request, what: &'static str) -> Result<()> {
        match self.request(&request).await? {
            Response::Done => Ok(()),
            _ => Err(ClientError::UnexpectedResponse(what)),
        }
    }
}
