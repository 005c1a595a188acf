//! One device's WebSocket: the writer task that drains its send queue
//! (pings, the shut reason, the last close), reading its messages, and what
//! happens when it ends (sync states saved, the writer given a moment).

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::extract::ws::{Message as WsMessage, WebSocket};
use chrono::Utc;
use futures_util::{Sink, SinkExt, Stream, StreamExt};
use linkbook_core::protocol::Message;

use super::registry::Connection;
use super::registry::RESTARTING;
use super::{Close, Hub, REPLACED, Sessions};
use crate::outbox::Outbox;
use crate::storage::Device;

/// Seconds a closing connection's writer has to deliver its last messages.
const WRITER_LINGER_SECS: u64 = 10;

/// Seconds a shut (revoked) connection's writer has to deliver its reason
/// before the socket is dropped: "closed within a few seconds" even for a
/// peer that does not read.
const SHUT_LINGER_SECS: u64 = 2;

/// What a device's connection delivers: WebSocket frames (axum's), as read
/// from its socket or, in-process, from a caller's channel.
pub type Frames = Pin<Box<dyn Stream<Item = Result<WsMessage, axum::Error>> + Send>>;

/// Where the frames to a device go.
pub type FrameSink = Pin<Box<dyn Sink<WsMessage, Error = axum::Error> + Send>>;

