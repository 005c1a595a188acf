//! The automerge-repo sync protocol, version 1: the messages devices and the
//! relay exchange, one CBOR map per binary WebSocket message.
//!
//! Sans-I/O: this module only turns bytes into [`Message`]s and back; the
//! caller owns the socket. Decoding accepts any map-length encoding,
//! `undefined` values and unknown keys (JavaScript's cbor-x writes all of
//! them), and reports an unknown `type` as [`Message::Unknown`] rather than
//! failing, so the caller decides what to do with it.

use ciborium::Value;

mod automerge_input;
mod bounded;
pub mod dto;

pub use automerge_input::*;
pub mod split;

/// The only protocol version Linkbook speaks.
pub const PROTOCOL_VERSION: &str = "1";

/// What a peer says about itself when joining.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PeerMetadata {
    pub storage_id: Option<String>,
    pub is_ephemeral: bool,
    /// Linkbook's extension (`maxMessageBytes`): the largest message the
    /// relay accepts, so the device splits its sync messages under it
    /// (`split`). Other peers ignore it.
    pub max_message_bytes: Option<u64>,
}

/// One protocol message.
#[derive(Debug, Clone, PartialEq)]
pub enum Message {
    Join {
        sender_id: String,
        peer_metadata: PeerMetadata,
        supported_protocol_versions: Vec<String>,
    },
    Peer {
        sender_id: String,
        target_id: String,
        peer_metadata: PeerMetadata,
        selected_protocol_version: String,
    },
    Leave {
        sender_id: String,
    },
    Error {
        message: String,
    },
    /// An Automerge sync message for one document.
    Sync {
        sender_id: String,
        target_id: String,
        document_id: String,
        data: Vec<u8>,
    },
    /// A sync message from a peer that does not have the document.
    Request {
        sender_id: String,
        target_id: String,
        document_id: String,
        data: Vec<u8>,
    },
    /// The document does not exist, or the peer may not have it: the two
    /// are deliberately the same answer.
    DocUnavailable {
        sender_id: String,
        target_id: String,
        document_id: String,
    },
    Ephemeral {
        sender_id: String,
        target_id: String,
        document_id: String,
        session_id: String,
        count: u64,
        data: Vec<u8>,
    },
    RemoteSubscriptionChange {
        sender_id: String,
        target_id: String,
        add: Vec<String>,
        remove: Vec<String>,
    },
    RemoteHeadsChanged {
        sender_id: String,
        target_id: String,
        document_id: String,
    },
    /// Linkbook's extension, sent by the relay right after `peer` to a device
    /// that connected with `/v1/sync?since=CURSOR`: the team's documents
    /// changed since that cursor (the relay sends a `sync` for each at once)
    /// and the cursor to connect with next time. Never sent to other peers.
    ChangedSince {
        cursor: i64,
        document_ids: Vec<String>,
        /// Every document of the team the office purged, and when: the
        /// device deletes them before anything else. On the wire `purged`
        /// holds the ids and `purgedAt` the times, index for index, so a
        /// device that predates `purgedAt` still reads the ids.
        purged: Vec<dto::Purged>,
        /// The team's policy (days; absent: no limit).
        retention_days: Option<i64>,
        lease_days: Option<i64>,
    },
    /// Linkbook's extension, sent by the relay to the device whose sync
    /// message it refused for this one document (an actor sequence clash:
    /// [`ACTOR_CLASH`]); nothing of it was stored and the connection goes on
    /// with the device's other documents. Other peers ignore unknown types.
    DocRefused {
        sender_id: String,
        target_id: String,
        document_id: String,
        reason: String,
    },
    /// A well-formed message of a type this version does not know.
    Unknown {
        message_type: String,
    },
}

/// Why bytes are not a protocol message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("message is not CBOR")]
    NotCbor,
    #[error("message holds more than {0} CBOR items")]
    TooManyItems(usize),
    #[error("message is not a CBOR map")]
    NotAMap,
    #[error("message has no type")]
    NoType,
    #[error("{message_type} message lacks '{field}'")]
    MissingField {
        message_type: String,
        field: &'static str,
    },
}

