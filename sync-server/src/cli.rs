//! The `linkbook-server` command line: parses configuration and runs the
//! relay or an admin command. Every option can also come from the
//! environment. In the library (not only `main.rs`) so that the benchmarks
//! can run this same relay as a child process of their own binary.

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use crate::at_rest::KeySource;
use crate::relay::Limits;
use crate::storage::Storage;
use crate::{AppState, Bound, Transport, auth, tls};
use chrono::{Duration, Utc};
use clap::{Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(
    name = "linkbook-server",
    version,
    about = "The Linkbook relay: devices sync their team's records through it",
    after_help = "The relay database is encrypted (SQLCipher). Its key is, by default, \
relay.key in the data directory, made at random on first start; or the 64 hex \
characters in LINKBOOK_SERVER_KEY; or the file --key-file names. Back the key \
up apart from the data: a lost key is lost data, and a backup that holds both \
protects nothing. A database made before encryption is encrypted in place on \
first start. The data directory is 0700 and every file in it 0600."
)]
struct Cli {
    /// Directory holding the relay database and the development certificate
    /// (made 0700; every file in it 0600).
    #[arg(
        long,
        env = "LINKBOOK_SERVER_DATA",
        default_value = "linkbook-server-data",
        global = true
    )]
    data: PathBuf,
    /// File holding the relay database's key (64 hex characters) instead
    /// of relay.key in the data directory; or give the key itself in
    /// LINKBOOK_SERVER_KEY. Back it up apart from the data: a lost key is
    /// lost data.
    #[arg(long, env = "LINKBOOK_SERVER_KEY_FILE", global = true)]
    key_file: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    serve: ServeArgs,
}

