//! The sync client: enrolment with the relay, then "sync now" over one
//! WebSocket speaking the automerge-repo protocol, until every document the
//! device holds or its team directory names is at the same heads on both
//! sides.
//!
//! Every change received is committed (with its projections) as it arrives,
//! so a dropped connection keeps all progress and the next sync resumes.
//! Sync states are persisted per (document, relay peer) so an unchanged
//! document costs one small message each way.

pub(crate) mod net;
pub(crate) mod skipped;

use std::collections::{BTreeSet, HashMap, VecDeque};

use automerge::AutoCommit;
use automerge::sync::{self, SyncDoc};
use serde::Serialize;
use tungstenite::client::IntoClientRequest;
use tungstenite::{Message as WsMessage, WebSocket};

use crate::error::{Error, Result};
use crate::ids::DocumentId;
use crate::model::{DocumentType, am, validate};
use crate::protocol::split::{self, SplitMessages};
use crate::protocol::{Message, PROTOCOL_VERSION, PeerMetadata, dto};
use crate::repo::{DeviceProfile, Repo};
use net::{Endpoint, network};
pub use skipped::SkippedDocument;

/// What enrolment stored: the relay this device syncs with.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Enrolment {
    pub server_url: String,
    pub device_id: String,
    pub team: String,
    pub worker: String,
}

/// Progress of a running sync.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct SyncProgress {
    pub documents_done: u32,
    pub documents_total: u32,
    pub bytes_sent: u64,
    pub bytes_received: u64,
}

/// Told about progress as a sync runs (from the syncing thread).
pub trait SyncListener: Send + Sync {
    fn progress(&self, progress: &SyncProgress);
}

/// What a finished sync did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct SyncSummary {
    /// Documents this device had changes of that the relay did not.
    pub documents_sent: u32,
    /// Documents that changed here because of what the relay sent.
    pub documents_received: u32,
    /// Documents the relay does not have (or this device may not see).
    pub documents_unavailable: u32,
    pub documents_total: u32,
    pub messages_sent: u32,
    pub messages_received: u32,
    pub bytes_sent: u64,
    pub bytes_received: u64,
    /// Documents the office purged that this sync deleted from the device
    /// (ids only: their content is gone).
    pub purged: Vec<String>,
    /// Documents that could not be sent because one of their changes is
    /// larger than the relay's message limit (ids only); the others synced.
    pub failed: Vec<String>,
    /// Documents this app cannot read (no Linkbook type, a newer schema,
    /// over the budget): not stored, asked for again at the next sync; the
    /// others synced (`skipped.rs`).
    pub skipped: Vec<SkippedDocument>,
    /// Documents whose changes from this device the relay refused (an
    /// actor sequence clash: a copy of this device wrote the same change
    /// numbers, `protocol::ACTOR_CLASH`): not taken by the relay, reported
    /// again by every sync until settled; the others synced.
    pub refused: Vec<SkippedDocument>,
}

/// At most this much is sent ahead of the relay's `101` (a day's offline
/// work is tens of KB; a first upload of a whole caseload, tens of MB, waits
/// for the upgrade rather than sitting in the relay's HTTP buffers).
const PIPELINE_BYTES: u64 = 256 * 1024;

/// How long a peer may be silent before heads-only announcements count as
/// answered.
const QUIET: std::time::Duration = std::time::Duration::from_millis(500);

/// While writing a long opening (a first sync of thousands of documents), the
/// socket is read at least this often: see [`Session::keep_alive`].
const KEEP_ALIVE: std::time::Duration = std::time::Duration::from_secs(1);

/// Messages one session takes about one document: a 64 MiB document in the
/// smallest parts (64 KiB) is ~1,000; a relay that sends more never lets
/// the sync end (tests/tests/malicious_relay.rs).
const MAX_MESSAGES_PER_DOCUMENT: u32 = 10_000;

const PROFILE_KEYS: [&str; 4] = ["server_url", "server_ca", "token", "relay_peer"];

struct Session<'a> {
    repo: &'a Repo,
    ws: WebSocket<net::Prefixed>,
    device_id: String,
    relay_peer: String,
    /// This session's name when it asked what changed since its cursor
    /// (saved with the cursor: see `session_key`).
    sync_session: Option<String>,
    /// Speaking to Linkbook's relay the pipelined way (docs/adr/0005).
    pipelined: bool,
    /// The largest message to send (`protocol::split`).
    max_message_bytes: usize,
    states: HashMap<DocumentId, sync::State>,
    /// Documents not yet known to be in sync.
    pending: BTreeSet<DocumentId>,
    /// Pending documents whose last message asks for an answer (it carried
    /// changes or needs, or was a request); the others are heads
    /// announcements, which a peer with nothing to add may leave unanswered.
    demanding: BTreeSet<DocumentId>,
    all: BTreeSet<DocumentId>,
    sent_changes: BTreeSet<DocumentId>,
    received: BTreeSet<DocumentId>,
    /// Documents changed on this device since its last sync with this peer.
    locally_changed: BTreeSet<DocumentId>,
    /// Documents whose last message to the relay asked for changes
    /// (`need`), with how many answers since came without any.
    needing: HashMap<DocumentId, u8>,
    unavailable: BTreeSet<DocumentId>,
    /// Documents skipped this session (`skipped.rs`): what else the relay
    /// sends of them is ignored.
    skipped: BTreeSet<DocumentId>,
    /// Documents earlier syncs skipped, asked for again.
    skipped_before: BTreeSet<DocumentId>,
    /// Messages read while still writing ([`Session::keep_alive`]), in order;
    /// handled before anything read later.
    backlog: VecDeque<Message>,
    summary: SyncSummary,
    listener: Option<&'a dyn SyncListener>,
    /// Sync only these documents (and do not follow the directory).
    only: Option<BTreeSet<DocumentId>>,
    /// Where to ask the relay what changed (`GET /v1/changes`), with what.
    relay_changes: Option<(Endpoint, Option<String>, String)>,
    /// Set when the relay's `peer` names another store than the one whose
    /// sync states the pipelined opening used (a rebuilt relay, a new one
    /// enrolled with, a restore): the session stops and starts over.
    other_store: Option<String>,
}

impl Repo {
    /// Exchanges a one-time enrolment code for this device's credentials and
    /// moves the device into the enrolling team. `ca_pem` pins the office's
    /// own CA (or development certificate) beside the platform roots.
    pub fn enrol(
        &self,
        server_url: &str,
        code: &str,
        ca_pem: Option<&str>,
        device_name: &str,
    ) -> Result<Enrolment> {
        let c = enrol_device(server_url, code, ca_pem, device_name)?;
        self.rehome(&c.team, c.directory_id)?;
        self.set_profile_values(&[
            ("device_id", c.device_id.as_str()),
            ("worker", c.worker.as_str()),
            ("server_url", server_url.trim()),
            ("server_ca", ca_pem.unwrap_or("")),
            ("token", c.token.as_str()),
        ])?;
        Ok(Enrolment {
            server_url: server_url.trim().to_string(),
            device_id: c.device_id,
            team: c.team,
            worker: c.worker,
        })
    }

    /// The relay this device is enrolled with, if any.
    pub fn enrolment(&self) -> Result<Option<Enrolment>> {
        let values = self.profile_values(&PROFILE_KEYS)?;
        let p = self.profile();
        Ok(values[0]
            .clone()
            .filter(|s| !s.is_empty())
            .map(|server_url| Enrolment {
                server_url,
                device_id: p.device_id,
                team: p.team,
                worker: p.worker,
            }))
    }

