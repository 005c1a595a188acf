//! The document watch on PostgreSQL ([`DocumentStore::watch_documents`]):
//! how relay nodes on one database keep their loaded copies fresh.
//!
//! Every upload and purge notifies [`CHANNEL`] inside its transaction
//! (`pg_notify`), so a notification is delivered only if, and once, its
//! transaction commits, and PostgreSQL delivers notifications of different
//! transactions in commit order. A node LISTENs on a connection of its own
//! (not the pool's: a pooled connection is shared) and forwards each as a
//! [`DocumentEvent`].
//!
//! A notification sent while the listening connection is down is lost:
//! after every (re)connect the watch sends [`DocumentEvent::Missed`], once
//! LISTEN is in place, and the node checks every loaded copy against
//! storage. Anything committed before LISTEN is caught by that check,
//! anything after by a notification. TCP keepalives on that connection
//! find a database that went away without closing it.
//!
//! [`DocumentStore::watch_documents`]: crate::storage::DocumentStore::watch_documents

use std::time::Duration;

use futures_util::StreamExt;
use linkbook_core::DocumentId;
use tokio::sync::mpsc;
use tokio_postgres::AsyncMessage;
use tokio_postgres::tls::MakeTlsConnect;

use super::PostgresStorage;
use crate::storage::{DocumentEvent, DocumentEvents, Team};

/// The channel uploads and purges notify.
pub(super) const CHANNEL: &str = "linkbook_documents";

/// PostgreSQL refuses a payload of 8,000 bytes or more; an event that
/// would not fit (a very long team name) is sent as "check everything".
const MAX_PAYLOAD: usize = 7_900;

/// Events the node has not taken yet; beyond, the watch waits (the
/// database keeps what it has not read: nothing is lost).
const QUEUED: usize = 1_024;

/// The wait before reconnecting grows from the first to the last.
const RECONNECT: (Duration, Duration) = (Duration::from_millis(250), Duration::from_secs(5));

const CLOSED: &str = "the database closed the connection";

/// The payload telling that `team`'s document `id` is at cursor value `seq`.
pub(super) fn changed(team: &Team, id: DocumentId, seq: i64) -> String {
    payload('c', seq, id, team)
}

/// The payload telling that `team`'s document `id` was purged.
pub(super) fn purged(team: &Team, id: DocumentId) -> String {
    payload('p', 0, id, team)
}

fn payload(kind: char, seq: i64, id: DocumentId, team: &Team) -> String {
    let text = format!("{kind}\t{seq}\t{id}\t{team}");
    if text.len() > MAX_PAYLOAD {
        return "m".into();
    }
    text
}

/// The event a payload tells; `None` for one this relay does not know
/// (a newer node's), which is then read as [`DocumentEvent::Missed`].
fn parse(payload: &str) -> Option<DocumentEvent> {
    let mut parts = payload.splitn(4, '\t');
    let kind = parts.next()?;
    if kind == "m" {
        return Some(DocumentEvent::Missed);
    }
    let seq: i64 = parts.next()?.parse().ok()?;
    let id = DocumentId::parse(parts.next()?, "document id").ok()?;
    let team = Team::from(parts.next()?);
    match kind {
        "c" => Some(DocumentEvent::Changed { team, id, seq }),
        "p" => Some(DocumentEvent::Purged { team, id }),
        _ => None,
    }
}

impl PostgresStorage {
    /// Starts the watch: a task that listens until `events` is dropped.
    pub(super) fn watch(&self) -> DocumentEvents {
        let (events, receiver) = mpsc::channel(QUEUED);
        let mut config = self.config.clone();
        config
            .keepalives(true)
            .keepalives_idle(Duration::from_secs(15))
            .keepalives_interval(Duration::from_secs(5))
            .keepalives_retries(3);
        let tls = self.tls.clone();
        tokio::spawn(async move {
            let mut wait = RECONNECT.0;
            let mut failing = false;
            loop {
                let ended = match &tls {
                    Some(tls) => listen(&config, tls.clone(), &events).await,
                    None => listen(&config, tokio_postgres::NoTls, &events).await,
                };
                match ended {
                    // The node stopped watching.
                    Ok(()) => return,
                    Err(e) => {
                        if !failing {
                            tracing::error!(error = %e, "the document watch lost the database: changes other relay nodes store reach this node's live devices when it is back");
                            failing = true;
                        }
                    }
                }
                if events.is_closed() {
                    return;
                }
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(RECONNECT.1);
            }
        });
        receiver
    }
}

/// One listening connection, until it fails (`Err`) or the node stops
/// watching (`Ok`).
async fn listen<T>(
    config: &tokio_postgres::Config,
    tls: T,
    events: &mpsc::Sender<DocumentEvent>,
) -> Result<(), String>
where
    T: MakeTlsConnect<tokio_postgres::Socket>,
    T::Stream: Send + Unpin + 'static,
{
    let (client, mut connection) = config.connect(tls).await.map_err(|e| e.to_string())?;
    let mut messages = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
    // The connection is driven by reading its messages: LISTEN completes
    // only while they are read.
    let statement = format!("LISTEN {CHANNEL}");
    let listening = client.batch_execute(&statement);
    tokio::pin!(listening);
    let mut early = Vec::new();
    loop {
        tokio::select! {
            done = &mut listening => { done.map_err(|e| e.to_string())?; break; }
            message = messages.next() => match message {
                Some(Ok(AsyncMessage::Notification(n))) => early.push(n.payload().to_string()),
                Some(Ok(_)) => {}
                Some(Err(e)) => return Err(e.to_string()),
                None => return Err(CLOSED.into()),
            },
        }
    }
    tracing::info!("the document watch listens for other relay nodes' changes");
    for event in std::iter::once(DocumentEvent::Missed).chain(
        early
            .iter()
            .map(|p| parse(p).unwrap_or(DocumentEvent::Missed)),
    ) {
        if events.send(event).await.is_err() {
            return Ok(());
        }
    }
    loop {
        let event = tokio::select! {
            message = messages.next() => match message {
                Some(Ok(AsyncMessage::Notification(n))) => {
                    parse(n.payload()).unwrap_or(DocumentEvent::Missed)
                }
                Some(Ok(_)) => continue,
                Some(Err(e)) => return Err(e.to_string()),
                None => return Err(CLOSED.into()),
            },
            () = events.closed() => return Ok(()),
        };
        if events.send(event).await.is_err() {
            return Ok(());
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::expect_used)]

    use super::*;

    #[test]
    fn payloads_read_back_as_their_events() {
        let team = Team::from("north east\tteam");
        let id = DocumentId::random();
        assert_eq!(
            parse(&changed(&team, id, 42)),
            Some(DocumentEvent::Changed {
                team: team.clone(),
                id,
                seq: 42
            })
        );
        assert_eq!(
            parse(&purged(&team, id)),
            Some(DocumentEvent::Purged { team, id })
        );
        let long = Team::from("x".repeat(MAX_PAYLOAD).as_str());
        assert_eq!(parse(&changed(&long, id, 1)), Some(DocumentEvent::Missed));
        for unknown in [
            "",
            "c",
            "c\tx\ty\tz",
            "z\t1\t2\t3",
            "c\t1\tnot-an-id\tnorth",
        ] {
            assert_eq!(parse(unknown), None, "{unknown:?}");
        }
    }
}
