//! Which storage a test's relay runs on, so that a suite (the hostile and
//! fault suites) runs unchanged on the embedded SQLite default and on
//! PostgreSQL (a throwaway cluster and database per test).

use linkbook_test_support::postgres::Cluster;
use tempfile::TempDir;

use crate::Relay;

/// The relay's storage for one test.
#[derive(Debug)]
pub enum Backend {
    /// The data directory's SQLite file (in `/dev/shm` where asked and
    /// there is one: see [`Backend::start_in_memory`]).
    Sqlite,
    /// A database of its own on a cluster of its own.
    Postgres { cluster: Cluster, url: String },
}

impl Backend {
    pub fn sqlite() -> Backend {
        Backend::Sqlite
    }

    /// Starts a cluster (Debian's PostgreSQL, test-support/src/postgres.rs)
    /// and makes a database on it.
    pub fn postgres() -> Backend {
        let cluster = Cluster::start();
        let url = cluster.fresh_database();
        Backend::Postgres { cluster, url }
    }

    /// "SQLite" or "PostgreSQL", for messages.
    pub fn name(&self) -> &'static str {
        match self {
            Backend::Sqlite => "SQLite",
            Backend::Postgres { .. } => "PostgreSQL",
        }
    }

    /// A relay on this storage with extra options.
    pub fn start(&self, args: &[&str]) -> Relay {
        self.start_on(tempfile::tempdir().expect("relay dir"), args)
    }

    /// A relay whose files (SQLite's database; PostgreSQL keeps only the
    /// certificate there) are in memory where the machine has `/dev/shm`:
    /// a process kill loses nothing either way, and fsyncs on a shared
    /// disk made fifty devices' syncs take minutes.
    pub fn start_in_memory(&self) -> Relay {
        let dir = tempfile::tempdir_in("/dev/shm")
            .or_else(|_| tempfile::tempdir())
            .expect("relay dir");
        self.start_on(dir, &[])
    }

    /// The relay started again on what a stopped or killed one left; on
    /// SQLite its database must have survived whole.
    pub fn restart(&self, data: TempDir) -> Relay {
        let relay = self.start_on(data, &[]);
        if let Backend::Sqlite = self {
            assert_eq!(
                relay.integrity_check(),
                "ok",
                "the relay's database is damaged after it stopped"
            );
        }
        relay
    }

    fn start_on(&self, data: TempDir, args: &[&str]) -> Relay {
        match self {
            Backend::Sqlite => Relay::start_in_with(data, args),
            Backend::Postgres { url, .. } => Relay::start_on_postgres(data, url, args),
        }
    }

    /// One number from the relay's storage while it runs: `sql` is a
    /// `SELECT count(…)` valid on both backends.
    pub fn count(&self, relay: &Relay, sql: &str) -> i64 {
        match self {
            Backend::Sqlite => crate::relay_db(relay.data.path())
                .query_row(sql, [], |r| r.get(0))
                .expect("count"),
            Backend::Postgres { cluster, url } => {
                let db = url.rsplit('/').next().expect("a database name");
                cluster.sql(db, sql).parse().expect("a count")
            }
        }
    }
}
