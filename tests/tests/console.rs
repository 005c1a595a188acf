//! Issue 15: the office console in a real browser. Each test starts real
//! relays on 127.0.0.1, makes console accounts with the real
//! `linkbook-server admin add`, and runs a scenario script of
//! `tests/browser/` with node: Debian's Chromium driven by playwright-core
//! (installed by `scripts/install-test-deps` into `tests/npm`), CLI devices
//! (`linkbook`) for the tablets. The script's output is printed when it
//! fails; its screenshots are in `target/console-screenshots/<scenario>/`.
//!
//! The browser scripts run one at a time (a lock), each bounded: the
//! script's own timer, and a kill from here after [`NODE_TIMEOUT`].

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use linkbook_core::DeviceCredentials;
use linkbook_tests::{Relay, closing_error_within, joined, relay_socket, workspace_bin};

/// The longest a scenario script may run before it is killed.
const NODE_TIMEOUT: Duration = Duration::from_secs(170);

/// What the relay says to a revoked device's connection (revocation.rs).
const REVOKED: &str = "this device has been revoked";

/// One Chromium at a time: the machine's cores are shared.
static BROWSER: Mutex<()> = Mutex::new(());

fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

/// `target/` of this build: target/<profile>/deps/<test> -> target.
fn target_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable");
    exe.ancestors().nth(3).expect("target dir").to_path_buf()
}

/// `target/console-screenshots/<scenario>/`, emptied.
fn screenshots(scenario: &str) -> PathBuf {
    let dir = target_dir().join("console-screenshots").join(scenario);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("screenshots dir");
    dir
}

fn prerequisites() {
    let npm = repo_root().join("tests/npm/node_modules");
    for package in ["playwright-core", "axe-core"] {
        assert!(
            npm.join(package).exists(),
            "{package} is not installed: run scripts/install-test-deps (npm install --prefix tests/npm)"
        );
    }
    assert!(
        Path::new("/usr/bin/chromium").exists(),
        "/usr/bin/chromium is missing: run scripts/install-test-deps"
    );
    for tool in ["node", "zbarimg"] {
        let found = Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .output()
            .is_ok_and(|o| o.status.success());
        assert!(found, "{tool} is missing: run scripts/install-test-deps");
    }
}

/// `linkbook-server admin add` for `name` with `role`: the set-up link it
/// prints alone on stdout, with the relay's address (`--server`).
fn add_account(relay: &Relay, name: &str, role: &str) -> String {
    let r = relay.admin(&[
        "admin", "add", "--name", name, "--role", role, "--server", &relay.url,
    ]);
    assert_eq!(r.code, 0, "admin add: {}", r.stderr);
    let link = r.stdout.trim().to_string();
    let token = link
        .strip_prefix(&format!("{}/console/setup/", relay.url))
        .unwrap_or_else(|| panic!("admin add printed {:?}", r.stdout));
    assert!(
        token.len() == 64 && token.bytes().all(|b| b.is_ascii_hexdigit()),
        "the set-up link ends in 64 hex digits: {link}"
    );
    assert_eq!(r.stdout.lines().count(), 1, "the link alone on stdout");
    link
}

