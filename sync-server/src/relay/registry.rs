//! The live connections: each one registered under its device, the
//! per-device cap (the oldest gives way), and the cut of a revoked device's
//! connections (revocation.rs).

use std::sync::Arc;
#[cfg(test)]
use std::sync::atomic::Ordering;

use super::{Hub, lock};
use crate::outbox::Outbox;

pub(super) struct Connection {
    pub(super) device_id: String,
    pub(super) outbox: Outbox,
    /// Ends the session when a newer connection of the device takes its place.
    pub(super) kick: Arc<tokio::sync::Notify>,
}

/// Sent to the connections still open when the relay shuts down
/// ([`Hub::drain`]): the device syncs again (through another node, or this
/// one once it is back) and loses nothing, since every change it was
/// answered for is stored.
pub const RESTARTING: &str = "closed: the relay is restarting; sync again in a moment";

/// Sent to a connection closed because a newer one of the device took its slot.
pub const REPLACED: &str =
    "closed: a newer connection of this device took its place (too many connections)";

impl Hub {
    /// Admits a new connection of `device_id`: at the cap, its oldest
    /// connection is closed with [`REPLACED`] (a phone that lost signal, or
    /// a stale copy). The count and the insert are one critical section, so
    /// two connections of one device arriving at once cannot both pass the
    /// check. A thief holding a copied token can kick the real device this
    /// way too, and vice versa: revoking the device ends that (its token
    /// stops authenticating and its open connections are cut:
    /// [`Hub::cut_revoked`]).
    pub(super) fn admit(&self, conn_id: u64, connection: Connection) {
        let cap = self.limits.max_connections_per_device.max(1);
        let mut conns = lock(&self.connections);
        let mut mine: Vec<u64> = conns
            .iter()
            .filter(|(_, c)| c.device_id == connection.device_id)
            .map(|(id, _)| *id)
            .collect();
        if mine.len() >= cap {
            mine.sort_unstable();
            let excess = mine.len() + 1 - cap;
            for id in mine.into_iter().take(excess) {
                if let Some(old) = conns.remove(&id) {
                    tracing::warn!(device = %connection.device_id, "connection cap reached: closing the device's oldest connection");
                    old.kick.notify_one();
                }
            }
        }
        if lock(&self.revoked).contains(&connection.device_id) {
            connection.outbox.shut(crate::revocation::REVOKED);
        }
        conns.insert(conn_id, connection);
    }

    /// The one place the relay is told a device was revoked (by the
    /// watcher on storage, or an in-process admin path: revocation.rs).
    /// Every connection of the device is shut at once (outbox.rs: nothing
    /// more is sent to it, and it is closed with [`crate::revocation::REVOKED`]),
    /// and so is any it opens later in this process. Returns how many were
    /// open.
    pub fn cut_revoked(&self, device_id: &str) -> usize {
        let conns = lock(&self.connections);
        lock(&self.revoked).insert(device_id.to_string());
        let mut cut = 0;
        for c in conns.values().filter(|c| c.device_id == device_id) {
            c.outbox.shut(crate::revocation::REVOKED);
            cut += 1;
        }
        drop(conns);
        tracing::warn!(device = %device_id, connections = cut, "device revoked: its connections are closed");
        cut
    }

    /// Registers a connection of `device_id` without a socket: its send
    /// queue, for tests of the registry (revocation.rs).
    #[cfg(test)]
    pub(crate) fn register_for_test(&self, device_id: &str) -> Outbox {
        let conn_id = self.next_conn.fetch_add(1, Ordering::Relaxed);
        let (outbox, _writer) = Outbox::new(self.limits.max_queued_bytes, device_id);
        let connection = Connection {
            device_id: device_id.to_string(),
            outbox: outbox.clone(),
            kick: Default::default(),
        };
        self.admit(conn_id, connection);
        outbox
    }

    /// At shutdown: waits up to `wait` for the open connections to end by
    /// themselves (a sync under way finishes), then closes the rest with
    /// [`RESTARTING`] (idle live connections would otherwise hold the
    /// process until the server's drain deadline) and waits up to as long
    /// again for them to go (each saves its sync states as it does).
    /// Returns how many were closed so.
    pub async fn drain(&self, wait: std::time::Duration) -> usize {
        let until_empty = |deadline: tokio::time::Instant| async move {
            while !lock(&self.connections).is_empty() && tokio::time::Instant::now() < deadline {
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
        };
        until_empty(tokio::time::Instant::now() + wait).await;
        let cut = {
            let conns = lock(&self.connections);
            for c in conns.values() {
                c.outbox.shut(RESTARTING);
            }
            conns.len()
        };
        until_empty(tokio::time::Instant::now() + wait).await;
        cut
    }

    /// Live connections of a device.
    pub fn connections_of(&self, device_id: &str) -> usize {
        lock(&self.connections)
            .values()
            .filter(|c| c.device_id == device_id)
            .count()
    }
}
