//! Opaque sessions: the app's session id is checked by its identity provider's OAuth 2.0
//! token introspection endpoint (RFC 7662) instead of as a JWT.
//!
//! One `POST` per session credential, `token=…&token_type_hint=access_token`, with this
//! service's client credentials as HTTP Basic (`client_secret_basic`, RFC 6749 §2.3.1).
//! Active answers are cached for a short, bounded time (never past the session's `exp`),
//! keyed by a SHA-256 of the credential, never the credential itself; inactive answers
//! are not cached (a session that has just become valid is never refused from memory).
//! Concurrent checks of one credential share one call.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use sha2::{Digest, Sha256};
use tokio::sync::OnceCell;

use super::{Session, SessionError, StringOrList, Subject};
use crate::config::{IntrospectionSettings, SESSION_INTROSPECTION_CLIENT_SECRET};
use crate::scope::LimitedScope;

/// Largest introspection answer read; real ones are a few hundred bytes.
pub const MAX_ANSWER_BYTES: usize = 64 * 1024;
/// Most cached answers; past it, expired ones are dropped, then nothing new is cached.
pub const MAX_CACHED: usize = 10_000;
/// Longest session credential sent to the endpoint (as for session JWTs).
const MAX_CREDENTIAL_BYTES: usize = 8192;
/// Total time for one introspection call.
const CALL_TIMEOUT: Duration = Duration::from_secs(5);

/// Why introspection gave no answer to go by.
#[derive(Debug, Clone, thiserror::Error)]
pub enum IntrospectionError {
    #[error("introspection endpoint unavailable: {0}")]
    Unavailable(String),
}

type Key = [u8; 32];
type Answer = Result<Verdict, IntrospectionError>;

/// What the endpoint said about one credential.
#[derive(Debug, Clone)]
enum Verdict {
    Active(Session, Option<i64>),
    Inactive(&'static str),
}

struct Cached {
    session: Session,
    until: Instant,
}

/// The introspection client with its cache.
pub struct Introspector {
    url: String,
    client_id: String,
    audience: Option<Vec<String>>,
    secret: RwLock<SecretString>,
    secret_file: Option<PathBuf>,
    ttl: Duration,
    http: reqwest::Client,
    cache: Mutex<HashMap<Key, Cached>>,
    in_flight: Mutex<HashMap<Key, Arc<OnceCell<Answer>>>>,
}

impl Introspector {
    pub fn new(settings: &IntrospectionSettings) -> Result<Arc<Self>, reqwest::Error> {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(3))
            .timeout(CALL_TIMEOUT)
            // A redirect would carry the client credentials to a host nobody configured.
            .redirect(reqwest::redirect::Policy::none())
            .build()?;
        Ok(Arc::new(Self {
            url: settings.url.clone(),
            client_id: settings.client_id.clone(),
            audience: settings.audience.clone(),
            secret: RwLock::new(settings.client_secret.clone()),
            secret_file: settings.client_secret_file.clone(),
            ttl: settings.cache_ttl,
            http,
            cache: Mutex::new(HashMap::new()),
            in_flight: Mutex::new(HashMap::new()),
        }))
    }

    /// The session an opaque credential stands for.
    pub async fn verify(&self, credential: &str) -> Result<Session, SessionError> {
        if credential.is_empty() || credential.len() > MAX_CREDENTIAL_BYTES {
            return Err(SessionError::Invalid("token empty or too long"));
        }
        let key: Key = Sha256::digest(credential.as_bytes()).into();
        if let Some(session) = self.cached(&key) {
            return Ok(session);
        }
        let cell = {
            let mut in_flight = crate::background::lock(&self.in_flight);
            in_flight.entry(key).or_default().clone()
        };
        let answer = cell
            .get_or_init(|| async {
                // Another caller may have finished while this one waited for the map.
                if let Some(session) = self.cached(&key) {
                    return Ok(Verdict::Active(session, None));
                }
                let answer = self.introspect(credential).await;
                if let Ok(Verdict::Active(session, exp)) = &answer {
                    self.remember(key, session, *exp);
                }
                answer
            })
            .await
            .clone();
        {
            let mut in_flight = crate::background::lock(&self.in_flight);
            if in_flight.get(&key).is_some_and(|c| Arc::ptr_eq(c, &cell)) {
                in_flight.remove(&key);
            }
        }
        match answer {
            Ok(Verdict::Active(session, _)) => Ok(session),
            Ok(Verdict::Inactive(why)) => Err(SessionError::Invalid(why)),
            Err(e) => {
                tracing::warn!(introspection_url = %crate::config::redact_url(&self.url), error = %e, "cannot check an opaque session");
                Err(SessionError::KeysUnavailable)
            }
        }
    }

