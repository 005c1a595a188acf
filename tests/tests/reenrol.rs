//! Issue 12, findings 5 and 6: every sync that says it uploaded did.
//!
//! A device enrolled again with a rebuilt relay (a new data directory, so a
//! new relay store) must send everything it holds at its next sync, and its
//! summary must count what really went up; `linkbook sync --server URL`
//! saves the address only once a sync through it succeeded.

use linkbook_tests::{CliDevice, CutProxy, Relay, Run};

const FAMILIES: usize = 3;

fn enrol(device: &CliDevice, relay: &Relay, worker: &str) {
    let out = device.enrol(relay, "north", worker);
    assert!(out.contains("team north"), "{out}");
}

/// Families with two notes each; their ids.
fn write_caseload(a: &CliDevice) -> Vec<String> {
    (0..FAMILIES)
        .map(|i| {
            let family = a.ok(&["family", "add", "--name", &format!("Family {i}")]);
            for n in 0..2 {
                a.ok(&[
                    "note",
                    "add",
                    &family,
                    "--text",
                    &format!("visit {n} of family {i} went well"),
                    "--category",
                    "visit",
                ]);
            }
            family
        })
        .collect()
}

fn note_texts(d: &CliDevice, family: &str) -> Vec<String> {
    let mut texts: Vec<String> = d
        .json(&["note", "list", family])
        .as_array()
        .expect("notes")
        .iter()
        .map(|n| n["text"].as_str().expect("text").to_string())
        .collect();
    texts.sort();
    texts
}

/// The relay address saved in the device's profile (read from its
/// database with its key: the CLI prints no such field).
fn saved_server(d: &CliDevice) -> String {
    let key = d.key.clone().expect("test key");
    let conn = rusqlite::Connection::open(d.db_path()).expect("open db");
    conn.execute_batch(&format!("PRAGMA key = \"x'{key}'\";"))
        .expect("key");
    conn.query_row(
        "SELECT value FROM profile WHERE key = 'server_url'",
        [],
        |r| r.get(0),
    )
    .expect("server_url")
}

fn sync_json(d: &CliDevice, args: &[&str]) -> serde_json::Value {
    let mut all = vec!["sync"];
    all.extend_from_slice(args);
    d.json(&all)
}

#[test]
fn a_device_enrolled_again_with_a_rebuilt_relay_uploads_everything() {
    let r1 = Relay::start();
    let a = CliDevice::new("Asha");
    enrol(&a, &r1, "Asha");
    let families = write_caseload(&a);
    let first = sync_json(&a, &[]);
    assert_eq!(
        first["documents_sent"],
        FAMILIES + 1,
        "families and the directory: {first}"
    );

    // The relay's data directory is thrown away; a fresh one starts.
    drop(r1.kill());
    let r2 = Relay::start();
    enrol(&a, &r2, "Asha");
    let s = sync_json(&a, &[]);
    assert_eq!(
        s["documents_sent"],
        FAMILIES + 1,
        "the first sync with the new relay sends every document: {s}"
    );
    assert_eq!(s["documents_total"], FAMILIES + 1, "{s}");

    // A fresh device on the new relay holds every note after one sync, and
    // what it received is what A said it sent.
    let b = CliDevice::new("Ben");
    enrol(&b, &r2, "Ben");
    let got = sync_json(&b, &[]);
    assert_eq!(got["documents_received"], s["documents_sent"], "{got}");
    for family in &families {
        assert_eq!(note_texts(&b, family), note_texts(&a, family));
        assert_eq!(note_texts(&b, family).len(), 2);
    }

    // Nothing changed since: no upload is claimed.
    let again = sync_json(&a, &[]);
    assert_eq!(again["documents_sent"], 0, "{again}");
    assert_eq!(again["documents_received"], 0, "{again}");

    // A restart on the same data directory is the same store: nothing is
    // sent again.
    let r2 = Relay::start_in(r2.stop());
    let port_moved = a.run(&["sync", "--server", &r2.url, "--json"]);
    assert_eq!(port_moved.code, 0, "{port_moved:?}");
    let after: serde_json::Value = serde_json::from_str(&port_moved.stdout).expect("json");
    assert_eq!(after["documents_sent"], 0, "{after}");
    assert_eq!(saved_server(&a), r2.url);

    // One new note: that family alone goes up, and B gets exactly it.
    a.ok(&[
        "note",
        "add",
        &families[0],
        "--text",
        "phone call with mother",
        "--category",
        "phone_call",
    ]);
    let one = sync_json(&a, &[]);
    assert_eq!(one["documents_sent"], 1, "{one}");
    let got = b.run(&["sync", "--server", &r2.url, "--json"]);
    assert_eq!(got.code, 0, "{got:?}");
    let got: serde_json::Value = serde_json::from_str(&got.stdout).expect("json");
    assert_eq!(got["documents_received"], 1, "{got}");
    assert_eq!(note_texts(&b, &families[0]), note_texts(&a, &families[0]));
}

/// The same address, its data directory rebuilt (certificates kept) but
/// the device not enrolled again: its token is refused, and it is told so.
#[test]
fn a_rebuilt_relay_refuses_a_device_that_was_not_enrolled_again() {
    let r1 = Relay::start();
    let a = CliDevice::new("Asha");
    enrol(&a, &r1, "Asha");
    write_caseload(&a);
    sync_json(&a, &[]);
    let fresh = tempfile::tempdir().expect("dir");
    for f in ["dev-ca.pem", "dev-cert.pem", "dev-key.pem"] {
        std::fs::copy(r1.data.path().join(f), fresh.path().join(f)).expect("copy certificate");
    }
    let old_url = r1.url.clone();
    drop(r1.kill());
    let r2 = Relay::start_in(fresh);
    let r = a.run(&["sync", "--server", &r2.url]);
    assert_eq!(r.code, 5, "unauthorized: {r:?}");
    assert!(r.stderr.contains("token"), "{}", r.stderr);
    assert!(
        r.stderr.contains(&r2.url),
        "names the address: {}",
        r.stderr
    );
    assert_eq!(saved_server(&a), old_url, "the failed address is not saved");
}

fn dead_address() -> String {
    // A port nothing listens on: bound, then closed.
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = l.local_addr().expect("addr");
    drop(l);
    format!("https://{addr}")
}

#[test]
fn sync_server_saves_the_address_only_after_a_sync_through_it_worked() {
    let relay = Relay::start();
    let a = CliDevice::new("Asha");
    enrol(&a, &relay, "Asha");
    a.ok(&["family", "add", "--name", "Smith"]);

    let dead = dead_address();
    let r: Run = a.run(&["sync", "--server", &dead]);
    assert_ne!(r.code, 0, "{r:?}");
    assert!(
        r.stderr.contains(&dead),
        "the error names {dead}: {}",
        r.stderr
    );
    assert_eq!(saved_server(&a), relay.url, "the old address stays");
    // A plain sync still goes to the real relay.
    let s = sync_json(&a, &[]);
    assert_eq!(s["documents_sent"], 2, "{s}");

    // A good new address (the relay behind a forwarder) is saved.
    let proxy = CutProxy::start(relay.addr(), usize::MAX);
    let s = sync_json(&a, &["--server", &proxy.url()]);
    assert_eq!(s["documents_sent"], 0, "{s}");
    assert_eq!(saved_server(&a), proxy.url());
}
