//! Unreadable documents skipped by devices, refused documents listed for
//! the administrator (issue 11, "documents are checked at the door", second
//! half): a document without a Linkbook type that reached the relay's
//! storage before the door check no longer stops a team's syncs, and every
//! refusal the relay makes shows in `linkbook-server document refused`.

use automerge::sync::SyncDoc;
use automerge::transaction::Transactable;
use futures_util::SinkExt;
use linkbook_core::protocol::{self, Message};
use linkbook_core::*;
use linkbook_tests::{
    CliDevice, Device, GoodDevice, Relay, closing_error, cpu_ticks, joined, proc_status_kb,
};
use std::path::Path;
use std::time::{Duration, Instant};
use tokio_tungstenite::tungstenite::Message as WsMessage;

/// Content a refusal or a skip must never show.
const SECRET: &str = "Smith family, 12 Acacia Road";

/// A document any automerge-repo client can make: no Linkbook type.
fn foreign_document() -> automerge::AutoCommit {
    let mut doc = automerge::AutoCommit::new();
    doc.put(automerge::ROOT, "note", SECRET).expect("put");
    doc
}

/// Writes `changes` of document `id` for `team` straight into a stopped
/// relay's database, as an old relay without the door check stored them.
fn store_directly(db: &Path, id: &str, team: &str, changes: &[u8]) {
    let conn = linkbook_tests::relay_db(db.parent().expect("data directory"));
    conn.execute(
        "INSERT INTO documents (id, team, created_at) VALUES (?1, ?2, '2026-11-01T00:00:00Z')
         ON CONFLICT(team, id) DO NOTHING",
        rusqlite::params![id, team],
    )
    .expect("document row");
    conn.execute(
        "INSERT INTO changes (team, doc_id, data) VALUES (?1, ?2, ?3)",
        rusqlite::params![team, id, changes],
    )
    .expect("change row");
    conn.execute(
        "UPDATE documents SET change_count = change_count + 1, seq = last_insert_rowid(),
             last_device = 'an-old-app' WHERE team = ?1 AND id = ?2",
        [team, id],
    )
    .expect("cursor");
}

fn enrol_cli(relay: &Relay, worker: &str) -> CliDevice {
    let device = CliDevice::new(worker);
    device.enrol(relay, "north", worker);
    device
}

