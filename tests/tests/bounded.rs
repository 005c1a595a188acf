//! Automerge bytes from outside are checked against a budget before
//! Automerge loads them (core/src/budget.rs, docs/adr/0006): the fuzz
//! crashers that aborted the relay (4 GiB allocation) are refused as sync
//! messages for a new and an existing document, the relay keeps serving, a
//! good device syncs right after, and the refusal is audited.

use futures_util::SinkExt;
use linkbook_core::protocol::Message;
use linkbook_core::*;
use linkbook_tests::{
    Device, GoodDevice, Relay, automerge_crashers, closing_error, joined, proc_status_kb,
    sync_carrying,
};
use tokio_tungstenite::tungstenite::Message as WsMessage;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crashers_as_sync_messages_are_refused_and_the_relay_keeps_serving() {
    let relay = Relay::start();
    let ca = relay.ca_pem();
    let creds =
        tokio::task::block_in_place(|| relay.enrol_credentials("north", "Mallory", "attacker"));
    let mut good = GoodDevice::enrolled(&relay, "north", "Asha");
    let family = good.family;
    let unattacked = good.note_and_sync("unattacked");
    let hwm_before = proc_status_kb(relay.pid(), "VmHWM");

    let existing = family.to_string();
    let new = DocumentId::random().to_string();
    for (name, bytes) in automerge_crashers() {
        for version in [
            automerge::sync::MessageVersion::V1,
            automerge::sync::MessageVersion::V2,
        ] {
            for doc in [&new, &existing] {
                let mut ws = joined(&relay, &ca, &creds).await;
                let sync = Message::Sync {
                    sender_id: creds.device_id.clone(),
                    target_id: "relay".into(),
                    document_id: doc.clone(),
                    data: sync_carrying(&bytes, version.clone()),
                };
                ws.send(WsMessage::Binary(sync.encode().into()))
                    .await
                    .expect("send");
                let error = closing_error(&mut ws).await.unwrap_or_default();
                assert!(
                    error.contains("refused before loading"),
                    "{name} {version:?}: {error}"
                );
                let took = good.note_and_sync(&format!("after {name}"));
                assert!(
                    took < std::time::Duration::from_secs(10)
                        && took < unattacked * 5 + std::time::Duration::from_secs(2),
                    "a good sync after {name} took {took:?} (unattacked {unattacked:?})"
                );
            }
        }
    }
    let hwm_after = proc_status_kb(relay.pid(), "VmHWM");
    eprintln!("relay VmHWM {hwm_before} kB before the crashers, {hwm_after} kB after");
    assert!(
        hwm_after < hwm_before + 256 * 1024,
        "the relay's peak grew from {hwm_before} to {hwm_after} kB"
    );
    let audit = relay.admin(&["audit"]).stdout;
    assert!(audit.contains("refused-over-budget"), "{audit}");
    assert_eq!(relay.integrity_check(), "ok");
}

#[test]
fn import_of_an_export_carrying_a_crasher_is_refused_and_the_store_is_intact() {
    let device = Device::new();
    let family = device
        .add_family(&NewFamily {
            name: "Smith".into(),
            ..Default::default()
        })
        .expect("family");
    let (_, bytes) = &automerge_crashers()[0];
    let id = DocumentId::random();
    let err = device.apply_changes(id, bytes).expect_err("refused");
    assert!(
        err.to_string().contains("rows") || err.to_string().contains("malformed"),
        "{err}"
    );
    assert!(
        device
            .families()
            .expect("families")
            .iter()
            .any(|f| f.id == family)
    );
}

