//! Workloads 1–3, against Linkbook's relay and the JavaScript sync server in
//! turn, on the same seeded caseload:
//!
//! 1. **office-sync**: devices back from a day offline all sync at once.
//! 2. **fresh-device**: a new tablet enrols and pulls the team's caseload
//!    (in a child process, for its peak memory).
//! 3. **latency**: one device of workload 1 over a slow link (a delaying
//!    proxy), its wall time counted in round trips.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Barrier;
use std::time::{Duration, Instant};

use linkbook_core::{DocumentId, Repo, SyncSummary};

use crate::data::{self, Caseload, Sizes, Store};
use crate::procstat;
use crate::proxy::{Link, Proxy};
use crate::report::{Against, Better, Report};
use crate::servers::{Server, Side};
use crate::{Error, Result, Workloads};

pub const OFFICE: &str = "office-sync";
pub const FRESH: &str = "fresh-device";
pub const LATENCY: &str = "latency";

const TEAM: &str = "north";

/// The slow link of workload 3: 100 ms each way, 10 Mbit/s each way (a
/// modest office or 4G connection).
pub const SLOW_LINK: Link = Link {
    one_way_delay: Duration::from_millis(100),
    bytes_per_second: 10_000_000 / 8,
};

/// One side's measurements, before they are paired into figures.
#[derive(Debug, Default, Clone)]
struct Office {
    wall_s: f64,
    server_cpu_s: f64,
    server_peak_mb: f64,
    wire_bytes_per_device: f64,
    round_trips_per_device: f64,
    messages_per_device: f64,
    slowest_device_s: f64,
}

#[derive(Debug, Default, Clone)]
struct Latency {
    wall_s: f64,
    round_trips: f64,
    bytes_up: u64,
    bytes_down: u64,
    flights: u64,
}

#[derive(Debug, Default, Clone)]
struct Fresh {
    wall_s: f64,
    wire_bytes: f64,
    peak_mb: f64,
    documents: f64,
}

#[derive(Debug, Default)]
struct Side3 {
    office: Option<Office>,
    latency: Option<Latency>,
    fresh: Option<Fresh>,
}

/// Documents per session when a device syncs the caseload with the JS
/// server. Its `NodeWSServerAdapter` pings every 5 s and terminates a client
/// whose pong has not been read by the next ping; it reads the pong only
/// after it has applied every message before it, one at a time on its one
/// thread, so a session must stay well under 5 s of its work: 100 case files
/// of 50 notes did not on this (busy) 2-core machine.
const SEED_BATCH: usize = 20;

/// Syncs every document `repo` holds with the JS server, in sessions of
/// [`SEED_BATCH`] documents.
fn sync_with_peer_in_batches(repo: &Repo, url: &str) -> Result<()> {
    let ids: Vec<DocumentId> = repo.document_ids()?.into_iter().map(|(id, _)| id).collect();
    for batch in ids.chunks(SEED_BATCH) {
        repo.sync_documents_with(url, None, None, batch, None)?;
    }
    Ok(())
}

/// The JS server could not take the setup: the run goes on without it, and
/// the report says why its figures are missing.
fn peer_failed(peer: &mut Option<Server>, report: &mut Report, what: &str, e: &Error) {
    eprintln!("the JS server failed to {what}: {e}; going on without it");
    report.note(
        OFFICE,
        format!("the JS automerge-repo server failed to {what} ({e}); its figures are missing"),
    );
    if let Some(mut p) = peer.take() {
        let _ = p.stop();
    }
}

fn addr_of(url: &str) -> Result<std::net::SocketAddr> {
    let hostport = url.split("://").nth(1).unwrap_or(url);
    Ok(hostport
        .trim_end_matches('/')
        .parse()
        .map_err(|e| format!("server address {url}: {e}"))?)
}

fn mb(kb: u64) -> f64 {
    kb as f64 / 1024.0
}

