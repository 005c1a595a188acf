//! Issue 12, finding 2: revoking a device cuts its live sessions. Before,
//! `linkbook-server device revoke` (another process) only marked the device
//! in the relay's SQLite: a WebSocket opened before kept downloading and
//! received colleagues' new notes live. Now the relay's watcher
//! (sync-server/src/revocation.rs) sees the revocation within a poll and
//! closes every connection of the device with the reason; nothing more is
//! sent on them from the moment the relay learned of it.

use std::time::{Duration, Instant};

use futures_util::StreamExt;
use linkbook_core::DeviceCredentials;
use linkbook_core::protocol::Message;
use linkbook_tests::{
    CliDevice, GoodDevice, LivePeer, Relay, RelaySocket, closing_error_within, cpu_ticks, joined,
};
use tokio_tungstenite::tungstenite::Message as WsMessage;

/// What the relay says to a revoked device's connection (revocation.rs).
const REVOKED: &str = "this device has been revoked";

/// Bound on waiting for the relay to close a revoked device's connection.
const CLOSE_WITHIN: Duration = Duration::from_secs(10);

/// Everything the relay sends on `ws` until it closes it (within
/// [`CLOSE_WITHIN`]): its `error` messages. Panics at a `sync` message.
async fn rest_until_closed(ws: &mut RelaySocket) -> Vec<String> {
    let mut errors = Vec::new();
    let read = async {
        while let Some(frame) = ws.next().await {
            match frame {
                Ok(WsMessage::Binary(b)) => match Message::decode(&b) {
                    Ok(Message::Error { message }) => errors.push(message),
                    // Without the fix, the colleague's note arrives here.
                    Ok(Message::Sync { .. }) => {
                        panic!(
                            "the revoked connection was sent a sync message after the revocation"
                        );
                    }
                    other => panic!("unexpected {other:?}"),
                },
                Ok(WsMessage::Close(_)) | Err(_) => break,
                Ok(_) => {}
            }
        }
    };
    tokio::time::timeout(CLOSE_WITHIN, read)
        .await
        .expect("the relay closed the revoked device's connection within a few seconds");
    errors
}

/// A CLI device's id and token, read from its encrypted store (a thief
/// who copied the tablet's data holds the same).
fn credentials_of(device: &CliDevice) -> DeviceCredentials {
    let conn = rusqlite::Connection::open(device.db_path()).expect("open");
    let key = device.key.clone().expect("key");
    conn.execute_batch(&format!("PRAGMA key = \"x'{key}'\";"))
        .expect("key");
    let value = |k: &str| -> String {
        conn.query_row("SELECT value FROM profile WHERE key = ?1", [k], |r| {
            r.get(0)
        })
        .expect(k)
    };
    DeviceCredentials {
        device_id: value("device_id"),
        token: value("token"),
        team: "north".into(),
        worker: "Ben".into(),
        directory_id: None,
    }
}