/// A document as a JavaScript client writes a note body: one Text op per
/// character, `"note text "` `repeats` times (10 ops each), saved whole.
fn text_document(repeats: usize) -> Vec<u8> {
    use automerge::transaction::Transactable;
    let mut doc = automerge::AutoCommit::new();
    let text = doc
        .put_object(automerge::ROOT, "body", automerge::ObjType::Text)
        .expect("text");
    doc.splice_text(&text, 0, 0, &"note text ".repeat(repeats))
        .expect("splice");
    doc.save()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_text_document_over_the_ops_cap_is_refused_cheaply() {
    let relay = Relay::start_with(&["--max-document-ops", "200000"]);
    let ca = relay.ca_pem();
    let creds =
        tokio::task::block_in_place(|| relay.enrol_credentials("north", "Mallory", "attacker"));
    // As a JavaScript client writes note bodies: one Text op per character.
    let whole = text_document(30_000);
    let hwm_before = proc_status_kb(relay.pid(), "VmHWM");
    let mut ws = joined(&relay, &ca, &creds).await;
    let sync = Message::Sync {
        sender_id: creds.device_id.clone(),
        target_id: "relay".into(),
        document_id: DocumentId::random().to_string(),
        data: sync_carrying(&whole, automerge::sync::MessageVersion::V2),
    };
    let start = std::time::Instant::now();
    ws.send(WsMessage::Binary(sync.encode().into()))
        .await
        .expect("send");
    let error = closing_error(&mut ws).await.unwrap_or_default();
    let took = start.elapsed();
    let hwm_after = proc_status_kb(relay.pid(), "VmHWM");
    eprintln!(
        "{} bytes, 300,000 Text ops refused in {took:?}; relay VmHWM {hwm_before} -> {hwm_after} kB",
        whole.len()
    );
    assert!(error.contains("more than the 200000 allowed"), "{error}");
    assert!(hwm_after < hwm_before + 64 * 1024);
    GoodDevice::enrolled(&relay, "north", "Asha").note_and_sync("after the refusal");
    assert_eq!(relay.integrity_check(), "ok");
}

/// A real export with every document's bytes replaced by `bytes`.
fn crafted_export(real: &[u8], bytes: &[u8]) -> Vec<u8> {
    use ciborium::Value;
    let mut root: Value = ciborium::from_reader(real).expect("export is CBOR");
    let Value::Map(fields) = &mut root else {
        panic!("export is a map")
    };
    for (k, v) in fields.iter_mut() {
        if k.as_text() == Some("documents") {
            let Value::Array(docs) = v else {
                panic!("documents")
            };
            for d in docs {
                let Value::Map(d) = d else { panic!("document") };
                for (k, v) in d.iter_mut() {
                    if k.as_text() == Some("data") {
                        *v = Value::Bytes(bytes.to_vec());
                    }
                }
            }
        }
    }
    let mut out = Vec::new();
    ciborium::into_writer(&root, &mut out).expect("encode");
    out
}

#[test]
fn linkbook_import_of_a_crafted_export_fails_with_a_typed_error_and_keeps_the_store() {
    let a = linkbook_tests::CliDevice::new("Asha");
    a.ok(&["family", "add", "--name", "Smith"]);
    let real = a.data().join("real.linkbook");
    a.ok(&["export", real.to_str().expect("path")]);
    let families = a.ok(&["family", "list"]);
    let real = std::fs::read(&real).expect("export");
    for (name, bytes) in automerge_crashers() {
        let path = a.data().join(format!("{name}.linkbook"));
        std::fs::write(&path, crafted_export(&real, &bytes)).expect("write");
        let start = std::time::Instant::now();
        let run = prlimit_run(&a, &["import", path.to_str().expect("path")]);
        eprintln!(
            "linkbook import {name}: exit {} in {:?}",
            run.code,
            start.elapsed()
        );
        assert_ne!(run.code, 0, "{name}: {}", run.stdout);
        assert!(
            run.code != 134 && run.code > 0,
            "{name} aborted: {}",
            run.stderr
        );
        assert!(
            run.stderr.contains("refused")
                || run.stderr.contains("malformed")
                || run.stderr.contains("rows"),
            "{name}: {}",
            run.stderr
        );
        assert_eq!(a.ok(&["family", "list"]), families);
    }
    assert_eq!(a.integrity_check(), "ok");
}

/// Runs `linkbook args` as `a` would, under a 3 GB address-space limit, so
/// an unbounded allocation fails (abort) instead of swapping the machine.
fn prlimit_run(a: &linkbook_tests::CliDevice, args: &[&str]) -> linkbook_tests::Run {
    let cmd = a.command(args);
    let mut p = std::process::Command::new("prlimit");
    p.arg("--as=3000000000")
        .arg("--")
        .arg(cmd.get_program())
        .args(cmd.get_args());
    for (k, v) in cmd.get_envs() {
        match v {
            Some(v) => p.env(k, v),
            None => p.env_remove(k),
        };
    }
    if let Some(dir) = cmd.get_current_dir() {
        p.current_dir(dir);
    }
    let o = p.output().expect("run linkbook under prlimit");
    linkbook_tests::Run {
        code: o.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_big_uploads_in_parallel_do_not_abort_a_relay_capped_at_3_gb() {
    let relay = Relay::start();
    relay.cap_memory();
    let ca = relay.ca_pem();
    // Another team: its documents are no Linkbook type the good device reads.
    let creds =
        tokio::task::block_in_place(|| relay.enrol_credentials("south", "Mallory", "attacker"));
    // Just under the default cap of 1 M ops: the largest upload accepted.
    let whole = text_document(60_000);
    let start = std::time::Instant::now();
    let mut uploads = Vec::new();
    for _ in 0..3 {
        let mut ws = joined(&relay, &ca, &creds).await;
        let sync = Message::Sync {
            sender_id: creds.device_id.clone(),
            target_id: "relay".into(),
            document_id: DocumentId::random().to_string(),
            data: sync_carrying(&whole, automerge::sync::MessageVersion::V2),
        };
        uploads.push(tokio::spawn(async move {
            ws.send(WsMessage::Binary(sync.encode().into()))
                .await
                .expect("send");
            use futures_util::StreamExt;
            // The relay answers a sync it applied; wait for that (or close).
            tokio::time::timeout(std::time::Duration::from_secs(120), ws.next())
                .await
                .is_ok()
        }));
    }
    for u in uploads {
        assert!(
            u.await.expect("upload task"),
            "an upload got no answer in time"
        );
    }
    eprintln!(
        "three 600,000-op uploads in {:?}; relay VmHWM {} kB",
        start.elapsed(),
        proc_status_kb(relay.pid(), "VmHWM")
    );
    GoodDevice::enrolled(&relay, "north", "Asha").note_and_sync("after the three uploads");
    assert_eq!(relay.integrity_check(), "ok");
}
