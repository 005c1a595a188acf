//! Workload 5, **relay-capacity**: how much memory idle connected devices
//! cost the relay (against the JavaScript server holding as many), and how
//! many small-note syncs per second the relay sustains on this machine.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use linkbook_core::protocol::{Message, PROTOCOL_VERSION, PeerMetadata};
use linkbook_core::{NewFamily, NoteCategory};
use rand::Rng;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

use crate::Result;
use crate::data::{self, Store};
use crate::report::{Against, Better, Report};
use crate::servers::Server;

pub const NAME: &str = "relay-capacity";

#[derive(Debug, Clone, Copy)]
pub struct CapacitySizes {
    pub idle_connections: usize,
    pub syncing_devices: usize,
    pub sync_seconds: u64,
}

/// An open connection, kept only to be dropped later.
type Open = Box<dyn std::any::Any + Send>;

/// Opens one sync WebSocket, joins, waits for `peer`; returns the socket
/// (kept open by the caller).
async fn connect_idle(
    url: &str,
    tls: Option<Arc<rustls::ClientConfig>>,
    token: Option<&str>,
    peer_id: String,
) -> Result<Open> {
    let hostport = url.split("://").nth(1).unwrap_or(url).to_string();
    let tcp = tokio::net::TcpStream::connect(&hostport)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let join = Message::Join {
        sender_id: peer_id,
        peer_metadata: PeerMetadata::default(),
        supported_protocol_versions: vec![PROTOCOL_VERSION.into()],
    }
    .encode();
    let mut request = match token {
        Some(_) => format!("wss://{hostport}/v1/sync"),
        None => format!("ws://{hostport}/"),
    }
    .into_client_request()
    .map_err(|e| format!("request: {e}"))?;
    if let Some(t) = token {
        request.headers_mut().insert(
            "Authorization",
            format!("Bearer {t}").parse().map_err(|_| "token header")?,
        );
    }
    macro_rules! finish {
        ($stream:expr) => {{
            let (ws, _) = tokio_tungstenite::client_async(request, $stream)
                .await
                .map_err(|e| format!("websocket: {e}"))?;
            let (mut sink, mut stream) = ws.split();
            sink.send(WsMessage::Binary(join.into()))
                .await
                .map_err(|e| format!("join: {e}"))?;
            loop {
                match stream.next().await {
                    Some(Ok(WsMessage::Binary(b))) => {
                        if matches!(Message::decode(&b), Ok(Message::Peer { .. })) {
                            break;
                        }
                        return Err("expected peer".into());
                    }
                    Some(Ok(_)) => continue,
                    _ => return Err("connection closed before peer".into()),
                }
            }
            let open: Open = Box::new((sink, stream));
            Ok(open)
        }};
    }
    match tls {
        Some(config) => {
            let host = hostport
                .rsplit_once(':')
                .map(|h| h.0)
                .unwrap_or("127.0.0.1");
            let name = ServerName::try_from(host.to_string()).map_err(|e| format!("name: {e}"))?;
            let stream = tokio_rustls::TlsConnector::from(config)
                .connect(name, tcp)
                .await
                .map_err(|e| format!("tls: {e}"))?;
            finish!(stream)
        }
        None => finish!(tcp),
    }
}

fn tls_config(ca_pem: &str) -> Result<Arc<rustls::ClientConfig>> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots
            .add(cert.map_err(|e| format!("ca: {e}"))?)
            .map_err(|e| format!("ca: {e}"))?;
    }
    Ok(Arc::new(
        rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("tls: {e}"))?
        .with_root_certificates(roots)
        .with_no_client_auth(),
    ))
}

