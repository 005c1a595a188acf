//! A relay for tests: a `linkbook-server` process on 127.0.0.1 with a
//! random port (`--listen 127.0.0.1:0`), its own data directory and
//! development certificate, ready once it printed where it listens (no
//! sleeping); its admin commands (enrolment codes) and its database opened
//! from the test. [`spawn_relay`], [`wait_for_line`] and [`enrol_code`] also
//! serve the benchmarks, which run the relay as their own child.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};

use tempfile::TempDir;

use crate::Result;

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

/// What a relay prints on stdout once it accepts connections; the rest of
/// the line is its URL.
pub const LISTENING: &str = "linkbook-server listening on ";

/// Reads `child`'s stdout until a line starting with `prefix`; returns the
/// rest of that line, and keeps draining what the child prints later.
pub fn wait_for_line(child: &mut Child, prefix: &str) -> Result<String> {
    use std::io::BufRead;
    let stdout = child.stdout.take().ok_or("child has no stdout")?;
    let mut lines = std::io::BufReader::new(stdout).lines();
    for line in lines.by_ref() {
        let line = line.map_err(|e| format!("server stdout: {e}"))?;
        if let Some(rest) = line.strip_prefix(prefix) {
            std::thread::spawn(move || lines.for_each(drop));
            return Ok(rest.trim().to_string());
        }
    }
    Err(format!("the server exited before printing '{prefix}'").into())
}

/// Starts `command` (the relay's command line: `linkbook-server`, or a
/// binary that runs it) on `data` at 127.0.0.1 with a random port, extra
/// options `args` after, its stderr appended to `log`; returns the process
/// and its URL once it listens.
pub fn spawn_relay(
    mut command: Command,
    data: &Path,
    args: &[&str],
    log: std::fs::File,
) -> Result<(Child, String)> {
    let mut child = command
        .arg("--data")
        .arg(data)
        .args(["--listen", "127.0.0.1:0"])
        .args(args)
        .stdout(Stdio::piped())
        .stderr(log)
        .spawn()
        .map_err(|e| format!("starting the relay: {e}"))?;
    match wait_for_line(&mut child, LISTENING) {
        Ok(url) => Ok((child, url)),
        Err(e) => {
            let _ = child.kill();
            let _ = child.wait();
            Err(e)
        }
    }
}

/// Copies a relay's development certificate (CA, certificate and key) from
/// data directory `from` to `to`, so that a second relay node serves the
/// same certificate as nodes behind one name do; `fs::copy` keeps their
/// mode (0600).
pub fn copy_dev_certificate(from: &Path, to: &Path) -> std::io::Result<()> {
    for file in ["dev-ca.pem", "dev-cert.pem", "dev-key.pem"] {
        std::fs::copy(from.join(file), to.join(file))?;
    }
    Ok(())
}

/// A fresh one-time enrolment code for `worker` of `team` from the relay's
/// admin command (`admin`: the relay's command line, as for [`spawn_relay`])
/// on data directory `data`.
pub fn enrol_code(mut admin: Command, data: &Path, team: &str, worker: &str) -> Result<String> {
    let out = admin
        .arg("--data")
        .arg(data)
        .args(["device", "enrol", "--team", team, "--worker", worker])
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("enrol: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "the relay's enrol command failed: {}",
            String::from_utf8_lossy(&out.stderr)
        )
        .into());
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// A `linkbook-server` process on 127.0.0.1 with a random port, its own data
/// directory and development certificate. Killed when dropped.
#[derive(Debug)]
pub struct Relay {
    pub data: TempDir,
    pub url: String,
    child: Option<std::process::Child>,
    stderr_log: PathBuf,
    /// `--database-url` (PostgreSQL) the relay and its admin commands use.
    database_url: Option<String>,
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

    /// Starts on an existing data directory with extra options.
    pub fn start_in_with(data: TempDir, args: &[&str]) -> Relay {
        Self::launch(data, args, &[])
    }

