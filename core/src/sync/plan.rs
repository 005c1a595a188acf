//! The device's side of one sync session, as a state machine over the
//! engine (`peer.rs`): which documents to open (changed here, named by the
//! team directory, changed on the relay, skipped before), the relay's
//! purges and policy, the cursor, and the summary. No socket: the driver
//! (`session.rs`) feeds it the relay's messages ([`Plan::on_message`]) and
//! its silences ([`Plan::on_quiet`]), sends what [`Plan::take_outgoing`]
//! gives, fetches `/v1/changes` when [`Plan::take_changes_request`] asks,
//! and stops when [`Plan::done`].

use std::collections::{BTreeSet, VecDeque};

use super::changes::{RelayChanges, purged_with_times};
use super::documents::Store;
use super::peer::{Event, PeerConfig, PeerSync, SyncError};
use super::skipped::SkippedDocument;
use super::{SyncSummary, cursor_key, session_key};
use crate::error::{Error, Result};
use crate::ids::DocumentId;
use crate::protocol::{Message, PROTOCOL_VERSION, PeerMetadata, dto, split};
use crate::repo::Repo;

/// Where the session stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// `join` sent; the relay's `peer` awaited.
    Joining,
    /// Awaiting the relay's answer to `GET /v1/changes` (the driver's).
    AskingChanges,
    /// The pipelined session awaits `changed-since`.
    ChangedSince,
    /// Per-document syncs until none is pending.
    Exchanging,
}

/// How the session was opened.
pub(super) struct Opening {
    /// Speaking to Linkbook's relay the pipelined way (docs/adr/0005).
    pub pipelined: bool,
    /// The pipelined session asked `changed-since` (`/v1/sync?since=`).
    pub asked_changed_since: bool,
    /// A plain session asks the relay `GET /v1/changes` (it has a token).
    pub asks_changes: bool,
    /// The relay's peer id as last known (pipelined) or `""`.
    pub relay_peer: String,
    /// This session's name when it asked what changed since its cursor.
    pub sync_session: Option<String>,
    /// Sync only these documents (and do not follow the directory).
    pub only: Option<Vec<DocumentId>>,
}

pub(super) struct Plan<'a> {
    repo: &'a Repo,
    store: Store<'a>,
    engine: PeerSync,
    device_id: String,
    phase: Phase,
    pipelined: bool,
    asked_changed_since: bool,
    asks_changes: bool,
    sync_session: Option<String>,
    only: Option<BTreeSet<DocumentId>>,
    /// Documents earlier syncs skipped, asked for again.
    skipped_before: BTreeSet<DocumentId>,
    /// Documents still to open, in order (the directory first).
    to_open: VecDeque<DocumentId>,
    /// Documents changed here since the last sync, as at the relay's `peer`.
    changed_here: Vec<DocumentId>,
    /// `Some(since)` once the driver is to fetch `/v1/changes`.
    changes_request: Option<i64>,
    next_cursor: Option<i64>,
    /// Set when the relay's `peer` names another store than the one whose
    /// sync states the pipelined opening used (a rebuilt relay, a new one
    /// enrolled with, a restore): the session stops and starts over.
    pub(super) other_store: Option<String>,
    pub(super) summary: SyncSummary,
    finished: bool,
}

impl<'a> Plan<'a> {
    pub(super) fn new(repo: &'a Repo, opening: Opening) -> Result<Self> {
        let device_id = repo.profile().device_id;
        let engine = PeerSync::new(PeerConfig {
            our_id: device_id.clone(),
            their_id: opening.relay_peer.clone(),
            // Until the relay's `peer` states its limit (our relay's never
            // is below this).
            max_message_bytes: if opening.pipelined {
                split::MIN_MAX_MESSAGE_BYTES
            } else {
                split::DEFAULT_MAX_MESSAGE_BYTES
            },
            answers_everything: opening.pipelined,
        });
        let mut plan = Plan {
            repo,
            store: Store::new(repo),
            engine,
            device_id,
            phase: Phase::Joining,
            pipelined: opening.pipelined,
            asked_changed_since: opening.asked_changed_since,
            asks_changes: opening.asks_changes && opening.only.is_none(),
            sync_session: opening.sync_session,
            only: opening.only.map(|ids| ids.into_iter().collect()),
            skipped_before: repo.skipped_ids()?.into_iter().collect(),
            to_open: VecDeque::new(),
            changed_here: Vec::new(),
            changes_request: None,
            next_cursor: None,
            other_store: None,
            summary: SyncSummary::default(),
            finished: false,
        };
        if plan.pipelined {
            // What changed here since the last sync (everything, the first
            // time), and what the directory names that we lack; the relay
            // sends what changed there.
            let docs = match &plan.only {
                Some(only) => only.iter().copied().collect(),
                None => {
                    let held = plan.held()?;
                    let mut d = repo.changed_since_sync(plan.engine.their_id())?;
                    d.extend(
                        repo.directory_listing()?
                            .into_iter()
                            .filter(|id| !held.contains(id)),
                    );
                    // Skipped before: a readable version may be there now.
                    d.extend(plan.skipped_before.iter().copied());
                    d
                }
            };
            plan.queue_opening(docs);
        }
        Ok(plan)
    }

