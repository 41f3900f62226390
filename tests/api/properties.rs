//! Property tests (proptest) over the edge parsers and the problem mapping, through
//! their public functions: the scope parser, the `X-Forwarded-For` walk, the session
//! cookie extraction and the error → problem+json mapping.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::Duration;

use proptest::prelude::*;
use proptest::strategy::LazyJust;
use token_vendor::address::{forwarded_client, parse_forwarded_hop};
use token_vendor::browser::OriginError;
use token_vendor::corti::UpstreamError;
use token_vendor::http::problem::Problem;
use token_vendor::http::tokens::{cookie_values, MAX_SESSION_COOKIES};
use token_vendor::limits::KeyKind;
use token_vendor::scope::{LimitedScope, RequestedScope};
use token_vendor::session::SessionError;
use token_vendor::vend::VendError;

const CASES: u32 = 512;

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: CASES,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

// ---- scope --------------------------------------------------------------------------

/// Words a scope string may be built from: the three valid ones and look-alikes.
fn scope_word() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => prop::sample::select(vec!["transcribe", "streams", "openid"]).prop_map(str::to_owned),
        1 => prop::sample::select(vec![
            "email", "profile", "offline_access", "Transcribe", "STREAMS", "transcribe\0",
            "openid,", "*", "transcribe\t", "stream", "transcribes", "\u{200b}streams",
        ])
        .prop_map(str::to_owned),
        1 => "[a-z_]{1,12}",
        1 => any::<String>(),
    ]
}

/// Separators: plain spaces (valid) and other whitespace (not a separator).
fn separator() -> impl Strategy<Value = String> {
    prop_oneof![
        6 => " {1,3}",
        1 => prop::sample::select(vec!["\t", "\n", "\u{a0}", "+", ",", "%20"]).prop_map(str::to_owned),
    ]
}

fn scope_string() -> impl Strategy<Value = String> {
    (
        " {0,2}",
        prop::collection::vec((scope_word(), separator()), 0..6),
        " {0,2}",
    )
        .prop_map(|(lead, parts, trail)| {
            let mut s = lead;
            for (word, sep) in parts {
                s.push_str(&word);
                s.push_str(&sep);
            }
            s.push_str(&trail);
            s
        })
}

/// The documented rule, written independently of the parser.
fn model_accepts(raw: &str) -> Option<Vec<&'static str>> {
    let mut limited = Vec::new();
    for part in raw.split(' ').filter(|p| !p.is_empty()) {
        match part {
            "openid" => {}
            "transcribe" => limited.push("transcribe"),
            "streams" => limited.push("streams"),
            _ => return None,
        }
    }
    limited.sort_unstable();
    limited.dedup();
    (!limited.is_empty()).then_some(limited)
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn scope_parser_accepts_exactly_the_documented_strings(raw in scope_string()) {
        let parsed = RequestedScope::parse(&raw);
        match model_accepts(&raw) {
            None => prop_assert!(parsed.is_err(), "accepted {raw:?}"),
            Some(expected) => {
                let scope = parsed.map_err(|e| TestCaseError::fail(format!("{raw:?}: {e}")))?;
                let mut got: Vec<&str> = scope.iter().map(LimitedScope::as_str).collect();
                got.sort_unstable();
                prop_assert_eq!(got, expected);
                // What goes upstream: openid plus the asked scopes, nothing else.
                let oauth = scope.to_oauth_string();
                let words: Vec<&str> = oauth.split(' ').collect();
                prop_assert_eq!(words[0], "openid");
                prop_assert!(words[1..].iter().all(|w| LimitedScope::parse(w).is_some()));
                // And it parses back to the same scope.
                prop_assert_eq!(RequestedScope::parse(&oauth).ok(), Some(scope));
            }
        }
    }

    #[test]
    fn scope_parser_never_panics_and_errors_are_short(raw in any::<String>()) {
        if let Err(e) = RequestedScope::parse(&raw) {
            prop_assert!(e.to_string().chars().count() < 200, "error echoes too much: {e}");
        }
    }
}

