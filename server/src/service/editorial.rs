//! The editorial workflow as a decision over plain data: whether a colleague may take a
//! step on an announcement in the state it is in, at a given time. The handlers in
//! `announcements.rs` read the record, ask [`judge_step`], and write what follows.
//!
//! ```text
//! draft ──submit──▶ submitted ──approve──▶ published ──pin/unpin, acknowledge
//!   ▲                   │
//!   └──── rejected ◀─reject
//! ```

use rathaus_protocol::{AnnouncementState, Role};

use super::refused::AnnouncementRefused;
use crate::store::{AnnouncementRecord, UserRecord};

/// A step on an announcement that exists.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Step {
    /// Its author hands a draft (or a rejected one, reworked) to the editors.
    Submit,
    /// An editor publishes a submission.
    Approve,
    /// An editor sends a submission back with a comment.
    Reject,
    /// A colleague confirms having read it.
    Acknowledge,
    /// An editor pins or unpins it.
    Pin,
}

/// Whether `me` may take `step` on `record` at `now_ms`.
pub(super) fn judge_step(
    me: &UserRecord,
    record: &AnnouncementRecord,
    step: Step,
    now_ms: i64,
) -> Result<(), AnnouncementRefused> {
    let id = record.id;
    match step {
        Step::Approve | Step::Reject | Step::Pin if !is_editor(me) => {
            return Err(AnnouncementRefused::EditorsOnly(match step {
                Step::Approve => "approve announcements",
                Step::Reject => "reject announcements",
                _ => "pin announcements",
            }))
        }
        Step::Submit => {
            if record.author != me.id {
                return Err(AnnouncementRefused::SubmitByAuthor(id));
            }
            match record.state {
                AnnouncementState::Draft | AnnouncementState::Rejected { .. } => {}
                AnnouncementState::Submitted => {
                    return Err(AnnouncementRefused::SubmittedAlready(id))
                }
                AnnouncementState::Published => {
                    return Err(AnnouncementRefused::PublishedAlready(id))
                }
            }
        }
        Step::Approve if record.state != AnnouncementState::Submitted => {
            return Err(AnnouncementRefused::ApproveUnsubmitted {
                id,
                state: record.state.as_str(),
            })
        }
        Step::Reject if record.state != AnnouncementState::Submitted => {
            return Err(AnnouncementRefused::RejectUnsubmitted {
                id,
                state: record.state.as_str(),
            })
        }
        Step::Acknowledge => {
            if record.state != AnnouncementState::Published {
                return Err(AnnouncementRefused::AckUnpublished(id));
            }
            if !record.requires_ack {
                return Err(AnnouncementRefused::NoAckAsked(id));
            }
        }
        Step::Pin if record.state != AnnouncementState::Published => {
            return Err(AnnouncementRefused::PinUnpublished(id))
        }
        Step::Approve | Step::Reject | Step::Pin => {}
    }
    // A rejection and a pin stay possible after the expiry (the author learns why; an
    // editor tidies up); everything else of an expired announcement is over.
    let expiry_matters = matches!(step, Step::Submit | Step::Approve | Step::Acknowledge);
    if expiry_matters && record.expired(now_ms) {
        return Err(AnnouncementRefused::Expired(id));
    }
    Ok(())
}

/// Whether `me` is an editor or administrator (sees submissions and who acknowledged).
pub(super) fn is_editor(me: &UserRecord) -> bool {
    me.has_role(Role::Editor) || me.has_role(Role::Admin)
}

#[cfg(test)]
mod tests {
    use rathaus_protocol::{AnnouncementState, Role, UserId};

    use super::{judge_step, Step};
    use crate::service::refused::AnnouncementRefused;
    use crate::store::{AnnouncementRecord, UserRecord};

    const NOW: i64 = 1_000_000;

    fn user(id: &str, roles: &[Role]) -> UserRecord {
        UserRecord {
            id: UserId::parse(id).unwrap(),
            name: format!("{id} Name"),
            roles: roles.to_vec(),
            departments: vec![],
            password_hash: None,
            devices: vec![],
            removed: false,
            created_ms: 0,
        }
    }

    fn record(
        state: AnnouncementState,
        requires_ack: bool,
        expires: Option<i64>,
    ) -> AnnouncementRecord {
        AnnouncementRecord {
            id: 7,
            author: UserId::parse("P1001").unwrap(),
            author_name: "Anna".into(),
            title: "Sperrung".into(),
            text: "Der Rathausplatz ist gesperrt.".into(),
            requires_ack,
            expires_at_ms: expires,
            state,
            pinned: false,
            seq: None,
            created_ms: 0,
        }
    }

