//! Linkbook's rules for changes: what a change from outside may do to each
//! document type (issue 11, "changes are checked too"). Pure, on a plain
//! `Automerge` and the heads before the change, so the relay (before it
//! stores or fans out a sync message's changes) and a device can both call it.
//!
//! Only what the new changes did is checked: `doc.diff(before, after)` gives
//! the patches (path + action) that changed the visible state, and each is
//! matched against the layout of its document type (the tables below, which
//! follow the layouts in `family`, `family_day` and `directory`):
//! - entries of a family's collections (case notes, members, prisoners,
//!   safeguarding flags, referrals) are never deleted or replaced (a member is
//!   removed by writing `removed_at`); collections and the root's `type`,
//!   `team`, `created_at`, `created_by` are fixed once written;
//! - a case note's `author`, `device`, `created_at` are fixed once written,
//!   its `history` is append-only (concurrent appends merge), and its `text`
//!   may change only if every value it had before is still there (a
//!   concurrent value kept as a conflict) or in a history item this change
//!   appended: what `edit_note` and `resolve_conflict` do;
//! - bookings and attendance of a family day are never deleted; a team
//!   directory entry is deleted only for a document the caller says was
//!   purged (a device's `apply_purges`) or a family it listed as closed (a
//!   device's `apply_retention`, by the device's clock);
//! - every value has the type its reader expects (strings, maps, lists,
//!   parseable dates and times, known choices) and strings keep within
//!   `validate`'s limits; fields Linkbook does not know are refused.
//!
//! Violations name a document part and a field, never content.

use std::collections::{HashMap, HashSet};

use automerge::{
    Automerge, ChangeHash, ObjId, ObjType, PatchAction, Prop, ROOT, ReadDoc, ScalarValue, Value,
};
use chrono::{DateTime, NaiveDate};

use super::family_day::MAX_PEOPLE;
use super::validate::{MAX_NAME, MAX_NOTE};
use super::{Custody, DocumentType, FamilyStatus, MemberRole, NoteCategory, SCHEMA_VERSION};
use crate::ids::DocumentId;

/// Why a change was refused: a document part and a field, no content.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RuleViolation {
    #[error("change refused: the document's type is not a Linkbook type")]
    NotLinkbook,
    #[error("change refused: {what} may not be deleted")]
    Deleted { what: &'static str },
    #[error("change refused: {what} may not be replaced")]
    Replaced { what: &'static str },
    #[error("change refused: {what}'s {field} may not be changed")]
    Fixed {
        what: &'static str,
        field: &'static str,
    },
    #[error("change refused: {what}'s {field} may not be replaced")]
    FieldReplaced {
        what: &'static str,
        field: &'static str,
    },
    #[error("change refused: {what}'s {field} may not be deleted")]
    FieldDeleted {
        what: &'static str,
        field: &'static str,
    },
    #[error("change refused: a case note's history may not be rewritten")]
    HistoryRewritten,
    #[error(
        "change refused: a case note's text may change only with its old text kept in its history"
    )]
    NoteTextLost,
    #[error("change refused: {what}'s {field} must be {expected}")]
    WrongType {
        what: &'static str,
        field: &'static str,
        expected: &'static str,
    },
    #[error("change refused: {what}'s {field} is longer than {max} characters")]
    TooLong {
        what: &'static str,
        field: &'static str,
        max: usize,
    },
    #[error("change refused: {what} has a field Linkbook does not know")]
    UnknownField { what: &'static str },
    #[error("change refused: {what} is not laid out as Linkbook lays it out")]
    Malformed { what: &'static str },
    #[error(
        "change refused: a team directory entry may be removed only for a purged document or a closed family"
    )]
    NotPurged,
}

use RuleViolation as V;

mod schema;
use schema::*;

