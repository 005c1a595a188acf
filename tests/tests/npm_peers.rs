//! Conformance with the JavaScript automerge-repo (npm
//! `@automerge/automerge-repo` 2.x, unmodified): its WebSocketClientAdapter
//! as a device of the relay, and its NodeWSServerAdapter as the server a
//! Linkbook device syncs with. The packages are installed by `.ci/run`
//! (`npm install --prefix tests/npm`).

use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

use linkbook_core::*;
use linkbook_tests::{Device, Relay};

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
    let mut node = Node(
        Command::new("node")
            .arg(npm_dir().join("client.mjs"))
            .args([
                "--url",
                &url,
                "--peer-id",
                &creds.device_id,
                "--doc",
                &family.url(),
            ])
            .args([
                "--add-note",
                "Added by the npm client",
                "--note-id",
                note_id,
                "--author",
                "Jo",
            ])
            .env("NODE_EXTRA_CA_CERTS", relay.ca_path())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("node"),
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

#[test]
fn linkbook_devices_sync_through_a_plain_js_automerge_repo_server() -> Result<()> {
    let data = tempfile::tempdir().expect("dir");
    let mut server = Node(
        Command::new("node")
            .arg(npm_dir().join("server.mjs"))
            .arg("--data")
            .arg(data.path())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("node"),
    );
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