    fn cached(&self, key: &Key) -> Option<Session> {
        let cache = crate::background::lock(&self.cache);
        cache
            .get(key)
            .filter(|c| c.until > Instant::now())
            .map(|c| c.session.clone())
    }

    fn remember(&self, key: Key, session: &Session, exp: Option<i64>) {
        let mut ttl = self.ttl;
        if let Some(exp) = exp {
            let left = exp.saturating_sub(time::OffsetDateTime::now_utc().unix_timestamp());
            ttl = ttl.min(Duration::from_secs(u64::try_from(left).unwrap_or(0)));
        }
        if ttl.is_zero() {
            return;
        }
        let now = Instant::now();
        let mut cache = crate::background::lock(&self.cache);
        if cache.len() >= MAX_CACHED {
            cache.retain(|_, c| c.until > now);
        }
        if cache.len() >= MAX_CACHED {
            return;
        }
        cache.insert(
            key,
            Cached {
                session: session.clone(),
                until: now + ttl,
            },
        );
    }

    /// One introspection request for `credential`, as RFC 7662 and §2.3.1 of RFC 6749
    /// describe it.
    async fn send(&self, credential: &str) -> Result<reqwest::Response, reqwest::Error> {
        let (id, secret) = {
            let secret = self
                .secret
                .read()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            (
                form_encode(&self.client_id),
                form_encode(secret.expose_secret()),
            )
        };
        self.http
            .post(&self.url)
            .basic_auth(id, Some(secret))
            .header(reqwest::header::ACCEPT, "application/json")
            .form(&[("token", credential), ("token_type_hint", "access_token")])
            .send()
            .await
    }

    /// `check-config --probe`: one call with a made-up credential, and what the answer
    /// says about the endpoint. Answered inactive: it works. 401/403: it refused this
    /// service's client credentials (RFC 7662 answers an unknown token with
    /// `active: false`, never 401), which `serve` answers with 503 for every session, as
    /// it does anything else, or no answer.
    pub async fn probe(&self) -> Result<String, String> {
        let target = crate::config::redact_url(&self.url);
        let credential = format!("token-vendor-probe-{:032x}", rand::random::<u128>());
        let response = self.send(&credential).await.map_err(|e| {
            // The URL may carry userinfo; `target` is the redacted one.
            let e = e.without_url();
            if e.is_timeout() {
                format!("{target}: no answer within {}s", CALL_TIMEOUT.as_secs())
            } else if e.is_connect() {
                format!("{target}: cannot connect: {}", innermost_cause(&e))
            } else {
                format!("{target}: {}", innermost_cause(&e))
            }
        })?;
        let status = response.status();
        match status.as_u16() {
            200..=299 => {}
            401 | 403 => {
                return Err(format!(
                    "{target}: answered {}: it refuses this service's client credentials, \
                     so every session would get 503; check {} and {}",
                    status.as_u16(),
                    crate::config::SESSION_INTROSPECTION_CLIENT_ID.name,
                    SESSION_INTROSPECTION_CLIENT_SECRET.name
                ))
            }
            _ => return Err(format!("{target}: answered {status}")),
        }
        let body = read_capped(response)
            .await
            .map_err(|e| format!("{target}: {e}"))?;
        match parse_answer(&body, None) {
            Ok(Verdict::Inactive(_)) => {
                Ok(format!("{target}; answered a made-up token as inactive"))
            }
            Ok(Verdict::Active(..)) => Err(format!(
                "{target}: called a made-up token active; it would accept any session"
            )),
            Err(e) => Err(format!("{target}: {e}")),
        }
    }

    async fn introspect(&self, credential: &str) -> Answer {
        let unavailable = |why: String| IntrospectionError::Unavailable(why);
        let response = self.send(credential).await.map_err(|e| {
            unavailable(if e.is_timeout() {
                "timed out".into()
            } else {
                format!("{}", e.without_url())
            })
        })?;
        let status = response.status();
        if !status.is_success() {
            // 401/403 here means this service's own client credentials are refused:
            // that is the operator's to fix, not the user's session.
            return Err(unavailable(format!("status {}", status.as_u16())));
        }
        let body = read_capped(response).await.map_err(unavailable)?;
        parse_answer(&body, self.audience.as_deref())
    }
}

/// The last error in `e`'s chain of causes ("Connection refused (os error 111)"):
/// reqwest's own message names only the step that failed.
fn innermost_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cause = e;
    while let Some(next) = cause.source() {
        cause = next;
    }
    cause.to_string()
}

/// RFC 6749 §2.3.1: the client id and secret are form-urlencoded before HTTP Basic.
fn form_encode(raw: &str) -> String {
    let mut out = String::with_capacity(raw.len());
    for b in raw.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'*' => {
                out.push(b as char)
            }
            b' ' => out.push('+'),
            other => out.push_str(&format!("%{other:02X}")),
        }
    }
    out
}