    /// The session's first message.
    pub(super) fn join(&self) -> Message {
        Message::Join {
            sender_id: self.device_id.clone(),
            peer_metadata: PeerMetadata {
                storage_id: None,
                is_ephemeral: false,
                max_message_bytes: None,
            },
            supported_protocol_versions: vec![PROTOCOL_VERSION.into()],
        }
    }

    /// Opens the next document of the opening, if any is left and the
    /// relay's `peer` (its message limit) is in; its messages go to
    /// [`Plan::take_outgoing`].
    pub(super) fn open_next(&mut self) -> Result<bool> {
        if self.phase == Phase::Joining {
            return Ok(false);
        }
        self.open_ahead()
    }

    /// Opens the next document before the relay's `peer`: the pipelined
    /// first flight (docs/adr/0005).
    pub(super) fn open_ahead(&mut self) -> Result<bool> {
        let Some(id) = self.to_open.pop_front() else {
            return Ok(false);
        };
        self.engine.open(&mut self.store, id)?;
        Ok(true)
    }

    /// What to send now, in order.
    pub(super) fn take_outgoing(&mut self) -> Vec<Message> {
        self.engine.take_outgoing()
    }

    /// `Some(since)`: fetch `GET /v1/changes?since=` and give the answer
    /// to [`Plan::on_changes`].
    pub(super) fn take_changes_request(&mut self) -> Option<i64> {
        self.changes_request.take()
    }

    /// Whether a silence of the relay may end the exchange: only another
    /// automerge-repo server may leave a heads announcement unanswered;
    /// ours answers every message.
    pub(super) fn quiet_ends(&self) -> bool {
        self.phase == Phase::Exchanging && !self.pipelined && !self.engine.awaits_answer()
    }

    /// In the exchange (where the driver reads with short timeouts).
    pub(super) fn exchanging(&self) -> bool {
        self.phase == Phase::Exchanging
    }

    /// Every document opened is done, nothing is left to open.
    pub(super) fn done(&self) -> bool {
        self.finished
            || (self.phase == Phase::Exchanging && self.to_open.is_empty() && self.engine.done())
    }

    /// The relay was quiet while nothing awaited an answer: the pending
    /// heads announcements are answered by silence.
    pub(super) fn on_quiet(&mut self) {
        if self.quiet_ends() {
            self.engine.on_quiet();
        }
    }

    pub(super) fn on_message(&mut self, m: Message) -> Result<()> {
        match (self.phase, m) {
            (Phase::Joining, m) => self.on_peer(m),
            (Phase::ChangedSince, m) => self.on_changed_since(m),
            (_, Message::Error { message }) => Err(Error::Network(format!(
                "the relay ended the sync: {message}"
            ))),
            (_, m) => {
                self.engine
                    .on_message(&mut self.store, m)
                    .map_err(relay_error)?;
                self.after_engine()
            }
        }
    }

    /// The relay's answer to `GET /v1/changes` (`None`: no such endpoint,
    /// or not a Linkbook relay's answer: every document is synced).
    pub(super) fn on_changes(&mut self, answer: Option<dto::Changes>) -> Result<()> {
        let now = self.repo.now();
        self.plan_plain(answer.map(|c| RelayChanges::new(c, now)))
    }

    /// The profile's change cursor for the relay, as the driver asks.
    fn cursor(&self) -> Result<i64> {
        Ok(self
            .repo
            .profile_values(&[&cursor_key(self.engine.their_id())])?[0]
            .as_deref()
            .and_then(|c| c.parse().ok())
            .unwrap_or(0))
    }

    fn held(&self) -> Result<BTreeSet<DocumentId>> {
        Ok(self
            .repo
            .document_ids()?
            .into_iter()
            .map(|(id, _)| id)
            .collect())
    }

