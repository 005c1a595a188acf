//! Several relay nodes on one PostgreSQL database (issue 14): real relay
//! processes sharing a throwaway cluster (test-support/src/postgres.rs) and
//! one certificate, real devices syncing through either. A node holds no
//! state a device depends on beyond its connection; another node's changes
//! reach its loaded copies and live devices (sync-server/src/relay/nodes.rs).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use linkbook_core::*;
use linkbook_test_support::postgres::Cluster;
use linkbook_tests::{Device, LivePeer, Relay, note_texts};

/// A device enrolled through `relay` that syncs through `node` from now on.
fn enrolled_on(relay: &Relay, node: &Relay, team: &str, worker: &str) -> Device {
    let device = Device::enrolled(relay, team, worker);
    device
        .sync_through(&node.url, None)
        .expect("sync through the node");
    device
}

/// Two nodes, three devices: devices on different nodes converge on one
/// family both sides edit; a device connected live to node 2 gets a note
/// uploaded through node 1 without reconnecting; node 2 never answers from
/// a copy staler than what a device was told changed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn devices_on_two_nodes_converge_and_a_live_push_crosses_nodes() -> Result<()> {
    let pg = Cluster::start();
    let url = pg.fresh_database();
    let node1 = Relay::start_on_postgres(tempfile::tempdir().expect("dir"), &url, &[]);
    let node2 = node1.another_node(&[]);
    let asha = Device::enrolled(&node1, "north", "Asha");
    let ben = enrolled_on(&node1, &node2, "north", "Ben");
    let cara = Device::enrolled(&node2, "north", "Cara");

    let family = asha.add_family(&NewFamily {
        name: "Okafor".into(),
        ..Default::default()
    })?;
    asha.add_note(
        family,
        "Asha: met at the visitor centre",
        NoteCategory::Visit,
    )?;
    asha.sync(None)?;
    // Node 2 loads the family now, for Ben and Cara.
    ben.sync(None)?;
    cara.sync(None)?;
    assert_eq!(
        note_texts(&cara, family),
        ["Asha: met at the visitor centre"]
    );

    // Both sides edit offline, then sync through their own node, twice
    // over: node 2's loaded copy must take node 1's change, and the other
    // way round, without a restart.
    ben.add_note(family, "Ben: phoned the school", NoteCategory::PhoneCall)?;
    asha.add_note(family, "Asha: court date set", NoteCategory::Court)?;
    cara.add_note(family, "Cara: helpline call", NoteCategory::Helpline)?;
    for _ in 0..2 {
        for d in [&ben, &asha, &cara] {
            d.sync(None)?;
        }
    }
    let all = note_texts(&asha, family);
    assert_eq!(all.len(), 4, "{all:?}");
    assert_eq!(note_texts(&ben, family), all);
    assert_eq!(note_texts(&cara, family), all);

    // A worker's tablet connected live to node 2, holding the family.
    let dee = node2.enrol_credentials("north", "Dee", "Dee's tablet");
    let mut live = LivePeer::subscribed(&node2, &dee, &family.to_string()).await;
    assert!(live.holds("Cara: helpline call"));
    asha.add_note(family, "Asha: visit booked", NoteCategory::Visit)?;
    asha.sync(None)?;
    let pushed = live.until_quiet().await;
    assert!(pushed >= 1, "node 2 pushed node 1's change live");
    assert!(live.holds("Asha: visit booked"));

    // Another team on node 2 gets nothing of it.
    let sam = Device::enrolled(&node2, "south", "Sam");
    sam.sync(None)?;
    assert!(matches!(sam.notes(family), Err(Error::NotFound { .. })));
    Ok(())
}

/// The office purges through node 2's admin command and revokes a tablet:
/// node 1's devices delete the family at their next sync and cannot bring
/// it back, and the revoked tablet's live connections on both nodes are cut.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_purge_and_a_revocation_through_node_2_reach_node_1() -> Result<()> {
    let pg = Cluster::start();
    let url = pg.fresh_database();
    let node1 = Relay::start_on_postgres(tempfile::tempdir().expect("dir"), &url, &[]);
    let node2 = node1.another_node(&[]);
    let asha = Device::enrolled(&node1, "north", "Asha");
    let ben = Device::enrolled(&node1, "north", "Ben");
    let family = asha.add_family(&NewFamily {
        name: "Nowak".into(),
        ..Default::default()
    })?;
    asha.add_note(family, "First visit", NoteCategory::Visit)?;
    asha.sync(None)?;
    ben.sync(None)?;
    // Ben writes offline meanwhile: his next sync would upload it again.
    ben.add_note(family, "Written offline", NoteCategory::Visit)?;

    // A tablet live on each node, with one token.
    let lost = node1.enrol_credentials("north", "Cara", "Cara's tablet");
    let mut on1 = LivePeer::subscribed(&node1, &lost, &family.to_string()).await;
    let mut on2 = LivePeer::subscribed(&node2, &lost, &family.to_string()).await;

    // A restore's clean-up cannot run under serving nodes (it renews the
    // store id they announce).
    let refused = node2.admin(&["after-restore"]);
    assert_ne!(refused.code, 0);
    assert!(
        refused.stderr.contains("relay nodes are serving"),
        "{}",
        refused.stderr
    );

    let purged = node2.admin(&["family", "purge", &family.to_string(), "--reason", "asked"]);
    assert_eq!(purged.code, 0, "{purged:?}");
    let revoked = node2.admin(&["device", "revoke", &lost.device_id]);
    assert_eq!(revoked.code, 0, "{revoked:?}");

    ben.sync(None)?;
    asha.sync(None)?;
    for d in [&ben, &asha] {
        assert!(matches!(d.notes(family), Err(Error::NotFound { .. })));
    }
    let db = url.rsplit('/').next().expect("database");
    assert_eq!(
        pg.sql(
            db,
            &format!("SELECT count(*) FROM changes WHERE doc_id = '{family}'")
        ),
        "0",
        "node 1 stored nothing of the purged family again"
    );
    for (node, peer) in [("node 1", &mut on1), ("node 2", &mut on2)] {
        let cut = tokio::time::timeout(Duration::from_secs(10), peer.closed()).await;
        assert!(
            cut.is_ok(),
            "{node} cut the revoked tablet's live connection"
        );
    }
    Ok(())
}