/// Server RSS (MB) with `n` idle joined connections, and the RSS before.
fn idle_memory(
    server: &Server,
    n: usize,
    tls: Option<Arc<rustls::ClientConfig>>,
    token: Option<&str>,
    device_id: &str,
) -> Result<(f64, f64)> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| format!("runtime: {e}"))?;
    std::thread::sleep(Duration::from_millis(300));
    let before = server.sample()?.rss_kb as f64 / 1024.0;
    let after = runtime.block_on(async {
        let mut open = Vec::with_capacity(n);
        // A few at a time, as devices arriving: not a connection storm.
        for chunk in (0..n).collect::<Vec<_>>().chunks(50) {
            let mut tasks = Vec::new();
            for i in chunk {
                let peer_id = match token {
                    Some(_) => device_id.to_string(),
                    None => format!("idle-device-{i}"),
                };
                let url = server.url.clone();
                let (tls, token) = (tls.clone(), token.map(str::to_string));
                tasks.push(tokio::spawn(async move {
                    connect_idle(&url, tls, token.as_deref(), peer_id).await
                }));
            }
            for t in tasks {
                open.push(t.await.map_err(|e| format!("task: {e}"))??);
            }
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
        let after = server.sample()?.rss_kb as f64 / 1024.0;
        drop(open);
        Ok::<f64, crate::Error>(after)
    })?;
    Ok((before, after))
}

/// Durable one-row SQLite commits per second in `dir` (WAL, synchronous=FULL):
/// what the disk allows a store that commits every sync on its own.
fn durable_commits_per_second(dir: &Path, seconds: f64) -> Result<f64> {
    let path = dir.join("commit-rate.db");
    let conn = rusqlite::Connection::open(&path)?;
    conn.execute_batch(
        "PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL;
         CREATE TABLE t (id INTEGER PRIMARY KEY, data BLOB NOT NULL);",
    )?;
    let t = Instant::now();
    let mut n = 0u64;
    while t.elapsed().as_secs_f64() < seconds {
        conn.execute("INSERT INTO t (data) VALUES (?1)", [vec![7u8; 200]])?;
        n += 1;
    }
    let rate = n as f64 / t.elapsed().as_secs_f64();
    drop(conn);
    let _ = std::fs::remove_file(&path);
    Ok(rate)
}

