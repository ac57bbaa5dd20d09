//! Bulk provisioning: one chunk of an HR export per request (DESIGN §3, issue 13).
//!
//! The client parses the file and sends it in chunks of at most
//! [`MAX_IMPORT_ROWS`](rathaus_protocol::limits::MAX_IMPORT_ROWS) rows; each chunk is
//! decided row by row and written in **one atomic batch**, with one durable flush, so
//! 5,000 colleagues cost a handful of flushes instead of 5,000. A department that gains
//! many members is read and written once per chunk, not once per member.
//!
//! Rows are decided like `AddUser`, and the import is idempotent:
//! - a new personnel number is created, with an enrollment code for the admin's client;
//! - an existing user with exactly the row's name, departments and roles is `Unchanged`;
//! - an existing user who differs is **refused**, naming what differs. An HR file is not
//!   trusted to move people between departments or to grant roles silently: a transfer
//!   ends the old secret group's access and a role can make someone an administrator, so
//!   both stay deliberate, per-person commands (`admin user departments`,
//!   `admin user role`), each with its own audit entry;
//! - an offboarded personnel number is refused (numbers are not given out again), as is a
//!   number that appears twice, an unknown department or an invalid name.
//!
//! Audit: one `user.add` entry per created colleague, as `admin user add` writes, so
//! "who created P1234, when, with which departments" is answered the same way however the
//! colleague was provisioned; the detail says it came from an import.

use std::collections::{BTreeSet, HashMap};

use rathaus_protocol::limits::{MAX_IMPORT_ROWS, MAX_LIST, MAX_NAME};
use rathaus_protocol::{
    DepartmentSlug, ImportOutcome, ImportResult, ImportRow, Response, Role, UserId,
};

use super::provisioning::{code_record, ids};
use super::refused::DirectoryRefused;
use super::{enrollment_codes, Broadcast, Refusal, Service};
use crate::store::{DepartmentRecord, UserRecord, Writes};

impl Service {
    pub(super) async fn import_users(
        &self,
        me: &UserRecord,
        rows: Vec<ImportRow>,
    ) -> Result<Response, Refusal> {
        self.require_admin(me, "import users")?;
        if rows.len() > MAX_IMPORT_ROWS {
            return Err(DirectoryRefused::ImportTooLarge.into());
        }
        let now = self.now_ms();
        let (ticket, results, touched) = {
            let _dir = self.directory();
            let mut chunk = Chunk::default();
            let mut w = Writes::new();
            let mut audit = self.audit()?;
            let mut results = Vec::with_capacity(rows.len());
            for row in rows {
                let outcome = match self.decide(&mut chunk, &row)? {
                    Decision::Create(user) => {
                        let code = enrollment_codes::generate();
                        let record = code_record(&code, now);
                        let user = UserRecord {
                            created_ms: now,
                            ..user
                        };
                        for slug in &user.departments {
                            if let Some(dept) =
                                chunk.departments.get_mut(slug).and_then(Option::as_mut)
                            {
                                dept.members.push(user.id.clone());
                                chunk.touched.insert(slug.clone());
                            }
                        }
                        w.put_user(&user)?.put_code(&user.id, &record)?;
                        let detail = format!(
                            "{:?}, departments: {}, roles: {} (import, line {})",
                            user.name,
                            ids(&user.departments),
                            super::roles::role_names(user.roles.iter()),
                            row.line
                        );
                        audit.record(&mut w, now, &me.id, "user.add", user.id.as_str(), detail)?;
                        chunk.created += 1;
                        ImportOutcome::Created {
                            enrollment_code: code,
                            expires_at_ms: record.expires_ms,
                        }
                    }
                    Decision::Unchanged => ImportOutcome::Unchanged,
                    Decision::Refuse(reason) => ImportOutcome::Refused {
                        reason: bounded(reason),
                    },
                };
                results.push(ImportResult {
                    line: row.line,
                    user: row.user,
                    outcome,
                });
            }
            if chunk.created == 0 {
                // Nothing to write; the audit chain is dropped unchanged.
                return Ok(Response::Imported(results));
            }
            for slug in &chunk.touched {
                if let Some(Some(dept)) = chunk.departments.get(slug) {
                    w.put_department(dept)?;
                }
            }
            self.db.apply(w)?;
            audit.commit();
            let touched: Vec<DepartmentSlug> = chunk.touched.into_iter().collect();
            (self.durability.written(), results, touched)
        };
        self.durable(ticket).await?;
        let created = results
            .iter()
            .filter(|r| matches!(r.outcome, ImportOutcome::Created { .. }))
            .count();
        tracing::info!(by = %me.id, rows = results.len(), created, "users imported");
        if !touched.is_empty() {
            self.publish(Broadcast::GroupsChanged);
            // Pending invitations for the owners of these departments (DESIGN §5.4).
            self.secret_groups_changed(&touched);
        }
        Ok(Response::Imported(results))
    }