    /// Points an enrolled device at the relay's new address.
    pub fn set_server_url(&self, server_url: &str) -> Result<()> {
        Endpoint::parse(server_url)?;
        if self.enrolment()?.is_none() {
            return Err(Error::Unauthorized(
                "this device is not enrolled: run enrol first".into(),
            ));
        }
        self.set_profile_values(&[("server_url", server_url.trim())])
    }

    /// Syncs with the relay this device enrolled with until both sides hold
    /// the same heads for every document, reporting progress to `listener`.
    pub fn sync(&self, listener: Option<&dyn SyncListener>) -> Result<SyncSummary> {
        self.sync_enrolled(None, None, listener)
    }

    /// Syncs through the relay's new address `server_url` and saves it as
    /// this device's address only once that sync succeeded: a mistyped or
    /// dead address leaves the one that works. The error names the address
    /// that failed.
    pub fn sync_through(
        &self,
        server_url: &str,
        listener: Option<&dyn SyncListener>,
    ) -> Result<SyncSummary> {
        let server_url = server_url.trim();
        Endpoint::parse(server_url)?;
        let summary = self
            .sync_enrolled(Some(server_url), None, listener)
            .map_err(|e| match e {
                Error::Network(why) => Error::Network(format!(
                    "syncing through {server_url} failed (the saved address is unchanged): {why}"
                )),
                Error::Unauthorized(why) => Error::Unauthorized(format!(
                    "{server_url} did not accept this device (the saved address is unchanged): {why}"
                )),
                other => other,
            })?;
        self.set_server_url(server_url)?;
        Ok(summary)
    }

    /// Syncs only the named documents (e.g. a family opened from an
    /// `automerge:` link); ones the relay will not serve count as unavailable.
    pub fn sync_documents(
        &self,
        ids: &[DocumentId],
        listener: Option<&dyn SyncListener>,
    ) -> Result<SyncSummary> {
        self.sync_enrolled(None, Some(ids), listener)
    }

    /// `server`: another address of the enrolled relay to sync through
    /// instead of the saved one (nothing is saved here).
    fn sync_enrolled(
        &self,
        server: Option<&str>,
        only: Option<&[DocumentId]>,
        listener: Option<&dyn SyncListener>,
    ) -> Result<SyncSummary> {
        let values = self.profile_values(&PROFILE_KEYS)?;
        let (Some(server), Some(token)) = (
            values[0]
                .clone()
                .filter(|s| !s.is_empty())
                .map(|saved| server.map_or(saved, str::to_string)),
            values[2].clone(),
        ) else {
            return Err(Error::Unauthorized(
                "this device is not enrolled: run enrol first".into(),
            ));
        };
        let ca = values[1].clone().filter(|s| !s.is_empty());
        let result = self.sync_session(&server, Some(&token), ca.as_deref(), only, listener, true);
        if result.is_ok() {
            // The offline lease runs from here.
            self.record_sync()?;
            // The audit of who read which case file: kept here until the
            // relay has it, so a failed upload only waits for the next sync.
            if let Err(e) = self.upload_reads(&server, ca.as_deref(), &token) {
                tracing::warn!(error = %e, "uploading the read log failed; kept for the next sync");
            }
        }
        match result {
            // A lost or stolen device: the office revoked it, so at its first
            // contact it deletes everything it holds.
            Err(Error::Revoked) => {
                self.wipe()?;
                Err(Error::Revoked)
            }
            other => other,
        }
    }

    /// Sends the case-file reads logged on this device to the relay's audit.
    fn upload_reads(&self, server: &str, ca: Option<&str>, token: &str) -> Result<()> {
        let endpoint = Endpoint::parse(server)?;
        let mut batch = 100;
        loop {
            let reads = self.pending_reads(batch)?;
            let Some((last, _, _)) = reads.last() else {
                return Ok(());
            };
            let last = *last;
            let body = serde_json::to_value(dto::ReadLog {
                reads: reads
                    .iter()
                    .map(|(_, family, at)| dto::Read {
                        family_id: family.to_string(),
                        at: at.clone(),
                    })
                    .collect(),
            })
            .map_err(|e| Error::Network(format!("encoding the read log: {e}")))?;
            let (status, answer) = net::post_json_auth(&endpoint, ca, "/v1/audit", &body, token)?;
            // The relay takes fewer per upload (`--audit-rows-per-upload`).
            if let (413, Some(max)) = (status, answer["max_reads"].as_u64())
                && max > 0
                && (max as usize) < reads.len()
            {
                batch = max as usize;
                continue;
            }
            if status != 200 {
                return Err(Error::Network(format!(
                    "the relay answered {status} to the read log"
                )));
            }
            self.reads_uploaded(last)?;
        }
    }

    /// Syncs every document with the automerge-repo server at `server`
    /// (`token` as bearer credentials, if the server wants them).
    pub fn sync_with(
        &self,
        server: &str,
        token: Option<&str>,
        ca_pem: Option<&str>,
        listener: Option<&dyn SyncListener>,
    ) -> Result<SyncSummary> {
        self.sync_session(server, token, ca_pem, None, listener, false)
    }

    /// Syncs only the named documents with the automerge-repo server at
    /// `server`. A device with a large upload for another server sends it in
    /// batches this way: the JavaScript sync server drops a client that has
    /// not answered its ping within 5 s, and a single 30 MB opening keeps
    /// the pong queued behind data the server has not read yet (measured
    /// with 2,000 case files, bench/README.md).
    pub fn sync_documents_with(
        &self,
        server: &str,
        token: Option<&str>,
        ca_pem: Option<&str>,
        ids: &[DocumentId],
        listener: Option<&dyn SyncListener>,
    ) -> Result<SyncSummary> {
        self.sync_session(server, token, ca_pem, Some(ids), listener, false)
    }

    /// One session; again from scratch if the relay turned out to be
    /// another store than the one this device's sync states describe.
    fn sync_session(
        &self,
        server: &str,
        token: Option<&str>,
        ca_pem: Option<&str>,
        only: Option<&[DocumentId]>,
        listener: Option<&dyn SyncListener>,
        pipelined: bool,
    ) -> Result<SyncSummary> {
        let mut started_over = false;
        loop {
            match self.sync_session_once(server, token, ca_pem, only, listener, pipelined)? {
                Attempt::Done(summary) => return Ok(summary),
                Attempt::OtherStore { known, found } if !started_over => {
                    tracing::info!(
                        known = %known,
                        found = %found,
                        "the relay is another store than this device last synced with (rebuilt or restored); sending everything again"
                    );
                    self.forget_relay_store(&known, &found)?;
                    started_over = true;
                }
                Attempt::OtherStore { .. } => {
                    return Err(Error::Network(
                        "the relay's store changed again during this sync; try again".into(),
                    ));
                }
            }
        }
    }