/// The environment every scenario gets.
fn base_env(relay: &Relay, work: &Path, shots: &Path) -> Vec<(String, String)> {
    [
        ("RELAY_URL", relay.url.clone()),
        ("RELAY_CA", relay.ca_path().display().to_string()),
        ("RELAY_DATA", relay.data.path().display().to_string()),
        (
            "LINKBOOK_BIN",
            workspace_bin("linkbook").display().to_string(),
        ),
        (
            "LINKBOOK_SERVER_BIN",
            workspace_bin("linkbook-server").display().to_string(),
        ),
        ("WORK_DIR", work.display().to_string()),
        ("SHOTS_DIR", shots.display().to_string()),
        ("SCENARIO_TIMEOUT_MS", "150000".to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect()
}

/// What a scenario script did.
#[derive(Debug)]
struct NodeRun {
    code: Option<i32>,
    output: String,
    took: Duration,
}

/// Runs `tests/browser/<script>` with `env`, bounded by [`NODE_TIMEOUT`];
/// its stdout and stderr go to files in `work` (no pipe to fill).
fn run_node(script: &str, env: &[(String, String)], work: &Path) -> NodeRun {
    let start = Instant::now();
    let out_path = work.join(format!("{script}.out"));
    let out = std::fs::File::create(&out_path).expect("output file");
    let err = out.try_clone().expect("output file");
    let mut child = Command::new("node")
        .arg(repo_root().join("tests/browser").join(script))
        .current_dir(work)
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .env_remove("LINKBOOK_KEY")
        .env_remove("LINKBOOK_DATA")
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn()
        .expect("start node");
    let code = loop {
        if let Some(status) = child.try_wait().expect("wait for node") {
            break status.code();
        }
        if start.elapsed() > NODE_TIMEOUT {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    NodeRun {
        code,
        output: std::fs::read_to_string(&out_path).unwrap_or_default(),
        took: start.elapsed(),
    }
}

/// Asserts the script passed, printing its output either way (and, on a
/// failure, the end of each relay's log).
fn assert_passed(script: &str, run: &NodeRun, relays: &[&Relay]) {
    eprintln!(
        "---- {script} ({:?}, exit {:?}) ----\n{}",
        run.took, run.code, run.output
    );
    if run.code != Some(0) {
        for (i, relay) in relays.iter().enumerate() {
            let log = relay.log();
            let lines: Vec<&str> = log.lines().collect();
            let panics: Vec<String> = lines
                .iter()
                .enumerate()
                .filter(|(_, l)| l.contains("panicked at"))
                .map(|(n, l)| format!("{l} {}", lines.get(n + 1).unwrap_or(&"")))
                .collect();
            let tail = &lines[lines.len().saturating_sub(20)..];
            eprintln!(
                "---- relay {i} ({}): panics ----\n{}\n---- its log's end ----\n{}",
                relay.url,
                panics.join("\n"),
                tail.join("\n")
            );
        }
    }
    assert_eq!(
        run.code,
        Some(0),
        "the browser scenario {script} failed (exit {:?}, None: killed after {NODE_TIMEOUT:?}); its output is above",
        run.code
    );
}

/// The note texts the script wrote (WORK_DIR/secrets.json): none may be in
/// the relay's log.
fn assert_log_holds_no_note(relay: &Relay, work: &Path, links: &[&str]) {
    let secrets: Vec<String> = serde_json::from_str(
        &std::fs::read_to_string(work.join("secrets.json")).expect("secrets.json"),
    )
    .expect("secrets");
    assert!(!secrets.is_empty(), "the scenario wrote notes");
    let log = relay.log();
    for s in &secrets {
        assert!(
            !log.contains(s.as_str()),
            "the relay logged a note's text: {s}"
        );
    }
    for link in links {
        let token = link.rsplit('/').next().expect("token");
        assert!(!log.contains(token), "the relay logged a set-up token");
    }
}

/// A CLI device's id and token, read from its encrypted store with its key
/// file (what a thief who copied the tablet holds).
fn credentials_of(dir: &Path) -> DeviceCredentials {
    let key = std::fs::read_to_string(dir.join("key")).expect("key file");
    let conn = rusqlite::Connection::open(dir.join("linkbook.db")).expect("open");
    conn.execute_batch(&format!("PRAGMA key = \"x'{}'\";", key.trim()))
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
        worker: "Asha".into(),
        directory_id: None,
    }
}

/// Scenarios 1–3 (and 6, 8, 9 for the administrator's pages): set-up and
/// sign-in, enrolment from the Devices page with its QR code decoded from a
/// screenshot, revocation from the page (cutting a live connection held
/// here), and a family day three tablets recorded.
#[test]
fn an_administrator_enrols_revokes_and_reads_a_family_day_in_the_browser() {
    prerequisites();
    let _one = BROWSER.lock().unwrap_or_else(|e| e.into_inner());
    let relay = Relay::start();
    let name = "Amira Office";
    let link = add_account(&relay, name, "administrator");
    let work = tempfile::tempdir().expect("work dir");
    let shots = screenshots("administrator");
    let mut env = base_env(&relay, work.path(), &shots);
    env.push(("ADMIN_LINK".into(), link.clone()));
    env.push(("ADMIN_NAME".into(), name.into()));
    env.push(("LIVE_HANDSHAKE".into(), "1".into()));
    let work_dir = work.path().to_path_buf();
    let node = std::thread::spawn(move || run_node("administrator.mjs", &env, &work_dir));

    // When the script says the first tablet synced, hold a sync connection
    // with its credentials open; the revocation in the browser must cut it.
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let ready = work.path().join("a-ready");
    let live = runtime.block_on(async {
        let waited = Instant::now();
        while !ready.exists() && !node.is_finished() && waited.elapsed() < NODE_TIMEOUT {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        if !ready.exists() {
            return None;
        }
        let dir = PathBuf::from(std::fs::read_to_string(&ready).expect("a-ready"));
        let creds = credentials_of(&dir);
        let mut ws = joined(&relay, &relay.ca_pem(), &creds).await;
        std::fs::write(work.path().join("a-live"), "").expect("a-live");
        let opened = Instant::now();
        // Bounded here without a panic, so that the script's output is
        // shown: 60 s, or 5 s once the script ended.
        let close = closing_error_within(&mut ws, Duration::from_secs(61));
        tokio::pin!(close);
        let mut ended: Option<Instant> = None;
        let error = loop {
            tokio::select! {
                e = &mut close => break e,
                () = tokio::time::sleep(Duration::from_millis(200)) => {
                    if node.is_finished() && ended.is_none() {
                        ended = Some(Instant::now());
                    }
                    if opened.elapsed() > Duration::from_secs(60)
                        || ended.is_some_and(|t| t.elapsed() > Duration::from_secs(5))
                    {
                        break Some("the connection was still open".to_string());
                    }
                }
            }
        };
        Some((creds, error, opened.elapsed()))
    });
    let run = node.join().expect("node thread");
    assert_passed("administrator.mjs", &run, &[&relay]);
    let (creds, error, open_for) = live.expect("the script reached the revocation");
    assert!(
        error.as_deref().is_some_and(|e| e.contains(REVOKED)),
        "the open sync connection of the tablet revoked in the browser was cut with the reason (after {open_for:?}): {error:?}"
    );
    let refused = runtime.block_on(relay_socket(&relay.url, &relay.ca_pem(), &creds.token));
    assert!(
        matches!(&refused, Err(e) if e.starts_with("403")),
        "the revoked token opens nothing: {:?}",
        refused.err()
    );
    assert_log_holds_no_note(&relay, work.path(), &[&link]);
    assert!(!relay.log().contains(&creds.token), "a token was logged");
}

/// Scenario 4: the outcomes report's disclosure control, checked against
/// true counts, with an exhaustive search for recoverable hidden cells.
#[test]
fn the_outcomes_report_hides_small_counts_so_that_none_can_be_worked_out() {
    prerequisites();
    let _one = BROWSER.lock().unwrap_or_else(|e| e.into_inner());
    let relay = Relay::start();
    let name = "Maya Manager";
    let link = add_account(&relay, name, "manager");
    let work = tempfile::tempdir().expect("work dir");
    let shots = screenshots("outcomes");
    let mut env = base_env(&relay, work.path(), &shots);
    env.push(("MANAGER_LINK".into(), link.clone()));
    env.push(("MANAGER_NAME".into(), name.into()));
    let run = run_node("outcomes.mjs", &env, work.path());
    assert_passed("outcomes.mjs", &run, &[&relay]);
    assert_log_holds_no_note(&relay, work.path(), &[&link]);
}

/// Scenario 5: roles, CSRF, the second factor, the sign-in brake, the idle
/// timeout, cookies, CSP.
#[test]
fn roles_csrf_brake_and_idle_timeout_hold_in_the_browser() {
    prerequisites();
    let _one = BROWSER.lock().unwrap_or_else(|e| e.into_inner());
    let relay = Relay::start();
    let brake = Relay::start_with(&[
        "--console-max-failures",
        "3",
        "--console-lockout-secs",
        "60",
    ]);
    let idle = Relay::start_with(&["--console-idle-secs", "3"]);
    let manager = add_account(&relay, "Mo Manager", "manager");
    let admin = add_account(&relay, "Ada Admin", "administrator");
    let braked = add_account(&brake, "Bea Braked", "manager");
    let idler = add_account(&idle, "Ida Idle", "manager");
    let work = tempfile::tempdir().expect("work dir");
    let shots = screenshots("security");
    let mut env = base_env(&relay, work.path(), &shots);
    for (k, v) in [
        ("MANAGER_LINK", manager.as_str()),
        ("MANAGER_NAME", "Mo Manager"),
        ("ADMIN_LINK", admin.as_str()),
        ("ADMIN_NAME", "Ada Admin"),
        ("BRAKE_URL", brake.url.as_str()),
        ("BRAKE_LINK", braked.as_str()),
        ("BRAKE_NAME", "Bea Braked"),
        ("IDLE_URL", idle.url.as_str()),
        ("IDLE_LINK", idler.as_str()),
        ("IDLE_NAME", "Ida Idle"),
    ] {
        env.push((k.into(), v.into()));
    }
    let run = run_node("security.mjs", &env, work.path());
    assert_passed("security.mjs", &run, &[&relay, &brake, &idle]);
    for r in [&relay, &brake, &idle] {
        let log = r.log();
        for password in [
            "orchid-tunnel-pebble-93",
            "copper-willow-stanza-18",
            "saffron-kettle-harbour-55",
            "juniper-anchor-velvet-61",
        ] {
            assert!(!log.contains(password), "a relay logged a password");
        }
    }
}

/// Scenario 7: subject access export, purge through the page, retention,
/// the audit; no note text anywhere but the export.
#[test]
fn data_protection_exports_purges_and_audits_in_the_browser() {
    prerequisites();
    let _one = BROWSER.lock().unwrap_or_else(|e| e.into_inner());
    let relay = Relay::start();
    let name = "Dana Protection";
    let link = add_account(&relay, name, "data-protection");
    let work = tempfile::tempdir().expect("work dir");
    let shots = screenshots("data-protection");
    let mut env = base_env(&relay, work.path(), &shots);
    env.push(("DP_LINK".into(), link.clone()));
    env.push(("DP_NAME".into(), name.into()));
    let run = run_node("data_protection.mjs", &env, work.path());
    assert_passed("data_protection.mjs", &run, &[&relay]);
    assert_log_holds_no_note(&relay, work.path(), &[&link]);
}
