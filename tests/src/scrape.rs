//! Reading a real relay's metrics listener (`--metrics-listen`): its
//! address from the relay's log, a plain HTTP/1.1 `GET`, and one sample
//! out of the OpenMetrics text.

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use crate::Relay;

/// The metrics listener's address, from the relay's log (within 30 s).
pub fn metrics_addr(relay: &Relay) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let log = relay.log();
        if let Some(rest) = log.split("metrics listening on http://").nth(1) {
            return rest.split('/').next().expect("an address").to_string();
        }
        assert!(Instant::now() < deadline, "no metrics listener: {log}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `GET path` over plain HTTP/1.1: (status code, body).
pub fn http_get(addr: &str, path: &str) -> (u16, String) {
    let mut s = std::net::TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .expect("request");
    let mut response = String::new();
    s.read_to_string(&mut response).expect("response");
    let status = response
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .expect("a status");
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

/// The value of the sample `name` (with its labels, exactly as written);
/// `None` if absent.
pub fn metric_sample(metrics: &str, name: &str) -> Option<f64> {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
}
