//! A throwaway PostgreSQL cluster for tests (issue 14): `initdb` in a temp
//! dir, the server on 127.0.0.1 and a random port with its socket in that
//! dir, trust authentication for the user `linkbook` (nothing outside this
//! machine's loopback can reach it), stopped on drop. Each test takes its
//! own database ([`Cluster::fresh_database`]).
//!
//! The binaries are Debian's (`apt-get install postgresql`:
//! `/usr/lib/postgresql/<version>/bin`, the newest found) or the folder in
//! `LINKBOOK_PG_BIN`. PostgreSQL refuses to run as root, so as root the
//! cluster runs as the `postgres` system user the package creates.
//! `fsync` is off: what is tested is the relay's use of the database, not
//! PostgreSQL's own durability (a relay node killed mid-sync is a relay
//! process, and the database goes on).

use std::path::PathBuf;
use std::process::{Command, Output};

/// A running throwaway cluster; stopped (and its files removed) on drop.
#[derive(Debug)]
pub struct Cluster {
    dir: tempfile::TempDir,
    bin: PathBuf,
    port: u16,
    run_as: Option<&'static str>,
}

/// The user the tests connect as.
pub const USER: &str = "linkbook";

impl Cluster {
    /// Starts a cluster; panics with what to install if PostgreSQL is
    /// missing (the tests need it: `.ci/run` installs it).
    pub fn start() -> Cluster {
        Self::start_with(false)
    }

    /// Starts a cluster that fsyncs its commits as a production database
    /// does (`fsync`, `synchronous_commit` and `full_page_writes` on): for
    /// the benchmark, whose SQLite relay fsyncs too. The tests' clusters
    /// skip them (nothing there survives a power cut anyway).
    pub fn start_durable() -> Cluster {
        Self::start_with(true)
    }

    /// Whether PostgreSQL's programs are installed (for callers that can
    /// go on without it: the benchmark).
    pub fn available() -> bool {
        bin_dir().is_some()
    }

    /// The postmaster's process id (its children serve the connections).
    pub fn postmaster_pid(&self) -> Option<u32> {
        std::fs::read_to_string(self.dir.path().join("data").join("postmaster.pid"))
            .ok()?
            .lines()
            .next()?
            .trim()
            .parse()
            .ok()
    }

    fn start_with(durable: bool) -> Cluster {
        let bin = bin_dir().unwrap_or_else(|| {
            panic!(
                "PostgreSQL is not installed: apt-get install postgresql (or set LINKBOOK_PG_BIN to the folder holding initdb and pg_ctl)"
            )
        });
        let run_as = is_root().then_some("postgres");
        let dir = tempfile::Builder::new()
            .prefix("linkbook-pg-")
            .tempdir()
            .expect("temp dir");
        if let Some(user) = run_as {
            let chown = Command::new("chown")
                .arg(user)
                .arg(dir.path())
                .status()
                .expect("chown");
            assert!(
                chown.success(),
                "chown {user} {}: is Debian's postgresql installed (it creates the user)?",
                dir.path().display()
            );
        }
        let data = dir.path().join("data");
        let mut cluster = Cluster {
            dir,
            bin,
            port: 0,
            run_as,
        };
        let out = cluster.run(
            "initdb",
            &[
                "-D".as_ref(),
                data.as_os_str(),
                "-U".as_ref(),
                USER.as_ref(),
                "--auth=trust".as_ref(),
                "--encoding=UTF8".as_ref(),
                "--locale=C".as_ref(),
                "--no-sync".as_ref(),
            ],
        );
        assert!(out.status.success(), "initdb failed: {}", text(&out));
        // A port free a moment ago can be taken meanwhile: try a few.
        for _ in 0..5 {
            cluster.port = free_port();
            let durability = if durable {
                ""
            } else {
                " -c fsync=off -c synchronous_commit=off -c full_page_writes=off"
            };
            let options = format!(
                "-p {} -k {} -c listen_addresses=127.0.0.1{durability} -c max_connections=200",
                cluster.port,
                cluster.dir.path().display()
            );
            let log = cluster.dir.path().join("server.log");
            let out = cluster.run(
                "pg_ctl",
                &[
                    "-D".as_ref(),
                    data.as_os_str(),
                    "-o".as_ref(),
                    options.as_ref(),
                    "-l".as_ref(),
                    log.as_os_str(),
                    "-w".as_ref(),
                    "-t".as_ref(),
                    "60".as_ref(),
                    "start".as_ref(),
                ],
            );
            if out.status.success() {
                return cluster;
            }
        }
        let log =
            std::fs::read_to_string(cluster.dir.path().join("server.log")).unwrap_or_default();
        panic!("PostgreSQL did not start: {log}");
    }

