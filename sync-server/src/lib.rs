//! linkbook-server: the relay family link workers' devices sync through.
//!
//! [`app`] builds the HTTP router (enrolment, the sync WebSocket, health);
//! [`serve`] binds it with TLS (or, on loopback only, plain HTTP) and runs it
//! until shutdown. `main.rs` only parses configuration.

pub mod admin;
pub mod at_rest;
pub mod audit_upload;
pub mod auth;
pub mod backup;
pub mod cli;
pub mod conn_limits;
pub mod console;
pub mod doc_cap;
pub mod documents;
pub mod door;
pub mod erasure_ledger;
pub mod error;
mod heavy;
pub mod metrics;
mod oracle;
mod outbox;
pub mod ratelimit;
pub mod refusals;
pub mod relay;
pub mod revocation;
mod split;
pub mod storage;
pub mod tls;

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use axum::extract::{
    ConnectInfo, DefaultBodyLimit, FromRequestParts, RawQuery, State, WebSocketUpgrade,
};
use axum::http::HeaderMap;
use axum::http::request::Parts;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use chrono::Utc;
use linkbook_core::protocol::dto;

pub use error::{Error, Result};
use ratelimit::{AuthLimiter, AuthLimits};
use relay::{Hub, Limits};
use storage::{AuditAction, AuditRecord, DeviceStore, SqliteStorage, Storage};

/// Shared by every request.
#[derive(Clone, Debug)]
pub struct AppState {
    pub storage: Arc<dyn Storage>,
    pub hub: Arc<Hub>,
    /// Failed enrolments and tokens per client address (brute force brake).
    pub auth: Arc<AuthLimiter>,
    /// Unauthenticated connections and read-idle timeout (conn_limits.rs).
    pub conns: Arc<conn_limits::Counter>,
    /// Read rows a device may upload (audit_upload.rs).
    pub audit_quotas: audit_upload::AuditQuotas,
    /// The office console's settings and sign-in brake (console/).
    pub console: Arc<console::Console>,
}

impl std::fmt::Debug for dyn Storage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Storage")
    }
}

/// The relay database file inside the data directory.
pub const DB_FILE: &str = "relay.db";

impl AppState {
    /// Opens (creating) the embedded storage in `data`, keyed with the data
    /// directory's `relay.key`.
    pub fn open(data: &Path, limits: Limits) -> Result<Self> {
        Self::open_with_key(data, limits, &at_rest::KeySource::DataDir)
    }

    /// Opens (creating) the embedded storage in `data` (a private
    /// directory), its database encrypted with the key from `key`.
    pub fn open_with_key(data: &Path, limits: Limits, key: &at_rest::KeySource) -> Result<Self> {
        let (storage, storage_id) = Self::open_sqlite(data, key)?;
        Ok(Self::with_storage(storage, storage_id, limits))
    }

    /// The embedded storage in `data` and its store id, for a relay built
    /// on it (the command line wraps it first: erasure_ledger::Ledgered).
    pub fn open_sqlite(
        data: &Path,
        key: &at_rest::KeySource,
    ) -> Result<(Arc<dyn Storage>, String)> {
        at_rest::prepare_data_dir(data)?;
        let sqlite = SqliteStorage::open_with_key(&data.join(DB_FILE), key)?;
        let storage_id = relay_storage_id(data, &sqlite)?;
        Ok((Arc::new(sqlite), storage_id))
    }

    /// A relay on PostgreSQL at `url` (`--database-url`): connects,
    /// migrates, and takes the database's own store id (every node of the
    /// database shares it).
    pub async fn connect_postgres(url: &str, limits: Limits) -> Result<Self> {
        let (storage, storage_id) = Self::connect_postgres_storage(url, None).await?;
        Ok(Self::with_storage(storage, storage_id, limits))
    }

    /// [`AppState::connect_postgres`]'s storage and store id.
    /// `hold`: the database's serving lock, shared by serving nodes,
    /// exclusive for a restore's clean-up (`PostgresStorage::hold`).
    pub async fn connect_postgres_storage(
        url: &str,
        hold: Option<storage::postgres::Hold>,
    ) -> Result<(Arc<dyn Storage>, String)> {
        let pg = storage::PostgresStorage::connect(url).await?;
        if let Some(how) = hold {
            pg.hold(how).await?;
        }
        let proposed = uuid::Uuid::new_v4().hyphenated().to_string();
        let storage_id = pg.store_id(&proposed).await?;
        Ok((Arc::new(pg), storage_id))
    }

