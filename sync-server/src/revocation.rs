//! Revocation reaches live sessions (issue 12, finding 2). Authentication
//! refuses a revoked device's new requests (auth.rs); this module cuts the
//! WebSockets it opened before.
//!
//! One place in the relay is told "device X was revoked" and cuts it:
//! [`Hub::cut_revoked`] shuts every connection of the device (outbox.rs:
//! from that moment nothing more is queued or written to it, what is still
//! queued is dropped, and it is closed with [`REVOKED`]) and any it opens
//! later in this process. Two paths feed it:
//!
//! - [`Watcher`]: `linkbook-server device revoke` runs in another process
//!   and shares only the SQLite file. The watcher asks storage every
//!   [`POLL_EVERY`] for revocations after its cursor
//!   (`Storage::revocations_since`: on SQLite a `PRAGMA data_version` on the
//!   relay's connection and its own change count, and only if either moved, a range scan
//!   of `revocations`, schema 11, filled by a trigger), at most [`BATCH`] a
//!   time. A PostgreSQL backend with several relay nodes would implement the
//!   same call (or LISTEN/NOTIFY) and every node's watcher cut its own
//!   connections.
//! - [`revoke`]: an admin path inside the relay process (a console) stores
//!   the revocation and cuts at once, without waiting for a poll.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};

use crate::error::Result;
use crate::relay::Hub;
use crate::storage::{DeviceId, RevocationCursor, Storage};

/// What a revoked device's open connection is told before it is closed.
pub const REVOKED: &str =
    "closed: this device has been revoked; its next sync deletes its local data";

/// How often the watcher looks for revocations by other processes.
pub const POLL_EVERY: Duration = Duration::from_millis(500);

/// Revocations handled per look; more wait for the next one.
pub const BATCH: usize = 256;

/// Revokes a device from inside the relay process: stored (and audited)
/// first, then its connections are cut at once. False: no such device.
pub async fn revoke(
    storage: &dyn Storage,
    hub: &Hub,
    device_id: &str,
    by: Option<&str>,
    now: DateTime<Utc>,
) -> Result<bool> {
    if !storage
        .revoke_device(&DeviceId::from(device_id), by, now)
        .await?
    {
        return Ok(false);
    }
    hub.cut_revoked(device_id);
    Ok(true)
}

/// Watches storage for revocations made by other processes and cuts them
/// ([`Hub::cut_revoked`]). Stops when dropped (`Bound::serve` holds it for
/// the relay's life).
#[derive(Debug)]
pub struct Watcher {
    task: tokio::task::JoinHandle<()>,
}

