//! The PostgreSQL backend: several relay nodes (and the admin commands) on
//! one database (issue 14).
//!
//! Every operation is one statement or one transaction on a connection
//! from a deadpool pool; the same semantics as [`super::SqliteStorage`],
//! checked by the same contract suite. What SQLite got from its single
//! writer, this backend gets from row locks taken inside the transaction:
//! - the change cursor is a per-team counter row (`team_cursor`), locked
//!   first by every upload and purge of the team and advanced in the
//!   upload's transaction, so cursor order is commit order and a purge
//!   cannot race an upload (`documents.rs`);
//! - compaction is one conditional `UPDATE` of the document's row, which
//!   serialises it with other compactions and with uploads of the document;
//! - revocations are numbered by a counter row in the trigger that logs
//!   them (migration 001);
//! - migrations run in one transaction under an advisory lock, so nodes
//!   starting together apply each once.
//!
//! The audit is append-only in the database: a trigger refuses UPDATE,
//! DELETE and TRUNCATE (migration 001). Nothing here updates or deletes an
//! audit row.
//!
//! TLS: `sslmode=require` (or `verify-full`/`verify-ca`, which rustls does
//! anyway: it always checks the chain and the host name) connects through
//! rustls with the web's roots, plus the PEM file named by
//! `LINKBOOK_DATABASE_CA`. Without it, only a loopback or Unix-socket host
//! is accepted (TLS by default outside loopback).

mod audit;
mod console;
mod devices;
mod documents;
mod watch;

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime, Transaction};
use linkbook_core::DocumentId;
use tokio_postgres::config::{Host, SslMode};
use tokio_postgres::{NoTls, Row};

use super::{AuditRecord, Device, DeviceId, Result, StorageError, Team};
use crate::error::Error;

/// The schema, one file per version (`schema_migrations.version` is the
/// number of files applied).
pub(super) const MIGRATIONS: &[&str] = &[
    include_str!("../../../migrations/postgres/001_init.sql"),
    include_str!("../../../migrations/postgres/002_console.sql"),
];

/// The advisory lock key migrations run under ("linkbook" in ASCII).
const MIGRATION_LOCK: i64 = 0x6c69_6e6b_626f_6f6b;

/// The advisory lock serving nodes hold shared and a restore's clean-up
/// (`after-restore`) exclusively ("lbserve!" in ASCII).
const SERVING_LOCK: i64 = 0x6c62_7365_7276_6521;

/// Who holds the database's serving lock ([`PostgresStorage::hold`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hold {
    /// A relay node: shared with every other node.
    Serving,
    /// Work no node may serve during (`after-restore`).
    Exclusive,
}

/// Connections per relay process. Every upload of one team waits on that
/// team's cursor row anyway; more connections than this mostly queue in
/// the database.
const POOL_SIZE: usize = 16;

/// How long a call waits for a free connection or for a new one before it
/// fails as [`StorageError::Unavailable`].
const POOL_WAIT: Duration = Duration::from_secs(30);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// The environment variable naming a PEM file of CA certificates trusted
/// for the database's TLS, beside the web's roots.
pub const DATABASE_CA_ENV: &str = "LINKBOOK_DATABASE_CA";

/// The relay's storage on a PostgreSQL database.
pub struct PostgresStorage {
    pool: Pool,
    /// How to open a connection of its own (the document watch's LISTEN,
    /// watch.rs), as the pool does.
    config: tokio_postgres::Config,
    tls: Option<tokio_postgres_rustls::MakeRustlsConnect>,
    /// The connection holding the serving lock, while it is held.
    held: tokio::sync::Mutex<Option<deadpool_postgres::Client>>,
}

impl std::fmt::Debug for PostgresStorage {
    // Never the URL: it may hold a password.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PostgresStorage")
    }
}

