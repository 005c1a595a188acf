//! The session on a connection: the `join`/`peer` handshake (the client's
//! own peer id, checked), the pipelined opening's `changed-since`, then the
//! message loop (pushes and deferred replies between the device's
//! messages). [`Sessions`] names a device's sync sessions, so copies of a
//! device hear of each other's uploads.

use chrono::Utc;
use linkbook_core::protocol::{Message, PROTOCOL_VERSION, PeerMetadata};

use super::connection::next_or_closed;
use super::{Close, Hub};
use crate::outbox::{Outbox, Owed};
use crate::storage::{AuditAction, Device};

/// Which of a device's uploads its `changed-since` leaves out: its own.
///
/// Copies of one device (a restored backup, a copied profile) share its id,
/// so "uploaded by this device" would hide each copy's uploads from the
/// other for good. A Linkbook device names each sync session
/// (`/v1/sync?since=N&session=S&after=P`: S random per session, P the
/// session of its last successful sync), the relay tags what the session
/// uploads `device/S`, and leaves out only what is tagged `device/P`: the
/// device's own last session, never a copy's. Without `session` (older
/// devices, other clients) uploads are tagged with the device id, as before.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Sessions {
    /// This session's name (`session=`).
    pub this: Option<String>,
    /// The device's last successful session (`after=`).
    pub after: Option<String>,
}

impl Sessions {
    /// At most this many characters in a session name (hex digits).
    pub const MAX_LEN: usize = 32;

    /// Parses `session=` and `after=` from a query string: each, when
    /// present, 1-32 hex digits; anything else is refused.
    pub fn from_query(query: Option<&str>) -> Result<Self, String> {
        let mut out = Sessions::default();
        for kv in query.unwrap_or_default().split('&') {
            let (slot, value) = match kv.split_once('=') {
                Some(("session", v)) => (&mut out.this, v),
                Some(("after", v)) => (&mut out.after, v),
                _ => continue,
            };
            if value.is_empty()
                || value.len() > Self::MAX_LEN
                || !value.bytes().all(|b| b.is_ascii_hexdigit())
            {
                return Err(format!(
                    "a sync session name is 1 to {} hexadecimal digits",
                    Self::MAX_LEN
                ));
            }
            *slot = Some(value.to_ascii_lowercase());
        }
        if out.this.is_none() && out.after.is_some() {
            return Err("`after` needs a `session`".into());
        }
        Ok(out)
    }

    /// What this connection's uploads are tagged with.
    pub fn upload_tag(&self, device_id: &str) -> String {
        match &self.this {
            Some(s) => format!("{device_id}/{s}"),
            None => device_id.to_string(),
        }
    }

    /// The tag of the uploads `changed-since` leaves out. A device's first
    /// session with session names leaves out its untagged older uploads.
    pub fn excluded_tag(&self, device_id: &str) -> String {
        match (&self.this, &self.after) {
            (Some(_), Some(a)) => format!("{device_id}/{a}"),
            _ => device_id.to_string(),
        }
    }
}

