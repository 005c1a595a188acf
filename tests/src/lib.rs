//! Shared helpers for Linkbook's end-to-end tests: devices as real `linkbook`
//! processes over real data directories in temp dirs.
//!
//! The tests run the `linkbook` binary built next to them
//! (`target/<profile>/linkbook`), so the test command builds the binaries
//! first: `cargo build --workspace && cargo test --workspace`.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use tempfile::TempDir;

pub mod pages;

/// A binary of this build (`linkbook`, `linkbook-server`).
pub fn workspace_bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    // target/<profile>/deps/<test> -> target/<profile>/<name>
    let dir = exe.parent().and_then(Path::parent).expect("target dir");
    let bin = dir.join(format!("{name}{}", std::env::consts::EXE_SUFFIX));
    assert!(
        bin.exists(),
        "{} is missing: build it first (cargo build --workspace)",
        bin.display()
    );
    bin
}

/// The `linkbook` binary of this build.
pub fn linkbook_bin() -> PathBuf {
    workspace_bin("linkbook")
}

/// A `linkbook-server` process on 127.0.0.1 with a random port, its own data
/// directory and development certificate. Killed when dropped.
#[derive(Debug)]
pub struct Relay {
    pub data: TempDir,
    pub url: String,
    child: Option<std::process::Child>,
    stderr_log: PathBuf,
}

impl Relay {
    pub fn start() -> Relay {
        Self::start_with(&[])
    }

    /// Starts with extra command-line options (limits).
    pub fn start_with(args: &[&str]) -> Relay {
        let data = tempfile::tempdir().expect("relay dir");
        Self::launch(data, args, &[])
    }

    /// Starts with environment variables set (e.g. `RUST_LOG`).
    pub fn start_with_env(env: &[(&str, &str)]) -> Relay {
        let data = tempfile::tempdir().expect("relay dir");
        Self::launch(data, &[], env)
    }

    /// Starts on an existing data directory (a restart).
    pub fn start_in(data: TempDir) -> Relay {
        Self::launch(data, &[], &[])
    }