    /// Drops what this device knew about relay store `known` (sync states,
    /// change cursor: they describe documents that store held, not what
    /// `found` holds) and takes `found` as the relay, with nothing assumed
    /// shared: its next session offers every document.
    fn forget_relay_store(&self, known: &str, found: &str) -> Result<()> {
        self.with_writer_tx(|tx| {
            tx.execute("DELETE FROM sync_states WHERE peer_id = ?1", [known])?;
            tx.execute("DELETE FROM profile WHERE key = ?1", [cursor_key(known)])?;
            tx.execute("DELETE FROM profile WHERE key = ?1", [session_key(known)])?;
            Ok(())
        })?;
        self.set_profile_values(&[("relay_peer", found)])
    }

    fn sync_session_once(
        &self,
        server: &str,
        token: Option<&str>,
        ca_pem: Option<&str>,
        only: Option<&[DocumentId]>,
        listener: Option<&dyn SyncListener>,
        pipelined: bool,
    ) -> Result<Attempt> {
        let endpoint = Endpoint::parse(server)?;
        let (ws, opening, relay_peer, sync_session) = match (pipelined, token) {
            // Our own relay: one round trip after TLS (docs/adr/0005).
            (true, Some(token)) => {
                let known_peer = self.profile_values(&["relay_peer"])?[0]
                    .clone()
                    .unwrap_or_default();
                let since = match only {
                    Some(_) => None,
                    None => Some(
                        self.profile_values(&[&cursor_key(&known_peer)])?[0]
                            .as_deref()
                            .and_then(|c| c.parse::<i64>().ok())
                            .unwrap_or(0),
                    ),
                };
                // This session's name, and the last successful one's: the
                // relay leaves out of `changed-since` only what that session
                // uploaded, never what a copy of this device did
                // (sync-server relay::Sessions).
                let named = since.map(|_| hex::encode(rand::random::<[u8; 8]>()));
                let path = match (since, &named) {
                    (Some(n), Some(this)) => {
                        let after = self.profile_values(&[&session_key(&known_peer)])?[0]
                            .clone()
                            .filter(|p| {
                                (1..=32).contains(&p.len())
                                    && p.bytes().all(|b| b.is_ascii_hexdigit())
                            })
                            .map(|p| format!("&after={p}"))
                            .unwrap_or_default();
                        format!("/v1/sync?since={n}&session={this}{after}")
                    }
                    _ => "/v1/sync".to_string(),
                };
                let (ws, opening) = net::open_pipelined(&endpoint, ca_pem, &path, token)?;
                (ws, Some((opening, since.is_some())), known_peer, named)
            }
            _ => {
                let stream = net::Prefixed::new(net::connect(&endpoint, ca_pem)?);
                let mut request = endpoint
                    .url_for("/v1/sync", true)
                    .into_client_request()
                    .map_err(|e| network("sync request", e))?;
                if let Some(token) = token {
                    let value = format!("Bearer {token}")
                        .parse()
                        .map_err(|_| Error::invalid("token", "not a valid header value"))?;
                    request.headers_mut().insert("Authorization", value);
                }
                let (ws, _) =
                    tungstenite::client::client(request, stream).map_err(|e| match e {
                        tungstenite::HandshakeError::Failure(tungstenite::Error::Http(resp)) => {
                            refused(resp.status().as_u16(), resp.body().as_deref())
                        }
                        other => network("opening the sync connection", other),
                    })?;
                (ws, None, String::new(), None)
            }
        };
        let mut session = Session {
            repo: self,
            ws,
            device_id: self.profile().device_id,
            relay_peer,
            sync_session,
            pipelined: opening.is_some(),
            // Until the relay's `peer` states its limit (our relay's never
            // is below this).
            max_message_bytes: match opening {
                Some(_) => split::MIN_MAX_MESSAGE_BYTES,
                None => split::DEFAULT_MAX_MESSAGE_BYTES,
            },
            states: HashMap::new(),
            pending: BTreeSet::new(),
            demanding: BTreeSet::new(),
            all: BTreeSet::new(),
            sent_changes: BTreeSet::new(),
            received: BTreeSet::new(),
            needing: HashMap::new(),
            locally_changed: BTreeSet::new(),
            unavailable: BTreeSet::new(),
            skipped: BTreeSet::new(),
            skipped_before: self.skipped_ids()?.into_iter().collect(),
            backlog: VecDeque::new(),
            summary: SyncSummary::default(),
            listener,
            only: only.map(|ids| ids.iter().copied().collect()),
            relay_changes: match (&opening, token) {
                (None, Some(t)) => {
                    Some((endpoint.clone(), ca_pem.map(str::to_string), t.to_string()))
                }
                _ => None,
            },
            other_store: None,
        };
        let result = match opening {
            Some((opening, asked)) => session.run_pipelined(opening, asked),
            None => session.run(),
        };
        if let Some(found) = session.other_store.take() {
            // What was sent assumed the other store's heads; nothing learnt
            // in this session is kept.
            let _ = session.ws.close(None);
            let _ = session.ws.flush();
            return Ok(Attempt::OtherStore {
                known: session.relay_peer,
                found,
            });
        }
        // Whatever happened, keep what was learnt about the relay's heads.
        let saved = session.save_states();
        let _ = session.ws.close(None);
        let _ = session.ws.flush();
        result?;
        saved?;
        Ok(Attempt::Done(session.summary))
    }
}

/// How one session ended.
enum Attempt {
    Done(SyncSummary),
    /// The relay's `peer` named store `found`, not `known`, whose sync
    /// states and cursor the pipelined opening had used.
    OtherStore {
        known: String,
        found: String,
    },
}

/// The profile key of the relay's change cursor for a relay peer.
fn cursor_key(relay_peer: &str) -> String {
    format!("relay_cursor:{relay_peer}")
}

/// The profile key of the name of the last sync session that moved that
/// cursor (`/v1/sync?…&after=`: see sync-server relay::Sessions).
fn session_key(relay_peer: &str) -> String {
    format!("relay_session:{relay_peer}")
}

/// A device's credentials from the relay; `token` is shown only this once.
#[derive(Clone, PartialEq, Eq)]
pub struct DeviceCredentials {
    pub device_id: String,
    pub token: String,
    pub team: String,
    pub worker: String,
    /// The team directory's id, chosen at random by the relay.
    pub directory_id: Option<DocumentId>,
}

impl std::fmt::Debug for DeviceCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeviceCredentials")
            .field("device_id", &self.device_id)
            .field("team", &self.team)
            .field("worker", &self.worker)
            .finish_non_exhaustive()
    }
}

/// Enrols a device with the relay (`POST /v1/enrol`) without storing
/// anything: [`Repo::enrol`] uses it; so can a peer that is not a Linkbook
/// store (an automerge-repo client needs a token too).
pub fn enrol_device(
    server_url: &str,
    code: &str,
    ca_pem: Option<&str>,
    device_name: &str,
) -> Result<DeviceCredentials> {
    let endpoint = Endpoint::parse(server_url)?;
    let code = validate::required_text("enrolment code", code, 64)?;
    let device_name = validate::required_text("device name", device_name, 200)?;
    let (status, body) = net::post_json(
        &endpoint,
        ca_pem,
        "/v1/enrol",
        &serde_json::to_value(dto::EnrolRequest { code, device_name })
            .map_err(|e| Error::Network(format!("encoding the enrolment: {e}")))?,
    )?;
    if status != 200 {
        let why = body["message"]
            .as_str()
            .unwrap_or("enrolment refused")
            .to_string();
        return Err(match status {
            400..=499 => Error::Unauthorized(why),
            _ => Error::Network(format!("the relay answered {status}: {why}")),
        });
    }
    let enrolled: dto::Enrolled =
        serde_json::from_value(body).map_err(|e| network("relay answer", e.to_string()))?;
    Ok(DeviceCredentials {
        device_id: enrolled.device_id,
        token: enrolled.token,
        team: enrolled.team,
        worker: enrolled.worker,
        directory_id: Some(DocumentId::parse(&enrolled.directory_id, "directory id")?),
    })
}

