//! The office console (issue 15): server-rendered pages on the relay's own
//! address, under `/console`, for the office administrator, the service
//! manager and the data protection lead. Every rule stays in the admin
//! service layer (`crate::admin`); these modules only check who may ask,
//! call it, and render.
//!
//! - `session.rs`: set-up links, sign-in with password and TOTP, the
//!   session cookie, CSRF tokens, roles;
//! - `pages.rs`: devices and enrolment, teams, audit, data protection,
//!   status;
//! - `reports.rs`: family days and the outcomes report, computed from the
//!   projections `projector.rs` keeps as documents arrive, with `sdc.rs`'s
//!   disclosure control; `svg.rs` draws the chart and QR codes;
//! - `csv.rs`: downloads.
//!
//! Pages are HTML from maud templates (escaped by default) with forms that
//! work without JavaScript. Every response carries a strict
//! Content-Security-Policy and `no-store`; the one stylesheet is served
//! from here.

mod csv;
mod pages;
pub mod projector;
pub mod reports;
pub mod sdc;
mod session;
mod svg;
#[cfg(test)]
mod tests;

use std::time::Duration;

use axum::Router;
use axum::extract::Request;
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use maud::{DOCTYPE, Markup, html};

use crate::AppState;
use crate::ratelimit::{AuthLimiter, AuthLimits};
use crate::storage::StaffRole;

pub use session::Staff;

/// The console's settings (`linkbook-server --console-…`).
#[derive(Debug, Clone)]
pub struct ConsoleConfig {
    /// A session unused for this long is signed out.
    pub idle_timeout: Duration,
    /// A session is signed out this long after sign-in, used or not.
    pub session_lifetime: Duration,
    /// Counts from 1 to `threshold - 1` are suppressed in reports.
    pub report_threshold: u64,
    /// The relay's address as staff and devices reach it (enrolment QR
    /// codes name it).
    pub public_url: Option<String>,
}

impl Default for ConsoleConfig {
    fn default() -> Self {
        ConsoleConfig {
            idle_timeout: Duration::from_secs(30 * 60),
            session_lifetime: Duration::from_secs(12 * 3600),
            report_threshold: 5,
            public_url: None,
        }
    }
}

/// The console's shared state.
#[derive(Debug)]
pub struct Console {
    pub config: ConsoleConfig,
    /// Failed sign-ins per client address: braked as enrolment codes are.
    pub logins: AuthLimiter,
}

impl Console {
    pub fn new(config: ConsoleConfig, login_limits: AuthLimits) -> Self {
        Console {
            config,
            logins: AuthLimiter::new(login_limits),
        }
    }
}

impl Default for Console {
    fn default() -> Self {
        Console::new(ConsoleConfig::default(), AuthLimits::default())
    }
}

/// The console's routes, under `/console`.
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/console", get(pages::home))
        .route("/console/", get(pages::home))
        .route("/console/static/console.css", get(stylesheet))
        .route(
            "/console/login",
            get(session::login_form).post(session::login),
        )
        .route("/console/logout", post(session::logout))
        .route(
            "/console/setup/{token}",
            get(session::setup_form).post(session::setup),
        )
        .route("/console/devices", get(pages::devices))
        .route("/console/devices/enrol", post(pages::enrol))
        .route(
            "/console/devices/{id}/revoke",
            get(pages::revoke_form).post(pages::revoke),
        )
        .route("/console/teams", get(pages::teams))
        .route("/console/teams/policy", post(pages::set_policy))
        .route("/console/family-days", get(reports::family_days))
        .route("/console/family-days/day", get(reports::family_day))
        .route("/console/family-days/day.csv", get(reports::family_day_csv))
        .route("/console/outcomes", get(reports::outcomes_page))
        .route("/console/outcomes.csv", get(reports::outcomes_csv))
        .route("/console/audit", get(pages::audit))
        .route("/console/audit.csv", get(pages::audit_csv))
        .route("/console/data-protection", get(pages::data_protection))
        .route("/console/data-protection/purge", post(pages::purge))
        .route("/console/data-protection/export", post(pages::export))
        .route("/console/data-protection/retention", post(pages::retention))
        .route("/console/status", get(pages::status))
        .fallback(not_found)
        .layer(tower_http::catch_panic::CatchPanicLayer::custom(
            |_: Box<dyn std::any::Any + Send>| {
                tracing::error!("a console request panicked");
                Page::error(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "Something went wrong",
                    "The relay could not show this. Nothing was changed; tell your IT supplier if it keeps happening.",
                )
            },
        ))
        .layer(axum::middleware::from_fn(security_headers))
}

/// The stylesheet is the only asset; everything else is in the page.
const CSS: &str = include_str!("console.css");

async fn stylesheet() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/css; charset=utf-8"),
            (header::CACHE_CONTROL, "max-age=3600"),
        ],
        CSS,
    )
        .into_response()
}

/// The Content-Security-Policy of every console response: nothing from
/// elsewhere, no inline script or style, no framing, forms only to here.
pub const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

async fn security_headers(request: Request, next: Next) -> Response {
    let mut response = next.run(request).await;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    headers.insert(
        header::STRICT_TRANSPORT_SECURITY,
        HeaderValue::from_static("max-age=31536000"),
    );
    headers
        .entry(header::CACHE_CONTROL)
        .or_insert(HeaderValue::from_static("no-store"));
    response
}

async fn not_found() -> Response {
    Page::error(StatusCode::NOT_FOUND, "Not found", "There is no such page.")
}

