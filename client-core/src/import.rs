//! Bulk provisioning from an HR export (`rathaus admin user import FILE.csv`).
//!
//! The file is what German spreadsheets and HR systems write: UTF-8 (a byte-order mark is
//! fine), fields separated by `;`, one colleague per line:
//!
//! ```text
//! Personalnummer;Name;Abteilungen;Rollen
//! P1001;Anna Berg;bauamt;author
//! P1002;Jonas Weber;Bauamt,Kämmerei;
//! ```
//!
//! The header line is optional (recognised by its first field); departments are given by
//! slug or display name, several separated by `,` inside the field; the roles column may be
//! empty or missing. A line that cannot be read is refused with its line number and the
//! others are imported. Parsing happens here, so the server only ever sees typed
//! [`ImportRow`]s; the rows go to the server in chunks that each fit one control frame,
//! and the server decides each chunk in one atomic batch (see the server's `import`
//! module for what a row that exists already does).

use std::collections::HashMap;

use rathaus_protocol::limits::{MAX_CONTROL_FRAME, MAX_IMPORT_ROWS};
use rathaus_protocol::{
    DepartmentInfo, DepartmentSlug, ImportOutcome, ImportRow, Request, Response, Role, UserId,
};

use crate::client::Client;
use crate::error::{ClientError, Result};

/// Rows per request: a tenth of the server's cap keeps the progress bar moving and each
/// batch short, while 5,000 rows still need only ten round trips and flushes.
const CHUNK_ROWS: usize = 500;

/// Encoded bytes per request, well under the control-frame limit (the answer carries a
/// code and maybe a reason per row, also well under it).
const CHUNK_BYTES: usize = MAX_CONTROL_FRAME / 2;

/// A parsed import file: the rows to send and the lines refused while reading it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ImportFile {
    /// Rows that parsed, in file order.
    pub rows: Vec<ImportRow>,
    /// Lines that did not, with the reason.
    pub refused: Vec<RefusedRow>,
}

/// A line that was not imported.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefusedRow {
    /// Its line in the file (1-based).
    pub line: u32,
    /// Why.
    pub reason: String,
}

/// A colleague created by an import, with what an enrollment letter needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImportedUser {
    /// The line in the file.
    pub line: u32,
    /// Personnel number.
    pub user: UserId,
    /// Display name.
    pub name: String,
    /// Departments.
    pub departments: Vec<DepartmentSlug>,
    /// One-time enrollment code.
    pub enrollment_code: String,
    /// When it expires, Unix ms.
    pub expires_at_ms: i64,
}

/// What an import did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ImportReport {
    /// Colleagues created, in file order.
    pub created: Vec<ImportedUser>,
    /// Rows whose colleague exists exactly so already.
    pub unchanged: usize,
    /// Lines refused (while reading the file or by the server), by line number.
    pub refused: Vec<RefusedRow>,
    /// Why the import stopped before the end, if it did; the rows not confirmed by the
    /// server are in `refused`.
    pub interrupted: Option<String>,
}

/// Reads an import file. `departments` resolves display names to slugs (a field that is
/// a slug of a listed department, or the name of one ignoring case, names it; anything
/// else is sent as a slug, and the server refuses an unknown one).
pub fn parse_import(bytes: &[u8], departments: &[DepartmentInfo]) -> ImportFile {
    let bytes = bytes.strip_prefix(b"\xef\xbb\xbf").unwrap_or(bytes);
    let by_name: HashMap<String, &DepartmentSlug> = departments
        .iter()
        .map(|d| (d.name.to_lowercase(), &d.slug))
        .collect();
    let mut reader = csv::ReaderBuilder::new()
        .delimiter(b';')
        .has_headers(false)
        .flexible(true)
        .trim(csv::Trim::All)
        .from_reader(bytes);
    let mut file = ImportFile::default();
    let mut lines = LineCounter::default();
    let mut first = true;
    for record in reader.records() {
        let (line, record) = match record {
            Ok(r) => (r.position().map_or(0, |p| lines.line_at(bytes, p)), r),
            Err(e) => {
                let line = e.position().map_or(0, |p| lines.line_at(bytes, p));
                let reason = match e.kind() {
                    csv::ErrorKind::Utf8 { .. } => {
                        "the line is not UTF-8 text (save the file as \"CSV UTF-8\")".to_owned()
                    }
                    _ => format!("cannot read the line: {e}"),
                };
                file.refused.push(RefusedRow { line, reason });
                first = false;
                continue;
            }
        };
        if record.iter().all(str::is_empty) {
            continue;
        }
        if std::mem::take(&mut first) && is_header(&record) {
            continue;
        }
        match parse_row(line, &record, departments, &by_name) {
            Ok(row) => file.rows.push(row),
            Err(reason) => file.refused.push(RefusedRow { line, reason }),
        }
    }
    file
}

