//! The `linkbook-server` command line: parses configuration and runs the
//! relay or an admin command. Every option can also come from the
//! environment. In the library (not only `main.rs`) so that the benchmarks
//! can run this same relay as a child process of their own binary.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

mod commands;
mod serve;

pub use serve::LOCK_FILE;

use crate::AppState;
use crate::admin::{self, AdminError};
use crate::at_rest::KeySource;
use crate::relay::Limits;
use chrono::Utc;
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
    /// Keep the relay's data in PostgreSQL (`postgres://user@host/db`;
    /// `?sslmode=require` for TLS, required off loopback) instead of the
    /// SQLite file in the data directory (the default). The data directory
    /// still holds the development certificate.
    #[arg(
        long,
        env = "LINKBOOK_DATABASE_URL",
        global = true,
        hide_env_values = true
    )]
    database_url: Option<String>,
    /// The erasure ledger: every purge, appended (fsynced) before the
    /// database purge, replayed at start and by `restore` so no backup
    /// brings an erased family back. Default: `<data directory>.erasures`,
    /// beside the data directory. Keep it out of the database's backups and
    /// copy it apart; on PostgreSQL give every node and admin command the
    /// same file.
    #[arg(long, env = "LINKBOOK_ERASURE_LEDGER", global = true)]
    erasure_ledger: Option<PathBuf>,
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
    /// Where to serve Prometheus metrics, /healthz and /readyz (plain HTTP,
    /// no personal data: keep it on loopback or the monitoring network), or
    /// `off`. A port already taken leaves the relay serving without them.
    #[arg(long, env = "LINKBOOK_METRICS_LISTEN", default_value = "127.0.0.1:9464", value_parser = addr_or_off)]
    metrics_listen: MetricsListen,
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
    /// The relay's address as staff and devices reach it
    /// (`https://relay.example.org`): put into enrolment QR codes made in
    /// the office console.
    #[arg(long, env = "LINKBOOK_PUBLIC_URL")]
    public_url: Option<String>,
    /// Office console: a session unused this long (seconds) is signed out.
    #[arg(long, env = "LINKBOOK_CONSOLE_IDLE_SECS", default_value_t = 30 * 60,
          value_parser = clap::value_parser!(u64).range(1..=7 * 24 * 3600))]
    console_idle_secs: u64,
    /// Office console: a session ends this many hours after sign-in.
    #[arg(long, env = "LINKBOOK_CONSOLE_SESSION_HOURS", default_value_t = 12,
          value_parser = clap::value_parser!(u64).range(1..=24 * 30))]
    console_session_hours: u64,
    /// Office console: failed sign-ins from one address before it is locked
    /// out (within --console-lockout-secs), as device codes are.
    #[arg(long, env = "LINKBOOK_CONSOLE_MAX_FAILURES", default_value_t = 10,
          value_parser = clap::value_parser!(u32).range(1..))]
    console_max_failures: u32,
    /// Office console: how long (seconds) failures are counted and an
    /// address stays locked out.
    #[arg(long, env = "LINKBOOK_CONSOLE_LOCKOUT_SECS", default_value_t = 15 * 60)]
    console_lockout_secs: u64,
    /// Reports: counts from 1 to this minus one are suppressed (statistical
    /// disclosure control); the outcomes page may raise it, never lower it.
    #[arg(long, env = "LINKBOOK_REPORT_THRESHOLD", default_value_t = 5,
          value_parser = clap::value_parser!(u64).range(2..=1000))]
    report_threshold: u64,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Office console accounts: add one (prints its one-time set-up link),
    /// reset, disable, list (works while the relay runs).
    #[command(subcommand)]
    Admin(AdminCommand),
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
    /// Back the relay database up to FILE while the relay serves: one
    /// consistent copy, encrypted with the relay's key (keep the key apart),
    /// 0600. SQLite only: on PostgreSQL use pg_dump.
    Backup {
        /// Where to write the backup (refused if it exists, unless --force).
        file: PathBuf,
        /// Replace FILE if it exists.
        #[arg(long)]
        force: bool,
    },
    /// Restore a backup into a stopped relay's data directory (made if
    /// missing). The key must be the backup's (relay.key put back, or
    /// LINKBOOK_SERVER_KEY / --key-file). The restored store gets a new id,
    /// so every device sends everything it holds again, and the erasure
    /// ledger is replayed onto it. SQLite only: on PostgreSQL use
    /// pg_restore, then `after-restore`.
    Restore {
        /// The backup file (`linkbook-server backup FILE`).
        file: PathBuf,
    },
    /// After restoring the database with its own tools (pg_restore,
    /// point-in-time recovery; or a relay.db copied back by hand), before
    /// devices connect: give the store a new id (every device then sends
    /// everything it holds), drop the relay's sync states, and replay the
    /// erasure ledger. Refused while a relay serves. `restore FILE` does
    /// this itself.
    AfterRestore,
    /// The erasure ledger (--erasure-ledger).
    #[command(subcommand)]
    Erasures(ErasuresCommand),
}

