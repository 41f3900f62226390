//! The hostile corpus: every case in `tests/hostile/cases.json` is sent to the real
//! `token-vendor serve` binary over raw TCP. Each must get a 4xx (or the statuses the
//! case names), never a token and never a 5xx; no case may reach the Corti auth server,
//! and the process must still serve a real vend after the whole corpus.

use crate::support::blackbox;
use crate::support::blackbox::{
    build_request, now, valid_claims, Service, SessionKey, READER_ROLE,
};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use jsonwebtoken::{Algorithm, EncodingKey};
use serde_json::{json, Map, Value};
use token_vendor::dev::auth_standin::{AuthStandIn, StandInConfig};
use token_vendor::dev::random_hex;

const CASES: &str = include_str!("../hostile/cases.json");

/// Replaces every `{"$repeat": s, "times": n}` by `s` repeated `n` times.
fn expand(value: Value) -> Value {
    match value {
        Value::Object(map) if map.contains_key("$repeat") => {
            let unit = map["$repeat"].as_str().unwrap_or_default();
            let times = map.get("times").and_then(Value::as_u64).unwrap_or(1) as usize;
            Value::String(unit.repeat(times))
        }
        Value::Object(map) => Value::Object(map.into_iter().map(|(k, v)| (k, expand(v))).collect()),
        Value::Array(items) => Value::Array(items.into_iter().map(expand).collect()),
        other => other,
    }
}

fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

/// Builds the session token a case describes: a header and claims of the case's making,
/// signed the way the attack needs.
fn forge(spec: &Value, key: &SessionKey, other: &SessionKey) -> String {
    if let Some(literal) = spec.get("literal").and_then(Value::as_str) {
        return literal.to_owned();
    }
    let alg = spec.get("alg").and_then(Value::as_str).unwrap_or("RS256");
    let mut claims = valid_claims("hostile-user", &[]);
    if let Some(v) = spec.get("exp_in").and_then(Value::as_i64) {
        claims["exp"] = json!(now() + v);
    }
    if let Some(v) = spec.get("nbf_in").and_then(Value::as_i64) {
        claims["nbf"] = json!(now() + v);
    }
    if let Some(Value::Object(overrides)) = spec.get("claims") {
        for (k, v) in overrides {
            claims[k] = v.clone();
        }
    }
    let claims_obj = claims.as_object_mut().expect("claims object");
    for name in spec
        .get("drop")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        claims_obj.remove(name.as_str().unwrap_or_default());
    }
    let mut header = Map::new();
    header.insert("alg".into(), json!(alg));
    header.insert("typ".into(), json!("JWT"));
    if let Some(Value::Object(extra)) = spec.get("header") {
        for (k, v) in extra {
            header.insert(k.clone(), v.clone());
        }
    }
    // jwk injection: the attacker's own key embedded in the header it signs with.
    if spec.get("embed_own_jwk").is_some() {
        header.insert(
            "jwk".into(),
            json!({"kty": "RSA", "n": other.n, "e": other.e, "alg": "RS256"}),
        );
    }
    let header_part = match spec.get("raw_header").and_then(Value::as_str) {
        Some(raw) => b64(raw.as_bytes()),
        None => b64(&serde_json::to_vec(&Value::Object(header)).expect("header json")),
    };
    let claims_part = match spec.get("raw_claims").and_then(Value::as_str) {
        Some(raw) => b64(raw.as_bytes()),
        None => b64(&serde_json::to_vec(&claims).expect("claims json")),
    };
    let message = format!("{header_part}.{claims_part}");
    let signer = spec
        .get("signer")
        .and_then(Value::as_str)
        .unwrap_or("session");
    let signature = match signer {
        "empty" => String::new(),
        "garbage" => b64(b"not a signature at all"),
        _ => {
            let (key, algorithm) = match (signer, alg) {
                // Algorithm confusion: HMAC keyed with the service's own public key.
                ("public_pem", a) => (
                    EncodingKey::from_secret(key.public_pem.as_bytes()),
                    a.parse().unwrap_or(Algorithm::HS256),
                ),
                ("guess", a) => (
                    EncodingKey::from_secret(b"secret"),
                    a.parse().unwrap_or(Algorithm::HS256),
                ),
                ("other", _) => (other.encoding.clone(), Algorithm::RS256),
                _ => (key.encoding.clone(), Algorithm::RS256),
            };
            jsonwebtoken::crypto::sign(message.as_bytes(), &key, algorithm).expect("sign")
        }
    };
    let token = format!("{message}.{signature}");
    match spec.get("tamper").and_then(Value::as_str) {
        Some("flip_payload") => {
            // Same signature, one claim changed.
            let mut changed = claims.clone();
            changed["sub"] = json!("someone-else");
            let body = b64(&serde_json::to_vec(&changed).expect("json"));
            format!("{header_part}.{body}.{signature}")
        }
        Some("pad_base64") => format!("{header_part}==.{claims_part}.{signature}"),
        Some("std_base64") => token.replace('-', "+").replace('_', "/"),
        Some("extra_segment") => format!("{token}.{}", b64(b"more")),
        Some("drop_signature") => message,
        Some("whitespace") => format!(" {token} "),
        _ => token,
    }
}