/// Maps the relay's HTTP refusal to the error the app acts on.
fn refused(status: u16, body: Option<&[u8]>) -> Error {
    let json: serde_json::Value = body
        .and_then(|b| serde_json::from_slice(b).ok())
        .unwrap_or_default();
    match (status, json["error"].as_str()) {
        (403, Some("revoked")) => Error::Revoked,
        (401, _) => Error::Unauthorized("the relay does not accept this device's token".into()),
        // Too many connections of this device, or too many failed
        // authentications from this address: the relay says which, and when.
        (429, _) => Error::Network(
            json["message"]
                .as_str()
                .map_or("the relay is busy; try again shortly".into(), |m| {
                    format!("the relay refused the sync connection: {m}")
                }),
        ),
        _ => Error::Network(format!("the relay refused the sync connection ({status})")),
    }
}

impl Session<'_> {
    /// Counts a binary WebSocket message and decodes it.
    fn decode_received(&mut self, bytes: &[u8]) -> Result<Message> {
        self.summary.bytes_received += bytes.len() as u64;
        self.summary.messages_received += 1;
        Message::decode(bytes).map_err(|e| network("the relay sent a malformed message", e))
    }

    fn send(&mut self, m: Message) -> Result<()> {
        tracing::trace!(message = %describe(&m), "sync send");
        let bytes = m.encode();
        self.summary.bytes_sent += bytes.len() as u64;
        self.summary.messages_sent += 1;
        self.ws
            .send(WsMessage::Binary(bytes.into()))
            .map_err(|e| network("sending to the relay", e))
    }

    /// The next message; `None` when the peer has been quiet for
    /// [`QUIET`] while no pending document awaits an answer.
    fn receive_or_quiet(&mut self) -> Result<Option<Message>> {
        if let Some(m) = self.backlog.pop_front() {
            return Ok(Some(m));
        }
        // Pings and pongs are no answer: a peer that sends only those is
        // as silent as one that sends nothing.
        let waiting = std::time::Instant::now();
        loop {
            match self.ws.read() {
                Ok(WsMessage::Binary(bytes)) => {
                    let m = self.decode_received(&bytes)?;
                    tracing::trace!(message = %describe(&m), pending = self.pending.len(), "sync receive");
                    return Ok(Some(m));
                }
                Ok(WsMessage::Close(_)) => {
                    return Err(Error::Network("the relay closed the connection".into()));
                }
                Ok(_) if waiting.elapsed() >= net::IO_TIMEOUT => {
                    return Err(Error::Network("the relay stopped answering".into()));
                }
                Ok(_) => continue,
                Err(tungstenite::Error::Io(e))
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    // Our relay answers every message; only other servers
                    // may leave a heads announcement unanswered.
                    if !self.pipelined && self.pending.iter().all(|id| !self.demanding.contains(id))
                    {
                        return Ok(None);
                    }
                    if waiting.elapsed() >= net::IO_TIMEOUT {
                        return Err(Error::Network("the relay stopped answering".into()));
                    }
                }
                Err(e) => return Err(net::read_failed(e)),
            }
        }
    }

    fn receive(&mut self) -> Result<Message> {
        if let Some(m) = self.backlog.pop_front() {
            return Ok(m);
        }
        let waiting = std::time::Instant::now();
        loop {
            match self.ws.read().map_err(|e| match e {
                tungstenite::Error::Io(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    Error::Network("the relay stopped answering".into())
                }
                e => net::read_failed(e),
            })? {
                WsMessage::Binary(bytes) => {
                    self.summary.bytes_received += bytes.len() as u64;
                    self.summary.messages_received += 1;
                    let m = Message::decode(&bytes)
                        .map_err(|e| network("the relay sent a malformed message", e));
                    if let Ok(m) = &m {
                        tracing::trace!(message = %describe(m), pending = self.pending.len(), "sync receive");
                    }
                    return m;
                }
                WsMessage::Close(_) => {
                    return Err(Error::Network("the relay closed the connection".into()));
                }
                _ if waiting.elapsed() >= net::IO_TIMEOUT => {
                    return Err(Error::Network("the relay stopped answering".into()));
                }
                _ => continue,
            }
        }
    }

    fn run(&mut self) -> Result<()> {
        self.send(Message::Join {
            sender_id: self.device_id.clone(),
            peer_metadata: PeerMetadata {
                storage_id: None,
                is_ephemeral: false,
                max_message_bytes: None,
            },
            supported_protocol_versions: vec![PROTOCOL_VERSION.into()],
        })?;
        self.expect_peer()?;
        // A server may leave a heads announcement unanswered when it has
        // nothing to add, but never one that differs from what it holds:
        // documents changed here since the last sync with it must hear back.
        // (Waiting only on changes and needs made devices give up on a busy
        // JavaScript server before their changes went up: office-sync
        // benchmark, 20 devices at once.)
        self.locally_changed = self
            .repo
            .changed_since_sync(&self.relay_peer)?
            .into_iter()
            .collect();
        let mut next_cursor = None;
        let mut docs: Vec<DocumentId> = match &self.only {
            Some(only) => only.iter().copied().collect(),
            None => {
                let held: BTreeSet<DocumentId> = self
                    .repo
                    .document_ids()?
                    .into_iter()
                    .map(|(id, _)| id)
                    .collect();
                let relay = self.relay_changed()?;
                if let Some(relay) = &relay {
                    // Erasures first: a purged family is deleted here before
                    // anything could offer it to the relay again; then closed
                    // cases past the team's retention.
                    self.repo
                        .record_policy(relay.retention_days, relay.lease_days)?;
                    let mut purged = self.repo.apply_purges(&relay.purged)?;
                    purged.extend(self.repo.apply_retention()?);
                    self.summary.purged = purged.iter().map(ToString::to_string).collect();
                }
                let held: BTreeSet<DocumentId> = match &relay {
                    Some(_) if !self.summary.purged.is_empty() => self
                        .repo
                        .document_ids()?
                        .into_iter()
                        .map(|(id, _)| id)
                        .collect(),
                    _ => held,
                };
                let listed = self.repo.directory_listing()?;
                match relay.map(|r| (r.cursor, r.changed)) {
                    // Only what changed here since the last sync, what
                    // changed on the relay since, and what we lack.
                    Some((cursor, changed)) => {
                        next_cursor = Some(cursor);
                        let mut d: Vec<DocumentId> = self.locally_changed.iter().copied().collect();
                        d.extend(changed);
                        d.extend(listed.into_iter().filter(|id| !held.contains(id)));
                        d.extend(self.skipped_before.iter().copied());
                        d
                    }
                    None => held
                        .into_iter()
                        .chain(listed)
                        .chain(self.skipped_before.iter().copied())
                        .collect(),
                }
            }
        };
        // The directory first: it names the documents this device lacks.
        docs.sort_by_key(|id| *id != self.repo.directory_id());
        let mut last_read = std::time::Instant::now();
        for id in docs {
            self.start(id)?;
            if last_read.elapsed() >= KEEP_ALIVE {
                self.keep_alive()?;
                last_read = std::time::Instant::now();
            }
        }
        self.exchange(next_cursor)
    }

    /// Reads what the server has sent so far without waiting for more,
    /// keeping its messages for later: tungstenite answers pings as it reads
    /// them. automerge-repo's NodeWSServerAdapter pings every 5 s and drops
    /// a client that missed a pong; a first sync of 2,000 documents with it
    /// took longer than that to write on a busy machine, and was reset
    /// (benchmark fresh-device, full tier).
    fn keep_alive(&mut self) -> Result<()> {
        self.ws
            .get_ref()
            .set_read_timeout(std::time::Duration::from_millis(1))
            .map_err(|e| network("socket", e))?;
        let reading = std::time::Instant::now();
        let read = loop {
            match self.ws.read() {
                Ok(WsMessage::Binary(bytes)) => match self.decode_received(&bytes) {
                    Ok(m) => self.backlog.push_back(m),
                    Err(e) => break Err(e),
                },
                Ok(WsMessage::Close(_)) => {
                    break Err(Error::Network("the relay closed the connection".into()));
                }
                // A peer that never pauses must not keep us from writing.
                Ok(_) if reading.elapsed() >= KEEP_ALIVE => break Ok(()),
                Ok(_) => continue,
                Err(tungstenite::Error::Io(e))
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    break Ok(());
                }
                Err(e) => break Err(net::read_failed(e)),
            }
        };
        self.ws
            .get_ref()
            .set_read_timeout(net::IO_TIMEOUT)
            .map_err(|e| network("socket", e))?;
        read?;
        // The pongs tungstenite queued go out now, not with the next message.
        match self.ws.flush() {
            Ok(()) => Ok(()),
            Err(e) => Err(network("sending to the relay", e)),
        }
    }

    /// The pipelined session with Linkbook's relay (docs/adr/0005): the
    /// upgrade request, `join` and a sync message for every document to
    /// send (carrying the changes made since the heads last shared with the
    /// relay) leave in one flight; the relay answers with `peer`,
    /// `changed-since` and its own changes, and its answers to ours.
    fn run_pipelined(&mut self, opening: net::Pipelined, asked_changes: bool) -> Result<()> {
        self.send(Message::Join {
            sender_id: self.device_id.clone(),
            peer_metadata: PeerMetadata {
                storage_id: None,
                is_ephemeral: false,
                max_message_bytes: None,
            },
            supported_protocol_versions: vec![PROTOCOL_VERSION.into()],
        })?;
        let mut docs: Vec<DocumentId> = match &self.only {
            Some(only) => only.iter().copied().collect(),
            None => {
                let held: BTreeSet<DocumentId> = self
                    .repo
                    .document_ids()?
                    .into_iter()
                    .map(|(id, _)| id)
                    .collect();
                // What changed here since the last sync (everything, the
                // first time), and what the directory names that we lack;
                // the relay sends what changed there.
                let mut d = self.repo.changed_since_sync(&self.relay_peer)?;
                d.extend(
                    self.repo
                        .directory_listing()?
                        .into_iter()
                        .filter(|id| !held.contains(id)),
                );
                // Skipped before: a readable version may be there now.
                d.extend(self.skipped_before.iter().copied());
                d
            }
        };
        docs.sort_by_key(|id| *id != self.repo.directory_id());
        let mut docs = docs.into_iter();
        for id in docs.by_ref() {
            self.start(id)?;
            if self.summary.bytes_sent > PIPELINE_BYTES {
                break;
            }
        }
        if let Err((status, body)) = opening.finish(&mut self.ws)? {
            return Err(refused(status, Some(&body)));
        }
        self.expect_peer()?;
        // The rest of a big upload (a device's first sync) after the 101.
        for id in docs {
            self.start(id)?;
        }
        let mut next_cursor = None;
        if asked_changes {
            match self.receive()? {
                Message::ChangedSince {
                    cursor,
                    document_ids,
                    purged,
                    retention_days,
                    lease_days,
                } => {
                    next_cursor = Some(cursor);
                    // Erasures and the team's policy first: purged families
                    // and closed cases past retention are deleted here (what
                    // this flight offered of them the relay refuses).
                    let purged = purged_with_times(&purged, self.repo.now());
                    self.repo.record_policy(retention_days, lease_days)?;
                    let mut gone = self.repo.apply_purges(&purged)?;
                    gone.extend(self.repo.apply_retention()?);
                    for id in &gone {
                        self.forget(*id);
                    }
                    self.summary.purged = gone.iter().map(ToString::to_string).collect();
                    for d in document_ids {
                        if let Ok(id) = DocumentId::parse(&d, "document id") {
                            // The relay sends these without being asked.
                            self.all.insert(id);
                            self.pending.insert(id);
                            self.demanding.insert(id);
                        }
                    }
                }
                Message::Error { message } => {
                    return Err(Error::Network(format!(
                        "the relay ended the sync: {message}"
                    )));
                }
                other => {
                    return Err(Error::Network(format!(
                        "expected 'changed-since' from the relay, got '{}'",
                        other.message_type()
                    )));
                }
            }
        }
        self.exchange(next_cursor)
    }

    /// Skips a document this app cannot read: no longer awaited, its sync
    /// state not saved (the next sync asks again from the last good one),
    /// reported and remembered; the session goes on with the others.
    fn skip(&mut self, id: DocumentId, reason: String) -> Result<()> {
        tracing::warn!(document = %id, reason = %reason, "skipping a document this app cannot read");
        self.pending.remove(&id);
        self.demanding.remove(&id);
        self.states.remove(&id);
        self.needing.remove(&id);
        self.received.remove(&id);
        if self.skipped.insert(id) {
            self.repo.remember_skipped(id, &reason)?;
            self.summary.skipped.push(SkippedDocument {
                id: id.to_string(),
                reason,
            });
        }
        Ok(())
    }

    /// The relay refused this device's changes to `id` (`doc-refused`):
    /// no longer awaited, its sync state not saved (the next sync offers
    /// the same changes and hears the same again), reported once.
    fn refused(&mut self, id: DocumentId, reason: String) {
        tracing::warn!(document = %id, "the relay refused this device's changes to a document");
        self.pending.remove(&id);
        self.demanding.remove(&id);
        self.states.remove(&id);
        self.needing.remove(&id);
        if !self.was_refused(id) {
            self.summary.refused.push(SkippedDocument {
                id: id.to_string(),
                reason: reason.chars().take(1_000).collect(),
            });
        }
    }

    fn was_refused(&self, id: DocumentId) -> bool {
        let id = id.to_string();
        self.summary.refused.iter().any(|d| d.id == id)
    }

    /// Stops syncing a document deleted during the session (purged).
    fn forget(&mut self, id: DocumentId) {
        self.all.remove(&id);
        self.pending.remove(&id);
        self.demanding.remove(&id);
        self.states.remove(&id);
        self.needing.remove(&id);
        self.locally_changed.remove(&id);
        self.sent_changes.remove(&id);
    }

    fn expect_peer(&mut self) -> Result<()> {
        match self.receive()? {
            Message::Peer {
                sender_id,
                selected_protocol_version,
                peer_metadata,
                ..
            } if selected_protocol_version == PROTOCOL_VERSION => {
                // The pipelined opening already went out with what this
                // device knew of `relay_peer`'s store (sync states, cursor).
                // A relay whose peer id is another store's (its id comes
                // from its database: a relay rebuilt or restored, or another
                // relay enrolled with) holds none of that: trusting it would
                // skip every document unchanged since the last sync there.
                if self.pipelined && !self.relay_peer.is_empty() && self.relay_peer != sender_id {
                    self.other_store = Some(sender_id);
                    return Err(Error::Network(
                        "the relay is another store than the one last synced with".into(),
                    ));
                }
                self.relay_peer = sender_id;
                self.max_message_bytes = split::message_limit(peer_metadata.max_message_bytes);
                Ok(())
            }
            Message::Error { message } => Err(Error::Network(format!(
                "the relay refused the connection: {message}"
            ))),
            other => Err(Error::Network(format!(
                "expected 'peer' from the relay, got '{}'",
                other.message_type()
            ))),
        }
    }

    /// Answers the relay until every opened document is in sync.
    fn exchange(&mut self, next_cursor: Option<i64>) -> Result<()> {
        // From here on, short reads: a peer that has nothing to add to a
        // document may stay silent (automerge-repo's JavaScript server does).
        self.ws
            .get_ref()
            .set_read_timeout(QUIET)
            .map_err(|e| network("socket", e))?;
        // Messages per document of this session (`None`: any other), so a
        // relay that chatters without ever letting a sync end cannot keep
        // the session going forever.
        let mut heard: HashMap<Option<DocumentId>, u32> = HashMap::new();
        while !self.pending.is_empty() {
            let Some(m) = self.receive_or_quiet()? else {
                // Only heads announcements are unanswered: the peer had
                // nothing to add, so those documents are in sync.
                self.pending.clear();
                break;
            };
            let about = match &m {
                Message::Sync { document_id, .. }
                | Message::Request { document_id, .. }
                | Message::DocUnavailable { document_id, .. } => {
                    DocumentId::parse(document_id, "document id")
                        .ok()
                        .filter(|id| self.all.contains(id))
                }
                _ => None,
            };
            let count = heard.entry(about).or_default();
            *count += 1;
            if *count > MAX_MESSAGES_PER_DOCUMENT {
                return Err(Error::Network(format!(
                    "the relay sent more than {MAX_MESSAGES_PER_DOCUMENT} messages about {} without ending its sync",
                    about.map_or("other documents".to_string(), |id| id.to_string())
                )));
            }
            if let Message::Sync { document_id, .. } | Message::DocUnavailable { document_id, .. } =
                &m
                && let Ok(id) = DocumentId::parse(document_id, "document id")
            {
                self.demanding.remove(&id);
            }
            match m {
                Message::Sync {
                    document_id, data, ..
                }
                | Message::Request {
                    document_id, data, ..
                } => {
                    let Ok(id) = DocumentId::parse(&document_id, "document id") else {
                        continue;
                    };
                    if self.skipped.contains(&id) || self.was_refused(id) {
                        continue;
                    }
                    // Refused before Automerge sees it (the budget, a bad
                    // Bloom filter): that document is skipped, not the session.
                    match crate::protocol::decode_sync_message(&data) {
                        Ok(message) => self.handle(id, message)?,
                        Err(e) => self.skip(id, skipped::refused_message(&e))?,
                    }
                }
                Message::DocUnavailable { document_id, .. } => {
                    if let Ok(id) = DocumentId::parse(&document_id, "document id") {
                        if self.pending.remove(&id) {
                            self.unavailable.insert(id);
                        }
                        // Skipped before and gone from the relay since.
                        if self.skipped_before.remove(&id) {
                            self.repo.forget_skipped(id)?;
                        }
                    }
                }
                Message::DocRefused {
                    document_id,
                    reason,
                    ..
                } => {
                    if let Ok(id) = DocumentId::parse(&document_id, "document id")
                        && self.all.contains(&id)
                    {
                        self.refused(id, reason);
                    }
                }
                Message::Error { message } => {
                    return Err(Error::Network(format!(
                        "the relay ended the sync: {message}"
                    )));
                }
                _ => {}
            }
            self.report();
        }
        match next_cursor {
            Some(cursor) => {
                let mut values = vec![
                    ("relay_peer".to_string(), self.relay_peer.clone()),
                    (cursor_key(&self.relay_peer), cursor.to_string()),
                ];
                if let Some(named) = &self.sync_session {
                    values.push((session_key(&self.relay_peer), named.clone()));
                }
                let values: Vec<(&str, &str)> = values
                    .iter()
                    .map(|(k, v)| (k.as_str(), v.as_str()))
                    .collect();
                self.repo.set_profile_values(&values)?
            }
            None if self.pipelined => self
                .repo
                .set_profile_values(&[("relay_peer", &self.relay_peer)])?,
            None => {}
        }
        self.summary.documents_sent = self.sent_changes.len() as u32;
        self.summary.documents_received = self.received.len() as u32;
        self.summary.documents_unavailable = self.unavailable.len() as u32;
        self.summary.documents_total = self.all.len() as u32;
        let _ = self.send(Message::Leave {
            sender_id: self.device_id.clone(),
        });
        Ok(())
    }

    fn report(&self) {
        if let Some(l) = self.listener {
            l.progress(&SyncProgress {
                documents_done: (self.all.len() - self.pending.len()) as u32,
                documents_total: self.all.len() as u32,
                bytes_sent: self.summary.bytes_sent,
                bytes_received: self.summary.bytes_received,
            });
        }
    }

    fn state(&mut self, id: DocumentId) -> Result<sync::State> {
        if let Some(s) = self.states.remove(&id) {
            return Ok(s);
        }
        Ok(self
            .repo
            .load_sync_state(id, &self.relay_peer)?
            .unwrap_or_default())
    }

    /// Opens the sync of one document.
    fn start(&mut self, id: DocumentId) -> Result<()> {
        if !self.all.insert(id) {
            return Ok(());
        }
        self.pending.insert(id);
        let mut state = self.state(id)?;
        if self.pipelined && self.repo.holds(id)? {
            crate::protocol::assume_shared_heads(&mut state);
        }
        let (messages, held) =
            self.repo
                .generate_sync_message(id, &mut state, self.max_message_bytes)?;
        self.states.insert(id, state);
        let Some(messages) = self.sendable(id, messages) else {
            return Ok(());
        };
        if messages.is_empty() {
            // Nothing to say: we already know they have what we have.
            self.pending.remove(&id);
            return Ok(());
        }
        for message in messages {
            if held && !message.changes.is_empty() {
                self.sent_changes.insert(id);
            }
            if self.pipelined
                || !held
                || !message.changes.is_empty()
                || !message.need.is_empty()
                || self.locally_changed.contains(&id)
            {
                self.demanding.insert(id);
            }
            let (sender_id, target_id, document_id, data) = (
                self.device_id.clone(),
                self.relay_peer.clone(),
                id.to_string(),
                message.encode(),
            );
            self.send(if held {
                Message::Sync {
                    sender_id,
                    target_id,
                    document_id,
                    data,
                }
            } else {
                Message::Request {
                    sender_id,
                    target_id,
                    document_id,
                    data,
                }
            })?;
        }
        Ok(())
    }

    /// The messages to send, or `None` for a document with a change larger
    /// than the message limit: reported, and no longer awaited, so the
    /// session goes on with the other documents.
    fn sendable(&mut self, id: DocumentId, messages: SplitMessages) -> Option<Vec<sync::Message>> {
        match messages {
            Ok(m) => Some(m),
            Err(e) => {
                tracing::warn!(document = %id, change_bytes = e.change_bytes, limit = e.max_message_bytes, "a change is larger than the relay's message limit; this document is not synced");
                self.pending.remove(&id);
                self.demanding.remove(&id);
                // Not saved: the last saved state still says what the relay
                // lacks, so the next sync tries (and reports) it again.
                self.states.remove(&id);
                let id = id.to_string();
                if !self.summary.failed.contains(&id) {
                    self.summary.failed.push(id);
                }
                None
            }
        }
    }

    fn handle(&mut self, id: DocumentId, message: sync::Message) -> Result<()> {
        let mut state = self.state(id)?;
        let brought_changes = !message.changes.is_empty();
        let changed = match self.repo.receive_sync_message(id, &mut state, message) {
            Ok(changed) => changed,
            // Nothing of it was written (the transaction rolled back).
            Err(e) => match skipped::reason(&e) {
                Some(reason) => return self.skip(id, reason),
                None => return Err(e),
            },
        };
        if changed {
            self.received.insert(id);
            // Readable now (an app update, a fixed copy on the relay).
            if self.skipped_before.remove(&id) {
                self.repo.forget_skipped(id)?;
            }
        }
        // We asked for changes and answers keep coming without them: the
        // peer thinks it sent them already (automerge's `sent_hashes`; we
        // lost them) and will not send them again, so the two sides would
        // trade the same `need` forever. A sync reset makes it forget what it
        // sent. (One change-less answer is normal: it crossed our request.)
        let unanswered = match self.needing.remove(&id) {
            Some(n) if !brought_changes => n + 1,
            _ => 0,
        };
        let reset = unanswered >= 3;
        if reset {
            tracing::debug!(document = %id, "the changes we need do not come; asking for a sync reset");
            state.needs_reset = true;
        }
        let (replies, _) =
            self.repo
                .generate_sync_message(id, &mut state, self.max_message_bytes)?;
        let Some(replies) = self.sendable(id, replies) else {
            return Ok(());
        };
        for reply in replies {
            if !reply.need.is_empty() {
                self.needing.insert(id, if reset { 0 } else { unanswered });
            }
            if !reply.changes.is_empty() {
                self.sent_changes.insert(id);
            }
            if !reply.changes.is_empty() || !reply.need.is_empty() {
                self.demanding.insert(id);
            }
            self.send(Message::Sync {
                sender_id: self.device_id.clone(),
                target_id: self.relay_peer.clone(),
                document_id: id.to_string(),
                data: reply.encode(),
            })?;
        }
        // In sync once the relay's last stated heads are ours: whatever we
        // just sent is only an acknowledgement, which needs no answer.
        let in_sync = match &state.their_heads {
            Some(theirs) => self.repo.has_exact_heads(id, theirs)?,
            None => false,
        };
        self.states.insert(id, state);
        if in_sync {
            self.pending.remove(&id);
        }
        if changed && self.only.is_none() && id == self.repo.directory_id() {
            for listed in self.repo.directory_listing()? {
                self.start(listed)?;
            }
        }
        Ok(())
    }

    fn save_states(&self) -> Result<()> {
        let in_sync: BTreeSet<DocumentId> = self
            .all
            .iter()
            .filter(|id| {
                !self.pending.contains(id)
                    && !self.unavailable.contains(id)
                    && !self.summary.failed.contains(&id.to_string())
            })
            .copied()
            .collect();
        self.repo
            .save_sync_states(&self.relay_peer, &self.states, &in_sync)
    }

    /// The relay's change cursor and the documents changed since ours;
    /// `None` where the server has no such endpoint (any automerge-repo
    /// server that is not a Linkbook relay): then every document is synced.
    fn relay_changed(&self) -> Result<Option<RelayChanges>> {
        let Some((endpoint, ca, token)) = &self.relay_changes else {
            return Ok(None);
        };
        let since: i64 = self.repo.profile_values(&[&cursor_key(&self.relay_peer)])?[0]
            .as_deref()
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        let (status, body) = net::get_json(
            endpoint,
            ca.as_deref(),
            &format!("/v1/changes?since={since}"),
            token,
        )?;
        if status != 200 {
            return Ok(None);
        }
        // Not a Linkbook relay's answer: sync everything, as with no endpoint.
        let Ok(changes) = serde_json::from_value::<dto::Changes>(body) else {
            return Ok(None);
        };
        Ok(Some(RelayChanges {
            cursor: changes.cursor,
            changed: changes
                .documents
                .iter()
                .filter_map(|s| DocumentId::parse(s, "document id").ok())
                .collect(),
            purged: purged_with_times(&changes.purged, self.repo.now()),
            retention_days: changes.policy.retention_days,
            lease_days: changes.policy.lease_days,
        }))
    }
}

