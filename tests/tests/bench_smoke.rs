//! The benchmarks' fast tier as a smoke test: the `linkbook-bench` binary of
//! this build (`cargo build --workspace` builds it) runs all five workloads
//! at small sizes, against the JavaScript sync server too, and must print
//! every figure as a well-formed `RESULT` line with a sane number. The
//! figures themselves are not judged here (a debug build on a busy CI
//! machine); `bench/README.md` has a full run's.

use std::collections::BTreeMap;
use std::io::Read;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use linkbook_tests::workspace_bin;

/// A hung bench fails instead of holding CI. The fast tier takes 40-60 s in
/// a debug build on 2 cores (office-nodes starts a PostgreSQL cluster); this leaves room for a machine busy with other
/// builds (it took over 100 s once with three builds and fuzzers beside it).
const TIMEOUT: Duration = Duration::from_secs(240);

/// Every figure the bench reports, per workload, and whether the JS peer
/// must have a figure beside it (`peer=` a number, not `-`).
const EXPECTED: &[(&str, &[(&str, bool)])] = &[
    (
        "office-sync",
        &[
            ("wall_s", true),
            ("server_cpu_s", true),
            ("server_peak_rss_mb", true),
            ("wire_bytes_per_device", true),
            ("round_trips_per_device", true),
            ("messages_per_device", true),
            ("slowest_device_s", true),
        ],
    ),
    (
        "fresh-device",
        &[
            ("wall_s", true),
            ("wire_bytes", true),
            ("device_peak_rss_mb", true),
            ("documents", true),
        ],
    ),
    (
        "latency",
        &[
            ("round_trips", true),
            ("wall_s", true),
            ("wall_vs_limit_s", false),
            ("round_trips_vs_limit", false),
        ],
    ),
    (
        "device-store",
        &[
            ("open_ms", false),
            ("list_caseload_ms", false),
            ("search_ms", false),
            ("add_note_ms", false),
        ],
    ),
    (
        "relay-capacity",
        &[
            ("idle_connections_rss_mb", true),
            ("memory_per_idle_connection_kb", true),
            ("note_syncs_per_s", false),
            ("relay_cpu_ms_per_sync", false),
        ],
    ),
    (
        "office-nodes",
        &[
            ("pg1_wall_s", false),
            ("pg1_relay_cpu_s", false),
            ("pg2_wall_s", false),
            ("pg2_relay_cpu_s", false),
        ],
    ),
];

/// One parsed `RESULT` line.
#[derive(Debug)]
struct Line {
    linkbook: f64,
    peer: Option<f64>,
    /// `limit=` or `baseline=`, when there is no peer.
    other: Option<f64>,
    ratio: Option<f64>,
}

/// A figure: a finite, non-negative number.
fn number(key: &str, v: &str, line: &str) -> f64 {
    let x: f64 = v
        .parse()
        .unwrap_or_else(|_| panic!("{key}={v} is not a number in: {line}"));
    assert!(
        x.is_finite() && x >= 0.0,
        "{key}={v} is not a sane figure in: {line}"
    );
    x
}

/// `RESULT workload=W figure=F linkbook=N peer=P|- [limit=L|baseline=B] ratio=R|-`,
/// fields in exactly that order.
fn parse(line: &str) -> (String, String, Line) {
    let fields: Vec<&str> = line.split(' ').collect();
    assert_eq!(fields[0], "RESULT", "{line}");
    let kv: Vec<(&str, &str)> = fields[1..]
        .iter()
        .map(|f| {
            f.split_once('=')
                .unwrap_or_else(|| panic!("'{f}' is not key=value in: {line}"))
        })
        .collect();
    let keys: Vec<&str> = kv.iter().map(|(k, _)| *k).collect();
    let has_other = matches!(keys.get(4), Some(&"limit") | Some(&"baseline"));
    let expected: &[&str] = if has_other {
        &["workload", "figure", "linkbook", "peer", keys[4], "ratio"]
    } else {
        &["workload", "figure", "linkbook", "peer", "ratio"]
    };
    assert_eq!(keys, expected, "fields out of order in: {line}");
    let maybe = |k: &str, v: &str| (v != "-").then(|| number(k, v, line));
    let parsed = Line {
        linkbook: number("linkbook", kv[2].1, line),
        peer: maybe("peer", kv[3].1),
        other: has_other.then(|| number(kv[4].0, kv[4].1, line)),
        ratio: maybe("ratio", kv[kv.len() - 1].1),
    };
    if has_other {
        assert!(
            parsed.peer.is_none(),
            "a limit or baseline with a peer: {line}"
        );
    }
    (kv[0].1.to_string(), kv[1].1.to_string(), parsed)
}