#[derive(clap::Args, Debug)]
struct ServeArgs {
    /// Address to listen on (port 0 picks a free port).
    #[arg(long, env = "LINKBOOK_LISTEN", default_value = "127.0.0.1:8443")]
    listen: SocketAddr,
    /// Production certificate chain (PEM); without it a development certificate is made.
    #[arg(long, env = "LINKBOOK_TLS_CERT", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// Private key for --tls-cert (PEM).
    #[arg(long, env = "LINKBOOK_TLS_KEY", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Serve plain HTTP (loopback addresses only; for development).
    #[arg(long, env = "LINKBOOK_INSECURE_HTTP", conflicts_with = "tls_cert")]
    insecure_http: bool,
    /// Largest sync message accepted (and sent: bigger syncs are split), in
    /// bytes; at least 65536 (smaller values are raised to it).
    #[arg(long, env = "LINKBOOK_MAX_MESSAGE_BYTES", default_value_t = 16 * 1024 * 1024)]
    max_message_bytes: usize,
    /// Rows (ops) any column of one sync message may declare; more is refused
    /// before Automerge loads it (10,000 notes of ~1 KB are ~200,000 ops).
    #[arg(long, env = "LINKBOOK_MAX_DOCUMENT_OPS", default_value_t = 1_000_000)]
    max_document_ops: u64,
    /// Bytes one connection's send queue may hold: a device that does not
    /// read what it is sent is closed beyond (default: 4 x
    /// --max-message-bytes; at least 2 x).
    #[arg(long, env = "LINKBOOK_MAX_QUEUED_BYTES")]
    max_queued_bytes: Option<usize>,
    /// Bytes one stored document (snapshot and changes) may reach; changes
    /// beyond are refused (default 64 MiB: a family of 10,000 notes of 2 KB
    /// is 3 MB stored, 23 MB as separate changes).
    #[arg(long, env = "LINKBOOK_MAX_DOCUMENT_BYTES",
          default_value_t = crate::doc_cap::DEFAULT_MAX_DOCUMENT_BYTES)]
    max_document_bytes: u64,
    /// Live connections allowed per device.
    #[arg(long, env = "LINKBOOK_MAX_CONNECTIONS_PER_DEVICE", default_value_t = 4)]
    max_connections_per_device: usize,
    /// Documents kept in memory; idle ones beyond this are evicted.
    #[arg(long, env = "LINKBOOK_MAX_LOADED_DOCS", default_value_t = 5_000)]
    max_loaded_docs: usize,
    /// Failed enrolment codes or device tokens from one address within
    /// --auth-window-secs that lock the address out (brute force brake).
    #[arg(long, env = "LINKBOOK_AUTH_MAX_FAILURES", default_value_t = 20,
          value_parser = clap::value_parser!(u32).range(1..))]
    auth_max_failures: u32,
    /// The window failed authentications are counted in, in seconds.
    #[arg(long, env = "LINKBOOK_AUTH_WINDOW_SECS", default_value_t = 60)]
    auth_window_secs: u64,
    /// How long a locked-out address is refused every authentication (429), in seconds.
    #[arg(long, env = "LINKBOOK_AUTH_LOCKOUT_SECS", default_value_t = 300)]
    auth_lockout_secs: u64,
    /// Connections not yet authenticated, in total; new ones beyond are closed.
    #[arg(long, env = "LINKBOOK_MAX_UNAUTHENTICATED", default_value_t = 512,
          value_parser = clap::value_parser!(u64).range(1..))]
    max_unauthenticated: u64,
    /// Connections not yet authenticated per client address (IPv6: per /64).
    #[arg(long, env = "LINKBOOK_MAX_UNAUTHENTICATED_PER_ADDRESS", default_value_t = 64,
          value_parser = clap::value_parser!(u64).range(1..))]
    max_unauthenticated_per_address: u64,
    /// Seconds a connection has for its TLS handshake, and for each request's headers.
    #[arg(long, env = "LINKBOOK_HEADER_TIMEOUT_SECS", default_value_t = 10,
          value_parser = clap::value_parser!(u64).range(1..))]
    header_timeout_secs: u64,
    /// Seconds without a byte from the client (idle keep-alive, dead device) before closing.
    #[arg(long, env = "LINKBOOK_IDLE_TIMEOUT_SECS", default_value_t = 45,
          value_parser = clap::value_parser!(u64).range(1..))]
    idle_timeout_secs: u64,
    /// Seconds between WebSocket pings (0: none); keep well below --idle-timeout-secs.
    #[arg(long, env = "LINKBOOK_PING_INTERVAL_SECS", default_value_t = 15)]
    ping_interval_secs: u64,
    /// Case-file reads one audit upload may carry (more: 413 stating the
    /// limit, and the device sends smaller uploads).
    #[arg(long, env = "LINKBOOK_AUDIT_ROWS_PER_UPLOAD", default_value_t = 500,
          value_parser = clap::value_parser!(u64).range(1..=10_000))]
    audit_rows_per_upload: u64,
    /// Case-file reads one device may upload per UTC day (more: 429 until
    /// the next day, audited once).
    #[arg(long, env = "LINKBOOK_AUDIT_ROWS_PER_DAY", default_value_t = 10_000,
          value_parser = clap::value_parser!(u64).range(1..))]
    audit_rows_per_day: u64,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Enrol, list and revoke devices (works while the relay runs).
    #[command(subcommand)]
    Device(DeviceCommand),
    /// Who enrolled, synced, uploaded, received or read which family, and
    /// what was purged or revoked, when (never any record content).
    Audit {
        /// Only records about this family (document id).
        #[arg(long)]
        family: Option<String>,
        /// Only records of this device.
        #[arg(long)]
        device: Option<String>,
        /// Only records about this team's documents (required with
        /// `--family` when two teams hold that id: ids are per team).
        #[arg(long)]
        team: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Subject access: every record the relay holds on a person, as JSON —
    /// each family case file that names them (in any field or note), whole,
    /// with its audit. The export itself is audited.
    ExportPerson {
        /// A name (or part of one), matched without regard to case.
        #[arg(long, required_unless_present = "family")]
        name: Option<String>,
        /// Or one family's records, by id.
        #[arg(long, conflicts_with = "name")]
        family: Option<String>,
        /// Only this team's families (required with `--family` when two
        /// teams hold that id: ids are per team).
        #[arg(long)]
        team: Option<String>,
    },
    /// A team's data-protection policy (works while the relay runs).
    #[command(subcommand)]
    Team(TeamCommand),
    /// Retention: purge the closed cases whose retention period has run out
    /// (the relay also does this at start and daily).
    #[command(subcommand)]
    Retention(RetentionCommand),
    /// Erase a family's records (works while the relay runs).
    #[command(subcommand)]
    Family(FamilyCommand),
    /// Documents the relay refused (works while the relay runs).
    #[command(subcommand)]
    Document(DocumentCommand),
}