/// The relay's purges as the store records them: well-formed ids only, each
/// with the relay's purge time, or `now` (the device's clock) where the
/// relay sent none (a relay older than `purgedAt`).
fn purged_with_times(
    purged: &[dto::Purged],
    now: chrono::DateTime<chrono::Utc>,
) -> Vec<(DocumentId, String)> {
    purged
        .iter()
        .filter_map(|p| {
            let id = DocumentId::parse(&p.id, "document id").ok()?;
            let at = if p.purged_at.is_empty() {
                now.to_rfc3339()
            } else {
                p.purged_at.clone()
            };
            Some((id, at))
        })
        .collect()
}

/// What `GET /v1/changes` told: the team's documents changed since our
/// cursor, and every document of the team the office purged.
struct RelayChanges {
    cursor: i64,
    changed: Vec<DocumentId>,
    purged: Vec<(DocumentId, String)>,
    /// The team's policy: closed cases are dropped this many days after
    /// closure; a device unsynced for `lease_days` locks itself.
    retention_days: Option<i64>,
    lease_days: Option<i64>,
}

impl Repo {
    /// A sync message for one document (from an empty document if this
    /// device does not hold it); the flag says whether it does.
    pub(crate) fn generate_sync_message(
        &self,
        id: DocumentId,
        state: &mut sync::State,
        max_message_bytes: usize,
    ) -> Result<(SplitMessages, bool)> {
        let held = self.with_doc(id, |doc, _| {
            split::generate_sync_messages(state, max_message_bytes, |s| {
                doc.sync().generate_sync_message(s)
            })
        })?;
        Ok(match held {
            Some(m) => (m, true),
            None => (
                split::generate_sync_messages(state, max_message_bytes, |s| {
                    AutoCommit::new().sync().generate_sync_message(s)
                }),
                false,
            ),
        })
    }

