//! Changes checked against Linkbook's rules (issue 11, "changes are checked
//! too"): a peer holding a copied, not-yet-revoked token of the team loads a
//! family from the relay and sends, one connection each, every change the
//! rules forbid (deleting a note, a member or a referral, rewriting a note's
//! text or history, changing the type or team, values of the wrong type or
//! size). Each is refused with its reason before it is stored or fanned out;
//! a fresh device then finds everything still there and none of the refused
//! changes; an honest edit by the same peer passes.

use std::time::{Duration, Instant};

use automerge::sync::SyncDoc;
use automerge::transaction::Transactable;
use automerge::{AutoCommit, ObjId, ObjType, ROOT, ReadDoc};
use futures_util::{SinkExt, StreamExt};
use linkbook_core::protocol::{self, Message};
use linkbook_core::*;
use linkbook_tests::{Device, GoodDevice, Relay, RelaySocket, closing_error, joined};
use tokio_tungstenite::tungstenite::Message as WsMessage;

const WAIT: Duration = Duration::from_secs(15);

/// Loads document `id` from the relay as a plain automerge-repo peer, until
/// it has `heads` (hex hashes).
async fn load(ws: &mut RelaySocket, me: &str, id: DocumentId, heads: &[String]) -> AutoCommit {
    let mut doc = AutoCommit::new();
    let mut state = automerge::sync::State::new();
    let deadline = Instant::now() + WAIT;
    loop {
        let mut have: Vec<String> = doc.get_heads().iter().map(|h| h.to_string()).collect();
        have.sort();
        if have == heads {
            return doc;
        }
        if let Some(m) = doc.sync().generate_sync_message(&mut state) {
            let m = Message::Sync {
                sender_id: me.into(),
                target_id: "relay".into(),
                document_id: id.to_string(),
                data: m.encode(),
            };
            ws.send(WsMessage::Binary(m.encode().into()))
                .await
                .expect("send");
        }
        let left = deadline.saturating_duration_since(Instant::now());
        let frame = tokio::time::timeout(left, ws.next())
            .await
            .expect("the family loaded in time");
        if let Some(Ok(WsMessage::Binary(b))) = frame
            && let Ok(Message::Sync { data, .. }) = Message::decode(&b)
        {
            let m = automerge::sync::Message::decode(&data).expect("a sync message");
            doc.sync()
                .receive_sync_message(&mut state, m)
                .expect("apply");
        }
    }
}

/// Sends every change of `doc` in one whole-document message on a new
/// connection; the relay's closing error, or `None` if it answered with a
/// sync message instead (accepted).
async fn push(
    relay: &Relay,
    ca: &str,
    creds: &DeviceCredentials,
    id: DocumentId,
    doc: &mut AutoCommit,
) -> Option<String> {
    let mut ws = joined(relay, ca, creds).await;
    let mut state = automerge::sync::State::new();
    protocol::assume_shared_heads(&mut state);
    let data = doc
        .sync()
        .generate_sync_message(&mut state)
        .expect("a sync message")
        .encode();
    let m = Message::Sync {
        sender_id: creds.device_id.clone(),
        target_id: "relay".into(),
        document_id: id.to_string(),
        data,
    };
    ws.send(WsMessage::Binary(m.encode().into()))
        .await
        .expect("send");
    let answer = tokio::time::timeout(WAIT, ws.next())
        .await
        .expect("an answer in time");
    match answer {
        Some(Ok(WsMessage::Binary(b))) => match Message::decode(&b) {
            Ok(Message::Sync { .. }) => {
                let _ = ws.close(None).await;
                None
            }
            Ok(Message::Error { message }) => {
                let _ = closing_error(&mut ws).await;
                Some(message)
            }
            other => panic!("unexpected answer {other:?}"),
        },
        _ => closing_error(&mut ws).await.or(Some("closed".into())),
    }
}

