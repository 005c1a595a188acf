//! Issue 11, finding 4: a case file bigger than the relay's
//! `--max-message-bytes` syncs, in as many messages as needed, both ways,
//! and never blocks the team's other documents; a single change over the
//! limit fails only its own document.

use std::sync::mpsc;
use std::time::{Duration, Instant};

use linkbook_core::*;
use linkbook_tests::{Device, Relay};

/// Text that does not compress (Automerge deflates big changes), from
/// `alphabet`, `len` characters.
fn noise(len: usize, seed: u64, alphabet: &[char]) -> String {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            alphabet[(x % alphabet.len() as u64) as usize]
        })
        .collect()
}

fn letters() -> Vec<char> {
    ('a'..='z')
        .chain('A'..='Z')
        .chain([' ', '.', ','])
        .collect()
}

/// Runs a device's sync on its own thread, bounded in time.
fn sync_within(device: &Device, limit: Duration) -> (SyncSummary, Duration) {
    std::thread::scope(|scope| {
        let (tx, rx) = mpsc::channel();
        scope.spawn(move || {
            let started = Instant::now();
            let _ = tx.send(device.repo.sync(None).map(|s| (s, started.elapsed())));
        });
        match rx.recv_timeout(limit) {
            Ok(Ok(done)) => done,
            Ok(Err(e)) => panic!("sync failed: {e}"),
            // The scope still joins the thread: its own I/O timeouts end it.
            Err(_) => panic!("sync took longer than {limit:?}"),
        }
    })
}

fn note_texts(d: &Device, family: DocumentId) -> Vec<(String, String)> {
    d.repo
        .notes(family)
        .expect("notes")
        .into_iter()
        .map(|n| (n.id, n.text))
        .collect()
}

#[test]
fn a_case_file_bigger_than_the_message_limit_syncs_both_ways_and_blocks_nothing() {
    const NOTES: usize = 3_000;
    const LIMIT: usize = 1024 * 1024;
    let relay = Relay::start_with(&["--max-message-bytes", &LIMIT.to_string()]);
    let a = Device::enrolled(&relay, "north", "Asha");
    let b = Device::enrolled(&relay, "north", "Ben");

    // Offline on A: a long case history and a small family's new note.
    let big = a
        .repo
        .add_family(&NewFamily {
            name: "Long history".into(),
            ..Default::default()
        })
        .expect("family");
    let alphabet = letters();
    let started = Instant::now();
    let mut text_bytes = 0;
    for i in 0..NOTES {
        let text = noise(1_000 + (i * 37) % 1_000, i as u64 + 1, &alphabet);
        text_bytes += text.len();
        a.repo
            .add_note(big, &text, NoteCategory::Visit)
            .expect("note");
    }
    eprintln!(
        "wrote {NOTES} notes ({text_bytes} bytes of text) in {:?}",
        started.elapsed()
    );
    assert!(text_bytes > 2 * LIMIT, "the family must exceed the limit");
    let small = a
        .repo
        .add_family(&NewFamily {
            name: "Small".into(),
            ..Default::default()
        })
        .expect("family");
    a.repo
        .add_note(
            small,
            "Safeguarding: call the school today",
            NoteCategory::School,
        )
        .expect("note");

    // Device -> relay.
    let (s, took) = sync_within(&a, Duration::from_secs(300));
    eprintln!("A's upload: {took:?}, {s:?}");
    assert!(s.failed.is_empty(), "{s:?}");
    assert!(
        s.messages_sent as usize > text_bytes / LIMIT,
        "the big family went in several messages: {s:?}"
    );

    // Relay -> device: B gets the small family's note and the whole case file.
    let (s, took) = sync_within(&b, Duration::from_secs(300));
    eprintln!("B's download: {took:?}, {s:?}");
    assert!(s.failed.is_empty(), "{s:?}");
    assert_eq!(note_texts(&b, small), note_texts(&a, small));
    let on_a = note_texts(&a, big);
    assert_eq!(on_a.len(), NOTES);
    assert_eq!(note_texts(&b, big), on_a);

    // Both ways at once: B adds to the big family, A adds more; both sync
    // twice and agree.
    for i in 0..50 {
        b.repo
            .add_note(
                big,
                &noise(1_500, 10_000 + i, &alphabet),
                NoteCategory::Visit,
            )
            .expect("note");
    }
    sync_within(&b, Duration::from_secs(300));
    sync_within(&a, Duration::from_secs(300));
    sync_within(&b, Duration::from_secs(300));
    assert_eq!(note_texts(&a, big).len(), NOTES + 50);
    assert_eq!(note_texts(&a, big), note_texts(&b, big));

    // A fresh device gets everything from the relay (the relay's unasked
    // pushes, split).
    let c = Device::enrolled(&relay, "north", "Cleo");
    let (s, took) = sync_within(&c, Duration::from_secs(300));
    eprintln!("fresh device C: {took:?}, {s:?}");
    assert!(s.failed.is_empty(), "{s:?}");
    assert_eq!(note_texts(&c, big), note_texts(&a, big));
    assert_eq!(note_texts(&c, small), note_texts(&a, small));

    let log = relay.log();
    assert!(!log.contains("too long"), "{log}");
    assert_eq!(relay.integrity_check(), "ok");
}

#[test]
fn a_change_over_the_limit_fails_only_its_document() {
    // The smallest limit the relay takes; one note of 100,000 characters
    // that do not compress is a change of about 300 KB.
    let relay = Relay::start_with(&["--max-message-bytes", "65536"]);
    let a = Device::enrolled(&relay, "north", "Asha");
    let b = Device::enrolled(&relay, "north", "Ben");
    let huge = a
        .repo
        .add_family(&NewFamily {
            name: "One huge note".into(),
            ..Default::default()
        })
        .expect("family");
    let cjk: Vec<char> = ('\u{4e00}'..='\u{9fff}').collect();
    a.repo
        .add_note(huge, &noise(100_000, 7, &cjk), NoteCategory::Visit)
        .expect("note");
    let small = a
        .repo
        .add_family(&NewFamily {
            name: "Small".into(),
            ..Default::default()
        })
        .expect("family");
    a.repo
        .add_note(
            small,
            "Safeguarding: call the school today",
            NoteCategory::School,
        )
        .expect("note");

    let (s, _) = sync_within(&a, Duration::from_secs(120));
    assert_eq!(s.failed, vec![huge.to_string()], "{s:?}");
    // Reported again, and still not blocking, on the next sync.
    let (s, _) = sync_within(&a, Duration::from_secs(120));
    assert_eq!(s.failed, vec![huge.to_string()], "{s:?}");

    let (s, _) = sync_within(&b, Duration::from_secs(120));
    assert!(s.failed.is_empty(), "{s:?}");
    assert_eq!(note_texts(&b, small), note_texts(&a, small));
    // A's own notes are untouched.
    assert_eq!(note_texts(&a, huge).len(), 1);
    assert_eq!(relay.integrity_check(), "ok");
}
