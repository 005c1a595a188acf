//! The console through its router (no browser): set-up, sign-in, the
//! cookie, CSRF, roles, the brake, the idle timeout, projections. The
//! browser tests (tests/tests/console.rs) drive the same pages in Chromium.
#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::net::SocketAddr;

use axum::body::Body;
use axum::extract::connect_info::MockConnectInfo;
use axum::http::{Request, StatusCode, header};
use axum::response::Response;
use chrono::Utc;
use tower::ServiceExt;

use crate::admin::accounts;
use crate::admin::test_support::{Relay, family};
use crate::relay::Limits;
use crate::storage::{AuditAction, ProjectionKind, StaffRole, Storage, Team};
use crate::{AppState, app};

struct Console {
    state: AppState,
    _dir: tempfile::TempDir,
}

impl Console {
    fn new(config: super::ConsoleConfig, max_failures: u32) -> Console {
        let dir = tempfile::tempdir().expect("dir");
        let state = AppState::open(dir.path(), Limits::default())
            .expect("open")
            .with_console(
                config,
                crate::ratelimit::AuthLimits {
                    max_failures,
                    ..Default::default()
                },
            );
        Console { state, _dir: dir }
    }

    fn storage(&self) -> &dyn Storage {
        &*self.state.storage
    }

    async fn send(&self, request: Request<Body>) -> Response {
        let addr: SocketAddr = "192.0.2.7:40000".parse().expect("addr");
        app(self.state.clone())
            .layer(MockConnectInfo(addr))
            .oneshot(request)
            .await
            .expect("infallible")
    }

    async fn get(&self, path: &str, cookie: Option<&str>) -> Response {
        let mut r = Request::get(path);
        if let Some(c) = cookie {
            r = r.header(header::COOKIE, c);
        }
        self.send(r.body(Body::empty()).expect("request")).await
    }

    async fn post(&self, path: &str, cookie: Option<&str>, form: &[(&str, &str)]) -> Response {
        let body = url::form_urlencoded::Serializer::new(String::new())
            .extend_pairs(form)
            .finish();
        let mut r =
            Request::post(path).header(header::CONTENT_TYPE, "application/x-www-form-urlencoded");
        if let Some(c) = cookie {
            r = r.header(header::COOKIE, c);
        }
        self.send(r.body(Body::from(body)).expect("request")).await
    }

    /// A set-up account of `role` and its password and TOTP seed.
    async fn account(&self, name: &str, role: StaffRole) -> (String, Option<Vec<u8>>) {
        let new = accounts::add_account(self.storage(), name, role, 1, Utc::now())
            .await
            .expect("add");
        let password = "plum orchard kettle lantern";
        let secret = role
            .needs_totp()
            .then(|| accounts::setup_totp_secret(&new.setup_token));
        let code = secret.as_ref().map(|s| code_at(s, name, Utc::now()));
        accounts::complete_setup(
            self.storage(),
            &new.setup_token,
            password,
            password,
            code.as_deref(),
            Utc::now(),
        )
        .await
        .expect("storage")
        .expect("set up");
        (password.to_string(), secret)
    }

    /// Signs in; the session cookie (`name=value`) and the CSRF token.
    async fn sign_in(&self, name: &str, password: &str, secret: Option<&[u8]>) -> (String, String) {
        let (login_cookie, csrf) = self.login_form().await;
        // The step after the one set-up used: each step works once.
        let code = secret
            .map(|s| code_at(s, name, Utc::now() + chrono::Duration::seconds(30)))
            .unwrap_or_default();
        let r = self
            .post(
                "/console/login",
                Some(&login_cookie),
                &[
                    ("csrf", &csrf),
                    ("name", name),
                    ("password", password),
                    ("totp", &code),
                ],
            )
            .await;
        assert_eq!(r.status(), StatusCode::SEE_OTHER, "{}", body(r).await);
        let cookie = set_cookies(&r)
            .into_iter()
            .find(|c| c.starts_with("__Host-linkbook-session="))
            .expect("a session cookie");
        for attribute in ["HttpOnly", "Secure", "SameSite=Strict", "Path=/"] {
            assert!(cookie.contains(attribute), "{cookie}");
        }
        let session = cookie.split(';').next().expect("pair").to_string();
        let page = body(self.get("/console/devices", Some(&session)).await).await;
        let csrf = between(&page, "name=\"csrf\" value=\"", "\"").to_string();
        (session, csrf)
    }