    /// Starts on `data` so that a file size limit set later with
    /// [`Relay::limit_file_size`] makes its writes fail as on a full disk.
    ///
    /// Why a file size limit (RLIMIT_FSIZE): it needs no privileges, so it
    /// works the same on a developer's machine and in a CI container, where
    /// mounting a small tmpfs is usually not allowed, and chmod does not stop
    /// root (the tests may run as root). A write that would grow a file past
    /// the limit fails with EFBIG, which SQLite reports as an I/O error
    /// where a full disk (ENOSPC) is SQLITE_FULL: the same write path fails,
    /// the transaction is rolled back the same way. The process would get
    /// SIGXFSZ (and die) as well, so the relay runs under `sh` that ignores
    /// it and then execs it (an ignored signal stays ignored across exec;
    /// no unsafe code: the workspace forbids it).
    pub fn start_fillable(data: TempDir) -> Relay {
        let mut cmd = Command::new("sh");
        cmd.arg("-c")
            .arg(r#"trap '' XFSZ; exec "$0" "$@""#)
            .arg(workspace_bin("linkbook-server"));
        Self::launch_command(data, &[], &[], cmd)
    }

    fn launch(data: TempDir, args: &[&str], env: &[(&str, &str)]) -> Relay {
        Self::launch_command(
            data,
            args,
            env,
            Command::new(workspace_bin("linkbook-server")),
        )
    }

    fn launch_command(
        data: TempDir,
        args: &[&str],
        env: &[(&str, &str)],
        mut command: Command,
    ) -> Relay {
        use std::io::BufRead;
        let stderr_log = data.path().join("relay.log");
        // Private, as everything in the relay's data directory must be
        // (at_rest.rs checks every file there).
        let mut log = std::fs::OpenOptions::new();
        log.create(true).append(true);
        std::os::unix::fs::OpenOptionsExt::mode(&mut log, 0o600);
        let log = log.open(&stderr_log).expect("log file");
        let mut child = command
            .arg("--data")
            .arg(data.path())
            .args(["--listen", "127.0.0.1:0"])
            .args(args)
            .envs(env.iter().copied())
            .stdout(std::process::Stdio::piped())
            .stderr(log)
            .spawn()
            .expect("start linkbook-server");
        // Ready when it prints where it listens (no sleeping).
        let stdout = child.stdout.take().expect("stdout");
        let mut lines = std::io::BufReader::new(stdout).lines();
        let mut url = None;
        for line in lines.by_ref() {
            let line = line.expect("relay stdout");
            if let Some(rest) = line.strip_prefix("linkbook-server listening on ") {
                url = Some(rest.trim().to_string());
                break;
            }
        }
        // Keep draining what it prints later.
        std::thread::spawn(move || lines.for_each(drop));
        let url = url.unwrap_or_else(|| {
            panic!(
                "relay did not start: {}",
                std::fs::read_to_string(&stderr_log).unwrap_or_default()
            )
        });
        Relay {
            data,
            url,
            child: Some(child),
            stderr_log,
        }
    }

    /// host:port the relay listens on.
    pub fn addr(&self) -> std::net::SocketAddr {
        self.url
            .trim_start_matches("https://")
            .parse()
            .expect("relay address")
    }

    /// The development CA devices trust.
    pub fn ca_pem(&self) -> String {
        std::fs::read_to_string(self.data.path().join("dev-ca.pem")).expect("dev-ca.pem")
    }

    pub fn ca_path(&self) -> PathBuf {
        self.data.path().join("dev-ca.pem")
    }

    /// Runs an admin command against this relay's data directory.
    pub fn admin(&self, args: &[&str]) -> Run {
        Command::new(workspace_bin("linkbook-server"))
            .arg("--data")
            .arg(self.data.path())
            .args(args)
            .output()
            .expect("run linkbook-server")
            .into()
    }

    /// A fresh one-time enrolment code.
    pub fn enrol_code(&self, team: &str, worker: &str) -> String {
        let r = self.admin(&["device", "enrol", "--team", team, "--worker", worker]);
        assert_eq!(r.code, 0, "enrol failed: {}", r.stderr);
        r.stdout.trim().to_string()
    }

    /// A device of `team` enrolled through the relay's real enrolment (a
    /// one-time code exchanged for a token), as raw credentials: what a
    /// second program speaking the protocol with a device's token holds.
    /// Blocking (call it through `block_in_place` in async tests).
    pub fn enrol_credentials(
        &self,
        team: &str,
        worker: &str,
        device_name: &str,
    ) -> linkbook_core::DeviceCredentials {
        let code = self.enrol_code(team, worker);
        linkbook_core::enrol_device(&self.url, &code, Some(&self.ca_pem()), device_name)
            .expect("enrol")
    }

    /// What the relay logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.stderr_log).unwrap_or_default()
    }

