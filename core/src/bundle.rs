//! The export file: every document of a device in one CBOR file, for a sync by
//! hand (and, before the relay, for tests that merge two replicas).
//!
//! `{ "format": "linkbook-export", "version": 1, "team": <team>,
//!    "documents": [ { "id": <document id>, "type": <type>, "data": <Automerge save()> } ] }`

use ciborium::Value;

use crate::error::{Error, Result};
use crate::ids::DocumentId;

const FORMAT: &str = "linkbook-export";
const VERSION: u64 = 1;

#[derive(Debug)]
pub(crate) struct ExportedDocument {
    pub id: DocumentId,
    pub data: Vec<u8>,
}

pub(crate) fn encode(team: &str, docs: Vec<ExportedDocument>) -> Result<Vec<u8>> {
    let documents = docs
        .into_iter()
        .map(|d| {
            Value::Map(vec![
                (Value::Text("id".into()), Value::Text(d.id.to_string())),
                (Value::Text("data".into()), Value::Bytes(d.data)),
            ])
        })
        .collect();
    let root = Value::Map(vec![
        (Value::Text("format".into()), Value::Text(FORMAT.into())),
        (
            Value::Text("version".into()),
            Value::Integer(VERSION.into()),
        ),
        (Value::Text("team".into()), Value::Text(team.into())),
        (Value::Text("documents".into()), Value::Array(documents)),
    ]);
    let mut out = Vec::new();
    ciborium::into_writer(&root, &mut out)
        .map_err(|e| Error::InvalidDocument(format!("could not encode export: {e}")))?;
    Ok(out)
}

fn field<'a>(map: &'a [(Value, Value)], name: &str) -> Option<&'a Value> {
    map.iter()
        .find(|(k, _)| k.as_text() == Some(name))
        .map(|(_, v)| v)
}

/// Decodes an export file; the error says what is wrong with it.
pub(crate) fn decode(bytes: &[u8]) -> Result<(String, Vec<ExportedDocument>)> {
    let bad = |why: &str| Error::invalid("import file", why.to_string());
    let root: Value =
        ciborium::from_reader(bytes).map_err(|_| bad("not a Linkbook export file (not CBOR)"))?;
    let map = root
        .as_map()
        .ok_or_else(|| bad("not a Linkbook export file"))?;
    if field(map, "format").and_then(Value::as_text) != Some(FORMAT) {
        return Err(bad("not a Linkbook export file"));
    }
    let version = field(map, "version")
        .and_then(Value::as_integer)
        .and_then(|i| u64::try_from(i).ok());
    if version != Some(VERSION) {
        return Err(bad("export format version is not 1: update Linkbook"));
    }
    let team = field(map, "team")
        .and_then(Value::as_text)
        .ok_or_else(|| bad("no team"))?
        .to_string();
    let docs = field(map, "documents")
        .and_then(Value::as_array)
        .ok_or_else(|| bad("no documents list"))?;
    let mut out = Vec::with_capacity(docs.len());
    for d in docs {
        let d = d
            .as_map()
            .ok_or_else(|| bad("a document entry is not a map"))?;
        let id = field(d, "id")
            .and_then(Value::as_text)
            .ok_or_else(|| bad("a document has no id"))?;
        let id = DocumentId::parse(id, "document id")?;
        let data = field(d, "data")
            .and_then(Value::as_bytes)
            .ok_or_else(|| bad("a document has no data"))?
            .clone();
        out.push(ExportedDocument { id, data });
    }
    Ok((team, out))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_refusals() -> Result<()> {
        let id = DocumentId::random();
        let bytes = encode(
            "north",
            vec![ExportedDocument {
                id,
                data: vec![1, 2, 3],
            }],
        )?;
        let (team, docs) = decode(&bytes)?;
        assert_eq!(team, "north");
        assert_eq!(docs[0].id, id);
        assert_eq!(docs[0].data, vec![1, 2, 3]);
        assert!(decode(b"hello").is_err());
        assert!(decode(&bytes[..bytes.len() - 2]).is_err());
        Ok(())
    }
}