    /// Decides one row against the store and the rows before it in the chunk.
    fn decide(&self, chunk: &mut Chunk, row: &ImportRow) -> Result<Decision, Refusal> {
        if let Some(first) = chunk.seen.get(&row.user) {
            return Ok(Decision::Refuse(format!(
                "personnel number {} is also on line {first}",
                row.user
            )));
        }
        chunk.seen.insert(row.user.clone(), row.line);
        if row.user.as_str() == super::removal::SERVER_USER {
            return Ok(Decision::Refuse(format!(
                "{} is reserved for the server's own log entries",
                row.user
            )));
        }
        let name = row.name.trim();
        if name.is_empty() || name.len() > MAX_NAME {
            return Ok(Decision::Refuse(format!(
                "the name must be 1 to {MAX_NAME} bytes"
            )));
        }
        if row.departments.len() > MAX_LIST || row.roles.len() > MAX_LIST {
            return Ok(Decision::Refuse(format!(
                "too many departments or roles (at most {MAX_LIST})"
            )));
        }
        let departments: Vec<DepartmentSlug> = row
            .departments
            .iter()
            .cloned()
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        let roles: Vec<Role> = row
            .roles
            .iter()
            .copied()
            .chain([Role::Member])
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        if let Some(existing) = self.db.user(&row.user)? {
            return Ok(compare(&existing, name, &departments, &roles));
        }
        for slug in &departments {
            if !chunk.departments.contains_key(slug) {
                let dept = self.db.department(slug)?;
                chunk.departments.insert(slug.clone(), dept);
            }
            if matches!(chunk.departments.get(slug), Some(None) | None) {
                let reason = match self.db.retired_department(slug)? {
                    Some(_) => format!("department {slug} was retired"),
                    None => format!("department {slug} does not exist"),
                };
                return Ok(Decision::Refuse(reason));
            }
        }
        Ok(Decision::Create(UserRecord {
            id: row.user.clone(),
            name: name.to_owned(),
            roles,
            departments,
            password_hash: None,
            devices: Vec::new(),
            removed: false,
            created_ms: 0,
        }))
    }
}

/// What one request has decided so far.
#[derive(Debug, Default)]
struct Chunk {
    /// Each personnel number's first line, to refuse a second row for it.
    seen: HashMap<UserId, u32>,
    /// Departments read so far (`None`: does not exist), with the members added.
    departments: HashMap<DepartmentSlug, Option<DepartmentRecord>>,
    /// Departments that gained members: written once at the end.
    touched: BTreeSet<DepartmentSlug>,
    /// Users created.
    created: usize,
}

/// What to do with one row.
#[derive(Debug)]
enum Decision {
    /// Create this user (`created_ms` is filled in by the caller).
    Create(UserRecord),
    /// The user exists exactly so.
    Unchanged,
    /// Do nothing, for this reason.
    Refuse(String),
}

/// An existing user against a row: unchanged, or refused naming what differs.
fn compare(
    existing: &UserRecord,
    name: &str,
    departments: &[DepartmentSlug],
    roles: &[Role],
) -> Decision {
    if existing.removed {
        return Decision::Refuse(format!(
            "personnel number {} was offboarded; numbers are not given out again",
            existing.id
        ));
    }
    let have_depts: BTreeSet<&DepartmentSlug> = existing.departments.iter().collect();
    let want_depts: BTreeSet<&DepartmentSlug> = departments.iter().collect();
    let have_roles: BTreeSet<&Role> = existing.roles.iter().collect();
    let want_roles: BTreeSet<&Role> = roles.iter().collect();
    let mut differs = Vec::new();
    if existing.name != name {
        differs.push(format!("name {:?} (file: {name:?})", existing.name));
    }
    if have_depts != want_depts {
        differs.push(format!(
            "departments {} (file: {}); change them with `rathaus admin user departments`",
            list(&have_depts),
            list(&want_depts)
        ));
    }
    if have_roles != want_roles {
        differs.push(format!(
            "roles {} (file: {}); change them with `rathaus admin user role`",
            super::roles::role_names(have_roles.into_iter()),
            super::roles::role_names(want_roles.into_iter())
        ));
    }
    if differs.is_empty() {
        Decision::Unchanged
    } else {
        Decision::Refuse(format!(
            "{} exists with other data: {}",
            existing.id,
            differs.join("; ")
        ))
    }
}

/// Longest reason sent for one row: a full chunk of refusals stays well inside one control
/// frame even when the rows carry long names and department lists.
const MAX_REASON: usize = 400;

pub(super) fn bounded(mut reason: String) -> String {
    if reason.len() > MAX_REASON {
        let mut at = MAX_REASON;
        while !reason.is_char_boundary(at) {
            at -= 1;
        }
        reason.truncate(at);
        reason.push('…');
    }
    reason
}

fn list(set: &BTreeSet<&DepartmentSlug>) -> String {
    if set.is_empty() {
        return "none".to_owned();
    }
    set.iter()
        .map(|s| s.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}