fn map(doc: &AutoCommit, obj: &ObjId, key: &str) -> ObjId {
    match doc.get(obj, key).expect("get") {
        Some((automerge::Value::Object(_), id)) => id,
        other => panic!("no object at {key}: {other:?}"),
    }
}

type Attack = Box<dyn Fn(&mut AutoCommit)>;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forbidden_changes_are_refused_and_nothing_is_lost() {
    let relay = Relay::start();
    // The relay is fed hostile bytes: cap its memory.
    relay.cap_memory();
    let ca = relay.ca_pem();
    let good = GoodDevice::enrolled(&relay, "north", "Asha");
    let family = good.family;
    let note = good
        .add_note(family, "First visit: all well.", NoteCategory::Visit)
        .expect("note");
    good.edit_note(family, &note, "First visit: all well, kids at school.")
        .expect("edit");
    let second = good
        .add_note(family, "Phoned the school.", NoteCategory::Visit)
        .expect("note");
    let member = good
        .add_member(
            family,
            &NewMember {
                name: "Sam".into(),
                role: MemberRole::Child,
                relationship: None,
                date_of_birth: None,
                school: None,
                looked_after: false,
                social_worker: None,
            },
        )
        .expect("member");
    let referral = good
        .add_referral(
            family,
            &NewReferral {
                agency: "Youth service".into(),
                reason: "Mentoring".into(),
                date: chrono::Utc::now().date_naive(),
            },
        )
        .expect("referral");
    let t = Instant::now();
    tokio::task::block_in_place(|| good.sync(None)).expect("first sync");
    let unattacked = t.elapsed();
    let want = good.family(family).expect("family");

    // The stolen tablet: a copied token of the same team.
    let creds =
        tokio::task::block_in_place(|| relay.enrol_credentials("north", "Mallory", "stolen"));
    let mut ws = joined(&relay, &ca, &creds).await;
    let heads = good.heads(family).expect("heads");
    let mut loaded = load(&mut ws, &creds.device_id, family, &heads).await;
    drop(ws);

    let (n1, n2, m1, r1) = (
        note.clone(),
        second.clone(),
        member.clone(),
        referral.clone(),
    );
    let attacks: Vec<(&str, &str, Attack)> = vec![
        (
            "delete a note",
            "a case note may not be deleted",
            Box::new(move |d| {
                let notes = map(d, &ROOT, "notes");
                d.delete(&notes, n2.as_str()).expect("delete");
            }),
        ),
        (
            "delete a member",
            "a member may not be deleted",
            Box::new(move |d| {
                let members = map(d, &ROOT, "members");
                d.delete(&members, m1.as_str()).expect("delete");
            }),
        ),
        (
            "delete a referral",
            "a referral may not be deleted",
            Box::new(move |d| {
                let referrals = map(d, &ROOT, "referrals");
                d.delete(&referrals, r1.as_str()).expect("delete");
            }),
        ),
        (
            "erase every note",
            "a family's notes may not be replaced",
            Box::new(|d| {
                d.put_object(ROOT, "notes", ObjType::Map).expect("put");
            }),
        ),
        (
            "rewrite a note's text",
            "text may change only with its old text kept",
            {
                let n = n1.clone();
                Box::new(move |d| {
                    let note = map(d, &map(d, &ROOT, "notes"), &n);
                    d.put(&note, "text", "Nothing to report.").expect("put");
                })
            },
        ),
        (
            "rewrite a note's history",
            "history may not be rewritten",
            {
                let n = n1.clone();
                Box::new(move |d| {
                    let note = map(d, &map(d, &ROOT, "notes"), &n);
                    let history = map(d, &note, "history");
                    d.delete(&history, 0).expect("delete");
                })
            },
        ),
        (
            "change a note's author",
            "a case note's author may not be changed",
            {
                let n = n1.clone();
                Box::new(move |d| {
                    let note = map(d, &map(d, &ROOT, "notes"), &n);
                    d.put(&note, "author", "Someone else").expect("put");
                })
            },
        ),
        (
            "change the type",
            "a family's type may not be changed",
            Box::new(|d| d.put(ROOT, "type", "family_day").expect("put")),
        ),
        (
            "change the team",
            "a family's team may not be changed",
            Box::new(|d| d.put(ROOT, "team", "south").expect("put")),
        ),
        ("a number for a name", "a member's name must be a string", {
            let m = member.clone();
            Box::new(move |d| {
                let member = map(d, &map(d, &ROOT, "members"), &m);
                d.put(&member, "name", 42_u64).expect("put");
            })
        }),
        (
            "a 10 MB name",
            "the household's name is longer than 500 characters",
            Box::new(|d| {
                let household = map(d, &ROOT, "household");
                d.put(&household, "name", "n".repeat(10_000_000))
                    .expect("put");
            }),
        ),
    ];
    for (attack, reason, make) in &attacks {
        let mut doc = loaded.fork();
        make(&mut doc);
        doc.commit();
        let error = push(&relay, &ca, &creds, family, &mut doc).await;
        let error = error.unwrap_or_else(|| panic!("{attack}: accepted"));
        assert!(
            error.starts_with("change refused: ") && error.contains(reason),
            "{attack}: {error}"
        );
        assert!(relay.log().contains("refused at the door"), "{attack}");
    }

    // The team directory: an open family's entry may not be dropped (a new
    // device would never learn of the family).
    let dir = good.directory_id();
    let mut ws = joined(&relay, &ca, &creds).await;
    let dir_heads = good.heads(dir).expect("directory heads");
    let mut directory = load(&mut ws, &creds.device_id, dir, &dir_heads).await;
    drop(ws);
    let families = map(&directory, &ROOT, "families");
    directory
        .delete(&families, format!("{family}.status").as_str())
        .expect("delete");
    directory.commit();
    let error = push(&relay, &ca, &creds, dir, &mut directory).await;
    assert_eq!(
        error.as_deref(),
        Some(
            "change refused: a team directory entry may be removed only for a purged document or a closed family"
        )
    );

    let status =
        std::fs::read_to_string(format!("/proc/{}/status", relay.pid())).unwrap_or_default();
    let peak = status
        .lines()
        .find(|l| l.starts_with("VmHWM"))
        .unwrap_or("VmHWM: ?");
    println!("relay after {} refused changes: {peak}", attacks.len() + 1);

    // The good device keeps syncing during and after the attack.
    let t = Instant::now();
    good.add_note(family, "Second visit.", NoteCategory::Visit)
        .expect("note");
    tokio::task::block_in_place(|| good.sync(None)).expect("the good device syncs");
    let attacked = t.elapsed();
    println!("good device sync: {unattacked:?} before the attack, {attacked:?} after it");
    assert!(attacked < Duration::from_secs(10));

    // An honest edit by the same peer, made as `edit_note` makes it.
    let mut honest = loaded.fork();
    {
        let note = map(&honest, &map(&honest, &ROOT, "notes"), &second);
        let history = map(&honest, &note, "history");
        let len = honest.length(&history);
        let rev = honest
            .insert_object(&history, len, ObjType::Map)
            .expect("insert");
        honest.put(&rev, "text", "Phoned the school.").expect("put");
        honest
            .put(&rev, "replaced_at", chrono::Utc::now().to_rfc3339())
            .expect("put");
        honest.put(&rev, "replaced_by", "Mallory").expect("put");
        honest
            .put(&note, "text", "Phoned the school twice.")
            .expect("put");
    }
    honest.commit();
    assert_eq!(
        push(&relay, &ca, &creds, family, &mut honest).await,
        None,
        "an honest edit passes"
    );

    // A third device finds every note, the member and the referral, and
    // none of the refused changes.
    let third = Device::enrolled(&relay, "north", "Ben");
    tokio::task::block_in_place(|| third.sync(None)).expect("a fresh device syncs");
    let got = third.family(family).expect("family on the third device");
    assert_eq!(got.name, "Smith");
    assert_eq!(got.members, want.members);
    assert_eq!(got.referrals, want.referrals);
    assert_eq!(
        got.notes.len(),
        3,
        "two notes and the good device's new one"
    );
    let first = got.notes.iter().find(|n| n.id == note).expect("first note");
    assert_eq!(first.text, "First visit: all well, kids at school.");
    assert_eq!(first.author, want.notes[0].author);
    assert_eq!(first.history.len(), 1);
    let edited = got
        .notes
        .iter()
        .find(|n| n.id == second)
        .expect("second note");
    assert_eq!(edited.text, "Phoned the school twice.");
    assert_eq!(edited.history[0].text, "Phoned the school.");
    let fams = third.families().expect("families");
    assert_eq!(fams.len(), 1);
    assert!(
        third
            .directory_listing()
            .expect("listing")
            .contains(&family)
    );
    // Reasons are logged; content is not.
    let log = relay.log();
    assert!(!log.contains("Nothing to report") && !log.contains("Someone else"));
    assert_eq!(relay.integrity_check(), "ok");
}