    /// The relay's process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).expect("relay running")
    }

    /// The relay's SQLite database.
    pub fn db_path(&self) -> PathBuf {
        self.data.path().join("relay.db")
    }

    /// `PRAGMA integrity_check` of the relay's database, read from this
    /// process (SQLite's locking makes that safe while the relay runs).
    pub fn integrity_check(&self) -> String {
        relay_integrity_check(&self.db_path())
    }

    /// The relay database's key: `relay.key` in its data directory (64 hex).
    pub fn key(&self) -> String {
        relay_key(self.data.path())
    }

    /// The relay's database, opened and keyed from this process.
    pub fn db(&self) -> rusqlite::Connection {
        relay_db(self.data.path())
    }

    /// Starts with `command` as the program (e.g. `sh -c 'umask 022; exec
    /// "$0" "$@"'` around the relay), extra options and environment.
    pub fn start_command(
        data: TempDir,
        args: &[&str],
        env: &[(&str, &str)],
        command: Command,
    ) -> Relay {
        Self::launch_command(data, args, env, command)
    }

    /// Applies util-linux `prlimit` limits (`--as=…`, `--nofile=…`) to the
    /// relay process.
    pub fn prlimit(&self, limits: &[&str]) {
        let status = Command::new("prlimit")
            .arg("--pid")
            .arg(self.pid().to_string())
            .args(limits)
            .status()
            .expect("run prlimit (util-linux)");
        assert!(status.success(), "prlimit {limits:?} failed");
    }

    /// Caps the relay's address space at 3 GB: a test that feeds it hostile
    /// bytes and fails cannot take the machine down.
    pub fn cap_memory(&self) {
        self.prlimit(&["--as=3000000000"]);
    }

    /// Sets (`Some(bytes)`) or lifts (`None`) the relay process's file size
    /// limit, its soft RLIMIT_FSIZE, with util-linux `prlimit` (see
    /// [`Relay::start_fillable`]; only the soft limit, so no privileges).
    pub fn limit_file_size(&self, bytes: Option<u64>) {
        let limit = bytes.map_or("unlimited".to_string(), |b| b.to_string());
        let status = Command::new("prlimit")
            .arg("--pid")
            .arg(self.pid().to_string())
            .arg(format!("--fsize={limit}:"))
            .status()
            .expect("run prlimit (util-linux)");
        assert!(status.success(), "prlimit --fsize={limit}: failed");
    }

    /// Kills the process with SIGKILL (a crash: nothing of a graceful
    /// shutdown runs), waits for it, and hands back its data directory.
    pub fn kill(mut self) -> TempDir {
        if let Some(mut child) = self.child.take() {
            child.kill().expect("SIGKILL the relay");
            let _ = child.wait();
        }
        let data = tempfile::tempdir().expect("placeholder");
        std::mem::replace(&mut self.data, data)
    }

    /// Stops the process (SIGTERM, then waits) and hands back its data
    /// directory for a restart.
    pub fn stop(mut self) -> TempDir {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill")
                .arg("-TERM")
                .arg(child.id().to_string())
                .status();
            let _ = child.wait();
        }
        let data = tempfile::tempdir().expect("placeholder");
        std::mem::replace(&mut self.data, data)
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// `PRAGMA integrity_check` of a relay database file ("ok" when sound),
/// keyed with the `relay.key` beside it.
pub fn relay_integrity_check(db: &Path) -> String {
    let data = db.parent().expect("the relay database's directory");
    open_keyed(db, &relay_key(data))
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .expect("integrity_check")
}

/// The key of the relay database in data directory `data` (running or
/// stopped): `relay.key`, 64 hex characters.
pub fn relay_key(data: &Path) -> String {
    let key = std::fs::read_to_string(data.join("relay.key")).expect("relay.key");
    assert!(
        key.len() == 64 && key.bytes().all(|b| b.is_ascii_hexdigit()),
        "relay.key holds 64 hex characters"
    );
    key
}

/// The relay database in data directory `data`, keyed as the relay keys
/// it (SQLCipher 4 defaults, `PRAGMA key = "x'<hex>'"`): the one way the
/// tests open it.
pub fn relay_db(data: &Path) -> rusqlite::Connection {
    open_keyed(&data.join("relay.db"), &relay_key(data))
}

/// `db` opened read-write (never created) and keyed with `hex_key`.
pub fn open_keyed(db: &Path, hex_key: &str) -> rusqlite::Connection {
    let conn =
        rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_WRITE)
            .expect("open the relay database");
    conn.execute_batch(&format!(
        "PRAGMA cipher_log_level = NONE; PRAGMA key = \"x'{hex_key}'\";"
    ))
    .expect("key the relay database");
    conn.busy_timeout(std::time::Duration::from_secs(10))
        .expect("busy timeout");
    conn
}

/// A Linkbook device store (core `Repo`) in its own temp directory.
#[derive(Debug)]
pub struct Device {
    pub repo: linkbook_core::Repo,
    /// The store's raw SQLCipher key (erasure tests decrypt its pages).
    pub key: [u8; 32],
    _dir: TempDir,
}

impl Device {
    /// A new, unenrolled device with a fresh key.
    pub fn new() -> Device {
        let dir = tempfile::tempdir().expect("device dir");
        let key = linkbook_core::DatabaseKey::generate();
        let repo = linkbook_core::Repo::open(dir.path().join("linkbook.db"), &key)
            .expect("open device store");
        Device {
            repo,
            key: key.to_bytes(),
            _dir: dir,
        }
    }

    /// A new device enrolled with `relay` as `worker` of `team`.
    pub fn enrolled(relay: &Relay, team: &str, worker: &str) -> Device {
        let d = Device::new();
        let code = relay.enrol_code(team, worker);
        let e = d
            .repo
            .enrol(
                &relay.url,
                &code,
                Some(&relay.ca_pem()),
                &format!("{worker}'s tablet"),
            )
            .expect("enrol");
        assert_eq!(e.team, team);
        d
    }
}