// ---- X-Forwarded-For ----------------------------------------------------------------

fn ip() -> impl Strategy<Value = IpAddr> {
    prop_oneof![
        any::<[u8; 4]>().prop_map(|o| IpAddr::V4(Ipv4Addr::from(o))),
        any::<[u16; 8]>().prop_map(|s| IpAddr::V6(Ipv6Addr::from(s))),
    ]
}

/// How a proxy might write one hop: bare, with a port, bracketed.
fn written(ip: IpAddr, port: u16, style: u8) -> String {
    match (ip, style % 3) {
        (_, 0) => ip.to_string(),
        (IpAddr::V4(v4), _) => format!("{v4}:{port}"),
        (IpAddr::V6(v6), 1) => format!("[{v6}]:{port}"),
        (IpAddr::V6(v6), _) => format!("[{v6}]"),
    }
}

#[derive(Debug, Clone)]
enum Hop {
    Addr(IpAddr, u16, u8),
    Garbage(String),
}

fn hop() -> impl Strategy<Value = Hop> {
    prop_oneof![
        8 => (ip(), any::<u16>(), any::<u8>()).prop_map(|(ip, port, style)| Hop::Addr(ip, port, style)),
        1 => prop::sample::select(vec!["unknown", "", "garbage", "1.2.3", "[::1", "::1]:80", "1.2.3.4:99999", "_hidden"])
            .prop_map(|s| Hop::Garbage(s.to_owned())),
        1 => "[^,]{0,20}".prop_map(Hop::Garbage),
    ]
}

/// Trusted proxies for the properties: 10.0.0.0/8 and fd00::/8.
fn trusted(ip: &IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.octets()[0] == 10,
        IpAddr::V6(v6) => v6.octets()[0] == 0xfd,
    }
}

fn trusted_ip() -> impl Strategy<Value = IpAddr> {
    prop_oneof![
        any::<[u8; 3]>().prop_map(|o| IpAddr::V4(Ipv4Addr::new(10, o[0], o[1], o[2]))),
        any::<[u16; 7]>().prop_map(|s| IpAddr::V6(Ipv6Addr::new(
            0xfd00, s[0], s[1], s[2], s[3], s[4], s[5], s[6]
        ))),
    ]
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn every_way_a_proxy_writes_an_address_parses_to_that_address(ip in ip(), port in any::<u16>(), style in any::<u8>()) {
        prop_assert_eq!(parse_forwarded_hop(&written(ip, port, style)), Some(ip));
        prop_assert_eq!(parse_forwarded_hop(&format!("  {}  ", written(ip, port, style))), Some(ip));
    }

    #[test]
    fn forwarded_walk_matches_the_model(
        peer in prop_oneof![trusted_ip(), ip()],
        // Chains mix trusted proxies in so the walk goes several hops deep.
        chain in prop::collection::vec(prop_oneof![hop(), (trusted_ip(), any::<u16>(), any::<u8>()).prop_map(|(i, p, s)| Hop::Addr(i, p, s))], 0..8),
        split_at in any::<prop::sample::Index>(),
    ) {
        let texts: Vec<String> = chain
            .iter()
            .map(|h| match h {
                Hop::Addr(ip, port, style) => written(*ip, *port, *style),
                Hop::Garbage(g) => g.clone(),
            })
            .collect();
        // The same chain as one header or split over two.
        let joined = texts.join(", ");
        let cut = if texts.is_empty() { 0 } else { split_at.index(texts.len() + 1) };
        let (first, second) = (texts[..cut].join(","), texts[cut..].join(","));
        // Both halves, even an empty one inside the chain (an empty hop is a hop); a cut
        // at either end leaves one header.
        let two: Vec<&str> = if texts.is_empty() {
            Vec::new()
        } else if cut == 0 {
            vec![second.as_str()]
        } else if cut == texts.len() {
            vec![first.as_str()]
        } else {
            vec![first.as_str(), second.as_str()]
        };

        // Model: from the right, while the address so far is trusted.
        let mut expected = peer;
        if trusted(&peer) {
            for h in chain.iter().rev() {
                match h {
                    Hop::Addr(ip, _, _) => {
                        expected = *ip;
                        if !trusted(ip) { break; }
                    }
                    Hop::Garbage(g) => match parse_forwarded_hop(g) {
                        Some(ip) => { expected = ip; if !trusted(&ip) { break; } }
                        None => break,
                    },
                }
            }
        }
        let got = forwarded_client(peer, [joined.as_str()], trusted);
        prop_assert_eq!(got, expected, "XFF {:?} via {}", joined, peer);
        if !two.is_empty() {
            prop_assert_eq!(forwarded_client(peer, two.iter().copied(), trusted), expected);
        }
        // An untrusted peer is always the client, whatever it claims.
        if !trusted(&peer) {
            prop_assert_eq!(got, peer);
        }
    }

    #[test]
    fn forwarded_walk_never_panics_on_any_text(peer in trusted_ip(), values in prop::collection::vec(any::<String>(), 0..4)) {
        let got = forwarded_client(peer, values.iter().map(String::as_str), trusted);
        // The answer is the peer or an address written in the header.
        prop_assert!(got == peer || values.iter().any(|v| v.split(',').any(|h| parse_forwarded_hop(h) == Some(got))));
    }
}