    /// A relay on `storage` (any backend: the in-memory one for the
    /// simulation, a database's), named `storage_id`.
    pub fn with_storage(storage: Arc<dyn Storage>, storage_id: String, limits: Limits) -> Self {
        AppState {
            hub: Arc::new(Hub::new(storage.clone(), storage_id, limits)),
            storage,
            auth: Arc::new(AuthLimiter::new(AuthLimits::default())),
            conns: conn_limits::Counter::new(conn_limits::ConnLimits::default()),
            audit_quotas: audit_upload::AuditQuotas::default(),
            console: Arc::new(console::Console::default()),
        }
    }

    /// Admits a sync connection (`GET /v1/sync`): the device of bearer
    /// `token` from `client` (not locked out), its change cursor (`since=N`
    /// asks for the pipelined session, relay::Hub::push; other
    /// automerge-repo clients never send it), its session names from the
    /// `query`, and the kind of `client` address its last sync records
    /// (`storage::address_kind`). A refusal is the error the HTTP answer
    /// says.
    pub async fn admit_sync(
        &self,
        client: Option<IpAddr>,
        token: Option<&str>,
        query: Option<&str>,
    ) -> Result<(
        storage::Device,
        (Option<i64>, relay::Sessions, &'static str),
    )> {
        let device = match self.authenticate(ClientAddr(client), token).await {
            Ok(d) => d,
            Err(e) => {
                tracing::info!(reason = %e, "sync connection refused");
                return Err(e);
            }
        };
        let since = query.and_then(|q| {
            q.split('&')
                .find_map(|kv| kv.strip_prefix("since="))
                .and_then(|v| v.parse::<i64>().ok())
        });
        let sessions = relay::Sessions::from_query(query).map_err(Error::BadRequest)?;
        // What the device's last sync records of where it came from: the
        // kind of address, never the address.
        let address_kind = client.map_or(storage::UNKNOWN_ADDRESS_KIND, storage::address_kind);
        Ok((device, (since, sessions, address_kind)))
    }

    /// The same state with these quotas on uploaded read rows.
    pub fn with_audit_quotas(mut self, quotas: audit_upload::AuditQuotas) -> Self {
        self.audit_quotas = quotas;
        self
    }

    /// The same state with these connection limits.
    pub fn with_conn_limits(mut self, limits: conn_limits::ConnLimits) -> Self {
        self.conns = conn_limits::Counter::new(limits);
        self
    }

    /// The same state with these limits on failed authentication.
    /// The office console's settings and sign-in brake.
    pub fn with_console(mut self, config: console::ConsoleConfig, logins: AuthLimits) -> Self {
        self.console = Arc::new(console::Console::new(config, logins));
        self
    }

    pub fn with_auth_limits(mut self, limits: AuthLimits) -> Self {
        self.auth = Arc::new(AuthLimiter::new(limits));
        self
    }

    /// Refuses a client address that failed to authenticate too often: every
    /// attempt, right or wrong, until its lockout ends. Checked before any
    /// code or token is looked at.
    fn auth_allowed(&self, client: ClientAddr) -> Result<()> {
        let Some(ip) = client.0 else { return Ok(()) };
        self.auth
            .check(ip, std::time::Instant::now())
            .map_err(|retry_after| Error::TooManyAuthFailures { retry_after })
    }

    /// The device a bearer token belongs to, for a client address that is
    /// not locked out; a wrong token counts against the address.
    async fn authenticate(
        &self,
        client: ClientAddr,
        token: Option<&str>,
    ) -> Result<storage::Device> {
        self.auth_allowed(client)?;
        let device = auth::authenticate(&*self.storage, token).await;
        self.count_auth(client, device).await
    }

    /// Counts a wrong code or token against the client's address (a success
    /// is not counted).
    async fn count_auth<T>(&self, client: ClientAddr, result: Result<T>) -> Result<T> {
        if let (Some(ip), Err(Error::Unauthorized | Error::EnrolmentRefused(_))) =
            (client.0, &result)
        {
            // Audited aggregated (the audit must not be floodable): the
            // first refusal of an address in its window, and each lockout.
            let lockout = self.auth.failure(ip, std::time::Instant::now());
            let action = match lockout {
                Some(lockout) => {
                    metrics::metrics().lockout();
                    tracing::warn!(
                        client = %ip,
                        lockout_secs = lockout.as_secs(),
                        "too many failed enrolment or token attempts: address locked out"
                    );
                    Some(AuditAction::AuthLockout)
                }
                None if self.auth.failures(ip) == 1 => Some(AuditAction::AuthRefused),
                None => None,
            };
            if let Some(action) = action {
                let record = AuditRecord::new(action, Utc::now()).client(&ip.to_string());
                if let Err(e) = self.storage.append_audit(&[record]).await {
                    tracing::error!(error = %e, "writing the audit failed");
                }
            }
        }
        result
    }
}

/// The client's IP address, when the server runs with connect info (the
/// router called directly, as in unit tests, has none and counts nothing).
#[derive(Debug, Clone, Copy)]
pub(crate) struct ClientAddr(pub(crate) Option<IpAddr>);

impl<S: Send + Sync> FromRequestParts<S> for ClientAddr {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        Ok(ClientAddr(
            ConnectInfo::<SocketAddr>::from_request_parts(parts, state)
                .await
                .ok()
                .map(|c| c.0.ip()),
        ))
    }
}

