//! Small typed helpers over the Automerge read/write API.

use automerge::{
    AutoCommit, ObjId, ObjType, ReadDoc, ScalarValue, Value, transaction::Transactable,
};

use super::{DocumentType, SCHEMA_VERSION};
use crate::error::{Error, Result};

/// A string at `key`, from a scalar string or (as JavaScript clients write
/// them) a Text object.
pub(crate) fn get_str(doc: &AutoCommit, obj: &ObjId, key: &str) -> Option<String> {
    match doc.get(obj, key).ok().flatten()? {
        (Value::Scalar(s), _) => match s.as_ref() {
            ScalarValue::Str(s) => Some(s.to_string()),
            _ => None,
        },
        (Value::Object(ObjType::Text), id) => doc.text(&id).ok(),
        _ => None,
    }
}

/// A non-negative integer at `key` (JavaScript numbers may arrive as int or f64).
pub(crate) fn get_u64(doc: &AutoCommit, obj: &ObjId, key: &str) -> Option<u64> {
    match doc.get(obj, key).ok().flatten()? {
        (Value::Scalar(s), _) => scalar_u64(&s),
        _ => None,
    }
}

pub(crate) fn scalar_u64(s: &ScalarValue) -> Option<u64> {
    match s {
        ScalarValue::Uint(n) => Some(*n),
        ScalarValue::Int(n) if *n >= 0 => Some(*n as u64),
        ScalarValue::F64(f) if *f >= 0.0 && f.fract() == 0.0 => Some(*f as u64),
        _ => None,
    }
}

pub(crate) fn get_bool(doc: &AutoCommit, obj: &ObjId, key: &str) -> Option<bool> {
    match doc.get(obj, key).ok().flatten()? {
        (Value::Scalar(s), _) => match s.as_ref() {
            ScalarValue::Boolean(b) => Some(*b),
            _ => None,
        },
        _ => None,
    }
}

/// The map object at `key`, if there is one.
pub(crate) fn get_map(doc: &AutoCommit, obj: &ObjId, key: &str) -> Option<ObjId> {
    match doc.get(obj, key).ok().flatten()? {
        (Value::Object(ObjType::Map), id) => Some(id),
        _ => None,
    }
}

pub(crate) fn get_list(doc: &AutoCommit, obj: &ObjId, key: &str) -> Option<ObjId> {
    match doc.get(obj, key).ok().flatten()? {
        (Value::Object(ObjType::List), id) => Some(id),
        _ => None,
    }
}

/// The map at `key`, made if missing.
pub(crate) fn ensure_map(doc: &mut AutoCommit, obj: &ObjId, key: &str) -> Result<ObjId> {
    match get_map(doc, obj, key) {
        Some(id) => Ok(id),
        None => Ok(doc.put_object(obj, key, ObjType::Map)?),
    }
}

/// Writes `value`, or deletes the key for `None`.
pub(crate) fn put_opt_str(
    doc: &mut AutoCommit,
    obj: &ObjId,
    key: &str,
    value: Option<&str>,
) -> Result<()> {
    match value {
        Some(v) => doc.put(obj, key, v)?,
        None => {
            if doc.get(obj, key)?.is_some() {
                doc.delete(obj, key)?
            }
        }
    }
    Ok(())
}

/// Keys of a map, in order.
pub(crate) fn keys(doc: &AutoCommit, obj: &ObjId) -> Vec<String> {
    doc.keys(obj).collect()
}

/// Writes the header every Linkbook document starts with.
pub(crate) fn write_header(doc: &mut AutoCommit, kind: DocumentType) -> Result<()> {
    doc.put(automerge::ROOT, "type", kind.as_str())?;
    doc.put(automerge::ROOT, "schema_version", SCHEMA_VERSION)?;
    Ok(())
}

/// Reads a document's type and checks its schema version is one this code reads.
pub(crate) fn read_header(doc: &AutoCommit, id: &str) -> Result<DocumentType> {
    let kind = get_str(doc, &automerge::ROOT, "type")
        .ok_or_else(|| Error::InvalidDocument(format!("document {id} has no Linkbook type")))?;
    let kind = DocumentType::parse(&kind).ok_or_else(|| {
        Error::InvalidDocument(format!("document {id} has unknown type '{kind}'"))
    })?;
    let version = get_u64(doc, &automerge::ROOT, "schema_version")
        .ok_or_else(|| Error::InvalidDocument(format!("document {id} has no schema version")))?;
    if version == 0 || version > SCHEMA_VERSION {
        return Err(Error::UnsupportedSchema {
            document: id.to_string(),
            found: version,
            supported: SCHEMA_VERSION,
        });
    }
    Ok(kind)
}

/// The device that made the op behind an Automerge id: Linkbook devices use
/// their device id (a UUID) as actor; other peers show as hex.
pub(crate) fn actor_device(id: &automerge::ObjId) -> String {
    match id {
        automerge::ObjId::Root => String::new(),
        automerge::ObjId::Id(_, actor, _) => {
            let bytes = actor.to_bytes();
            match uuid::Uuid::from_slice(bytes) {
                Ok(u) => u.hyphenated().to_string(),
                Err(_) => hex::encode(bytes),
            }
        }
    }
}