#[derive(Subcommand, Debug)]
enum DocumentCommand {
    /// Documents and changes refused at the door or over the budget: id,
    /// team, device, reason, how often, when (never any content).
    Refused {
        /// Only this team's.
        #[arg(long)]
        team: Option<String>,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand, Debug)]
enum TeamCommand {
    /// Set (or show, with no limit given) a team's policy. Devices learn it
    /// at their next sync.
    Policy {
        #[arg(long)]
        team: String,
        /// Days after a case's closure date until it is purged, or `off`.
        #[arg(long, value_parser = days_or_off)]
        retention_days: Option<Limit>,
        /// Days a device may go without syncing before it locks, or `off`.
        #[arg(long, value_parser = days_or_off)]
        lease_days: Option<Limit>,
    },
}

#[derive(Subcommand, Debug)]
enum RetentionCommand {
    /// Purge every closed case past its team's retention period now.
    Apply {
        /// The date to apply it on (default: today), YYYY-MM-DD.
        #[arg(long)]
        today: Option<chrono::NaiveDate>,
    },
}

/// A number of days, or no limit.
#[derive(Debug, Clone, Copy)]
struct Limit(Option<i64>);

fn days_or_off(s: &str) -> Result<Limit, String> {
    if s.eq_ignore_ascii_case("off") {
        return Ok(Limit(None));
    }
    match s.parse::<i64>() {
        Ok(d) if (0..=36_500).contains(&d) => Ok(Limit(Some(d))),
        _ => Err(format!(
            "'{s}' is not a number of days (0 to 36500) or 'off'"
        )),
    }
}

#[derive(Subcommand, Debug)]
enum FamilyCommand {
    /// Delete a family's case file and all its history from the relay; every
    /// device deletes it at its next sync, and no device can upload it again.
    Purge {
        /// The family id (as devices show it, with or without `automerge:`).
        id: String,
        /// Why (kept in the relay's audit, not sent to devices).
        #[arg(long)]
        reason: String,
        /// The family's team (required only when two teams hold that id:
        /// ids are per team).
        #[arg(long)]
        team: Option<String>,
    },
}

#[derive(Subcommand, Debug)]
enum DeviceCommand {
    /// Print a one-time enrolment code for a worker's device.
    Enrol {
        #[arg(long)]
        team: String,
        #[arg(long)]
        worker: String,
        /// Hours until the code expires.
        #[arg(long, default_value_t = 24)]
        expires_hours: i64,
        /// The relay's address as devices reach it, put into the QR code.
        #[arg(long, env = "LINKBOOK_PUBLIC_URL")]
        server: Option<String>,
    },
    /// List enrolled devices.
    List {
        #[arg(long)]
        json: bool,
    },
    /// Revoke a device: its next connection is refused and told to wipe.
    Revoke { id: String },
}

