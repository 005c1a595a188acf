//! Documents a sync skips because this Linkbook cannot read them (issue 11,
//! "documents are checked at the door", the device's half): no Linkbook
//! type (stored on the relay before its door check), a newer schema (a
//! newer app), bytes over the budget, or changes Automerge refuses (a
//! malicious relay). The session goes on with every other document; the
//! skipped one is neither stored nor projected, and is reported in
//! [`crate::SyncSummary::skipped`] by id with a reason that quotes nothing
//! of its content.
//!
//! Its bytes are not kept. The id is remembered (table
//! `skipped_documents`, capped) and every full sync asks the relay for it
//! again, so a later readable version (after an app update, or once the
//! office fixed the relay's copy) is taken as any other document, and the
//! row is dropped; until then each sync reports it again.

use serde::Serialize;

use crate::error::{Error, Result};
use crate::ids::DocumentId;
use crate::protocol::SyncMessageError;
use crate::repo::Repo;

/// A document a sync did not take: its id and why, never its content.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SkippedDocument {
    pub id: String,
    pub reason: String,
}

/// Skipped documents remembered for the next syncs; beyond this a skip is
/// still reported but not remembered, so a relay pushing millions of
/// unreadable ids cannot grow the device's store.
const MAX_REMEMBERED: i64 = 1_000;

/// Why a document cannot be taken, without its content; `None` for a
/// failure that is not the document's (storage, network): those end the
/// sync as before.
pub(crate) fn reason(e: &Error) -> Option<String> {
    match e {
        Error::UnsupportedSchema {
            found, supported, ..
        } => Some(format!(
            "written by a newer Linkbook (schema version {found}; this app reads up to {supported}): update the app"
        )),
        Error::InvalidDocument(m) => Some(invalid_reason(m).to_string()),
        Error::Document(e) if crate::protocol::is_actor_clash(e) => Some(
            "its changes clash with ones this device holds (two copies of one device wrote the same change numbers: a restored backup?)".to_string(),
        ),
        Error::Document(_) => Some("Automerge refused its changes".to_string()),
        _ => None,
    }
}

/// The reason for a sync message refused before Automerge saw it.
pub(crate) fn refused_message(e: &SyncMessageError) -> String {
    format!("its sync message was refused: {e}")
}

/// A fixed text for each `InvalidDocument` the model and the store raise:
/// their messages may quote the document's own `type`, which is content.
fn invalid_reason(message: &str) -> &'static str {
    const KNOWN: [(&str, &str); 7] = [
        ("has no Linkbook type", "it has no Linkbook type"),
        ("has unknown type", "its type is not a Linkbook type"),
        ("has no schema version", "it has no schema version"),
        ("belongs to another team", "it belongs to another team"),
        (
            "is not this team's directory",
            "it is a team directory, not this team's",
        ),
        ("changed its type", "a change rewrites its type"),
        ("panicked", "Automerge could not read its bytes"),
    ];
    KNOWN
        .iter()
        .find(|(needle, _)| message.contains(needle))
        .map_or("it is not a readable Linkbook document", |(_, r)| r)
}

impl Repo {
    /// Documents skipped by earlier syncs, to ask the relay for again.
    pub(crate) fn skipped_ids(&self) -> Result<Vec<DocumentId>> {
        self.with_writer_tx(|tx| {
            let mut stmt =
                tx.prepare_cached("SELECT doc_id FROM skipped_documents ORDER BY doc_id")?;
            let ids = stmt.query_map([], |r| r.get::<_, String>(0))?;
            let mut out = Vec::new();
            for id in ids {
                // A row this code did not write is dropped, not fatal.
                if let Ok(id) = DocumentId::parse(&id?, "document id") {
                    out.push(id);
                }
            }
            Ok(out)
        })
    }

