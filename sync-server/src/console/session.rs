//! Signing in and staying signed in: the set-up link, the sign-in form
//! (password, and a TOTP code for administrators and data protection),
//! the session cookie and the CSRF token every form carries.
//!
//! The session cookie `__Host-linkbook-session` holds 256 random bits; the
//! relay stores only its SHA-256. It is `HttpOnly; Secure;
//! SameSite=Strict`, with no lifetime of its own: the relay ends a session
//! idle longer than `--console-idle-secs` or older than
//! `--console-session-hours`. The sign-in form is protected against login
//! CSRF by a second cookie whose random value the form must repeat.

use std::net::IpAddr;
use std::time::Instant;

use axum::Form;
use axum::extract::{FromRequestParts, Path, Query, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use maud::{Markup, html};
use serde::Deserialize;

use super::{ConsoleError, ConsoleResult, Page, role_label, svg};
use crate::admin::accounts::{self, SignInError};
use crate::storage::{AuditAction, AuditRecord, StaffAccount, StaffRole, StaffSession};
use crate::{AppState, ClientAddr};

const SESSION_COOKIE: &str = "__Host-linkbook-session";
const LOGIN_COOKIE: &str = "__Host-linkbook-login";
/// A session's last-seen time is written at most this often (or a quarter
/// of the idle timeout, if that is shorter).
const TOUCH_EVERY: chrono::Duration = chrono::Duration::seconds(30);

/// A signed-in member of staff, as a handler receives them.
#[derive(Debug, Clone)]
pub struct Staff {
    pub account: StaffAccount,
    pub csrf: String,
    session_hash: Vec<u8>,
}

impl Staff {
    /// The hidden field every form of this session carries.
    pub fn csrf_field(&self) -> Markup {
        html! { input type="hidden" name="csrf" value=(self.csrf); }
    }

    /// Checks a posted form's CSRF token.
    pub fn check_csrf(&self, posted: Option<&str>) -> ConsoleResult<()> {
        match posted {
            Some(token) if accounts::constant_time_eq(token.as_bytes(), self.csrf.as_bytes()) => {
                Ok(())
            }
            _ => Err(ConsoleError::Csrf),
        }
    }

    /// Refuses (403) unless the role is one of `roles`.
    pub fn require(&self, roles: &[StaffRole]) -> ConsoleResult<()> {
        if roles.contains(&self.account.role) {
            Ok(())
        } else {
            Err(ConsoleError::Forbidden)
        }
    }

    /// Refuses unless the role may open the navigation page `path`.
    pub fn may_open(&self, path: &str) -> ConsoleResult<()> {
        if super::allowed(path, self.account.role) {
            Ok(())
        } else {
            Err(ConsoleError::Forbidden)
        }
    }

    /// Who the audit names for this member of staff's actions.
    pub fn actor(&self) -> String {
        accounts::actor(&self.account.name)
    }

    /// An audit record of `action` by this member of staff.
    pub fn audit(&self, action: AuditAction, now: DateTime<Utc>) -> AuditRecord {
        let mut record = AuditRecord::new(action, now);
        record.worker = Some(self.actor());
        record
    }
}

fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.to_string())
        .filter(|v| v.len() == 64 && v.bytes().all(|b| b.is_ascii_hexdigit()))
}

fn set_cookie(name: &str, value: &str) -> HeaderValue {
    HeaderValue::from_str(&format!(
        "{name}={value}; Path=/; Secure; HttpOnly; SameSite=Strict"
    ))
    .expect("hex cookie values are valid header text")
}

fn clear_cookie(name: &str) -> HeaderValue {
    HeaderValue::from_str(&format!(
        "{name}=; Path=/; Secure; HttpOnly; SameSite=Strict; Max-Age=0"
    ))
    .expect("a valid header")
}