// ---- session cookie -----------------------------------------------------------------

fn cookie_name() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => Just("session".to_owned()),
        1 => prop::sample::select(vec!["Session", "session_", "xsession", "__Host-session", "sid", "session "]).prop_map(str::to_owned),
        1 => "[A-Za-z_-]{1,10}",
    ]
}

fn cookie_value() -> impl Strategy<Value = String> {
    "[A-Za-z0-9._-]{0,40}"
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn every_session_cookie_is_a_candidate_in_order_and_no_other_is(
        cookies in prop::collection::vec((cookie_name(), cookie_value()), 0..8),
        headers in 1usize..3,
    ) {
        // The cookies spread over one or more `Cookie` headers, as HTTP/2 sends them.
        let per = cookies.len().div_ceil(headers).max(1);
        let texts: Vec<String> = cookies
            .chunks(per)
            .map(|c| c.iter().map(|(n, v)| format!("{n}={v}")).collect::<Vec<_>>().join("; "))
            .collect();
        let got = cookie_values(texts.iter().map(String::as_str), "session");
        let expected: Vec<String> = cookies
            .iter()
            .filter(|(n, v)| n.trim() == "session" && !v.is_empty())
            .map(|(_, v)| v.clone())
            .take(MAX_SESSION_COOKIES)
            .collect();
        prop_assert_eq!(got, expected);
    }

    #[test]
    fn cookie_extraction_never_panics_and_bounds_its_output(headers in prop::collection::vec(any::<String>(), 0..4)) {
        let got = cookie_values(headers.iter().map(String::as_str), "session");
        prop_assert!(got.len() <= MAX_SESSION_COOKIES);
        prop_assert!(got.iter().all(|v| !v.is_empty() && !v.contains(';')));
    }
}

// ---- problem mapping ----------------------------------------------------------------