fn text(v: &str) -> Value {
    Value::Text(v.to_string())
}

fn entry(k: &str, v: Value) -> (Value, Value) {
    (text(k), v)
}

fn metadata_value(m: &PeerMetadata) -> Value {
    let mut map = vec![entry("isEphemeral", Value::Bool(m.is_ephemeral))];
    if let Some(s) = &m.storage_id {
        map.push(entry("storageId", text(s)));
    }
    if let Some(n) = m.max_message_bytes {
        map.push(entry("maxMessageBytes", Value::Integer(n.into())));
    }
    Value::Map(map)
}

impl Message {
    /// The message's `type` field.
    pub fn message_type(&self) -> &str {
        match self {
            Message::Join { .. } => "join",
            Message::Peer { .. } => "peer",
            Message::Leave { .. } => "leave",
            Message::Error { .. } => "error",
            Message::Sync { .. } => "sync",
            Message::Request { .. } => "request",
            Message::DocUnavailable { .. } => "doc-unavailable",
            Message::Ephemeral { .. } => "ephemeral",
            Message::RemoteSubscriptionChange { .. } => "remote-subscription-change",
            Message::RemoteHeadsChanged { .. } => "remote-heads-changed",
            Message::ChangedSince { .. } => "changed-since",
            Message::DocRefused { .. } => "doc-refused",
            Message::Unknown { message_type } => message_type,
        }
    }

    /// CBOR bytes for one WebSocket message.
    pub fn encode(&self) -> Vec<u8> {
        let mut map = vec![entry("type", text(self.message_type()))];
        let ids = |map: &mut Vec<(Value, Value)>, s: &str, t: &str| {
            map.push(entry("senderId", text(s)));
            map.push(entry("targetId", text(t)));
        };
        match self {
            Message::Join {
                sender_id,
                peer_metadata,
                supported_protocol_versions,
            } => {
                map.push(entry("senderId", text(sender_id)));
                map.push(entry("peerMetadata", metadata_value(peer_metadata)));
                map.push(entry(
                    "supportedProtocolVersions",
                    Value::Array(
                        supported_protocol_versions
                            .iter()
                            .map(|v| text(v))
                            .collect(),
                    ),
                ));
            }
            Message::Peer {
                sender_id,
                target_id,
                peer_metadata,
                selected_protocol_version,
            } => {
                ids(&mut map, sender_id, target_id);
                map.push(entry("peerMetadata", metadata_value(peer_metadata)));
                map.push(entry(
                    "selectedProtocolVersion",
                    text(selected_protocol_version),
                ));
            }
            Message::Leave { sender_id } => map.push(entry("senderId", text(sender_id))),
            Message::Error { message } => map.push(entry("message", text(message))),
            Message::Sync {
                sender_id,
                target_id,
                document_id,
                data,
            }
            | Message::Request {
                sender_id,
                target_id,
                document_id,
                data,
            } => {
                ids(&mut map, sender_id, target_id);
                map.push(entry("documentId", text(document_id)));
                map.push(entry("data", Value::Bytes(data.clone())));
            }
            Message::DocUnavailable {
                sender_id,
                target_id,
                document_id,
            }
            | Message::RemoteHeadsChanged {
                sender_id,
                target_id,
                document_id,
            } => {
                ids(&mut map, sender_id, target_id);
                map.push(entry("documentId", text(document_id)));
            }
            Message::Ephemeral {
                sender_id,
                target_id,
                document_id,
                session_id,
                count,
                data,
            } => {
                ids(&mut map, sender_id, target_id);
                map.push(entry("documentId", text(document_id)));
                map.push(entry("sessionId", text(session_id)));
                map.push(entry("count", Value::Integer((*count).into())));
                map.push(entry("data", Value::Bytes(data.clone())));
            }
            Message::RemoteSubscriptionChange {
                sender_id,
                target_id,
                add,
                remove,
            } => {
                ids(&mut map, sender_id, target_id);
                map.push(entry(
                    "add",
                    Value::Array(add.iter().map(|s| text(s)).collect()),
                ));
                map.push(entry(
                    "remove",
                    Value::Array(remove.iter().map(|s| text(s)).collect()),
                ));
            }
            Message::ChangedSince {
                cursor,
                document_ids,
                purged,
                retention_days,
                lease_days,
            } => {
                map.push(entry("cursor", Value::Integer((*cursor).into())));
                map.push(entry(
                    "documentIds",
                    Value::Array(document_ids.iter().map(|s| text(s)).collect()),
                ));
                map.push(entry(
                    "purged",
                    Value::Array(purged.iter().map(|p| text(&p.id)).collect()),
                ));
                map.push(entry(
                    "purgedAt",
                    Value::Array(purged.iter().map(|p| text(&p.purged_at)).collect()),
                ));
                if let Some(d) = retention_days {
                    map.push(entry("retentionDays", Value::Integer((*d).into())));
                }
                if let Some(d) = lease_days {
                    map.push(entry("leaseDays", Value::Integer((*d).into())));
                }
            }
            Message::DocRefused {
                sender_id,
                target_id,
                document_id,
                reason,
            } => {
                ids(&mut map, sender_id, target_id);
                map.push(entry("documentId", text(document_id)));
                map.push(entry("reason", text(reason)));
            }
            Message::Unknown { .. } => {}
        }
        let mut out = Vec::new();
        // Writing a Value to a Vec cannot fail.
        let _ = ciborium::into_writer(&Value::Map(map), &mut out);
        out
    }

