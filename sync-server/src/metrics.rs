//! Prometheus metrics for whoever runs the relay (issue 14), on a listener
//! of their own (`--metrics-listen`, loopback by default), never on the
//! devices' port: `/metrics` (the OpenMetrics text), `/healthz` (the
//! process answers) and `/readyz` (its storage answers).
//!
//! What is counted: devices connected now, sync connections ended by
//! outcome, protocol messages and bytes each way, documents loaded,
//! storage commit latency, refused inputs by kind and authentication
//! lockouts. Labels are outcomes, directions and kinds only: never an id of
//! a device, worker, team or family. One relay per process, so one set of
//! metrics per process ([`metrics`]).

use std::sync::{Arc, LazyLock};

use axum::Router;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::storage::Storage;

/// How a sync connection ended.
#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq, EncodeLabelValue)]
pub enum SyncOutcome {
    /// The device closed it (its sync done).
    Completed,
    /// The relay closed it over something the device sent or a storage
    /// failure (the reason went to the device and the log).
    Closed,
    /// Its device was revoked.
    Revoked,
    /// A newer connection of the same device took its place.
    Replaced,
    /// Its send queue overflowed (a peer that does not read).
    Overflowed,
    /// The relay was shutting down (`Hub::drain`).
    Restarting,
}

#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq, EncodeLabelValue)]
pub enum Direction {
    Received,
    Sent,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabel {
    outcome: SyncOutcome,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DirectionLabel {
    direction: Direction,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabel {
    kind: crate::refusals::RefusalKind,
}

/// How many ended syncs [`Metrics::recent_syncs`] keeps.
pub const RECENT_SYNCS: usize = 50;

/// A sync connection that ended (ids only).
#[derive(Debug, Clone)]
pub struct RecentSync {
    pub at: chrono::DateTime<chrono::Utc>,
    pub device: String,
    pub team: String,
    pub outcome: SyncOutcome,
}

/// The relay's metrics.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    recent: std::sync::Mutex<std::collections::VecDeque<RecentSync>>,
    connected: Gauge,
    syncs: Family<OutcomeLabel, Counter>,
    messages: Family<DirectionLabel, Counter>,
    bytes: Family<DirectionLabel, Counter>,
    loaded_documents: Gauge,
    commit_seconds: Histogram,
    refused: Family<KindLabel, Counter>,
    lockouts: Counter,
    backup_age: Gauge,
}

/// This process's metrics.
pub fn metrics() -> &'static Metrics {
    static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::new);
    &METRICS
}

impl Metrics {
    fn new() -> Metrics {
        let m = Metrics {
            registry: Registry::with_prefix("linkbook"),
            recent: std::sync::Mutex::new(std::collections::VecDeque::with_capacity(RECENT_SYNCS)),
            connected: Gauge::default(),
            syncs: Family::default(),
            messages: Family::default(),
            bytes: Family::default(),
            loaded_documents: Gauge::default(),
            // 0.5 ms to about 4 s.
            commit_seconds: Histogram::new(exponential_buckets(0.0005, 2.0, 14)),
            refused: Family::default(),
            lockouts: Counter::default(),
            backup_age: Gauge::default(),
        };
        m.registered()
    }

    /// Registers every metric (a handle each: they share their values).
    fn registered(mut self) -> Metrics {
        let r = &mut self.registry;
        r.register(
            "connected_devices",
            "Device sync connections open now",
            self.connected.clone(),
        );
        r.register(
            "syncs",
            "Sync connections ended, by outcome",
            self.syncs.clone(),
        );
        r.register(
            "messages",
            "Protocol messages, by direction",
            self.messages.clone(),
        );
        r.register(
            "message_bytes",
            "Bytes of protocol messages, by direction",
            self.bytes.clone(),
        );
        r.register(
            "loaded_documents",
            "Documents held in memory",
            self.loaded_documents.clone(),
        );
        r.register(
            "storage_commit_seconds",
            "Time to commit what one incoming message brought",
            self.commit_seconds.clone(),
        );
        r.register(
            "refused_inputs",
            "Documents and messages refused, by kind",
            self.refused.clone(),
        );
        r.register(
            "auth_lockouts",
            "Addresses locked out after failed enrolment codes or tokens",
            self.lockouts.clone(),
        );
        r.register(
            "backup_age_seconds",
            "Seconds since the latest `linkbook-server backup` of this store completed (-1: none yet), read from the database at each scrape",
            self.backup_age.clone(),
        );
        self
    }

    /// Sets the backup age gauge from the latest backup's time.
    pub(crate) fn backup_at(
        &self,
        at: Option<chrono::DateTime<chrono::Utc>>,
        now: chrono::DateTime<chrono::Utc>,
    ) {
        self.backup_age
            .set(at.map_or(-1, |at| (now - at).num_seconds().max(0)));
    }