/// Runs `linkbook-server` with these arguments (the first is the program
/// name), as its `main` does.
pub fn run<I, T>(args: I) -> ExitCode
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    tracing_subscriber::fmt()
        // Automerge instruments hot internals (column parsing, change
        // loading) with info-level spans: enabled, they formatted their
        // arguments on every call, 15% of the relay's CPU in the office-sync
        // benchmark (callgrind). LOG_CAPS keeps dependencies that log frames
        // or headers quiet whatever RUST_LOG says.
        .with_env_filter(tracing_subscriber::EnvFilter::new(format!(
            "{},{}",
            std::env::var("RUST_LOG").unwrap_or_else(|_| "info,automerge=warn".into()),
            linkbook_core::LOG_CAPS
        )))
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    // Belt and braces: every file is also given its mode explicitly.
    crate::at_rest::restrict_umask();
    let cli = Cli::parse_from(args);
    let result = KeySource::from_options(cli.key_file).and_then(|key| {
        let data = Data {
            path: &cli.data,
            key: &key,
        };
        match cli.command {
            None => serve(data, cli.serve),
            Some(Command::Device(cmd)) => device(data, cmd),
            Some(Command::Family(cmd)) => family(data, cmd),
            Some(Command::Team(cmd)) => team(data, cmd),
            Some(Command::Retention(RetentionCommand::Apply { today })) => {
                retention_apply(data, today)
            }
            Some(Command::Audit {
                family,
                device,
                team,
                json,
            }) => audit(data, family, device, team, json),
            Some(Command::ExportPerson { name, family, team }) => {
                export_person(data, name, family, team)
            }
            Some(Command::Document(DocumentCommand::Refused { team, json })) => data
                .open(Limits::default())
                .and_then(|s| crate::refusals::print(&*s.storage, team.as_deref(), json)),
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The data directory and the database key: what every command opens the
/// relay's storage with (one way, `Data::open`).
#[derive(Debug, Clone, Copy)]
struct Data<'a> {
    path: &'a std::path::Path,
    key: &'a KeySource,
}

impl Data<'_> {
    fn open(&self, limits: Limits) -> crate::Result<AppState> {
        AppState::open_with_key(self.path, limits, self.key)
    }
}

/// The file in the data directory a serving relay holds locked.
pub const LOCK_FILE: &str = "relay.lock";

/// Takes the data directory's lock for as long as the returned file lives, or
/// says which process holds it. One relay per directory: each keeps documents
/// in memory and compacts them from that copy (`Storage::append_changes`
/// with a snapshot replaces the stored changes), so a second relay's uploads
/// to the same document would be deleted by the first one's next
/// compaction. Only `serve` takes it: the admin commands open the database
/// directly (SQLite's own locking) while a relay serves. An advisory lock
/// (`flock`), released by the kernel when the process dies, even by
/// SIGKILL: a crashed relay never leaves a stale lock behind.
fn lock_data_dir(data: &std::path::Path) -> crate::Result<std::fs::File> {
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

fn serve(store: Data<'_>, args: ServeArgs) -> crate::Result<()> {
    let data = store.path;
    // Held until this function returns, i.e. for the relay's whole life.
    let _lock = lock_data_dir(data)?;
    let max_message_bytes = args
        .max_message_bytes
        .max(linkbook_core::protocol::split::MIN_MAX_MESSAGE_BYTES);
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
    let state = store
        .open(limits)?
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
        });
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
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| crate::Error::Io {
            context: "starting the runtime".into(),
            source: e,
        })?;
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
    runtime.block_on(async move {
        // Retention: at start, then daily (closed cases past their team's
        // retention period are purged).
        let storage = state.storage.clone();
        tokio::spawn(async move {
            let mut daily = tokio::time::interval(std::time::Duration::from_secs(24 * 60 * 60));
            loop {
                daily.tick().await;
                let storage = storage.clone();
                let swept = tokio::task::spawn_blocking(move || {
                    crate::retention::apply(&*storage, Utc::now().date_naive())
                })
                .await;
                if let Ok(Err(e)) = swept {
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

fn device(data: Data<'_>, cmd: DeviceCommand) -> crate::Result<()> {
    let state = data.open(Limits::default())?;
    let storage: &dyn Storage = &*state.storage;
    match cmd {
        DeviceCommand::Enrol {
            team,
            worker,
            expires_hours,
            server,
        } => {
            if !(1..=24 * 30).contains(&expires_hours) {
                return Err(crate::Error::BadRequest(
                    "--expires-hours must be 1 to 720".into(),
                ));
            }
            let code = auth::new_enrolment_code(
                storage,
                &team,
                &worker,
                Duration::hours(expires_hours),
                Utc::now(),
            )?;
            // The code alone on stdout, for scripts; the QR code (for the
            // app's camera) and the explanation on the terminal.
            println!("{code}");
            if std::io::IsTerminal::is_terminal(&std::io::stderr()) {
                let link = enrolment_link(&code, server.as_deref());
                if let Ok(qr) = qrcode::QrCode::new(link.as_bytes()) {
                    let art = qr
                        .render::<qrcode::render::unicode::Dense1x2>()
                        .quiet_zone(true)
                        .build();
                    eprintln!("{art}\n{link}");
                }
            }
            eprintln!(
                "one-time enrolment code for {worker} ({team}); expires in {expires_hours} h"
            );
        }
        DeviceCommand::List { json } => {
            let devices = storage.devices()?;
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&devices).unwrap_or_else(|_| "[]".into())
                );
            } else {
                for d in devices {
                    let status = if d.revoked_at.is_some() {
                        "revoked"
                    } else {
                        "active"
                    };
                    println!(
                        "{}  {:<12} {:<20} {:<20} {}",
                        d.id, d.team, d.worker, d.device_name, status
                    );
                }
            }
        }
        DeviceCommand::Revoke { id } => {
            if !storage.revoke_device(&id, Some("office administrator"), Utc::now())? {
                return Err(crate::Error::BadRequest(format!("no device {id}")));
            }
            println!("revoked {id}");
        }
    }
    Ok(())
}

fn team(data: Data<'_>, cmd: TeamCommand) -> crate::Result<()> {
    let state = data.open(Limits::default())?;
    let storage: &dyn Storage = &*state.storage;
    let TeamCommand::Policy {
        team,
        retention_days,
        lease_days,
    } = cmd;
    let team = team.trim();
    if team.is_empty() {
        return Err(crate::Error::BadRequest("--team must name a team".into()));
    }
    let mut policy = storage.team_policy(team)?;
    if retention_days.is_some() || lease_days.is_some() {
        if let Some(Limit(d)) = retention_days {
            policy.retention_days = d;
        }
        if let Some(Limit(d)) = lease_days {
            policy.lease_days = d;
        }
        storage.set_team_policy(team, policy, Utc::now())?;
        storage.audit_as(
            None,
            Some("office administrator"),
            "policy changed",
            None,
            &Utc::now().to_rfc3339(),
        )?;
    }
    let show = |d: Option<i64>| d.map_or("off".to_string(), |d| format!("{d} days"));
    println!(
        "team {team}: retention {}, offline lease {}",
        show(policy.retention_days),
        show(policy.lease_days)
    );
    Ok(())
}

fn retention_apply(data: Data<'_>, today: Option<chrono::NaiveDate>) -> crate::Result<()> {
    let state = data.open(Limits::default())?;
    let today = today.unwrap_or_else(|| Utc::now().date_naive());
    let purged = crate::retention::apply(&*state.storage, today)?;
    for id in &purged {
        println!("purged {id}");
    }
    eprintln!("{} closed case(s) past retention purged", purged.len());
    Ok(())
}

/// The team whose document `id` an admin command means: `--team` if
/// given, else the only team holding the id (stored or purged). Documents
/// are namespaced per team, so an id two teams hold needs `--team`.
fn team_of(storage: &dyn Storage, id: &str, team: Option<&str>) -> crate::Result<Option<String>> {
    if let Some(team) = team {
        let team = team.trim();
        if team.is_empty() {
            return Err(crate::Error::BadRequest("--team must name a team".into()));
        }
        return Ok(Some(team.to_string()));
    }
    // Teams holding a stored document with this id first; if none, those
    // that had one purged (so that "purged already" can be said).
    let mut teams = storage.teams_holding(id)?;
    let mut stored = Vec::new();
    for t in &teams {
        if storage.document_exists(t, id)? {
            stored.push(t.clone());
        }
    }
    if !stored.is_empty() {
        teams = stored;
    }
    match teams.len() {
        0 | 1 => Ok(teams.pop()),
        _ => Err(crate::Error::BadRequest(format!(
            "{id} is held by {} teams ({}): ids are per team, so say which with --team",
            teams.len(),
            teams.join(", ")
        ))),
    }
}

fn audit(
    data: Data<'_>,
    family: Option<String>,
    device: Option<String>,
    team: Option<String>,
    json: bool,
) -> crate::Result<()> {
    let family = family
        .map(|f| {
            linkbook_core::DocumentId::parse(&f, "family id")
                .map(|id| id.to_string())
                .map_err(|e| crate::Error::BadRequest(e.to_string()))
        })
        .transpose()?;
    let state = data.open(Limits::default())?;
    let team = match &family {
        Some(id) => team_of(&*state.storage, id, team.as_deref())?,
        None => team,
    };
    let entries = state
        .storage
        .audit_log(family.as_deref(), device.as_deref(), team.as_deref())?;
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&entries).unwrap_or_else(|_| "[]".into())
        );
        return Ok(());
    }
    for e in entries {
        println!(
            "{}  {:<9} {:<36} {:<20} {}",
            e.at,
            e.action,
            e.device_id
                .as_deref()
                .or(e.client.as_deref())
                .unwrap_or("-"),
            e.worker.as_deref().unwrap_or("-"),
            e.document_id.as_deref().unwrap_or("-"),
        );
    }
    Ok(())
}