/// Seeds both servers from one store, then runs the chosen workloads against each.
pub fn run(
    sizes: &Sizes,
    which: &Workloads,
    with_peer: bool,
    work: &Path,
    scratch: &Path,
    report: &mut Report,
) -> Result<()> {
    let mut relay = Server::linkbook(&work.join("relay"), &[])?;
    let mut peer = if with_peer {
        Some(Server::peer(&work.join("peer"))?)
    } else {
        None
    };

    // The seed: one enrolled device makes the whole caseload, then syncs it
    // to both servers.
    let seeder = Store::new(&scratch.join("seeder"))?;
    let caseload = {
        let repo = seeder.open()?;
        repo.enrol(
            &relay.url,
            &relay.enrol_code(TEAM, "Seeder")?,
            Some(&relay.ca_pem()?),
            "seeding tablet",
        )?;
        let t = Instant::now();
        let caseload = data::seed(&repo, sizes, &mut data::rng(1))?;
        let generated = t.elapsed();
        let t = Instant::now();
        repo.sync(None)?;
        let to_relay = t.elapsed();
        let mut to_peer = Duration::ZERO;
        if let Some(p) = &peer {
            let t = Instant::now();
            if let Err(e) = sync_with_peer_in_batches(&repo, &p.url) {
                peer_failed(&mut peer, report, "upload the caseload from one device", &e);
            }
            to_peer = t.elapsed();
        }
        eprintln!(
            "seeded {} families x {} notes, {} family days in {:.1} s; uploaded to the relay in {:.1} s{}",
            sizes.families,
            sizes.notes_per_family,
            sizes.family_days,
            generated.as_secs_f64(),
            to_relay.as_secs_f64(),
            if peer.is_some() {
                format!(", to the JS server in {:.1} s", to_peer.as_secs_f64())
            } else {
                String::new()
            }
        );
        caseload
    };
    let _ = std::fs::remove_dir_all(&seeder.dir);
    // The fleet's template: a worker's device that got the caseload the way
    // devices do, by syncing (with both servers), not by typing all of it.
    let template = Store::new(&scratch.join("template"))?;
    let template_device = {
        let t = Instant::now();
        let repo = template.open()?;
        repo.enrol(
            &relay.url,
            &relay.enrol_code(TEAM, "Template")?,
            Some(&relay.ca_pem()?),
            "template tablet",
        )?;
        repo.sync(None)?;
        if let Some(p) = &peer
            && let Err(e) = sync_with_peer_in_batches(&repo, &p.url)
        {
            peer_failed(&mut peer, report, "give a device the caseload", &e);
        }
        eprintln!(
            "the fleet's template device synced the caseload in {:.1} s",
            t.elapsed().as_secs_f64()
        );
        repo.profile().device_id
    };
    let sizes_note = format!(
        "server holds {} family case files x {} notes + {} family days; {} devices each: {} families touched, {} new notes each, {} field edits, {} check-ins; device store {:.1} MB",
        sizes.families,
        sizes.notes_per_family,
        sizes.family_days,
        sizes.devices,
        sizes.touched_families,
        sizes.new_notes_per_family,
        sizes.field_edits,
        sizes.day_checkins,
        template.size() as f64 / 1e6
    );

    let mut results = [Side3::default(), Side3::default()];
    for (i, side) in [Side::Linkbook, Side::Peer].into_iter().enumerate() {
        let server = match side {
            Side::Linkbook => &mut relay,
            Side::Peer => match peer.as_mut() {
                Some(p) => p,
                None => continue,
            },
        };
        eprintln!("-- {}", side.label());
        let fleet_dir = scratch.join(format!("fleet-{i}"));
        let r = run_side(
            side,
            server,
            sizes,
            which,
            &template,
            &template_device,
            &caseload,
            &fleet_dir,
        );
        let _ = std::fs::remove_dir_all(&fleet_dir);
        match r {
            Ok(r) => results[i] = r,
            Err(e) if side == Side::Peer => {
                eprintln!("the JS peer's run failed: {e}");
            }
            Err(e) => return Err(e),
        }
    }
    if which.fresh {
        eprintln!("-- fresh device");
        results[0].fresh = Some(fresh_device(Side::Linkbook, &relay, &relay, work)?);
        if let Some(p) = &peer {
            match fresh_device(Side::Peer, p, &relay, work) {
                Ok(f) => results[1].fresh = Some(f),
                Err(e) => eprintln!("the JS peer's fresh device failed: {e}"),
            }
        }
    }
    let _ = relay.stop();
    if let Some(p) = peer.as_mut() {
        let _ = p.stop();
    }
    let [lb, js] = results;

    if which.office {
        report.note(OFFICE, sizes_note.clone());
        if let Some(l) = &lb.office {
            let p = js.office.as_ref();
            let peer = |f: fn(&Office) -> f64| Against::Peer(p.map(f));
            report.add(
                OFFICE,
                "wall_s",
                "s",
                l.wall_s,
                peer(|o| o.wall_s),
                Better::Lower,
            );
            report.add(
                OFFICE,
                "server_cpu_s",
                "s",
                l.server_cpu_s,
                peer(|o| o.server_cpu_s),
                Better::Lower,
            );
            report.add(
                OFFICE,
                "server_peak_rss_mb",
                "MB",
                l.server_peak_mb,
                peer(|o| o.server_peak_mb),
                Better::Lower,
            );
            report.add(
                OFFICE,
                "wire_bytes_per_device",
                "bytes",
                l.wire_bytes_per_device,
                peer(|o| o.wire_bytes_per_device),
                Better::Lower,
            );
            report.add(
                OFFICE,
                "round_trips_per_device",
                "round trips",
                l.round_trips_per_device,
                peer(|o| o.round_trips_per_device),
                Better::Lower,
            );
            report.add(
                OFFICE,
                "messages_per_device",
                "messages",
                l.messages_per_device,
                peer(|o| o.messages_per_device),
                Better::Lower,
            );
            report.add(
                OFFICE,
                "slowest_device_s",
                "s",
                l.slowest_device_s,
                peer(|o| o.slowest_device_s),
                Better::Lower,
            );
        }
    }
    if which.fresh {
        report.note(
            FRESH,
            format!(
                "a new tablet enrols, then pulls {} case files x {} notes + {} family days (device in a child process, store on disk)",
                sizes.families, sizes.notes_per_family, sizes.family_days
            ),
        );
        if let Some(l) = &lb.fresh {
            let p = js.fresh.as_ref();
            let peer = |f: fn(&Fresh) -> f64| Against::Peer(p.map(f));
            report.add(
                FRESH,
                "wall_s",
                "s",
                l.wall_s,
                peer(|o| o.wall_s),
                Better::Lower,
            );
            report.add(
                FRESH,
                "wire_bytes",
                "bytes",
                l.wire_bytes,
                peer(|o| o.wire_bytes),
                Better::Lower,
            );
            report.add(
                FRESH,
                "device_peak_rss_mb",
                "MB",
                l.peak_mb,
                peer(|o| o.peak_mb),
                Better::Lower,
            );
            report.add(
                FRESH,
                "documents",
                "documents",
                l.documents,
                peer(|o| o.documents),
                Better::Higher,
            );
        }
    }
    if which.office {
        report.note(
            OFFICE,
            "round trips per device: one such device's sync over a 100 ms link, wall time / round-trip time (as in latency)",
        );
    }
    if which.latency {
        let rtt = SLOW_LINK.round_trip().as_secs_f64();
        report.note(
            LATENCY,
            format!(
                "one device of {OFFICE} syncs alone through a proxy adding {} ms each way at {} Mbit/s (and one round trip per TCP connection, its handshake)",
                SLOW_LINK.one_way_delay.as_millis(),
                SLOW_LINK.bytes_per_second * 8 / 1_000_000
            ),
        );
        if let Some(l) = &lb.latency {
            let p = js.latency.as_ref();
            let busier = l.bytes_up.max(l.bytes_down);
            let limit_s = rtt + SLOW_LINK.transfer(busier).as_secs_f64();
            report.note(
                LATENCY,
                format!(
                    "limit: 1 round trip ({:.0} ms) + {} bytes (Linkbook's busier direction) at the link's rate = {:.0} ms; Linkbook's client flights: {}",
                    rtt * 1000.0,
                    busier,
                    limit_s * 1000.0,
                    l.flights
                ),
            );
            report.add(
                LATENCY,
                "round_trips",
                "round trips",
                l.round_trips,
                Against::Peer(p.map(|o| o.round_trips)),
                Better::Lower,
            );
            report.add(
                LATENCY,
                "wall_s",
                "s",
                l.wall_s,
                Against::Peer(p.map(|o| o.wall_s)),
                Better::Lower,
            );
            report.add(
                LATENCY,
                "wall_vs_limit_s",
                "s",
                l.wall_s,
                Against::Limit(limit_s),
                Better::Lower,
            );
            report.add(
                LATENCY,
                "round_trips_vs_limit",
                "round trips",
                l.round_trips,
                Against::Limit(limit_s / rtt),
                Better::Lower,
            );
        }
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn run_side(
    side: Side,
    server: &mut Server,
    sizes: &Sizes,
    which: &Workloads,
    template: &Store,
    template_device: &str,
    caseload: &Caseload,
    fleet_dir: &Path,
) -> Result<Side3> {
    let mut out = Side3::default();
    // The fleet: copies of the seed, each its own device, each with a day
    // of offline work (the same work, by seed, against either server). The
    // last one is workload 3's.
    // The last device is workload 3's (also workload 1's round-trip figure).
    let one_device = which.latency || which.office;
    let count = if which.office { sizes.devices } else { 0 } + usize::from(one_device);
    let t = Instant::now();
    let mut stores = Vec::with_capacity(count);
    for d in 0..count {
        let store = template.clone_as_new_device(&fleet_dir.join(format!("device-{d}")))?;
        let repo = store.open()?;
        if side == Side::Linkbook {
            repo.enrol(
                &server.url,
                &server.enrol_code(TEAM, &format!("Worker {d}"))?,
                Some(&server.ca_pem()?),
                &format!("tablet {d}"),
            )?;
        }
        data::offline_day(&repo, caseload, sizes, &mut data::rng(1000 + d as u64))?;
        stores.push((store, repo));
    }
    if count > 0 {
        eprintln!(
            "   {count} devices cloned and worked offline in {:.1} s",
            t.elapsed().as_secs_f64()
        );
    }
    if side == Side::Linkbook {
        // Before going offline each device had synced: the relay holds a
        // sync state per (document, device), as it did for the seed device.
        server.stop()?;
        let devices: Vec<String> = stores.iter().map(|(_, r)| r.profile().device_id).collect();
        copy_relay_sync_states(&server.data, template_device, &devices)?;
    }
    server.restart()?;

    if one_device && let Some((_, repo)) = stores.pop() {
        let proxy = Proxy::start(addr_of(&server.url)?, SLOW_LINK)?;
        let url = proxy.url_for(&server.url);
        let t = Instant::now();
        let summary = sync(side, &repo, &url)?;
        let wall = t.elapsed().as_secs_f64();
        let (_, up, down, flights) = proxy.counters.snapshot();
        eprintln!(
            "   latency: {wall:.2} s, {} messages, {up} bytes up, {down} down, {flights} client flights",
            summary.messages_sent + summary.messages_received
        );
        out.latency = Some(Latency {
            wall_s: wall,
            round_trips: wall / SLOW_LINK.round_trip().as_secs_f64(),
            bytes_up: up,
            bytes_down: down,
            flights,
        });
        // Workload 1 starts from a cold server.
        server.restart()?;
    }

    if which.office {
        let mut office = office_sync(side, server, &stores, sizes)?;
        office.round_trips_per_device = out.latency.as_ref().map(|l| l.round_trips).unwrap_or(0.0);
        out.office = Some(office);
    }
    Ok(out)
}

fn sync(side: Side, repo: &Repo, url: &str) -> Result<SyncSummary> {
    Ok(match side {
        Side::Linkbook => {
            repo.set_server_url(url)?;
            repo.sync(None)?
        }
        Side::Peer => repo.sync_with(url, None, None, None)?,
    })
}

fn office_sync(
    side: Side,
    server: &Server,
    stores: &[(Store, Repo)],
    sizes: &Sizes,
) -> Result<Office> {
    let proxy = Proxy::start(addr_of(&server.url)?, Link::default())?;
    let url = proxy.url_for(&server.url);
    let n = stores.len();
    let barrier = Barrier::new(n + 1);
    let pid = server.pid();
    let peak_reset = procstat::reset_peak(pid);
    let before = server.sample()?;
    let (results, wall) = std::thread::scope(|s| {
        let handles: Vec<_> = stores
            .iter()
            .map(|(_, repo)| {
                let (barrier, url) = (&barrier, &url);
                s.spawn(move || {
                    barrier.wait();
                    let t = Instant::now();
                    let r = sync(side, repo, url);
                    (r, t.elapsed())
                })
            })
            .collect();
        barrier.wait();
        let t = Instant::now();
        let results: Vec<_> = handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| (Err("device thread panicked".into()), Duration::ZERO))
            })
            .collect();
        (results, t.elapsed())
    });
    let after = server.sample()?;
    let (connections, up, down, _) = proxy.counters.snapshot();
    let mut messages = 0u64;
    let mut slowest = Duration::ZERO;
    for (r, took) in results {
        let s = r.map_err(|e| format!("a device's sync failed: {e}"))?;
        if (s.documents_sent as usize) < sizes.touched_families {
            return Err(format!(
                "a device sent only {} documents, expected at least {}: {s:?}",
                s.documents_sent, sizes.touched_families
            )
            .into());
        }
        messages += u64::from(s.messages_sent + s.messages_received);
        slowest = slowest.max(took);
    }
    let per = |x: u64| x as f64 / n as f64;
    let office = Office {
        wall_s: wall.as_secs_f64(),
        server_cpu_s: after.cpu_s - before.cpu_s,
        server_peak_mb: mb(after.peak_kb),
        wire_bytes_per_device: per(up + down),
        // Counting them here would count every pipelined answer a device
        // writes while the relay's messages arrive: the figure comes from the
        // same device's sync over a slow link (workload 3).
        round_trips_per_device: 0.0,
        messages_per_device: per(messages),
        slowest_device_s: slowest.as_secs_f64(),
    };
    eprintln!(
        "   office sync: {:.2} s, server {:.2} CPU s, peak {:.1} MB{}, {connections} connections",
        office.wall_s,
        office.server_cpu_s,
        office.server_peak_mb,
        if peak_reset {
            ""
        } else {
            " (peak since start)"
        }
    );
    Ok(office)
}

