//! A malicious relay cannot crash or stall `linkbook sync` (issue 11,
//! finding 1): the real CLI binary, enrolled with a real relay, is pointed
//! at a relay written here. It serves TLS with the real relay's development
//! certificate (so the device trusts it), answers `join` with `peer` and
//! `changed-since` as Linkbook's relay does, then pushes hostile bytes: every
//! Automerge crasher as sync message changes (V1 and V2, for the device's
//! family and for a new id), the largest message the device accepts, garbage
//! CBOR, counts of 2^32, or nothing at all. The CLI runs under a 1.5 GB
//! address-space limit: it must exit with a clear error (never a signal,
//! never past its own timeout), its store intact, and sync with the real
//! relay afterwards.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use linkbook_core::protocol::{Message, PeerMetadata};
use linkbook_tests::{CliDevice, Relay, fuzz_crashers, proc_status_kb, sync_carrying};
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::protocol::frame::Frame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};

/// The largest WebSocket message the device reads (tungstenite's default,
/// `core/src/sync/net.rs` sets no other).
const DEVICE_MAX_MESSAGE: usize = 64 << 20;
/// The address-space limit the CLI runs under.
const CLI_AS_LIMIT: &str = "--as=1500000000";
/// The CLI's own bound on a silent relay is 30 s (`net::IO_TIMEOUT`).
const CLI_DEADLINE: Duration = Duration::from_secs(75);

/// What the malicious relay does once the device has joined.
#[derive(Clone)]
enum Attack {
    /// Sends these binary WebSocket messages, then waits.
    Frames(Vec<Vec<u8>>),
    /// Sends one binary message of exactly `len` bytes (a `sync` whose data
    /// is garbage), in fragments the device's frame limit allows.
    Huge(usize),
    /// Says nothing after `changed-since` (the TCP connection stays open).
    Silent,
    /// Only pings, every 100 ms, forever.
    Pings,
    /// 20,000 change-less sync messages stating heads nobody has, for the
    /// listed document (`true`) or each for a new id (`false`), then quiet.
    Chatty(bool),
}

/// A `sync` message for `doc` from the relay.
fn sync_frame(device: &str, doc: &str, data: Vec<u8>) -> Vec<u8> {
    Message::Sync {
        sender_id: "evil-relay".into(),
        target_id: device.into(),
        document_id: doc.into(),
        data,
    }
    .encode()
}

fn leb128(mut n: u64, out: &mut Vec<u8>) {
    loop {
        let byte = (n & 0x7f) as u8;
        n >>= 7;
        if n == 0 {
            out.push(byte);
            return;
        }
        out.push(byte | 0x80);
    }
}

/// A V1 sync message (type byte 0x42) with no heads or needs whose `have`
/// list (or change list) claims 2^32 entries and carries `entries` of the
/// smallest kind (an empty have: no hashes, no filter; an empty change).
fn claims_2_32(haves: bool, entries: usize) -> Vec<u8> {
    let mut m = vec![0x42, 0, 0];
    if haves {
        leb128(1 << 32, &mut m);
        m.extend(std::iter::repeat_n([0u8, 0u8], entries).flatten());
    } else {
        m.push(0);
        leb128(1 << 32, &mut m);
        m.extend(std::iter::repeat_n(0u8, entries));
    }
    m
}

/// A CBOR `sync` message whose `data` is an array of `n` zeros (some
/// clients send bytes as an array of integers): the smallest CBOR items.
fn cbor_array_bomb(device: &str, doc: &str, n: usize) -> Vec<u8> {
    let mut head = Vec::new();
    let fields: [(&str, &str); 4] = [
        ("type", "sync"),
        ("senderId", "evil-relay"),
        ("targetId", device),
        ("documentId", doc),
    ];
    head.push(0xa5); // a map of 5
    let text = |s: &str, out: &mut Vec<u8>| {
        out.push(0x78);
        out.push(u8::try_from(s.len()).expect("short"));
        out.extend_from_slice(s.as_bytes());
    };
    for (k, v) in fields {
        text(k, &mut head);
        text(v, &mut head);
    }
    text("data", &mut head);
    head.push(0x9a); // array, 4-byte length
    head.extend_from_slice(&u32::try_from(n).expect("fits").to_be_bytes());
    head.resize(head.len() + n, 0);
    head
}

