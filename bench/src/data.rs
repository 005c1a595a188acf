//! The workload's data: a team's caseload generated through the public
//! `Repo` API (families, case notes, family days with check-ins), device
//! stores cloned from one seeded store, and a worker's day of offline work,
//! from the shared builders (test-support/: `caseload`, `Store`).
//!
//! Generating 100,000 notes one durable write at a time costs one fsync
//! each; the seeding store therefore lives on tmpfs when there is one (the
//! measured stores and servers do not).

use std::path::{Path, PathBuf};

pub use linkbook_test_support::Store;
pub use linkbook_test_support::caseload::{Caseload, Sizes, note_text, offline_day, rng, seed};

/// A directory for stores whose writes need not be durable (the seed, the
/// fleet of offline devices): tmpfs if the machine has one.
pub fn scratch_root() -> PathBuf {
    let shm = Path::new("/dev/shm");
    if shm.is_dir() {
        shm.to_path_buf()
    } else {
        std::env::temp_dir()
    }
}
