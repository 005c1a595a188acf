//! Shared helpers for Linkbook's end-to-end tests: devices as real `linkbook`
//! processes over real data directories in temp dirs.
//!
//! The tests run the `linkbook` binary built next to them
//! (`target/<profile>/linkbook`), so the test command builds the binaries
//! first: `cargo build --workspace && cargo test --workspace`.

use std::path::{Path, PathBuf};
use std::process::Command;

use tempfile::TempDir;

mod backend;
mod live;
pub mod pages;
mod scrape;

pub use backend::Backend;
pub use live::LivePeer;
pub use scrape::{http_get, metric_sample, metrics_addr};

// The relay process, device stores and the relay database's helpers are
// shared with core's tests and the bench (test-support/).
pub use linkbook_test_support::{
    Device, Relay, Run, erasure_ledger_of, open_keyed, relay_db, relay_integrity_check, relay_key,
    workspace_bin,
};

/// The texts of the notes `device` holds in `family`, sorted.
pub fn note_texts(device: &Device, family: linkbook_core::DocumentId) -> Vec<String> {
    let mut texts: Vec<String> = device
        .notes(family)
        .expect("notes")
        .into_iter()
        .map(|n| n.text)
        .collect();
    texts.sort();
    texts
}

/// The `linkbook` binary of this build.
pub fn linkbook_bin() -> PathBuf {
    workspace_bin("linkbook")
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
