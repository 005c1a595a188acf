//! A relay stopped with SIGTERM (systemd's stop, an upgrade, a node taken
//! out of a pool) on either backend: it stops taking connections, lets a
//! sync under way finish, tells the live connections still open that it
//! restarts, exits 0 within seconds, and a restart has every change a
//! device was answered for.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use linkbook_core::*;
use linkbook_test_support::postgres::Cluster;
use linkbook_tests::{Device, LivePeer, Relay, note_texts};

/// What the relay tells connections still open when it stops (registry.rs).
const RESTARTING: &str = "the relay is restarting";

/// SIGTERM while a worker syncs in a loop and a colleague's tablet is
/// connected live; then a restart (`restart` starts the relay again on what
/// the stopped one leaves).
async fn sigterm_loses_nothing_and_closes_live_connections(
    relay: Relay,
    restart: impl FnOnce(tempfile::TempDir) -> Relay,
) -> Result<()> {
    let asha = Device::enrolled(&relay, "north", "Asha");
    let family = asha.add_family(&NewFamily {
        name: "Okafor".into(),
        ..Default::default()
    })?;
    asha.add_note(family, "note 0", NoteCategory::Visit)?;
    asha.sync(None)?;
    let ben = relay.enrol_credentials("north", "Ben", "Ben's tablet");
    let mut live = LivePeer::subscribed(&relay, &ben, &family.to_string()).await;

    // Asha writes and syncs until the relay has gone.
    let stop = Arc::new(AtomicBool::new(false));
    let synced = Arc::new(AtomicUsize::new(0));
    let writer = {
        let (stop, synced) = (stop.clone(), synced.clone());
        std::thread::spawn(move || {
            let mut acknowledged = Vec::new();
            for n in 1..400 {
                if stop.load(Ordering::SeqCst) {
                    break;
                }
                let text = format!("note {n}");
                asha.add_note(family, &text, NoteCategory::Visit)
                    .expect("note");
                if asha.sync(None).is_ok() {
                    acknowledged.push(text);
                    synced.fetch_add(1, Ordering::SeqCst);
                }
            }
            (asha, acknowledged)
        })
    };
    while synced.load(Ordering::SeqCst) < 3 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let (status, took, data) =
        tokio::task::block_in_place(|| relay.terminate(Duration::from_secs(30)));
    stop.store(true, Ordering::SeqCst);
    let status = status.expect("the relay exited on SIGTERM");
    assert!(status.success(), "{status:?}");
    assert!(took < Duration::from_secs(12), "it took {took:?}");
    let errors = tokio::time::timeout(Duration::from_secs(5), live.closed())
        .await
        .expect("the live connection was closed");
    assert!(
        errors.iter().any(|e| e.contains(RESTARTING)),
        "the live tablet was told why: {errors:?}"
    );
    let (asha, acknowledged) = writer.join().expect("writer");
    assert!(acknowledged.len() >= 3);

    let relay = restart(data);
    let reader = Device::enrolled(&relay, "north", "Reader");
    reader.sync(None)?;
    let held = note_texts(&reader, family);
    for text in &acknowledged {
        assert!(held.contains(text), "{text}, acknowledged, was lost");
    }
    // And what Asha wrote after the last acknowledged sync comes now (the
    // restarted relay listens on another port).
    asha.sync_through(&relay.url, None)?;
    reader.sync(None)?;
    assert_eq!(note_texts(&reader, family), note_texts(&asha, family));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_on_sqlite() -> Result<()> {
    let relay = Relay::start();
    sigterm_loses_nothing_and_closes_live_connections(relay, |data| {
        let relay = Relay::start_in(data);
        assert_eq!(relay.integrity_check(), "ok");
        relay
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_on_postgresql() -> Result<()> {
    let pg = Cluster::start();
    let url = pg.fresh_database();
    let relay = Relay::start_on_postgres(tempfile::tempdir().expect("dir"), &url, &[]);
    sigterm_loses_nothing_and_closes_live_connections(relay, |data| {
        Relay::start_on_postgres(data, &url, &[])
    })
    .await
}