    /// Whether this device holds the document.
    fn holds(&self, id: DocumentId) -> Result<bool> {
        let found: Option<i64> =
            self.query_row_opt("SELECT 1 FROM documents WHERE id = ?1", &[&id.to_string()])?;
        Ok(found.is_some())
    }

    /// Whether this device's heads for `id` are exactly `heads`.
    fn has_exact_heads(&self, id: DocumentId, heads: &[automerge::ChangeHash]) -> Result<bool> {
        let mut theirs = heads.to_vec();
        theirs.sort();
        let ours = self.with_doc(id, |doc, _| doc.get_heads())?;
        Ok(match ours {
            Some(mut ours) => {
                ours.sort();
                ours == theirs
            }
            None => theirs.is_empty(),
        })
    }

    /// Applies a sync message, committing what it brought before returning.
    pub(crate) fn receive_sync_message(
        &self,
        id: DocumentId,
        state: &mut sync::State,
        message: sync::Message,
    ) -> Result<bool> {
        let DeviceProfile {
            team,
            directory_id: directory,
            ..
        } = self.profile();
        self.write(|txn| {
            if txn.exists(id)? {
                let (doc, _) = txn.doc(id, "document")?;
                let before = doc.get_heads();
                // A panic leaves the cached document half-changed: the error drops it.
                crate::protocol::catch_automerge_panic(|| {
                    doc.sync().receive_sync_message(state, message)
                })??;
                return Ok(doc.get_heads() != before);
            }
            let mut doc = AutoCommit::new();
            crate::protocol::catch_automerge_panic(|| {
                doc.sync().receive_sync_message(state, message)
            })??;
            if doc.get_heads().is_empty() {
                return Ok(false);
            }
            let key = id.to_string();
            let kind = am::read_header(&doc, &key)?;
            if am::get_str(&doc, &automerge::ROOT, "team").as_deref() != Some(team.as_str()) {
                return Err(Error::InvalidDocument(format!(
                    "{key} belongs to another team"
                )));
            }
            if kind == DocumentType::TeamDirectory && id != directory {
                return Err(Error::InvalidDocument(format!(
                    "{key} is not this team's directory"
                )));
            }
            txn.create(id, kind, doc)?;
            Ok(true)
        })
    }