    /// The URL of database `name`.
    pub fn url(&self, name: &str) -> String {
        format!("postgres://{USER}@127.0.0.1:{}/{name}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Creates a new empty database and returns its URL.
    pub fn fresh_database(&self) -> String {
        let name = format!("linkbook_{:016x}", rand::random::<u64>());
        self.sql("postgres", &format!("CREATE DATABASE {name}"));
        self.url(&name)
    }

    /// Runs SQL in database `db` with `psql` (stops at the first error);
    /// returns what it printed, unaligned, tuples only.
    pub fn sql(&self, db: &str, sql: &str) -> String {
        self.try_sql(db, sql)
            .unwrap_or_else(|e| panic!("psql {sql:?}: {e}"))
    }

    /// Like [`Cluster::sql`], but returns the error text of a statement the
    /// server refused (`Err`) instead of panicking.
    pub fn try_sql(&self, db: &str, sql: &str) -> Result<String, String> {
        let out = Command::new(self.bin.join("psql"))
            .args(["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1"])
            .args(["-h", "127.0.0.1", "-p", &self.port.to_string(), "-U", USER])
            .args(["-d", db, "-c", sql])
            .output()
            .expect("psql");
        match out.status.success() {
            true => Ok(String::from_utf8_lossy(&out.stdout).trim().to_string()),
            false => Err(text(&out)),
        }
    }

    /// `pg_dump` of database `db` as plain SQL: what an operator's backup
    /// of a relay on PostgreSQL holds.
    pub fn dump(&self, db: &str) -> String {
        let out = Command::new(self.bin.join("pg_dump"))
            .args(["-h", "127.0.0.1", "-p", &self.port.to_string(), "-U", USER])
            .args(["--no-owner", "-d", db])
            .output()
            .expect("pg_dump");
        assert!(out.status.success(), "pg_dump: {}", text(&out));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Loads a plain SQL dump ([`Cluster::dump`]) into database `db`, as
    /// `psql -f` does in a restore (stops at the first error).
    pub fn load(&self, db: &str, dump: &str) {
        use std::io::Write;
        let mut child = Command::new(self.bin.join("psql"))
            .args(["-X", "-q", "-v", "ON_ERROR_STOP=1"])
            .args(["-h", "127.0.0.1", "-p", &self.port.to_string(), "-U", USER])
            .args(["-d", db, "-f", "-"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("psql");
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(dump.as_bytes())
            .expect("write the dump");
        let out = child.wait_with_output().expect("psql");
        assert!(out.status.success(), "loading the dump: {}", text(&out));
    }

    fn run(&self, tool: &str, args: &[&std::ffi::OsStr]) -> Output {
        let path = self.bin.join(tool);
        let mut cmd = match self.run_as {
            Some(user) => {
                let mut c = Command::new("runuser");
                c.args(["-u", user, "--"]).arg(&path);
                c
            }
            None => Command::new(&path),
        };
        // The server inherits the working directory: one it may read.
        cmd.current_dir(self.dir.path());
        cmd.args(args)
            .output()
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        // Our own server only: pg_ctl signals the postmaster whose PID its
        // data directory holds (the one `start` began).
        let data = self.dir.path().join("data");
        let _ = self.run(
            "pg_ctl",
            &[
                "-D".as_ref(),
                data.as_os_str(),
                "-m".as_ref(),
                "immediate".as_ref(),
                "-w".as_ref(),
                "stop".as_ref(),
            ],
        );
    }
}

/// The folder holding `initdb`: `LINKBOOK_PG_BIN`, else Debian's newest.
fn bin_dir() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("LINKBOOK_PG_BIN") {
        return Some(PathBuf::from(dir));
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let version = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").exists().then_some((version, bin))
        })
        .collect();
    versions.sort();
    versions.pop().map(|(_, bin)| bin)
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}
