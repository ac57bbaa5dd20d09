//! Filling an empty index from the store: every readable entry of every public group
//! (of live and retired departments) and of `announcements`, and every document of the
//! library.

use std::collections::HashMap;

use rathaus_protocol::{DocKind, DocPath, GroupHandle, UserId};

use super::IndexDoc;
use crate::store::{Db, StoreError};

/// Entries read from the store per step.
const PAGE: usize = 1000;

/// Hands every indexable entry of the store to `put`; returns how many there were.
pub(super) fn fill(db: &Db, put: &mut dyn FnMut(IndexDoc)) -> Result<u64, StoreError> {
    let mut groups = vec![GroupHandle::Announcements];
    groups.extend(
        db.departments()?
            .into_iter()
            .map(|d| GroupHandle::Public(d.slug)),
    );
    groups.extend(
        db.retired_departments()?
            .into_iter()
            .map(|d| GroupHandle::Public(d.slug)),
    );
    let mut count = 0;
    for group in &groups {
        let mut since = 0;
        loop {
            let page = db.entries(group, since, PAGE)?;
            let Some((last, _, _)) = page.last() else {
                break;
            };
            since = *last;
            for (seq, entry, _) in &page {
                if let Some(doc) = IndexDoc::for_entry(group, *seq, entry) {
                    put(doc);
                    count += 1;
                }
            }
        }
    }
    // The library, folder by folder (depth is bounded by the path's length); each
    // uploader's name is read once.
    let mut names: HashMap<UserId, String> = HashMap::new();
    let mut folders = vec![DocPath::root()];
    while let Some(folder) = folders.pop() {
        for entry in db.doc_children(&folder, usize::MAX)? {
            match entry.kind {
                DocKind::Folder => folders.push(entry.path),
                DocKind::Document { .. } => {
                    if !names.contains_key(&entry.updated_by) {
                        let name = db.user(&entry.updated_by)?.map(|u| u.name);
                        names.insert(entry.updated_by.clone(), name.unwrap_or_default());
                    }
                    let name = names.get(&entry.updated_by).map_or("", String::as_str);
                    put(IndexDoc::document(
                        &entry.path,
                        &entry.updated_by,
                        name,
                        entry.updated_ms,
                    ));
                    count += 1;
                }
            }
        }
    }
    Ok(count)
}