    pub(crate) fn load_sync_state(
        &self,
        id: DocumentId,
        peer: &str,
    ) -> Result<Option<sync::State>> {
        let bytes: Option<Vec<u8>> = self.query_row_opt(
            "SELECT state FROM sync_states WHERE doc_id = ?1 AND peer_id = ?2",
            &[&id.to_string(), &peer],
        )?;
        Ok(bytes.and_then(|b| sync::State::decode(&b).ok()))
    }

    /// Saves sync states; a document left in sync also records the version
    /// it was in sync at, so the next sync skips it unless it changes.
    pub(crate) fn save_sync_states(
        &self,
        peer: &str,
        states: &HashMap<DocumentId, sync::State>,
        in_sync: &BTreeSet<DocumentId>,
    ) -> Result<()> {
        if peer.is_empty() || states.is_empty() {
            return Ok(());
        }
        self.with_writer_tx(|tx| {
            let mut stmt = tx.prepare_cached(
                "INSERT INTO sync_states (doc_id, peer_id, state, doc_version)
                 VALUES (?1, ?2, ?3, CASE WHEN ?4 THEN coalesce((SELECT version FROM documents WHERE id = ?1), -1) ELSE -1 END)
                 ON CONFLICT(doc_id, peer_id) DO UPDATE SET state = excluded.state, doc_version = excluded.doc_version",
            )?;
            for (id, state) in states {
                stmt.execute(rusqlite::params![id.to_string(), peer, state.encode(), in_sync.contains(id)])?;
            }
            Ok(())
        })
    }