#[test]
fn a_device_skips_an_unreadable_document_and_syncs_the_rest() {
    let relay = Relay::start();
    let asha = enrol_cli(&relay, "Asha");
    let family = asha.ok(&["family", "add", "--name", "Patel"]);
    asha.json(&["sync"]);
    let ben = Device::enrolled(&relay, "north", "Ben");
    ben.sync(None).expect("Ben's first sync");

    // Before the door check, a client stored a foreign document for north.
    let data = relay.stop();
    let poison_id = DocumentId::random().to_string();
    let mut poison = foreign_document();
    store_directly(
        &data.path().join("relay.db"),
        &poison_id,
        "north",
        &poison.save(),
    );
    let relay = Relay::start_in(data);

    // Asha's own family's new note still goes up; the foreign document is
    // skipped, named, and the sync exits 0.
    let note = asha.ok(&["note", "add", &family, "--text", "Visit went well"]);
    let r = asha.run(&["sync", "--json", "--server", &relay.url]);
    assert_eq!(r.code, 0, "{r:?}");
    assert!(
        r.stderr.contains("warning") && r.stderr.contains(&poison_id),
        "{}",
        r.stderr
    );
    let summary: serde_json::Value = serde_json::from_str(&r.stdout).expect("JSON summary");
    let skipped = summary["skipped"].as_array().expect("skipped listed");
    assert_eq!(skipped.len(), 1, "{summary}");
    assert_eq!(skipped[0]["id"], poison_id.as_str());
    assert!(
        skipped[0]["reason"]
            .as_str()
            .is_some_and(|r| r.contains("no Linkbook type")),
        "{summary}"
    );
    assert!(!r.stdout.contains(SECRET) && !r.stderr.contains(SECRET));
    assert!(summary["documents_sent"].as_u64() >= Some(1), "{summary}");

    // Ben receives the note; he is told about the same document.
    ben.set_server_url(&relay.url).expect("new address");
    let s = ben
        .sync(None)
        .expect("Ben syncs despite the foreign document");
    let id = DocumentId::parse(&family, "family").expect("id");
    assert!(
        ben.notes(id).expect("notes").iter().any(|n| n.id == note),
        "the note reached Ben"
    );
    assert_eq!(
        s.skipped.iter().map(|d| d.id.as_str()).collect::<Vec<_>>(),
        [poison_id.as_str()]
    );
    assert!(
        ben.document_ids()
            .expect("ids")
            .iter()
            .all(|(d, _)| d.to_string() != poison_id),
        "not stored as a record"
    );

    // Every later sync reports it again (it is asked for again), text form too.
    let r = asha.run(&["sync"]);
    assert_eq!(r.code, 0, "{r:?}");
    assert!(r.stderr.contains(&poison_id), "{}", r.stderr);

    // The office fixes the relay's copy (as a newer app would write it): the
    // next sync reads it, and stops reporting it.
    let data = relay.stop();
    let heads = poison.get_heads();
    poison
        .put(automerge::ROOT, "type", "family_day")
        .expect("put");
    poison
        .put(automerge::ROOT, "schema_version", 1_u64)
        .expect("put");
    poison.put(automerge::ROOT, "team", "north").expect("put");
    poison.commit();
    store_directly(
        &data.path().join("relay.db"),
        &poison_id,
        "north",
        &poison.save_after(&heads),
    );
    let relay = Relay::start_in(data);
    ben.set_server_url(&relay.url).expect("new address");
    let s = ben.sync(None).expect("Ben syncs");
    assert!(s.skipped.is_empty(), "{s:?}");
    assert!(
        ben.document_ids()
            .expect("ids")
            .iter()
            .any(|(d, _)| d.to_string() == poison_id),
        "the readable version is taken"
    );
    assert_eq!(relay.integrity_check(), "ok");
    assert_eq!(asha.integrity_check(), "ok");
}

/// The bytes of one `sync` carrying `doc` whole, as document `id`.
fn upload(device_id: &str, id: &str, doc: &mut automerge::AutoCommit) -> Vec<u8> {
    let mut state = automerge::sync::State::new();
    protocol::assume_shared_heads(&mut state);
    let data = doc
        .sync()
        .generate_sync_message(&mut state)
        .expect("a sync message")
        .encode();
    Message::Sync {
        sender_id: device_id.to_string(),
        target_id: "relay".into(),
        document_id: id.to_string(),
        data,
    }
    .encode()
}