/// Checks the changes applied to `doc` since `before` against Linkbook's
/// rules. `purged` says whether a document id was purged (only asked when a
/// team directory entry is deleted). A document with no heads, or none new,
/// passes.
pub fn check_change(
    doc: &Automerge,
    before: &[ChangeHash],
    purged: &dyn Fn(&str) -> bool,
) -> Result<(), RuleViolation> {
    let after = doc.get_heads();
    if after.is_empty() || after == before {
        return Ok(());
    }
    // A document is judged by the type it had: a change of type is a change
    // of a fixed field of that type.
    let at = if before.is_empty() {
        &after[..]
    } else {
        before
    };
    let kind = match doc.get_at(ROOT, "type", at).ok().flatten() {
        Some((Value::Scalar(s), _)) => match s.as_ref() {
            ScalarValue::Str(s) => DocumentType::parse(s),
            _ => None,
        },
        _ => None,
    };
    let root = match kind.ok_or(V::NotLinkbook)? {
        DocumentType::Family => &FAMILY,
        DocumentType::FamilyDay => &FAMILY_DAY,
        DocumentType::TeamDirectory => &DIRECTORY,
    };
    let mut check = Check {
        doc,
        before,
        purged,
        note_texts: HashSet::new(),
        appended: HashMap::new(),
    };
    for patch in doc.diff(before, &after) {
        let mut node = Node::Record(root);
        for (_, prop) in &patch.path {
            node = child(node, prop)?;
        }
        let parent = patch.path.last().map(|(o, _)| o);
        check.patch(node, &patch.obj, parent, &patch.action)?;
    }
    check.note_texts_kept()
}

struct Check<'a> {
    doc: &'a Automerge,
    before: &'a [ChangeHash],
    purged: &'a dyn Fn(&str) -> bool,
    /// Notes whose `text` changed.
    note_texts: HashSet<ObjId>,
    /// History items appended, by note.
    appended: HashMap<ObjId, Vec<ObjId>>,
}