    /// Documents changed on this device since they were last in sync with
    /// `peer` (or never synced with it).
    pub(crate) fn changed_since_sync(&self, peer: &str) -> Result<Vec<DocumentId>> {
        self.with_writer_tx(|tx| {
            let mut stmt = tx.prepare_cached(
                "SELECT d.id FROM documents d
                 LEFT JOIN sync_states s ON s.doc_id = d.id AND s.peer_id = ?1
                 WHERE s.doc_id IS NULL OR s.doc_version != d.version",
            )?;
            let ids = stmt.query_map([peer], |r| r.get::<_, String>(0))?;
            let mut out = Vec::new();
            for id in ids {
                out.push(DocumentId::parse(&id?, "document id")?);
            }
            Ok(out)
        })
    }
}

/// A message for trace logs: type, document, heads and sizes (no content).
fn describe(m: &Message) -> String {
    match m {
        Message::Sync {
            document_id, data, ..
        }
        | Message::Request {
            document_id, data, ..
        } => {
            let s = sync::Message::decode(data)
                .map(|m| {
                    format!(
                        "heads={:?} need={:?} changes={}",
                        m.heads,
                        m.need,
                        m.changes.len()
                    )
                })
                .unwrap_or_default();
            format!("{} {} {}", m.message_type(), document_id, s)
        }
        other => other.message_type().to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Author, family};
    use crate::{DatabaseKey, NewFamily, NoteCategory};

    fn with_changes(heads: Vec<automerge::ChangeHash>, changes: Vec<u8>) -> sync::Message {
        sync::Message {
            heads,
            need: vec![],
            have: vec![],
            changes: changes.into(),
            flags: None,
            version: sync::MessageVersion::V1,
        }
    }

    /// A change that arrives before its dependency waits in the document's
    /// queue, in memory only; the relay will not send it again this session.
    /// The document cache must not drop it while the session touches more
    /// documents than the cache holds (the office-sync benchmark livelocked
    /// on exactly that: the device asked for the change forever).
    #[test]
    fn a_change_waiting_for_its_dependency_survives_cache_eviction() -> Result<()> {
        let dir = tempfile::tempdir().map_err(|e| Error::Io {
            context: "tempdir".into(),
            source: e,
        })?;
        let repo = Repo::open(dir.path().join("device.db"), &DatabaseKey::generate())?;
        let family_id = repo.add_family(&NewFamily {
            name: "Smith".into(),
            ..Default::default()
        })?;
        // Another replica writes two notes, the second depending on the first.
        let mut other = AutoCommit::load(&repo.save_document(family_id)?)?
            .with_actor(automerge::ActorId::random());
        let author = Author {
            device_id: uuid::Uuid::new_v4().to_string(),
            worker: "Jo".into(),
            team: repo.profile().team,
            now: chrono::Utc::now(),
        };
        let h0 = other.get_heads();
        family::add_note(&mut other, "first", NoteCategory::Visit, &author)?;
        other.commit();
        let first = other.save_after(&h0);
        let h1 = other.get_heads();
        family::add_note(&mut other, "second", NoteCategory::Visit, &author)?;
        other.commit();
        let second = other.save_after(&h1);

        let mut state = sync::State::new();
        let changed = repo.receive_sync_message(
            family_id,
            &mut state,
            with_changes(other.get_heads(), second),
        )?;
        assert!(!changed, "the second note cannot apply before the first");
        // The session goes on to other documents, more than the cache holds.
        let others = (0..2 * crate::store::documents::CACHE_DOCS)
            .map(|i| {
                repo.add_family(&NewFamily {
                    name: format!("Family {i}"),
                    ..Default::default()
                })
            })
            .collect::<Result<Vec<_>>>()?;
        for id in others {
            repo.heads(id)?;
        }
        let changed = repo.receive_sync_message(
            family_id,
            &mut state,
            with_changes(other.get_heads(), first),
        )?;
        assert!(changed);
        let mut texts: Vec<String> = repo.notes(family_id)?.into_iter().map(|n| n.text).collect();
        texts.sort();
        assert_eq!(texts, ["first", "second"]);
        assert_eq!(repo.heads(family_id)?.len(), 1);
        Ok(())
    }
}
