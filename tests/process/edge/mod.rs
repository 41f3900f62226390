//! The connection edge of the real binary: forwarded addresses, session cookies, CSRF
//! refusals, `audit hash` from stdin (first found in the adversarial review of issue 10).

mod connections;

use crate::support::blackbox::{self, Service, SessionKey, ORIGIN, READER_ROLE};
use serde_json::Value;
use token_vendor::dev::auth_standin::{AuthStandIn, StandInConfig};
use token_vendor::dev::random_hex;

pub(crate) struct Setup {
    standin: AuthStandIn,
    key: SessionKey,
    service: Service,
}

fn setup(extra: &[(&str, &str)]) -> Setup {
    let client_secret = format!("fake-client-secret-{}", random_hex(16));
    let standin = AuthStandIn::start(StandInConfig {
        client_id: "token-vendor-dev".into(),
        client_secret: client_secret.clone(),
        token_lifetime: std::time::Duration::from_secs(300),
    })
    .expect("stand-in");
    let key = SessionKey::generate();
    let mut env = blackbox::serve_env(
        &blackbox::temp_dir("findings"),
        &key,
        standin.base_url(),
        &client_secret,
    );
    for (k, v) in extra {
        env.retain(|(name, _)| name != k);
        env.push(((*k).to_owned(), (*v).to_owned()));
    }
    let service = Service::spawn(env);
    Setup {
        standin,
        key,
        service,
    }
}

pub(crate) fn events(s: &Setup, query: &str) -> Vec<Value> {
    let auth = format!("Bearer {}", s.key.session("finding-reader", &[READER_ROLE]));
    let r = s.service.request(
        "GET",
        &format!("/v1/audit/events?limit=1000&{query}"),
        &[("Authorization", &auth)],
        b"",
    );
    assert_eq!(r.status, 200, "{r:?}");
    r.json()["events"].as_array().cloned().unwrap_or_default()
}

fn vend(s: &Setup, headers: &[(&str, &str)]) -> blackbox::Response {
    let mut all = vec![("Content-Type", "application/json")];
    all.extend_from_slice(headers);
    s.service
        .request("POST", "/v1/tokens", &all, br#"{"scope":"transcribe"}"#)
}

/// Finding 4: behind a trusted proxy the audited address is the first untrusted hop
/// from the right; `ip:port` and `[v6]:port` are addresses; an unparsable hop stops
/// the walk (at the last trusted address).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarded_for_is_walked_from_the_right_and_accepts_ports() {
    let _turn = crate::shared_turn().await;
    let s = setup(&[]);
    let cases = [
        ("garbage, 203.0.113.7", "203.0.113.7"),
        ("203.0.113.8:5555", "203.0.113.8"),
        ("[2001:db8::1]:443", "2001:db8::1"),
        ("2001:db8::2", "2001:db8::2"),
        ("198.51.100.1, 127.0.0.1", "198.51.100.1"),
        ("203.0.113.10, 203.0.113.11:80", "203.0.113.11"),
        ("203.0.113.9, garbage", "127.0.0.1"),
    ];
    for (i, (forwarded, _)) in cases.iter().enumerate() {
        let id = format!("xff-{i}");
        let r = vend(&s, &[("X-Forwarded-For", forwarded), ("X-Request-Id", &id)]);
        assert_eq!(r.status, 401, "{r:?}");
    }
    let all = events(&s, "outcome=unauthenticated");
    for (i, (forwarded, expected)) in cases.iter().enumerate() {
        let id = format!("xff-{i}");
        let event = all
            .iter()
            .find(|e| e["request_id"] == id.as_str())
            .unwrap_or_else(|| panic!("no event for {id}"));
        assert_eq!(
            event["client_ip"], *expected,
            "X-Forwarded-For: {forwarded}"
        );
    }
    s.standin.stop().await;
}

/// Finding 6: a sibling subdomain's cookie of the same name, sent first, must not lock
/// the user out: every session cookie is tried.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_garbage_session_cookie_sent_first_does_not_hide_the_valid_one() {
    let _turn = crate::shared_turn().await;
    let s = setup(&[]);
    let valid = s.key.session("cookie-user", &[]);
    let one_header = format!("session=garbage; other=1; session={valid}");
    let r = vend(&s, &[("Cookie", &one_header), ("Origin", ORIGIN)]);
    assert_eq!(r.status, 200, "one Cookie header: {r:?}");
    let second = format!("session={valid}");
    let r = vend(
        &s,
        &[
            ("Cookie", "session=garbage"),
            ("Cookie", &second),
            ("Origin", ORIGIN),
        ],
    );
    assert_eq!(r.status, 200, "two Cookie headers: {r:?}");
    // Only garbage: still refused.
    let r = vend(
        &s,
        &[("Cookie", "session=a; session=b"), ("Origin", ORIGIN)],
    );
    assert_eq!(r.status, 401, "{r:?}");
    s.standin.stop().await;
}

/// Finding 6, documented remedy: a `__Host-` cookie name works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_prefixed_session_cookie_name_works() {
    let _turn = crate::shared_turn().await;
    let s = setup(&[("SESSION_COOKIE_NAME", "__Host-session")]);
    let valid = s.key.session("host-cookie-user", &[]);
    let cookie = format!("session=garbage; __Host-session={valid}");
    let r = vend(&s, &[("Cookie", &cookie), ("Origin", ORIGIN)]);
    assert_eq!(r.status, 200, "{r:?}");
    s.standin.stop().await;
}

/// Finding 5: CSRF refusals of a signed-in user are folded like other refusals.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signed_in_users_csrf_refusals_do_not_grow_the_store_one_row_each() {
    let _turn = crate::shared_turn().await;
    let s = setup(&[]);
    let cookie = format!("session={}", s.key.session("csrf-victim", &[]));
    for _ in 0..40 {
        let r = vend(&s, &[("Cookie", &cookie)]);
        assert_eq!(r.status, 403, "{r:?}");
    }
    let stored = events(&s, "outcome=forbidden&subject=csrf-victim");
    // 20 individual events per source and window; the other 20 are counted and
    // written as one event when the window closes.
    assert_eq!(stored.len(), 20, "{stored:?}");
    s.standin.stop().await;
}

/// Finding 9: the README shows `audit hash -` (stdin), not a token in argv, and the
/// CLI reads it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_hash_reads_the_token_from_stdin_as_the_readme_shows() {
    let _turn = crate::shared_turn().await;
    let readme = include_str!("../../../README.md");
    assert!(
        readme.contains("token-vendor audit hash -"),
        "README documents stdin"
    );
    assert!(
        !readme.contains("audit hash \"$"),
        "README must not put a live token in argv"
    );
    let s = setup(&[]);
    let token = "eyJ.fake-token-for-hashing.sig";
    let from_stdin = s
        .service
        .cli(&["audit", "hash", "-"], Some(&format!("{token}\n")));
    let from_argv = s.service.cli(&["audit", "hash", token], None);
    assert!(from_stdin.status.success(), "{from_stdin:?}");
    let hashed = String::from_utf8_lossy(&from_stdin.stdout)
        .trim()
        .to_owned();
    assert!(hashed.starts_with("hmac-sha256:"), "{hashed}");
    assert_eq!(hashed, String::from_utf8_lossy(&from_argv.stdout).trim());
    s.standin.stop().await;
}
