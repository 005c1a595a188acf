//! The sync client: enrolment with the relay, then "sync now" over one
//! WebSocket speaking the automerge-repo protocol, until every document the
//! device holds or its team directory names is at the same heads on both
//! sides.
//!
//! Every change received is committed (with its projections) as it arrives,
//! so a dropped connection keeps all progress and the next sync resumes.
//! Sync states are persisted per (document, relay peer) so an unchanged
//! document costs one small message each way.

mod changes;
mod doc_sync;
mod documents;
mod enrolment;
pub mod link;
pub(crate) mod net;
mod peer;
mod plan;
mod session;
pub(crate) mod skipped;

use enrolment::refused;
pub use enrolment::{DeviceCredentials, enrol_device};

use serde::Serialize;
use tungstenite::client::IntoClientRequest;

use crate::error::{Error, Result};
use crate::ids::DocumentId;
use crate::protocol::dto;
use crate::repo::Repo;
pub use doc_sync::{ApplyError, DocSync, MAX_RESETS, Outgoing};
use link::{Connector, Link, WsLink};
use net::{Endpoint, network};
use plan::{Opening, Plan};
use session::Session;
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

const PROFILE_KEYS: [&str; 4] = ["server_url", "server_ca", "token", "relay_peer"];

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
        self.adopt_enrolment(server_url, ca_pem, &c)
    }

    /// Takes credentials the relay at `server_url` issued for this device
    /// (by [`enrol_device`], or a caller that redeemed the code its own
    /// way): the device moves into their team and keeps the token.
    pub fn adopt_enrolment(
        &self,
        server_url: &str,
        ca_pem: Option<&str>,
        c: &DeviceCredentials,
    ) -> Result<Enrolment> {
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
            device_id: c.device_id.clone(),
            team: c.team.clone(),
            worker: c.worker.clone(),
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
        let connect = Connect::relay(&server, Some(&token), ca.as_deref())?;
        let result = self.sync_session(connect, only, listener, true);
        self.after_sync(result, || self.upload_reads(&server, ca.as_deref(), &token))
    }

    /// Syncs with the relay this device enrolled with over the links
    /// `connector` opens (the in-process simulation, a tablet's own
    /// transport), the same session as [`Repo::sync`]: the offline lease
    /// runs from a successful one and a revoked device wipes itself. The
    /// log of case-file reads stays queued for a sync over the network
    /// (`POST /v1/audit` is not part of the sync protocol).
    pub fn sync_over(
        &self,
        connector: &mut dyn Connector,
        listener: Option<&dyn SyncListener>,
    ) -> Result<SyncSummary> {
        let Some(token) = self.profile_values(&["token"])?[0]
            .clone()
            .filter(|t| !t.is_empty())
        else {
            return Err(Error::Unauthorized(
                "this device is not enrolled: run enrol first".into(),
            ));
        };
        let result = self.sync_session(
            Connect::Caller {
                connector,
                token: &token,
            },
            None,
            listener,
            true,
        );
        self.after_sync(result, || Ok(()))
    }

    /// What follows a session with the enrolled relay: a successful one
    /// starts the offline lease and uploads the read log (`upload`); a
    /// revoked device deletes everything it holds.
    fn after_sync(
        &self,
        result: Result<SyncSummary>,
        upload: impl FnOnce() -> Result<()>,
    ) -> Result<SyncSummary> {
        if result.is_ok() {
            // The offline lease runs from here.
            self.record_sync()?;
            // The audit of who read which case file: kept here until the
            // relay has it, so a failed upload only waits for the next sync.
            if let Err(e) = upload() {
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
        self.sync_session(
            Connect::relay(server, token, ca_pem)?,
            None,
            listener,
            false,
        )
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
        self.sync_session(
            Connect::relay(server, token, ca_pem)?,
            Some(ids),
            listener,
            false,
        )
    }

    /// One session; again from scratch if the relay turned out to be
    /// another store than the one this device's sync states describe.
    fn sync_session(
        &self,
        mut connect: Connect<'_>,
        only: Option<&[DocumentId]>,
        listener: Option<&dyn SyncListener>,
        pipelined: bool,
    ) -> Result<SyncSummary> {
        let mut started_over = false;
        loop {
            match self.sync_session_once(&mut connect, only, listener, pipelined)? {
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
        connect: &mut Connect<'_>,
        only: Option<&[DocumentId]>,
        listener: Option<&dyn SyncListener>,
        pipelined: bool,
    ) -> Result<Attempt> {
        let token = connect.token().map(str::to_string);
        // A plain session with a token asks the relay `GET /v1/changes`.
        let relay_changes = match (&*connect, &token) {
            (Connect::Relay { endpoint, ca, .. }, Some(t)) if !pipelined => {
                Some((endpoint.clone(), ca.map(str::to_string), t.clone()))
            }
            _ => None,
        };
        let (link, opening, relay_peer, sync_session): (Box<dyn Link + '_>, _, _, _) =
            match (pipelined, token.as_deref()) {
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
                    // This session's name, and the last successful one's:
                    // the relay leaves out of `changed-since` only what that
                    // session uploaded, never what a copy of this device did
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
                    let link: Box<dyn Link + '_> = match connect {
                        Connect::Relay { endpoint, ca, .. } => {
                            let (ws, opening) = net::open_pipelined(endpoint, *ca, &path, token)?;
                            Box::new(WsLink::new(ws, Some(opening)))
                        }
                        Connect::Caller { connector, .. } => connector.connect(&path, token)?,
                    };
                    (link, Some(since.is_some()), known_peer, named)
                }
                _ => {
                    let Connect::Relay { endpoint, ca, .. } = connect else {
                        return Err(Error::Unauthorized(
                            "a caller's link syncs only an enrolled device".into(),
                        ));
                    };
                    let stream = net::Prefixed::new(net::connect(endpoint, *ca)?);
                    let mut request = endpoint
                        .url_for("/v1/sync", true)
                        .into_client_request()
                        .map_err(|e| network("sync request", e))?;
                    if let Some(token) = token.as_deref() {
                        let value = format!("Bearer {token}")
                            .parse()
                            .map_err(|_| Error::invalid("token", "not a valid header value"))?;
                        request.headers_mut().insert("Authorization", value);
                    }
                    let (ws, _) =
                        tungstenite::client::client(request, stream).map_err(|e| match e {
                            tungstenite::HandshakeError::Failure(tungstenite::Error::Http(
                                resp,
                            )) => refused(resp.status().as_u16(), resp.body().as_deref()),
                            other => network("opening the sync connection", other),
                        })?;
                    (Box::new(WsLink::new(ws, None)), None, String::new(), None)
                }
            };
        let mut plan = Plan::new(
            self,
            Opening {
                pipelined: opening.is_some(),
                asked_changed_since: opening == Some(true),
                asks_changes: opening.is_none() && token.is_some(),
                relay_peer,
                sync_session,
                only: only.map(<[DocumentId]>::to_vec),
            },
        )?;
        let mut session = Session::new(link, listener, relay_changes);
        let result = session.run(&mut plan, opening.is_some());
        if let Some(found) = plan.other_store.take() {
            // What was sent assumed the other store's heads; nothing learnt
            // in this session is kept.
            let mut ignored = SyncSummary::default();
            session.close(&mut ignored);
            return Ok(Attempt::OtherStore {
                known: plan.relay_peer().to_string(),
                found,
            });
        }
        // Whatever happened, keep what was learnt about the relay's heads.
        let saved = plan.save_states();
        session.close(&mut plan.summary);
        result?;
        saved?;
        Ok(Attempt::Done(plan.summary))
    }
}

/// How a session reaches the relay.
enum Connect<'c> {
    /// Over the network, at the relay's address.
    Relay {
        endpoint: Endpoint,
        token: Option<&'c str>,
        ca: Option<&'c str>,
    },
    /// Over the caller's links ([`Repo::sync_over`]).
    Caller {
        connector: &'c mut dyn Connector,
        token: &'c str,
    },
}

impl<'c> Connect<'c> {
    /// The relay at address `server`.
    fn relay(server: &str, token: Option<&'c str>, ca: Option<&'c str>) -> Result<Self> {
        Ok(Connect::Relay {
            endpoint: Endpoint::parse(server)?,
            token,
            ca,
        })
    }

    fn token(&self) -> Option<&str> {
        match self {
            Connect::Relay { token, .. } => *token,
            Connect::Caller { token, .. } => Some(token),
        }
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