fn vend_error() -> impl Strategy<Value = (VendError, Option<String>)> {
    let text = "[ -~]{1,40}";
    let secs = (0u64..100_000, 0u32..1_000_000_000).prop_map(|(s, n)| Duration::new(s, n));
    prop_oneof![
        text.prop_map(|t| (VendError::InvalidRequest(t), None)),
        LazyJust::new(|| (VendError::PayloadTooLarge, None)),
        LazyJust::new(|| (VendError::UnsupportedMediaType, None)),
        LazyJust::new(|| (VendError::Unauthenticated(SessionError::Missing), None)),
        LazyJust::new(|| (
            VendError::Unauthenticated(SessionError::Invalid("bad signature")),
            None
        )),
        LazyJust::new(|| (
            VendError::Unauthenticated(SessionError::KeysUnavailable),
            None
        )),
        LazyJust::new(|| (VendError::Origin(OriginError::NotAllowed), None)),
        LazyJust::new(|| (VendError::Origin(OriginError::MissingForCookie), None)),
        text.prop_map(|t| (VendError::ScopeNotAllowed(t), None)),
        (
            prop::sample::select(vec![KeyKind::User, KeyKind::Ip, KeyKind::Upstream]),
            secs.clone()
        )
            .prop_map(|(kind, retry_after)| (VendError::RateLimited { kind, retry_after }, None)),
        // Upstream details are the upstream's words: they must never reach the client.
        text.prop_map(|t| (
            VendError::Upstream(UpstreamError::Unreachable(format!("upstream-said:{t}"))),
            Some(format!("upstream-said:{t}"))
        )),
        LazyJust::new(|| (VendError::Upstream(UpstreamError::Timeout), None)),
        (400u16..600, text).prop_map(|(status, t)| (
            VendError::Upstream(UpstreamError::Refused {
                status,
                code: format!("upstream-said:{t}")
            }),
            Some(format!("upstream-said:{t}"))
        )),
        prop::option::of(secs.clone()).prop_map(|retry_after| (
            VendError::Upstream(UpstreamError::RateLimited { retry_after }),
            None
        )),
        (500u16..600).prop_map(|status| (
            VendError::Upstream(UpstreamError::ServerError { status }),
            None
        )),
        LazyJust::new(|| (
            VendError::Upstream(UpstreamError::BadResponse("no access_token")),
            Some("no access_token".to_owned())
        )),
        LazyJust::new(|| (VendError::Upstream(UpstreamError::KeysUnavailable), None)),
        secs.prop_map(|retry_after| (
            VendError::Upstream(UpstreamError::CircuitOpen { retry_after }),
            None
        )),
        LazyJust::new(|| (VendError::AuditUnavailable, None)),
    ]
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn every_error_maps_to_one_documented_problem(
        (error, upstream_words) in vend_error(),
        request_id in "[A-Za-z0-9-]{1,36}",
    ) {
        let problem = Problem::from(&error);
        let status = problem.kind.status();
        prop_assert_eq!(status, error.class().problem.status());
        prop_assert!([400, 401, 403, 413, 415, 429, 502, 503, 504].contains(&status), "undocumented {status}");
        if let Some(words) = upstream_words {
            prop_assert!(!problem.detail.contains(&words), "upstream text in the detail: {}", problem.detail);
        }
        let response = problem.respond(&request_id);
        prop_assert_eq!(response.status().as_u16(), status);
        let header = |name: &str| response.headers().get(name).and_then(|v| v.to_str().ok()).map(str::to_owned);
        let (content_type, cache) = (header("content-type"), header("cache-control"));
        prop_assert_eq!(content_type.as_deref(), Some("application/problem+json"));
        prop_assert_eq!(cache.as_deref(), Some("no-store"));
        prop_assert_eq!(header("www-authenticate").is_some(), status == 401);
        match (error.class().retry_after, header("retry-after")) {
            (Some(after), Some(value)) => {
                let secs: u64 = value.parse().map_err(|_| TestCaseError::fail(format!("Retry-After {value:?}")))?;
                prop_assert!(secs >= 1 && secs as f64 >= after.as_secs_f64(), "Retry-After {secs} < {after:?}");
            }
            (None, None) => {}
            (expected, got) => prop_assert!(false, "Retry-After {got:?}, expected {expected:?}"),
        }
        if status == 429 {
            prop_assert!(header("retry-after").is_some(), "429 without Retry-After");
        }
    }
}
