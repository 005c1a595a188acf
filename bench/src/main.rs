//! `linkbook-bench`: Linkbook on the jobs it exists for, side by side with
//! the JavaScript automerge-repo sync server (what a user would pick
//! instead), plain SQLite and the limits, in one run.
//!
//! ```text
//! cargo run --release -p linkbook-bench -- [--fast] [--no-peer] [WORKLOAD...]
//! ```
//! Workloads: `office-sync` (1), `fresh-device` (2), `latency` (3),
//! `device-store` (4), `relay-capacity` (5); all by default. `--fast` is the
//! small tier CI runs as a smoke test. The report goes to stdout and ends
//! with one `RESULT` line per figure; progress goes to stderr. See
//! `bench/README.md`.
//!
//! Two hidden subcommands let the bench run its children from this same
//! binary: `relay ARGS...` is `linkbook-server ARGS...`, and `fresh-device`
//! is workload 2's device.

mod capacity;
mod data;
mod nodes;
mod office;
mod procstat;
mod proxy;
mod report;
mod servers;
mod store;

use std::process::ExitCode;
use std::time::Instant;

use data::Sizes;
use report::Report;

pub type Error = Box<dyn std::error::Error + Send + Sync>;
pub type Result<T> = std::result::Result<T, Error>;

/// Which workloads to run.
#[derive(Debug, Clone, Copy, Default)]
pub struct Workloads {
    pub office: bool,
    pub fresh: bool,
    pub latency: bool,
    pub store: bool,
    pub capacity: bool,
    pub nodes: bool,
}

const FULL: Sizes = Sizes {
    families: 2_000,
    notes_per_family: 50,
    family_days: 20,
    checkins_per_day: 25,
    devices: 50,
    touched_families: 20,
    new_notes_per_family: 5,
    field_edits: 3,
    day_checkins: 5,
};

const FAST: Sizes = Sizes {
    families: 50,
    notes_per_family: 5,
    family_days: 2,
    checkins_per_day: 5,
    devices: 5,
    touched_families: 5,
    new_notes_per_family: 2,
    field_edits: 2,
    day_checkins: 2,
};

const USAGE: &str = "usage: linkbook-bench [--fast] [--no-peer] [WORKLOAD...]
workloads: office-sync (1), fresh-device (2), latency (3), device-store (4), relay-capacity (5),
  office-nodes (6: office sync on SQLite, PostgreSQL with 1 and 2 nodes); default all
  --fast     small sizes, seconds (the CI smoke tier)
  --no-peer  skip the JavaScript automerge-repo server
  --keep     keep the work directories (servers' data and logs) for a look afterwards
  --families N, --notes N, --devices N
             other sizes for workloads 1-4 (e.g. to profile a middle size)";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    match args.get(1).map(String::as_str) {
        Some("relay") => {
            return linkbook_server::cli::run(
                std::iter::once("linkbook-server".to_string()).chain(args[2..].iter().cloned()),
            );
        }
        Some("fresh-device") => {
            return match office::fresh_device_main(&args[2..]) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("fresh device: {e}");
                    ExitCode::FAILURE
                }
            };
        }
        _ => {}
    }
    // Devices' trace logs (RUST_LOG=linkbook_core=trace), for debugging a run.
    if std::env::var_os("RUST_LOG").is_some() {
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_thread_ids(true)
            .with_writer(std::io::stderr)
            .init();
    }
    let mut fast = false;
    let mut with_peer = true;
    let mut keep = false;
    let mut which = Workloads::default();
    let mut overrides: Vec<(String, usize)> = Vec::new();
    let mut rest = args[1..].iter();
    while let Some(a) = rest.next() {
        match a.as_str() {
            "--families" | "--notes" | "--devices" => {
                let Some(n) = rest.next().and_then(|n| n.parse().ok()) else {
                    eprintln!("{a} takes a number\n{USAGE}");
                    return ExitCode::from(2);
                };
                overrides.push((a.clone(), n));
            }
            "--fast" => fast = true,
            "--no-peer" => with_peer = false,
            "--keep" => keep = true,
            "-h" | "--help" => {
                println!("{USAGE}");
                return ExitCode::SUCCESS;
            }
            "1" | "office-sync" => which.office = true,
            "2" | "fresh-device" => which.fresh = true,
            "3" | "latency" => which.latency = true,
            "4" | "device-store" => which.store = true,
            "5" | "relay-capacity" => which.capacity = true,
            "6" | "office-nodes" => which.nodes = true,
            other => {
                eprintln!("unknown argument '{other}'\n{USAGE}");
                return ExitCode::from(2);
            }
        }
    }
    if !(which.office
        || which.fresh
        || which.latency
        || which.store
        || which.capacity
        || which.nodes)
    {
        which = Workloads {
            office: true,
            fresh: true,
            latency: true,
            store: true,
            capacity: true,
            nodes: true,
        };
    }
    match run(fast, with_peer, keep, &overrides, &which) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("linkbook-bench: {e}");
            ExitCode::FAILURE
        }
    }
}

