//! A development stand-in of Corti's auth server (Keycloak): the client-credentials
//! token endpoint and the realm's JWKS, answering the way Keycloak does. It only ever
//! binds loopback, so it cannot be mistaken for, or exposed as, a real auth server.

use std::collections::HashMap;
use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use actix_web::dev::ServerHandle;
use actix_web::{web, App, HttpResponse, HttpServer};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use jsonwebtoken::{encode, Algorithm, DecodingKey, EncodingKey, Header, Validation};
use rsa::pkcs1::EncodeRsaPrivateKey;
use rsa::traits::PublicKeyParts;
use serde::{Deserialize, Serialize};
use serde_json::json;

/// How the stand-in behaves.
#[derive(Clone)]
pub struct StandInConfig {
    pub client_id: String,
    pub client_secret: String,
    /// Lifetime of issued tokens (Corti: 300 s).
    pub token_lifetime: Duration,
}

/// Claims of the tokens the stand-in issues (a subset of Keycloak's).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StandInClaims {
    pub exp: i64,
    pub iat: i64,
    pub jti: String,
    pub iss: String,
    pub aud: String,
    pub sub: String,
    pub typ: String,
    pub azp: String,
    pub scope: String,
    pub preferred_username: String,
    pub client_id: String,
}

struct Keys {
    kid: String,
    encoding: EncodingKey,
    decoding: DecodingKey,
    jwk: serde_json::Value,
}

struct Shared {
    config: StandInConfig,
    keys: Keys,
    base_url: String,
    token_calls: AtomicUsize,
}

/// A running stand-in.
pub struct AuthStandIn {
    shared: Arc<Shared>,
    handle: ServerHandle,
    port: u16,
}

/// Scopes the stand-in's client is assigned, as a Corti API client would be.
const ASSIGNED_SCOPES: [&str; 5] = ["openid", "transcribe", "streams", "profile", "email"];

impl AuthStandIn {
    /// Starts on an ephemeral loopback port.
    pub fn start(config: StandInConfig) -> std::io::Result<Self> {
        Self::start_on(SocketAddr::from(([127, 0, 0, 1], 0)), config)
    }

    /// Starts on `addr`, which must be a loopback address.
    pub fn start_on(addr: SocketAddr, config: StandInConfig) -> std::io::Result<Self> {
        if !addr.ip().is_loopback() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "the development auth stand-in binds only loopback addresses",
            ));
        }
        let listener = TcpListener::bind(addr)?;
        let port = listener.local_addr()?.port();
        let base_url = format!("http://127.0.0.1:{port}");
        let shared = Arc::new(Shared {
            config,
            keys: generate_keys()?,
            base_url,
            token_calls: AtomicUsize::new(0),
        });
        let data = web::Data::from(shared.clone());
        let server = HttpServer::new(move || {
            App::new()
                .app_data(data.clone())
                .route(
                    "/realms/{realm}/protocol/openid-connect/token",
                    web::post().to(token),
                )
                .route(
                    "/realms/{realm}/protocol/openid-connect/certs",
                    web::get().to(certs),
                )
        })
        .workers(1)
        .disable_signals()
        .listen(listener)?
        .run();
        let handle = server.handle();
        tokio::spawn(server);
        Ok(Self {
            shared,
            handle,
            port,
        })
    }

    /// Base URL to use as `CORTI_AUTH_URL`.
    pub fn base_url(&self) -> &str {
        &self.shared.base_url
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// How many token requests it has answered (any status).
    pub fn token_calls(&self) -> usize {
        self.shared.token_calls.load(Ordering::SeqCst)
    }

    /// Checks a token it issued (signature, expiry) and returns its claims.
    pub fn verify(&self, token: &str) -> Option<StandInClaims> {
        let mut validation = Validation::new(Algorithm::RS256);
        validation.validate_aud = false;
        validation.leeway = 0;
        jsonwebtoken::decode::<StandInClaims>(token, &self.shared.keys.decoding, &validation)
            .ok()
            .map(|d| d.claims)
    }

    pub async fn stop(&self) {
        self.handle.stop(true).await;
    }
}