/// `document refused --json`, once its rows for `doc` count `count` (the
/// relay writes refusals off the refusing connection's path).
fn refused_rows(relay: &Relay, doc: &str, count: i64) -> Vec<serde_json::Value> {
    let until = Instant::now() + Duration::from_secs(10);
    loop {
        let r = relay.admin(&["document", "refused", "--json"]);
        assert_eq!(r.code, 0, "{r:?}");
        assert!(!r.stdout.contains(SECRET), "{}", r.stdout);
        let rows: Vec<serde_json::Value> = serde_json::from_str(&r.stdout).expect("JSON");
        let mine: Vec<serde_json::Value> = rows
            .into_iter()
            .filter(|row| row["document_id"] == doc)
            .collect();
        if mine
            .iter()
            .map(|r| r["count"].as_i64().unwrap_or(0))
            .sum::<i64>()
            >= count
            || Instant::now() >= until
        {
            return mine;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_are_listed_for_the_administrator_one_row_per_repeat() {
    let relay = Relay::start();
    // Hostile bytes go to it: cap its address space (3 GB).
    relay.cap_memory();
    let ca = relay.ca_pem();
    let good = GoodDevice::enrolled(&relay, "north", "Asha");
    let family = good.family;
    let timed_sync = |device: &Device| {
        let t = Instant::now();
        tokio::task::block_in_place(|| device.sync(None)).expect("a good sync");
        t.elapsed()
    };
    timed_sync(&good);
    let unattacked = timed_sync(&good);
    let creds =
        tokio::task::block_in_place(|| relay.enrol_credentials("north", "Mallory", "attacker"));
    let poison_id = DocumentId::random().to_string();

    // The same foreign upload, again and again: each is refused and closes
    // its connection; the administrator sees one row with the count.
    const REPEATS: i64 = 40;
    let mut slowest = Duration::ZERO;
    let hwm_before = proc_status_kb(relay.pid(), "VmHWM");
    let cpu_before = cpu_ticks(relay.pid());
    let flood = Instant::now();
    for i in 0..REPEATS {
        let mut ws = joined(&relay, &ca, &creds).await;
        tokio::time::timeout(
            Duration::from_secs(10),
            ws.send(WsMessage::Binary(
                upload(&creds.device_id, &poison_id, &mut foreign_document()).into(),
            )),
        )
        .await
        .expect("sent in time")
        .expect("send");
        let error = closing_error(&mut ws).await.expect("an error message");
        assert!(error.contains("no Linkbook type"), "{error}");
        if i % 10 == 0 {
            // A good device keeps syncing while it goes on.
            good.add_note(family, "Visit went well", NoteCategory::Visit)
                .expect("note");
            slowest = slowest.max(timed_sync(&good));
        }
    }
    let hwm_after = proc_status_kb(relay.pid(), "VmHWM");
    let cpu = cpu_ticks(relay.pid()) - cpu_before;
    eprintln!(
        "{REPEATS} refusals (with 4 good syncs) in {:?}: relay CPU {} ms, VmHWM {hwm_before} -> {hwm_after} kB",
        flood.elapsed(),
        cpu * 10
    );
    eprintln!("good sync: {unattacked:?} unattacked, at most {slowest:?} during the refusals");
    assert!(
        hwm_after < hwm_before + 64 * 1024,
        "the relay's peak grew from {hwm_before} to {hwm_after} kB"
    );
    assert!(
        slowest < Duration::from_secs(10) && slowest < unattacked * 5 + Duration::from_secs(2),
        "a good sync took {slowest:?} during the refusals (unattacked {unattacked:?})"
    );

    let rows = tokio::task::block_in_place(|| refused_rows(&relay, &poison_id, REPEATS));
    assert_eq!(
        rows.len(),
        1,
        "one row per (document, device, reason): {rows:?}"
    );
    let row = &rows[0];
    assert_eq!(row["count"], REPEATS, "{row}");
    assert_eq!(row["device_id"], creds.device_id.as_str(), "{row}");
    assert_eq!(row["team"], "north", "{row}");
    assert!(
        row["reason"]
            .as_str()
            .is_some_and(|r| r.contains("no Linkbook type")),
        "{row}"
    );

    // Another team's administrator view does not list it; the text form does.
    let south = relay.admin(&["document", "refused", "--team", "south", "--json"]);
    assert_eq!(south.stdout.trim(), "[]", "{south:?}");
    let text = relay.admin(&["document", "refused", "--team", "north"]);
    assert!(
        text.stdout.contains(&poison_id) && text.stdout.contains(&creds.device_id),
        "{text:?}"
    );
    // Audited once (ids only), not once per repeat.
    let audit = relay.admin(&["audit", "--family", &poison_id, "--json"]);
    let audit: serde_json::Value = serde_json::from_str(&audit.stdout).expect("audit JSON");
    let refused = audit
        .as_array()
        .expect("entries")
        .iter()
        .filter(|e| e["action"] == "refused-at-door")
        .count();
    assert_eq!(refused, 1, "{audit}");

    // Over the Automerge budget (a fuzz crasher that made Automerge allocate
    // 4 GiB), twice: one row, counted, its reason without content.
    let crasher = std::fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/fuzz-crashers/automerge-load/oom-167-bytes-take-4gb.bin"
    ))
    .expect("crasher");
    let heavy_id = DocumentId::random().to_string();
    for _ in 0..2 {
        let mut ws = joined(&relay, &ca, &creds).await;
        let data = automerge::sync::Message {
            heads: Vec::new(),
            need: Vec::new(),
            have: Vec::new(),
            changes: vec![crasher.clone()].into(),
            flags: None,
            version: automerge::sync::MessageVersion::V1,
        }
        .encode();
        let m = Message::Sync {
            sender_id: creds.device_id.clone(),
            target_id: "relay".into(),
            document_id: heavy_id.clone(),
            data,
        };
        tokio::time::timeout(
            Duration::from_secs(10),
            ws.send(WsMessage::Binary(m.encode().into())),
        )
        .await
        .expect("sent in time")
        .expect("send");
        let error = closing_error(&mut ws).await.expect("an error message");
        assert!(error.contains("refused before loading"), "{error}");
    }
    let rows = tokio::task::block_in_place(|| refused_rows(&relay, &heavy_id, 2));
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(rows[0]["count"], 2, "{rows:?}");
    assert!(
        rows[0]["reason"]
            .as_str()
            .is_some_and(|r| r.contains("refused before loading")),
        "{rows:?}"
    );
    let audit = relay.admin(&["audit", "--family", &heavy_id]).stdout;
    assert_eq!(audit.matches("refused-over-budget").count(), 1, "{audit}");

    // Nothing of it was stored, and the team still syncs, a fresh device too.
    let fresh = Device::enrolled(&relay, "north", "Ben");
    tokio::task::block_in_place(|| fresh.sync(None)).expect("a fresh device syncs");
    assert_eq!(fresh.families().expect("families").len(), 1);
    assert!(
        fresh
            .document_ids()
            .expect("ids")
            .iter()
            .all(|(d, _)| d.to_string() != poison_id)
    );
    assert_eq!(relay.integrity_check(), "ok");
}

#[test]
fn a_change_from_a_newer_app_is_skipped_and_the_record_kept() {
    let relay = Relay::start();
    let asha = Device::enrolled(&relay, "north", "Asha");
    let ben = Device::enrolled(&relay, "north", "Ben");
    let family = asha
        .add_family(&NewFamily {
            name: "Patel".into(),
            ..Default::default()
        })
        .expect("family");
    let note = asha
        .add_note(family, "Visit went well", NoteCategory::Visit)
        .expect("note");
    asha.sync(None).expect("Asha's sync");
    ben.sync(None).expect("Ben's sync");

    // A newer app raised the family's schema version on the relay.
    let mut newer =
        automerge::AutoCommit::load(&asha.save_document(family).expect("bytes")).expect("load");
    let heads = newer.get_heads();
    newer
        .put(automerge::ROOT, "schema_version", 99_u64)
        .expect("put");
    newer.commit();
    let data = relay.stop();
    store_directly(
        &data.path().join("relay.db"),
        &family.to_string(),
        "north",
        &newer.save_after(&heads),
    );
    let relay = Relay::start_in(data);

    // Ben skips that change, keeps the family as he had it, and still gets
    // Asha's new family.
    asha.set_server_url(&relay.url).expect("address");
    ben.set_server_url(&relay.url).expect("address");
    let other = asha
        .add_family(&NewFamily {
            name: "Jones".into(),
            ..Default::default()
        })
        .expect("family");
    asha.sync(None).expect("Asha syncs");
    let s = ben.sync(None).expect("Ben syncs despite the newer change");
    assert_eq!(s.skipped.len(), 1, "{s:?}");
    assert_eq!(s.skipped[0].id, family.to_string());
    assert!(s.skipped[0].reason.contains("update the app"), "{s:?}");
    assert!(
        ben.notes(family)
            .expect("the family is still readable")
            .iter()
            .any(|n| n.id == note)
    );
    assert!(ben.family(other).is_ok(), "the other family arrived");
    assert_eq!(relay.integrity_check(), "ok");
}