impl FromRequestParts<AppState> for Staff {
    type Rejection = ConsoleError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> ConsoleResult<Staff> {
        let Some(token) = cookie(&parts.headers, SESSION_COOKIE) else {
            return Err(ConsoleError::SignIn { expired: false });
        };
        let hash = accounts::token_hash(&token);
        let Some((session, account)) = state.storage.session(&hash).await? else {
            return Err(ConsoleError::SignIn { expired: true });
        };
        let now = Utc::now();
        let config = &state.console.config;
        let idle = chrono::Duration::from_std(config.idle_timeout).unwrap_or(chrono::Duration::MAX);
        let lifetime =
            chrono::Duration::from_std(config.session_lifetime).unwrap_or(chrono::Duration::MAX);
        if now - session.last_seen_at >= idle || now - session.created_at >= lifetime {
            state.storage.end_session(&hash).await?;
            return Err(ConsoleError::SignIn { expired: true });
        }
        if now - session.last_seen_at >= std::cmp::min(TOUCH_EVERY, idle / 4) {
            state.storage.touch_session(&hash, now).await?;
        }
        Ok(Staff {
            account,
            csrf: session.csrf,
            session_hash: hash,
        })
    }
}

/// The client's address, for the sign-in brake (none in unit tests).
fn client_ip(client: ClientAddr) -> Option<IpAddr> {
    client.0
}

#[derive(Debug, Deserialize)]
pub struct LoginQuery {
    expired: Option<String>,
}

fn login_page(message: Option<(&str, bool)>, login_csrf: &str, name: &str) -> Markup {
    Page::render(
        "Sign in",
        None,
        "",
        html! {
            @if let Some((text, is_error)) = message {
                @if is_error {
                    p.error role="alert" { (text) }
                } @else {
                    p.notice role="status" { (text) }
                }
            }
            form.stack method="post" action="/console/login" {
                input type="hidden" name="csrf" value=(login_csrf);
                label for="name" { "Name" }
                input #name name="name" type="text" autocomplete="username" required value=(name);
                label for="password" { "Password" }
                input #password name="password" type="password" autocomplete="current-password" required;
                label for="totp" { "Code from your authenticator app" }
                p.hint #totp-hint { "Administrators and data protection only: 6 digits." }
                input #totp name="totp" type="text" inputmode="numeric" autocomplete="one-time-code" pattern="[0-9 ]*" aria-describedby="totp-hint";
                button type="submit" { "Sign in" }
            }
        },
    )
}

fn with_login_cookie(status: StatusCode, page: Markup, login_csrf: &str) -> Response {
    let mut response = Page::respond(status, page);
    response
        .headers_mut()
        .append(header::SET_COOKIE, set_cookie(LOGIN_COOKIE, login_csrf));
    response
}

pub async fn login_form(Query(q): Query<LoginQuery>) -> Response {
    let token = accounts::random_token();
    let message = q
        .expired
        .is_some()
        .then_some(("Your session ended. Sign in again.", false));
    with_login_cookie(StatusCode::OK, login_page(message, &token, ""), &token)
}

#[derive(Debug, Deserialize)]
pub struct LoginForm {
    csrf: Option<String>,
    name: Option<String>,
    password: Option<String>,
    totp: Option<String>,
}

