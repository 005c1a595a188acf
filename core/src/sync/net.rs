//! Connections to the relay: TCP + rustls (trusting the platform's web roots
//! plus an optional pinned office CA), an HTTP POST for enrolment and the
//! sync WebSocket. Blocking: the apps call sync from a worker thread
//! (docs/adr/0003).

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore, StreamOwned};
use url::Url;

use crate::error::{Error, Result};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// A relay silent for this long is taken as gone.
pub const IO_TIMEOUT: Duration = Duration::from_secs(30);

/// A relay address: `https://host[:port]` (or, on loopback only, `http://`).
#[derive(Debug, Clone)]
pub(crate) struct Endpoint {
    url: Url,
    tls: bool,
}

impl Endpoint {
    pub(crate) fn parse(server: &str) -> Result<Self> {
        let bad = |why: &str| Error::invalid("server url", format!("'{server}': {why}"));
        let url =
            Url::parse(server.trim()).map_err(|_| bad("not a URL (expected https://host:port)"))?;
        let tls = match url.scheme() {
            "https" | "wss" => true,
            "http" | "ws" => false,
            _ => return Err(bad("expected https://")),
        };
        let host = url.host_str().ok_or_else(|| bad("no host"))?;
        if !tls && !is_loopback(host) {
            return Err(bad(
                "plain http is only allowed to a relay on this machine (127.0.0.1, ::1, localhost); use https",
            ));
        }
        Ok(Endpoint { url, tls })
    }

    fn host(&self) -> String {
        self.url
            .host_str()
            .unwrap_or_default()
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string()
    }

    fn port(&self) -> u16 {
        self.url
            .port_or_known_default()
            .unwrap_or(if self.tls { 443 } else { 80 })
    }

    /// The URL of `path` on this relay, as `scheme` (http/ws).
    pub(crate) fn url_for(&self, path: &str, websocket: bool) -> String {
        let scheme = match (websocket, self.tls) {
            (true, true) => "wss",
            (true, false) => "ws",
            (false, true) => "https",
            (false, false) => "http",
        };
        let host = self.url.host_str().unwrap_or_default();
        format!("{scheme}://{host}:{}{path}", self.port())
    }
}

fn is_loopback(host: &str) -> bool {
    let h = host.trim_start_matches('[').trim_end_matches(']');
    h == "localhost"
        || h.parse::<std::net::IpAddr>()
            .map(|ip| ip.is_loopback())
            .unwrap_or(false)
}

/// TCP, or TLS over TCP.
#[derive(Debug)]
pub(crate) enum Stream {
    Plain(TcpStream),
    Tls(Box<StreamOwned<ClientConnection, TcpStream>>),
}

impl Stream {
    pub(crate) fn set_read_timeout(&self, timeout: Duration) -> std::io::Result<()> {
        match self {
            Stream::Plain(s) => s.set_read_timeout(Some(timeout)),
            Stream::Tls(s) => s.sock.set_read_timeout(Some(timeout)),
        }
    }
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Stream::Plain(s) => s.read(buf),
            Stream::Tls(s) => s.read(buf),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self {
            Stream::Plain(s) => s.write(buf),
            Stream::Tls(s) => s.write(buf),
        }
    }
    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            Stream::Plain(s) => s.flush(),
            Stream::Tls(s) => s.flush(),
        }
    }
}

pub(crate) fn network(context: &str, e: impl std::fmt::Display) -> Error {
    Error::Network(format!("{context}: {e}"))
}

/// A read from the sync WebSocket that failed, said as what the relay did.
pub(crate) fn read_failed(e: tungstenite::Error) -> Error {
    match e {
        // Over tungstenite's limits (64 MiB a message, 16 MiB a frame).
        tungstenite::Error::Capacity(c) => Error::Network(format!(
            "the relay sent a message larger than this device accepts ({c})"
        )),
        e => network("the sync connection dropped", e),
    }
}

fn tls_config(ca_pem: Option<&str>) -> Result<Arc<ClientConfig>> {
    let mut roots = RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    if let Some(pem) = ca_pem {
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(pem.as_bytes())
            .collect::<std::result::Result<_, _>>()
            .map_err(|_| Error::invalid("CA certificate", "not a PEM certificate"))?;
        if certs.is_empty() {
            return Err(Error::invalid(
                "CA certificate",
                "the PEM holds no certificate",
            ));
        }
        for c in certs {
            roots
                .add(c)
                .map_err(|e| Error::invalid("CA certificate", e.to_string()))?;
        }
    }
    let config =
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .map_err(|e| network("TLS", e))?
            .with_root_certificates(roots)
            .with_no_client_auth();
    Ok(Arc::new(config))
}