impl Hub {
    pub(super) async fn session(
        &self,
        conn_id: u64,
        device: &Device,
        outbox: &Outbox,
        (stream, kick): (&mut super::connection::Frames, &tokio::sync::Notify),
        (since, sessions): (Option<i64>, &Sessions),
    ) -> Result<(), Close> {
        let tag = sessions.upload_tag(&device.id);
        // Replaced only while waiting for the device (next_or_closed), never inside a sync.
        let timeout = std::time::Duration::from_secs(self.limits.join_timeout_secs);
        let first = match tokio::time::timeout(timeout, next_or_closed(stream, kick, outbox)).await
        {
            Ok(Ok(Some(m))) => m,
            Ok(Ok(None)) => return Ok(()),
            Ok(Err(close)) => return Err(close),
            Err(_) => return Err(Close("no join message received in time".into())),
        };
        let Message::Join {
            sender_id,
            supported_protocol_versions,
            ..
        } = first
        else {
            return Err(Close(format!(
                "expected a join message, got '{}'",
                first.message_type()
            )));
        };
        if !supported_protocol_versions
            .iter()
            .any(|v| v == PROTOCOL_VERSION)
        {
            return Err(Close(format!(
                "unsupported protocol versions {supported_protocol_versions:?}: this relay speaks version 1"
            )));
        }
        // The client's own peer id is accepted (a stock automerge-repo
        // picks a random one); who it is comes from its token alone: the
        // peer id only addresses the messages sent to this connection
        // (docs/adr/0008).
        check_peer_id(&sender_id, &device.id).map_err(Close)?;
        outbox.set_peer(&sender_id);
        outbox.offer(Message::Peer {
            sender_id: self.peer_id.clone(),
            target_id: sender_id.clone(),
            peer_metadata: PeerMetadata {
                storage_id: Some(self.storage_id.clone()),
                is_ephemeral: false,
                max_message_bytes: Some(self.limits.max_message_bytes as u64),
            },
            selected_protocol_version: PROTOCOL_VERSION.into(),
        });
        // The cursor value of each document `changed-since` named (pushes.rs).
        let mut seqs = std::collections::HashMap::new();
        let mut owed: Owed = match since {
            Some(since) => {
                let mine = sessions.excluded_tag(&device.id);
                let changed = self.changed_since(device, outbox, (since, &mine)).await?;
                let ids = changed.iter().map(|(id, _)| id.clone()).collect::<Vec<_>>();
                seqs.extend(changed);
                ids.into()
            }
            None => Owed::default(),
        };
        tracing::info!(device = %device.id, team = %device.team, "device joined");
        let _ = self
            .storage
            .audit(Some(device), AuditAction::Connected, None, Utc::now())
            .await;
        loop {
            // Pushes (and replies deferred while the send queue was over
            // half full: outbox.rs) go out between the device's messages,
            // not before them all: a fresh device answers each push, and a
            // relay that did not read meanwhile would leave it blocked on a
            // full socket.
            let next = if owed.is_empty() {
                next_or_closed(stream, kick, outbox).await?
            } else {
                tokio::select! {
                    biased;
                    m = next_or_closed(stream, kick, outbox) => m?,
                    () = outbox.drained() => {
                        if let Some(document_id) = owed.next() {
                            let seq = seqs.remove(&document_id);
                            self.push(conn_id, device, outbox, (document_id, seq)).await?;
                        }
                        continue;
                    }
                }
            };
            let Some(m) = next else {
                return Ok(());
            };
            // Checked before acting on every message: a revoked device's
            // message is not answered, stored or relayed.
            if let Some(reason) = outbox.shut_reason() {
                return Err(Close(reason));
            }
            match m {
                Message::Sync {
                    sender_id: from, ..
                }
                | Message::Request {
                    sender_id: from, ..
                } if from != sender_id => {
                    return Err(Close(
                        "a message's senderId must be the peer id this connection joined with"
                            .into(),
                    ));
                }
                Message::Sync {
                    ref document_id,
                    ref data,
                    ..
                }
                | Message::Request {
                    ref document_id,
                    ref data,
                    ..
                } => {
                    let is_request = matches!(m, Message::Request { .. });
                    self.sync(
                        conn_id,
                        (device, &tag),
                        outbox,
                        &mut owed,
                        (document_id, data),
                        is_request,
                    )
                    .await?
                }
                Message::Leave { .. } => return Ok(()),
                // Presence and heads gossip are not relayed: the relay is a store, not a room.
                Message::Ephemeral { .. }
                | Message::RemoteSubscriptionChange { .. }
                | Message::RemoteHeadsChanged { .. } => {}
                Message::DocUnavailable { .. } => {}
                Message::Error { message } => {
                    tracing::info!(device = %device.id, len = message.len(), "device reported an error");
                    return Ok(());
                }
                other => {
                    return Err(Close(format!(
                        "unexpected '{}' message",
                        other.message_type()
                    )));
                }
            }
        }
    }
}

