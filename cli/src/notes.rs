//! Which of the library's one-line notes the CLI shows on stderr: one rule for `pack`, `plan`
//! and `pack --plan --part`, so they print alike.

use std::sync::atomic::{AtomicUsize, Ordering};

/// Field notes (`field "x": ...`) shown before the rest are only counted (see [`Notes`]).
pub const MAX_FIELD_NOTES: usize = 20;

/// The note filter. Every field gets one note saying how it is compressed, and a tree may
/// have thousands of fields: the first [`MAX_FIELD_NOTES`] are shown, the rest counted in one
/// closing line ([`Notes::summary`]), and `-q` leaves them all out. Every other note
/// (warnings, fallbacks, the key rule chosen, what was cleaned up) is always shown.
#[derive(Debug, Default)]
pub struct Notes {
    /// `-q`: no field notes.
    quiet: bool,
    /// Field notes seen so far.
    field_notes: AtomicUsize,
}

impl Notes {
    /// The filter of a command run with (`quiet`) or without `-q`.
    pub fn new(quiet: bool) -> Notes {
        Notes {
            quiet,
            field_notes: AtomicUsize::new(0),
        }
    }

    /// Whether to show `msg`; call it once per note, in the order they come.
    pub fn admit(&self, msg: &str) -> bool {
        if !msg.starts_with("field ") {
            return true;
        }
        if self.quiet {
            return false;
        }
        self.field_notes.fetch_add(1, Ordering::Relaxed) < MAX_FIELD_NOTES
    }

    /// The closing line once the notes are over, when field notes were left out: how many,
    /// and `hint` (where to see them all).
    pub fn summary(&self, hint: &str) -> Option<String> {
        let seen = self.field_notes.load(Ordering::Relaxed);
        (!self.quiet && seen > MAX_FIELD_NOTES).then(|| {
            format!(
                "... and {} more field notes left out ({hint})",
                seen - MAX_FIELD_NOTES
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn field_notes_are_capped_and_counted_others_always_pass() {
        let n = Notes::new(false);
        let shown = (0..MAX_FIELD_NOTES + 5)
            .filter(|i| n.admit(&format!("field \"f{i}\": stored raw")))
            .count();
        assert_eq!(shown, MAX_FIELD_NOTES);
        assert!(n.admit("WARNING: 2% of the inputs were skipped"));
        assert_eq!(
            n.summary("see info").as_deref(),
            Some("... and 5 more field notes left out (see info)")
        );
        let few = Notes::new(false);
        assert!(few.admit("field \"a\": stored raw"));
        assert_eq!(few.summary("x"), None);
    }

    #[test]
    fn quiet_leaves_out_field_notes_only() {
        let n = Notes::new(true);
        assert!(!n.admit("field \"a\": stored raw"));
        assert!(n.admit("key: using whole file names"));
        for _ in 0..100 {
            n.admit("field \"b\": zstd:3");
        }
        assert_eq!(n.summary("x"), None);
    }
}
