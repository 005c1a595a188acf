//! The relay's Prometheus metrics, /healthz and /readyz on their own
//! listener (`--metrics-listen`, issue 14), scraped from a real relay
//! process while a real device syncs.

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use linkbook_core::*;
use linkbook_tests::{Device, Relay, http_get as get, metric_sample, metrics_addr};

/// The value of the sample `name` (with its labels, exactly as written), 0
/// if absent.
fn sample(metrics: &str, name: &str) -> f64 {
    metric_sample(metrics, name).unwrap_or(0.0)
}

#[test]
fn a_sync_moves_the_counters_and_the_labels_name_no_one() -> Result<()> {
    let relay = Relay::start_with(&["--metrics-listen", "127.0.0.1:0"]);
    let addr = metrics_addr(&relay);
    assert_eq!(get(&addr, "/healthz").0, 200);
    assert_eq!(get(&addr, "/readyz").0, 200);
    let (status, before) = get(&addr, "/metrics");
    assert_eq!(status, 200);

    let asha = Device::enrolled(&relay, "north", "Asha");
    let family = asha.add_family(&NewFamily {
        name: "Okafor".into(),
        ..Default::default()
    })?;
    asha.add_note(family, "Met at the visitor centre", NoteCategory::Visit)?;
    asha.sync(None)?;

    // The relay counts a connection's end after the device has gone.
    let deadline = Instant::now() + Duration::from_secs(30);
    let after = loop {
        let (_, after) = get(&addr, "/metrics");
        if sample(&after, "linkbook_syncs_total{outcome=\"Completed\"}") >= 1.0 {
            break after;
        }
        assert!(
            Instant::now() < deadline,
            "no completed sync counted: {after}"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    for name in [
        "linkbook_messages_total{direction=\"Received\"}",
        "linkbook_messages_total{direction=\"Sent\"}",
        "linkbook_message_bytes_total{direction=\"Received\"}",
        "linkbook_message_bytes_total{direction=\"Sent\"}",
        "linkbook_storage_commit_seconds_count",
    ] {
        assert!(
            sample(&after, name) > sample(&before, name),
            "{name} did not move: {after}"
        );
    }
    assert!(
        sample(&after, "linkbook_loaded_documents") >= 2.0,
        "{after}"
    );
    assert_eq!(sample(&after, "linkbook_connected_devices"), 0.0, "{after}");

    // Nothing names a person, a device, a team or a family.
    let enrolment = asha.enrolment()?.expect("enrolled");
    for secret in [
        enrolment.device_id.as_str(),
        "north",
        "Asha",
        "Okafor",
        &family.to_string(),
    ] {
        assert!(!after.contains(secret), "{secret} in the metrics");
    }
    Ok(())
}

#[test]
fn metrics_can_be_switched_off_and_a_taken_port_leaves_the_relay_serving() -> Result<()> {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = taken.local_addr().expect("addr").port();
    let relay = Relay::start_with(&["--metrics-listen", &format!("127.0.0.1:{port}")]);
    let asha = Device::enrolled(&relay, "north", "Asha");
    asha.sync(None)?;
    assert!(
        relay.log().contains("serving without metrics"),
        "{}",
        relay.log()
    );

    let off = Relay::start_with(&["--metrics-listen", "off"]);
    let ben = Device::enrolled(&off, "north", "Ben");
    ben.sync(None)?;
    assert!(!off.log().contains("metrics listening"), "{}", off.log());
    Ok(())
}

/// The metrics listener may be opened to a monitoring host, so it keeps
/// limits of its own (metrics.rs `METRICS_LIMITS`): connections that send
/// nothing are closed after the 5 s header timeout, at most 16 from one
/// address are held at once, and a scrape works again as soon as they
/// are gone; devices' syncs are not touched meanwhile.
#[test]
fn silent_connections_to_the_metrics_listener_are_capped_and_closed() -> Result<()> {
    let relay = Relay::start_with(&["--metrics-listen", "127.0.0.1:0"]);
    let addr = metrics_addr(&relay);
    // Forty silent connections.
    let mut silent: Vec<std::net::TcpStream> = (0..40)
        .map(|_| std::net::TcpStream::connect(&addr).expect("connect"))
        .collect();
    let opened = Instant::now();
    // Beyond the cap, connections are closed at once (a read ends in EOF
    // or a reset); those held wait for their headers.
    let mut held = Vec::new();
    for mut s in silent.drain(..) {
        s.set_read_timeout(Some(Duration::from_millis(500)))
            .expect("timeout");
        let mut byte = [0u8; 1];
        match s.read(&mut byte) {
            Ok(0) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                held.push(s)
            }
            Err(_) => {}
            Ok(_) => panic!("the listener sent data unasked"),
        }
    }
    assert!(
        (1..=16).contains(&held.len()),
        "{} of 40 silent connections held",
        held.len()
    );

    let asha = Device::enrolled(&relay, "north", "Asha");
    let family = asha.add_family(&NewFamily {
        name: "Okafor".into(),
        ..Default::default()
    })?;
    asha.add_note(
        family,
        "Synced while the metrics port is held",
        NoteCategory::Visit,
    )?;
    asha.sync(None)?;

    // The held ones are closed when the header timeout passes.
    for s in &mut held {
        s.set_read_timeout(Some(Duration::from_secs(20)))
            .expect("timeout");
        let mut byte = [0u8; 1];
        match s.read(&mut byte) {
            Ok(0) => {}
            Err(e)
                if !matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            other => panic!("a silent connection was still open after 20 s: {other:?}"),
        }
    }
    assert!(opened.elapsed() < Duration::from_secs(20));
    // A client sending its headers a byte every half second is closed by
    // the header timeout too.
    let mut dribbling = std::net::TcpStream::connect(&addr).expect("connect");
    let mut write_closed = false;
    for _ in 0..20 {
        if dribbling.write_all(b"G").is_err() {
            write_closed = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    assert!(
        write_closed,
        "a dribbling client is closed by the header timeout"
    );
    let (status, body) = get(&addr, "/metrics");
    assert_eq!(status, 200);
    assert!(body.contains("linkbook_syncs_total"));
    Ok(())
}

/// The largest request a scraper's address could send: 8 MiB of headers
/// to the metrics listener (the relay's memory capped) is refused or cut,
/// never buffered whole, and the listener and the relay go on serving.
#[test]
fn an_oversized_request_to_the_metrics_listener_is_refused_and_it_keeps_serving() -> Result<()> {
    let relay = Relay::start_with(&["--metrics-listen", "127.0.0.1:0"]);
    relay.cap_memory();
    let addr = metrics_addr(&relay);
    let mut s = std::net::TcpStream::connect(&addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(20)))
        .expect("timeout");
    s.set_write_timeout(Some(Duration::from_secs(20)))
        .expect("timeout");
    let _ = write!(s, "GET /metrics HTTP/1.1\r\nHost: {addr}\r\nX-Big: ");
    let chunk = vec![b'a'; 64 * 1024];
    let mut sent = 0usize;
    while sent < 8 * 1024 * 1024 {
        if s.write_all(&chunk).is_err() {
            break;
        }
        sent += chunk.len();
    }
    let mut answer = Vec::new();
    let _ = s.read_to_end(&mut answer);
    let answer = String::from_utf8_lossy(&answer);
    assert!(
        answer.is_empty()
            || answer.starts_with("HTTP/1.1 431")
            || answer.starts_with("HTTP/1.1 400"),
        "an oversized request was answered: {}",
        answer.lines().next().unwrap_or_default()
    );
    assert_eq!(get(&addr, "/healthz").0, 200, "the listener still serves");
    let asha = Device::enrolled(&relay, "north", "Asha");
    asha.sync(None)?;
    Ok(())
}