impl Watcher {
    /// Places the cursor at the latest revocation (earlier ones are refused
    /// at authentication), then watches. Call it before serving, so no
    /// connection can predate the cursor.
    pub async fn start(storage: Arc<dyn Storage>, hub: Arc<Hub>) -> Result<Watcher> {
        let mut cursor = RevocationCursor::default();
        storage.revocations_since(&mut cursor, BATCH).await?;
        Ok(Watcher {
            task: tokio::spawn(watch(storage, hub, cursor)),
        })
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn watch(storage: Arc<dyn Storage>, hub: Arc<Hub>, mut cursor: RevocationCursor) {
    let mut every = tokio::time::interval(POLL_EVERY);
    // A slow look (a busy disk) delays the next one; no burst to catch up.
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut failing = false;
    loop {
        every.tick().await;
        let (polled, result) = look(&storage, cursor.clone()).await;
        match result {
            Ok(devices) => {
                cursor = polled;
                if failing {
                    tracing::info!("the revocation watcher reads storage again");
                    failing = false;
                }
                for device in devices {
                    hub.cut_revoked(&device);
                }
            }
            // Logged once per failing stretch, not twice a second.
            Err(e) if !failing => {
                tracing::error!(error = %e, "the revocation watcher cannot read storage: revoked devices' open connections are not cut until it can");
                failing = true;
            }
            Err(_) => {}
        }
    }
}

/// One look; the cursor as it was if it failed.
async fn look(
    storage: &Arc<dyn Storage>,
    mut cursor: RevocationCursor,
) -> (RevocationCursor, Result<Vec<crate::storage::DeviceId>>) {
    let before = cursor.clone();
    match storage.revocations_since(&mut cursor, BATCH).await {
        Ok(found) => (cursor, Ok(found)),
        Err(e) => (before, Err(e.into())),
    }
}

#[cfg(test)]
#[allow(clippy::expect_used)]
mod tests {
    use super::*;
    use crate::storage::SqliteStorage;
    use crate::storage::prelude::*;

    async fn enrolled(storage: &dyn Storage, worker: &str) -> String {
        let now = Utc::now();
        let code = crate::auth::new_enrolment_code(
            storage,
            "north",
            worker,
            chrono::Duration::hours(1),
            now,
        )
        .await
        .expect("code");
        crate::auth::enrol(storage, &code, "tablet", now)
            .await
            .expect("enrol")
            .device_id
    }

    /// The relay's connection sees revocations another connection (the
    /// admin command's process) committed, each once, and none from before
    /// its cursor was placed.
    #[tokio::test]
    async fn revocations_by_another_connection_are_seen_once_in_order() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("relay.db");
        let relay = SqliteStorage::open(&path).expect("relay's storage");
        let admin = SqliteStorage::open(&path).expect("admin's storage");
        let mut ids = Vec::new();
        for w in ["Old", "Asha", "Ben", "Cara"] {
            ids.push(enrolled(&admin, w).await);
        }
        let [old, a, b, c] = <[String; 4]>::try_from(ids).expect("four");
        assert!(
            admin
                .revoke_device(&DeviceId::from(&old), None, Utc::now())
                .await
                .expect("revoke")
        );

        let mut cursor = RevocationCursor::default();
        let placed = relay
            .revocations_since(&mut cursor, 2)
            .await
            .expect("place");
        assert!(placed.is_empty(), "earlier revocations are not news");
        assert!(
            relay
                .revocations_since(&mut cursor, 2)
                .await
                .expect("look")
                .is_empty()
        );

        for id in [&a, &b, &c] {
            assert!(
                admin
                    .revoke_device(&DeviceId::from(id), None, Utc::now())
                    .await
                    .expect("revoke")
            );
        }
        // Revoking again changes nothing and is not news.
        assert!(
            admin
                .revoke_device(&DeviceId::from(&a), None, Utc::now())
                .await
                .expect("again")
        );
        // Two per look: the third waits, and is seen even with nothing new written.
        assert_eq!(
            relay.revocations_since(&mut cursor, 2).await.expect("look"),
            [a.as_str(), b.as_str()]
        );
        assert_eq!(
            relay.revocations_since(&mut cursor, 2).await.expect("look"),
            [c.as_str()]
        );
        assert!(
            relay
                .revocations_since(&mut cursor, 2)
                .await
                .expect("look")
                .is_empty()
        );
        // The relay's own writes are no revocations either.
        relay
            .touch_device(&DeviceId::from(&a), Utc::now(), "loopback")
            .await
            .expect("touch");
        assert!(
            relay
                .revocations_since(&mut cursor, 2)
                .await
                .expect("look")
                .is_empty()
        );
    }

    /// The in-process path and the watcher both end in `Hub::cut_revoked`:
    /// a connection of the device registered before or after is shut.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_watcher_cuts_a_device_revoked_by_another_process() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("relay.db");
        let storage: Arc<dyn Storage> = Arc::new(SqliteStorage::open(&path).expect("storage"));
        let hub = Arc::new(Hub::new(storage.clone(), "test".into(), Default::default()));
        let a = enrolled(&*storage, "Asha").await;
        let b = enrolled(&*storage, "Ben").await;
        let outbox_a = hub.register_for_test(&a);
        let outbox_b = hub.register_for_test(&b);
        let _watcher = Watcher::start(storage.clone(), hub.clone())
            .await
            .expect("watcher");

        let admin = SqliteStorage::open(&path).expect("admin's storage");
        assert!(
            admin
                .revoke_device(&DeviceId::from(&a), None, Utc::now())
                .await
                .expect("revoke")
        );
        let reason = tokio::time::timeout(Duration::from_secs(5), outbox_a.shut_down())
            .await
            .expect("cut within a few looks");
        assert_eq!(reason, REVOKED);
        assert!(!outbox_b.is_shut(), "another device is not touched");
        // A connection that authenticated just before is cut when admitted.
        assert!(hub.register_for_test(&a).is_shut());

        assert!(
            revoke(
                &*storage,
                &hub,
                &b,
                Some("office administrator"),
                Utc::now()
            )
            .await
            .expect("in-process revoke")
        );
        assert!(outbox_b.is_shut(), "cut at once, before any look");
        assert!(
            !revoke(&*storage, &hub, "no-such-device", None, Utc::now())
                .await
                .expect("revoke")
        );
    }
}
