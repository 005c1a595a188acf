//! The relay as a systemd service (issue 14, deploy/): the unit is one
//! systemd accepts, it keeps every hardening directive (nobody drops one
//! silently to make something work), and the environment file documents
//! exactly the variables the relay reads. No service is started: this
//! machine's systemd is not PID 1, and the checks take a second.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use linkbook_tests::workspace_bin;

/// The path the unit's ExecStart names, replaced by the built binary for
/// `systemd-analyze verify` (which needs it to exist).
const INSTALLED_BIN: &str = "/usr/local/bin/linkbook-server";

fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy")
}

fn read_deploy(name: &str) -> String {
    let path = deploy_dir().join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn unit_text() -> String {
    read_deploy("linkbook-server.service")
}

/// `systemd-analyze`, or a failure saying how to get it.
fn systemd_analyze() -> Command {
    let found = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join("systemd-analyze").is_file()))
        .unwrap_or(false);
    assert!(
        found,
        "systemd-analyze is missing: scripts/install-test-deps (run by .ci/run) installs \
         Debian's systemd package, which has it"
    );
    Command::new("systemd-analyze")
}

/// The unit's directives, section by section: `[Service]` -> name -> every
/// value given (in order; an empty assignment is kept as ""), continuation
/// lines joined, comments dropped.
fn directives(unit: &str) -> BTreeMap<String, BTreeMap<String, Vec<String>>> {
    let mut sections: BTreeMap<String, BTreeMap<String, Vec<String>>> = BTreeMap::new();
    let mut section = String::new();
    let mut logical = String::new();
    let mut lines = Vec::new();
    for raw in unit.lines() {
        let line = raw.trim();
        if logical.is_empty() && (line.starts_with('#') || line.starts_with(';')) {
            continue;
        }
        match line.strip_suffix('\\') {
            Some(head) => {
                logical.push_str(head);
                logical.push(' ');
            }
            None => {
                logical.push_str(line);
                lines.push(std::mem::take(&mut logical));
            }
        }
    }
    for line in lines {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            section = name.to_string();
            continue;
        }
        let (key, value) = line
            .split_once('=')
            .unwrap_or_else(|| panic!("not key=value in the unit: {line}"));
        sections
            .entry(section.clone())
            .or_default()
            .entry(key.trim().to_string())
            .or_default()
            .push(value.trim().to_string());
    }
    sections
}

fn service() -> BTreeMap<String, Vec<String>> {
    directives(&unit_text())
        .remove("Service")
        .expect("a [Service] section")
}

/// The one value of `key` (the last one given, as systemd takes it).
fn single<'a>(service: &'a BTreeMap<String, Vec<String>>, key: &str) -> &'a str {
    service
        .get(key)
        .and_then(|v| v.last())
        .unwrap_or_else(|| panic!("the unit lost {key}="))
}

/// A time span as systemd writes it here ("30s", "1min", "30"), in seconds.
fn seconds(span: &str) -> u64 {
    let digits: String = span.chars().take_while(char::is_ascii_digit).collect();
    let n: u64 = digits
        .parse()
        .unwrap_or_else(|_| panic!("not a time span: {span}"));
    match &span[digits.len()..] {
        "" | "s" | "sec" => n,
        "min" | "m" => n * 60,
        other => panic!("unexpected time unit {other:?} in {span}"),
    }
}

/// The unit, with ExecStart naming this build's binary, in a directory of
/// its own under its real name (systemd-analyze names units by file name).
fn unit_for_this_build() -> (tempfile::TempDir, PathBuf) {
    let bin = workspace_bin("linkbook-server");
    let unit = unit_text();
    assert!(
        unit.contains(&format!("ExecStart={INSTALLED_BIN} ")),
        "ExecStart no longer starts {INSTALLED_BIN} (the README installs it there)"
    );
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("linkbook-server.service");
    let text = unit.replace(INSTALLED_BIN, bin.to_str().expect("a UTF-8 path"));
    std::fs::write(&path, text).expect("write the unit");
    (dir, path)
}

#[test]
fn systemd_accepts_the_unit_without_a_warning() {
    let (_dir, unit) = unit_for_this_build();
    let out = systemd_analyze()
        .arg("verify")
        .arg(&unit)
        .output()
        .expect("run systemd-analyze verify");
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "systemd-analyze verify failed: {said}"
    );
    // Only what it says about this unit: a machine without systemd as PID 1
    // may add lines about itself.
    let about_unit: Vec<&str> = said
        .lines()
        .filter(|l| l.contains("linkbook-server"))
        .collect();
    assert!(
        about_unit.is_empty(),
        "systemd-analyze verify warns about the unit:\n{}",
        about_unit.join("\n")
    );
}

