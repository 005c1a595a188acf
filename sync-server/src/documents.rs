//! The one way the relay and the admin commands turn stored bytes into an
//! Automerge document: through the load budget (`linkbook_core::budget`,
//! before Automerge allocates per row) and the panic guard
//! (`protocol::catch_automerge_panic`: Automerge 0.12 panics on some
//! malformed bytes), so a crafted stored document is reported damaged and
//! never aborts or panics whoever reads it.

use automerge::{Automerge, ReadDoc};
use linkbook_core::budget::Budget;
use linkbook_core::protocol::catch_automerge_panic;

use crate::storage::StoredDocument;

/// Why stored bytes could not be loaded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Damaged {
    /// The budget's walk refused the bytes (malformed, or declaring more
    /// than it allows): they were not handed to Automerge.
    #[error("{0}")]
    Budget(String),
    /// Automerge refused the bytes (or panicked on them).
    #[error("Automerge could not read it")]
    Unreadable,
}

/// Loads a stored document (snapshot, then its changes in one batch:
/// Automerge applies them at once, per-change calls re-sort the ops each
/// time) within `budget`.
pub fn load(stored: &StoredDocument, budget: &Budget) -> Result<Automerge, Damaged> {
    if let Some(over) = stored
        .snapshot
        .iter()
        .chain(stored.changes.iter())
        .find_map(|bytes| linkbook_core::budget::check(bytes, budget).err())
    {
        return Err(Damaged::Budget(over.to_string()));
    }
    let mut doc = match &stored.snapshot {
        Some(s) => match catch_automerge_panic(|| Automerge::load(s)) {
            Ok(Ok(doc)) => doc,
            _ => return Err(Damaged::Unreadable),
        },
        None => Automerge::new(),
    };
    let changes = stored.changes.concat();
    if !changes.is_empty()
        && !matches!(
            catch_automerge_panic(|| doc.load_incremental(&changes)),
            Ok(Ok(_))
        )
    {
        return Err(Damaged::Unreadable);
    }
    Ok(doc)
}

/// The bytes a stored document takes (snapshot and changes).
pub fn stored_bytes(stored: &StoredDocument) -> usize {
    stored.snapshot.as_ref().map_or(0, Vec::len)
        + stored.changes.iter().map(Vec::len).sum::<usize>()
}

/// The `type` a Linkbook document declares at its root.
pub fn document_type(doc: &Automerge) -> Option<String> {
    match doc.get(automerge::ROOT, "type").ok()??.0 {
        automerge::Value::Scalar(s) => s.as_str().map(str::to_string),
        _ => None,
    }
}

#[cfg(test)]
#[allow(clippy::expect_used)]
mod tests {
    use super::*;
    use automerge::transaction::Transactable;

    fn stored(snapshot: Option<Vec<u8>>, changes: Vec<Vec<u8>>) -> StoredDocument {
        StoredDocument {
            team: "north".into(),
            snapshot,
            seq: 0,
            changes,
        }
    }

    #[test]
    fn loads_snapshot_and_changes_and_reads_the_type() {
        let mut doc = automerge::AutoCommit::new();
        doc.put(automerge::ROOT, "type", "family").expect("put");
        let snapshot = doc.save();
        doc.put(automerge::ROOT, "status", "open").expect("put");
        let change = doc.save_incremental();
        let loaded = load(&stored(Some(snapshot), vec![change]), &Budget::default()).expect("load");
        assert_eq!(document_type(&loaded).as_deref(), Some("family"));
        assert!(
            loaded
                .get(automerge::ROOT, "status")
                .expect("get")
                .is_some()
        );
    }

    #[test]
    fn garbage_and_automerge_crashers_are_damaged_not_panics() {
        let garbage = stored(Some(b"not automerge at all".to_vec()), Vec::new());
        assert!(matches!(
            load(&garbage, &Budget::default()),
            Err(Damaged::Budget(_))
        ));
        let bad_change = stored(None, vec![vec![0x85, 0x6f, 0x4a, 0x83, 0xff, 0xff]]);
        assert!(load(&bad_change, &Budget::default()).is_err());
        let dir = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../tests/fuzz-crashers/automerge-load"
        );
        if let Ok(entries) = std::fs::read_dir(dir) {
            for entry in entries.flatten() {
                let bytes = std::fs::read(entry.path()).expect("crasher");
                assert!(
                    load(&stored(Some(bytes), Vec::new()), &Budget::default()).is_err(),
                    "{}",
                    entry.path().display()
                );
            }
        }
    }
}
