//! How a group's log numbers its entries.
//!
//! Seqs are dense within a **generation**: the first entry of a log is `#1`, each next one
//! the seq after. A server put back to an older copy of its data (a restore) has forgotten
//! the newest entries, but its clients may have shown them under their numbers; giving
//! those numbers to new posts would make two colleagues see different posts as the same
//! `#17`. So a restored server continues every log in the next generation, whose seqs
//! start at `generation × GENERATION_SPAN + 1`: the numbers of what it forgot are never
//! given again. A log passes from one generation to the next at most by that jump, never
//! backwards.

/// Seqs in one generation. Generation `g` holds the seqs `g × SPAN + 1 ..= (g + 1) × SPAN`.
pub const GENERATION_SPAN: u64 = 1_000_000_000;

/// The generation a seq belongs to (`0` for seq 0, which names no entry).
pub const fn generation_of(seq: u64) -> u64 {
    seq.saturating_sub(1) / GENERATION_SPAN
}

/// The first seq of `generation`.
pub const fn first_seq(generation: u64) -> u64 {
    generation.saturating_mul(GENERATION_SPAN).saturating_add(1)
}

/// The seq of the entry after `head` (the log's last seq, `0` if empty) while the
/// server's data is in `generation`: the next seq, or the first of `generation` when the
/// log's last entry is from an earlier one.
pub const fn next_seq(head: u64, generation: u64) -> u64 {
    if head == 0 && generation == 0 {
        1
    } else if head == 0 || generation_of(head) < generation {
        first_seq(generation)
    } else {
        head.saturating_add(1)
    }
}

/// Whether `seq` may directly follow `prev` in one log: the next seq, or the first seq of
/// a later generation.
pub const fn follows(prev: u64, seq: u64) -> bool {
    match prev.checked_add(1) {
        Some(next) if next == seq => true,
        _ => seq > prev && (seq - 1).is_multiple_of(GENERATION_SPAN),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_log_counts_on_within_its_generation() {
        assert_eq!(next_seq(0, 0), 1);
        assert_eq!(next_seq(41, 0), 42);
        assert_eq!(generation_of(1), 0);
        assert_eq!(generation_of(GENERATION_SPAN), 0);
        assert_eq!(generation_of(GENERATION_SPAN + 1), 1);
    }

    #[test]
    fn after_a_restore_the_next_entry_starts_the_new_generation() {
        assert_eq!(next_seq(16, 1), GENERATION_SPAN + 1);
        assert_eq!(
            next_seq(0, 1),
            GENERATION_SPAN + 1,
            "a log begun afterwards too"
        );
        assert_eq!(next_seq(GENERATION_SPAN + 1, 1), GENERATION_SPAN + 2);
        assert_eq!(next_seq(16, 2), 2 * GENERATION_SPAN + 1);
        // A log already in a later generation than the one the server read is not moved back.
        assert_eq!(
            next_seq(2 * GENERATION_SPAN + 5, 1),
            2 * GENERATION_SPAN + 6
        );
    }

    #[test]
    fn only_the_next_seq_or_a_generation_start_follows() {
        assert!(follows(16, 17));
        assert!(follows(16, GENERATION_SPAN + 1));
        assert!(follows(0, GENERATION_SPAN + 1));
        assert!(!follows(16, 18));
        assert!(!follows(16, 16));
        assert!(!follows(GENERATION_SPAN + 3, 17));
        assert!(!follows(GENERATION_SPAN + 3, GENERATION_SPAN + 1));
        assert!(!follows(u64::MAX, u64::MAX));
    }
}
