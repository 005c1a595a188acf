//! The connection a sync session runs over, as the session sees it: whole
//! protocol messages each way and reads that wait as the session says
//! ([`Wait`]). `WsLink` is the relay's WebSocket (TLS, tungstenite);
//! anything else implementing [`Link`] (the in-process simulation of the
//! test support crate, later a tablet-to-tablet connection) is driven by
//! the same session, plan and engine through [`Repo::sync_over`].
//!
//! [`Repo::sync_over`]: crate::Repo::sync_over

use std::time::{Duration, Instant};

use tungstenite::{Message as WsMessage, WebSocket};

use super::net::{self, network};
use crate::error::{Error, Result};

/// A relay silent for this long while an answer is awaited is taken as gone.
pub use super::net::IO_TIMEOUT;

/// How long a peer may be silent before heads-only announcements count as
/// answered.
pub const QUIET: Duration = Duration::from_millis(500);

/// While writing a long opening (a first sync of thousands of documents), the
/// socket is read at least this often (the session's keep-alive).
pub const KEEP_ALIVE: Duration = Duration::from_secs(1);

/// How a read waits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wait {
    /// For an answer: nothing (or nothing but pings) for [`IO_TIMEOUT`] is
    /// the relay's failure, an `Err(Error::Network)`.
    Answer,
    /// In the exchange: like `Answer`, but a silence of [`QUIET`] returns
    /// `None` when `quiet_ends` (nothing awaits an answer).
    Exchange { quiet_ends: bool },
    /// Only what already arrived: `None` when nothing is there (or after
    /// [`KEEP_ALIVE`] of pings).
    Poll,
}

/// One sync connection: the session writes what its plan gives and reads
/// what the peer sends. Pings, pongs and other frames are the link's
/// business; only protocol messages (the bytes of one CBOR message) pass.
pub trait Link {
    /// Sends one message.
    fn send(&mut self, bytes: Vec<u8>) -> Result<()>;
    /// The next message, waiting as `wait` says: `None` for a silence the
    /// wait allows; a silence it does not allow, a close or a broken
    /// connection is an `Err` (`Error::Network`).
    fn recv(&mut self, wait: Wait) -> Result<Option<Vec<u8>>>;
    /// Delivers what the link holds back (queued pongs).
    fn flush(&mut self) -> Result<()> {
        Ok(())
    }
    /// The peer's answer to a pipelined opening (written before it was
    /// admitted): `Ok(Err((status, body)))` is a refusal, said the way the
    /// relay's HTTP answer says it. A link admitted before its first
    /// message answers `Ok(Ok(()))`.
    fn opened(&mut self) -> Result<std::result::Result<(), (u16, Vec<u8>)>> {
        Ok(Ok(()))
    }
    /// Closes the connection, best effort.
    fn close(&mut self);
}

/// Opens the connection of a session over the caller's links
/// ([`Repo::sync_over`](crate::Repo::sync_over)).
pub trait Connector {
    /// Opens a pipelined connection to the relay asking `path` (`/v1/sync`
    /// with the device's cursor and session names) with the device's
    /// bearer `token`. A refused connection is the error the relay's
    /// answer means: [`refusal`] turns the answer into it. `token` is the
    /// device's credential with the relay: a connector that does not reach
    /// the relay (another tablet) must not pass it on.
    fn connect(&mut self, path: &str, token: &str) -> Result<Box<dyn Link + '_>>;
}

/// The error a relay's refusal of a sync connection (HTTP status and JSON
/// body) means for the device: `Error::Revoked` for a revoked device, which
/// [`Repo::sync`](crate::Repo::sync) answers by wiping the store.
pub fn refusal(status: u16, body: Option<&[u8]>) -> Error {
    super::enrolment::refused(status, body)
}

/// The relay's WebSocket.
pub(super) struct WsLink {
    ws: WebSocket<net::Prefixed>,
    /// The socket's read timeout now (set only when it changes).
    timeout: Duration,
    /// The opening's answer still to read (a pipelined session).
    pipelined: Option<net::Pipelined>,
}

impl WsLink {
    pub(super) fn new(ws: WebSocket<net::Prefixed>, pipelined: Option<net::Pipelined>) -> Self {
        WsLink {
            ws,
            timeout: net::IO_TIMEOUT,
            pipelined,
        }
    }

    fn set_timeout(&mut self, timeout: Duration) -> Result<()> {
        if self.timeout != timeout {
            self.ws
                .get_ref()
                .set_read_timeout(timeout)
                .map_err(|e| network("socket", e))?;
            self.timeout = timeout;
        }
        Ok(())
    }
}

impl Link for WsLink {
    fn send(&mut self, bytes: Vec<u8>) -> Result<()> {
        self.ws
            .send(WsMessage::Binary(bytes.into()))
            .map_err(|e| network("sending to the relay", e))
    }

    /// The one read loop. Pings and pongs are no answer: a peer that sends
    /// only those is as silent as one that sends nothing.
    fn recv(&mut self, wait: Wait) -> Result<Option<Vec<u8>>> {
        let (timeout, patience) = match wait {
            Wait::Answer => (net::IO_TIMEOUT, net::IO_TIMEOUT),
            // From here on, short reads: a peer that has nothing to add to
            // a document may stay silent (automerge-repo's JavaScript
            // server does).
            Wait::Exchange { .. } => (QUIET, net::IO_TIMEOUT),
            Wait::Poll => (Duration::from_millis(1), KEEP_ALIVE),
        };
        self.set_timeout(timeout)?;
        let stopped = || Error::Network("the relay stopped answering".into());
        let waiting = Instant::now();
        loop {
            match self.ws.read() {
                Ok(WsMessage::Binary(bytes)) => return Ok(Some(bytes.into())),
                Ok(WsMessage::Close(_)) => {
                    return Err(Error::Network("the relay closed the connection".into()));
                }
                // A peer that never pauses must not keep us from writing.
                Ok(_) if wait == Wait::Poll && waiting.elapsed() >= patience => return Ok(None),
                Ok(_) if waiting.elapsed() >= patience => return Err(stopped()),
                Ok(_) => continue,
                Err(tungstenite::Error::Io(e))
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    match wait {
                        Wait::Poll | Wait::Exchange { quiet_ends: true } => return Ok(None),
                        _ if waiting.elapsed() >= patience => return Err(stopped()),
                        _ => {}
                    }
                }
                Err(e) => return Err(net::read_failed(e)),
            }
        }
    }

    fn flush(&mut self) -> Result<()> {
        self.ws
            .flush()
            .map_err(|e| network("sending to the relay", e))
    }

    fn opened(&mut self) -> Result<std::result::Result<(), (u16, Vec<u8>)>> {
        match self.pipelined.take() {
            Some(opening) => opening.finish(&mut self.ws),
            None => Ok(Ok(())),
        }
    }

    fn close(&mut self) {
        let _ = self.ws.close(None);
        let _ = self.ws.flush();
    }
}