#[derive(Subcommand, Debug)]
enum ErasuresCommand {
    /// Purge again every family the ledger holds that the database does not
    /// remember as purged (the relay also does this at start; after a
    /// restore use `after-restore`, which also gives the store a new id).
    Replay,
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

/// `--metrics-listen`: an address, or `off`.
#[derive(Debug, Clone, Copy)]
struct MetricsListen(Option<SocketAddr>);

fn addr_or_off(s: &str) -> Result<MetricsListen, String> {
    if s.eq_ignore_ascii_case("off") {
        return Ok(MetricsListen(None));
    }
    s.parse()
        .map(|a| MetricsListen(Some(a)))
        .map_err(|_| format!("'{s}' is not an address (host:port) or 'off'"))
}

fn days_or_off(s: &str) -> Result<Limit, String> {
    if s.eq_ignore_ascii_case("off") {
        return Ok(Limit(None));
    }
    match s.parse::<i64>() {
        Ok(d) if admin::teams::valid_days(d) => Ok(Limit(Some(d))),
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
enum AdminCommand {
    /// Add a console account and print its one-time set-up link.
    Add {
        /// What they sign in with.
        #[arg(long)]
        name: String,
        /// administrator (enrols and revokes devices), manager (reads
        /// reports) or data-protection (purges, subject access, retention).
        #[arg(long, value_parser = ["administrator", "manager", "data-protection"])]
        role: String,
        /// Hours until the link expires.
        #[arg(long, default_value_t = crate::admin::accounts::SETUP_HOURS)]
        expires_hours: i64,
        /// The relay's address as staff reach it, put into the link.
        #[arg(long, env = "LINKBOOK_PUBLIC_URL")]
        server: Option<String>,
    },
    /// A forgotten password or lost phone: a new set-up link; the old
    /// password, second factor and sessions stop working.
    Reset {
        #[arg(long)]
        name: String,
        #[arg(long, default_value_t = crate::admin::accounts::SETUP_HOURS)]
        expires_hours: i64,
        #[arg(long, env = "LINKBOOK_PUBLIC_URL")]
        server: Option<String>,
    },
    /// Disable an account: it cannot sign in, its sessions end.
    Disable {
        #[arg(long)]
        name: String,
    },
    /// List console accounts.
    List {
        #[arg(long)]
        json: bool,
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
            database_url: cli.database_url.as_deref(),
            erasure_ledger: cli.erasure_ledger.as_deref(),
        };
        let command = match cli.command {
            None => return serve::serve(data, cli.serve),
            Some(command) => command,
        };
        // An admin command: one current-thread runtime for its storage calls.
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| crate::Error::Io {
                context: "starting the command's runtime".into(),
                source: e,
            })?;
        runtime.block_on(async move {
            match command {
                Command::Admin(cmd) => commands::admin(data, cmd).await,
                Command::Device(cmd) => commands::device(data, cmd).await,
                Command::Family(cmd) => commands::family(data, cmd).await,
                Command::Team(cmd) => commands::team(data, cmd).await,
                Command::Retention(RetentionCommand::Apply { today }) => {
                    commands::retention_apply(data, today).await
                }
                Command::Audit {
                    family,
                    device,
                    team,
                    json,
                } => commands::audit(data, family, device, team, json).await,
                Command::ExportPerson { name, family, team } => {
                    commands::export_person(data, name, family, team).await
                }
                Command::Document(DocumentCommand::Refused { team, json }) => {
                    let state = data.open(Limits::default()).await?;
                    crate::refusals::print(&*state.storage, team.as_deref(), json).await
                }
                Command::Backup { file, force } => commands::backup(data, &file, force),
                Command::Restore { file } => commands::restore(data, &file).await,
                Command::Erasures(ErasuresCommand::Replay) => commands::erasures_replay(data).await,
                Command::AfterRestore => commands::after_restore(data).await,
            }
        })
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
    /// PostgreSQL instead of the SQLite file in `path` (`--database-url`).
    database_url: Option<&'a str>,
    /// `--erasure-ledger`; by default beside `path`.
    erasure_ledger: Option<&'a std::path::Path>,
}

impl Data<'_> {
    /// The relay's storage, for an admin command.
    async fn open(&self, limits: Limits) -> crate::Result<AppState> {
        self.open_for(limits, false).await
    }

    /// The relay's storage; `serving`: for the relay itself (SQLite's
    /// serving lock is the data directory's, serve.rs; PostgreSQL takes any
    /// number of nodes), which first replays the erasure ledger. Every purge through it is
    /// ledgered first (erasure_ledger::Ledgered).
    async fn open_for(&self, limits: Limits, serving: bool) -> crate::Result<AppState> {
        let ledger = self.ledger()?;
        let (storage, storage_id) = match self.database_url {
            Some(url) => {
                let hold = serving.then_some(crate::storage::postgres::Hold::Serving);
                AppState::connect_postgres_storage(url, hold).await?
            }
            None => AppState::open_sqlite(self.path, self.key)?,
        };
        if serving {
            crate::erasure_ledger::replay(&*storage, &ledger, Utc::now()).await?;
        }
        let storage = std::sync::Arc::new(crate::erasure_ledger::Ledgered::new(storage, ledger));
        Ok(AppState::with_storage(storage, storage_id, limits))
    }

    /// The erasure ledger: `--erasure-ledger`, or beside the data directory.
    fn ledger(&self) -> crate::Result<crate::erasure_ledger::ErasureLedger> {
        match self.erasure_ledger {
            Some(path) => Ok(crate::erasure_ledger::ErasureLedger::at(path)),
            None => crate::erasure_ledger::ErasureLedger::beside(self.path),
        }
    }
}