/// This relay store's id (automerge-repo's `storageId`, and its peer id's
/// suffix): kept in the database (`relay_meta`), so it goes with the data it
/// names. An older relay kept it in `DATA/storage-id`; that value is adopted
/// once, by a database that already has devices, so they keep their sync
/// states (a fresh database beside an old file is a new store).
///
/// SQLite's operations never wait (sqlite/mod.rs), so this synchronous
/// start-up step polls them once.
fn relay_storage_id(data: &Path, storage: &SqliteStorage) -> Result<String> {
    fn ready<T>(f: impl std::future::Future<Output = storage::Result<T>>) -> Result<T> {
        futures_util::FutureExt::now_or_never(f)
            .unwrap_or_else(|| {
                Err(storage::StorageError::Unavailable(
                    "the embedded database did not answer at once".into(),
                ))
            })
            .map_err(Into::into)
    }
    let legacy = std::fs::read_to_string(data.join("storage-id"))
        .ok()
        .filter(|_| ready(storage.devices()).is_ok_and(|d| !d.is_empty()))
        .map(|id| id.trim().to_string())
        .filter(|id| !id.is_empty());
    let proposed = legacy.unwrap_or_else(|| uuid::Uuid::new_v4().hyphenated().to_string());
    ready(storage.store_id(&proposed))
}

/// The relay's HTTP surface.
pub fn app(state: AppState) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/v1/enrol", post(enrol))
        .route("/v1/sync", get(sync_socket))
        .route("/v1/changes", get(changes))
        .route("/v1/audit", post(audit_reads))
        .merge(console::routes())
        .layer(DefaultBodyLimit::max(16 * 1024))
        .with_state(state)
}

async fn enrol(
    State(state): State<AppState>,
    client: ClientAddr,
    body: axum::body::Bytes,
) -> Result<Json<dto::Enrolled>> {
    state.auth_allowed(client)?;
    let req: dto::EnrolRequest = serde_json::from_slice(&body).map_err(|_| {
        Error::BadRequest("expected JSON {\"code\": \"…\", \"device_name\": \"…\"}".into())
    })?;
    let enrolled = auth::enrol(&*state.storage, &req.code, &req.device_name, Utc::now()).await;
    let enrolled = state.count_auth(client, enrolled).await?;
    // Audited by the redemption itself, in its transaction (storage).
    tracing::info!(device = %enrolled.device_id, team = %enrolled.team, "device enrolled");
    Ok(Json(enrolled))
}