impl Client {
    /// Admin: imports a parsed file, `progress(done, total)` after each chunk. Refusals of
    /// single rows are in the report. A failure of a whole request (the connection lost)
    /// stops the import with the reason in [`ImportReport::interrupted`]: the chunks before
    /// it are imported and their codes reported, the rows from the failed chunk on are
    /// refused as not confirmed. Running the import again finishes it (rows done already
    /// come back `unchanged`); a colleague whose creation was not confirmed gets a new code
    /// with `admin user reset`. Only a refusal of the import as such (not an admin) is an
    /// error.
    pub async fn admin_import_users(
        &mut self,
        file: ImportFile,
        mut progress: impl FnMut(usize, usize),
    ) -> Result<ImportReport> {
        let total = file.rows.len();
        let mut report = ImportReport {
            refused: file.refused,
            ..ImportReport::default()
        };
        let mut names: HashMap<u32, (String, Vec<DepartmentSlug>)> = HashMap::new();
        let mut done = 0;
        progress(0, total);
        let mut pending = chunks(file.rows).into_iter();
        while let Some(chunk) = pending.next() {
            let n = chunk.len();
            let lines: Vec<u32> = chunk.iter().map(|r| r.line).collect();
            for row in &chunk {
                names.insert(row.line, (row.name.clone(), row.departments.clone()));
            }
            let results = match self.request(&Request::ImportUsers { rows: chunk }).await {
                Ok(Response::Imported(results)) => results,
                Ok(_) => return Err(ClientError::UnexpectedResponse("ImportUsers")),
                Err(e) if done == 0 && e.code().is_some() => return Err(e),
                Err(e) => {
                    let reason = format!(
                        "not confirmed by the server ({e}); run the import again (a colleague \
                         it created meanwhile shows as unchanged and gets a code with \
                         `rathaus admin user reset`)"
                    );
                    let rest = pending.flatten().map(|r| r.line);
                    for line in lines.into_iter().chain(rest) {
                        report.refused.push(RefusedRow {
                            line,
                            reason: reason.clone(),
                        });
                    }
                    report.interrupted = Some(e.to_string());
                    break;
                }
            };
            for r in results {
                match r.outcome {
                    ImportOutcome::Created {
                        enrollment_code,
                        expires_at_ms,
                    } => {
                        let (name, departments) = names.remove(&r.line).unwrap_or_default();
                        report.created.push(ImportedUser {
                            line: r.line,
                            user: r.user,
                            name,
                            departments,
                            enrollment_code,
                            expires_at_ms,
                        });
                    }
                    ImportOutcome::Unchanged => report.unchanged += 1,
                    ImportOutcome::Refused { reason } => report.refused.push(RefusedRow {
                        line: r.line,
                        reason,
                    }),
                }
            }
            done += n;
            progress(done, total);
        }
        report.refused.sort_by_key(|r| r.line);
        Ok(report)
    }