/// Most characters in a peer id a client announces at `join`.
pub const MAX_PEER_ID_CHARS: usize = 128;

/// Refused: a peer id that names another device.
pub const PEER_ID_OF_ANOTHER_DEVICE: &str = "the peer id must be this device's id";

/// A client's own peer id (`join`'s `senderId`): 1 to
/// [`MAX_PEER_ID_CHARS`] printable characters (no control characters or
/// whitespace). It names nobody: the device is the token's (docs/adr/0008).
/// One shaped like a device id (a UUID) must be `device_id` itself, so no
/// peer id ever names another device, in logs or to another peer.
pub(crate) fn check_peer_id(peer_id: &str, device_id: &str) -> Result<(), String> {
    if uuid::Uuid::try_parse(peer_id).is_ok() && !peer_id.eq_ignore_ascii_case(device_id) {
        return Err(PEER_ID_OF_ANOTHER_DEVICE.into());
    }
    let n = peer_id.chars().count();
    if n == 0
        || n > MAX_PEER_ID_CHARS
        || peer_id.chars().any(|c| c.is_control() || c.is_whitespace())
    {
        return Err(format!(
            "the peer id must be 1 to {MAX_PEER_ID_CHARS} printable characters without spaces"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod session_tests {
    use super::{MAX_PEER_ID_CHARS, PEER_ID_OF_ANOTHER_DEVICE, Sessions};

    fn check_peer_id(peer_id: &str) -> Result<(), String> {
        super::check_peer_id(peer_id, "0f8e2d9c-6a1b-4c3d-9e8f-7a6b5c4d3e2f")
    }

    #[test]
    fn a_clients_own_peer_id_is_accepted_within_bounds() {
        for ok in [
            "peer-4fzyo82mvyr",
            "0f8e2d9c-6a1b-4c3d-9e8f-7a6b5c4d3e2f",
            "storage-server-host",
        ] {
            assert_eq!(check_peer_id(ok), Ok(()), "{ok}");
        }
        let long = "p".repeat(MAX_PEER_ID_CHARS + 1);
        for bad in ["", "a b", "a\nb", "\u{0}", long.as_str()] {
            assert!(check_peer_id(bad).is_err(), "{bad:?}");
        }
        assert_eq!(check_peer_id(&"p".repeat(MAX_PEER_ID_CHARS)), Ok(()));
        assert_eq!(
            check_peer_id("1f8e2d9c-6a1b-4c3d-9e8f-7a6b5c4d3e2f"),
            Err(PEER_ID_OF_ANOTHER_DEVICE.into())
        );
    }

    #[test]
    fn session_names_are_short_hex_and_tag_uploads_per_session() {
        let s = Sessions::from_query(Some("since=4&session=ab12&after=CD34")).expect("valid");
        assert_eq!(s.upload_tag("dev"), "dev/ab12");
        assert_eq!(s.excluded_tag("dev"), "dev/cd34");
        // A device's first named session leaves out its untagged uploads;
        // an older device is tagged by its id alone, as before.
        let first = Sessions::from_query(Some("since=4&session=ab12")).expect("valid");
        assert_eq!(first.excluded_tag("dev"), "dev");
        let old = Sessions::from_query(Some("since=4")).expect("valid");
        assert_eq!(
            (old.upload_tag("dev"), old.excluded_tag("dev")),
            ("dev".into(), "dev".into())
        );
        assert_eq!(Sessions::from_query(None), Ok(Sessions::default()));
        let long = format!("session={}", "a".repeat(Sessions::MAX_LEN + 1));
        for bad in [
            "session=",
            "session=xyz",
            "session=ab/cd",
            "session=ab%2Fcd",
            long.as_str(),
            "after=ab12",
            "session=ab&after=",
        ] {
            assert!(Sessions::from_query(Some(bad)).is_err(), "{bad}");
        }
    }
}
