//! Workload 6, **office-nodes**: workload 1's office sync (devices back
//! from a day offline sync at once) on the relay's three set-ups, in one
//! run, on the same caseload and day of work: the embedded SQLite default,
//! one node on PostgreSQL, and two nodes on that PostgreSQL with the
//! devices split between them (issue 14). PostgreSQL is a cluster the bench
//! starts itself, fsyncing its commits as in production (the relay's
//! SQLite fsyncs too). Relay CPU is the relay processes' own; the
//! database's CPU (the postmaster and its backends) is reported beside it.

use std::path::Path;
use std::sync::Barrier;
use std::time::Instant;

use linkbook_test_support::postgres::Cluster;

use crate::data::{self, Sizes, Store};
use crate::report::{Against, Better, Report};
use crate::servers::Server;
use crate::{Result, procstat};

pub const NODES: &str = "office-nodes";

const TEAM: &str = "north";

/// The largest caseload this workload seeds (three set-ups, each seeded
/// through its own relay).
const MAX_FAMILIES: usize = 200;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Setup {
    Sqlite,
    Postgres { nodes: usize },
}

impl Setup {
    fn label(self) -> String {
        match self {
            Setup::Sqlite => "SQLite (embedded)".into(),
            Setup::Postgres { nodes: 1 } => "PostgreSQL, 1 node".into(),
            Setup::Postgres { nodes } => format!("PostgreSQL, {nodes} nodes"),
        }
    }
}

#[derive(Debug, Clone, Copy, Default)]
struct Measured {
    wall_s: f64,
    relay_cpu_s: f64,
    database_cpu_s: f64,
}

/// Runs the office sync on each set-up and reports the figures.
pub fn run(sizes: &Sizes, work: &Path, scratch: &Path, report: &mut Report) -> Result<()> {
    if !Cluster::available() {
        report.note(
            NODES,
            "skipped: PostgreSQL is not installed (scripts/install-test-deps installs it)",
        );
        return Ok(());
    }
    let mut sizes = *sizes;
    sizes.families = sizes.families.min(MAX_FAMILIES);
    sizes.touched_families = sizes.touched_families.min(sizes.families);
    let cluster = Cluster::start_durable();
    let mut measured = Vec::new();
    for setup in [
        Setup::Sqlite,
        Setup::Postgres { nodes: 1 },
        Setup::Postgres { nodes: 2 },
    ] {
        let name = match setup {
            Setup::Sqlite => "sqlite".to_string(),
            Setup::Postgres { nodes } => format!("pg{nodes}"),
        };
        eprintln!("-- {NODES}: {}", setup.label());
        let m = run_setup(
            setup,
            &sizes,
            &cluster,
            &work.join(&name),
            &scratch.join(&name),
        )?;
        eprintln!(
            "   {:.2} s, relay {:.2} CPU s, database {:.2} CPU s",
            m.wall_s, m.relay_cpu_s, m.database_cpu_s
        );
        measured.push(m);
    }
    let [sqlite, one, two] = [measured[0], measured[1], measured[2]];
    report.note(
        NODES,
        format!(
            "{} devices back from a day offline ({} families touched, {} new notes each) sync at once against {} case files x {} notes; PostgreSQL fsyncs its commits (a cluster the bench starts); with two nodes the devices alternate between them; relay CPU sums the nodes",
            sizes.devices,
            sizes.touched_families,
            sizes.new_notes_per_family,
            sizes.families,
            sizes.notes_per_family
        ),
    );
    report.note(
        NODES,
        format!(
            "database CPU (postmaster and backends): {:.2} s with 1 node, {:.2} s with 2; SQLite's is inside the relay's",
            one.database_cpu_s, two.database_cpu_s
        ),
    );
    report.add(
        NODES,
        "pg1_wall_s",
        "s",
        one.wall_s,
        Against::Baseline(sqlite.wall_s),
        Better::Lower,
    );
    report.add(
        NODES,
        "pg1_relay_cpu_s",
        "CPU s",
        one.relay_cpu_s,
        Against::Baseline(sqlite.relay_cpu_s),
        Better::Lower,
    );
    // Two nodes against one: the ratio is one node's cost over two's.
    report.add(
        NODES,
        "pg2_wall_s",
        "s",
        two.wall_s,
        Against::Baseline(one.wall_s),
        Better::Lower,
    );
    report.add(
        NODES,
        "pg2_relay_cpu_s",
        "CPU s",
        two.relay_cpu_s,
        Against::Baseline(one.relay_cpu_s),
        Better::Lower,
    );
    report.note(
        NODES,
        "baselines: SQLite for PostgreSQL with one node; one node for two nodes",
    );
    Ok(())
}