impl Default for Device {
    fn default() -> Self {
        Device::new()
    }
}

impl std::ops::Deref for Device {
    type Target = linkbook_core::Repo;
    fn deref(&self) -> &linkbook_core::Repo {
        &self.repo
    }
}

/// A good device of `team` with one family of its own: between and during
/// attacks it writes a note and syncs it, as a worker would.
#[derive(Debug)]
pub struct GoodDevice {
    pub device: Device,
    pub family: linkbook_core::DocumentId,
    notes: usize,
}

impl GoodDevice {
    /// Enrols `worker`'s device in `team` and writes its family (not synced yet).
    pub fn enrolled(relay: &Relay, team: &str, worker: &str) -> GoodDevice {
        let device = Device::enrolled(relay, team, worker);
        let family = device
            .add_family(&linkbook_core::NewFamily {
                name: "Smith".into(),
                ..Default::default()
            })
            .expect("family");
        GoodDevice {
            device,
            family,
            notes: 0,
        }
    }

    /// Writes a new note and syncs it; panics naming `what` unless the sync
    /// succeeds and sends the family. Returns how long the sync took. Runs
    /// under `block_in_place`, so call it from a multi-thread tokio test.
    pub fn note_and_sync(&mut self, what: &str) -> std::time::Duration {
        self.notes += 1;
        self.device
            .add_note(
                self.family,
                &format!("note {}", self.notes),
                linkbook_core::NoteCategory::Other,
            )
            .expect("note");
        let start = std::time::Instant::now();
        let s = tokio::task::block_in_place(|| self.device.sync(None))
            .unwrap_or_else(|e| panic!("the good device syncs {what}: {e}"));
        assert!(
            s.documents_sent >= 1,
            "the good device sent its note {what}"
        );
        start.elapsed()
    }
}

impl std::ops::Deref for GoodDevice {
    type Target = Device;
    fn deref(&self) -> &Device {
        &self.device
    }
}

/// A `kB` figure of `/proc/<pid>/status` (`VmHWM`, `VmRSS`...), 0 if unreadable.
pub fn proc_status_kb(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// User + system CPU of process `pid`, in clock ticks (1/100 s on Linux).
pub fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may hold spaces): utime, stime.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let field = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<u64>().ok())
            .unwrap_or(0)
    };
    field(11) + field(12)
}