    #[test]
    fn the_workflow_allows_each_step_only_in_its_state_and_to_its_role() {
        let author = user("P1001", &[Role::Member, Role::Author]);
        let other_author = user("P1005", &[Role::Member, Role::Author]);
        let editor = user("P1002", &[Role::Member, Role::Editor]);
        let member = user("P1003", &[Role::Member]);
        let draft = record(AnnouncementState::Draft, true, None);
        let submitted = record(AnnouncementState::Submitted, true, None);
        let published = record(AnnouncementState::Published, true, None);
        let no_ack = record(AnnouncementState::Published, false, None);
        let rejected = record(
            AnnouncementState::Rejected {
                by: editor.id.clone(),
                comment: "Bitte kürzer".into(),
            },
            true,
            None,
        );
        use AnnouncementRefused as R;
        let cases: Vec<(&UserRecord, &AnnouncementRecord, Step, Result<(), R>)> = vec![
            (&author, &draft, Step::Submit, Ok(())),
            (&author, &rejected, Step::Submit, Ok(())),
            (
                &other_author,
                &draft,
                Step::Submit,
                Err(R::SubmitByAuthor(7)),
            ),
            (
                &author,
                &submitted,
                Step::Submit,
                Err(R::SubmittedAlready(7)),
            ),
            (
                &author,
                &published,
                Step::Submit,
                Err(R::PublishedAlready(7)),
            ),
            (&editor, &submitted, Step::Approve, Ok(())),
            (
                &author,
                &submitted,
                Step::Approve,
                Err(R::EditorsOnly("approve announcements")),
            ),
            (
                &editor,
                &draft,
                Step::Approve,
                Err(R::ApproveUnsubmitted {
                    id: 7,
                    state: "draft",
                }),
            ),
            (&editor, &submitted, Step::Reject, Ok(())),
            (
                &member,
                &submitted,
                Step::Reject,
                Err(R::EditorsOnly("reject announcements")),
            ),
            (
                &editor,
                &published,
                Step::Reject,
                Err(R::RejectUnsubmitted {
                    id: 7,
                    state: "published",
                }),
            ),
            (&member, &published, Step::Acknowledge, Ok(())),
            (
                &member,
                &submitted,
                Step::Acknowledge,
                Err(R::AckUnpublished(7)),
            ),
            (&member, &no_ack, Step::Acknowledge, Err(R::NoAckAsked(7))),
            (&editor, &published, Step::Pin, Ok(())),
            (
                &member,
                &published,
                Step::Pin,
                Err(R::EditorsOnly("pin announcements")),
            ),
            (&editor, &submitted, Step::Pin, Err(R::PinUnpublished(7))),
        ];
        for (me, record, step, expected) in cases {
            assert_eq!(
                judge_step(me, record, step, NOW),
                expected,
                "{step:?} by {} on {:?}",
                me.id,
                record.state
            );
        }
    }

    #[test]
    fn an_expired_announcement_is_neither_submitted_approved_nor_acknowledged() {
        let author = user("P1001", &[Role::Member, Role::Author]);
        let editor = user("P1002", &[Role::Member, Role::Editor]);
        let expired = |state| record(state, true, Some(NOW));
        assert_eq!(
            judge_step(
                &author,
                &expired(AnnouncementState::Draft),
                Step::Submit,
                NOW
            ),
            Err(AnnouncementRefused::Expired(7))
        );
        assert_eq!(
            judge_step(
                &editor,
                &expired(AnnouncementState::Submitted),
                Step::Approve,
                NOW
            ),
            Err(AnnouncementRefused::Expired(7))
        );
        assert_eq!(
            judge_step(
                &author,
                &expired(AnnouncementState::Published),
                Step::Acknowledge,
                NOW
            ),
            Err(AnnouncementRefused::Expired(7))
        );
        // Still rejected with a reason, and unpinned.
        assert_eq!(
            judge_step(
                &editor,
                &expired(AnnouncementState::Submitted),
                Step::Reject,
                NOW
            ),
            Ok(())
        );
        assert_eq!(
            judge_step(
                &editor,
                &expired(AnnouncementState::Published),
                Step::Pin,
                NOW
            ),
            Ok(())
        );
        // One millisecond before the expiry everything is open.
        assert_eq!(
            judge_step(
                &author,
                &expired(AnnouncementState::Published),
                Step::Acknowledge,
                NOW - 1
            ),
            Ok(())
        );
    }
}