impl Check<'_> {
    /// Whether `obj` held a value at `prop` before the change.
    fn existed(&self, obj: &ObjId, prop: impl Into<Prop>) -> bool {
        !self.before.is_empty()
            && self
                .doc
                .get_all_at(obj, prop, self.before)
                .map(|v| !v.is_empty())
                .unwrap_or(false)
    }

    fn patch(
        &mut self,
        node: Node,
        obj: &ObjId,
        parent: Option<&ObjId>,
        action: &PatchAction,
    ) -> Result<(), RuleViolation> {
        match node {
            Node::Record(rec) => self.record(rec, obj, action),
            Node::Entries(rec) => match action {
                PatchAction::PutMap { key, value, .. } => {
                    if uuid::Uuid::parse_str(key).is_err() {
                        return Err(V::Malformed { what: rec.what });
                    }
                    if self.existed(obj, key.as_str()) {
                        return Err(V::Replaced { what: rec.what });
                    }
                    self.value(rec.what, "entry", Shape::Record(rec), value)
                }
                PatchAction::Conflict { .. } => Err(V::Replaced { what: rec.what }),
                PatchAction::DeleteMap { .. } => Err(V::Deleted { what: rec.what }),
                _ => Err(V::Malformed { what: rec.what }),
            },
            Node::History(rec) => match action {
                PatchAction::Insert { values, .. } => {
                    let note = parent.cloned().unwrap_or(ROOT);
                    for (value, id, _) in values.iter() {
                        let value = (value.clone(), id.clone());
                        self.value(rec.what, "item", Shape::Record(rec), &value)?;
                        self.appended.entry(note.clone()).or_default().push(value.1);
                    }
                    Ok(())
                }
                PatchAction::PutSeq { .. }
                | PatchAction::DeleteSeq { .. }
                | PatchAction::Conflict { .. } => Err(V::HistoryRewritten),
                _ => Err(V::Malformed { what: rec.what }),
            },
            Node::Flat(flat) => self.flat(flat, obj, action),
            Node::Text(rec, field) => {
                let Some(parent) = parent else {
                    return Err(V::Malformed { what: rec.what });
                };
                if !matches!(
                    action,
                    PatchAction::SpliceText { .. } | PatchAction::DeleteSeq { .. }
                ) {
                    return Err(V::Malformed { what: rec.what });
                }
                // Editing a Text object that was there is changing its field.
                let was_there = !self.before.is_empty()
                    && self
                        .doc
                        .get_all_at(parent, field.key, self.before)
                        .map(|v| v.iter().any(|(_, id)| id == obj))
                        .unwrap_or(false);
                if was_there {
                    self.changed(rec, field, parent)?;
                }
                let text = (Value::Object(ObjType::Text), obj.clone());
                self.value(rec.what, field.key, field.shape, &text)
            }
        }
    }

    /// A field of `rec` (in object `obj`) that held a value changed.
    fn changed(
        &mut self,
        rec: &'static Record,
        field: &'static Field,
        obj: &ObjId,
    ) -> Result<(), RuleViolation> {
        if rec.append_only {
            return Err(V::HistoryRewritten);
        }
        if field.rule == Rule::Fixed || field.shape.is_container() {
            return Err(if field.shape.is_container() {
                V::FieldReplaced {
                    what: rec.what,
                    field: field.key,
                }
            } else {
                V::Fixed {
                    what: rec.what,
                    field: field.key,
                }
            });
        }
        if std::ptr::eq(rec, &NOTE) && field.key == "text" {
            self.note_texts.insert(obj.clone());
        }
        Ok(())
    }

    fn record(
        &mut self,
        rec: &'static Record,
        obj: &ObjId,
        action: &PatchAction,
    ) -> Result<(), RuleViolation> {
        match action {
            PatchAction::PutMap { key, value, .. } => {
                let field = rec.field(key)?;
                if self.existed(obj, key.as_str()) {
                    self.changed(rec, field, obj)?;
                }
                self.value(rec.what, field.key, field.shape, value)
            }
            PatchAction::Conflict { prop } => {
                let Prop::Map(key) = prop else {
                    return Err(V::Malformed { what: rec.what });
                };
                let field = rec.field(key)?;
                if self.existed(obj, key.as_str()) {
                    self.changed(rec, field, obj)?;
                }
                self.all_values(rec.what, field.key, field.shape, obj, key)
            }
            PatchAction::DeleteMap { key } => {
                let Ok(field) = rec.field(key) else {
                    // Clearing out a field Linkbook does not know loses nothing of ours.
                    return Ok(());
                };
                if rec.append_only {
                    return Err(V::HistoryRewritten);
                }
                if field.rule != Rule::Free || field.shape.is_container() {
                    return Err(V::FieldDeleted {
                        what: rec.what,
                        field: field.key,
                    });
                }
                Ok(())
            }
            _ => Err(V::Malformed { what: rec.what }),
        }
    }

    fn flat(&mut self, flat: Flat, obj: &ObjId, action: &PatchAction) -> Result<(), RuleViolation> {
        let what = flat.what();
        match action {
            PatchAction::PutMap { key, value, .. } => {
                let (_, field, shape) = flat.field(key)?;
                self.value(what, field, shape, value)
            }
            PatchAction::Conflict { prop } => {
                let Prop::Map(key) = prop else {
                    return Err(V::Malformed { what });
                };
                let (_, field, shape) = flat.field(key)?;
                self.all_values(what, field, shape, obj, key)
            }
            PatchAction::DeleteMap { key } => match flat {
                Flat::DirectoryFamilies | Flat::DirectoryDays => {
                    let id = key.split_once('.').map(|(id, _)| id).unwrap_or(key);
                    // A device drops a closed case past its team's retention
                    // by its own clock (`Repo::apply_retention`), before the
                    // relay's sweep purges it: the entry said "closed".
                    let closed = flat == Flat::DirectoryFamilies
                        && self
                            .texts(obj, key, Some(self.before))
                            .iter()
                            .any(|s| s == FamilyStatus::Closed.as_str());
                    if closed || (self.purged)(id) {
                        Ok(())
                    } else {
                        Err(V::NotPurged)
                    }
                }
                Flat::Bookings | Flat::Attendance => Err(V::Deleted { what }),
            },
            _ => Err(V::Malformed { what }),
        }
    }

    fn all_values(
        &self,
        what: &'static str,
        field: &'static str,
        shape: Shape,
        obj: &ObjId,
        key: &str,
    ) -> Result<(), RuleViolation> {
        for (value, id) in self.doc.get_all(obj, key).unwrap_or_default() {
            self.value(what, field, shape, &(value.into_owned(), id))?;
        }
        Ok(())
    }

    /// Checks one value's type (and a string's length).
    fn value(
        &self,
        what: &'static str,
        field: &'static str,
        shape: Shape,
        (value, id): &(Value<'_>, ObjId),
    ) -> Result<(), RuleViolation> {
        let wrong = V::WrongType {
            what,
            field,
            expected: shape.expected(),
        };
        let str_of = |v: &Value<'_>| -> Option<String> {
            match v {
                Value::Scalar(s) => match s.as_ref() {
                    ScalarValue::Str(s) => Some(s.to_string()),
                    _ => None,
                },
                _ => None,
            }
        };
        // Dates, times and choices are short: no need to read a megabyte to
        // refuse it. A Text object (JavaScript clients) is measured first.
        let short = |v: &Value<'_>| match v {
            Value::Object(ObjType::Text) if self.doc.length(id) <= 64 => self.doc.text(id).ok(),
            v => str_of(v).filter(|s| s.len() <= 64),
        };
        let ok = match shape {
            Shape::Str(max) => {
                let chars = match value {
                    Value::Object(ObjType::Text) => {
                        self.doc.text(id).map(|t| t.chars().count()).unwrap_or(0)
                    }
                    v => str_of(v).ok_or(wrong.clone())?.chars().count(),
                };
                if chars > max {
                    return Err(V::TooLong { what, field, max });
                }
                true
            }
            Shape::Time => short(value).is_some_and(|s| DateTime::parse_from_rfc3339(&s).is_ok()),
            Shape::Date => short(value).is_some_and(|s| s.parse::<NaiveDate>().is_ok()),
            Shape::Choice(parse) => short(value).is_some_and(|s| parse(&s)),
            Shape::Bool => matches!(value, Value::Scalar(s) if s.is_boolean()),
            Shape::Count(max) => match value {
                Value::Scalar(s) => super::am::scalar_u64(s).is_some_and(|n| n <= max),
                _ => false,
            },
            Shape::Version => match value {
                Value::Scalar(s) => {
                    super::am::scalar_u64(s).is_some_and(|n| (1..=SCHEMA_VERSION).contains(&n))
                }
                _ => false,
            },
            Shape::Record(_) | Shape::Entries(_) | Shape::Flat(_) => {
                matches!(value, Value::Object(ObjType::Map))
            }
            Shape::History(_) => matches!(value, Value::Object(ObjType::List)),
        };
        if ok { Ok(()) } else { Err(wrong) }
    }

    /// Every text a changed note had before is still one of its values or
    /// in a history item appended by this change.
    fn note_texts_kept(&self) -> Result<(), RuleViolation> {
        for note in &self.note_texts {
            let now = self.texts(note, "text", None);
            let appended: Vec<String> = self
                .appended
                .get(note)
                .into_iter()
                .flatten()
                .flat_map(|item| self.texts(item, "text", None))
                .collect();
            for old in self.texts(note, "text", Some(self.before)) {
                if !now.contains(&old) && !appended.contains(&old) {
                    return Err(V::NoteTextLost);
                }
            }
        }
        Ok(())
    }

    /// Every string value at `key` (scalar or Text), now or at `heads`.
    fn texts(&self, obj: &ObjId, key: &str, heads: Option<&[ChangeHash]>) -> Vec<String> {
        let values = match heads {
            Some(h) => self.doc.get_all_at(obj, key, h),
            None => self.doc.get_all(obj, key),
        };
        values
            .unwrap_or_default()
            .into_iter()
            .filter_map(|(v, id)| match v {
                Value::Scalar(s) => s.as_str().map(str::to_string),
                Value::Object(ObjType::Text) => match heads {
                    Some(h) => self.doc.text_at(&id, h).ok(),
                    None => self.doc.text(&id).ok(),
                },
                _ => None,
            })
            .collect()
    }
}

#[cfg(test)]
#[path = "rules_tests.rs"]
mod tests;