/// Fifty devices sync concurrently through node 1, which is killed
/// (SIGKILL) midway; each device whose sync failed retries through node 2.
/// Every note any device wrote is on the relay afterwards: none that a
/// sync acknowledged was lost, and the rest came with the retry.
#[test]
fn a_node_killed_during_fifty_concurrent_syncs_loses_nothing() -> Result<()> {
    const DEVICES: usize = 50;
    let pg = Cluster::start();
    let url = pg.fresh_database();
    let node1 = Relay::start_on_postgres(tempfile::tempdir().expect("dir"), &url, &[]);
    let node2 = node1.another_node(&[]);
    let office = Device::enrolled(&node2, "north", "Office");
    let shared = office.add_family(&NewFamily {
        name: "Shared".into(),
        ..Default::default()
    })?;
    office.sync(None)?;
    let mut devices = Vec::new();
    for i in 0..DEVICES {
        let d = Device::enrolled(&node1, "north", &format!("Worker {i}"));
        d.sync(None)?;
        devices.push(d);
    }

    let acknowledged = Arc::new(AtomicUsize::new(0));
    let deadline = Instant::now() + Duration::from_secs(240);
    let node2_url = node2.url.clone();
    let workers: Vec<_> = devices
        .into_iter()
        .enumerate()
        .map(|(i, d)| {
            let (acknowledged, node2_url) = (acknowledged.clone(), node2_url.clone());
            std::thread::spawn(move || {
                let own = d
                    .add_family(&NewFamily {
                        name: format!("Family {i}"),
                        ..Default::default()
                    })
                    .expect("family");
                let mut through_node2 = false;
                for round in 0..3 {
                    d.add_note(
                        own,
                        &format!("device {i} note {round}"),
                        NoteCategory::Visit,
                    )
                    .expect("note");
                    d.add_note(
                        shared,
                        &format!("device {i} shared {round}"),
                        NoteCategory::Other,
                    )
                    .expect("note");
                    loop {
                        let synced = match through_node2 {
                            false => d.sync(None),
                            true => d.sync_through(&node2_url, None),
                        };
                        match synced {
                            Ok(_) => {
                                acknowledged.fetch_add(1, Ordering::SeqCst);
                                break;
                            }
                            Err(_) if !through_node2 => through_node2 = true,
                            Err(e) if Instant::now() > deadline => {
                                panic!("device {i} could not sync through node 2: {e}")
                            }
                            Err(_) => std::thread::sleep(Duration::from_millis(200)),
                        }
                    }
                }
                (d, own, through_node2)
            })
        })
        .collect();
    // Node 1 dies with syncs in flight.
    while acknowledged.load(Ordering::SeqCst) < DEVICES / 2 {
        assert!(Instant::now() < deadline, "the syncs did not start");
        std::thread::sleep(Duration::from_millis(5));
    }
    let _ = node1.kill();
    let mut finished = Vec::new();
    for w in workers {
        finished.push(w.join().expect("a device's thread"));
    }
    assert!(
        finished.iter().any(|(_, _, moved)| *moved),
        "some device had to move to node 2"
    );

    let reader = Device::enrolled(&node2, "north", "Reader");
    reader.sync(None)?;
    let mut shared_texts = note_texts(&reader, shared);
    for (i, (_, own, _)) in finished.iter().enumerate() {
        let expected: Vec<String> = (0..3).map(|r| format!("device {i} note {r}")).collect();
        assert_eq!(note_texts(&reader, *own), expected, "device {i}'s family");
    }
    let mut expected: Vec<String> = (0..DEVICES)
        .flat_map(|i| (0..3).map(move |r| format!("device {i} shared {r}")))
        .collect();
    expected.sort();
    shared_texts.sort();
    assert_eq!(shared_texts, expected, "the shared family has every note");
    Ok(())
}