/// Opens a connection to the relay.
pub(crate) fn connect(endpoint: &Endpoint, ca_pem: Option<&str>) -> Result<Stream> {
    let host = endpoint.host();
    let addrs: Vec<_> = (host.as_str(), endpoint.port())
        .to_socket_addrs()
        .map_err(|e| network(&format!("cannot resolve {host}"), e))?
        .collect();
    let mut last = None;
    let mut tcp = None;
    for addr in addrs {
        match TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT) {
            Ok(s) => {
                tcp = Some(s);
                break;
            }
            Err(e) => last = Some(e),
        }
    }
    let tcp = tcp.ok_or_else(|| {
        network(
            &format!("cannot reach the relay at {host}:{}", endpoint.port()),
            last.map(|e| e.to_string())
                .unwrap_or_else(|| "no address".into()),
        )
    })?;
    tcp.set_read_timeout(Some(IO_TIMEOUT))
        .map_err(|e| network("socket", e))?;
    tcp.set_write_timeout(Some(IO_TIMEOUT))
        .map_err(|e| network("socket", e))?;
    tcp.set_nodelay(true).map_err(|e| network("socket", e))?;
    if !endpoint.tls {
        return Ok(Stream::Plain(tcp));
    }
    let name = ServerName::try_from(host.clone())
        .map_err(|_| Error::invalid("server url", format!("bad host {host}")))?;
    let conn = ClientConnection::new(tls_config(ca_pem)?, name).map_err(|e| network("TLS", e))?;
    let mut stream = StreamOwned::new(conn, tcp);
    // Complete the handshake now so a certificate problem is reported as such.
    while stream.conn.is_handshaking() {
        stream.conn.complete_io(&mut stream.sock).map_err(|e| {
            network(
                "TLS handshake with the relay failed (is its certificate trusted? pass --ca)",
                e,
            )
        })?;
    }
    Ok(Stream::Tls(Box::new(stream)))
}

/// An HTTP/1.1 POST of a JSON body; returns (status, body).
pub(crate) fn post_json(
    endpoint: &Endpoint,
    ca_pem: Option<&str>,
    path: &str,
    body: &serde_json::Value,
) -> Result<(u16, serde_json::Value)> {
    http_json(endpoint, ca_pem, "POST", path, Some(body), None)
}

/// An HTTP/1.1 POST of JSON with a bearer token; returns (status, body).
pub(crate) fn post_json_auth(
    endpoint: &Endpoint,
    ca_pem: Option<&str>,
    path: &str,
    body: &serde_json::Value,
    token: &str,
) -> Result<(u16, serde_json::Value)> {
    http_json(endpoint, ca_pem, "POST", path, Some(body), Some(token))
}

/// An HTTP/1.1 GET with a bearer token; returns (status, body).
pub(crate) fn get_json(
    endpoint: &Endpoint,
    ca_pem: Option<&str>,
    path: &str,
    token: &str,
) -> Result<(u16, serde_json::Value)> {
    http_json(endpoint, ca_pem, "GET", path, None, Some(token))
}

/// One HTTP/1.1 request (`Connection: close`) with an optional JSON body.
fn http_json(
    endpoint: &Endpoint,
    ca_pem: Option<&str>,
    method: &str,
    path: &str,
    body: Option<&serde_json::Value>,
    token: Option<&str>,
) -> Result<(u16, serde_json::Value)> {
    let mut stream = connect(endpoint, ca_pem)?;
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let host = endpoint.url.host_str().unwrap_or_default();
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {host}:{}\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        endpoint.port(),
        body.len()
    );
    stream
        .write_all(request.as_bytes())
        .map_err(|e| network("sending to the relay", e))?;
    stream
        .flush()
        .map_err(|e| network("sending to the relay", e))?;
    let mut response = Vec::new();
    match stream.read_to_end(&mut response) {
        Ok(_) => {}
        // A TLS peer closing without close_notify after a complete response.
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof && !response.is_empty() => {}
        Err(e) => return Err(network("reading the relay's answer", e)),
    }
    let text = String::from_utf8_lossy(&response);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| network("relay answer", "not HTTP"))?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| network("relay answer", "no status"))?;
    let chunked = head.lines().any(|l| {
        l.to_ascii_lowercase()
            .starts_with("transfer-encoding: chunked")
    });
    let body = if chunked {
        dechunk(body)
    } else {
        body.to_string()
    };
    let json = serde_json::from_str(&body).unwrap_or(serde_json::Value::Null);
    Ok((status, json))
}