#[derive(Default)]
struct Tally {
    cases: usize,
    failures: Vec<String>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_hostile_case_is_refused_with_a_4xx_and_the_service_keeps_serving() {
    let _turn = crate::shared_turn().await;
    let client_secret = format!("fake-client-secret-{}", random_hex(16));
    let standin = AuthStandIn::start(StandInConfig {
        client_id: "token-vendor-dev".into(),
        client_secret: client_secret.clone(),
        token_lifetime: std::time::Duration::from_secs(300),
    })
    .expect("stand-in");
    let dir = blackbox::temp_dir("hostile");
    let key = SessionKey::generate();
    let other = SessionKey::generate();
    let mut service = Service::spawn(blackbox::serve_env(
        &dir,
        &key,
        standin.base_url(),
        &client_secret,
    ));
    let valid = key.session("hostile-user", &[]);
    let reader = key.session("hostile-reader", &[READER_ROLE]);

    let cases: Vec<Value> = serde_json::from_str(CASES).expect("cases.json parses");
    let mut tally = Tally::default();
    for case in cases.into_iter().map(expand) {
        let name = case["name"].as_str().unwrap_or("(unnamed)").to_owned();
        let token = match &case["session"] {
            Value::String(s) if s == "valid" => Some(valid.clone()),
            Value::String(s) if s == "reader" => Some(reader.clone()),
            Value::Object(_) => Some(forge(&case["session"], &key, &other)),
            _ => None,
        };
        let request = render(&case, token.as_deref(), &valid);
        let response = tokio::task::spawn_blocking({
            let port = service.port;
            move || blackbox::send_raw(port, &request)
        })
        .await
        .expect("request task");
        tally.cases += 1;
        let allowed: Vec<u16> = case["expect"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|s| s.as_u64().map(|s| s as u16))
                    .collect()
            })
            .unwrap_or_default();
        let status_ok = if allowed.is_empty() {
            (400..500).contains(&response.status)
        } else {
            allowed.contains(&response.status)
        };
        let leaked = response.body.contains("accessToken") || response.head.contains("accessToken");
        let forbidden_text = case["response_must_not_contain"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .find(|s| response.head.contains(s) || response.body.contains(s));
        if !status_ok || leaked || forbidden_text.is_some() {
            tally.failures.push(format!(
                "{name}: status {} (allowed {allowed:?}), token in answer: {leaked}, forbidden text: {forbidden_text:?}\n  body: {}",
                response.status,
                response.body.chars().take(300).collect::<String>()
            ));
        }
    }

    assert!(tally.cases >= 200, "the corpus has {} cases", tally.cases);
    assert!(
        tally.failures.is_empty(),
        "{} of {} hostile cases misbehaved:\n{}",
        tally.failures.len(),
        tally.cases,
        tally.failures.join("\n")
    );
    assert_eq!(
        standin.token_calls(),
        0,
        "no hostile case may cause a call to the Corti auth server"
    );
    assert!(service.is_running(), "the process survived the corpus");
    let health = service.request("GET", "/healthz", &[], b"");
    assert_eq!(health.status, 200, "still alive: {health:?}");
    let auth = format!("Bearer {valid}");
    let vend = service.request(
        "POST",
        "/v1/tokens",
        &[
            ("Authorization", &auth),
            ("Content-Type", "application/json"),
        ],
        br#"{"scope":"transcribe"}"#,
    );
    assert_eq!(vend.status, 200, "still vends after the corpus: {vend:?}");
    assert!(vend.json()["accessToken"].is_string());
    println!("hostile corpus: {} cases, 0 failures", tally.cases);
    standin.stop().await;
}

/// The bytes of a case's request. `{session}` and `{valid}` in header values and raw
/// requests stand for the case's token and a valid session.
fn render(case: &Value, token: Option<&str>, valid: &str) -> Vec<u8> {
    let fill = |s: &str| {
        s.replace("{session}", token.unwrap_or(""))
            .replace("{valid}", valid)
    };
    if let Some(raw) = case["raw"].as_str() {
        return fill(raw).into_bytes();
    }
    let method = case["method"].as_str().unwrap_or("POST");
    let path = fill(case["path"].as_str().unwrap_or("/v1/tokens"));
    let body: Vec<u8> = match (&case["body"], case.get("body_json")) {
        (Value::String(s), _) => fill(s).into_bytes(),
        (_, Some(v)) => serde_json::to_vec(v).expect("json body"),
        (_, None) if method == "POST" => br#"{"scope":"transcribe"}"#.to_vec(),
        (_, None) => Vec::new(),
    };
    let mut headers: Vec<(String, String)> = case["headers"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|h| {
            let pair = h.as_array()?;
            Some((
                pair.first()?.as_str()?.to_owned(),
                fill(pair.get(1)?.as_str()?),
            ))
        })
        .collect();
    let mentions_session = case["headers"].to_string().contains("{session}");
    if let Some(token) = token.filter(|_| !mentions_session) {
        match case["auth"].as_str().unwrap_or("bearer") {
            "cookie" => headers.push(("Cookie".into(), format!("session={token}"))),
            "none" => {}
            _ => headers.push(("Authorization".into(), format!("Bearer {token}"))),
        }
    }
    let has_content_type = headers
        .iter()
        .any(|(n, _)| n.eq_ignore_ascii_case("content-type"));
    match &case["content_type"] {
        Value::Null
            if !has_content_type && method == "POST" && case.get("content_type").is_none() =>
        {
            headers.push(("Content-Type".into(), "application/json".into()))
        }
        Value::String(ct) => headers.push(("Content-Type".into(), ct.clone())),
        _ => {}
    }
    let pairs: Vec<(&str, &str)> = headers
        .iter()
        .map(|(n, v)| (n.as_str(), v.as_str()))
        .collect();
    build_request(
        method,
        &path,
        &pairs,
        &body,
        !case["no_content_length"].as_bool().unwrap_or(false),
    )
}
