//! Hostile input at the relay's enrolment: `auth::enrol` with any code and
//! device name, and `POST /v1/enrol` with any body. Property tests in place
//! of cargo-fuzz (nightly only; see core/tests/fuzz.rs): every input gets a
//! typed refusal (400, 403, 413; never a 500 or a panic), and only the right
//! code enrols, once.
//!
//! Longer by hand: `LINKBOOK_FUZZ_CASES=20000 cargo test -p linkbook-server --test fuzz`.

use std::path::PathBuf;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use chrono::{Duration, Utc};
use linkbook_server::error::Error;
use linkbook_server::relay::Limits;
use linkbook_server::{AppState, auth};
use proptest::prelude::*;
use tower::ServiceExt;

fn cases(default: u32) -> u32 {
    std::env::var("LINKBOOK_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// One relay state (real SQLite file) and a runtime shared by every case.
struct Case {
    state: AppState,
    runtime: tokio::runtime::Runtime,
    _dir: tempfile::TempDir,
}

fn case() -> &'static Case {
    static CASE: std::sync::OnceLock<Case> = std::sync::OnceLock::new();
    CASE.get_or_init(|| {
        let dir = tempfile::tempdir().expect("temp dir");
        let state = AppState::open(dir.path(), Limits::default()).expect("relay state");
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        Case {
            state,
            runtime,
            _dir: dir,
        }
    })
}

fn new_code() -> String {
    case()
        .runtime
        .block_on(auth::new_enrolment_code(
            &*case().state.storage,
            "north",
            "Asha",
            Duration::hours(1),
            Utc::now(),
        ))
        .expect("code")
}

#[derive(Debug, Clone)]
enum CodeShape {
    Any(String),
    /// The real code, lower-cased and with other separators.
    Respelled(String),
    /// The real code with one character changed.
    OneOff(usize, char),
    Truncated(usize),
}

fn code_shape() -> impl Strategy<Value = CodeShape> {
    prop_oneof![
        any::<String>().prop_map(CodeShape::Any),
        "[0-9A-Za-z -]{0,40}".prop_map(CodeShape::Any),
        "[ _./-]{0,3}".prop_map(CodeShape::Respelled),
        (any::<usize>(), proptest::char::any()).prop_map(|(i, c)| CodeShape::OneOff(i, c)),
        any::<usize>().prop_map(CodeShape::Truncated),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(cases(300)))]

    /// Only the code issued (however it is spelled) enrols a device, with a
    /// name of 1 to 200 characters, and only once; everything else is a typed
    /// refusal.
    #[test]
    fn enrol_takes_only_the_issued_code_once(shape in code_shape(), name in prop_oneof![
        "[a-zA-Z' ]{1,30}",
        any::<String>(),
        "x{190,210}",
    ]) {
        let storage = &*case().state.storage;
        let issued = new_code();
        let attempt = match &shape {
            CodeShape::Any(s) => s.clone(),
            CodeShape::Respelled(sep) => issued.to_lowercase().replace('-', sep),
            CodeShape::OneOff(i, c) => {
                let mut chars: Vec<char> = issued.chars().collect();
                let i = i % chars.len();
                chars[i] = *c;
                chars.into_iter().collect()
            }
            CodeShape::Truncated(i) => issued.chars().take(i % issued.len()).collect(),
        };
        let name_ok = !name.trim().is_empty() && name.trim().len() <= 200;
        let right_code = auth::normalise_code(&attempt) == auth::normalise_code(&issued);
        let enrol = |code: &str, name: &str| case().runtime.block_on(auth::enrol(storage, code, name, Utc::now()));
        match enrol(&attempt, &name) {
            Ok(enrolled) => {
                prop_assert!(right_code && name_ok, "{attempt:?} / {name:?} enrolled");
                prop_assert_eq!(enrolled.team, "north");
                // Single use.
                prop_assert!(matches!(
                    enrol(&issued, "again"),
                    Err(Error::EnrolmentRefused(_))
                ));
            }
            Err(Error::EnrolmentRefused(_)) => prop_assert!(!right_code),
            Err(Error::BadRequest(_)) => prop_assert!(!name_ok),
            Err(e) => prop_assert!(false, "unexpected error {e:?} for {attempt:?}"),
        }
    }
}

/// `POST /v1/enrol` with `body`: the status and the JSON answer.
fn post_enrol(body: Vec<u8>) -> (StatusCode, serde_json::Value) {
    let c = case();
    c.runtime.block_on(async {
        let request = Request::post("/v1/enrol")
            .header("content-type", "application/json")
            .body(Body::from(body))
            .expect("request");
        let response = tokio::time::timeout(
            std::time::Duration::from_secs(10),
            linkbook_server::app(c.state.clone()).oneshot(request),
        )
        .await
        .expect("the relay answered in time")
        .expect("infallible");
        let status = response.status();
        let bytes = axum::body::to_bytes(response.into_body(), 1 << 20)
            .await
            .expect("body");
        (
            status,
            serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null),
        )
    })
}