/// Text of `len` characters from `alphabet` that does not compress
/// (Automerge deflates big changes), so sizes are what they seem.
pub fn noise(len: usize, seed: u64, alphabet: &[char]) -> String {
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

/// Letters, space and punctuation: an alphabet for [`noise`] like prose.
pub fn letters() -> Vec<char> {
    ('a'..='z')
        .chain('A'..='Z')
        .chain([' ', '.', ','])
        .collect()
}

/// The replayed fuzz crashers of one folder of `tests/fuzz-crashers/`
/// (`automerge-load`, `automerge-sync`, `protocol`), by file name, sorted.
pub fn fuzz_crashers(folder: &str) -> Vec<(String, Vec<u8>)> {
    let dir = format!("{}/fuzz-crashers/{folder}", env!("CARGO_MANIFEST_DIR"));
    let mut all: Vec<_> = std::fs::read_dir(dir)
        .expect("crasher folder")
        .flatten()
        .map(|f| {
            let name = f.file_name().to_string_lossy().into_owned();
            (name, std::fs::read(f.path()).expect("crasher"))
        })
        .collect();
    all.sort();
    assert!(!all.is_empty(), "{folder} is empty");
    all
}

/// The crashers of Automerge's loader, the 4 GiB allocation among them.
pub fn automerge_crashers() -> Vec<(String, Vec<u8>)> {
    let all = fuzz_crashers("automerge-load");
    assert!(all.iter().any(|(n, _)| n.starts_with("oom-167")));
    all
}

/// An Automerge sync message carrying `chunk` as its changes, in the V1 or
/// V2 (whole document) form.
pub fn sync_carrying(chunk: &[u8], version: automerge::sync::MessageVersion) -> Vec<u8> {
    automerge::sync::Message {
        heads: Vec::new(),
        need: Vec::new(),
        have: Vec::new(),
        changes: vec![chunk.to_vec()].into(),
        flags: None,
        version,
    }
    .encode()
}

/// How long a raw-protocol test waits for one frame to go or come.
pub const FRAME_WAIT: std::time::Duration = std::time::Duration::from_secs(15);

/// Sends one protocol message on a raw relay socket, within [`FRAME_WAIT`].
pub async fn send_message(ws: &mut RelaySocket, m: linkbook_core::protocol::Message) {
    use futures_util::SinkExt;
    use tokio_tungstenite::tungstenite::Message as WsMessage;
    tokio::time::timeout(FRAME_WAIT, ws.send(WsMessage::Binary(m.encode().into())))
        .await
        .expect("sent in time")
        .expect("send");
}

/// The next protocol message from the relay (pings skipped), each frame
/// within [`FRAME_WAIT`].
pub async fn next_message(ws: &mut RelaySocket) -> linkbook_core::protocol::Message {
    use futures_util::StreamExt;
    use tokio_tungstenite::tungstenite::Message as WsMessage;
    loop {
        let frame = tokio::time::timeout(FRAME_WAIT, ws.next())
            .await
            .expect("an answer in time")
            .expect("open")
            .expect("frame");
        if let WsMessage::Binary(b) = frame {
            return linkbook_core::protocol::Message::decode(&b).expect("a protocol message");
        }
    }
}

/// A `sync` (or, with `request`, a `request`) from device `me` to the relay
/// for document `doc`.
pub fn sync_or_request(
    me: &str,
    doc: &str,
    request: bool,
    data: &[u8],
) -> linkbook_core::protocol::Message {
    use linkbook_core::protocol::Message;
    let (sender_id, target_id, document_id, data) = (
        me.to_string(),
        "relay".to_string(),
        doc.to_string(),
        data.to_vec(),
    );
    if request {
        Message::Request {
            sender_id,
            target_id,
            document_id,
            data,
        }
    } else {
        Message::Sync {
            sender_id,
            target_id,
            document_id,
            data,
        }
    }
}

/// Sends one message for `doc` and returns the relay's answer with the
/// document id blanked, so answers for two ids compare byte for byte.
pub async fn answer_without_document_id(
    ws: &mut RelaySocket,
    me: &str,
    doc: &str,
    request: bool,
    data: &[u8],
) -> Vec<u8> {
    send_message(ws, sync_or_request(me, doc, request, data)).await;
    without_document_id(next_message(ws).await)
}

/// A relay's answer with its document id blanked, so that answers for two
/// ids compare byte for byte (the existence-oracle tests).
pub fn without_document_id(m: linkbook_core::protocol::Message) -> Vec<u8> {
    use linkbook_core::protocol::Message;
    match m {
        Message::Sync {
            sender_id,
            target_id,
            data,
            ..
        } => Message::Sync {
            sender_id,
            target_id,
            data,
            document_id: String::new(),
        },
        Message::DocUnavailable {
            sender_id,
            target_id,
            ..
        } => Message::DocUnavailable {
            sender_id,
            target_id,
            document_id: String::new(),
        },
        other => panic!("unexpected answer {other:?}"),
    }
    .encode()
}

/// A device: a data directory driven through the `linkbook` CLI.
#[derive(Debug)]
pub struct CliDevice {
    pub dir: TempDir,
    /// `LINKBOOK_KEY` passed to every command; `None` lets the CLI use (and
    /// create) the key file in the data directory.
    pub key: Option<String>,
}

/// What a finished command printed.
#[derive(Debug)]
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl From<Output> for Run {
    fn from(o: Output) -> Self {
        Run {
            code: o.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        }
    }
}

impl CliDevice {
    /// A new device with its own key, named `worker`.
    pub fn new(worker: &str) -> Self {
        let key: [u8; 32] = rand::random();
        let d = CliDevice {
            dir: tempfile::tempdir().expect("temp dir"),
            key: Some(hex::encode(key)),
        };
        d.ok(&["profile", "set", "--worker", worker]);
        d
    }

    pub fn data(&self) -> &Path {
        self.dir.path()
    }

    pub fn db_path(&self) -> PathBuf {
        self.data().join("linkbook.db")
    }

    /// A `linkbook --data DIR` command, ready to run.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(linkbook_bin());
        cmd.arg("--data").arg(self.data()).args(args);
        cmd.env_remove("LINKBOOK_KEY").env_remove("LINKBOOK_DATA");
        if let Some(key) = &self.key {
            cmd.env("LINKBOOK_KEY", key);
        }
        cmd
    }

    pub fn run(&self, args: &[&str]) -> Run {
        self.command(args).output().expect("run linkbook").into()
    }

    /// Runs a command that must succeed; returns its stdout, trimmed.
    pub fn ok(&self, args: &[&str]) -> String {
        let r = self.run(args);
        assert_eq!(r.code, 0, "linkbook {args:?} failed: {}", r.stderr);
        r.stdout.trim().to_string()
    }

    /// Enrols this profile with `relay` for `worker` of `team` through
    /// `linkbook enrol` (a fresh code, the relay's development CA); returns
    /// its stdout.
    pub fn enrol(&self, relay: &Relay, team: &str, worker: &str) -> String {
        let code = relay.enrol_code(team, worker);
        let ca = relay.ca_path();
        self.ok(&[
            "enrol",
            "--server",
            &relay.url,
            "--code",
            &code,
            "--ca",
            ca.to_str().expect("path"),
        ])
    }

    /// Runs a `--json` command; returns the parsed document.
    pub fn json(&self, args: &[&str]) -> serde_json::Value {
        let mut all = args.to_vec();
        all.push("--json");
        let out = self.ok(&all);
        serde_json::from_str(&out)
            .unwrap_or_else(|e| panic!("linkbook {all:?} printed no JSON ({e}): {out}"))
    }

    /// `PRAGMA integrity_check` of the device's database, opened with its key.
    pub fn integrity_check(&self) -> String {
        let key = self.key.clone().unwrap_or_else(|| {
            std::fs::read_to_string(self.data().join("key"))
                .expect("key file")
                .trim()
                .to_string()
        });
        let conn = rusqlite::Connection::open(self.db_path()).expect("open db");
        conn.execute_batch(&format!("PRAGMA key = \"x'{key}'\";"))
            .expect("key");
        conn.query_row("PRAGMA integrity_check", [], |r| r.get(0))
            .expect("integrity_check")
    }
}

