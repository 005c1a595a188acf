//! The door: what the relay checks before it stores a document's changes.
//!
//! Issue 11, finding 3: a document that is not a Linkbook document (any
//! automerge-repo client can upload one) made every sync of its team fail.
//! The relay now refuses, between applying a sync message and storing it,
//! any document whose root does not carry a known Linkbook `type` and a
//! supported `schema_version`, and any change that rewrites a stored
//! document's type. The root header is a few map lookups whatever the
//! document's size; the change rules (`linkbook_core::check_change`) then
//! look at what the message's changes did.

use automerge::{Automerge, ChangeHash, ReadDoc, ScalarValue, Value};
use linkbook_core::{DocumentType, SCHEMA_VERSION};

/// Why a document or change was refused (ids and field names only, no content).
pub type Refusal = String;

fn root_str(doc: &Automerge, key: &str, at: Option<&[ChangeHash]>) -> Option<String> {
    let got = match at {
        Some(heads) => doc.get_at(automerge::ROOT, key, heads),
        None => doc.get(automerge::ROOT, key),
    };
    match got.ok().flatten() {
        Some((Value::Scalar(s), _)) => match s.as_ref() {
            ScalarValue::Str(s) => Some(s.to_string()),
            _ => None,
        },
        _ => None,
    }
}

fn root_u64(doc: &Automerge, key: &str) -> Option<u64> {
    match doc.get(automerge::ROOT, key).ok().flatten() {
        Some((Value::Scalar(s), _)) => match s.as_ref() {
            ScalarValue::Uint(n) => Some(*n),
            ScalarValue::Int(n) => u64::try_from(*n).ok(),
            _ => None,
        },
        _ => None,
    }
}

/// Checks `doc` after a sync message was applied; `before` are its heads
/// before. An empty document (nothing applied yet) passes. What the changes
/// may do to a Linkbook document (its type included) is
/// `linkbook_core::check_change`'s; `purged` answers it for a document id.
pub fn check(
    doc: &Automerge,
    before: &[ChangeHash],
    purged: &dyn Fn(&str) -> bool,
) -> Result<(), Refusal> {
    if doc.get_heads().is_empty() {
        return Ok(());
    }
    let kind = root_str(doc, "type", None)
        .ok_or_else(|| "document refused: it has no Linkbook type".to_string())?;
    if DocumentType::parse(&kind).is_none() {
        return Err("document refused: its type is not a Linkbook type".into());
    }
    match root_u64(doc, "schema_version") {
        Some(v) if v >= 1 && v <= SCHEMA_VERSION => {}
        _ => return Err("document refused: its schema version is missing or unsupported".into()),
    }
    linkbook_core::check_change(doc, before, purged).map_err(|v| v.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use automerge::AutoCommit;
    use automerge::transaction::Transactable;

    fn linkbook(kind: &str) -> AutoCommit {
        let mut doc = AutoCommit::new();
        doc.put(automerge::ROOT, "type", kind).expect("put");
        doc.put(automerge::ROOT, "schema_version", SCHEMA_VERSION)
            .expect("put");
        doc
    }

    #[test]
    fn a_linkbook_document_passes() {
        let mut doc = linkbook(DocumentType::Family.as_str());
        assert_eq!(check(doc.document(), &[], &|_| false), Ok(()));
    }

    #[test]
    fn an_empty_document_passes() {
        assert_eq!(check(AutoCommit::new().document(), &[], &|_| false), Ok(()));
    }

    #[test]
    fn a_foreign_document_is_refused() {
        let mut doc = AutoCommit::new();
        doc.put(automerge::ROOT, "hello", "world").expect("put");
        assert!(
            check(doc.document(), &[], &|_| false)
                .expect_err("refused")
                .contains("no Linkbook type")
        );
        let mut doc = linkbook("spreadsheet");
        assert!(
            check(doc.document(), &[], &|_| false)
                .expect_err("refused")
                .contains("not a Linkbook type")
        );
        let mut doc = linkbook(DocumentType::Family.as_str());
        doc.put(automerge::ROOT, "schema_version", SCHEMA_VERSION + 1)
            .expect("put");
        assert!(
            check(doc.document(), &[], &|_| false)
                .expect_err("refused")
                .contains("schema version")
        );
        let mut doc = linkbook(DocumentType::Family.as_str());
        doc.put(automerge::ROOT, "schema_version", "1")
            .expect("put");
        assert!(
            check(doc.document(), &[], &|_| false)
                .expect_err("refused")
                .contains("schema version")
        );
    }

    #[test]
    fn changing_the_type_is_refused() {
        let mut doc = linkbook(DocumentType::Family.as_str());
        let before = doc.get_heads();
        doc.put(automerge::ROOT, "type", DocumentType::FamilyDay.as_str())
            .expect("put");
        assert!(
            check(doc.document(), &before, &|_| false)
                .expect_err("refused")
                .contains("type may not")
        );
    }
}