fn family(data: Data<'_>, cmd: FamilyCommand) -> crate::Result<()> {
    use crate::Error::BadRequest;
    let state = data.open(Limits::default())?;
    let storage: &dyn Storage = &*state.storage;
    match cmd {
        FamilyCommand::Purge { id, reason, team } => {
            let id = linkbook_core::DocumentId::parse(&id, "family id")
                .map_err(|e| BadRequest(e.to_string()))?
                .to_string();
            let reason = reason.trim();
            if reason.is_empty() {
                return Err(BadRequest(
                    "--reason must say why (it is kept in the audit)".into(),
                ));
            }
            let team = team_of(storage, &id, team.as_deref())?
                .ok_or_else(|| BadRequest(format!("no family {id} on this relay")))?;
            if storage.is_purged(&team, &id)? {
                return Err(BadRequest(format!(
                    "{id} of team {team} was purged already"
                )));
            }
            let stored = storage.load_document(&team, &id)?.ok_or_else(|| {
                BadRequest(format!("no family {id} of team {team} on this relay"))
            })?;
            let kind = document_type(&stored);
            if kind.as_deref() != Some("family") {
                return Err(BadRequest(format!(
                    "{id} is a {}, not a family: only family case files are purged",
                    kind.as_deref().unwrap_or("damaged document")
                )));
            }
            if !storage.purge_document(&team, &id, reason, Utc::now())? {
                return Err(BadRequest(format!(
                    "no family {id} of team {team} on this relay"
                )));
            }
            println!("purged family {id} of team {team}; devices delete it at their next sync");
        }
    }
    Ok(())
}