    /// Remembers a skipped document (at most [`MAX_REMEMBERED`]).
    pub(crate) fn remember_skipped(&self, id: DocumentId, reason: &str) -> Result<()> {
        let now = self.now().to_rfc3339();
        self.with_writer_tx(|tx| {
            tx.execute(
                "INSERT INTO skipped_documents (doc_id, reason, first_skipped_at, last_skipped_at)
                 SELECT ?1, ?2, ?3, ?3 WHERE (SELECT count(*) FROM skipped_documents) < ?4
                 ON CONFLICT(doc_id) DO UPDATE SET reason = excluded.reason, last_skipped_at = excluded.last_skipped_at",
                rusqlite::params![id.to_string(), reason, now, MAX_REMEMBERED],
            )?;
            Ok(())
        })
    }

    /// Forgets a skipped document: it was read, or the relay no longer has it.
    pub(crate) fn forget_skipped(&self, id: DocumentId) -> Result<()> {
        self.with_writer_tx(|tx| {
            tx.execute(
                "DELETE FROM skipped_documents WHERE doc_id = ?1",
                [id.to_string()],
            )?;
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{Message, PROTOCOL_VERSION, PeerMetadata};
    use automerge::sync::{self, SyncDoc};
    use automerge::transaction::Transactable;

    /// Bytes Automerge would take 4 GiB to load (tests/fuzz-crashers/).
    const CRASHER: &[u8] =
        include_bytes!("../../../tests/fuzz-crashers/automerge-load/oom-167-bytes-take-4gb.bin");

    fn send(ws: &mut tungstenite::WebSocket<std::net::TcpStream>, m: Message) {
        ws.send(tungstenite::Message::Binary(m.encode().into()))
            .expect("send");
    }

    /// A hostile automerge-repo server: right after `peer` it pushes a
    /// sync message over the budget for `heavy` and a foreign document as
    /// `foreign`, then answers the device's own documents honestly.
    fn hostile_server(
        listener: std::net::TcpListener,
        heavy: DocumentId,
        foreign: DocumentId,
    ) -> std::thread::JoinHandle<()> {
        std::thread::spawn(move || {
            let Ok((stream, _)) = listener.accept() else {
                return;
            };
            stream
                .set_read_timeout(Some(std::time::Duration::from_secs(20)))
                .expect("timeout");
            let mut ws = tungstenite::accept(stream).expect("upgrade");
            let mut docs: std::collections::HashMap<String, (automerge::AutoCommit, sync::State)> =
                Default::default();
            while let Ok(frame) = ws.read() {
                let tungstenite::Message::Binary(bytes) = frame else {
                    continue;
                };
                match Message::decode(&bytes).expect("a message") {
                    Message::Join { sender_id, .. } => {
                        let device = sender_id;
                        send(
                            &mut ws,
                            Message::Peer {
                                sender_id: "hostile".into(),
                                target_id: device.clone(),
                                peer_metadata: PeerMetadata::default(),
                                selected_protocol_version: PROTOCOL_VERSION.into(),
                            },
                        );
                        let over_budget = sync::Message {
                            heads: vec![],
                            need: vec![],
                            have: vec![],
                            changes: vec![CRASHER.to_vec()].into(),
                            flags: None,
                            version: sync::MessageVersion::V1,
                        };
                        let mut poison = automerge::AutoCommit::new();
                        poison.put(automerge::ROOT, "hello", "world").expect("put");
                        let mut state = sync::State::new();
                        crate::protocol::assume_shared_heads(&mut state);
                        let poison = poison
                            .sync()
                            .generate_sync_message(&mut state)
                            .expect("message");
                        for (id, m) in [(heavy, over_budget), (foreign, poison)] {
                            send(
                                &mut ws,
                                Message::Sync {
                                    sender_id: "hostile".into(),
                                    target_id: device.clone(),
                                    document_id: id.to_string(),
                                    data: m.encode(),
                                },
                            );
                        }
                    }
                    Message::Sync {
                        sender_id,
                        document_id,
                        data,
                        ..
                    }
                    | Message::Request {
                        sender_id,
                        document_id,
                        data,
                        ..
                    } => {
                        let (doc, state) = docs.entry(document_id.clone()).or_default();
                        let m = sync::Message::decode(&data).expect("sync message");
                        doc.sync().receive_sync_message(state, m).expect("apply");
                        if let Some(reply) = doc.sync().generate_sync_message(state) {
                            send(
                                &mut ws,
                                Message::Sync {
                                    sender_id: "hostile".into(),
                                    target_id: sender_id,
                                    document_id,
                                    data: reply.encode(),
                                },
                            );
                        }
                    }
                    _ => {}
                }
            }
        })
    }

    /// A server pushing a document over the budget and a foreign one: both
    /// are skipped (nothing stored), the device's own documents sync.
    #[test]
    fn a_hostile_server_costs_only_its_own_documents() -> Result<()> {
        let dir = tempfile::tempdir().map_err(|e| Error::Io {
            context: "tempdir".into(),
            source: e,
        })?;
        let repo = Repo::open(dir.path().join("d.db"), &crate::DatabaseKey::generate())?;
        let family = repo.add_family(&crate::NewFamily {
            name: "Smith".into(),
            ..Default::default()
        })?;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| Error::Io {
            context: "bind".into(),
            source: e,
        })?;
        let url = format!(
            "http://{}",
            listener.local_addr().map_err(|e| Error::Io {
                context: "address".into(),
                source: e,
            })?
        );
        let (heavy, foreign) = (DocumentId::random(), DocumentId::random());
        let server = hostile_server(listener, heavy, foreign);
        let summary = repo.sync_with(&url, None, None, None)?;
        let _ = server.join();
        let mut skipped: Vec<(String, String)> = summary
            .skipped
            .iter()
            .map(|d| (d.id.clone(), d.reason.clone()))
            .collect();
        skipped.sort();
        let mut expected = [heavy.to_string(), foreign.to_string()];
        expected.sort();
        assert_eq!(
            skipped.iter().map(|(id, _)| id.clone()).collect::<Vec<_>>(),
            expected
        );
        let reason_of = |id: DocumentId| {
            skipped
                .iter()
                .find(|(d, _)| *d == id.to_string())
                .map(|(_, r)| r.clone())
                .unwrap_or_default()
        };
        assert!(reason_of(heavy).contains("refused"), "{skipped:?}");
        assert!(
            reason_of(foreign).contains("no Linkbook type"),
            "{skipped:?}"
        );
        assert!(!format!("{summary:?}").contains("world"));
        let held: Vec<DocumentId> = repo.document_ids()?.into_iter().map(|(id, _)| id).collect();
        assert!(held.contains(&family) && !held.contains(&heavy) && !held.contains(&foreign));
        assert!(summary.documents_sent >= 1, "{summary:?}");
        let mut remembered = repo.skipped_ids()?;
        remembered.sort();
        let mut both = vec![heavy, foreign];
        both.sort();
        assert_eq!(remembered, both);
        Ok(())
    }

    #[test]
    fn reasons_quote_no_content() {
        let e = Error::InvalidDocument("document x has unknown type 'Smith family notes'".into());
        let r = reason(&e).expect("a document's fault");
        assert_eq!(r, "its type is not a Linkbook type");
        assert!(reason(&Error::Network("cut".into())).is_none());
        let e = Error::UnsupportedSchema {
            document: "x".into(),
            found: 9,
            supported: 1,
        };
        assert!(reason(&e).expect("newer").contains("update the app"));
    }

    #[test]
    fn remembered_skips_are_capped_and_forgotten() -> Result<()> {
        let dir = tempfile::tempdir().map_err(|e| Error::Io {
            context: "tempdir".into(),
            source: e,
        })?;
        let repo = Repo::open(dir.path().join("d.db"), &crate::DatabaseKey::generate())?;
        let first = DocumentId::random();
        repo.remember_skipped(first, "it has no Linkbook type")?;
        repo.remember_skipped(first, "it has no Linkbook type")?;
        assert_eq!(repo.skipped_ids()?, vec![first]);
        for _ in 0..MAX_REMEMBERED + 10 {
            repo.remember_skipped(DocumentId::random(), "it has no Linkbook type")?;
        }
        assert_eq!(repo.skipped_ids()?.len() as i64, MAX_REMEMBERED);
        repo.forget_skipped(first)?;
        assert!(!repo.skipped_ids()?.contains(&first));
        Ok(())
    }
}