fn machine() -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map(|m| m.trim_start_matches([' ', '\t', ':']).to_string())
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    format!("{cores} cores, {model}")
}

fn run(
    fast: bool,
    with_peer: bool,
    keep: bool,
    overrides: &[(String, usize)],
    which: &Workloads,
) -> Result<()> {
    let started = Instant::now();
    let mut sizes = if fast { FAST } else { FULL };
    let mut store_sizes = Sizes {
        families: if fast { 50 } else { 1_000 },
        notes_per_family: if fast { 5 } else { 50 },
        ..sizes
    };
    for (name, n) in overrides {
        match name.as_str() {
            "--families" => {
                sizes.families = *n;
                store_sizes.families = *n;
            }
            "--notes" => {
                sizes.notes_per_family = *n;
                store_sizes.notes_per_family = *n;
            }
            _ => sizes.devices = *n,
        }
    }
    sizes.touched_families = sizes.touched_families.min(sizes.families);
    if with_peer && (which.office || which.fresh || which.latency || which.capacity) {
        servers::npm_dir()?;
    }
    // Servers and measured stores on disk; the seed and the device fleet on
    // tmpfs where there is one (see data.rs).
    let work = tempfile::Builder::new()
        .prefix("linkbook-bench-")
        .tempdir()
        .map_err(|e| format!("work dir: {e}"))?;
    let scratch = tempfile::Builder::new()
        .prefix("linkbook-bench-")
        .tempdir_in(data::scratch_root())
        .map_err(|e| format!("scratch dir: {e}"))?;
    // With --keep the directories outlive the run, failed or not.
    let (work, scratch) = if keep {
        (Dirs::Kept(work.keep()), Dirs::Kept(scratch.keep()))
    } else {
        (Dirs::Temp(work), Dirs::Temp(scratch))
    };
    eprintln!(
        "linkbook-bench, {} tier, {}; work in {} and {}",
        if fast { "fast" } else { "full" },
        machine(),
        work.path().display(),
        scratch.path().display()
    );
    let mut report = Report::default();
    if which.office || which.fresh || which.latency {
        office::run(
            &sizes,
            which,
            with_peer,
            work.path(),
            scratch.path(),
            &mut report,
        )?;
    }
    if which.store {
        eprintln!("-- device store");
        store::run(&store_sizes, work.path(), scratch.path(), &mut report)?;
    }
    if which.capacity {
        eprintln!("-- relay capacity");
        let c = if fast {
            capacity::CapacitySizes {
                idle_connections: 50,
                syncing_devices: 2,
                sync_seconds: 2,
            }
        } else {
            capacity::CapacitySizes {
                idle_connections: 1_000,
                syncing_devices: 8,
                sync_seconds: 20,
            }
        };
        capacity::run(&c, with_peer, work.path(), scratch.path(), &mut report)?;
    }
    if which.nodes {
        nodes::run(&sizes, work.path(), scratch.path(), &mut report)?;
    }
    println!(
        "Linkbook benchmarks ({} tier) on {}; {:.0} s",
        if fast { "fast" } else { "full" },
        machine(),
        started.elapsed().as_secs_f64()
    );
    println!(
        "ratio: bigger is better (the JS peer's cost / Linkbook's; for a limit or SQLite baseline, the ideal's / Linkbook's; rates the other way round)"
    );
    print!("{}", report.readable());
    println!();
    print!("{}", report.result_lines());
    Ok(())
}

/// A work directory, removed at the end unless kept.
#[derive(Debug)]
enum Dirs {
    Temp(tempfile::TempDir),
    Kept(std::path::PathBuf),
}

impl Dirs {
    fn path(&self) -> &std::path::Path {
        match self {
            Dirs::Temp(t) => t.path(),
            Dirs::Kept(p) => p,
        }
    }
}