fn assert_refused(status: StatusCode, answer: &serde_json::Value, body: &[u8]) {
    assert!(
        matches!(
            status,
            StatusCode::BAD_REQUEST | StatusCode::FORBIDDEN | StatusCode::PAYLOAD_TOO_LARGE
        ),
        "{status} {answer} for {:?}",
        String::from_utf8_lossy(body)
    );
    if status != StatusCode::PAYLOAD_TOO_LARGE {
        assert!(
            answer["message"].as_str().is_some_and(|m| !m.is_empty()),
            "a refusal says why: {answer}"
        );
    }
}

fn json_value() -> impl Strategy<Value = serde_json::Value> {
    use serde_json::Value as J;
    let leaf = prop_oneof![
        Just(J::Null),
        any::<bool>().prop_map(J::Bool),
        any::<i64>().prop_map(J::from),
        any::<f64>().prop_map(J::from),
        any::<String>().prop_map(J::String),
        "[0-9A-Z-]{0,16}".prop_map(J::String),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..4).prop_map(J::Array),
            proptest::collection::vec(
                (
                    prop_oneof![
                        Just("code".to_string()),
                        Just("device_name".to_string()),
                        "[a-z]{1,6}"
                    ],
                    inner
                ),
                0..4
            )
            .prop_map(|kv| J::Object(kv.into_iter().collect())),
        ]
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(cases(300)))]

    #[test]
    fn enrol_endpoint_refuses_any_body_with_a_reason(
        body in prop_oneof![
            proptest::collection::vec(any::<u8>(), 0..256),
            json_value().prop_map(|v| v.to_string().into_bytes()),
            (json_value(), json_value()).prop_map(|(c, n)| {
                serde_json::json!({ "code": c, "device_name": n }).to_string().into_bytes()
            }),
            ("[0-9A-Z-]{0,20}", any::<String>(), any::<usize>()).prop_map(|(c, n, cut)| {
                let b = serde_json::json!({ "code": c, "device_name": n }).to_string().into_bytes();
                let cut = cut % (b.len() + 1);
                b[..cut].to_vec()
            }),
        ]
    ) {
        let (status, answer) = post_enrol(body.clone());
        assert_refused(status, &answer, &body);
    }
}

#[test]
fn enrol_endpoint_refuses_adversarial_bodies() {
    let mut bodies: Vec<Vec<u8>> = vec![
        // Nesting past serde_json's recursion limit.
        format!("{}{}", "[".repeat(100_000), "]".repeat(100_000)).into_bytes(),
        format!("{{\"code\":{}1{}}}", "[".repeat(5_000), "]".repeat(5_000)).into_bytes(),
        // Over the 16 KiB body limit.
        serde_json::json!({ "code": "A".repeat(1 << 20), "device_name": "x" })
            .to_string()
            .into_bytes(),
        // Codes that normalise to nothing, to the right length of junk, or
        // carry NULs and lone surrogates.
        br#"{"code": "----", "device_name": "tablet"}"#.to_vec(),
        br#"{"code": "\u0000\u0000\u0000\u0000\u0000\u0000\u0000\u0000\u0000\u0000\u0000\u0000", "device_name": "t"}"#.to_vec(),
        br#"{"code": "\ud800AAAAAAAAAAAA", "device_name": "t"}"#.to_vec(),
        br#"{"code": "AAAA-AAAA-AAAA", "device_name": "   "}"#.to_vec(),
        br#"{"code": "AAAA-AAAA-AAAA", "device_name": "t", "code": "BBBB-BBBB-BBBB"}"#.to_vec(),
        br#"{"code": 123456789012, "device_name": "t"}"#.to_vec(),
        b"\xef\xbb\xbf{}".to_vec(),
    ];
    bodies.push(vec![b'{'; 15_000]);
    for body in bodies {
        let (status, answer) = post_enrol(body.clone());
        assert_refused(status, &answer, &body);
    }
}

/// Crashers of the relay's targets kept in `tests/fuzz-crashers/` (`enrol`:
/// request bodies) go through again; files added later are replayed too.
#[test]
fn crashers_replay() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/fuzz-crashers/enrol");
    let files = std::fs::read_dir(&dir).expect("tests/fuzz-crashers/enrol/");
    let mut replayed = 0;
    for file in files.flatten() {
        let body = std::fs::read(file.path()).expect("read crasher");
        let (status, answer) = post_enrol(body.clone());
        assert_refused(status, &answer, &body);
        replayed += 1;
    }
    assert!(replayed > 0, "no crasher files in {}", dir.display());
}