/// A device's log of case-file reads, for the audit (ids and times only).
async fn audit_reads(
    State(state): State<AppState>,
    client: ClientAddr,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Result<Json<dto::AuditStored>> {
    state.auth_allowed(client)?;
    let token = auth::token_from(&headers, None);
    let log: dto::ReadLog = serde_json::from_slice(&body).map_err(|_| {
        Error::BadRequest("expected JSON {\"reads\": [{\"family_id\": …, \"at\": …}]}".into())
    })?;
    let mut reads = Vec::with_capacity(log.reads.len());
    for r in log.reads {
        let id = linkbook_core::DocumentId::parse(&r.family_id, "family id")
            .map_err(|_| Error::BadRequest("a read names a malformed family id".into()))?;
        let at = chrono::DateTime::parse_from_rfc3339(&r.at)
            .map_err(|_| Error::BadRequest("a read has a malformed time".into()))?;
        reads.push((id.to_string(), at.with_timezone(&Utc)));
    }
    let device = auth::authenticate(&*state.storage, token.as_deref()).await;
    let device = state.count_auth(client, device).await?;
    let (stored, refused) = audit_upload::record(
        &*state.storage,
        &device,
        reads,
        Utc::now(),
        &state.audit_quotas,
    )
    .await?;
    Ok(Json(dto::AuditStored { stored, refused }))
}

#[derive(Debug, serde::Deserialize)]
struct ChangesQuery {
    #[serde(default)]
    since: i64,
}

/// The device's team's documents changed since a cursor: a reconnecting
/// device syncs those (and its own changed ones), not everything.
async fn changes(
    State(state): State<AppState>,
    client: ClientAddr,
    headers: HeaderMap,
    axum::extract::Query(q): axum::extract::Query<ChangesQuery>,
) -> Result<Json<dto::Changes>> {
    let token = auth::token_from(&headers, None);
    let device = state.authenticate(client, token.as_deref()).await?;
    let (cursor, documents) = state
        .storage
        .changed_since(&device.team, q.since, &device.id)
        .await?;
    // The device syncs these next: a loaded copy behind what another relay
    // node stored is brought up to it first (relay/nodes.rs).
    state.hub.catch_up(&device.team, &documents).await;
    let purged = state.storage.purged(&device.team).await?;
    let policy = state.storage.team_policy(&device.team).await?;
    Ok(Json(dto::Changes {
        cursor,
        documents: documents.iter().map(|(id, _)| id.to_string()).collect(),
        purged,
        policy,
    }))
}

async fn sync_socket(
    State(state): State<AppState>,
    client: ClientAddr,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
    unauthenticated: Option<axum::Extension<conn_limits::Unauthenticated>>,
    ws: WebSocketUpgrade,
) -> Result<Response> {
    let token = auth::token_from(&headers, query.as_deref());
    let (device, opening) = state
        .admit_sync(client.0, token.as_deref(), query.as_deref())
        .await?;
    if let Some(axum::Extension(u)) = unauthenticated {
        u.authenticated();
    }
    // At the cap, the device's oldest connection gives way (relay::Hub::admit).
    let hub = state.hub.clone();
    Ok(ws
        // tungstenite's defaults (128 KiB each way) made an idle connection
        // cost the relay 229 KB (benchmark relay-capacity); messages larger
        // than the buffer still arrive whole, the buffer just grows for them.
        .read_buffer_size(16 * 1024)
        .write_buffer_size(16 * 1024)
        .max_message_size(hub.limits().max_message_bytes)
        .on_upgrade(move |socket| hub.serve(device, socket, opening))
        .into_response())
}

/// How to listen.
#[derive(Debug, Clone)]
pub enum Transport {
    /// TLS with these PEM files.
    Tls { cert: PathBuf, key: PathBuf },
    /// Plain HTTP, loopback only (development and tests).
    InsecureHttp,
}

/// A bound, not yet running, relay.
#[derive(Debug)]
pub struct Bound {
    pub addr: SocketAddr,
    listener: std::net::TcpListener,
    transport: Transport,
}

impl Bound {
    pub fn bind(listen: SocketAddr, transport: Transport) -> Result<Bound> {
        if matches!(transport, Transport::InsecureHttp) && !listen.ip().is_loopback() {
            return Err(Error::Config(format!(
                "--insecure-http serves plain HTTP and is only allowed on loopback addresses, not {listen}"
            )));
        }
        let listener = std::net::TcpListener::bind(listen).map_err(|e| Error::Io {
            context: format!("listening on {listen}"),
            source: e,
        })?;
        listener.set_nonblocking(true).map_err(|e| Error::Io {
            context: "listener".into(),
            source: e,
        })?;
        let addr = listener.local_addr().map_err(|e| Error::Io {
            context: "listener".into(),
            source: e,
        })?;
        Ok(Bound {
            addr,
            listener,
            transport,
        })
    }

    pub fn url(&self) -> String {
        let scheme = match self.transport {
            Transport::Tls { .. } => "https",
            Transport::InsecureHttp => "http",
        };
        format!("{scheme}://{}", self.addr)
    }

    /// Serves until `shutdown` resolves, then lets in-flight requests finish
    /// (up to 10 s). Storage writes are synchronous inside a request, so a
    /// write that started completes before the process exits.
    pub async fn serve(
        self,
        state: AppState,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> Result<()> {
        // Revocations by the admin command (another process) cut live
        // connections; stops with this function (revocation.rs).
        let _revocations =
            revocation::Watcher::start(state.storage.clone(), state.hub.clone()).await?;
        // Other relay nodes' changes reach this node's loaded copies and
        // live devices (relay/nodes.rs); nothing on SQLite.
        let _documents = relay::Follower::start(&state.storage, state.hub.clone()).await?;
        let handle = axum_server::Handle::new();
        let h = handle.clone();
        let hub = state.hub.clone();
        let drained = tokio::spawn(async move {
            shutdown.await;
            // No new connections from here; syncs under way get a few
            // seconds to finish, then what is still open (idle live
            // connections) is told the relay restarts, and the server
            // waits at most the rest of its 10 s for them to close.
            tracing::info!("shutting down: finishing in-flight work");
            h.graceful_shutdown(Some(std::time::Duration::from_secs(10)));
            let cut = hub.drain(std::time::Duration::from_secs(5)).await;
            tracing::info!(
                connections = cut,
                "shutting down: closed the connections still open"
            );
        });
        // Connect info: the limit on failed authentication is per address.
        let acceptor = conn_limits::LimitAcceptor::new(state.conns.clone());
        let limits = state.conns.limits().clone();
        let service = app(state).into_make_service_with_connect_info::<SocketAddr>();
        let io = |e| Error::Io {
            context: "serving".into(),
            source: e,
        };
        let served = match self.transport {
            Transport::Tls { cert, key } => {
                let config = tls::server_config(&cert, &key)?;
                let server = axum_server::from_tcp_rustls(
                    self.listener,
                    axum_server::tls_rustls::RustlsConfig::from_config(config),
                )
                .map_err(io)?
                // Small writes (a 101 then the first sync messages) go out at
                // once: Nagle held each behind the previous one's ACK, a
                // round trip on a slow link (benchmark workload 3).
                .map(|tls| {
                    tls.handshake_timeout(limits.header_read_timeout)
                        .acceptor(acceptor)
                })
                .handle(handle);
                conn_limits::configure(server, &limits)
                    .serve(service)
                    .await
                    .map_err(io)
            }
            Transport::InsecureHttp => {
                let server = axum_server::from_tcp(self.listener)
                    .map_err(io)?
                    .acceptor(acceptor)
                    .handle(handle);
                conn_limits::configure(server, &limits)
                    .serve(service)
                    .await
                    .map_err(io)
            }
        };
        // WebSockets run on after the server's own connections have
        // drained (an upgraded connection leaves hyper): the process ends
        // once they are closed too, and their sync states saved.
        match served {
            Ok(()) => {
                let _ = drained.await;
            }
            Err(_) => drained.abort(),
        }
        served
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_http_is_refused_off_loopback() {
        let any: SocketAddr = "0.0.0.0:0".parse().expect("addr");
        assert!(matches!(
            Bound::bind(any, Transport::InsecureHttp),
            Err(Error::Config(_))
        ));
        let loopback: SocketAddr = "127.0.0.1:0".parse().expect("addr");
        assert!(Bound::bind(loopback, Transport::InsecureHttp).is_ok());
    }

    /// A sync connection is admitted with the kind of its client's
    /// address, which its last sync records (never the address).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_sync_is_admitted_with_its_address_kind() -> Result<()> {
        let dir = tempfile::tempdir().map_err(|e| Error::Io {
            context: "tempdir".into(),
            source: e,
        })?;
        let state = AppState::open(dir.path(), Limits::default())?;
        let code = auth::new_enrolment_code(
            &*state.storage,
            "north",
            "Asha",
            chrono::Duration::hours(1),
            Utc::now(),
        )
        .await?;
        let token = auth::enrol(&*state.storage, &code, "tablet", Utc::now())
            .await?
            .token;
        for (client, kind) in [
            (Some("192.168.4.7"), "private"),
            (Some("::ffff:203.0.113.9"), "public"),
            (Some("::1"), "loopback"),
            (None, storage::UNKNOWN_ADDRESS_KIND),
        ] {
            let ip = client.map(|c| c.parse::<IpAddr>().expect("ip"));
            let (_, (_, _, admitted)) = state.admit_sync(ip, Some(&token), None).await?;
            assert_eq!(admitted, kind, "{client:?}");
        }
        Ok(())
    }

    /// One address guessing is locked out with 429 and `Retry-After`, for
    /// every authentication (also a good token); another address is not.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn failed_authentications_lock_out_only_their_address() -> Result<()> {
        use axum::body::Body;
        use axum::extract::connect_info::MockConnectInfo;
        use axum::http::{Request, StatusCode};
        use tower::ServiceExt;

        let dir = tempfile::tempdir().map_err(|e| Error::Io {
            context: "tempdir".into(),
            source: e,
        })?;
        let state = AppState::open(dir.path(), Limits::default())?.with_auth_limits(AuthLimits {
            max_failures: 3,
            lockout: std::time::Duration::from_secs(120),
            ..AuthLimits::default()
        });
        let code = auth::new_enrolment_code(
            &*state.storage,
            "north",
            "Asha",
            chrono::Duration::hours(1),
            Utc::now(),
        )
        .await?;
        let token = auth::enrol(&*state.storage, &code, "tablet", Utc::now())
            .await?
            .token;
        let from = |ip: &str| {
            let addr: SocketAddr = format!("{ip}:40000").parse().expect("addr");
            app(state.clone()).layer(MockConnectInfo(addr))
        };
        let enrol = |code: &str| {
            Request::post("/v1/enrol")
                .body(Body::from(
                    serde_json::json!({ "code": code, "device_name": "t" }).to_string(),
                ))
                .expect("request")
        };
        let changes = |token: &str| {
            Request::get("/v1/changes")
                .header("authorization", format!("Bearer {token}"))
                .body(Body::empty())
                .expect("request")
        };
        let status = |r: &Response| r.status();
        let attacker = "192.0.2.10";
        for guess in ["AAAA-AAAA-AAAA", "BBBB-BBBB-BBBB"] {
            let r = from(attacker)
                .oneshot(enrol(guess))
                .await
                .expect("infallible");
            assert_eq!(status(&r), StatusCode::FORBIDDEN);
        }
        let r = from(attacker)
            .oneshot(changes("nope"))
            .await
            .expect("infallible");
        assert_eq!(status(&r), StatusCode::UNAUTHORIZED);
        // Locked out: the good token too, with how long to wait.
        let r = from(attacker)
            .oneshot(changes(&token))
            .await
            .expect("infallible");
        assert_eq!(status(&r), StatusCode::TOO_MANY_REQUESTS);
        let retry_after: u64 = r
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok())
            .expect("a Retry-After header in seconds");
        assert!((119..=120).contains(&retry_after), "{retry_after}");
        let body = axum::body::to_bytes(r.into_body(), 4096)
            .await
            .expect("body");
        let body: serde_json::Value = serde_json::from_slice(&body).expect("json");
        assert_eq!(body["error"], "too_many_auth_failures");
        let r = from(attacker)
            .oneshot(enrol(&code))
            .await
            .expect("infallible");
        assert_eq!(status(&r), StatusCode::TOO_MANY_REQUESTS);
        // Another address is not affected.
        let r = from("192.0.2.11")
            .oneshot(changes(&token))
            .await
            .expect("infallible");
        assert_eq!(status(&r), StatusCode::OK);
        Ok(())
    }
}