impl PostgresStorage {
    /// Connects to the database at `url` (a `postgres://` URL or a
    /// `key=value` string) and migrates it. Refuses a host other than
    /// loopback or a Unix socket without `sslmode=require`, and a database
    /// whose schema is newer than this relay.
    pub async fn connect(url: &str) -> crate::error::Result<Self> {
        let mut config: tokio_postgres::Config =
            with_verify_as_require(url).parse().map_err(|e: tokio_postgres::Error| {
                // The parser's words name an option, never its value (the
                // URL may hold a password).
                let why = std::error::Error::source(&e).map_or(e.to_string(), |c| c.to_string());
                Error::Config(format!(
                    "the database URL is not valid ({why}): give postgres://user@host:port/database?sslmode=require"
                ))
            })?;
        if config.get_application_name().is_none() {
            config.application_name("linkbook-server");
        }
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(CONNECT_TIMEOUT);
        }
        let manager_config = ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        };
        let tls = match config.get_ssl_mode() {
            SslMode::Require => Some(tls_connector()?),
            _ if is_local(&config) => None,
            _ => {
                return Err(Error::Config(
                    "the database is not on this machine (loopback or a Unix socket) and the URL does not ask for TLS: add sslmode=require to it (set LINKBOOK_DATABASE_CA to a PEM file if the server's certificate is from your own CA)"
                        .into(),
                ));
            }
        };
        let manager = match &tls {
            Some(tls) => Manager::from_config(config.clone(), tls.clone(), manager_config),
            None => Manager::from_config(config.clone(), NoTls, manager_config),
        };
        let pool = Pool::builder(manager)
            .max_size(POOL_SIZE)
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(POOL_WAIT))
            .create_timeout(Some(CONNECT_TIMEOUT + Duration::from_secs(5)))
            .build()
            .map_err(|e| Error::Config(format!("the database connection pool: {e}")))?;
        let storage = PostgresStorage {
            pool,
            config,
            tls,
            held: tokio::sync::Mutex::new(None),
        };
        storage.migrate().await?;
        Ok(storage)
    }

    /// Applies the migrations this database lacks, in one transaction
    /// under an advisory lock: relays starting together wait for the first
    /// one's, then find nothing to do.
    async fn migrate(&self) -> crate::error::Result<()> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(StorageError::from)?;
        let run = async {
            tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
                .await?;
            tx.batch_execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations (
                     version    integer PRIMARY KEY,
                     applied_at timestamptz NOT NULL DEFAULT now()
                 )",
            )
            .await?;
            tx.query_one(
                "SELECT coalesce(max(version), 0) FROM schema_migrations",
                &[],
            )
            .await?
            .try_get::<_, i32>(0)
        };
        let current = run.await.map_err(StorageError::from)?;
        let current = usize::try_from(current).unwrap_or(0);
        if current > MIGRATIONS.len() {
            return Err(Error::Config(format!(
                "the relay database has schema {current}, newer than this linkbook-server (schema {}): update it",
                MIGRATIONS.len()
            )));
        }
        for (i, sql) in MIGRATIONS.iter().enumerate().skip(current) {
            let version = i32::try_from(i + 1).unwrap_or(i32::MAX);
            tx.batch_execute(sql).await.map_err(StorageError::from)?;
            tx.execute(
                "INSERT INTO schema_migrations (version, applied_at) VALUES ($1, now())",
                &[&version],
            )
            .await
            .map_err(StorageError::from)?;
        }
        tx.commit().await.map_err(StorageError::from)?;
        Ok(())
    }

    /// Takes the database's serving lock for as long as this storage lives
    /// (a session advisory lock on a connection kept for it; PostgreSQL
    /// releases it when that connection ends, a crashed node's included):
    /// shared by every serving node, exclusive for work that no node may
    /// serve during. Refused, with who holds it, when the other kind is held.
    pub async fn hold(&self, how: Hold) -> crate::error::Result<()> {
        let mut held = self.held.lock().await;
        if held.is_some() {
            return Ok(());
        }
        let client = self.client().await?;
        let sql = match how {
            Hold::Serving => "SELECT pg_try_advisory_lock_shared($1)",
            Hold::Exclusive => "SELECT pg_try_advisory_lock($1)",
        };
        let taken: bool = client
            .query_one(sql, &[&SERVING_LOCK])
            .await
            .and_then(|row| row.try_get(0))
            .map_err(StorageError::from)?;
        if !taken {
            return Err(Error::Config(match how {
                Hold::Serving => "a restore's clean-up (after-restore) is running on this database: start the relay when it is done".into(),
                Hold::Exclusive => "relay nodes are serving this database: stop every node first".into(),
            }));
        }
        *held = Some(client);
        Ok(())
    }

    /// A connection from the pool.
    async fn client(&self) -> Result<deadpool_postgres::Client> {
        Ok(self.pool.get().await?)
    }
}

/// tokio-postgres knows `disable`, `prefer` and `require`; libpq's
/// `verify-ca` and `verify-full` ask for at least what rustls always does
/// under `require` (the chain and the host name), so they are read as it.
fn with_verify_as_require(url: &str) -> String {
    url.replace("sslmode=verify-full", "sslmode=require")
        .replace("sslmode=verify-ca", "sslmode=require")
}

/// Whether every host the configuration may connect to is this machine:
/// a loopback address, `localhost`, or a Unix socket.
fn is_local(config: &tokio_postgres::Config) -> bool {
    let hosts = config.get_hosts();
    let addrs = config.get_hostaddrs();
    if hosts.is_empty() && addrs.is_empty() {
        return false;
    }
    // A `hostaddr` is where the connection goes; the host is then only a name.
    if !addrs.is_empty() {
        return addrs.iter().all(IpAddr::is_loopback);
    }
    hosts.iter().all(|host| match host {
        Host::Tcp(name) => {
            let name = name.trim_start_matches('[').trim_end_matches(']');
            name.eq_ignore_ascii_case("localhost")
                || name.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
        }
        #[cfg(unix)]
        Host::Unix(_) => true,
    })
}