pub async fn login(
    State(state): State<AppState>,
    client: ClientAddr,
    headers: HeaderMap,
    Form(form): Form<LoginForm>,
) -> ConsoleResult {
    let fresh = accounts::random_token();
    let name = form.name.unwrap_or_default();
    let expected = cookie(&headers, LOGIN_COOKIE);
    let csrf_ok = matches!((&expected, &form.csrf), (Some(e), Some(f)) if accounts::constant_time_eq(e.as_bytes(), f.as_bytes()));
    if !csrf_ok {
        return Ok(with_login_cookie(
            StatusCode::FORBIDDEN,
            login_page(
                Some(("The sign-in form expired. Try again.", true)),
                &fresh,
                &name,
            ),
            &fresh,
        ));
    }
    let ip = client_ip(client);
    if let Some(ip) = ip
        && let Err(wait) = state.console.logins.check(ip, Instant::now())
    {
        let minutes = wait.as_secs().div_ceil(60).max(1);
        let text = format!(
            "Too many failed sign-ins from this address. Try again in {minutes} minute{}.",
            if minutes == 1 { "" } else { "s" }
        );
        let mut response = with_login_cookie(
            StatusCode::TOO_MANY_REQUESTS,
            login_page(Some((&text, true)), &fresh, &name),
            &fresh,
        );
        response.headers_mut().insert(
            header::RETRY_AFTER,
            HeaderValue::from(wait.as_secs().max(1)),
        );
        return Ok(response);
    }
    let now = Utc::now();
    let result = accounts::sign_in(
        &*state.storage,
        &name,
        form.password.as_deref().unwrap_or_default(),
        form.totp.as_deref().unwrap_or_default(),
        now,
    )
    .await?;
    let account = match result {
        Ok(account) => account,
        Err(e) => {
            let mut record = AuditRecord::new(AuditAction::StaffSignInRefused, now);
            record.client = ip.map(|ip| ip.to_string());
            state.storage.append_audit(&[record]).await?;
            if let Some(ip) = ip
                && state.console.logins.failure(ip, Instant::now()).is_some()
            {
                let mut record = AuditRecord::new(AuditAction::AuthLockout, now);
                record.client = Some(ip.to_string());
                state.storage.append_audit(&[record]).await?;
            }
            return Ok(with_login_cookie(
                StatusCode::UNAUTHORIZED,
                login_page(Some((&e.to_string(), true)), &fresh, &name),
                &fresh,
            ));
        }
    };
    let token = accounts::random_token();
    let session = StaffSession {
        account_id: account.id.clone(),
        csrf: accounts::random_token(),
        created_at: now,
        last_seen_at: now,
    };
    state
        .storage
        .create_session(&accounts::token_hash(&token), &session)
        .await?;
    let mut record = AuditRecord::new(AuditAction::StaffSignedIn, now);
    record.worker = Some(accounts::actor(&account.name));
    record.client = ip.map(|ip| ip.to_string());
    state.storage.append_audit(&[record]).await?;
    let mut response = (StatusCode::SEE_OTHER, [(header::LOCATION, "/console")]).into_response();
    let h = response.headers_mut();
    h.append(header::SET_COOKIE, set_cookie(SESSION_COOKIE, &token));
    h.append(header::SET_COOKIE, clear_cookie(LOGIN_COOKIE));
    Ok(response)
}

#[derive(Debug, Deserialize)]
pub struct CsrfForm {
    csrf: Option<String>,
}

pub async fn logout(
    State(state): State<AppState>,
    staff: Staff,
    Form(form): Form<CsrfForm>,
) -> ConsoleResult {
    staff.check_csrf(form.csrf.as_deref())?;
    state.storage.end_session(&staff.session_hash).await?;
    let now = Utc::now();
    state
        .storage
        .append_audit(&[staff.audit(AuditAction::StaffSignedOut, now)])
        .await?;
    let mut response = (
        StatusCode::SEE_OTHER,
        [(header::LOCATION, "/console/login")],
    )
        .into_response();
    response
        .headers_mut()
        .append(header::SET_COOKIE, clear_cookie(SESSION_COOKIE));
    Ok(response)
}