#[test]
fn the_units_exposure_stays_low() {
    // README and the unit's header say 1.6 ("OK"); 2.0 leaves room for
    // another systemd's weighting, not for a dropped directive.
    let (_dir, unit) = unit_for_this_build();
    let out = systemd_analyze()
        .args(["security", "--offline=yes", "--threshold=20", "--no-pager"])
        .arg(&unit)
        .output()
        .expect("run systemd-analyze security");
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "systemd-analyze security --offline=yes rates the unit over 2.0 (or failed): {}{}",
        said.lines().last().unwrap_or(""),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn the_unit_keeps_its_hardening() {
    let service = service();
    let exact = [
        ("User", "linkbook"),
        // The data directory and the erasure ledger's, apart (ADR 0013).
        ("StateDirectory", "linkbook linkbook-erasures"),
        ("StateDirectoryMode", "0700"),
        ("UMask", "0077"),
        ("Restart", "on-failure"),
        ("EnvironmentFile", "-/etc/linkbook/linkbook.env"),
        ("NoNewPrivileges", "yes"),
        ("ProtectSystem", "strict"),
        ("ProtectHome", "yes"),
        ("PrivateTmp", "yes"),
        ("PrivateDevices", "yes"),
        ("ProtectKernelTunables", "yes"),
        ("ProtectKernelModules", "yes"),
        ("ProtectKernelLogs", "yes"),
        ("ProtectControlGroups", "yes"),
        ("ProtectClock", "yes"),
        ("ProtectHostname", "yes"),
        ("RestrictAddressFamilies", "AF_INET AF_INET6 AF_UNIX"),
        ("RestrictNamespaces", "yes"),
        ("RestrictRealtime", "yes"),
        ("RestrictSUIDSGID", "yes"),
        ("LockPersonality", "yes"),
        ("MemoryDenyWriteExecute", "yes"),
        ("SystemCallArchitectures", "native"),
    ];
    let mut wrong = Vec::new();
    for (key, want) in exact {
        match service.get(key).and_then(|v| v.last()) {
            Some(v) if v == want => {}
            got => wrong.push(format!("{key}={want} (is {got:?})")),
        }
    }
    assert!(wrong.is_empty(), "the unit lost: {}", wrong.join(", "));

    let filters = service.get("SystemCallFilter").cloned().unwrap_or_default();
    assert!(
        filters.first().map(String::as_str) == Some("@system-service"),
        "SystemCallFilter=@system-service must come first (an allow list): {filters:?}"
    );
    assert!(
        single(&service, "LimitNOFILE")
            .parse::<u64>()
            .expect("LimitNOFILE a number")
            >= 4096,
        "LimitNOFILE too low for an office's devices"
    );
    assert!(
        seconds(single(&service, "TimeoutStopSec")) > 10,
        "TimeoutStopSec must exceed the relay's 10 s graceful drain"
    );

    // No capability but CAP_NET_BIND_SERVICE, and that one only when the
    // relay listens below 1024 by default.
    let bounding = single(&service, "CapabilityBoundingSet");
    let ambient = service
        .get("AmbientCapabilities")
        .and_then(|v| v.last())
        .map(String::as_str)
        .unwrap_or("");
    let listen = service
        .get("Environment")
        .into_iter()
        .flatten()
        .find_map(|e| e.strip_prefix("LINKBOOK_LISTEN="))
        .expect("Environment=LINKBOOK_LISTEN=...");
    let port: u16 = listen
        .rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no port in {listen}"));
    if port < 1024 {
        assert_eq!(
            (bounding, ambient),
            ("CAP_NET_BIND_SERVICE", "CAP_NET_BIND_SERVICE"),
            "port {port} needs CAP_NET_BIND_SERVICE, and only it"
        );
    } else {
        assert_eq!(
            (bounding, ambient),
            ("", ""),
            "port {port} needs no capability"
        );
    }

    // The data directory is the state directory (the only writable place),
    // and the TLS files are credentials, not paths the relay's user reads.
    let exec = single(&service, "ExecStart");
    for arg in [
        "--data %S/linkbook",
        // In a state directory of its own: under ProtectSystem=strict the
        // default beside the data directory (/var/lib/linkbook.erasures) is
        // read-only, and every purge would fail.
        "--erasure-ledger %S/linkbook-erasures/erasures.ledger",
        "--tls-cert %d/tls.crt",
        "--tls-key %d/tls.key",
        "--key-file /etc/linkbook/server.key",
    ] {
        assert!(exec.contains(arg), "ExecStart lost {arg}: {exec}");
    }
    let credentials = service.get("LoadCredential").cloned().unwrap_or_default();
    for name in ["tls.crt", "tls.key"] {
        assert!(
            credentials
                .iter()
                .any(|c| c.starts_with(&format!("{name}:"))),
            "LoadCredential={name}:... is gone: {credentials:?}"
        );
    }
}

#[test]
fn the_user_and_the_admin_wrapper_match_the_unit() {
    let sysusers = read_deploy("linkbook.sysusers.conf");
    assert!(
        sysusers
            .lines()
            .any(|l| l.split_whitespace().take(2).eq(["u", "linkbook"])),
        "deploy/linkbook.sysusers.conf no longer makes the linkbook user"
    );
    // Admin commands must open what the relay opens, as its user.
    let admin = read_deploy("linkbook-admin");
    for needed in [
        "runuser -u linkbook",
        INSTALLED_BIN,
        "--data /var/lib/linkbook",
        "--erasure-ledger /var/lib/linkbook-erasures/erasures.ledger",
        "--key-file /etc/linkbook/server.key",
        "/etc/linkbook/linkbook.env",
    ] {
        assert!(
            admin.contains(needed),
            "deploy/linkbook-admin lost {needed}"
        );
    }
    let syntax = Command::new("sh")
        .arg("-n")
        .arg(deploy_dir().join("linkbook-admin"))
        .output()
        .expect("run sh -n");
    assert!(
        syntax.status.success(),
        "deploy/linkbook-admin: {}",
        String::from_utf8_lossy(&syntax.stderr)
    );
}

/// Every `LINKBOOK_…` name in `text`.
fn linkbook_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = text;
    while let Some(at) = rest.find("LINKBOOK_") {
        let tail = &rest[at..];
        let end = tail
            .find(|c: char| !(c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_'))
            .unwrap_or(tail.len());
        names.insert(tail[..end].trim_end_matches('_').to_string());
        rest = &tail[end..];
    }
    names
}

/// The variables the relay reads, as its `--help` names them (the relay's
/// options and `device enrol`'s), plus those read outside clap that the
/// help does not name, each checked to be in the relay's source.
fn accepted_names() -> BTreeSet<String> {
    let bin = workspace_bin("linkbook-server");
    let mut help = String::new();
    for args in [&["--help"][..], &["device", "enrol", "--help"]] {
        let out = Command::new(&bin)
            .args(args)
            .env_clear()
            .output()
            .expect("run linkbook-server --help");
        assert!(out.status.success(), "linkbook-server {args:?} failed");
        help.push_str(&String::from_utf8_lossy(&out.stdout));
    }
    let mut names = linkbook_names(&help);
    // Read with std::env::var by the PostgreSQL backend (storage/postgres).
    let outside_clap = ["LINKBOOK_DATABASE_CA"];
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("../sync-server/src");
    let mut all_source = String::new();
    let mut dirs = vec![source];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).expect("read sync-server/src") {
            let path = entry.expect("dir entry").path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                all_source.push_str(&std::fs::read_to_string(&path).expect("read source"));
            }
        }
    }
    for name in outside_clap {
        assert!(
            all_source.contains(&format!("\"{name}\"")),
            "the relay no longer reads {name}: take it out of this list and the env example"
        );
        names.insert(name.to_string());
    }
    names
}