/// A TCP proxy on 127.0.0.1 in front of `target` that cuts every connection
/// once `cut_after` bytes have passed (both directions counted): a network
/// that drops in the middle of a sync. Stops when dropped.
#[derive(Debug)]
pub struct CutProxy {
    pub addr: std::net::SocketAddr,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl CutProxy {
    pub fn start(target: std::net::SocketAddr, cut_after: usize) -> CutProxy {
        use std::net::{Shutdown, TcpListener, TcpStream};
        use std::sync::Arc;
        use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
        let listener = TcpListener::bind("127.0.0.1:0").expect("proxy bind");
        let addr = listener.local_addr().expect("proxy addr");
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = stop.clone();
        std::thread::spawn(move || {
            for client in listener.incoming() {
                if stopping.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(client) = client else { continue };
                let Ok(server) = TcpStream::connect(target) else {
                    continue;
                };
                let passed = Arc::new(AtomicUsize::new(0));
                for (mut from, mut to) in [
                    (
                        client.try_clone().expect("clone"),
                        server.try_clone().expect("clone"),
                    ),
                    (server, client),
                ] {
                    let passed = passed.clone();
                    std::thread::spawn(move || {
                        use std::io::{Read, Write};
                        let mut buf = [0u8; 4096];
                        loop {
                            let n = match from.read(&mut buf) {
                                Ok(0) | Err(_) => break,
                                Ok(n) => n,
                            };
                            let before = passed.fetch_add(n, Ordering::SeqCst);
                            let allowed = cut_after.saturating_sub(before).min(n);
                            if allowed > 0 && to.write_all(&buf[..allowed]).is_err() {
                                break;
                            }
                            if allowed < n {
                                break; // the cut
                            }
                        }
                        let _ = from.shutdown(Shutdown::Both);
                        let _ = to.shutdown(Shutdown::Both);
                    });
                }
            }
        });
        CutProxy { addr, stop }
    }

    /// `https://127.0.0.1:PORT` of the proxy.
    pub fn url(&self) -> String {
        format!("https://{}", self.addr)
    }
}

impl Drop for CutProxy {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        // Wake the accept loop so it sees the flag.
        let _ = std::net::TcpStream::connect(self.addr);
    }
}

