//! `linkbook`: a Linkbook device in a terminal. A thin layer over
//! `linkbook-core`: parse, call one `Repo` method, print text or `--json`.
//!
//! Errors go to stderr as `error: <message>`; the exit code says their kind:
//! 2 invalid input (usage errors too), 3 not found, 4 wrong key, 5 not
//! enrolled or refused by the relay, 6 device revoked, 7 network, 8 locked,
//! 9 a sync the relay refused this device's changes to some documents in
//! (they clash with an earlier copy of the device; the others synced), 1
//! anything else.

mod args;
mod commands;
mod device;
mod output;

use std::process::ExitCode;

use clap::Parser;
use linkbook_core::Error;

fn main() -> ExitCode {
    // Warnings (a read log that could not be uploaded, ...) on stderr;
    // RUST_LOG=debug for more. Never record content: core logs ids only.
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(format!(
            "{},{}",
            std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()),
            linkbook_core::LOG_CAPS
        )))
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let cli = args::Cli::parse();
    let data = cli.data_dir().to_path_buf();
    match commands::run(&data, cli.command) {
        Ok(()) if commands::CHANGES_REFUSED.load(std::sync::atomic::Ordering::Relaxed) => {
            ExitCode::from(9)
        }
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(exit_code(&e))
        }
    }
}

/// The one place a core error becomes an exit code.
fn exit_code(e: &Error) -> u8 {
    match e {
        Error::InvalidInput { .. } => 2,
        Error::NotFound { .. } => 3,
        Error::WrongKey => 4,
        Error::Unauthorized(_) => 5,
        Error::Revoked => 6,
        Error::Network(_) => 7,
        Error::Locked { .. } => 8,
        Error::UnsupportedSchema { .. }
        | Error::InvalidDocument(_)
        | Error::Storage(_)
        | Error::Document(_)
        | Error::Io { .. } => 1,
    }
}
