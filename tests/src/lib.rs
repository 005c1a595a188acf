//! Shared helpers for Linkbook's end-to-end tests: devices as real `linkbook`
//! processes over real data directories in temp dirs.
//!
//! The tests run the `linkbook` binary built next to them
//! (`target/<profile>/linkbook`), so the test command builds the binaries
//! first: `cargo build --workspace --bins && cargo test --workspace`.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use tempfile::TempDir;

/// The `linkbook` binary of this build.
pub fn linkbook_bin() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    // target/<profile>/deps/<test> -> target/<profile>/linkbook
    let dir = exe.parent().and_then(Path::parent).expect("target dir");
    let bin = dir.join(format!("linkbook{}", std::env::consts::EXE_SUFFIX));
    assert!(
        bin.exists(),
        "{} is missing: build it first (cargo build --workspace --bins)",
        bin.display()
    );
    bin
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