/// The pages in the navigation, and who sees each.
const NAV: &[(&str, &str, &[StaffRole])] = &[
    ("/console/devices", "Devices", &[StaffRole::Administrator]),
    (
        "/console/teams",
        "Teams",
        &[
            StaffRole::Administrator,
            StaffRole::Manager,
            StaffRole::DataProtection,
        ],
    ),
    (
        "/console/family-days",
        "Family days",
        &[StaffRole::Administrator, StaffRole::Manager],
    ),
    (
        "/console/outcomes",
        "Outcomes",
        &[StaffRole::Administrator, StaffRole::Manager],
    ),
    (
        "/console/audit",
        "Audit",
        &[StaffRole::Administrator, StaffRole::DataProtection],
    ),
    (
        "/console/data-protection",
        "Data protection",
        &[StaffRole::DataProtection],
    ),
    (
        "/console/status",
        "Status",
        &[StaffRole::Administrator, StaffRole::DataProtection],
    ),
];

/// Who may open `path` (one of [`NAV`]'s).
pub fn allowed(path: &str, role: StaffRole) -> bool {
    NAV.iter()
        .find(|(p, _, _)| *p == path)
        .is_some_and(|(_, _, roles)| roles.contains(&role))
}

/// A rendered page.
#[derive(Debug)]
pub struct Page;

impl Page {
    /// A whole page: `title`, the navigation for `staff` (none when signed
    /// out), `current` marked in it, and `body`.
    pub fn render(title: &str, staff: Option<&Staff>, current: &str, body: Markup) -> Markup {
        html! {
            (DOCTYPE)
            html lang="en-GB" {
                head {
                    meta charset="utf-8";
                    meta name="viewport" content="width=device-width, initial-scale=1";
                    title { (title) " — Linkbook office" }
                    link rel="stylesheet" href="/console/static/console.css";
                }
                body {
                    a.skip href="#main" { "Skip to content" }
                    header.top {
                        p.brand { a href="/console" { "Linkbook office" } }
                        @if let Some(staff) = staff {
                            nav aria-label="Console" {
                                ul {
                                    @for (path, label, _) in NAV.iter().filter(|(p, _, _)| allowed(p, staff.account.role)) {
                                        li {
                                            @if *path == current {
                                                a href=(path) aria-current="page" { (label) }
                                            } @else {
                                                a href=(path) { (label) }
                                            }
                                        }
                                    }
                                }
                            }
                            form.signout method="post" action="/console/logout" {
                                (staff.csrf_field())
                                span { (staff.account.name) " (" (role_label(staff.account.role)) ")" }
                                " "
                                button type="submit" { "Sign out" }
                            }
                        }
                    }
                    main #main {
                        h1 { (title) }
                        (body)
                    }
                }
            }
        }
    }

    /// A page with `status`.
    pub fn respond(status: StatusCode, markup: Markup) -> Response {
        (
            status,
            [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
            markup.into_string(),
        )
            .into_response()
    }

    /// A short error page.
    pub fn error(status: StatusCode, title: &str, message: &str) -> Response {
        Page::respond(
            status,
            Page::render(
                title,
                None,
                "",
                html! {
                    p role="alert" { (message) }
                    p { a href="/console" { "Back to the console" } }
                },
            ),
        )
    }
}

/// The role's name in words.
pub fn role_label(role: StaffRole) -> &'static str {
    match role {
        StaffRole::Administrator => "administrator",
        StaffRole::Manager => "manager",
        StaffRole::DataProtection => "data protection",
    }
}

/// What a console handler fails with: an HTML page, never a stack of
/// internal detail (that goes to the log, without personal data).
#[derive(Debug)]
pub enum ConsoleError {
    /// Not signed in, or the session ended: to the sign-in page.
    SignIn {
        expired: bool,
    },
    /// Signed in, but the role may not do this.
    Forbidden,
    /// The form's CSRF token is missing or wrong.
    Csrf,
    /// A bad form or query, said in words.
    BadRequest(String),
    NotFound(String),
    /// The relay's storage or another internal failure.
    Internal(String),
}

impl From<crate::storage::StorageError> for ConsoleError {
    fn from(e: crate::storage::StorageError) -> Self {
        ConsoleError::Internal(e.to_string())
    }
}

impl From<crate::admin::AdminError> for ConsoleError {
    fn from(e: crate::admin::AdminError) -> Self {
        use crate::admin::AdminError;
        match e {
            AdminError::NotFound { .. } => ConsoleError::NotFound(e.to_string()),
            AdminError::InvalidInput { .. }
            | AdminError::AmbiguousId { .. }
            | AdminError::Refused(_) => ConsoleError::BadRequest(e.to_string()),
            AdminError::Storage(e) => ConsoleError::Internal(e.to_string()),
        }
    }
}

impl IntoResponse for ConsoleError {
    fn into_response(self) -> Response {
        match self {
            ConsoleError::SignIn { expired } => {
                let to = if expired {
                    "/console/login?expired=1"
                } else {
                    "/console/login"
                };
                (StatusCode::SEE_OTHER, [(header::LOCATION, to)]).into_response()
            }
            ConsoleError::Forbidden => Page::error(
                StatusCode::FORBIDDEN,
                "Not allowed",
                "Your role does not allow this page or action.",
            ),
            ConsoleError::Csrf => Page::error(
                StatusCode::FORBIDDEN,
                "Form expired",
                "This form was not sent from this console session. Go back, reload the page and try again.",
            ),
            ConsoleError::BadRequest(m) => Page::error(StatusCode::BAD_REQUEST, "Not done", &m),
            ConsoleError::NotFound(m) => Page::error(StatusCode::NOT_FOUND, "Not found", &m),
            ConsoleError::Internal(m) => {
                tracing::error!(error = %m, "console request failed");
                Page::error(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "Something went wrong",
                    "The relay could not do this. Nothing was changed; try again, and tell your IT supplier if it keeps happening.",
                )
            }
        }
    }
}

pub type ConsoleResult<T = Response> = std::result::Result<T, ConsoleError>;
