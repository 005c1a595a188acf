//! Durability: a `linkbook` process adding notes is killed with SIGKILL in
//! the middle of its work; every note it printed as saved is there when the
//! store is opened again, and the database passes `PRAGMA integrity_check`.

use std::io::{BufRead, BufReader, Write};
use std::process::Stdio;

use linkbook_tests::CliDevice;

#[test]
fn notes_reported_saved_survive_sigkill() {
    let d = CliDevice::new("Asha");
    let family = d.ok(&["family", "add", "--name", "Smith"]);
    let mut saved: Vec<String> = Vec::new();
    // Kill at a different point each round.
    for (round, kill_after) in [7usize, 31, 64, 90].into_iter().enumerate() {
        let mut child = d
            .command(&["note", "add", &family, "--stdin", "--category", "visit"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn linkbook");
        let mut stdin = child.stdin.take().expect("stdin");
        let writer = std::thread::spawn(move || {
            // Far more notes than it gets to save before the kill.
            for i in 0..100_000 {
                if writeln!(stdin, "round {round} note {i}: visit went well").is_err() {
                    break; // the process is gone
                }
            }
        });
        let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
        let mut this_round = 0;
        while this_round < kill_after {
            match lines.next() {
                Some(Ok(id)) => {
                    saved.push(id);
                    this_round += 1;
                }
                _ => panic!("linkbook stopped before it was killed"),
            }
        }
        child.kill().expect("SIGKILL"); // std sends SIGKILL on unix
        child.wait().expect("reap");
        // Ids already in the pipe were printed, so reported saved, before the kill.
        saved.extend(lines.map_while(Result::ok));
        writer.join().expect("writer thread");
    }

    assert_eq!(d.integrity_check(), "ok");
    let notes = d.json(&["note", "list", &family]);
    let held: Vec<&str> = notes
        .as_array()
        .expect("notes")
        .iter()
        .filter_map(|n| n["id"].as_str())
        .collect();
    let lost: Vec<&String> = saved
        .iter()
        .filter(|id| !held.contains(&id.as_str()))
        .collect();
    assert!(
        lost.is_empty(),
        "{} of {} saved notes lost: {lost:?}",
        lost.len(),
        saved.len()
    );
    assert!(saved.len() >= 192);
    // And the store still takes new notes after the crashes.
    d.ok(&["note", "add", &family, "--text", "after the crash"]);
}