    /// Queues documents to open, the team directory first: it names the
    /// documents this device lacks.
    fn queue_opening(&mut self, mut docs: Vec<DocumentId>) {
        let directory = self.repo.directory_id();
        docs.sort_by_key(|id| *id != directory);
        self.to_open.extend(docs);
    }

    fn on_peer(&mut self, m: Message) -> Result<()> {
        match m {
            Message::Peer {
                sender_id,
                selected_protocol_version,
                peer_metadata,
                ..
            } if selected_protocol_version == PROTOCOL_VERSION => {
                // The pipelined opening already went out with what this
                // device knew of the relay's store (sync states, cursor).
                // A relay whose peer id is another store's (its id comes
                // from its database: a relay rebuilt or restored, or another
                // relay enrolled with) holds none of that: trusting it would
                // skip every document unchanged since the last sync there.
                let known = self.engine.their_id();
                if self.pipelined && !known.is_empty() && known != sender_id {
                    self.other_store = Some(sender_id);
                    return Err(Error::Network(
                        "the relay is another store than the one last synced with".into(),
                    ));
                }
                self.engine.set_peer(
                    sender_id,
                    split::message_limit(peer_metadata.max_message_bytes),
                );
                if self.pipelined {
                    self.phase = match self.asked_changed_since {
                        true => Phase::ChangedSince,
                        false => Phase::Exchanging,
                    };
                    return Ok(());
                }
                // A server may leave a heads announcement unanswered when
                // it has nothing to add, but never one that differs from
                // what it holds: documents changed here since the last sync
                // with it must hear back. (Waiting only on changes and
                // needs made devices give up on a busy JavaScript server
                // before their changes went up: office-sync benchmark, 20
                // devices at once.)
                self.changed_here = self.repo.changed_since_sync(self.engine.their_id())?;
                self.engine.changed_here(self.changed_here.iter().copied());
                if self.asks_changes {
                    self.phase = Phase::AskingChanges;
                    self.changes_request = Some(self.cursor()?);
                    Ok(())
                } else {
                    self.plan_plain(None)
                }
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

    /// The plain session's documents, once the relay said what changed.
    fn plan_plain(&mut self, relay: Option<RelayChanges>) -> Result<()> {
        self.phase = Phase::Exchanging;
        let docs = match &self.only {
            Some(only) => only.iter().copied().collect(),
            None => {
                let mut held = self.held()?;
                if let Some(relay) = &relay {
                    // Erasures first: a purged family is deleted here before
                    // anything could offer it to the relay again; then closed
                    // cases past the team's retention.
                    self.repo
                        .record_policy(relay.retention_days, relay.lease_days)?;
                    let mut purged = self.repo.apply_purges(&relay.purged)?;
                    purged.extend(self.repo.apply_retention()?);
                    self.summary.purged = purged.iter().map(ToString::to_string).collect();
                    if !purged.is_empty() {
                        held = self.held()?;
                    }
                }
                let listed = self.repo.directory_listing()?;
                let skipped_before = self.skipped_before.iter().copied();
                match relay {
                    // Only what changed here since the last sync, what
                    // changed on the relay since, and what we lack.
                    Some(relay) => {
                        self.next_cursor = Some(relay.cursor);
                        let mut d = std::mem::take(&mut self.changed_here);
                        d.extend(relay.changed);
                        d.extend(listed.into_iter().filter(|id| !held.contains(id)));
                        d.extend(skipped_before);
                        d
                    }
                    None => held
                        .into_iter()
                        .chain(listed)
                        .chain(skipped_before)
                        .collect(),
                }
            }
        };
        self.queue_opening(docs);
        Ok(())
    }

    fn on_changed_since(&mut self, m: Message) -> Result<()> {
        match m {
            Message::ChangedSince {
                cursor,
                document_ids,
                purged,
                retention_days,
                lease_days,
            } => {
                self.phase = Phase::Exchanging;
                self.next_cursor = Some(cursor);
                // Erasures and the team's policy first: purged families and
                // closed cases past retention are deleted here (what this
                // flight offered of them the relay refuses).
                let purged = purged_with_times(&purged, self.repo.now());
                self.repo.record_policy(retention_days, lease_days)?;
                let mut gone = self.repo.apply_purges(&purged)?;
                gone.extend(self.repo.apply_retention()?);
                for id in &gone {
                    self.engine.forget(*id);
                    self.to_open.retain(|d| d != id);
                }
                self.summary.purged = gone.iter().map(ToString::to_string).collect();
                for d in document_ids {
                    if let Ok(id) = DocumentId::parse(&d, "document id") {
                        // The relay sends these without being asked.
                        self.engine.expect(id);
                    }
                }
                Ok(())
            }
            Message::Error { message } => Err(Error::Network(format!(
                "the relay ended the sync: {message}"
            ))),
            other => Err(Error::Network(format!(
                "expected 'changed-since' from the relay, got '{}'",
                other.message_type()
            ))),
        }
    }

    /// Acts on what the engine reported.
    fn after_engine(&mut self) -> Result<()> {
        for event in self.engine.take_events() {
            match event {
                Event::Changed(id) => {
                    // Readable now (an app update, a fixed copy on the relay).
                    if self.skipped_before.remove(&id) {
                        self.repo.forget_skipped(id)?;
                    }
                    if self.only.is_none() && id == self.repo.directory_id() {
                        for listed in self.repo.directory_listing()? {
                            self.engine.open(&mut self.store, listed)?;
                        }
                    }
                }
                // Skipped before and gone from the relay since.
                Event::Unavailable(id) => {
                    if self.skipped_before.remove(&id) {
                        self.repo.forget_skipped(id)?;
                    }
                }
                Event::Skipped { id, reason } => {
                    self.repo.remember_skipped(id, &reason)?;
                    self.summary.skipped.push(SkippedDocument {
                        id: id.to_string(),
                        reason,
                    });
                }
                Event::Refused { id, reason } => self.summary.refused.push(SkippedDocument {
                    id: id.to_string(),
                    reason,
                }),
                Event::TooLarge(id) => self.summary.failed.push(id.to_string()),
            }
        }
        Ok(())
    }

    /// The exchange ended well: the cursor and the relay's peer id are
    /// saved, the summary counted, `leave` queued.
    pub(super) fn finish(&mut self) -> Result<Message> {
        self.finished = true;
        // Anything the last messages reported (a skip while opening).
        self.after_engine()?;
        let relay_peer = self.engine.their_id().to_string();
        match self.next_cursor {
            Some(cursor) => {
                let mut values = vec![
                    ("relay_peer".to_string(), relay_peer.clone()),
                    (cursor_key(&relay_peer), cursor.to_string()),
                ];
                if let Some(named) = &self.sync_session {
                    values.push((session_key(&relay_peer), named.clone()));
                }
                let values: Vec<(&str, &str)> = values
                    .iter()
                    .map(|(k, v)| (k.as_str(), v.as_str()))
                    .collect();
                self.repo.set_profile_values(&values)?
            }
            None if self.pipelined => self
                .repo
                .set_profile_values(&[("relay_peer", &relay_peer)])?,
            None => {}
        }
        let counts = self.engine.counts();
        self.summary.documents_sent = counts.sent as u32;
        self.summary.documents_received = counts.received as u32;
        self.summary.documents_unavailable = counts.unavailable as u32;
        self.summary.documents_total = counts.total as u32;
        Ok(Message::Leave {
            sender_id: self.device_id.clone(),
        })
    }

    /// Keeps what was learnt about the relay's heads, whatever happened.
    pub(super) fn save_states(&mut self) -> Result<()> {
        self.after_engine()?;
        self.repo
            .save_sync_states(self.engine.their_id(), &self.engine.states())
    }

    pub(super) fn relay_peer(&self) -> &str {
        self.engine.their_id()
    }

    /// (documents done, documents total) for progress.
    pub(super) fn progress(&self) -> (u32, u32) {
        let c = self.engine.counts();
        ((c.total - c.pending) as u32, c.total as u32)
    }
}

/// The engine's refusals, said as what the relay did.
fn relay_error(e: SyncError) -> Error {
    match e {
        SyncError::Malformed(e) => {
            Error::Network(format!("the relay sent a malformed message: {e}"))
        }
        SyncError::Chatter(about) => Error::Network(format!(
            "the relay sent more than {} messages about {} without ending its sync",
            super::peer::MAX_MESSAGES_PER_DOCUMENT,
            about.map_or("other documents".to_string(), |id| id.to_string())
        )),
        SyncError::Replica(e) => e,
    }
}

/// Decodes the relay's bytes within bounds.
pub(super) fn decode(bytes: &[u8]) -> Result<Message> {
    PeerSync::decode(bytes).map_err(relay_error)
}