    /// Starts on PostgreSQL at `database_url` (its data directory then
    /// holds only the development certificate), with extra options; the
    /// admin commands ([`Relay::admin`], [`Relay::enrol_code`]) use that
    /// database too.
    pub fn start_on_postgres(data: TempDir, database_url: &str, args: &[&str]) -> Relay {
        let mut relay = Self::launch(data, args, &[("LINKBOOK_DATABASE_URL", database_url)]);
        relay.database_url = Some(database_url.to_string());
        relay
    }

    /// Another relay node on this one's PostgreSQL database, with extra
    /// options: its own data directory holding this node's development
    /// certificate (as nodes behind one name share theirs), so a device
    /// enrolled through either syncs through both.
    pub fn another_node(&self, args: &[&str]) -> Relay {
        let url = self
            .database_url
            .as_deref()
            .expect("another node of a relay on PostgreSQL");
        let data = tempfile::tempdir().expect("node dir");
        copy_dev_certificate(self.data.path(), data.path()).expect("the certificate");
        Self::start_on_postgres(data, url, args)
    }

    /// The relay's command line for an admin command: its data directory,
    /// and its database if that is PostgreSQL.
    fn admin_command(&self) -> Command {
        let mut cmd = Command::new(workspace_bin("linkbook-server"));
        if let Some(url) = &self.database_url {
            cmd.env("LINKBOOK_DATABASE_URL", url);
        }
        cmd
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
        let stderr_log = data.path().join("relay.log");
        // Private, as everything in the relay's data directory must be
        // (at_rest.rs checks every file there).
        let mut log = std::fs::OpenOptions::new();
        log.create(true).append(true);
        std::os::unix::fs::OpenOptionsExt::mode(&mut log, 0o600);
        let log = log.open(&stderr_log).expect("log file");
        command.envs(env.iter().copied());
        let (child, url) = spawn_relay(command, data.path(), args, log).unwrap_or_else(|e| {
            panic!(
                "relay did not start ({e}): {}",
                std::fs::read_to_string(&stderr_log).unwrap_or_default()
            )
        });
        Relay {
            data,
            url,
            child: Some(child),
            stderr_log,
            database_url: None,
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
        self.admin_command()
            .arg("--data")
            .arg(self.data.path())
            .args(args)
            .output()
            .expect("run linkbook-server")
            .into()
    }

    /// A fresh one-time enrolment code.
    pub fn enrol_code(&self, team: &str, worker: &str) -> String {
        enrol_code(self.admin_command(), self.data.path(), team, worker)
            .unwrap_or_else(|e| panic!("enrol failed: {e}"))
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

    /// Asks the process to stop (SIGTERM) and waits at most `within` for it
    /// (then kills it): how it exited and how long it took, and its data
    /// directory for a restart.
    pub fn terminate(
        mut self,
        within: std::time::Duration,
    ) -> (
        Option<std::process::ExitStatus>,
        std::time::Duration,
        TempDir,
    ) {
        let mut result = (None, std::time::Duration::ZERO);
        if let Some(mut child) = self.child.take() {
            let asked = std::time::Instant::now();
            let _ = Command::new("kill")
                .arg("-TERM")
                .arg(child.id().to_string())
                .status();
            while asked.elapsed() < within {
                if let Ok(Some(status)) = child.try_wait() {
                    result = (Some(status), asked.elapsed());
                    break;
                }
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            if result.0.is_none() {
                let _ = child.kill();
                let _ = child.wait();
                result.1 = asked.elapsed();
            }
        }
        let data = tempfile::tempdir().expect("placeholder");
        (result.0, result.1, std::mem::replace(&mut self.data, data))
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
        // The erasure ledger lives beside the data directory (outside it),
        // so the temp directory's removal would leave it behind.
        let _ = std::fs::remove_file(erasure_ledger_of(self.data.path()));
    }
}

/// The default erasure ledger of data directory `data`: `<data>.erasures`
/// beside it (`linkbook_server::erasure_ledger::ErasureLedger::beside`).
pub fn erasure_ledger_of(data: &Path) -> PathBuf {
    let mut name = data.file_name().unwrap_or_default().to_os_string();
    name.push(".erasures");
    data.with_file_name(name)
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