/// Polls the relay's log (at most `within`) for the line it writes when it
/// cut a revoked device; true if it came.
fn relay_saw_revocation(relay: &Relay, device_id: &str, within: Duration) -> bool {
    let start = Instant::now();
    while start.elapsed() < within {
        if relay
            .log()
            .lines()
            .any(|l| l.contains("device revoked") && l.contains(device_id))
        {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

/// A tablet is revoked while three raw connections with its token are
/// open, one of them receiving a family live. A colleague writes and syncs
/// a note right after: the revoked connections get nothing but the close
/// and its reason, a colleague's live connection gets the note, another
/// team notices nothing, and the tablet's next `linkbook sync` wipes it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_device_is_cut_live_and_gets_nothing_more() {
    let relay = Relay::start();
    let mut asha = GoodDevice::enrolled(&relay, "north", "Asha");
    asha.note_and_sync("first");
    let family = asha.family.to_string();

    // Ben's tablet: the real CLI, enrolled and synced.
    let ben = CliDevice::new("Ben");
    let code = tokio::task::block_in_place(|| relay.enrol_code("north", "Ben"));
    let ca_path = relay.ca_path();
    let ca_path = ca_path.to_str().expect("path");
    tokio::task::block_in_place(|| {
        ben.ok(&[
            "enrol", "--server", &relay.url, "--code", &code, "--ca", ca_path,
        ]);
        ben.ok(&["sync"]);
    });
    let listed = tokio::task::block_in_place(|| ben.json(&["family", "list"]));
    assert_eq!(listed.as_array().map(Vec::len), Some(1), "{listed}");
    let ben_creds = credentials_of(&ben);

    // Three connections with Ben's token: one holding the family live.
    let mut ben_live = LivePeer::subscribed(&relay, &ben_creds, &family).await;
    let mut ben_idle = [
        joined(&relay, &relay.ca_pem(), &ben_creds).await,
        joined(&relay, &relay.ca_pem(), &ben_creds).await,
    ];
    // A colleague's live connection, and another team's device.
    let cara_creds =
        tokio::task::block_in_place(|| relay.enrol_credentials("north", "Cara", "Cara's phone"));
    let mut cara = LivePeer::subscribed(&relay, &cara_creds, &family).await;
    let mut dee = GoodDevice::enrolled(&relay, "south", "Dee");
    dee.note_and_sync("first");
    let dee_creds =
        tokio::task::block_in_place(|| relay.enrol_credentials("south", "Dee", "Dee's phone"));
    let mut dee_live = LivePeer::subscribed(&relay, &dee_creds, &dee.family.to_string()).await;

    // Live pushes reach every connection holding the family: what the
    // revoked one would get after the revocation without the fix.
    asha.note_and_sync("before the revocation");
    assert!(ben_live.until_quiet().await >= 1);
    assert!(ben_live.holds("note 2"), "the live push reached Ben");
    assert!(cara.until_quiet().await >= 1);
    assert!(cara.holds("note 2"));

    // The office revokes Ben's tablet, from another process.
    let revoke =
        tokio::task::block_in_place(|| relay.admin(&["device", "revoke", &ben_creds.device_id]));
    assert_eq!(revoke.code, 0, "{}", revoke.stderr);
    // Until the relay says it cut Ben (bounded; without the fix it never
    // does, and the colleague's note below is pushed to Ben live).
    let saw = tokio::task::block_in_place(|| {
        relay_saw_revocation(&relay, &ben_creds.device_id, Duration::from_secs(3))
    });

    // A colleague writes right after; the team goes on as before.
    asha.note_and_sync("after the revocation");
    assert!(cara.until_quiet().await >= 1, "Cara still gets live pushes");
    assert!(cara.holds("note 3"));
    dee.note_and_sync("after another team's revocation");
    assert!(
        dee_live.until_quiet().await >= 1,
        "another team's live push"
    );

    // Ben's connections: nothing but the reason, and closed.
    let errors = rest_until_closed(&mut ben_live.ws).await;
    assert!(!ben_live.holds("note 3"));
    assert!(
        errors.len() == 1 && errors[0].contains(REVOKED),
        "the close says why: {errors:?}"
    );
    for ws in &mut ben_idle {
        let errors = rest_until_closed(ws).await;
        assert!(
            errors.len() == 1 && errors[0].contains(REVOKED),
            "{errors:?}"
        );
    }
    assert!(saw, "the relay logged that it cut the revoked device");
    // The token opens nothing any more.
    let refused = linkbook_tests::relay_socket(&relay.url, &relay.ca_pem(), &ben_creds.token).await;
    assert!(
        matches!(&refused, Err(e) if e.starts_with("403")),
        "{:?}",
        refused.err()
    );

    // The others still sync.
    asha.note_and_sync("after Ben's connections closed");
    assert!(cara.until_quiet().await >= 1);
    dee.note_and_sync("at the end");

    // Ben's tablet, at its next contact, is told and wipes itself.
    let r = tokio::task::block_in_place(|| ben.run(&["sync"]));
    assert_eq!(r.code, 6, "{r:?}");
    assert!(r.stderr.contains("revoked"), "{}", r.stderr);
    let listed = tokio::task::block_in_place(|| ben.json(&["family", "list"]));
    assert_eq!(
        listed,
        serde_json::json!([]),
        "the revoked tablet was wiped"
    );
    assert!(
        !relay.log().contains(&ben_creds.token),
        "a token was logged"
    );
}

/// Figures: how long from the revoke command to the close on a live
/// connection (median of several; the command's own process start
/// included), and what the watcher costs an idle relay.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revocation_closes_within_a_few_seconds_and_costs_an_idle_relay_little() {
    let relay = Relay::start();
    // Idle: no connection, only the watcher's polls (20 in 10 s).
    let before = cpu_ticks(relay.pid());
    tokio::time::sleep(Duration::from_secs(10)).await;
    let idle_ticks = cpu_ticks(relay.pid()) - before;

    let mut times = Vec::new();
    for i in 0..5 {
        let creds = tokio::task::block_in_place(|| {
            relay.enrol_credentials("north", &format!("Worker {i}"), "tablet")
        });
        let mut ws = joined(&relay, &relay.ca_pem(), &creds).await;
        let start = Instant::now();
        let reader = tokio::spawn(async move {
            let error = closing_error_within(&mut ws, CLOSE_WITHIN).await;
            (error, Instant::now())
        });
        let r =
            tokio::task::block_in_place(|| relay.admin(&["device", "revoke", &creds.device_id]));
        assert_eq!(r.code, 0, "{}", r.stderr);
        let (error, closed_at) = reader.await.expect("reader");
        assert!(
            error.as_deref().is_some_and(|e| e.contains(REVOKED)),
            "{error:?}"
        );
        times.push(closed_at - start);
    }
    times.sort();
    let median = times[times.len() / 2];
    eprintln!(
        "revoke command to close: median {median:?}, all {times:?}; idle relay with the watcher: {idle_ticks} CPU ticks in 10 s"
    );
    assert!(
        times.iter().all(|t| *t < Duration::from_secs(5)),
        "{times:?}"
    );
    // A busy loop would be ~1,000 ticks (a whole core).
    assert!(idle_ticks < 100, "{idle_ticks} ticks idle");
}