pub fn run(
    sizes: &CapacitySizes,
    with_peer: bool,
    work: &Path,
    scratch: &Path,
    report: &mut Report,
) -> Result<()> {
    let limit = (sizes.idle_connections + 100).to_string();
    let mut relay = Server::linkbook(
        &work.join("capacity-relay"),
        &["--max-connections-per-device", &limit],
    )?;
    let ca = relay.ca_pem()?;

    // Idle connections: one device's token, many sockets (the per-device
    // limit raised), each joined.
    let creds = linkbook_core::enrol_device(
        &relay.url,
        &relay.enrol_code("idle", "Idle")?,
        Some(&ca),
        "idle tablet",
    )?;
    let (before, after) = idle_memory(
        &relay,
        sizes.idle_connections,
        Some(tls_config(&ca)?),
        Some(&creds.token),
        &creds.device_id,
    )?;
    let per_conn_kb = (after - before) * 1024.0 / sizes.idle_connections as f64;
    eprintln!(
        "   relay: {before:.1} MB idle, {after:.1} MB with {} connections ({per_conn_kb:.1} KB each)",
        sizes.idle_connections
    );
    let mut peer_figures = None;
    if with_peer {
        let r = (|| -> Result<(f64, f64)> {
            let mut peer = Server::peer(&work.join("capacity-peer"))?;
            let r = idle_memory(&peer, sizes.idle_connections, None, None, "");
            let _ = peer.stop();
            r
        })();
        match r {
            Ok((b, a)) => {
                let kb = (a - b) * 1024.0 / sizes.idle_connections as f64;
                eprintln!(
                    "   JS server: {b:.1} MB idle, {a:.1} MB with {} connections ({kb:.1} KB each)",
                    sizes.idle_connections
                );
                peer_figures = Some((a, kb));
            }
            Err(e) => eprintln!("the JS peer's idle connections failed: {e}"),
        }
    }
    report.note(
        NAME,
        format!(
            "{} idle joined connections (Linkbook over TLS, the JS server over plain ws); then {} devices (each its own team) add a note and sync, over and over, for {} s",
            sizes.idle_connections, sizes.syncing_devices, sizes.sync_seconds
        ),
    );
    report.add(
        NAME,
        "idle_connections_rss_mb",
        "MB",
        after,
        Against::Peer(peer_figures.map(|p| p.0)),
        Better::Lower,
    );
    report.add(
        NAME,
        "memory_per_idle_connection_kb",
        "KB",
        per_conn_kb,
        Against::Peer(peer_figures.map(|p| p.1)),
        Better::Lower,
    );

    // Sustained small syncs: each device in its own team, so a sync carries
    // one note up and nothing down.
    let mut devices = Vec::new();
    for d in 0..sizes.syncing_devices {
        let store = Store::new(&scratch.join(format!("capacity-device-{d}")))?;
        let repo = store.open()?;
        repo.enrol(
            &relay.url,
            &relay.enrol_code(&format!("team-{d}"), &format!("Worker {d}"))?,
            Some(&ca),
            "tablet",
        )?;
        let mut families = Vec::new();
        let mut rng = data::rng(500 + d as u64);
        for f in 0..10 {
            let id = repo.add_family(&NewFamily {
                name: format!("Family {f}"),
                ..Default::default()
            })?;
            for _ in 0..5 {
                repo.add_note(id, &data::note_text(&mut rng), NoteCategory::Visit)?;
            }
            families.push(id);
        }
        repo.sync(None)?;
        devices.push((repo, families));
    }
    let syncs = AtomicU64::new(0);
    let stop = AtomicBool::new(false);
    let cpu_before = relay.sample()?.cpu_s;
    let t = Instant::now();
    let errors: Vec<String> = std::thread::scope(|s| {
        let handles: Vec<_> = devices
            .iter()
            .enumerate()
            .map(|(d, (repo, families))| {
                let (syncs, stop) = (&syncs, &stop);
                s.spawn(move || -> Result<()> {
                    let mut rng = data::rng(900 + d as u64);
                    while !stop.load(Ordering::SeqCst) {
                        let f = families[rng.random_range(0..families.len())];
                        repo.add_note(f, &data::note_text(&mut rng), NoteCategory::PhoneCall)?;
                        let summary = repo.sync(None)?;
                        if summary.documents_sent == 0 {
                            return Err("a sync carried no note".into());
                        }
                        syncs.fetch_add(1, Ordering::SeqCst);
                    }
                    Ok(())
                })
            })
            .collect();
        std::thread::sleep(Duration::from_secs(sizes.sync_seconds));
        stop.store(true, Ordering::SeqCst);
        handles
            .into_iter()
            .filter_map(|h| match h.join() {
                Ok(Ok(())) => None,
                Ok(Err(e)) => Some(e.to_string()),
                Err(_) => Some("device thread panicked".into()),
            })
            .collect()
    });
    let elapsed = t.elapsed().as_secs_f64();
    if let Some(e) = errors.first() {
        return Err(format!("a syncing device failed: {e}").into());
    }
    let cpu = relay.sample()?.cpu_s - cpu_before;
    let n = syncs.load(Ordering::SeqCst) as f64;
    let rate = n / elapsed;
    let _ = relay.stop();
    let commits = durable_commits_per_second(work, 3.0)?;
    eprintln!(
        "   {n} syncs in {elapsed:.1} s: {rate:.1}/s; relay CPU {:.2} ms per sync; plain SQLite: {commits:.0} durable commits/s",
        cpu / n * 1000.0
    );
    report.note(
        NAME,
        format!(
            "limit for syncs/s: durable one-row SQLite commits per second on this disk ({commits:.0}/s): a relay that commits each sync on its own can do no more; devices and relay share the 2 cores"
        ),
    );
    report.add(
        NAME,
        "note_syncs_per_s",
        "syncs/s",
        rate,
        Against::Limit(commits),
        Better::Higher,
    );
    report.add(
        NAME,
        "relay_cpu_ms_per_sync",
        "ms",
        cpu / n * 1000.0,
        Against::Peer(None),
        Better::Lower,
    );
    Ok(())
}