#[test]
fn the_env_example_names_exactly_what_the_relay_reads() {
    let accepted = accepted_names();
    for must in [
        "LINKBOOK_LISTEN",
        "LINKBOOK_TLS_CERT",
        "LINKBOOK_TLS_KEY",
        "LINKBOOK_DATABASE_URL",
        "LINKBOOK_METRICS_LISTEN",
        "LINKBOOK_SERVER_KEY",
    ] {
        assert!(
            accepted.contains(must),
            "--help no longer names {must}: {accepted:?}"
        );
    }
    let example = read_deploy("linkbook.env.example");
    // The variables it sets (or shows commented out): `[#]NAME=value`.
    let set: BTreeSet<String> = example
        .lines()
        .filter_map(|l| {
            let l = l.trim_start_matches('#').trim_start();
            let (name, _) = l.split_once('=')?;
            name.starts_with("LINKBOOK_").then(|| name.to_string())
        })
        .collect();
    let unknown: Vec<_> = set.difference(&accepted).collect();
    assert!(
        unknown.is_empty(),
        "deploy/linkbook.env.example sets variables the relay does not read: {unknown:?}"
    );
    let undocumented: Vec<_> = accepted.difference(&set).collect();
    assert!(
        undocumented.is_empty(),
        "the relay reads variables deploy/linkbook.env.example does not show: {undocumented:?}"
    );
    // Nothing in its comments names a variable that does not exist either.
    let mentioned: Vec<_> = linkbook_names(&example)
        .into_iter()
        .filter(|n| !accepted.contains(n))
        .collect();
    assert!(
        mentioned.is_empty(),
        "deploy/linkbook.env.example mentions unknown variables: {mentioned:?}"
    );
    // And the unit's own defaults are real variables.
    let service = service();
    for env in service.get("Environment").into_iter().flatten() {
        let name = env.split('=').next().unwrap_or("");
        assert!(
            accepted.contains(name),
            "the unit sets {name}, which the relay does not read"
        );
    }
}
