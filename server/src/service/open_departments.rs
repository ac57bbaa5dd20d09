//! Which departments a post may go to, remembered between posts.
//!
//! Every post checks that its department exists (`Service::ensure_open`): one store
//! lookup per post. The answer changes only when a department is retired, so a
//! department found once is remembered until this server retires it, or, on a store
//! shared with other nodes, until another node says it wrote department records (its
//! `NOTIFY`), and there for at most [`crate::store::SHARED_RECORDS_KEPT`] in case that
//! notice is lost.
//!
//! A lookup that started before a retirement was applied must not put the department
//! back after [`OpenDepartments::forget`]: every forget moves a generation on, and a
//! lookup remembers its answer only if the generation is still the one it started in.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use rathaus_protocol::DepartmentSlug;

/// Departments known to exist, with the generation of that knowledge.
#[derive(Debug, Default)]
pub(super) struct OpenDepartments {
    known: Mutex<Known>,
}

#[derive(Debug, Default)]
struct Known {
    generation: u64,
    /// Each with the time its lookup began.
    open: HashMap<DepartmentSlug, Instant>,
}

/// What [`OpenDepartments::look`] found: known open, or where a lookup starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Look {
    /// Known to exist.
    Open,
    /// Not known: look it up in the store, then [`OpenDepartments::found`] with this.
    Unknown(Lookup),
}

/// A lookup in the store: the generation it started in, and when.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Lookup {
    generation: u64,
    at: Instant,
}

impl OpenDepartments {
    /// Whether `slug` is known to exist, from a lookup at most `kept_for` ago (any time
    /// for `None`); otherwise where a lookup starts.
    pub(super) fn look(&self, slug: &DepartmentSlug, kept_for: Option<Duration>) -> Look {
        let known = self.known();
        match known.open.get(slug) {
            Some(at) if kept_for.is_none_or(|k| at.elapsed() < k) => Look::Open,
            _ => Look::Unknown(Lookup {
                generation: known.generation,
                at: Instant::now(),
            }),
        }
    }

    /// Remembers that the store held `slug` in `lookup`, unless a department was
    /// forgotten since it started.
    pub(super) fn found(&self, slug: &DepartmentSlug, lookup: Lookup) {
        let mut known = self.known();
        if known.generation == lookup.generation {
            known.open.insert(slug.clone(), lookup.at);
        }
    }

    /// Forgets `slug`: call once its retirement is applied to the store.
    pub(super) fn forget(&self, slug: &DepartmentSlug) {
        let mut known = self.known();
        known.generation += 1;
        known.open.remove(slug);
    }

    /// Forgets every department: another node may have retired any of them.
    pub(super) fn forget_all(&self) {
        let mut known = self.known();
        known.generation += 1;
        known.open.clear();
    }

    fn known(&self) -> MutexGuard<'_, Known> {
        // Single statements on a map and a counter: a poisoned lock holds valid ones.
        self.known.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slug(s: &str) -> DepartmentSlug {
        DepartmentSlug::parse(s).unwrap()
    }

    #[test]
    fn a_department_found_is_known_until_forgotten() {
        let open = OpenDepartments::default();
        let Look::Unknown(g) = open.look(&slug("bauamt"), None) else {
            panic!("known before any lookup");
        };
        open.found(&slug("bauamt"), g);
        assert_eq!(open.look(&slug("bauamt"), None), Look::Open);
        assert!(matches!(
            open.look(&slug("kaemmerei"), None),
            Look::Unknown(_)
        ));
        open.forget(&slug("bauamt"));
        assert!(matches!(open.look(&slug("bauamt"), None), Look::Unknown(_)));
    }

    #[test]
    fn a_lookup_from_before_a_retirement_does_not_bring_it_back() {
        let open = OpenDepartments::default();
        // A post looks the department up; the store still holds it...
        let Look::Unknown(g) = open.look(&slug("bauamt"), None) else {
            panic!("known before any lookup");
        };
        // ...then the retirement is applied and forgotten before the post remembers.
        open.forget(&slug("bauamt"));
        open.found(&slug("bauamt"), g);
        assert!(
            matches!(open.look(&slug("bauamt"), None), Look::Unknown(_)),
            "a retired department must be looked up again"
        );
    }

    #[test]
    fn on_a_shared_store_a_department_is_kept_for_a_while_and_until_another_node_writes() {
        let open = OpenDepartments::default();
        let kept_for = Some(Duration::from_secs(3600));
        let Look::Unknown(g) = open.look(&slug("bauamt"), kept_for) else {
            panic!("known before any lookup");
        };
        open.found(&slug("bauamt"), g);
        assert_eq!(open.look(&slug("bauamt"), kept_for), Look::Open);
        // Found longer ago than it may be kept: looked up again.
        assert!(matches!(
            open.look(&slug("bauamt"), Some(Duration::ZERO)),
            Look::Unknown(_)
        ));
        // Another node wrote department records: every one is looked up again, and a
        // lookup from before does not bring one back.
        let Look::Unknown(before) = open.look(&slug("kaemmerei"), kept_for) else {
            panic!("known before any lookup");
        };
        open.forget_all();
        open.found(&slug("kaemmerei"), before);
        assert!(matches!(
            open.look(&slug("bauamt"), kept_for),
            Look::Unknown(_)
        ));
        assert!(matches!(
            open.look(&slug("kaemmerei"), kept_for),
            Look::Unknown(_)
        ));
    }
}