/// Copies the seed device's relay-side sync states to each fleet device
/// (the relay is stopped).
pub(crate) fn copy_relay_sync_states(relay_data: &Path, from: &str, to: &[String]) -> Result<()> {
    // Keyed (encrypted at rest) the one way the relay opens it.
    let mut conn = linkbook_server::at_rest::open_database(
        &relay_data.join(linkbook_server::DB_FILE),
        &linkbook_server::at_rest::KeySource::DataDir,
    )
    .map_err(|e| e.to_string())?;
    let tx = conn.transaction()?;
    {
        let mut stmt = tx.prepare(
            "INSERT OR REPLACE INTO sync_states (team, doc_id, device_id, state)
             SELECT team, doc_id, ?1, state FROM sync_states WHERE device_id = ?2",
        )?;
        for d in to {
            stmt.execute([d.as_str(), from])?;
        }
    }
    tx.commit()?;
    Ok(())
}

/// Workload 2 against `target`; the tablet enrols with the relay either way
/// (the JS server has no enrolment; the relay gives the team's directory).
fn fresh_device(side: Side, target: &Server, relay: &Server, work: &Path) -> Result<Fresh> {
    let dir = work.join(format!("fresh-{}", target.side == Side::Linkbook));
    let _ = std::fs::remove_dir_all(&dir);
    let proxy = Proxy::start(addr_of(&target.url)?, Link::default())?;
    let ca = work.join("relay-ca.pem");
    std::fs::write(&ca, relay.ca_pem()?).map_err(|e| format!("ca: {e}"))?;
    let mut cmd = Command::new(std::env::current_exe().map_err(|e| format!("exe: {e}"))?);
    cmd.arg("fresh-device")
        .arg("--dir")
        .arg(&dir)
        .args(["--code", &relay.enrol_code(TEAM, "New tablet")?])
        .arg("--ca")
        .arg(&ca);
    match side {
        Side::Linkbook => cmd.args(["--relay", &proxy.url_for(&target.url)]),
        Side::Peer => cmd
            .args(["--relay", &relay.url])
            .args(["--sync-with", &proxy.url_for(&target.url)]),
    };
    let f = run_fresh(cmd, &proxy);
    let _ = std::fs::remove_dir_all(&dir);
    f
}

