//! The two servers under test, each a child process the bench measures from
//! `/proc`: Linkbook's relay (this binary re-invoked as `linkbook-bench relay
//! ...`, which runs `linkbook-server`'s own command line) and the JavaScript
//! automerge-repo sync server (`tests/npm/server.mjs`, set up as the public
//! automerge-repo-sync-server is).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use linkbook_test_support::wait_for_line;

use crate::Result;
use crate::procstat::{self, Sample};

/// Which server a figure belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Linkbook,
    Peer,
}

impl Side {
    pub fn label(self) -> &'static str {
        match self {
            Side::Linkbook => "Linkbook relay",
            Side::Peer => "automerge-repo sync server (JS)",
        }
    }
}

/// A running server process.
#[derive(Debug)]
pub struct Server {
    pub side: Side,
    pub data: PathBuf,
    pub url: String,
    child: Option<Child>,
    extra_args: Vec<String>,
    peer_id: String,
}

fn self_exe() -> Result<PathBuf> {
    Ok(std::env::current_exe().map_err(|e| format!("locating the bench binary: {e}"))?)
}

/// The npm install of the conformance peers (`npm install --prefix tests/npm`).
pub fn npm_dir() -> Result<PathBuf> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join("tests")
        .join("npm");
    if !dir.join("node_modules/@automerge/automerge-repo").exists() {
        return Err(format!(
            "the JavaScript peer is not installed: run `npm install --prefix tests/npm --no-audit --no-fund` (looked in {})",
            dir.display()
        )
        .into());
    }
    Ok(dir)
}

fn log_file(data: &Path, name: &str) -> Result<std::fs::File> {
    Ok(std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(data.join(name))
        .map_err(|e| format!("log file: {e}"))?)
}

impl Server {
    /// Linkbook's relay on 127.0.0.1 (TLS, development certificate), data in `data`.
    pub fn linkbook(data: &Path, extra_args: &[&str]) -> Result<Server> {
        std::fs::create_dir_all(data).map_err(|e| format!("relay dir: {e}"))?;
        let mut s = Server {
            side: Side::Linkbook,
            data: data.to_path_buf(),
            url: String::new(),
            child: None,
            extra_args: extra_args.iter().map(|s| s.to_string()).collect(),
            peer_id: String::new(),
        };
        s.start()?;
        Ok(s)
    }

    /// The JavaScript sync server on 127.0.0.1 (plain ws), files in `data`.
    pub fn peer(data: &Path) -> Result<Server> {
        std::fs::create_dir_all(data).map_err(|e| format!("peer dir: {e}"))?;
        let mut s = Server {
            side: Side::Peer,
            data: data.to_path_buf(),
            url: String::new(),
            child: None,
            extra_args: Vec::new(),
            // Stable across restarts, as the public sync server's
            // `storage-server-${hostname}`, so devices' sync states stay valid.
            peer_id: "storage-server-linkbook-bench".into(),
        };
        s.start()?;
        Ok(s)
    }

    fn start(&mut self) -> Result<()> {
        match self.side {
            Side::Linkbook => {
                // LINKBOOK_BENCH_RELAY_WRAPPER="valgrind --tool=callgrind ..."
                // runs the relay under a profiler (its figures then measure
                // the profiler too).
                let wrapper = std::env::var("LINKBOOK_BENCH_RELAY_WRAPPER").unwrap_or_default();
                let mut words = wrapper.split_whitespace();
                let mut command = match words.next() {
                    Some(program) => {
                        let mut c = Command::new(program);
                        c.args(words).arg(self_exe()?);
                        c
                    }
                    None => Command::new(self_exe()?),
                };
                command.arg("relay").stdin(Stdio::null());
                let args: Vec<&str> = self.extra_args.iter().map(String::as_str).collect();
                let log = log_file(&self.data, "relay.log")?;
                let (child, url) =
                    linkbook_test_support::spawn_relay(command, &self.data, &args, log)?;
                self.child = Some(child);
                self.url = url;
            }
            Side::Peer => {
                let mut child = Command::new("node")
                    .arg(npm_dir()?.join("server.mjs"))
                    .arg("--data")
                    .arg(self.data.join("store"))
                    .args(["--peer-id", &self.peer_id])
                    .stdin(Stdio::piped())
                    .stdout(Stdio::piped())
                    .stderr(log_file(&self.data, "node.log")?)
                    .spawn()
                    .map_err(|e| format!("starting node (is Node.js installed?): {e}"))?;
                let port = wait_for_line(&mut child, "LISTENING ");
                self.child = Some(child);
                self.url = format!("http://127.0.0.1:{}", port?);
            }
        }
        Ok(())
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).unwrap_or(0)
    }

    pub fn sample(&self) -> Result<Sample> {
        procstat::sample(self.pid())
    }

    /// The relay's development CA (Linkbook only).
    pub fn ca_pem(&self) -> Result<String> {
        Ok(std::fs::read_to_string(self.data.join("dev-ca.pem"))
            .map_err(|e| format!("dev-ca.pem: {e}"))?)
    }

    /// A one-time enrolment code from the relay's admin command.
    pub fn enrol_code(&self, team: &str, worker: &str) -> Result<String> {
        let mut admin = Command::new(self_exe()?);
        admin.arg("relay");
        // Against the relay's database when that is PostgreSQL.
        if let Some(url) = self
            .extra_args
            .iter()
            .position(|a| a == "--database-url")
            .and_then(|i| self.extra_args.get(i + 1))
        {
            admin.env("LINKBOOK_DATABASE_URL", url);
        }
        linkbook_test_support::enrol_code(admin, &self.data, team, worker)
    }

    /// Stops the process and waits for it: SIGTERM for the relay (it
    /// finishes in-flight writes), closing stdin for node (it flushes its
    /// storage).
    pub fn stop(&mut self) -> Result<()> {
        let Some(mut child) = self.child.take() else {
            return Ok(());
        };
        match self.side {
            Side::Linkbook => {
                let _ = Command::new("kill")
                    .arg("-TERM")
                    .arg(child.id().to_string())
                    .status();
            }
            Side::Peer => drop(child.stdin.take()),
        }
        for _ in 0..600 {
            if child
                .try_wait()
                .map_err(|e| format!("wait: {e}"))?
                .is_some()
            {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        let _ = child.wait();
        Err(format!("{} did not stop within 30 s; killed", self.side.label()).into())
    }

    /// Stops and starts again on the same data (a cold server: nothing loaded).
    pub fn restart(&mut self) -> Result<()> {
        self.stop()?;
        self.start()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
