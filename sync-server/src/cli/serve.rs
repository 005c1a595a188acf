//! Serving: the data directory's lock, the relay's limits from the
//! command line, TLS or loopback HTTP, the daily retention sweep, signals.

use std::io::Write;

use chrono::Utc;

use super::{Data, ServeArgs};
use crate::admin;
use crate::relay::Limits;
use crate::{Bound, Transport, tls};

/// The file in the data directory a serving relay holds locked.
pub const LOCK_FILE: &str = "relay.lock";

/// Takes the data directory's lock for as long as the returned file lives, or
/// says which process holds it. One relay per directory: each keeps documents
/// in memory, and a copy another process wrote behind is not reloaded yet
/// (compaction is conditional and never deletes what it did not cover, but
/// a second relay's devices would not see each other's changes live). Only `serve` takes it: the admin commands open the database
/// directly (SQLite's own locking) while a relay serves. An advisory lock
/// (`flock`), released by the kernel when the process dies, even by
/// SIGKILL: a crashed relay never leaves a stale lock behind.
pub(super) fn lock_data_dir(data: &std::path::Path) -> crate::Result<std::fs::File> {
    use std::io::{Read, Seek};
    let path = data.join(LOCK_FILE);
    let io = |e| crate::Error::Io {
        context: format!("opening {}", path.display()),
        source: e,
    };
    crate::at_rest::prepare_data_dir(data)?;
    let mut options = std::fs::OpenOptions::new();
    options.read(true).write(true).create(true).truncate(false);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(&path).map_err(io)?;
    match file.try_lock() {
        Ok(()) => {}
        Err(std::fs::TryLockError::WouldBlock) => {
            let mut holder = String::new();
            let _ = file.read_to_string(&mut holder);
            let holder = match holder.trim().parse::<u32>() {
                Ok(pid) => format!("(process {pid}) "),
                Err(_) => String::new(),
            };
            return Err(crate::Error::Config(format!(
                "another linkbook-server {holder}is already serving {}: stop it first, or give this relay its own --data directory",
                data.display()
            )));
        }
        Err(std::fs::TryLockError::Error(e)) => return Err(io(e)),
    }
    // Which process holds it, for the message above (informative only: the
    // lock is what counts).
    let _ = file
        .set_len(0)
        .and_then(|()| file.rewind())
        .and_then(|()| writeln!(file, "{}", std::process::id()));
    Ok(file)
}

