//! Conformance with the JavaScript automerge-repo (npm
//! `@automerge/automerge-repo` 2.x, unmodified): its WebSocketClientAdapter
//! as a device of the relay, and its NodeWSServerAdapter as the server a
//! Linkbook device syncs with. The packages are installed by `.ci/run`
//! (`npm install --prefix tests/npm`).

use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

use linkbook_core::*;
use linkbook_tests::{CliDevice, Device, Relay};

fn npm_dir() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("npm");
    assert!(
        dir.join("node_modules/@automerge/automerge-repo").exists(),
        "the npm peers are not installed: run `npm install --prefix tests/npm`"
    );
    dir
}

/// Kills the node process if a test fails half-way.
struct Node(Child);

impl Node {
    /// Runs `script` (in `tests/npm`) with `args`, trusting the relay's CA
    /// if given; its stdin and stdout are the test's, its stderr the log's.
    fn start(script: &str, args: &[&str], ca: Option<&std::path::Path>) -> Node {
        let mut command = Command::new("node");
        command.arg(npm_dir().join(script)).args(args);
        if let Some(ca) = ca {
            command.env("NODE_EXTRA_CA_CERTS", ca);
        }
        Node(
            command
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit())
                .spawn()
                .expect("node"),
        )
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn the_npm_client_reads_and_writes_a_family_through_the_relay() -> Result<()> {
    let relay = Relay::start();
    let ca = relay.ca_pem();
    let a = Device::new();
    a.enrol(
        &relay.url,
        &relay.enrol_code("north", "Asha"),
        Some(&ca),
        "tablet",
    )?;
    let family = a.add_family(&NewFamily {
        name: "Smith".into(),
        ..Default::default()
    })?;
    a.add_note(family, "Written by the Rust device", NoteCategory::Visit)?;
    a.sync(None)?;

    let creds = enrol_device(
        &relay.url,
        &relay.enrol_code("north", "Jo"),
        Some(&ca),
        "browser",
    )?;
    let note_id = "0f8e2d9c-6a1b-4c3d-9e8f-7a6b5c4d3e2f";
    let url = format!(
        "{}/v1/sync?token={}",
        relay.url.replace("https://", "wss://"),
        creds.token
    );
    let ca_path = relay.ca_path();
    let mut node = Node::start(
        "client.mjs",
        &[
            "--url",
            &url,
            "--peer-id",
            &creds.device_id,
            "--doc",
            &family.url(),
            "--add-note",
            "Added by the npm client",
            "--note-id",
            note_id,
            "--author",
            "Jo",
        ],
        Some(ca_path.as_path()),
    );
    let mut lines = BufReader::new(node.0.stdout.take().expect("stdout")).lines();
    let notes = lines.next().and_then(|l| l.ok()).unwrap_or_default();
    assert_eq!(notes, r#"NOTES ["Written by the Rust device"]"#);
    assert_eq!(
        lines.next().and_then(|l| l.ok()).unwrap_or_default(),
        format!("ADDED {note_id}")
    );

    // The JS client pushes its change on its own schedule: sync until it is
    // here (bounded), then let it go.
    let mut arrived = false;
    for _ in 0..60 {
        a.sync(None)?;
        if a.notes(family)?
            .iter()
            .any(|n| n.id == note_id && n.text == "Added by the npm client")
        {
            arrived = true;
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert!(
        arrived,
        "the npm client's note never reached the Rust device"
    );
    drop(node.0.stdin.take());
    let status = node.0.wait().expect("wait");
    assert!(status.success(), "{status}");
    assert!(!relay.log().contains(&creds.token), "a token was logged");
    Ok(())
}

/// A stock JavaScript app as the README shows it: no `peerId` option (so
/// automerge-repo's random one), enrolled with a one-time code through
/// `POST /v1/enrol`, syncing with the token it got. It reads a family day a
/// Linkbook CLI device wrote, whose counts are JavaScript numbers
/// (arithmetic works), and its booking reaches the CLI device.
#[test]
fn a_stock_js_app_enrols_and_syncs_with_its_own_peer_id() {
    let relay = Relay::start();
    let cli = CliDevice::new("Asha");
    cli.enrol(&relay, "north", "Asha");
    let family = cli.ok(&["family", "add", "--name", "Smith"]);
    let other = cli.ok(&["family", "add", "--name", "Jones"]);
    let today = chrono::Utc::now().date_naive().to_string();
    let day = cli.ok(&[
        "day",
        "create",
        "--prison",
        "HMP X",
        "--date",
        &today,
        "--capacity",
        "10",
    ]);
    cli.ok(&[
        "day",
        "book",
        "--adults",
        "2",
        "--children",
        "1",
        &day,
        &family,
    ]);
    cli.ok(&["sync"]);

    let code = relay.enrol_code("north", "Jo");
    let ca_path = relay.ca_path();
    let (doc, day_url) = (format!("automerge:{family}"), format!("automerge:{day}"));
    let mut node = Node::start(
        "client.mjs",
        &[
            "--enrol", &relay.url, "--code", &code, "--doc", &doc, "--day", &day_url, "--book",
            &other,
        ],
        Some(ca_path.as_path()),
    );
    let mut lines = BufReader::new(node.0.stdout.take().expect("stdout")).lines();
    let mut next = || lines.next().and_then(|l| l.ok()).unwrap_or_default();
    let enrolled = next();
    let (device_id, peer) = enrolled
        .strip_prefix("ENROLLED ")
        .and_then(|l| l.split_once(" PEER "))
        .unwrap_or_else(|| panic!("not enrolled: {enrolled}"));
    assert!(peer.starts_with("peer-"), "{enrolled}");
    assert_ne!(peer, device_id);
    assert_eq!(next(), "NOTES []");
    let seen = next();
    let seen: serde_json::Value = serde_json::from_str(
        seen.strip_prefix("DAY ")
            .unwrap_or_else(|| panic!("no day: {seen}")),
    )
    .expect("json");
    assert_eq!(
        seen,
        serde_json::json!({
            "capacity": 10, "capacityType": "number", "capacityPlusOne": 11,
            "children": 1, "childrenType": "number",
            "schemaVersionType": "number",
        })
    );
    assert_eq!(next(), format!("BOOKED {other}"));

    // The app pushes its change on its own schedule: sync until it is here.
    let mut booking = serde_json::Value::Null;
    let mut shown = serde_json::Value::Null;
    for _ in 0..60 {
        cli.ok(&["sync"]);
        shown = cli.json(&["day", "show", &day]);
        if let Some(b) = shown["bookings"]
            .as_array()
            .and_then(|b| b.iter().find(|b| b["family_id"] == other.as_str()))
        {
            booking = b.clone();
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert_eq!(
        (&booking["adults"], &booking["children"]),
        (&serde_json::json!(2), &serde_json::json!(2)),
        "the app's booking never reached the CLI device: {shown}\n{}",
        relay.log()
    );
    drop(node.0.stdin.take());
    let status = node.0.wait().expect("wait");
    assert!(status.success(), "{status}");
    let log = relay.log();
    assert!(!log.contains(&code), "a code was logged");
    assert!(!log.contains("closing sync connection"), "{log}");
}

#[test]
fn linkbook_devices_sync_through_a_plain_js_automerge_repo_server() -> Result<()> {
    let data = tempfile::tempdir().expect("dir");
    let data_path = data.path().to_string_lossy().into_owned();
    let mut server = Node::start("server.mjs", &["--data", &data_path], None);
    let mut lines = BufReader::new(server.0.stdout.take().expect("stdout")).lines();
    let port = lines
        .next()
        .and_then(|l| l.ok())
        .and_then(|l| l.strip_prefix("LISTENING ").map(str::to_string))
        .expect("the JS server started");
    let url = format!("http://127.0.0.1:{port}");

    let a = Device::new();
    let b = Device::new();
    let family = a.add_family(&NewFamily {
        name: "Smith".into(),
        ..Default::default()
    })?;
    let first = a.add_note(family, "Written on device A", NoteCategory::Visit)?;
    let s = a.sync_with(&url, None, None, None)?;
    assert_eq!(s.documents_sent, 2, "{s:?}");

    let s = b.sync_with(&url, None, None, None)?;
    assert_eq!(s.documents_received, 2, "{s:?}");
    assert_eq!(
        b.notes(family)?
            .iter()
            .map(|n| n.id.clone())
            .collect::<Vec<_>>(),
        vec![first]
    );

    let second = b.add_note(family, "Written on device B", NoteCategory::Court)?;
    b.sync_with(&url, None, None, None)?;
    a.sync_with(&url, None, None, None)?;
    assert!(a.notes(family)?.iter().any(|n| n.id == second));
    assert_eq!(a.heads(family)?, b.heads(family)?);

    let stdin = server.0.stdin.as_mut().expect("stdin");
    let _ = stdin.flush();
    drop(server.0.stdin.take());
    let _ = server.0.wait();
    Ok(())
}