fn export_person(
    data: Data<'_>,
    name: Option<String>,
    family: Option<String>,
    team: Option<String>,
) -> crate::Result<()> {
    use crate::Error::BadRequest;
    let name = name.map(|n| n.trim().to_lowercase());
    if name.as_deref().is_some_and(|n| n.chars().count() < 2) {
        return Err(BadRequest("--name needs at least two letters".into()));
    }
    let family = family
        .map(|f| {
            linkbook_core::DocumentId::parse(&f, "family id")
                .map(|id| id.to_string())
                .map_err(|e| BadRequest(e.to_string()))
        })
        .transpose()?;
    let state = data.open(Limits::default())?;
    let storage: &dyn Storage = &*state.storage;
    let only_team = match &family {
        Some(id) => team_of(storage, id, team.as_deref())?,
        None => team,
    };
    let mut records = Vec::new();
    for (id, team) in storage.document_ids()? {
        if family.as_ref().is_some_and(|f| *f != id)
            || only_team.as_ref().is_some_and(|t| *t != team)
        {
            continue;
        }
        let Some(stored) = storage.load_document(&team, &id)? else {
            continue;
        };
        let Some(doc) = load(&stored) else { continue };
        if document_type_of(&doc).as_deref() != Some("family") {
            continue;
        }
        let json = serde_json::to_value(automerge::AutoSerde::from(&doc))
            .map_err(|e| BadRequest(format!("{id} could not be read: {e}")))?;
        let mut matches = Vec::new();
        if let Some(name) = &name {
            find_text(&json, name, String::new(), &mut matches);
            if matches.is_empty() {
                continue;
            }
        }
        records.push(serde_json::json!({
            "family_id": id,
            "team": team,
            "matched_at": matches,
            "record": json,
            "audit": storage.audit_log(Some(&id), None, Some(&team))?,
        }));
    }
    if family.is_some() && records.is_empty() {
        return Err(BadRequest("no family with that id on this relay".into()));
    }
    let now = Utc::now().to_rfc3339();
    for r in &records {
        if let (Some(id), Some(team)) = (r["family_id"].as_str(), r["team"].as_str()) {
            storage.audit_for_team(
                team,
                None,
                Some("office administrator"),
                "subject access export",
                id,
                &now,
            )?;
        }
    }
    let out = serde_json::json!({
        "generated_at": now,
        "query": { "name": name, "family": family },
        "families": records,
    });
    println!(
        "{}",
        serde_json::to_string_pretty(&out).unwrap_or_else(|_| "{}".into())
    );
    Ok(())
}