impl Hub {
    /// Serves one authenticated device's WebSocket until it closes. With
    /// `since` (the device's change cursor, `/v1/sync?since=N`), the relay
    /// tells the device what changed since then and sends those documents
    /// without being asked (see [`Hub::push`]).
    pub async fn serve(
        self: Arc<Self>,
        device: Device,
        socket: WebSocket,
        opening: (Option<i64>, Sessions, &'static str),
    ) {
        let (sink, stream) = socket.split();
        self.serve_frames(device, Box::pin(sink), Box::pin(stream), opening)
            .await;
    }

    /// Serves one authenticated device's connection over any frame stream
    /// and sink, exactly as [`Hub::serve`] serves a WebSocket: the
    /// in-process simulation (test support crate) connects devices this
    /// way, with no socket.
    pub async fn serve_frames(
        self: Arc<Self>,
        device: Device,
        mut sink: FrameSink,
        mut stream: Frames,
        (since, sessions, address_kind): (Option<i64>, Sessions, &'static str),
    ) {
        let conn_id = self.next_conn.fetch_add(1, Ordering::Relaxed);
        let queue_limit = self
            .limits
            .max_queued_bytes
            .max(2 * self.limits.max_message_bytes);
        let (outbox, mut outgoing) = Outbox::new(queue_limit, &device.id);
        let kick = Arc::new(tokio::sync::Notify::new());
        self.admit(
            conn_id,
            Connection {
                device_id: device.id.to_string(),
                outbox: outbox.clone(),
                kick: kick.clone(),
            },
        );
        crate::metrics::metrics().connected();
        let ping_every = std::time::Duration::from_secs(self.limits.ping_interval_secs);
        let mut writer = tokio::spawn(async move {
            let mut ping = crate::conn_limits::ping_timer(ping_every);
            loop {
                let frame = tokio::select! {
                    biased;
                    reason = outgoing.shut_down() => {
                        say_shut(&mut sink, reason).await;
                        break;
                    }
                    f = outgoing.recv() => match f { Some(f) => f, None => break },
                    () = crate::conn_limits::tick(&mut ping) => {
                        if sink.send(WsMessage::Ping(Default::default())).await.is_err() {
                            break;
                        }
                        continue;
                    }
                };
                if outgoing.is_full() {
                    break;
                }
                // Checked before every send: once shut (revoked), what is
                // still queued is dropped.
                if let Some(reason) = outgoing.shut_reason() {
                    outgoing.sent(frame.bytes.len());
                    say_shut(&mut sink, reason.to_string()).await;
                    break;
                }
                let last = frame.last;
                let len = frame.bytes.len();
                let sent = sink.send(WsMessage::Binary(frame.bytes.into())).await;
                outgoing.sent(len);
                if sent.is_err() {
                    break;
                }
                crate::metrics::metrics().message(crate::metrics::Direction::Sent, len);
                if last {
                    let _ = sink.send(WsMessage::Close(None)).await;
                    break;
                }
            }
        });
        let outcome = self
            .session(
                conn_id,
                &device,
                &outbox,
                (&mut stream, &kick),
                (since, &sessions),
            )
            .await;
        if let Err(Close(why)) = &outcome {
            tracing::warn!(device = %device.id, reason = %why, "closing sync connection");
            outbox.last(Message::Error {
                message: why.clone(),
            });
        }
        let overflowed = outbox.is_full();
        let shut = outbox.shut_reason();
        drop(outbox);
        self.disconnect(conn_id).await;
        use crate::metrics::SyncOutcome;
        let ended = match &outcome {
            _ if shut.as_deref() == Some(RESTARTING) => SyncOutcome::Restarting,
            _ if shut.is_some() => SyncOutcome::Revoked,
            _ if overflowed => SyncOutcome::Overflowed,
            Err(Close(why)) if why == REPLACED => SyncOutcome::Replaced,
            Err(_) => SyncOutcome::Closed,
            Ok(_) => SyncOutcome::Completed,
        };
        crate::metrics::metrics().disconnected(ended, &device.id, &device.team);
        // A peer that does not read would keep the writer waiting on its
        // socket for ever: an overflowed queue is dropped at once, a shut
        // one (revoked) gets a moment for its reason, anything else a few
        // seconds to deliver its last messages.
        let linger = if overflowed {
            std::time::Duration::ZERO
        } else if shut.is_some() {
            std::time::Duration::from_secs(SHUT_LINGER_SECS)
        } else {
            std::time::Duration::from_secs(WRITER_LINGER_SECS)
        };
        if tokio::time::timeout(linger, &mut writer).await.is_err() {
            writer.abort();
        }
        let _ = self
            .storage
            .touch_device(&device.id, Utc::now(), address_kind)
            .await;
        tracing::info!(device = %device.id, "sync connection ended");
    }
}

/// The next message, or the reason the connection is closed: shut (its
/// device revoked: revocation.rs), [`REPLACED`] when a newer connection took
/// the slot, or the overflow reason when its send queue overflowed. Those
/// come first when several are ready (each ends the session).
pub(super) async fn next_or_closed(
    stream: &mut Frames,
    kick: &tokio::sync::Notify,
    outbox: &Outbox,
) -> Result<Option<Message>, Close> {
    tokio::select! {
        biased;
        reason = outbox.shut_down() => Err(Close(reason)),
        () = kick.notified() => Err(Close(REPLACED.into())),
        () = outbox.overflowed() => Err(Close(crate::outbox::overflow_reason(outbox.limit()))),
        m = next_message(stream) => m,
    }
}

/// Tells a shut connection why (an `error` message, then a close frame
/// with code 1008, policy), best effort: the socket is dropped after.
async fn say_shut(sink: &mut FrameSink, reason: String) {
    let error = Message::Error {
        message: reason.clone(),
    };
    if sink
        .send(WsMessage::Binary(error.encode().into()))
        .await
        .is_ok()
    {
        // A close frame's reason has at most 123 bytes.
        let mut short = reason;
        while short.len() > 123 {
            short.pop();
        }
        let frame = axum::extract::ws::CloseFrame {
            code: axum::extract::ws::close_code::POLICY,
            reason: short.into(),
        };
        let _ = sink.send(WsMessage::Close(Some(frame))).await;
    }
}

/// The next protocol message, `None` at a clean close.
async fn next_message(stream: &mut Frames) -> Result<Option<Message>, Close> {
    loop {
        match stream.next().await {
            None => return Ok(None),
            Some(Err(e)) => return Err(Close(format!("bad WebSocket frame: {e}"))),
            Some(Ok(WsMessage::Binary(bytes))) => {
                crate::metrics::metrics().message(crate::metrics::Direction::Received, bytes.len());
                return Message::decode(&bytes)
                    .map(Some)
                    .map_err(|e| Close(format!("malformed message: {e}")));
            }
            Some(Ok(WsMessage::Text(_))) => {
                return Err(Close(
                    "text frames are not part of the protocol: send CBOR in binary frames".into(),
                ));
            }
            Some(Ok(WsMessage::Close(_))) => return Ok(None),
            Some(Ok(_)) => continue, // ping/pong
        }
    }
}
