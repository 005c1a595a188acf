//! Finding and settling concurrent values.
//!
//! Where two devices set the same field while apart, Automerge keeps every
//! value and picks one deterministically for plain reads. Linkbook does not
//! let that pick stand silently: every field with more than one distinct value
//! is reported (value, device, worker and time) until a worker writes the
//! one to keep.

use automerge::{
    AutoCommit, ObjId, ObjType, ROOT, ReadDoc, ScalarValue, Value, ValueRef,
    transaction::Transactable,
};
use serde_json::Value as Json;

use super::am::{actor_device, get_map, written};
use super::{Conflict, ConflictValue, DocumentType, family_day};
use crate::error::{Error, Result};
use crate::ids::DocumentId;

pub(crate) fn scalar_json(s: &ScalarValue) -> Json {
    match s {
        ScalarValue::Str(s) => Json::String(s.to_string()),
        ScalarValue::Int(n) | ScalarValue::Timestamp(n) => Json::from(*n),
        ScalarValue::Uint(n) => Json::from(*n),
        ScalarValue::F64(f) => Json::from(*f),
        ScalarValue::Counter(c) => Json::from(i64::from(c)),
        ScalarValue::Boolean(b) => Json::Bool(*b),
        ScalarValue::Bytes(b) => Json::String(hex::encode(b)),
        ScalarValue::Null | ScalarValue::Unknown { .. } => Json::Null,
    }
}

/// Every unresolved conflict in a document.
pub(crate) fn find(doc: &AutoCommit, id: DocumentId, kind: DocumentType) -> Vec<Conflict> {
    let mut out = Vec::new();
    walk(doc, &ROOT, "", id, kind, &mut out);
    out
}

fn walk(
    doc: &AutoCommit,
    obj: &ObjId,
    prefix: &str,
    id: DocumentId,
    kind: DocumentType,
    out: &mut Vec<Conflict>,
) {
    // One pass over the object tells which keys hold several values and
    // which hold maps; only those are read again (per-key gets were most of
    // a write's cost).
    let items: Vec<(String, bool, Option<ObjId>)> = doc
        .map_range(obj, ..)
        .map(|item| {
            let child = matches!(item.value, ValueRef::Object(ObjType::Map)).then(|| item.id());
            (item.key.into_owned(), item.conflict, child)
        })
        .collect();
    for (key, conflict, child) in items {
        let path = if prefix.is_empty() {
            key.clone()
        } else {
            format!("{prefix}/{key}")
        };
        if conflict && !(kind == DocumentType::FamilyDay && family_day::merges_by_rule(&path)) {
            let values = doc.get_all(obj, key.as_str()).unwrap_or_default();
            let scalars: Vec<ConflictValue> = values
                .iter()
                .filter_map(|(v, exid)| match v {
                    Value::Scalar(s) => {
                        let written = written(doc, exid);
                        Some(ConflictValue {
                            value: scalar_json(s),
                            device: actor_device(exid),
                            worker: written.worker,
                            time: written.time,
                        })
                    }
                    _ => None,
                })
                .collect();
            let first = scalars.first().map(|v| &v.value);
            if scalars.len() > 1 && scalars.iter().any(|v| Some(&v.value) != first) {
                out.push(Conflict {
                    document_id: id,
                    document_type: kind,
                    path: path.clone(),
                    values: scalars,
                });
            }
        }
        // Walk into the value plain reads see; only maps hold editable fields.
        if let Some(child) = child {
            walk(doc, &child, &path, id, kind, out);
        }
    }
}

/// Writes `value` at `path`, replacing every concurrent value there.
/// Settling a case note's text keeps the values it drops in the note's
/// history, as an edit does (the change rules refuse a note text lost).
pub(crate) fn resolve(
    doc: &mut AutoCommit,
    path: &str,
    value: &Json,
    by: &super::Author,
) -> Result<()> {
    let no_conflict =
        || Error::invalid("conflict path", format!("there is no conflict at '{path}'"));
    let mut parts: Vec<&str> = path.split('/').collect();
    let last = parts
        .pop()
        .filter(|k| !k.is_empty())
        .ok_or_else(no_conflict)?;
    let is_note_text = last == "text" && parts.len() == 2 && parts[0] == "notes";
    let mut obj = ROOT;
    for part in parts {
        obj = get_map(doc, &obj, part).ok_or_else(no_conflict)?;
    }
    let current: Vec<ScalarValue> = doc
        .get_all(&obj, last)?
        .into_iter()
        .filter_map(|(v, _)| v.into_scalar().ok())
        .collect();
    if current.len() < 2 {
        return Err(no_conflict());
    }
    let scalar = match value {
        Json::String(s) if current.iter().any(|c| c.is_str()) => {
            ScalarValue::Str(s.as_str().into())
        }
        Json::Bool(b) if current.iter().any(|c| c.is_boolean()) => ScalarValue::Boolean(*b),
        // Counts written before they were ints (uint: a BigInt in
        // JavaScript) are settled as an int, what Linkbook writes now.
        Json::Number(n) if current.iter().any(|c| c.is_uint()) && n.as_u64().is_some() => {
            match n.as_i64() {
                Some(i) => ScalarValue::Int(i),
                None => ScalarValue::Uint(n.as_u64().unwrap_or_default()),
            }
        }
        Json::Number(n) if current.iter().any(|c| c.is_int()) && n.as_i64().is_some() => {
            ScalarValue::Int(n.as_i64().unwrap_or_default())
        }
        other => {
            return Err(Error::invalid(
                "conflict value",
                format!("{other} is not the kind of value '{path}' holds"),
            ));
        }
    };
    if is_note_text {
        let mut dropped: Vec<String> = Vec::new();
        for old in current.iter().filter_map(|c| c.as_str()) {
            if Some(old) != scalar.as_str() && !dropped.iter().any(|d| d == old) {
                dropped.push(old.to_string());
            }
        }
        for old in dropped {
            super::family::push_history(doc, &obj, &old, by)?;
        }
    }
    doc.put(&obj, last, scalar)?;
    Ok(())
}