    /// The sign-in form's cookie (`name=value`) and the token it repeats.
    async fn login_form(&self) -> (String, String) {
        let r = self.get("/console/login", None).await;
        assert_eq!(r.status(), StatusCode::OK);
        let cookie = set_cookies(&r)
            .into_iter()
            .find(|c| c.starts_with("__Host-linkbook-login="))
            .expect("a login cookie");
        let pair = cookie.split(';').next().expect("pair").to_string();
        let page = body(r).await;
        (
            pair,
            between(&page, "name=\"csrf\" value=\"", "\"").to_string(),
        )
    }
}

fn code_at(secret: &[u8], name: &str, at: chrono::DateTime<Utc>) -> String {
    accounts::totp_code(secret, name, at).expect("a code")
}

fn set_cookies(r: &Response) -> Vec<String> {
    r.headers()
        .get_all(header::SET_COOKIE)
        .iter()
        .map(|v| v.to_str().expect("text").to_string())
        .collect()
}

async fn body(r: Response) -> String {
    let bytes = axum::body::to_bytes(r.into_body(), 1 << 20)
        .await
        .expect("body");
    String::from_utf8(bytes.to_vec()).expect("utf-8")
}

fn between<'a>(s: &'a str, start: &str, end: &str) -> &'a str {
    let from = s.find(start).unwrap_or_else(|| panic!("{start} in {s}")) + start.len();
    let to = s[from..].find(end).expect("end") + from;
    &s[from..to]
}

