//! The per-document size cap (issue 11): budget.rs bounds one sync
//! message, but a device could grow a stored document without end in many
//! small ones. Between applying a message and storing it, `Hub::sync` asks
//! [`check`] whether the document, as storage would then hold it (its
//! snapshot and appended changes), stays within `--max-document-bytes`;
//! beyond, the connection is closed with "document refused: over the size
//! cap" and nothing is stored or kept in memory (like a door refusal).
//!
//! The default is generous: a family case file of 10,000 notes of 2 KB of
//! prose, as `model::family::add_note` writes them (one change each), is
//! 3.0 MB as a snapshot and 23.1 MB as separate changes (measured by the
//! test below; the relay stores a snapshot plus at most 256 changes), and
//! 2 KB notes of text that does not compress at all make a ~21 MB snapshot:
//! 64 MiB holds any of these three times over. Stored documents are also loaded through
//! budget.rs ([`load_budget`]), so a poison stored before these checks
//! existed is refused instead of aborting the relay.

use automerge::{Automerge, ChangeHash};
use linkbook_core::budget::Budget;

/// 64 MiB: a family of 10,000 notes of 2 KB three times over (see above).
pub const DEFAULT_MAX_DOCUMENT_BYTES: u64 = 64 * 1024 * 1024;

/// What one applied sync message adds to storage: the new changes, and for
/// a document new to the relay its whole snapshot (stored instead).
pub(crate) struct Upload {
    pub(crate) changes: Vec<u8>,
    pub(crate) snapshot: Option<Vec<u8>>,
}

impl Upload {
    /// The changes made since `before` (the heads before applying).
    pub(crate) fn of(doc: &Automerge, before: &[ChangeHash]) -> Upload {
        Upload {
            changes: doc.save_after(before),
            // A document new to the relay is stored as a whole (Automerge's
            // compressed save), not as the list of its changes: it loads in
            // half the time, and first uploads are most of what a relay loads.
            snapshot: before.is_empty().then(|| doc.save()),
        }
    }

    /// Bytes this upload adds to (or, with a snapshot, makes) the document.
    pub(crate) fn stored_bytes(&self) -> u64 {
        let n = match &self.snapshot {
            Some(s) => s.len(),
            None => self.changes.len(),
        };
        u64::try_from(n).unwrap_or(u64::MAX)
    }

    /// The document's stored size once this upload is stored.
    pub(crate) fn stored_after(&self, stored: u64) -> u64 {
        match self.snapshot {
            Some(_) => self.stored_bytes(),
            None => stored.saturating_add(self.stored_bytes()),
        }
    }
}

/// Refuses an upload that would take the stored document past `cap` bytes.
pub(crate) fn check(stored: u64, upload: &Upload, cap: u64) -> Result<(), String> {
    if upload.stored_after(stored) > cap {
        return Err(format!(
            "document refused: over the size cap ({cap} bytes per document)"
        ));
    }
    Ok(())
}

/// The budget stored bytes are loaded within. A stored document is many
/// messages merged, so it may hold more rows than one message may
/// (`--max-document-ops`): eight times that (8 M ops, ~1 GB in Automerge at
/// ~115 bytes per op) and eight times the inflated bytes. The Automerge
/// crashers declare billions of rows and are refused all the same.
pub(crate) fn load_budget(max_document_ops: u64) -> Budget {
    let d = Budget::default();
    Budget {
        max_rows: max_document_ops.saturating_mul(8),
        max_inflated: d.max_inflated.saturating_mul(8),
        max_actors: d.max_actors,
    }
}

#[cfg(test)]
#[allow(clippy::expect_used)]
mod tests {
    use super::*;
    use automerge::transaction::Transactable;
    use automerge::{AutoCommit, ObjType, ROOT};

    /// Words of case-note prose (the text compresses like real notes do).
    fn note_text(seed: usize, len: usize) -> String {
        const WORDS: [&str; 24] = [
            "visited",
            "family",
            "mother",
            "father",
            "school",
            "attended",
            "appointment",
            "worker",
            "called",
            "housing",
            "support",
            "agreed",
            "plan",
            "children",
            "doctor",
            "review",
            "meeting",
            "concern",
            "progress",
            "benefits",
            "referral",
            "the",
            "and",
            "with",
        ];
        let mut x = seed.wrapping_mul(2_654_435_761) | 1;
        let mut s = String::with_capacity(len + 16);
        while s.len() < len {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            s.push_str(WORDS[x % WORDS.len()]);
            s.push(' ');
        }
        s.truncate(len);
        s
    }

    /// A family with `notes` notes of `len` bytes, one change per note as
    /// `model::family::add_note` writes them.
    fn family(notes: usize, len: usize) -> AutoCommit {
        let mut doc = AutoCommit::new();
        doc.put(ROOT, "type", "family").expect("put");
        doc.put(ROOT, "schema_version", 1_u64).expect("put");
        let map = doc.put_object(ROOT, "notes", ObjType::Map).expect("put");
        doc.commit();
        for i in 0..notes {
            let n = doc
                .put_object(&map, format!("{i:032x}"), ObjType::Map)
                .expect("put");
            doc.put(&n, "author", "Asha Khan").expect("put");
            doc.put(&n, "device", "3QJmnh8Zzt8CwBPyWmdUj1m6nKJz")
                .expect("put");
            doc.put(&n, "created_at", "2026-12-01T10:00:00+00:00")
                .expect("put");
            doc.put(&n, "category", "visit").expect("put");
            doc.put(&n, "text", note_text(i, len)).expect("put");
            doc.put_object(&n, "history", ObjType::List).expect("put");
            doc.commit();
        }
        doc
    }

    #[test]
    fn a_family_of_10_000_notes_of_2_kb_fits_the_default_cap() {
        let mut doc = family(10_000, 2_048);
        let snapshot = doc.save().len() as u64;
        let changes = doc.save_after(&[]).len() as u64;
        eprintln!("10,000 notes of 2 KB: snapshot {snapshot} bytes, changes {changes} bytes");
        // Stored as a snapshot plus changes appended until compaction.
        assert!(snapshot.max(changes) * 2 < DEFAULT_MAX_DOCUMENT_BYTES);
        let upload = Upload {
            changes: Vec::new(),
            snapshot: Some(doc.save()),
        };
        assert!(check(0, &upload, DEFAULT_MAX_DOCUMENT_BYTES).is_ok());
        assert!(linkbook_core::budget::check(&doc.save(), &load_budget(1_000_000)).is_ok());
    }

    #[test]
    fn growing_past_the_cap_in_small_steps_is_refused() {
        let small = Upload {
            changes: vec![0; 1_000],
            snapshot: None,
        };
        assert!(check(9_000, &small, 10_000).is_ok());
        let refused = check(9_001, &small, 10_000).expect_err("over the cap");
        assert!(refused.contains("over the size cap"), "{refused}");
        let new = Upload {
            changes: vec![0; 50_000],
            snapshot: Some(vec![0; 10_001]),
        };
        assert!(check(0, &new, 10_000).is_err());
    }
}