    /// Decodes one WebSocket message.
    pub fn decode(bytes: &[u8]) -> Result<Message, DecodeError> {
        // ciborium's `Value` costs ~50 bytes per item: count them first.
        bounded::cbor_items_within(bytes, bounded::MAX_CBOR_ITEMS).map_err(|too_many| {
            if too_many {
                DecodeError::TooManyItems(bounded::MAX_CBOR_ITEMS)
            } else {
                DecodeError::NotCbor
            }
        })?;
        let value: Value = ciborium::from_reader(bytes).map_err(|_| DecodeError::NotCbor)?;
        let Value::Map(map) = value else {
            return Err(DecodeError::NotAMap);
        };
        let get = |k: &str| {
            map.iter()
                .find(|(key, _)| key.as_text() == Some(k))
                .map(|(_, v)| v)
                .filter(|v| !v.is_null())
        };
        let message_type = get("type")
            .and_then(Value::as_text)
            .ok_or(DecodeError::NoType)?
            .to_string();
        let missing = |field| DecodeError::MissingField {
            message_type: message_type.clone(),
            field,
        };
        let string = |field: &'static str| -> Result<String, DecodeError> {
            get(field)
                .and_then(Value::as_text)
                .map(str::to_string)
                .ok_or_else(|| missing(field))
        };
        let bytes = |field: &'static str| -> Result<Vec<u8>, DecodeError> {
            match get(field) {
                Some(Value::Bytes(b)) => Ok(b.clone()),
                // Some clients send a typed array as an array of integers.
                Some(Value::Array(items)) => items
                    .iter()
                    .map(|i| i.as_integer().and_then(|n| u8::try_from(n).ok()))
                    .collect::<Option<Vec<u8>>>()
                    .ok_or_else(|| missing(field)),
                _ => Err(missing(field)),
            }
        };
        let strings = |field: &str| -> Vec<String> {
            get(field)
                .and_then(Value::as_array)
                .map(|a| {
                    a.iter()
                        .filter_map(|v| v.as_text().map(str::to_string))
                        .collect()
                })
                .unwrap_or_default()
        };
        let metadata = || -> PeerMetadata {
            let Some(Value::Map(m)) = get("peerMetadata") else {
                return PeerMetadata::default();
            };
            let field = |k: &str| {
                m.iter()
                    .find(|(key, _)| key.as_text() == Some(k))
                    .map(|(_, v)| v)
            };
            PeerMetadata {
                storage_id: field("storageId")
                    .and_then(Value::as_text)
                    .map(str::to_string),
                is_ephemeral: field("isEphemeral")
                    .and_then(Value::as_bool)
                    .unwrap_or(false),
                max_message_bytes: field("maxMessageBytes")
                    .and_then(Value::as_integer)
                    .and_then(|n| u64::try_from(n).ok()),
            }
        };
        Ok(match message_type.as_str() {
            "join" => Message::Join {
                sender_id: string("senderId")?,
                peer_metadata: metadata(),
                supported_protocol_versions: strings("supportedProtocolVersions"),
            },
            "peer" => Message::Peer {
                sender_id: string("senderId")?,
                target_id: string("targetId")?,
                peer_metadata: metadata(),
                selected_protocol_version: string("selectedProtocolVersion")?,
            },
            "leave" => Message::Leave {
                sender_id: string("senderId")?,
            },
            "error" => Message::Error {
                message: string("message").unwrap_or_default(),
            },
            "sync" => Message::Sync {
                sender_id: string("senderId")?,
                target_id: string("targetId")?,
                document_id: string("documentId")?,
                data: bytes("data")?,
            },
            "request" => Message::Request {
                sender_id: string("senderId")?,
                target_id: string("targetId")?,
                document_id: string("documentId")?,
                data: bytes("data")?,
            },
            "doc-unavailable" => Message::DocUnavailable {
                sender_id: string("senderId")?,
                target_id: string("targetId")?,
                document_id: string("documentId")?,
            },
            "ephemeral" => Message::Ephemeral {
                sender_id: string("senderId")?,
                target_id: string("targetId")?,
                document_id: string("documentId")?,
                session_id: string("sessionId").unwrap_or_default(),
                count: get("count")
                    .and_then(Value::as_integer)
                    .and_then(|i| u64::try_from(i).ok())
                    .unwrap_or(0),
                data: bytes("data").unwrap_or_default(),
            },
            "remote-subscription-change" => Message::RemoteSubscriptionChange {
                sender_id: string("senderId")?,
                target_id: string("targetId")?,
                add: strings("add"),
                remove: strings("remove"),
            },
            "remote-heads-changed" => Message::RemoteHeadsChanged {
                sender_id: string("senderId")?,
                target_id: string("targetId")?,
                document_id: string("documentId").unwrap_or_default(),
            },
            "changed-since" => Message::ChangedSince {
                cursor: get("cursor")
                    .and_then(Value::as_integer)
                    .and_then(|i| i64::try_from(i).ok())
                    .ok_or_else(|| missing("cursor"))?,
                document_ids: strings("documentIds"),
                purged: {
                    let mut at = strings("purgedAt").into_iter();
                    strings("purged")
                        .into_iter()
                        .map(|id| dto::Purged {
                            id,
                            purged_at: at.next().unwrap_or_default(),
                        })
                        .collect()
                },
                retention_days: get("retentionDays")
                    .and_then(Value::as_integer)
                    .and_then(|i| i64::try_from(i).ok()),
                lease_days: get("leaseDays")
                    .and_then(Value::as_integer)
                    .and_then(|i| i64::try_from(i).ok()),
            },
            "doc-refused" => Message::DocRefused {
                sender_id: string("senderId")?,
                target_id: string("targetId")?,
                document_id: string("documentId")?,
                reason: string("reason").unwrap_or_default(),
            },
            _ => Message::Unknown { message_type },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_message_round_trips() {
        let (s, t, d) = (
            "device-1".to_string(),
            "relay".to_string(),
            "2bnYJKUBqTvwxmpeAqcxyvbAmUPr".to_string(),
        );
        let meta = PeerMetadata {
            storage_id: Some("store".into()),
            is_ephemeral: false,
            max_message_bytes: Some(1 << 20),
        };
        for m in [
            Message::Join {
                sender_id: s.clone(),
                peer_metadata: meta.clone(),
                supported_protocol_versions: vec!["1".into()],
            },
            Message::Peer {
                sender_id: s.clone(),
                target_id: t.clone(),
                peer_metadata: meta,
                selected_protocol_version: "1".into(),
            },
            Message::Leave {
                sender_id: s.clone(),
            },
            Message::Error {
                message: "bad".into(),
            },
            Message::Sync {
                sender_id: s.clone(),
                target_id: t.clone(),
                document_id: d.clone(),
                data: vec![1, 2],
            },
            Message::Request {
                sender_id: s.clone(),
                target_id: t.clone(),
                document_id: d.clone(),
                data: vec![3],
            },
            Message::DocUnavailable {
                sender_id: s.clone(),
                target_id: t.clone(),
                document_id: d.clone(),
            },
            Message::Ephemeral {
                sender_id: s.clone(),
                target_id: t.clone(),
                document_id: d.clone(),
                session_id: "x".into(),
                count: 4,
                data: vec![5],
            },
            Message::RemoteSubscriptionChange {
                sender_id: s.clone(),
                target_id: t.clone(),
                add: vec!["a".into()],
                remove: vec![],
            },
            Message::RemoteHeadsChanged {
                sender_id: s.clone(),
                target_id: t.clone(),
                document_id: d.clone(),
            },
            Message::ChangedSince {
                cursor: 42,
                document_ids: vec![d.clone()],
                purged: vec![dto::Purged {
                    id: d.clone(),
                    purged_at: "2026-01-02T03:04:05+00:00".into(),
                }],
                retention_days: Some(365),
                lease_days: None,
            },
            Message::DocRefused {
                sender_id: s.clone(),
                target_id: t.clone(),
                document_id: d.clone(),
                reason: ACTOR_CLASH.into(),
            },
        ] {
            assert_eq!(
                Message::decode(&m.encode()).as_ref(),
                Ok(&m),
                "{}",
                m.message_type()
            );
        }
    }

    /// What Automerge 0.12 does with a change whose actor and seq a document
    /// holds with other content: the whole batch refused, nothing applied,
    /// as `DuplicateSeqNumber` (docs/adr/0007).
    #[test]
    fn automerge_refuses_an_actor_sequence_clash_as_duplicate_seq() {
        use automerge::{AutoCommit, ROOT, transaction::Transactable};
        let mut base = AutoCommit::new();
        base.put(ROOT, "name", "Smith").expect("put");
        base.commit();
        let heads = base.get_heads();
        let actor = automerge::ActorId::from([7u8; 16].as_slice());
        let mut write = |name: &str| {
            let mut fork = base.fork().with_actor(actor.clone());
            fork.put(ROOT, "name", name).expect("put");
            fork.put(ROOT, "other", name).expect("put");
            fork.commit();
            (fork.save_after(&heads), fork)
        };
        let (_, mut ours) = write("Smyth");
        let (theirs, _) = write("Smith-Jones");
        let before = ours.get_heads();
        let e = ours.load_incremental(&theirs).expect_err("a clash");
        assert!(is_actor_clash(&e), "{e}");
        assert_eq!(ours.get_heads(), before, "nothing of it applied");
        // A device sent such a change skips that document, saying why.
        let reason = crate::sync::skipped::reason(&crate::Error::Document(e));
        assert!(reason.is_some_and(|r| r.contains("clash")));
        assert!(!is_actor_clash(&automerge::AutomergeError::Fail));
    }

    /// A join as the JavaScript client (cbor-x) writes it, captured as bytes:
    /// a map with an `undefined` value and an unknown key.
    #[test]
    fn accepts_undefined_values_and_unknown_keys() {
        let value = Value::Map(vec![
            entry("type", text("join")),
            entry("senderId", text("peer-js")),
            entry(
                "peerMetadata",
                Value::Map(vec![
                    entry("storageId", Value::Null),
                    entry("isEphemeral", Value::Bool(true)),
                ]),
            ),
            entry("supportedProtocolVersions", Value::Array(vec![text("1")])),
            entry("someFutureKey", Value::Integer(7.into())),
        ]);
        let mut bytes = Vec::new();
        ciborium::into_writer(&value, &mut bytes).expect("encode");
        // Replace the encoded null (0xf6) by CBOR undefined (0xf7).
        let pos = bytes.iter().position(|b| *b == 0xf6).expect("null byte");
        bytes[pos] = 0xf7;
        let m = Message::decode(&bytes).expect("decode");
        assert_eq!(
            m,
            Message::Join {
                sender_id: "peer-js".into(),
                peer_metadata: PeerMetadata {
                    storage_id: None,
                    is_ephemeral: true,
                    max_message_bytes: None,
                },
                supported_protocol_versions: vec!["1".into()],
            }
        );
    }

    /// A sync message whose Bloom filter has entries but no bits: Automerge
    /// 0.12 divides by zero on it (tests/fuzz-crashers/automerge-sync/).
    #[test]
    fn sync_messages_with_unusable_bloom_filters_are_refused() {
        // type 0x42, no heads, no needs, one have: no last-sync heads and a
        // 3-byte filter (1 entry, 0 bits per entry, 7 probes), no changes.
        let no_bits = [0x42, 0x00, 0x00, 0x01, 0x00, 0x03, 0x01, 0x00, 0x07, 0x00];
        assert!(automerge::sync::Message::decode(&no_bits).is_ok());
        assert_eq!(
            decode_sync_message(&no_bits).err(),
            Some(SyncMessageError::BadBloomFilter)
        );
        // 1 entry, 8 bits per entry, 2^32-1 probes, one byte of bits.
        let many_probes = [
            0x42, 0x00, 0x00, 0x01, 0x00, 0x08, 0x01, 0x08, 0xff, 0xff, 0xff, 0xff, 0x0f, 0x00,
            0x00,
        ];
        assert_eq!(
            decode_sync_message(&many_probes).err(),
            Some(SyncMessageError::BadBloomFilter)
        );
        // What Automerge itself writes passes.
        let mut doc = automerge::AutoCommit::new();
        automerge::transaction::Transactable::put(&mut doc, automerge::ROOT, "a", 1).expect("put");
        let mut peer = automerge::AutoCommit::new();
        let mut state = automerge::sync::State::new();
        use automerge::sync::SyncDoc;
        let first = peer
            .sync()
            .generate_sync_message(&mut state)
            .expect("first message");
        let mut theirs = automerge::sync::State::new();
        doc.sync()
            .receive_sync_message(&mut theirs, first)
            .expect("receive");
        let reply = doc
            .sync()
            .generate_sync_message(&mut theirs)
            .expect("reply")
            .encode();
        assert!(decode_sync_message(&reply).is_ok());
        assert_eq!(
            decode_sync_message(b"\x42\xff").err(),
            Some(SyncMessageError::Malformed)
        );
    }

    #[test]
    fn malformed_messages_are_errors_not_panics() {
        assert_eq!(Message::decode(b"\xff\x00"), Err(DecodeError::NotCbor));
        let mut arr = Vec::new();
        ciborium::into_writer(&Value::Array(vec![]), &mut arr).expect("encode");
        assert_eq!(Message::decode(&arr), Err(DecodeError::NotAMap));
        let mut no_type = Vec::new();
        ciborium::into_writer(&Value::Map(vec![]), &mut no_type).expect("encode");
        assert_eq!(Message::decode(&no_type), Err(DecodeError::NoType));
        let sync_without_data = Value::Map(vec![
            entry("type", text("sync")),
            entry("senderId", text("a")),
            entry("targetId", text("b")),
            entry("documentId", text("c")),
        ]);
        let mut b = Vec::new();
        ciborium::into_writer(&sync_without_data, &mut b).expect("encode");
        assert!(matches!(
            Message::decode(&b),
            Err(DecodeError::MissingField { field: "data", .. })
        ));
        let unknown = Value::Map(vec![entry("type", text("gossip"))]);
        let mut u = Vec::new();
        ciborium::into_writer(&unknown, &mut u).expect("encode");
        assert_eq!(
            Message::decode(&u),
            Ok(Message::Unknown {
                message_type: "gossip".into()
            })
        );
    }
}
