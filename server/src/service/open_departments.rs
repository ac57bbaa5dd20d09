//! Which departments a post may go to, remembered between posts.
//!
//! Every post checks that its department exists (`Service::ensure_open`): one store
//! lookup per post. On a store only this server writes, the answer changes only when this
//! server retires the department, so a department found once is remembered until then.
//! (On a store shared with other nodes, another node may retire it: nothing is
//! remembered there.)
//!
//! A lookup that started before a retirement was applied must not put the department
//! back after [`OpenDepartments::forget`]: every forget moves a generation on, and a
//! lookup remembers its answer only if the generation is still the one it started in.

use std::collections::HashSet;
use std::sync::{Mutex, MutexGuard, PoisonError};

use rathaus_protocol::DepartmentSlug;

/// Departments known to exist, with the generation of that knowledge.
#[derive(Debug, Default)]
pub(super) struct OpenDepartments {
    known: Mutex<Known>,
}

#[derive(Debug, Default)]
struct Known {
    generation: u64,
    open: HashSet<DepartmentSlug>,
}

/// What [`OpenDepartments::look`] found: known open, or where a lookup starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Look {
    /// Known to exist.
    Open,
    /// Not known: look it up in the store, then [`OpenDepartments::found`] with this.
    Unknown(u64),
}

impl OpenDepartments {
    /// Whether `slug` is known to exist; otherwise the generation a lookup starts in.
    pub(super) fn look(&self, slug: &DepartmentSlug) -> Look {
        let known = self.known();
        if known.open.contains(slug) {
            Look::Open
        } else {
            Look::Unknown(known.generation)
        }
    }

    /// Remembers that the store held `slug` in a lookup started in `generation`, unless
    /// a department was forgotten since.
    pub(super) fn found(&self, slug: &DepartmentSlug, generation: u64) {
        let mut known = self.known();
        if known.generation == generation {
            known.open.insert(slug.clone());
        }
    }

    /// Forgets `slug`: call once its retirement is applied to the store.
    pub(super) fn forget(&self, slug: &DepartmentSlug) {
        let mut known = self.known();
        known.generation += 1;
        known.open.remove(slug);
    }

    fn known(&self) -> MutexGuard<'_, Known> {
        // Single statements on a set and a counter: a poisoned lock holds valid ones.
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
        let Look::Unknown(g) = open.look(&slug("bauamt")) else {
            panic!("known before any lookup");
        };
        open.found(&slug("bauamt"), g);
        assert_eq!(open.look(&slug("bauamt")), Look::Open);
        assert!(matches!(open.look(&slug("kaemmerei")), Look::Unknown(_)));
        open.forget(&slug("bauamt"));
        assert!(matches!(open.look(&slug("bauamt")), Look::Unknown(_)));
    }

    #[test]
    fn a_lookup_from_before_a_retirement_does_not_bring_it_back() {
        let open = OpenDepartments::default();
        // A post looks the department up; the store still holds it...
        let Look::Unknown(g) = open.look(&slug("bauamt")) else {
            panic!("known before any lookup");
        };
        // ...then the retirement is applied and forgotten before the post remembers.
        open.forget(&slug("bauamt"));
        open.found(&slug("bauamt"), g);
        assert!(
            matches!(open.look(&slug("bauamt")), Look::Unknown(_)),
            "a retired department must be looked up again"
        );
    }
}