/// Honest concurrent work passes the rules: two tablets edit the same note
/// offline and both check in; the relay keeps both texts (a conflict), and
/// settling it keeps the dropped text in the note's history.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_tablets_editing_one_note_offline_both_sync() {
    let relay = Relay::start();
    let a = Device::enrolled(&relay, "north", "Asha");
    let b = Device::enrolled(&relay, "north", "Ben");
    let family = a
        .add_family(&NewFamily {
            name: "Jones".into(),
            ..Default::default()
        })
        .expect("family");
    let note = a
        .add_note(family, "Met at the visitor centre.", NoteCategory::Visit)
        .expect("note");
    tokio::task::block_in_place(|| a.sync(None)).expect("a syncs");
    tokio::task::block_in_place(|| b.sync(None)).expect("b syncs");
    a.edit_note(family, &note, "Met at the visitor centre, with Gran.")
        .expect("edit a");
    b.edit_note(family, &note, "Met at the visitor centre; late bus.")
        .expect("edit b");
    let member = b
        .add_member(
            family,
            &NewMember {
                name: "Kim".into(),
                role: MemberRole::Adult,
                relationship: None,
                date_of_birth: None,
                school: None,
                looked_after: false,
                social_worker: None,
            },
        )
        .expect("member");
    a.remove_member(family, &member)
        .expect_err("A has not seen it yet");
    for d in [&a, &b, &a] {
        tokio::task::block_in_place(|| d.sync(None)).expect("an honest sync passes the rules");
    }
    let conflicts = a.conflicts().expect("conflicts");
    let text = conflicts
        .iter()
        .find(|c| c.document_id == family && c.path.ends_with("/text"))
        .expect("the two texts are kept as a conflict");
    a.resolve_conflict(
        family,
        &text.path,
        &serde_json::json!("Met at the visitor centre, with Gran."),
    )
    .expect("resolve");
    a.remove_member(family, &member).expect("remove");
    for d in [&a, &b] {
        tokio::task::block_in_place(|| d.sync(None)).expect("settling passes the rules");
    }
    let got = b.family(family).expect("family");
    assert_eq!(got.notes[0].text, "Met at the visitor centre, with Gran.");
    let old: Vec<&str> = got.notes[0]
        .history
        .iter()
        .map(|r| r.text.as_str())
        .collect();
    assert!(
        old.contains(&"Met at the visitor centre; late bus."),
        "{old:?}"
    );
    assert!(got.members.is_empty(), "removed on A, gone on B");
    assert!(!relay.log().contains("refused at the door"));
    assert_eq!(relay.integrity_check(), "ok");
}