async fn read_capped(mut response: reqwest::Response) -> Result<Vec<u8>, String> {
    let too_large = || format!("answer is larger than {MAX_ANSWER_BYTES} bytes");
    if response
        .content_length()
        .is_some_and(|n| n > MAX_ANSWER_BYTES as u64)
    {
        return Err(too_large());
    }
    let mut body = Vec::new();
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|e| format!("{}", e.without_url()))?
    {
        if body.len() + chunk.len() > MAX_ANSWER_BYTES {
            return Err(too_large());
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

#[derive(Deserialize)]
struct RawAnswer {
    active: bool,
    #[serde(default)]
    sub: Option<String>,
    #[serde(default)]
    exp: Option<i64>,
    #[serde(default)]
    sid: Option<String>,
    #[serde(default)]
    scope: Option<String>,
    #[serde(default)]
    corti_scopes: Option<StringOrList>,
    #[serde(default)]
    roles: Option<StringOrList>,
    #[serde(default)]
    corti_tenants: Option<StringOrList>,
    #[serde(default)]
    client_id: Option<String>,
    #[serde(default)]
    aud: Option<StringOrList>,
}

/// Reads an RFC 7662 answer. `Err` when it is not one (the endpoint is then treated as
/// unavailable); an active answer that cannot name a user is an invalid session.
/// `audience`: the `client_id`/`aud` values one of which the answer must name (`None`:
/// any client's token is a session).
fn parse_answer(body: &[u8], audience: Option<&[String]>) -> Answer {
    let mut raw: RawAnswer = serde_json::from_slice(body).map_err(|_| {
        IntrospectionError::Unavailable("answer is not an RFC 7662 JSON object".into())
    })?;
    if !raw.active {
        return Ok(Verdict::Inactive("session is not active (introspection)"));
    }
    if let Some(expected) = audience {
        let client = raw.client_id.iter().cloned();
        let aud = raw
            .aud
            .take()
            .map(StringOrList::into_vec)
            .unwrap_or_default();
        if !client.chain(aud).any(|named| expected.contains(&named)) {
            return Ok(Verdict::Inactive(
                "token issued to another client (introspection: client_id/aud)",
            ));
        }
    }
    let Some(sub) = raw.sub.as_deref() else {
        return Ok(Verdict::Inactive(
            "active session without sub (introspection)",
        ));
    };
    let subject = match Subject::parse(sub) {
        Ok(subject) => subject,
        Err(_) => {
            return Ok(Verdict::Inactive(
                "sub is empty, too long or has control characters",
            ))
        }
    };
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    if raw
        .exp
        .is_some_and(|exp| exp.saturating_add(crate::session::jwt::LEEWAY_SECS as i64) <= now)
    {
        return Ok(Verdict::Inactive("expired"));
    }
    // `corti_scopes` says it outright; otherwise the limited Corti scopes named in the
    // token's OAuth `scope` are what the user may have (any other scope counts for
    // nothing here), and a token with neither member is not narrowed, as for JWTs.
    let allowed_scopes = match (raw.corti_scopes, raw.scope) {
        (Some(list), _) => Some(list.into_vec()),
        (None, Some(scope)) => Some(
            scope
                .split_ascii_whitespace()
                .filter(|s| LimitedScope::parse(s).is_some())
                .map(str::to_owned)
                .collect(),
        ),
        (None, None) => None,
    };
    Ok(Verdict::Active(
        Session {
            subject,
            session_id: raw.sid.filter(|s| !s.is_empty() && s.len() <= 255),
            roles: raw.roles.map(StringOrList::into_vec).unwrap_or_default(),
            allowed_scopes,
            allowed_tenants: raw.corti_tenants.map(StringOrList::into_vec),
        },
        raw.exp,
    ))
}

impl crate::reload::Reloadable for Introspector {
    fn name(&self) -> String {
        format!("{}_FILE", SESSION_INTROSPECTION_CLIENT_SECRET.name)
    }

    fn paths(&self) -> Vec<PathBuf> {
        self.secret_file.iter().cloned().collect()
    }

    fn reload(&self) -> Result<(), String> {
        let Some(path) = &self.secret_file else {
            return Ok(());
        };
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        let text = text.trim_end_matches(['\n', '\r']);
        if text.is_empty() {
            return Err(format!("{} is empty", path.display()));
        }
        *self
            .secret
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = SecretString::from(text);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use wiremock::matchers::{body_string, header, method};
    use wiremock::{Mock, MockServer, ResponseTemplate};

    fn introspector(url: String) -> Arc<Introspector> {
        Introspector::new(&IntrospectionSettings {
            url,
            client_id: "tv client".into(),
            audience: None,
            client_secret: SecretString::from("fake:secret"),
            client_secret_file: None,
            cache_ttl: Duration::from_secs(30),
        })
        .expect("client builds")
    }

    #[tokio::test]
    async fn asks_as_rfc_7662_says_and_treats_a_bad_answer_as_unavailable() {
        let server = MockServer::start().await;
        // "tv client" / "fake:secret", form-encoded, then Basic.
        let basic = "Basic dHYrY2xpZW50OmZha2UlM0FzZWNyZXQ=";
        Mock::given(method("POST"))
            .and(header("authorization", basic))
            .and(body_string("token=good&token_type_hint=access_token"))
            .respond_with(ResponseTemplate::new(200).set_body_json(
                serde_json::json!({"active": true, "sub": "u1", "scope": "transcribe"}),
            ))
            .expect(1)
            .mount(&server)
            .await;
        Mock::given(method("POST"))
            .and(body_string("token=inactive&token_type_hint=access_token"))
            .respond_with(ResponseTemplate::new(200).set_body_string(r#"{"active":false}"#))
            .expect(2)
            .mount(&server)
            .await;
        for (token, answer) in [
            ("5xx", ResponseTemplate::new(503)),
            ("html", ResponseTemplate::new(200).set_body_string("<html>")),
            (
                "huge",
                ResponseTemplate::new(200).set_body_string(" ".repeat(MAX_ANSWER_BYTES + 1)),
            ),
        ] {
            Mock::given(method("POST"))
                .and(body_string(format!(
                    "token={token}&token_type_hint=access_token"
                )))
                .respond_with(answer)
                .mount(&server)
                .await;
        }
        let introspector = introspector(server.uri());

        // Active: asked once, then answered from the cache (`expect(1)`).
        for _ in 0..2 {
            let session = introspector.verify("good").await.expect("active");
            assert_eq!(session.subject.as_str(), "u1");
        }
        // Inactive: 401, and not cached (`expect(2)`).
        for _ in 0..2 {
            assert!(matches!(
                introspector.verify("inactive").await,
                Err(SessionError::Invalid(_))
            ));
        }
        for token in ["5xx", "html", "huge"] {
            assert!(
                matches!(
                    introspector.verify(token).await,
                    Err(SessionError::KeysUnavailable)
                ),
                "{token}"
            );
        }
        assert!(matches!(
            introspector
                .verify(&"x".repeat(MAX_CREDENTIAL_BYTES + 1))
                .await,
            Err(SessionError::Invalid(_))
        ));
    }

    #[test]
    fn client_credentials_are_form_encoded_before_basic() {
        assert_eq!(form_encode("token-vendor"), "token-vendor");
        assert_eq!(form_encode("a b:c+d/é%"), "a+b%3Ac%2Bd%2F%C3%A9%25");
    }

    #[test]
    fn answers_map_to_sessions() {
        let active = |json: &str| match parse_answer(json.as_bytes(), None) {
            Ok(Verdict::Active(session, _)) => session,
            other => panic!("not active: {other:?}"),
        };
        let s = active(r#"{"active":true,"sub":"u1","scope":"openid transcribe profile"}"#);
        assert_eq!(s.subject.as_str(), "u1");
        assert_eq!(s.allowed_scopes, Some(vec!["transcribe".to_string()]));
        let s = active(
            r#"{"active":true,"sub":"u1","scope":"transcribe","corti_scopes":["streams"],"roles":"a b"}"#,
        );
        assert_eq!(s.allowed_scopes, Some(vec!["streams".to_string()]));
        assert_eq!(s.roles, vec!["a".to_string(), "b".to_string()]);
        let s = active(r#"{"active":true,"sub":"u1","scope":"openid"}"#);
        assert_eq!(
            s.allowed_scopes,
            Some(vec![]),
            "no Corti scope: none allowed"
        );
        assert_eq!(active(r#"{"active":true,"sub":"u1"}"#).allowed_scopes, None);
        assert_eq!(
            active(r#"{"active":true,"sub":"u1"}"#).allowed_tenants,
            None
        );
        let s = active(r#"{"active":true,"sub":"u1","corti_tenants":"base acme"}"#);
        assert_eq!(
            s.allowed_tenants,
            Some(vec!["base".to_string(), "acme".to_string()])
        );

        for inactive in [
            r#"{"active":false}"#,
            r#"{"active":true}"#,
            r#"{"active":true,"sub":""}"#,
            r#"{"active":true,"sub":"u1","exp":1000}"#,
        ] {
            assert!(
                matches!(
                    parse_answer(inactive.as_bytes(), None),
                    Ok(Verdict::Inactive(_))
                ),
                "{inactive}"
            );
        }
        for broken in ["", "<html>", r#"{"sub":"u1"}"#, r#"{"active":"yes"}"#, "[]"] {
            assert!(parse_answer(broken.as_bytes(), None).is_err(), "{broken}");
        }
    }
}