/// The malicious relay: TLS with `cert`/`key`, one attack per connection.
struct EvilRelay {
    url: String,
    stop: tokio::sync::watch::Sender<bool>,
}

impl EvilRelay {
    async fn start(real: &Relay, docs: Vec<String>, attack: Attack) -> EvilRelay {
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};
        let dir = real.data.path();
        let certs: Vec<CertificateDer<'static>> =
            CertificateDer::pem_file_iter(dir.join("dev-cert.pem"))
                .expect("cert")
                .collect::<Result<_, _>>()
                .expect("certs");
        let key = PrivateKeyDer::from_pem_file(dir.join("dev-key.pem")).expect("key");
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .expect("server config");
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let url = format!("https://{}", listener.local_addr().expect("addr"));
        let (stop, stopped) = tokio::sync::watch::channel(false);
        tokio::spawn(async move {
            loop {
                let mut stopped = stopped.clone();
                let (tcp, _) = tokio::select! {
                    c = listener.accept() => match c { Ok(c) => c, Err(_) => continue },
                    _ = stopped.changed() => return,
                };
                let (acceptor, docs, attack) = (acceptor.clone(), docs.clone(), attack.clone());
                tokio::spawn(async move {
                    let serve = serve(acceptor, tcp, docs, attack);
                    tokio::select! {
                        _ = tokio::time::timeout(Duration::from_secs(120), serve) => {}
                        _ = stopped.changed() => {}
                    }
                });
            }
        });
        EvilRelay { url, stop }
    }
}

impl Drop for EvilRelay {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}

async fn serve(
    acceptor: tokio_rustls::TlsAcceptor,
    tcp: tokio::net::TcpStream,
    docs: Vec<String>,
    attack: Attack,
) {
    let tls = match acceptor.accept(tcp).await {
        Ok(tls) => tls,
        Err(e) => return eprintln!("malicious relay: TLS accept failed: {e}"),
    };
    let Some(mut ws) = upgrade(tls).await else {
        return;
    };
    // The device's `join` (its opening syncs follow in the same flight).
    let device = loop {
        match ws.next().await {
            Some(Ok(WsMessage::Binary(b))) => {
                if let Ok(Message::Join { sender_id, .. }) = Message::decode(&b) {
                    break sender_id;
                }
            }
            Some(Ok(_)) => {}
            _ => return,
        }
    };
    let (mut tx, mut rx) = ws.split();
    // Read (and drop) whatever the device sends, so it never blocks writing.
    tokio::spawn(async move { while let Some(Ok(_)) = rx.next().await {} });
    let opening = [
        Message::Peer {
            sender_id: "evil-relay".into(),
            target_id: device.clone(),
            peer_metadata: PeerMetadata {
                max_message_bytes: Some(16 << 20),
                ..PeerMetadata::default()
            },
            selected_protocol_version: "1".into(),
        },
        Message::ChangedSince {
            cursor: 1,
            document_ids: docs.clone(),
            purged: Vec::new(),
            retention_days: None,
            lease_days: None,
        },
    ];
    for m in opening {
        if tx.send(WsMessage::Binary(m.encode().into())).await.is_err() {
            return;
        }
    }
    match attack {
        Attack::Frames(messages) => {
            for m in messages {
                if send_fragmented(&mut tx, &m).await.is_err() {
                    return;
                }
            }
        }
        Attack::Huge(len) => {
            if send_fragmented(&mut tx, &huge_sync(&device, &docs[0], len))
                .await
                .is_err()
            {
                return;
            }
        }
        Attack::Silent => {}
        Attack::Chatty(listed) => {
            for i in 0..20_000u32 {
                let doc = match listed {
                    true => docs[0].clone(),
                    false => linkbook_core::DocumentId::random().to_string(),
                };
                let mut hash = [0u8; 32];
                hash[..4].copy_from_slice(&i.to_be_bytes());
                let data = automerge::sync::Message {
                    heads: vec![automerge::ChangeHash(hash)],
                    need: Vec::new(),
                    have: vec![automerge::sync::Have::default()],
                    changes: automerge::sync::ChunkList::empty(),
                    flags: None,
                    version: automerge::sync::MessageVersion::V1,
                }
                .encode();
                let m = sync_frame(&device, &doc, data);
                if tx.send(WsMessage::Binary(m.into())).await.is_err() {
                    return;
                }
            }
        }
        Attack::Pings => loop {
            if tx.send(WsMessage::Ping(Vec::new().into())).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        },
    }
    // Then hold the connection open, saying nothing.
    tokio::time::sleep(Duration::from_secs(100)).await;
}