/// Seeds a caseload through this set-up's relay, clones a fleet of devices
/// that got it by syncing, gives each a day of offline work, restarts the
/// relay cold and syncs the fleet at once.
fn run_setup(
    setup: Setup,
    sizes: &Sizes,
    cluster: &Cluster,
    work: &Path,
    scratch: &Path,
) -> Result<Measured> {
    let url = match setup {
        Setup::Sqlite => None,
        Setup::Postgres { .. } => Some(cluster.fresh_database()),
    };
    let args: Vec<&str> = match &url {
        Some(url) => vec!["--database-url", url, "--metrics-listen", "off"],
        None => vec!["--metrics-listen", "off"],
    };
    let mut nodes = vec![Server::linkbook(&work.join("node-1"), &args)?];
    if let Setup::Postgres { nodes: n } = setup {
        for i in 2..=n {
            // Nodes behind one name share a certificate.
            let dir = work.join(format!("node-{i}"));
            std::fs::create_dir_all(&dir).map_err(|e| format!("node dir: {e}"))?;
            linkbook_test_support::copy_dev_certificate(&nodes[0].data, &dir)
                .map_err(|e| format!("copying the certificate: {e}"))?;
            nodes.push(Server::linkbook(&dir, &args)?);
        }
    }
    let first = &nodes[0];
    let enrol = |repo: &linkbook_core::Repo, worker: &str| -> Result<()> {
        repo.enrol(
            &first.url,
            &first.enrol_code(TEAM, worker)?,
            Some(&first.ca_pem()?),
            &format!("{worker}'s tablet"),
        )?;
        Ok(())
    };

    let seeder = Store::new(&scratch.join("seeder"))?;
    let caseload = {
        let repo = seeder.open()?;
        enrol(&repo, "Seeder")?;
        let caseload = data::seed(&repo, sizes, &mut data::rng(1))?;
        repo.sync(None)?;
        caseload
    };
    let template = Store::new(&scratch.join("template"))?;
    let template_device = {
        let repo = template.open()?;
        enrol(&repo, "Template")?;
        repo.sync(None)?;
        repo.profile().device_id
    };
    let mut fleet = Vec::with_capacity(sizes.devices);
    for d in 0..sizes.devices {
        let store = template.clone_as_new_device(&scratch.join(format!("device-{d}")))?;
        let repo = store.open()?;
        enrol(&repo, &format!("Worker {d}"))?;
        data::offline_day(&repo, &caseload, sizes, &mut data::rng(1000 + d as u64))?;
        fleet.push((store, repo));
    }
    // Each device had synced before going offline: the relay holds its
    // sync state per document, as for the template.
    let devices: Vec<String> = fleet.iter().map(|(_, r)| r.profile().device_id).collect();
    for node in &mut nodes {
        node.stop()?;
    }
    match &url {
        None => crate::office::copy_relay_sync_states(&nodes[0].data, &template_device, &devices)?,
        Some(url) => {
            let db = url.rsplit('/').next().ok_or("a database name")?;
            let list = devices
                .iter()
                .map(|d| format!("'{d}'"))
                .collect::<Vec<_>>()
                .join(",");
            cluster.sql(
                db,
                &format!(
                    "INSERT INTO sync_states (team, doc_id, device_id, state)
                     SELECT s.team, s.doc_id, d, s.state FROM sync_states s, unnest(ARRAY[{list}]) AS d
                     WHERE s.device_id = '{template_device}'
                     ON CONFLICT DO NOTHING"
                ),
            );
        }
    }
    for node in &mut nodes {
        node.restart()?;
    }
    for (d, (_, repo)) in fleet.iter().enumerate() {
        repo.set_server_url(&nodes[d % nodes.len()].url)?;
    }

    let relay_cpu = |nodes: &[Server]| -> Result<f64> {
        nodes
            .iter()
            .map(|n| Ok(n.sample()?.cpu_s))
            .sum::<Result<f64>>()
    };
    let database_cpu = || match url {
        Some(_) => cluster.postmaster_pid().map_or(0.0, procstat::tree_cpu_s),
        None => 0.0,
    };
    let barrier = Barrier::new(fleet.len() + 1);
    let (relay_before, database_before) = (relay_cpu(&nodes)?, database_cpu());
    let (results, wall) = std::thread::scope(|s| {
        let handles: Vec<_> = fleet
            .iter()
            .map(|(_, repo)| {
                let barrier = &barrier;
                s.spawn(move || {
                    barrier.wait();
                    repo.sync(None)
                })
            })
            .collect();
        barrier.wait();
        let t = Instant::now();
        let results: Vec<_> = handles
            .into_iter()
            .map(|h| {
                h.join()
                    .map_err(|_| "a device's thread panicked".to_string())
            })
            .collect();
        (results, t.elapsed())
    });
    let measured = Measured {
        wall_s: wall.as_secs_f64(),
        relay_cpu_s: relay_cpu(&nodes)? - relay_before,
        database_cpu_s: database_cpu() - database_before,
    };
    for r in results {
        let summary = r?.map_err(|e| format!("a device's sync failed: {e}"))?;
        if (summary.documents_sent as usize) < sizes.touched_families {
            return Err(format!(
                "a device sent only {} documents, expected at least {}",
                summary.documents_sent, sizes.touched_families
            )
            .into());
        }
    }
    for mut node in nodes {
        node.stop()?;
    }
    let _ = std::fs::remove_dir_all(scratch);
    Ok(measured)
}