fn generate_keys() -> std::io::Result<Keys> {
    let to_io = |e: &dyn std::fmt::Display| std::io::Error::other(e.to_string());
    let mut rng = rand::thread_rng();
    let private = rsa::RsaPrivateKey::new(&mut rng, 2048).map_err(|e| to_io(&e))?;
    let pem = private
        .to_pkcs1_pem(rsa::pkcs8::LineEnding::LF)
        .map_err(|e| to_io(&e))?;
    let encoding = EncodingKey::from_rsa_pem(pem.as_bytes()).map_err(|e| to_io(&e))?;
    let public = private.to_public_key();
    let n = URL_SAFE_NO_PAD.encode(public.n().to_bytes_be());
    let e = URL_SAFE_NO_PAD.encode(public.e().to_bytes_be());
    let decoding = DecodingKey::from_rsa_components(&n, &e).map_err(|e| to_io(&e))?;
    let kid = uuid::Uuid::new_v4().simple().to_string();
    let jwk = json!({"kid": kid, "kty": "RSA", "alg": "RS256", "use": "sig", "n": n, "e": e});
    Ok(Keys {
        kid,
        encoding,
        decoding,
        jwk,
    })
}

fn oauth_error(status: u16, error: &str, description: &str) -> HttpResponse {
    HttpResponse::build(
        actix_web::http::StatusCode::from_u16(status)
            .unwrap_or(actix_web::http::StatusCode::BAD_REQUEST),
    )
    .json(json!({"error": error, "error_description": description}))
}

async fn token(
    realm: web::Path<String>,
    body: web::Bytes,
    shared: web::Data<Shared>,
) -> HttpResponse {
    shared.token_calls.fetch_add(1, Ordering::SeqCst);
    let Ok(form) = serde_urlencoded::from_bytes::<HashMap<String, String>>(&body) else {
        return oauth_error(400, "invalid_request", "Malformed form body");
    };
    if form.get("grant_type").map(String::as_str) != Some("client_credentials") {
        return oauth_error(400, "unsupported_grant_type", "Unsupported grant_type");
    }
    let client_ok = form.get("client_id") == Some(&shared.config.client_id)
        && form.get("client_secret") == Some(&shared.config.client_secret);
    if !client_ok {
        return oauth_error(
            401,
            "invalid_client",
            "Invalid client or Invalid client credentials",
        );
    }
    let requested: Vec<&str> = form
        .get("scope")
        .map(|s| s.split_ascii_whitespace().collect())
        .unwrap_or_default();
    if let Some(bad) = requested.iter().find(|s| !ASSIGNED_SCOPES.contains(s)) {
        return oauth_error(400, "invalid_scope", &format!("Invalid scopes: {bad}"));
    }
    // Keycloak adds the client's default scopes to whatever was asked.
    let mut granted: Vec<&str> = requested.clone();
    for default in ["profile", "email"] {
        if !granted.contains(&default) {
            granted.push(default);
        }
    }
    let scope = granted.join(" ");
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let lifetime = shared.config.token_lifetime.as_secs() as i64;
    let claims = StandInClaims {
        exp: now + lifetime,
        iat: now,
        jti: uuid::Uuid::new_v4().to_string(),
        iss: format!("{}/realms/{}", shared.base_url, realm.as_str()),
        aud: "account".into(),
        sub: uuid::Uuid::new_v4().to_string(),
        typ: "Bearer".into(),
        azp: shared.config.client_id.clone(),
        scope: scope.clone(),
        preferred_username: format!("service-account-{}", shared.config.client_id),
        client_id: shared.config.client_id.clone(),
    };
    let mut header = Header::new(Algorithm::RS256);
    header.kid = Some(shared.keys.kid.clone());
    let Ok(access_token) = encode(&header, &claims, &shared.keys.encoding) else {
        return oauth_error(500, "server_error", "signing failed");
    };
    // Keycloak sends an id_token when openid is asked; token-vendor must drop it.
    let id_token = encode(
        &header,
        &json!({"sub": claims.sub, "exp": claims.exp, "typ": "ID"}),
        &shared.keys.encoding,
    )
    .unwrap_or_default();
    HttpResponse::Ok()
        .insert_header(("Cache-Control", "no-store"))
        .json(json!({
            "access_token": access_token,
            "expires_in": lifetime,
            "refresh_expires_in": 0,
            "token_type": "Bearer",
            "id_token": id_token,
            "not-before-policy": 0,
            "scope": scope,
        }))
}

async fn certs(shared: web::Data<Shared>) -> HttpResponse {
    HttpResponse::Ok().json(json!({"keys": [shared.keys.jwk]}))
}