fn dechunk(body: &str) -> String {
    let mut out = String::new();
    let mut rest = body;
    while let Some((size, after)) = rest.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if n == 0 || after.len() < n {
            break;
        }
        out.push_str(&after[..n]);
        rest = after[n..].trim_start_matches("\r\n");
    }
    out
}

/// A stream that first yields bytes already read from it (those after an
/// HTTP response head), then reads on.
#[derive(Debug)]
pub(crate) struct Prefixed {
    pre: Vec<u8>,
    pos: usize,
    pub(crate) inner: Stream,
}

impl Prefixed {
    pub(crate) fn new(inner: Stream) -> Self {
        Prefixed {
            pre: Vec::new(),
            pos: 0,
            inner,
        }
    }

    pub(crate) fn set_read_timeout(&self, timeout: Duration) -> std::io::Result<()> {
        self.inner.set_read_timeout(timeout)
    }
}

impl Read for Prefixed {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.pos < self.pre.len() {
            let n = buf.len().min(self.pre.len() - self.pos);
            buf[..n].copy_from_slice(&self.pre[self.pos..self.pos + n]);
            self.pos += n;
            return Ok(n);
        }
        self.inner.read(buf)
    }
}

impl Write for Prefixed {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.inner.write(buf)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// The opening of a pipelined sync WebSocket: the upgrade request is sent
/// and the caller may write WebSocket frames at once, in the same flight,
/// before [`Pipelined::finish`] reads the relay's answer. Only Linkbook's
/// own relay is spoken to this way (RFC 6455 asks a client to wait for the
/// 101; the relay, hyper underneath, keeps bytes that follow the request
/// for the upgraded connection), to save the round trip of waiting
/// (docs/adr/0005).
#[derive(Debug)]
pub(crate) struct Pipelined {
    key: String,
}

pub(crate) fn open_pipelined(
    endpoint: &Endpoint,
    ca_pem: Option<&str>,
    path: &str,
    token: &str,
) -> Result<(tungstenite::WebSocket<Prefixed>, Pipelined)> {
    let mut stream = connect(endpoint, ca_pem)?;
    let key = tungstenite::handshake::client::generate_key();
    let host = endpoint.url.host_str().unwrap_or_default();
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {host}:{}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: {key}\r\nAuthorization: Bearer {token}\r\n\r\n",
        endpoint.port()
    );
    stream
        .write_all(request.as_bytes())
        .map_err(|e| network("sending to the relay", e))?;
    let ws = tungstenite::WebSocket::from_raw_socket(
        Prefixed::new(stream),
        tungstenite::protocol::Role::Client,
        None,
    );
    Ok((ws, Pipelined { key }))
}

impl Pipelined {
    /// Reads the relay's answer to the upgrade request: Ok for a 101 with
    /// the right accept key, else the status and body of the refusal.
    pub(crate) fn finish(
        self,
        ws: &mut tungstenite::WebSocket<Prefixed>,
    ) -> Result<std::result::Result<(), (u16, Vec<u8>)>> {
        let stream = ws.get_mut();
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        let head_end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            if buf.len() > 64 * 1024 {
                return Err(network("relay answer", "HTTP head too long"));
            }
            let n = stream
                .inner
                .read(&mut chunk)
                .map_err(|e| network("opening the sync connection", e))?;
            if n == 0 {
                return Err(Error::Network(
                    "the relay closed the connection while opening the sync".into(),
                ));
            }
            buf.extend_from_slice(&chunk[..n]);
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
        let status: u16 = head
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| network("relay answer", "no status"))?;
        let header = |name: &str| {
            head.lines().find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.trim()
                    .eq_ignore_ascii_case(name)
                    .then(|| v.trim().to_string())
            })
        };
        let mut rest = buf[head_end..].to_vec();
        if status != 101 {
            let length: usize = header("content-length")
                .and_then(|l| l.parse().ok())
                .unwrap_or(0)
                .min(64 * 1024);
            while rest.len() < length {
                match stream.inner.read(&mut chunk) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => rest.extend_from_slice(&chunk[..n]),
                }
            }
            rest.truncate(length);
            return Ok(Err((status, rest)));
        }
        let expected = tungstenite::handshake::derive_accept_key(self.key.as_bytes());
        if header("sec-websocket-accept").as_deref() != Some(expected.as_str()) {
            return Err(network("opening the sync connection", "wrong accept key"));
        }
        stream.pre = std::mem::take(&mut rest);
        stream.pos = 0;
        Ok(Ok(()))
    }
}