/// Sends one binary WebSocket message in frames of at most 8 MiB (the
/// device reads frames of up to 16 MiB, messages of up to 64 MiB).
async fn send_fragmented<S>(tx: &mut S, message: &[u8]) -> Result<(), ()>
where
    S: futures_util::Sink<WsMessage> + Unpin,
{
    let mut parts = message.chunks(8 << 20).peekable();
    let mut first = true;
    while let Some(part) = parts.next() {
        let opcode = if first {
            OpCode::Data(Data::Binary)
        } else {
            OpCode::Data(Data::Continue)
        };
        first = false;
        let f = Frame::message(part.to_vec(), opcode, parts.peek().is_none());
        tx.send(WsMessage::Frame(f)).await.map_err(|_| ())?;
    }
    Ok(())
}

/// Answers the device's upgrade request with a 101, keeping the WebSocket
/// frames it pipelined after the request (tungstenite's server handshake
/// refuses them as "junk", Linkbook's relay keeps them: docs/adr/0005).
async fn upgrade<S>(mut stream: S) -> Option<tokio_tungstenite::WebSocketStream<S>>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        if buf.len() > 64 * 1024 {
            return None;
        }
        let n = stream.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..end]).into_owned();
    let key = head.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim()
            .eq_ignore_ascii_case("sec-websocket-key")
            .then(|| v.trim().to_string())
    })?;
    let accept = tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes());
    let answer = format!(
        "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Accept: {accept}\r\n\r\n"
    );
    stream.write_all(answer.as_bytes()).await.ok()?;
    let config = WebSocketConfig::default().max_message_size(Some(256 << 20));
    Some(
        tokio_tungstenite::WebSocketStream::from_partially_read(
            stream,
            buf[end..].to_vec(),
            tokio_tungstenite::tungstenite::protocol::Role::Server,
            Some(config),
        )
        .await,
    )
}

/// A `sync` message of exactly `len` bytes: an Automerge V1 sync message
/// whose one change is `len`-ish bytes of garbage.
fn huge_sync(device: &str, doc: &str, len: usize) -> Vec<u8> {
    let garbage = |n: usize| sync_carrying(&vec![0x5a; n], automerge::sync::MessageVersion::V1);
    let mut n = len;
    loop {
        let m = sync_frame(device, doc, garbage(n));
        match m.len().cmp(&len) {
            std::cmp::Ordering::Equal => return m,
            std::cmp::Ordering::Greater => n -= m.len() - len,
            std::cmp::Ordering::Less => n += len - m.len(),
        }
    }
}

/// How one `linkbook sync` against the malicious relay ended.
struct Outcome {
    code: Option<i32>,
    stderr: String,
    took: Duration,
    peak_kb: u64,
}

