//! The `linkbook-server` command line: parses configuration and runs the
//! relay or an admin command. Every option can also come from the
//! environment. In the library (not only `main.rs`) so that the benchmarks
//! can run this same relay as a child process of their own binary.

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use crate::relay::Limits;
use crate::storage::Storage;
use crate::{AppState, Bound, Transport, auth, tls};
use chrono::{Duration, Utc};
use clap::{Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(
    name = "linkbook-server",
    version,
    about = "The Linkbook relay: devices sync their team's records through it"
)]
struct Cli {
    /// Directory holding the relay database and the development certificate.
    #[arg(
        long,
        env = "LINKBOOK_SERVER_DATA",
        default_value = "linkbook-server-data",
        global = true
    )]
    data: PathBuf,
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
    /// Largest sync message accepted, in bytes.
    #[arg(long, env = "LINKBOOK_MAX_MESSAGE_BYTES", default_value_t = 16 * 1024 * 1024)]
    max_message_bytes: usize,
    /// Live connections allowed per device.
    #[arg(long, env = "LINKBOOK_MAX_CONNECTIONS_PER_DEVICE", default_value_t = 4)]
    max_connections_per_device: usize,
    /// Documents kept in memory; idle ones beyond this are evicted.
    #[arg(long, env = "LINKBOOK_MAX_LOADED_DOCS", default_value_t = 5_000)]
    max_loaded_docs: usize,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Enrol, list and revoke devices (works while the relay runs).
    #[command(subcommand)]
    Device(DeviceCommand),
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
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                // Automerge instruments hot internals (column parsing, change
                // loading) with info-level spans: enabled, they formatted their
                // arguments on every call, 15% of the relay's CPU in the
                // office-sync benchmark (callgrind).
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,automerge=warn")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let cli = Cli::parse_from(args);
    let result = match cli.command {
        None => serve(&cli.data, cli.serve),
        Some(Command::Device(cmd)) => device(&cli.data, cmd),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn serve(data: &std::path::Path, args: ServeArgs) -> crate::Result<()> {
    let limits = Limits {
        max_message_bytes: args.max_message_bytes,
        max_connections_per_device: args.max_connections_per_device,
        max_loaded_docs: args.max_loaded_docs.max(1),
        ..Limits::default()
    };
    let state = AppState::open(data, limits)?;
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

fn device(data: &std::path::Path, cmd: DeviceCommand) -> crate::Result<()> {
    let state = AppState::open(data, Limits::default())?;
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
            if !storage.revoke_device(&id, Utc::now())? {
                return Err(crate::Error::BadRequest(format!("no device {id}")));
            }
            println!("revoked {id}");
        }
    }
    Ok(())
}

/// What the enrolment QR code holds: the code and, if known, the relay.
fn enrolment_link(code: &str, server: Option<&str>) -> String {
    match server {
        Some(s) => format!("linkbook://enrol?code={code}&server={s}"),
        None => format!("linkbook://enrol?code={code}"),
    }
}