#[test]
fn the_fast_tier_reports_every_figure() {
    let bin = workspace_bin("linkbook-bench");
    let stderr_log = tempfile::NamedTempFile::new().expect("stderr log");
    // Its own process group, so a timeout kills the relay and node with it.
    let mut child = Command::new(&bin)
        .arg("--fast")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(stderr_log.reopen().expect("stderr log"))
        .process_group(0)
        .spawn()
        .expect("starting linkbook-bench");
    let mut stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut out = String::new();
        let _ = stdout.read_to_string(&mut out);
        let _ = tx.send(out);
    });
    let stderr = || std::fs::read_to_string(stderr_log.path()).unwrap_or_default();
    let out = match rx.recv_timeout(TIMEOUT) {
        Ok(out) => out,
        Err(_) => {
            let _ = Command::new("kill")
                .args(["-KILL", "--", &format!("-{}", child.id())])
                .status();
            let _ = child.wait();
            panic!(
                "linkbook-bench --fast did not finish within {TIMEOUT:?}; its stderr:\n{}",
                stderr()
            );
        }
    };
    let status = child.wait().expect("waiting for linkbook-bench");
    assert!(
        status.success(),
        "linkbook-bench --fast failed ({status}); stdout:\n{out}\nstderr:\n{}",
        stderr()
    );

    let mut results: BTreeMap<(String, String), Line> = BTreeMap::new();
    for line in out.lines().filter(|l| l.starts_with("RESULT ")) {
        let (workload, figure, parsed) = parse(line);
        let key = (workload, figure);
        assert!(!results.contains_key(&key), "reported twice: {line}");
        results.insert(key, parsed);
    }
    let mut expected_count = 0;
    for (workload, figures) in EXPECTED {
        for (figure, with_peer) in *figures {
            expected_count += 1;
            let key = (workload.to_string(), figure.to_string());
            let Some(l) = results.get(&key) else {
                panic!("no RESULT line for {workload} {figure}; stdout:\n{out}");
            };
            if *with_peer {
                assert!(
                    l.peer.is_some() && l.ratio.is_some(),
                    "{workload} {figure}: the JS peer's figure is missing (see stderr):\n{out}\n{}",
                    stderr()
                );
            }
            if l.other.is_some() {
                assert!(l.ratio.is_some(), "{workload} {figure}: no ratio");
            }
        }
    }
    assert_eq!(
        results.len(),
        expected_count,
        "figures the smoke test does not know (add them to EXPECTED):\n{out}"
    );

    // A few figures that can only be so if the workload really ran.
    let get = |w: &str, f: &str| &results[&(w.to_string(), f.to_string())];
    for (w, f) in [
        ("office-sync", "wall_s"),
        ("office-sync", "server_cpu_s"),
        ("office-sync", "server_peak_rss_mb"),
        ("office-sync", "wire_bytes_per_device"),
        ("fresh-device", "wire_bytes"),
        ("fresh-device", "device_peak_rss_mb"),
        ("latency", "wall_s"),
        ("relay-capacity", "note_syncs_per_s"),
        ("office-nodes", "pg1_wall_s"),
        ("office-nodes", "pg2_relay_cpu_s"),
    ] {
        assert!(get(w, f).linkbook > 0.0, "{w} {f} is zero:\n{out}");
    }
    // Every device did sync, over at least one round trip.
    assert!(get("latency", "round_trips").linkbook >= 1.0, "{out}");
    assert!(
        get("office-sync", "round_trips_per_device").linkbook >= 1.0,
        "{out}"
    );
    // The new tablet got every case file, from both servers.
    let docs = get("fresh-device", "documents");
    assert!(docs.linkbook >= 50.0, "{out}");
    assert_eq!(docs.peer, Some(docs.linkbook), "{out}");
}