    /// Admin: changes a department's display name (the slug stays).
    pub async fn admin_rename_department(
        &mut self,
        slug: DepartmentSlug,
        name: &str,
    ) -> Result<DepartmentInfo> {
        let request = Request::RenameDepartment {
            slug,
            name: name.to_owned(),
        };
        match self.request(&request).await? {
            Response::Department(d) => Ok(d),
            _ => Err(ClientError::UnexpectedResponse("RenameDepartment")),
        }
    }

    /// Admin: retires a department: members are taken off, its groups end with a final
    /// entry and take no new posts.
    pub async fn admin_remove_department(&mut self, slug: DepartmentSlug) -> Result<()> {
        match self.request(&Request::RemoveDepartment { slug }).await? {
            Response::Done => Ok(()),
            _ => Err(ClientError::UnexpectedResponse("RemoveDepartment")),
        }
    }
}

/// Header names of the first column that mark a header line (the names a German or
/// English HR export gives it; other first lines are headers only if their first field is
/// no personnel number at all).
const HEADER_NAMES: &[&str] = &[
    "personalnummer",
    "personal-nr",
    "personal-nr.",
    "pers.-nr.",
    "persnr",
    "personnel number",
    "personnel_number",
    "id",
    "user",
];

fn is_header(record: &csv::StringRecord) -> bool {
    let first = record.get(0).unwrap_or_default();
    HEADER_NAMES.contains(&first.to_lowercase().as_str()) || UserId::parse(first).is_err()
}

fn parse_row(
    line: u32,
    record: &csv::StringRecord,
    departments: &[DepartmentInfo],
    by_name: &HashMap<String, &DepartmentSlug>,
) -> std::result::Result<ImportRow, String> {
    if record.len() < 2 || record.iter().skip(4).any(|f| !f.is_empty()) {
        return Err(format!(
            "expected up to 4 fields separated by ';' (personnel number; name; departments; \
             roles), found {}",
            record.len()
        ));
    }
    let id = record.get(0).unwrap_or_default();
    let user = UserId::parse(id).map_err(|e| format!("invalid personnel number {id:?}: {e}"))?;
    let name = record.get(1).unwrap_or_default();
    if name.is_empty() {
        return Err(format!("{user}: the name is empty"));
    }
    let mut slugs = Vec::new();
    for field in list(record.get(2).unwrap_or_default()) {
        let known = departments
            .iter()
            .find(|d| d.slug.as_str() == field)
            .map(|d| &d.slug)
            .or_else(|| by_name.get(&field.to_lowercase()).copied());
        let slug = match known {
            Some(slug) => slug.clone(),
            None => DepartmentSlug::parse(field)
                .map_err(|_| format!("{user}: department {field:?} does not exist"))?,
        };
        slugs.push(slug);
    }
    let roles = list(record.get(3).unwrap_or_default())
        .map(|r| {
            Role::parse(&r.to_lowercase()).map_err(|_| {
                format!("{user}: unknown role {r:?} (member, author, editor or admin)")
            })
        })
        .collect::<std::result::Result<Vec<_>, _>>()?;
    Ok(ImportRow {
        line,
        user,
        name: name.to_owned(),
        departments: slugs,
        roles,
    })
}

/// The `,`-separated entries of a field, trimmed, without empty ones.
fn list(field: &str) -> impl Iterator<Item = &str> {
    field.split(',').map(str::trim).filter(|s| !s.is_empty())
}

/// Line numbers of records, counted from their byte offsets: the reader's own line count
/// is off after `\r\n` endings, which spreadsheets write. Records come in file order, so
/// each count starts where the last one ended (linear in the file, not quadratic).
#[derive(Debug, Default)]
struct LineCounter {
    /// Offset up to which newlines were counted.
    at: usize,
    /// Newlines before `at`.
    newlines: usize,
}