/// rustls with the ring provider (the only one built: two providers make
/// rustls panic), the web's roots and `LINKBOOK_DATABASE_CA`'s.
fn tls_connector() -> crate::error::Result<tokio_postgres_rustls::MakeRustlsConnect> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;

    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    if let Some(path) = std::env::var_os(DATABASE_CA_ENV) {
        let shown = std::path::Path::new(&path).display().to_string();
        let bad = |e: &dyn std::fmt::Display| {
            Error::Config(format!(
                "{DATABASE_CA_ENV} ({shown}): not a readable PEM file of CA certificates: {e}"
            ))
        };
        let mut added = 0;
        for cert in CertificateDer::pem_file_iter(&path).map_err(|e| bad(&e))? {
            let cert = cert.map_err(|e| bad(&e))?;
            roots.add(cert).map_err(|e| bad(&e))?;
            added += 1;
        }
        if added == 0 {
            return Err(bad(&"it holds no certificate"));
        }
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| Error::Tls(e.to_string()))?
    .with_root_certificates(roots)
    .with_no_client_auth();
    Ok(tokio_postgres_rustls::MakeRustlsConnect::new(config))
}

const DEVICE_COLUMNS: &str =
    "id, team, worker, device_name, enrolled_at, revoked_at, last_sync_at, last_address_kind";

fn device_row(r: &Row) -> std::result::Result<Device, tokio_postgres::Error> {
    Ok(Device {
        id: DeviceId::new(r.try_get::<_, String>(0)?),
        team: Team::new(r.try_get::<_, String>(1)?),
        worker: r.try_get(2)?,
        device_name: r.try_get(3)?,
        enrolled_at: r.try_get(4)?,
        revoked_at: r.try_get(5)?,
        last_sync_at: r.try_get(6)?,
        last_address_kind: r.try_get(7)?,
    })
}

/// A stored document id, read back: not one is damaged data.
fn document_id(text: &str) -> Result<DocumentId> {
    DocumentId::parse(text, "document id")
        .map_err(|e| StorageError::Corrupt(format!("a stored document id: {e}")))
}

/// Appends one audit record inside `tx`.
async fn insert_audit(
    tx: &Transaction<'_>,
    r: &AuditRecord,
) -> std::result::Result<(), tokio_postgres::Error> {
    let insert = tx
        .prepare_cached(
            "INSERT INTO audit (at, device_id, worker, action, doc_id, team, client)
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .await?;
    tx.execute(
        &insert,
        &[
            &r.at_text(),
            &r.device_id,
            &r.worker,
            &r.action.as_str(),
            &r.document_id,
            &r.team,
            &r.client,
        ],
    )
    .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::expect_used, clippy::unwrap_used)]

    use super::*;

    fn local(url: &str) -> bool {
        is_local(&url.parse().expect("url"))
    }

    #[test]
    fn only_this_machine_counts_as_local() {
        assert!(local("postgres://u@127.0.0.1:5432/db"));
        assert!(local("postgres://u@localhost/db"));
        assert!(local("postgres://u@[::1]:5432/db"));
        assert!(local("host=/run/postgresql user=u"));
        assert!(!local("postgres://u@db.example.org/db"));
        assert!(!local("postgres://u@10.0.0.5/db"));
        assert!(!local("postgres://u@127.0.0.1,db.example.org/db"));
        assert!(!local("host=localhost hostaddr=10.0.0.5 user=u"));
    }

    #[test]
    fn verify_modes_read_as_require() {
        let config: tokio_postgres::Config =
            with_verify_as_require("postgres://u@db.example.org/db?sslmode=verify-full")
                .parse()
                .expect("url");
        assert_eq!(config.get_ssl_mode(), SslMode::Require);
    }

    #[test]
    fn a_pool_that_cannot_serve_is_unavailable() {
        use deadpool_postgres::{PoolError, TimeoutType};
        for e in [PoolError::Closed, PoolError::Timeout(TimeoutType::Wait)] {
            assert!(matches!(
                StorageError::from(e),
                StorageError::Unavailable(_)
            ));
        }
    }

    #[tokio::test]
    async fn a_bad_url_says_which_option_without_its_value() {
        let e = PostgresStorage::connect("postgres://u:secret@127.0.0.1/db?sslmode=sometimes")
            .await
            .expect_err("refused");
        let text = e.to_string();
        assert!(text.contains("sslmode"), "{text}");
        assert!(
            !text.contains("secret") && !text.contains("sometimes"),
            "{text}"
        );
    }

    #[tokio::test]
    async fn a_remote_host_without_tls_is_refused_before_connecting() {
        let e = PostgresStorage::connect("postgres://u:secret@db.example.org/db")
            .await
            .expect_err("refused");
        let text = e.to_string();
        assert!(text.contains("sslmode=require"), "{text}");
        assert!(!text.contains("secret"), "{text}");
        let e = PostgresStorage::connect("postgres://u:secret@db.example.org/db?sslmode=disable")
            .await
            .expect_err("refused");
        assert!(e.to_string().contains("sslmode=require"));
    }
}