async fn audited(storage: &dyn Storage, action: AuditAction) -> usize {
    storage
        .audit_log(None, None, None)
        .await
        .expect("audit")
        .iter()
        .filter(|e| e.action == action)
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_set_up_link_works_once_and_asks_for_a_good_password_and_the_second_factor() {
    let c = Console::new(Default::default(), 10);
    let new = accounts::add_account(
        c.storage(),
        "amira",
        StaffRole::Administrator,
        1,
        Utc::now(),
    )
    .await
    .expect("add");
    let path = accounts::setup_link(&new.setup_token, None);
    let page = body(c.get(&path, None).await).await;
    assert!(page.contains("id=\"totp-secret\""), "the TOTP key is shown");
    assert!(page.contains("<svg"), "with its QR code");
    let secret = accounts::setup_totp_secret(&new.setup_token);
    let code = code_at(&secret, "amira", Utc::now());
    let weak = c
        .post(
            &path,
            None,
            &[
                ("password", "password123!"),
                ("password2", "password123!"),
                ("totp", &code),
            ],
        )
        .await;
    assert_eq!(weak.status(), StatusCode::BAD_REQUEST);
    assert!(body(weak).await.contains("most common"));
    let no_code = c
        .post(
            &path,
            None,
            &[
                ("password", "plum orchard kettle"),
                ("password2", "plum orchard kettle"),
                ("totp", "000000"),
            ],
        )
        .await;
    assert_eq!(no_code.status(), StatusCode::BAD_REQUEST);
    let good = c
        .post(
            &path,
            None,
            &[
                ("password", "plum orchard kettle"),
                ("password2", "plum orchard kettle"),
                ("totp", &code),
            ],
        )
        .await;
    assert_eq!(good.status(), StatusCode::OK, "{}", body(good).await);
    let again = c
        .post(
            &path,
            None,
            &[
                ("password", "another long phrase"),
                ("password2", "another long phrase"),
                ("totp", &code),
            ],
        )
        .await;
    assert_eq!(again.status(), StatusCode::NOT_FOUND, "a used link");
    let account = c
        .storage()
        .account_by_name("amira")
        .await
        .expect("get")
        .expect("account");
    assert!(
        account
            .password_hash
            .as_deref()
            .is_some_and(|h| h.starts_with("$argon2id$"))
    );
    assert!(!account.password_hash.expect("hash").contains("plum"));
    assert_eq!(audited(c.storage(), AuditAction::StaffSetUp).await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signing_in_sets_a_strict_cookie_and_every_page_a_strict_policy() {
    let c = Console::new(Default::default(), 10);
    let (password, secret) = c.account("amira", StaffRole::Administrator).await;
    let (session, _) = c.sign_in("amira", &password, secret.as_deref()).await;
    let r = c.get("/console/devices", Some(&session)).await;
    assert_eq!(r.status(), StatusCode::OK);
    let csp = r.headers()[header::CONTENT_SECURITY_POLICY]
        .to_str()
        .expect("csp");
    assert!(csp.contains("default-src 'self'") && csp.contains("frame-ancestors 'none'"));
    assert_eq!(r.headers()[header::CACHE_CONTROL], "no-store");
    assert_eq!(audited(c.storage(), AuditAction::StaffSignedIn).await, 1);
    // The same code again is refused: each step works once.
    let r = c.get("/console/devices", None).await;
    assert_eq!(
        r.status(),
        StatusCode::SEE_OTHER,
        "signed out: to the sign-in page"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_form_without_its_csrf_token_changes_nothing() {
    let c = Console::new(Default::default(), 10);
    let (password, secret) = c.account("amira", StaffRole::Administrator).await;
    let (session, csrf) = c.sign_in("amira", &password, secret.as_deref()).await;
    let form = [
        ("team", "north"),
        ("worker", "Asha"),
        ("expires_hours", "24"),
    ];
    let r = c
        .post("/console/devices/enrol", Some(&session), &form)
        .await;
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    let mut wrong = form.to_vec();
    wrong.push(("csrf", "0000"));
    let r = c
        .post("/console/devices/enrol", Some(&session), &wrong)
        .await;
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    assert_eq!(
        audited(c.storage(), AuditAction::EnrolmentCodeIssued).await,
        0
    );
    let mut right = form.to_vec();
    right.push(("csrf", &csrf));
    let r = c
        .post("/console/devices/enrol", Some(&session), &right)
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    let page = body(r).await;
    let code = between(&page, "id=\"enrolment-code\">", "<");
    assert_eq!(code.len(), 14, "{code}");
    assert_eq!(
        audited(c.storage(), AuditAction::EnrolmentCodeIssued).await,
        1
    );
    // The code enrols a device.
    crate::auth::enrol(c.storage(), code, "tablet", Utc::now())
        .await
        .expect("the code from the page works");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_manager_reads_reports_but_cannot_enrol_or_purge() {
    let c = Console::new(Default::default(), 10);
    let (password, _) = c.account("maya", StaffRole::Manager).await;
    let (login_cookie, login_csrf) = c.login_form().await;
    let r = c
        .post(
            "/console/login",
            Some(&login_cookie),
            &[
                ("csrf", &login_csrf),
                ("name", "maya"),
                ("password", &password),
                ("totp", ""),
            ],
        )
        .await;
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    let session = set_cookies(&r)[0]
        .split(';')
        .next()
        .expect("pair")
        .to_string();
    let home = body(c.get("/console", Some(&session)).await).await;
    assert!(home.contains("/console/outcomes"));
    assert!(!home.contains("/console/devices") && !home.contains("/console/data-protection"));
    let csrf = between(&home, "name=\"csrf\" value=\"", "\"").to_string();
    for page in [
        "/console/devices",
        "/console/data-protection",
        "/console/audit",
    ] {
        assert_eq!(
            c.get(page, Some(&session)).await.status(),
            StatusCode::FORBIDDEN,
            "{page}"
        );
    }
    let r = c
        .post(
            "/console/devices/enrol",
            Some(&session),
            &[("csrf", &csrf), ("team", "north"), ("worker", "Asha")],
        )
        .await;
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    let r = c
        .post(
            "/console/data-protection/purge",
            Some(&session),
            &[("csrf", &csrf), ("family", "x"), ("reason", "y")],
        )
        .await;
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    assert_eq!(
        c.get("/console/outcomes", Some(&session)).await.status(),
        StatusCode::OK
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_outcomes_csv_of_a_team_with_nothing_yet_is_a_csv() {
    let c = Console::new(Default::default(), 10);
    let (password, secret) = c.account("amira", StaffRole::Administrator).await;
    let (session, _) = c.sign_in("amira", &password, secret.as_deref()).await;
    let r = c
        .get(
            "/console/outcomes.csv?team=north&from=2026-01-01&to=2026-06-30",
            Some(&session),
        )
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    let csv = body(r).await;
    assert!(csv.starts_with("table,row,column,count\n"), "{csv}");
    assert!(
        csv.contains("Family-day attendance by prison,Total,Families,0"),
        "{csv}"
    );
    let r = c
        .get(
            "/console/outcomes?team=north&from=2026-01-01&to=2026-06-30",
            Some(&session),
        )
        .await;
    assert_eq!(r.status(), StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_code_typed_at_set_up_cannot_sign_in_again() {
    let c = Console::new(Default::default(), 10);
    let new = accounts::add_account(
        c.storage(),
        "amira",
        StaffRole::Administrator,
        1,
        Utc::now(),
    )
    .await
    .expect("add");
    let secret = accounts::setup_totp_secret(&new.setup_token);
    let now = Utc::now();
    let code = code_at(&secret, "amira", now);
    let password = "plum orchard kettle lantern";
    accounts::complete_setup(
        c.storage(),
        &new.setup_token,
        password,
        password,
        Some(&code),
        now,
    )
    .await
    .expect("storage")
    .expect("set up");
    let again = accounts::sign_in(c.storage(), "amira", password, &code, now)
        .await
        .expect("storage");
    assert!(again.is_err(), "the set-up code was accepted twice");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_sign_ins_are_braked_and_audited() {
    let c = Console::new(Default::default(), 3);
    let (password, secret) = c.account("amira", StaffRole::Administrator).await;
    for _ in 0..3 {
        let (cookie, csrf) = c.login_form().await;
        let r = c
            .post(
                "/console/login",
                Some(&cookie),
                &[
                    ("csrf", &csrf),
                    ("name", "amira"),
                    ("password", "wrong wrong wrong"),
                    ("totp", "123456"),
                ],
            )
            .await;
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    }
    let (cookie, csrf) = c.login_form().await;
    let code = code_at(
        secret.as_deref().expect("seed"),
        "amira",
        Utc::now() + chrono::Duration::seconds(30),
    );
    let r = c
        .post(
            "/console/login",
            Some(&cookie),
            &[
                ("csrf", &csrf),
                ("name", "amira"),
                ("password", &password),
                ("totp", &code),
            ],
        )
        .await;
    assert_eq!(
        r.status(),
        StatusCode::TOO_MANY_REQUESTS,
        "locked out, even with the right password"
    );
    assert!(r.headers().contains_key(header::RETRY_AFTER));
    assert_eq!(
        audited(c.storage(), AuditAction::StaffSignInRefused).await,
        3
    );
    assert_eq!(audited(c.storage(), AuditAction::AuthLockout).await, 1);
    // A sign-in form posted without its cookie is refused before any check.
    let r = c
        .post(
            "/console/login",
            None,
            &[("csrf", &csrf), ("name", "amira"), ("password", &password)],
        )
        .await;
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_session_is_signed_out() {
    let c = Console::new(
        super::ConsoleConfig {
            idle_timeout: std::time::Duration::from_secs(60),
            ..Default::default()
        },
        10,
    );
    let (password, secret) = c.account("amira", StaffRole::Administrator).await;
    let (session, _) = c.sign_in("amira", &password, secret.as_deref()).await;
    let token = session.split_once('=').expect("pair").1;
    // As if its last request were two minutes ago.
    c.storage()
        .touch_session(
            &accounts::token_hash(token),
            Utc::now() - chrono::Duration::minutes(2),
        )
        .await
        .expect("touch");
    let r = c.get("/console/devices", Some(&session)).await;
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    assert_eq!(r.headers()[header::LOCATION], "/console/login?expired=1");
    assert!(
        c.storage()
            .session(&accounts::token_hash(token))
            .await
            .expect("get")
            .is_none(),
        "the session is gone"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn projections_follow_uploads_and_go_with_a_purge() {
    let relay = Relay::new();
    let id = relay.store("north", &family("Okafor", Some("2026-03-01")));
    let storage = relay.storage();
    assert_eq!(storage.dirty_projections(10).await.expect("dirty").len(), 1);
    assert_eq!(
        super::projector::catch_up(storage, None)
            .await
            .expect("catch up"),
        1
    );
    assert!(
        storage
            .dirty_projections(10)
            .await
            .expect("dirty")
            .is_empty()
    );
    let rows = storage
        .projections(&Team::from("north"), ProjectionKind::Family)
        .await
        .expect("projections");
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].0, id);
    let facts: super::projector::FamilyFacts = serde_json::from_str(&rows[0].1).expect("json");
    assert_eq!(facts.closed, Some("2026-03-01".parse().expect("date")));
    assert!(
        !rows[0].1.contains("Okafor"),
        "no names in a projection: {}",
        rows[0].1
    );
    storage
        .purge_document(
            &Team::from("north"),
            id,
            "erasure request",
            "staff:dana",
            Utc::now(),
        )
        .await
        .expect("purge");
    assert!(
        storage
            .projections(&Team::from("north"), ProjectionKind::Family)
            .await
            .expect("projections")
            .is_empty()
    );
}

/// The largest and most malformed forms and cookies cost their own request
/// only: a 1 MiB sign-in form is refused before it is read (the relay's
/// 16 KiB body limit), a 1 MiB set-up form too; a form that is not a form
/// and a cookie of garbage leave the caller signed out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_and_malformed_console_input_is_refused() {
    let c = Console::new(Default::default(), 10);
    let (login_cookie, csrf) = c.login_form().await;
    let huge = "x".repeat(1 << 20);
    let r = c
        .post(
            "/console/login",
            Some(&login_cookie),
            &[("csrf", &csrf), ("name", "amira"), ("password", &huge)],
        )
        .await;
    assert_eq!(r.status(), StatusCode::PAYLOAD_TOO_LARGE);
    let setup = accounts::setup_link(&"ab".repeat(32), None);
    let r = c.post(&setup, None, &[("password", &huge)]).await;
    assert_eq!(r.status(), StatusCode::PAYLOAD_TOO_LARGE);
    let r = c
        .send(
            Request::post("/console/login")
                .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
                .body(Body::from(vec![0xff, b'=', 0xfe, b'&', b'%']))
                .expect("request"),
        )
        .await;
    assert!(r.status().is_client_error(), "{}", r.status());
    let garbage = format!("__Host-linkbook-session={}; x={}", "z".repeat(60_000), "%%");
    let r = c.get("/console/devices", Some(&garbage)).await;
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    assert_eq!(r.headers()[header::LOCATION], "/console/login");
    let not_hex = format!("__Host-linkbook-session={}", "g".repeat(64));
    let r = c.get("/console/devices", Some(&not_hex)).await;
    assert_eq!(r.headers()[header::LOCATION], "/console/login");
}
