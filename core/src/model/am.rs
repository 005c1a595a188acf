//! Small typed helpers over the Automerge read/write API.

use automerge::{
    AutoCommit, ObjId, ObjType, ReadDoc, ScalarValue, Value, transaction::Transactable,
};

use super::{DocumentType, SCHEMA_VERSION};
use crate::error::{Error, Result};

/// One map object's entries, read in a single pass. Automerge seeks through
/// its op columns for every `get`; reading a whole record field by field cost
/// more than everything else in a write (profile of the benchmark's seeding:
/// 64% in `seek_ops_by_map_key`), one `map_range` pass per object much less.
pub(crate) struct Fields(Vec<(String, Value<'static>, ObjId)>);

impl Fields {
    pub(crate) fn of(doc: &impl ReadDoc, obj: &ObjId) -> Fields {
        Fields(
            doc.map_range(obj, ..)
                .map(|item| {
                    let id = item.id();
                    (item.key.into_owned(), item.value.into_value(), id)
                })
                .collect(),
        )
    }

    fn get(&self, key: &str) -> Option<(&Value<'static>, &ObjId)> {
        self.0
            .iter()
            .find(|(k, _, _)| k == key)
            .map(|(_, v, id)| (v, id))
    }

    /// As [`get_str`].
    pub(crate) fn str(&self, doc: &impl ReadDoc, key: &str) -> Option<String> {
        match self.get(key)? {
            (Value::Scalar(s), _) => match s.as_ref() {
                ScalarValue::Str(s) => Some(s.to_string()),
                _ => None,
            },
            (Value::Object(ObjType::Text), id) => doc.text(id).ok(),
            _ => None,
        }
    }

    pub(crate) fn bool(&self, key: &str) -> Option<bool> {
        match self.get(key)? {
            (Value::Scalar(s), _) => match s.as_ref() {
                ScalarValue::Boolean(b) => Some(*b),
                _ => None,
            },
            _ => None,
        }
    }

    pub(crate) fn u64(&self, key: &str) -> Option<u64> {
        match self.get(key)? {
            (Value::Scalar(s), _) => scalar_u64(s),
            _ => None,
        }
    }

    pub(crate) fn map(&self, key: &str) -> Option<ObjId> {
        match self.get(key)? {
            (Value::Object(ObjType::Map), id) => Some(id.clone()),
            _ => None,
        }
    }

    pub(crate) fn list(&self, key: &str) -> Option<ObjId> {
        match self.get(key)? {
            (Value::Object(ObjType::List), id) => Some(id.clone()),
            _ => None,
        }
    }

    /// The entries holding map objects, as (key, object), in key order.
    pub(crate) fn maps(&self) -> Vec<(String, ObjId)> {
        self.0
            .iter()
            .filter(|(_, v, _)| matches!(v, Value::Object(ObjType::Map)))
            .map(|(k, _, id)| (k.clone(), id.clone()))
            .collect()
    }
}

/// A string at `key`, from a scalar string or (as JavaScript clients write
/// them) a Text object.
pub(crate) fn get_str(doc: &impl ReadDoc, obj: &ObjId, key: &str) -> Option<String> {
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
pub(crate) fn get_u64(doc: &impl ReadDoc, obj: &ObjId, key: &str) -> Option<u64> {
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

/// The map object at `key`, if there is one.
pub(crate) fn get_map(doc: &impl ReadDoc, obj: &ObjId, key: &str) -> Option<ObjId> {
    match doc.get(obj, key).ok().flatten()? {
        (Value::Object(ObjType::Map), id) => Some(id),
        _ => None,
    }
}

pub(crate) fn get_list(doc: &impl ReadDoc, obj: &ObjId, key: &str) -> Option<ObjId> {
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
pub(crate) fn keys(doc: &impl ReadDoc, obj: &ObjId) -> Vec<String> {
    doc.keys(obj).collect()
}

/// Writes the header every Linkbook document starts with.
pub(crate) fn write_header(doc: &mut AutoCommit, kind: DocumentType) -> Result<()> {
    doc.put(automerge::ROOT, "type", kind.as_str())?;
    // An Automerge `int`, which JavaScript reads as a number (a `uint` is a
    // BigInt there); a `uint` written before is read too (`get_u64`).
    doc.put(automerge::ROOT, "schema_version", SCHEMA_VERSION as i64)?;
    Ok(())
}

/// Reads a document's type and checks its schema version is one this code reads.
pub(crate) fn read_header(doc: &impl ReadDoc, id: &str) -> Result<DocumentType> {
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

/// The device that made the op behind an Automerge id (docs/adr/0007):
/// Linkbook actors are the device id's 16 bytes followed by the opened
/// store's random suffix (before, the 16 bytes alone: still read as the
/// device); other peers' actors show as hex.
pub(crate) fn actor_device(id: &automerge::ObjId) -> String {
    match id {
        automerge::ObjId::Root => String::new(),
        automerge::ObjId::Id(_, actor, _) => device_of(actor),
    }
}

/// The device an actor belongs to (see [`actor_device`]).
pub(crate) fn device_of(actor: &automerge::ActorId) -> String {
    let bytes = actor.to_bytes();
    let linkbook = bytes.len() == 16 || bytes.len() == 16 + crate::store::documents::SESSION_BYTES;
    match uuid::Uuid::from_slice(bytes.get(..16).unwrap_or_default()) {
        Ok(u) if linkbook => u.hyphenated().to_string(),
        _ => hex::encode(bytes),
    }
}

/// The message of every change a device commits: the worker's name, so a
/// conflict names who wrote each value wherever the change travels.
pub(crate) fn change_message(worker: &str) -> String {
    serde_json::json!({ "worker": worker }).to_string()
}

/// Who wrote an op and when, from the change that holds it.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct Written {
    pub worker: Option<String>,
    pub time: Option<chrono::DateTime<chrono::Utc>>,
}

/// [`Written`] for the op behind `id`: the worker from the change's message
/// ([`change_message`]; other peers' messages name no worker), the time
/// from its timestamp (Linkbook writes milliseconds; a value too small for
/// that is taken as seconds, which JavaScript clients write; 0 is none).
pub(crate) fn written(doc: &AutoCommit, id: &automerge::ObjId) -> Written {
    let Some(change) = doc
        .hash_for_opid(id)
        .and_then(|h| ReadDoc::get_change_by_hash(doc, &h))
    else {
        return Written::default();
    };
    let worker = change
        .message()
        .and_then(|m| serde_json::from_str::<serde_json::Value>(m).ok())
        .and_then(|m| m["worker"].as_str().map(str::to_string))
        .map(|w| w.chars().take(super::validate::MAX_NAME).collect());
    let t = change.timestamp();
    let time = match t {
        t if t <= 0 => None,
        t if t < 100_000_000_000 => chrono::DateTime::from_timestamp(t, 0),
        t => chrono::DateTime::from_timestamp_millis(t),
    };
    Written { worker, time }
}
