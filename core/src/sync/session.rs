//! The driver of one sync session, and nothing else: it writes what the
//! plan (`plan.rs`) gives to the session's [`Link`] (the relay's WebSocket,
//! or a caller's), reads the relay's messages from it (an answer awaited, a
//! quiet that may end the exchange, or a poll that keeps the connection
//! alive while writing: `link.rs` has the one socket read loop), and feeds
//! them to the plan until it is done. Every decision about documents
//! is the plan's and the engine's (`peer.rs`).

use std::collections::VecDeque;
use std::time::Instant;

use automerge::sync;

use super::changes;
use super::link::{KEEP_ALIVE, Link, Wait};
use super::net::Endpoint;
use super::plan::{self, Plan};
use super::{SyncListener, SyncProgress, SyncSummary};
use crate::error::Result;
use crate::protocol::Message;

/// At most this much is sent ahead of the relay's `101` (a day's offline
/// work is tens of KB; a first upload of a whole caseload, tens of MB, waits
/// for the upgrade rather than sitting in the relay's HTTP buffers).
const PIPELINE_BYTES: u64 = 256 * 1024;

pub(super) struct Session<'a> {
    link: Box<dyn Link + 'a>,
    /// Messages read while still writing ([`Session::keep_alive`]), in order;
    /// handled before anything read later.
    backlog: VecDeque<Message>,
    listener: Option<&'a dyn SyncListener>,
    /// Where to ask the relay what changed (`GET /v1/changes`), with what.
    relay_changes: Option<(Endpoint, Option<String>, String)>,
    /// Bytes and messages each way.
    traffic: SyncSummary,
}

impl<'a> Session<'a> {
    pub(super) fn new(
        link: Box<dyn Link + 'a>,
        listener: Option<&'a dyn SyncListener>,
        relay_changes: Option<(Endpoint, Option<String>, String)>,
    ) -> Self {
        Session {
            link,
            backlog: VecDeque::new(),
            listener,
            relay_changes,
            traffic: SyncSummary::default(),
        }
    }

    /// Runs the session: `pipelined`, its first flight is written before
    /// the relay's answer to the opening ([`Link::opened`]) is read.
    pub(super) fn run(&mut self, plan: &mut Plan<'_>, pipelined: bool) -> Result<()> {
        self.send(plan.join())?;
        if pipelined {
            while self.traffic.bytes_sent <= PIPELINE_BYTES && plan.open_ahead()? {
                self.send_all(plan)?;
            }
            if let Err((status, body)) = self.link.opened()? {
                return Err(super::enrolment::refused(status, Some(&body)));
            }
        }
        let mut last_read = Instant::now();
        loop {
            // The rest of the opening (a big upload after the 101, all of
            // a plain session's), reading now and then.
            while plan.open_next()? {
                self.send_all(plan)?;
                if last_read.elapsed() >= KEEP_ALIVE {
                    self.keep_alive()?;
                    last_read = Instant::now();
                }
            }
            if let Some(since) = plan.take_changes_request() {
                let answer = self.relay_changed(since)?;
                plan.on_changes(answer)?;
                continue;
            }
            if plan.done() {
                break;
            }
            let wait = match plan.exchanging() {
                true => Wait::Exchange {
                    quiet_ends: plan.quiet_ends(),
                },
                false => Wait::Answer,
            };
            let Some(m) = self.next(wait)? else {
                plan.on_quiet();
                continue;
            };
            let exchanging = plan.exchanging();
            plan.on_message(m)?;
            self.send_all(plan)?;
            if exchanging {
                self.report(plan);
            }
        }
        let leave = plan.finish()?;
        let _ = self.send(leave);
        Ok(())
    }

    /// Closes the connection; the summary gets this session's traffic.
    pub(super) fn close(mut self, summary: &mut SyncSummary) {
        self.link.close();
        summary.bytes_sent = self.traffic.bytes_sent;
        summary.bytes_received = self.traffic.bytes_received;
        summary.messages_sent = self.traffic.messages_sent;
        summary.messages_received = self.traffic.messages_received;
    }

    fn send_all(&mut self, plan: &mut Plan<'_>) -> Result<()> {
        for m in plan.take_outgoing() {
            self.send(m)?;
        }
        Ok(())
    }

    fn send(&mut self, m: Message) -> Result<()> {
        tracing::trace!(message = %describe(&m), "sync send");
        let bytes = m.encode();
        self.traffic.bytes_sent += bytes.len() as u64;
        self.traffic.messages_sent += 1;
        self.link.send(bytes)
    }

    /// The next message: what the keep-alive read first, then the socket.
    fn next(&mut self, wait: Wait) -> Result<Option<Message>> {
        match self.backlog.pop_front() {
            Some(m) => Ok(Some(m)),
            None => self.read(wait),
        }
    }

    /// The link's next message, decoded.
    fn read(&mut self, wait: Wait) -> Result<Option<Message>> {
        let Some(bytes) = self.link.recv(wait)? else {
            return Ok(None);
        };
        self.traffic.bytes_received += bytes.len() as u64;
        self.traffic.messages_received += 1;
        let m = plan::decode(&bytes)?;
        tracing::trace!(message = %describe(&m), "sync receive");
        Ok(Some(m))
    }

    /// Reads what the server has sent so far without waiting for more,
    /// keeping its messages for later: tungstenite answers pings as it reads
    /// them. automerge-repo's NodeWSServerAdapter pings every 5 s and drops
    /// a client that missed a pong; a first sync of 2,000 documents with it
    /// took longer than that to write on a busy machine, and was reset
    /// (benchmark fresh-device, full tier).
    fn keep_alive(&mut self) -> Result<()> {
        while let Some(m) = self.read(Wait::Poll)? {
            self.backlog.push_back(m);
        }
        // The pongs tungstenite queued go out now, not with the next message.
        self.link.flush()
    }

    /// `GET /v1/changes?since=`: `None` where the server has no such
    /// endpoint (any automerge-repo server that is not a Linkbook relay).
    fn relay_changed(&self, since: i64) -> Result<Option<crate::protocol::dto::Changes>> {
        match &self.relay_changes {
            Some((endpoint, ca, token)) => changes::fetch(endpoint, ca.as_deref(), token, since),
            None => Ok(None),
        }
    }

    fn report(&self, plan: &Plan<'_>) {
        if let Some(l) = self.listener {
            let (documents_done, documents_total) = plan.progress();
            l.progress(&SyncProgress {
                documents_done,
                documents_total,
                bytes_sent: self.traffic.bytes_sent,
                bytes_received: self.traffic.bytes_received,
            });
        }
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