impl LineCounter {
    /// The 1-based line a record starts on. A record's offset may point at the end of the
    /// previous line's terminator, so that is skipped first.
    fn line_at(&mut self, bytes: &[u8], p: &csv::Position) -> u32 {
        let mut at = usize::try_from(p.byte())
            .unwrap_or(usize::MAX)
            .min(bytes.len());
        while bytes.get(at).is_some_and(|b| matches!(b, b'\r' | b'\n')) {
            at += 1;
        }
        if at < self.at {
            // Not expected (records come in order); count again from the start.
            *self = Self::default();
        }
        self.newlines += bytes[self.at..at].iter().filter(|&&b| b == b'\n').count();
        self.at = at;
        u32::try_from(self.newlines + 1).unwrap_or(u32::MAX)
    }
}

/// Splits rows into requests of at most [`CHUNK_ROWS`] rows and about [`CHUNK_BYTES`].
fn chunks(rows: Vec<ImportRow>) -> Vec<Vec<ImportRow>> {
    let rows_cap = CHUNK_ROWS.min(MAX_IMPORT_ROWS);
    let mut out = Vec::new();
    let mut chunk = Vec::new();
    let mut bytes = 0;
    for row in rows {
        // An upper bound of the row's postcard size: lengths are varints of ≤ 3 bytes.
        let size = 16
            + row.user.as_str().len()
            + row.name.len()
            + row
                .departments
                .iter()
                .map(|d| d.as_str().len() + 3)
                .sum::<usize>()
            + row.roles.len();
        if !chunk.is_empty() && (chunk.len() == rows_cap || bytes + size > CHUNK_BYTES) {
            out.push(std::mem::take(&mut chunk));
            bytes = 0;
        }
        bytes += size;
        chunk.push(row);
    }
    if !chunk.is_empty() {
        out.push(chunk);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn departments() -> Vec<DepartmentInfo> {
        vec![DepartmentInfo {
            slug: DepartmentSlug::parse("kaemmerei").unwrap(),
            name: "Kämmerei".into(),
            owners: Vec::new(),
            members: 0,
        }]
    }

    #[test]
    fn reads_a_german_spreadsheet_export() {
        let text = "\u{feff}Personalnummer;Name;Abteilungen;Rollen\r\n\
                    P1;Anna Berg;kaemmerei;Author\r\n\
                    P2;Jörg Müller;Kämmerei, bauamt\r\n\
                    \r\n\
                    P3;;kaemmerei;\r\n\
                    P 4;Kein Name;;\r\n\
                    P5;Eva;;chef\r\n";
        let file = parse_import(text.as_bytes(), &departments());
        let ids: Vec<&str> = file.rows.iter().map(|r| r.user.as_str()).collect();
        assert_eq!(ids, ["P1", "P2"]);
        assert_eq!(file.rows[0].line, 2);
        assert_eq!(file.rows[0].roles, [Role::Author]);
        assert_eq!(file.rows[1].name, "Jörg Müller");
        let depts: Vec<&str> = file.rows[1]
            .departments
            .iter()
            .map(|d| d.as_str())
            .collect();
        assert_eq!(depts, ["kaemmerei", "bauamt"]);
        let lines: Vec<u32> = file.refused.iter().map(|r| r.line).collect();
        assert_eq!(lines, [5, 6, 7], "{:?}", file.refused);
    }

    #[test]
    fn a_first_line_with_a_personnel_number_is_data() {
        let file = parse_import(b"P1;Anna Berg;;\nP2;Jonas Weber;;\n", &[]);
        assert_eq!(file.rows.len(), 2);
        assert_eq!(file.rows[0].line, 1);
    }

    #[test]
    fn chunks_stay_under_the_row_cap() {
        let rows: Vec<ImportRow> = (0..1234)
            .map(|i| ImportRow {
                line: i,
                user: UserId::parse(&format!("P{i}")).unwrap(),
                name: "x".into(),
                departments: Vec::new(),
                roles: Vec::new(),
            })
            .collect();
        let sizes: Vec<usize> = chunks(rows).iter().map(Vec::len).collect();
        assert_eq!(sizes, [500, 500, 234]);
    }
}