fn run_fresh(mut cmd: Command, proxy: &Proxy) -> Result<Fresh> {
    let out = cmd.output().map_err(|e| format!("fresh device: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "the fresh device failed: {}",
            String::from_utf8_lossy(&out.stderr)
        )
        .into());
    }
    let line = String::from_utf8_lossy(&out.stdout);
    let v: serde_json::Value = serde_json::from_str(line.trim())
        .map_err(|e| format!("fresh device output {line:?}: {e}"))?;
    let (_, up, down, _) = proxy.counters.snapshot();
    let f = Fresh {
        wall_s: v["wall_s"].as_f64().unwrap_or(0.0),
        wire_bytes: (up + down) as f64,
        peak_mb: v["peak_kb"].as_f64().unwrap_or(0.0) / 1024.0,
        documents: v["documents"].as_f64().unwrap_or(0.0),
    };
    eprintln!(
        "   fresh device: {:.2} s, {:.0} bytes, peak {:.1} MB, {} documents",
        f.wall_s, f.wire_bytes, f.peak_mb, f.documents
    );
    Ok(f)
}

/// The hidden `fresh-device` subcommand: a new store enrols with the relay,
/// then syncs (with the relay, or with `--sync-with URL`), and prints its
/// figures as JSON.
pub fn fresh_device_main(args: &[String]) -> Result<()> {
    let get = |name: &str| -> Option<String> {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    let dir = PathBuf::from(get("--dir").ok_or("--dir")?);
    let relay = get("--relay").ok_or("--relay")?;
    let code = get("--code").ok_or("--code")?;
    let ca = std::fs::read_to_string(get("--ca").ok_or("--ca")?).map_err(|e| format!("ca: {e}"))?;
    let store = Store::new(&dir)?;
    let repo = store.open()?;
    repo.enrol(&relay, &code, Some(&ca), "new tablet")?;
    let t = Instant::now();
    let summary = match get("--sync-with") {
        Some(url) => repo.sync_with(&url, None, None, None)?,
        None => repo.sync(None)?,
    };
    let wall = t.elapsed().as_secs_f64();
    let documents = repo.document_ids()?.len();
    println!(
        "{}",
        serde_json::json!({
            "wall_s": wall,
            "documents": documents,
            "bytes_sent": summary.bytes_sent,
            "bytes_received": summary.bytes_received,
            "peak_kb": procstat::own_peak_kb(),
        })
    );
    Ok(())
}