/// Runs `linkbook sync --server URL` as `device` under the memory cap, with
/// a deadline; polls its peak resident size (VmHWM) while it runs.
fn sync_against(device: &CliDevice, url: &str) -> Outcome {
    let cmd = device.command(&["sync", "--server", url]);
    let mut p = std::process::Command::new("prlimit");
    p.arg(CLI_AS_LIMIT)
        .arg("--")
        .arg(cmd.get_program())
        .args(cmd.get_args());
    for (k, v) in cmd.get_envs() {
        match v {
            Some(v) => p.env(k, v),
            None => p.env_remove(k),
        };
    }
    let stderr_file = tempfile::NamedTempFile::new().expect("stderr file");
    let mut child = p
        .stdout(std::process::Stdio::null())
        .stderr(stderr_file.reopen().expect("reopen"))
        .spawn()
        .expect("run linkbook under prlimit");
    // prlimit execs linkbook: the same process id.
    let pid = child.id();
    let start = Instant::now();
    let mut peak_kb = 0;
    let status = loop {
        // 0 once the process is gone: the peak seen before stays.
        peak_kb = peak_kb.max(proc_status_kb(pid, "VmHWM"));
        if let Some(status) = child.try_wait().expect("wait") {
            break Some(status);
        }
        if start.elapsed() > CLI_DEADLINE {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let took = start.elapsed();
    let stderr = std::fs::read_to_string(stderr_file.path()).unwrap_or_default();
    match status {
        None => panic!("linkbook sync hung past {CLI_DEADLINE:?}: {stderr}"),
        Some(status) => {
            use std::os::unix::process::ExitStatusExt;
            assert!(
                status.signal().is_none(),
                "linkbook sync was killed by signal {:?}: {stderr}",
                status.signal()
            );
            Outcome {
                code: status.code(),
                stderr,
                took,
                peak_kb,
            }
        }
    }
}

/// A CLI device enrolled with `relay`, with a family and two notes synced.
fn enrolled_device(relay: &Relay) -> (CliDevice, String) {
    let d = CliDevice::new("Asha");
    let code = relay.enrol_code("north", "Asha");
    let ca = relay.ca_path().display().to_string();
    d.ok(&[
        "enrol", "--server", &relay.url, "--code", &code, "--ca", &ca,
    ]);
    let family = d.ok(&["family", "add", "--name", "Okoro"]);
    d.ok(&["note", "add", &family, "--text", "first visit"]);
    d.ok(&["sync"]);
    d.ok(&[
        "note",
        "add",
        &family,
        "--text",
        "second visit, not yet synced",
    ]);
    (d, family)
}

/// What the device shows of its records (compared before and after).
fn records(d: &CliDevice, family: &str) -> String {
    format!(
        "{}\n{}",
        d.ok(&["family", "list"]),
        d.ok(&["note", "list", family])
    )
}

/// Runs each attack against the device and checks the outcome; returns
/// one line of figures per attack.
async fn attack_all(
    relay: &Relay,
    device: &CliDevice,
    family: &str,
    attacks: Vec<(String, Vec<String>, Attack)>,
    expect: impl Fn(&str, &Outcome),
) -> Vec<String> {
    let before = records(device, family);
    let mut figures = Vec::new();
    for (name, docs, attack) in attacks {
        let evil = EvilRelay::start(relay, docs, attack).await;
        let out = tokio::task::block_in_place(|| sync_against(device, &evil.url));
        drop(evil);
        eprintln!(
            "{name}: exit {:?} in {:?}, peak {} kB: {}",
            out.code,
            out.took,
            out.peak_kb,
            out.stderr.trim()
        );
        expect(&name, &out);
        assert!(
            out.peak_kb < 1_000_000,
            "{name}: the CLI's peak was {} kB",
            out.peak_kb
        );
        figures.push(format!("{name}: {:?}, {} kB", out.took, out.peak_kb));
        // Nothing stored was lost or half-written.
        assert_eq!(device.integrity_check(), "ok", "{name}");
        assert_eq!(
            tokio::task::block_in_place(|| records(device, family)),
            before,
            "{name}"
        );
    }
    figures
}

/// A refusal: either a non-zero exit saying what the relay did wrong, or
/// (for bytes refused as one document's) exit 0 with a warning naming the
/// skipped document, as for any document the device cannot read.
fn refused(name: &str, out: &Outcome) {
    match out.code {
        Some(0) => assert!(
            out.stderr.contains("warning: document") && out.stderr.contains("was skipped"),
            "{name}: exit 0 without saying which document was skipped: {}",
            out.stderr
        ),
        Some(_) => assert!(
            out.stderr.contains("relay"),
            "{name}: the error does not say what went wrong: {}",
            out.stderr
        ),
        None => panic!("{name}: killed by a signal: {}", out.stderr),
    }
    assert!(!out.stderr.contains("panicked"), "{name}: {}", out.stderr);
}

/// After the attacks, the device syncs with the real relay: its unsynced
/// note goes up, and a second device sees it.
fn syncs_with_the_real_relay(relay: &Relay, device: &CliDevice, family: &str) {
    device.ok(&["sync", "--server", &relay.url]);
    let other = CliDevice::new("Ben");
    let code = relay.enrol_code("north", "Ben");
    let ca = relay.ca_path().display().to_string();
    other.ok(&[
        "enrol", "--server", &relay.url, "--code", &code, "--ca", &ca,
    ]);
    other.ok(&["sync"]);
    let notes = other.ok(&["note", "list", family]);
    assert!(notes.contains("second visit"), "{notes}");
    assert_eq!(device.integrity_check(), "ok");
    assert_eq!(relay.integrity_check(), "ok");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crashers_pushed_by_a_malicious_relay_are_refused_by_linkbook_sync() {
    let relay = tokio::task::block_in_place(Relay::start);
    let (device, family) = tokio::task::block_in_place(|| enrolled_device(&relay));
    let new = linkbook_core::DocumentId::random().to_string();
    let device_id = device.json(&["profile", "show"])["device_id"]
        .as_str()
        .expect("device id")
        .to_string();
    let mut attacks = Vec::new();
    for (name, bytes) in fuzz_crashers("automerge-load") {
        for (v, version) in [
            ("V1", automerge::sync::MessageVersion::V1),
            ("V2", automerge::sync::MessageVersion::V2),
        ] {
            for (which, doc) in [("its family", &family), ("a new id", &new)] {
                attacks.push((
                    format!("{name} as {v} changes for {which}"),
                    vec![doc.clone()],
                    Attack::Frames(vec![sync_frame(
                        &device_id,
                        doc,
                        sync_carrying(&bytes, version.clone()),
                    )]),
                ));
            }
        }
    }
    for (name, bytes) in fuzz_crashers("automerge-sync") {
        attacks.push((
            format!("{name} as a sync message"),
            vec![family.clone()],
            Attack::Frames(vec![sync_frame(&device_id, &family, bytes)]),
        ));
    }
    for (name, bytes) in fuzz_crashers("protocol") {
        attacks.push((
            format!("{name} as a frame"),
            vec![family.clone()],
            Attack::Frames(vec![bytes]),
        ));
    }
    let garbage: Vec<u8> = (0..4096u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
        .collect();
    attacks.push((
        "garbage CBOR".into(),
        vec![family.clone()],
        Attack::Frames(vec![garbage]),
    ));
    let figures = attack_all(&relay, &device, &family, attacks, refused).await;
    eprintln!("{}", figures.join("\n"));
    tokio::task::block_in_place(|| syncs_with_the_real_relay(&relay, &device, &family));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_largest_messages_and_counts_of_2_32_are_refused_within_memory() {
    let relay = tokio::task::block_in_place(Relay::start);
    let (device, family) = tokio::task::block_in_place(|| enrolled_device(&relay));
    let device_id = device.json(&["profile", "show"])["device_id"]
        .as_str()
        .expect("device id")
        .to_string();
    let docs = vec![family.clone()];
    let room = DEVICE_MAX_MESSAGE - 1024;
    let attacks = vec![
        (
            "a sync message of exactly the largest size".to_string(),
            docs.clone(),
            Attack::Huge(DEVICE_MAX_MESSAGE),
        ),
        (
            "one byte over the largest size".to_string(),
            docs.clone(),
            Attack::Huge(DEVICE_MAX_MESSAGE + 1),
        ),
        (
            "claims 2^32 changes, carries 3".to_string(),
            docs.clone(),
            Attack::Frames(vec![sync_frame(&device_id, &family, claims_2_32(false, 3))]),
        ),
        (
            "claims 2^32 changes, carries as many empty ones as fit".to_string(),
            docs.clone(),
            Attack::Frames(vec![sync_frame(
                &device_id,
                &family,
                claims_2_32(false, room),
            )]),
        ),
        (
            "claims 2^32 haves, carries as many empty ones as fit".to_string(),
            docs.clone(),
            Attack::Frames(vec![sync_frame(
                &device_id,
                &family,
                claims_2_32(true, room / 2),
            )]),
        ),
        (
            "a CBOR array of as many zeros as fit".to_string(),
            docs.clone(),
            Attack::Frames(vec![cbor_array_bomb(&device_id, &family, room)]),
        ),
    ];
    let figures = attack_all(&relay, &device, &family, attacks, refused).await;
    eprintln!("{}", figures.join("\n"));
    tokio::task::block_in_place(|| syncs_with_the_real_relay(&relay, &device, &family));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_that_stops_answering_mid_sync_ends_it_within_the_cli_timeout() {
    let relay = tokio::task::block_in_place(Relay::start);
    let (device, family) = tokio::task::block_in_place(|| enrolled_device(&relay));
    let attacks = vec![
        (
            "silent after changed-since".to_string(),
            vec![family.clone()],
            Attack::Silent,
        ),
        (
            "only pings after changed-since".to_string(),
            vec![family.clone()],
            Attack::Pings,
        ),
    ];
    let figures = attack_all(&relay, &device, &family, attacks, |name, out| {
        refused(name, out);
        assert!(
            out.stderr.contains("stopped answering"),
            "{name}: {}",
            out.stderr
        );
        assert!(out.took < Duration::from_secs(45), "{name}: {:?}", out.took);
    })
    .await;
    eprintln!("{}", figures.join("\n"));
    tokio::task::block_in_place(|| syncs_with_the_real_relay(&relay, &device, &family));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_that_chatters_without_ending_the_sync_is_left() {
    let relay = tokio::task::block_in_place(Relay::start);
    let (device, family) = tokio::task::block_in_place(|| enrolled_device(&relay));
    let attacks = vec![
        (
            "20,000 heads nobody has for its family".to_string(),
            vec![family.clone()],
            Attack::Chatty(true),
        ),
        (
            "20,000 sync messages for new ids".to_string(),
            vec![family.clone()],
            Attack::Chatty(false),
        ),
    ];
    let figures = attack_all(&relay, &device, &family, attacks, |name, out| {
        refused(name, out);
        // Ended by the count, not by the quiet after the 20,000.
        assert!(
            out.stderr.contains("without ending its sync"),
            "{name}: {}",
            out.stderr
        );
    })
    .await;
    eprintln!("{}", figures.join("\n"));
    tokio::task::block_in_place(|| syncs_with_the_real_relay(&relay, &device, &family));
}

/// The same shapes from a device with a copied token, at the real relay
/// (its messages are at most 16 MiB): each closes only that connection,
/// and the relay's peak stays within 256 MiB of where it was.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_shapes_sent_to_the_relay_close_only_that_connection() {
    let relay = tokio::task::block_in_place(Relay::start);
    let (device, family) = tokio::task::block_in_place(|| enrolled_device(&relay));
    let ca = relay.ca_pem();
    let creds =
        tokio::task::block_in_place(|| relay.enrol_credentials("north", "Mallory", "attacker"));
    let room = (16 << 20) - 1024;
    let before = proc_status_kb(relay.pid(), "VmHWM");
    eprintln!("relay VmHWM before: {before} kB");
    let shapes = [
        (
            "a CBOR array of zeros",
            cbor_array_bomb("relay", &family, room),
        ),
        (
            "2^32 changes claimed, empty ones carried",
            sync_frame("relay", &family, claims_2_32(false, room)),
        ),
        (
            "2^32 haves claimed, empty ones carried",
            sync_frame("relay", &family, claims_2_32(true, room / 2)),
        ),
    ];
    for (name, bytes) in shapes {
        let mut ws = linkbook_tests::joined(&relay, &ca, &creds).await;
        let start = Instant::now();
        tokio::time::timeout(
            Duration::from_secs(30),
            ws.send(WsMessage::Binary(bytes.into())),
        )
        .await
        .expect("sent in time")
        .expect("send");
        let error = linkbook_tests::closing_error(&mut ws).await;
        eprintln!(
            "relay, {name}: closed in {:?} ({error:?}); VmHWM {} kB",
            start.elapsed(),
            proc_status_kb(relay.pid(), "VmHWM")
        );
        tokio::task::block_in_place(|| device.ok(&["sync"]));
    }
    let after = proc_status_kb(relay.pid(), "VmHWM");
    assert!(
        after < before + 256 * 1024,
        "the relay's peak grew from {before} to {after} kB"
    );
    assert_eq!(relay.integrity_check(), "ok");
}