/// A WebSocket to the relay's sync endpoint over rustls, trusting `ca_pem`.
pub type RelaySocket =
    tokio_tungstenite::WebSocketStream<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>;

/// Opens the sync WebSocket by hand (as any automerge-repo peer would), with
/// `token` as bearer credentials; the error is the relay's refusal.
pub async fn relay_socket(
    relay_url: &str,
    ca_pem: &str,
    token: &str,
) -> Result<RelaySocket, String> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, ServerName};
    use std::sync::Arc;
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots
            .add(cert.map_err(|e| e.to_string())?)
            .map_err(|e| e.to_string())?;
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| e.to_string())?
    .with_root_certificates(roots)
    .with_no_client_auth();
    let addr = relay_url.trim_start_matches("https://");
    let (host, port) = addr.rsplit_once(':').ok_or("no port")?;
    let port: u16 = port.parse().map_err(|_| "bad port")?;
    let tcp = tokio::net::TcpStream::connect((host, port))
        .await
        .map_err(|e| e.to_string())?;
    let name = ServerName::try_from(host.to_string()).map_err(|e| e.to_string())?;
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
        .map_err(|e| e.to_string())?;
    let mut request = format!("wss://{addr}/v1/sync")
        .into_client_request()
        .map_err(|e| e.to_string())?;
    request.headers_mut().insert(
        "Authorization",
        format!("Bearer {token}").parse().map_err(|_| "bad token")?,
    );
    match tokio_tungstenite::client_async(request, tls).await {
        Ok((ws, _)) => Ok(ws),
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => Err(format!(
            "{} {}",
            resp.status().as_u16(),
            String::from_utf8_lossy(resp.body().as_deref().unwrap_or_default())
        )),
        Err(e) => Err(e.to_string()),
    }
}

/// A raw socket that has joined as the enrolled device `creds` (its `peer`
/// answer read): what an automerge-repo peer with a copied token holds.
pub async fn joined(
    relay: &Relay,
    ca_pem: &str,
    creds: &linkbook_core::DeviceCredentials,
) -> RelaySocket {
    use futures_util::{SinkExt, StreamExt};
    use linkbook_core::protocol::{Message, PeerMetadata};
    use tokio_tungstenite::tungstenite::Message as WsMessage;
    let wait = std::time::Duration::from_secs(10);
    let mut ws = tokio::time::timeout(wait, relay_socket(&relay.url, ca_pem, &creds.token))
        .await
        .expect("connect in time")
        .expect("connect");
    let join = Message::Join {
        sender_id: creds.device_id.clone(),
        peer_metadata: PeerMetadata::default(),
        supported_protocol_versions: vec!["1".into()],
    };
    ws.send(WsMessage::Binary(join.encode().into()))
        .await
        .expect("join");
    match tokio::time::timeout(wait, ws.next())
        .await
        .expect("peer in time")
    {
        Some(Ok(WsMessage::Binary(b))) => {
            assert!(matches!(Message::decode(&b), Ok(Message::Peer { .. })))
        }
        other => panic!("expected peer, got {other:?}"),
    }
    ws
}

/// Reads until the relay closes the socket (within 15 s); returns the
/// `error` message it sent before closing, if any.
pub async fn closing_error(ws: &mut RelaySocket) -> Option<String> {
    closing_error_within(ws, std::time::Duration::from_secs(15)).await
}

/// [`closing_error`] with its own bound: panics if the socket stays open
/// `within` (pings are answered on the way, as a live device does).
pub async fn closing_error_within(
    ws: &mut RelaySocket,
    within: std::time::Duration,
) -> Option<String> {
    use futures_util::StreamExt;
    use linkbook_core::protocol::Message;
    use tokio_tungstenite::tungstenite::Message as WsMessage;
    let mut error = None;
    let read = async {
        while let Some(frame) = ws.next().await {
            match frame {
                Ok(WsMessage::Binary(b)) => {
                    if let Ok(Message::Error { message }) = Message::decode(&b) {
                        error = Some(message);
                    }
                }
                Ok(WsMessage::Close(_)) | Err(_) => break,
                Ok(_) => {}
            }
        }
    };
    tokio::time::timeout(within, read)
        .await
        .expect("the relay closed the connection in time");
    error
}