/// Paths (`members/0/name`) of every string in `value` that contains `needle`.
fn find_text(value: &serde_json::Value, needle: &str, path: String, out: &mut Vec<String>) {
    match value {
        serde_json::Value::String(s) if s.to_lowercase().contains(needle) => out.push(path),
        serde_json::Value::Array(items) => {
            for (i, v) in items.iter().enumerate() {
                find_text(v, needle, format!("{path}/{i}"), out);
            }
        }
        serde_json::Value::Object(map) => {
            for (k, v) in map {
                find_text(v, needle, format!("{path}/{k}"), out);
            }
        }
        _ => {}
    }
}

fn load(stored: &crate::storage::StoredDocument) -> Option<automerge::Automerge> {
    let mut doc = match &stored.snapshot {
        Some(s) => automerge::Automerge::load(s).ok()?,
        None => automerge::Automerge::new(),
    };
    for c in &stored.changes {
        doc.load_incremental(c).ok()?;
    }
    Some(doc)
}

/// The `type` a stored Linkbook document declares.
fn document_type(stored: &crate::storage::StoredDocument) -> Option<String> {
    document_type_of(&load(stored)?)
}

fn document_type_of(doc: &automerge::Automerge) -> Option<String> {
    use automerge::ReadDoc;
    match doc.get(automerge::ROOT, "type").ok()??.0 {
        automerge::Value::Scalar(s) => s.as_str().map(str::to_string),
        _ => None,
    }
}

/// What the enrolment QR code holds: the code and, if known, the relay.
fn enrolment_link(code: &str, server: Option<&str>) -> String {
    match server {
        Some(s) => format!("linkbook://enrol?code={code}&server={s}"),
        None => format!("linkbook://enrol?code={code}"),
    }
}