fn setup_page(account: &StaffAccount, token: &str, error: Option<&str>) -> ConsoleResult<Markup> {
    let totp = if account.role.needs_totp() {
        let secret = accounts::setup_totp_secret(token);
        let Some((url, base32)) = accounts::totp_enrolment(&secret, &account.name) else {
            return Err(ConsoleError::Internal("the TOTP seed was refused".into()));
        };
        Some((svg::qr(&url)?, base32))
    } else {
        None
    };
    Ok(Page::render(
        "Set up your account",
        None,
        "",
        html! {
            p { "Account " strong { (account.name) } ", role " (role_label(account.role)) "." }
            @if let Some(error) = error {
                p.error role="alert" { (error) }
            }
            form.stack method="post" action={ "/console/setup/" (token) } {
                label for="password" { "New password" }
                p.hint #password-hint { "At least " (accounts::MIN_PASSWORD) " characters. A few unrelated words are easy to remember and hard to guess." }
                input #password name="password" type="password" autocomplete="new-password" required minlength=(accounts::MIN_PASSWORD) aria-describedby="password-hint";
                label for="password2" { "The same password again" }
                input #password2 name="password2" type="password" autocomplete="new-password" required;
                @if let Some((qr, base32)) = &totp {
                    h2 { "Second factor" }
                    p { "Scan this code with an authenticator app on your phone, or type the key into it." }
                    figure #totp-qr { (qr) figcaption { "Key: " code #totp-secret { (base32) } } }
                    label for="totp" { "The 6-digit code the app shows" }
                    input #totp name="totp" type="text" inputmode="numeric" autocomplete="one-time-code" required pattern="[0-9 ]*";
                }
                button type="submit" { "Set password" }
            }
        },
    ))
}

fn setup_invalid() -> Response {
    Page::error(
        StatusCode::NOT_FOUND,
        "Set-up link not valid",
        &SignInError::SetupLinkInvalid.to_string(),
    )
}

pub async fn setup_form(State(state): State<AppState>, Path(token): Path<String>) -> ConsoleResult {
    let Some(account) = accounts::setup_account(&*state.storage, &token, Utc::now()).await? else {
        return Ok(setup_invalid());
    };
    Ok(Page::respond(
        StatusCode::OK,
        setup_page(&account, &token, None)?,
    ))
}

#[derive(Debug, Deserialize)]
pub struct SetupForm {
    password: Option<String>,
    password2: Option<String>,
    totp: Option<String>,
}

pub async fn setup(
    State(state): State<AppState>,
    client: ClientAddr,
    Path(token): Path<String>,
    Form(form): Form<SetupForm>,
) -> ConsoleResult {
    let ip = client_ip(client);
    if let Some(ip) = ip
        && state.console.logins.check(ip, Instant::now()).is_err()
    {
        return Ok(Page::error(
            StatusCode::TOO_MANY_REQUESTS,
            "Too many attempts",
            "Too many failed attempts from this address. Try again later.",
        ));
    }
    let now = Utc::now();
    let Some(account) = accounts::setup_account(&*state.storage, &token, now).await? else {
        if let Some(ip) = ip {
            state.console.logins.failure(ip, Instant::now());
        }
        return Ok(setup_invalid());
    };
    let result = accounts::complete_setup(
        &*state.storage,
        &token,
        form.password.as_deref().unwrap_or_default(),
        form.password2.as_deref().unwrap_or_default(),
        form.totp.as_deref(),
        now,
    )
    .await?;
    match result {
        Ok(account) => {
            let mut record = AuditRecord::new(AuditAction::StaffSetUp, now);
            record.worker = Some(accounts::actor(&account.name));
            state.storage.append_audit(&[record]).await?;
            let fresh = accounts::random_token();
            Ok(with_login_cookie(
                StatusCode::OK,
                login_page(
                    Some(("Your account is set up. Sign in.", false)),
                    &fresh,
                    &account.name,
                ),
                &fresh,
            ))
        }
        Err(SignInError::SetupLinkInvalid) => Ok(setup_invalid()),
        Err(e) => {
            if matches!(e, SignInError::TotpWrong)
                && let Some(ip) = ip
            {
                state.console.logins.failure(ip, Instant::now());
            }
            Ok(Page::respond(
                StatusCode::BAD_REQUEST,
                setup_page(&account, &token, Some(&e.to_string()))?,
            ))
        }
    }
}
