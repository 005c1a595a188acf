//! Builders shared by Linkbook's tests and benchmarks, written once: core's
//! integration tests, the end-to-end tests (`tests/`) and the bench
//! (`bench/`) all build on these.
//!
//! - [`store`]: a device store in a temp dir with a known key
//!   ([`Device`], [`device`]), a closed store to reopen or copy as a new
//!   device ([`Store`]), syncs by hand ([`sync_into`], [`send_doc`]);
//! - [`caseload`]: families, case notes and family days generated through
//!   the public `Repo` API from a seed;
//! - [`relay`]: a `linkbook-server` process on 127.0.0.1 with a random port
//!   ([`Relay`], [`spawn_relay`]), enrolment codes and enrolled devices
//!   ([`Device::enrolled`]), the relay's database opened from the test;
//! - [`postgres`]: a throwaway PostgreSQL cluster on loopback, a database
//!   per test;
//! - [`sim`]: devices and the relay's hub in one process, joined by a
//!   seeded faulty network (no sockets), for property tests.

pub mod caseload;
pub mod postgres;
pub mod relay;
pub mod sim;
pub mod store;

pub use relay::{
    LISTENING, Relay, Run, copy_dev_certificate, enrol_code, erasure_ledger_of, open_keyed,
    relay_db, relay_integrity_check, relay_key, spawn_relay, wait_for_line, workspace_bin,
};
pub use store::{Device, Store, device, send_doc, sync_into};

/// Errors of the builders that return them (the bench's error type).
pub type Error = Box<dyn std::error::Error + Send + Sync>;
pub type Result<T> = std::result::Result<T, Error>;