    pub(crate) fn connected(&self) {
        self.connected.inc();
    }

    pub(crate) fn disconnected(&self, outcome: SyncOutcome, device: &str, team: &str) {
        self.connected.dec();
        self.syncs.get_or_create(&OutcomeLabel { outcome }).inc();
        let mut recent = self.recent.lock().unwrap_or_else(|p| p.into_inner());
        if recent.len() == RECENT_SYNCS {
            recent.pop_front();
        }
        recent.push_back(RecentSync {
            at: chrono::Utc::now(),
            device: device.to_string(),
            team: team.to_string(),
            outcome,
        });
    }

    /// Devices connected to this node now.
    pub fn connected_now(&self) -> i64 {
        self.connected.get()
    }

    /// The latest ended syncs on this node, newest first (the office
    /// console's status page).
    pub fn recent_syncs(&self) -> Vec<RecentSync> {
        let recent = self.recent.lock().unwrap_or_else(|p| p.into_inner());
        recent.iter().rev().cloned().collect()
    }

    pub(crate) fn message(&self, direction: Direction, bytes: usize) {
        let label = DirectionLabel { direction };
        self.messages.get_or_create(&label).inc();
        self.bytes
            .get_or_create(&label)
            .inc_by(u64::try_from(bytes).unwrap_or(u64::MAX));
    }

    pub(crate) fn loaded_documents(&self, count: usize) {
        self.loaded_documents
            .set(i64::try_from(count).unwrap_or(i64::MAX));
    }

    pub(crate) fn committed(&self, took: std::time::Duration) {
        self.commit_seconds.observe(took.as_secs_f64());
    }

    pub(crate) fn refused(&self, kind: crate::refusals::RefusalKind) {
        self.refused.get_or_create(&KindLabel { kind }).inc();
    }

    pub(crate) fn lockout(&self) {
        self.lockouts.inc();
    }

    /// The OpenMetrics text of every metric.
    pub fn encode(&self) -> String {
        let mut text = String::new();
        if prometheus_client::encoding::text::encode(&mut text, &self.registry).is_err() {
            text.clear();
        }
        text
    }
}

/// The metrics listener's routes; `/readyz` asks `storage` for something
/// small.
pub fn app(storage: Arc<dyn Storage>) -> Router {
    Router::new()
        .route(
            "/metrics",
            get({
                let storage = storage.clone();
                move || {
                    let storage = storage.clone();
                    async move {
                        // Another process (`linkbook-server backup`) records
                        // backups: read at each scrape.
                        match storage.last_backup().await {
                            Ok(at) => metrics().backup_at(at, chrono::Utc::now()),
                            Err(e) => {
                                tracing::warn!(error = %e, "metrics: the last backup's time could not be read");
                            }
                        }
                        (
                            [(
                                header::CONTENT_TYPE,
                                "application/openmetrics-text; version=1.0.0; charset=utf-8",
                            )],
                            metrics().encode(),
                        )
                    }
                }
            }),
        )
        .route("/healthz", get(|| async { "ok\n" }))
        .route(
            "/readyz",
            get(move || {
                let storage = storage.clone();
                async move {
                    match storage.retention_policies().await {
                        Ok(_) => (StatusCode::OK, "ready\n").into_response(),
                        Err(e) => {
                            tracing::warn!(error = %e, "readiness: the storage does not answer");
                            (StatusCode::SERVICE_UNAVAILABLE, "storage unavailable\n")
                                .into_response()
                        }
                    }
                }
            }),
        )
}

/// The metrics listener's own connection limits: a scraper needs one or
/// two connections, and a client that connects and sends nothing (or its
/// headers a byte at a time) is closed after [`METRICS_LIMITS`]'s header
/// timeout, so it cannot hold the listener's file descriptors, or the
/// relay's, for long.
pub const METRICS_LIMITS: crate::conn_limits::ConnLimits = crate::conn_limits::ConnLimits {
    max_unauthenticated: 32,
    max_unauthenticated_per_address: 16,
    read_idle: std::time::Duration::from_secs(30),
    header_read_timeout: std::time::Duration::from_secs(5),
};

/// Serves [`app`] on `listener` until the process ends, within
/// [`METRICS_LIMITS`] (conn_limits.rs: no connection here ever
/// authenticates, so each counts against the caps until it closes).
pub async fn serve(listener: tokio::net::TcpListener, storage: Arc<dyn Storage>) {
    let counter = crate::conn_limits::Counter::new(METRICS_LIMITS);
    let served = async {
        let server = axum_server::from_tcp(listener.into_std()?)?
            .acceptor(crate::conn_limits::LimitAcceptor::new(counter));
        crate::conn_limits::configure(server, &METRICS_LIMITS)
            .serve(app(storage).into_make_service())
            .await
    };
    if let Err(e) = served.await {
        tracing::error!(error = %e, "the metrics listener failed");
    }
}