pub(super) fn serve(store: Data<'_>, args: ServeArgs) -> crate::Result<()> {
    let data = store.path;
    // Held until this function returns, i.e. for the relay's whole life.
    // SQLite only: on PostgreSQL the database coordinates (storage/postgres).
    let _lock = match store.database_url {
        None => Some(lock_data_dir(data)?),
        Some(_) => {
            crate::at_rest::prepare_data_dir(data)?;
            None
        }
    };
    let max_message_bytes = args
        .max_message_bytes
        .max(linkbook_core::protocol::split::MIN_MAX_MESSAGE_BYTES);
    let max_document_ops = args.max_document_ops;
    let limits = Limits {
        max_message_bytes,
        max_queued_bytes: args
            .max_queued_bytes
            .unwrap_or(max_message_bytes.saturating_mul(4))
            .max(max_message_bytes.saturating_mul(2)),
        max_document_bytes: args.max_document_bytes,
        max_document_ops: args.max_document_ops,
        max_connections_per_device: args.max_connections_per_device,
        max_loaded_docs: args.max_loaded_docs.max(1),
        ping_interval_secs: args.ping_interval_secs,
        ..Limits::default()
    };
    if args.ping_interval_secs == 0 || args.ping_interval_secs * 2 > args.idle_timeout_secs {
        tracing::warn!(
            "--ping-interval-secs is off or over half of --idle-timeout-secs: idle devices may be disconnected"
        );
    }
    let conn_limits = crate::conn_limits::ConnLimits {
        max_unauthenticated: usize::try_from(args.max_unauthenticated).unwrap_or(usize::MAX),
        max_unauthenticated_per_address: usize::try_from(args.max_unauthenticated_per_address)
            .unwrap_or(usize::MAX),
        read_idle: std::time::Duration::from_secs(args.idle_timeout_secs),
        header_read_timeout: std::time::Duration::from_secs(args.header_timeout_secs),
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| crate::Error::Io {
            context: "starting the runtime".into(),
            source: e,
        })?;
    let state = runtime
        .block_on(store.open_for(limits, true))?
        .with_auth_limits(crate::ratelimit::AuthLimits {
            max_failures: args.auth_max_failures,
            window: std::time::Duration::from_secs(args.auth_window_secs),
            lockout: std::time::Duration::from_secs(args.auth_lockout_secs),
            ..crate::ratelimit::AuthLimits::default()
        })
        .with_conn_limits(conn_limits)
        .with_audit_quotas(crate::audit_upload::AuditQuotas {
            rows_per_upload: usize::try_from(args.audit_rows_per_upload).unwrap_or(usize::MAX),
            rows_per_day: args.audit_rows_per_day,
        })
        .with_console(
            crate::console::ConsoleConfig {
                idle_timeout: std::time::Duration::from_secs(args.console_idle_secs),
                session_lifetime: std::time::Duration::from_secs(args.console_session_hours * 3600),
                report_threshold: args.report_threshold,
                public_url: args.public_url.clone(),
            },
            crate::ratelimit::AuthLimits {
                max_failures: args.console_max_failures,
                window: std::time::Duration::from_secs(args.console_lockout_secs),
                lockout: std::time::Duration::from_secs(args.console_lockout_secs),
                ..crate::ratelimit::AuthLimits::default()
            },
        );
    let (transport, trust) = match (args.tls_cert, args.tls_key, args.insecure_http) {
        (Some(cert), Some(key), _) => (Transport::Tls { cert, key }, None),
        (_, _, true) => (Transport::InsecureHttp, None),
        _ => {
            let (cert, key) = tls::ensure_dev_certificate(data)?;
            (
                Transport::Tls { cert, key },
                Some(data.join(tls::DEV_CA_FILE)),
            )
        }
    };
    let bound = Bound::bind(args.listen, transport)?;
    // Whoever started the relay may stop reading its output: never fail on it.
    let mut out = std::io::stdout();
    if let Some(ca) = trust {
        let _ = writeln!(
            out,
            "development certificate: devices trust {}",
            ca.display()
        );
    }
    let _ = writeln!(out, "linkbook-server listening on {}", bound.url());
    let _ = out.flush();
    let metrics_listen = args.metrics_listen.0;
    runtime.block_on(async move {
        if let Some(addr) = metrics_listen {
            match tokio::net::TcpListener::bind(addr).await {
                Ok(listener) => {
                    let at = listener.local_addr().unwrap_or(addr);
                    tracing::info!("metrics listening on http://{at}/metrics");
                    tokio::spawn(crate::metrics::serve(listener, state.storage.clone()));
                }
                Err(e) => {
                    tracing::warn!(error = %e, %addr, "the metrics listener could not bind: serving without metrics (--metrics-listen)");
                }
            }
        }
        // Report projections (console/projector.rs): every node refreshes
        // the documents marked dirty, its own uploads' and other nodes'.
        // On SQLite this relay is the only writer: the projector reads the
        // documents it holds loaded instead of loading second copies.
        let single_writer = store.database_url.is_none().then(|| state.hub.clone());
        crate::console::projector::spawn(state.storage.clone(), single_writer);
        // Console sessions past their idle timeout or lifetime end when
        // next presented; this deletes those never presented again.
        let sessions = state.storage.clone();
        let console = state.console.config.clone();
        tokio::spawn(async move {
            let mut every = tokio::time::interval(std::time::Duration::from_secs(15 * 60));
            loop {
                every.tick().await;
                let now = Utc::now();
                let ago = |d: std::time::Duration| {
                    now - chrono::Duration::from_std(d).unwrap_or(chrono::Duration::zero())
                };
                if let Err(e) = sessions
                    .end_stale_sessions(ago(console.idle_timeout), ago(console.session_lifetime))
                    .await
                {
                    tracing::warn!(error = %e, "stale console sessions could not be deleted");
                }
            }
        });
        // Retention: once a day, by one relay node (the first to look after
        // midnight claims the day in the database: `claim_job`); each node
        // looks at start and then hourly. A node that dies mid-sweep leaves
        // the rest to the next day's (the sweep purges everything due).
        let storage = state.storage.clone();
        let budget = crate::doc_cap::load_budget(max_document_ops);
        tokio::spawn(async move {
            let mut hourly = tokio::time::interval(std::time::Duration::from_secs(60 * 60));
            loop {
                hourly.tick().await;
                let today = Utc::now().date_naive();
                match storage.claim_job("retention", &today.to_string()).await {
                    Ok(true) => {}
                    Ok(false) => continue,
                    Err(e) => {
                        tracing::error!(error = %e, "the retention sweep could not be claimed");
                        continue;
                    }
                }
                let swept = admin::retention::sweep_within(&*storage, today, &budget).await;
                if let Err(e) = swept {
                    tracing::error!(error = %e, "the retention sweep failed");
                }
            }
        });
        let shutdown = async {
            let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {},
                _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending::<()>().await } } => {},
            }
        };
        bound.serve(state, shutdown).await
    })
}
