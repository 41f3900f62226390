//! Helpers for `bench/run.sh` (not a test, not shipped):
//!
//!     bench_support upstream --latency-ms 20 --client-id ID --client-secret S --port-file F
//!     bench_support sessions --secret S --prefix user --count 1000 --files 2 --out DIR/reuse
//!
//! `upstream` is a Keycloak-shaped token endpoint (client-credentials grant, RS256 access
//! tokens carrying a `scope` claim, the realm's JWKS) that answers after a fixed delay, so
//! the service's own cost shows as "latency added over the upstream". Unlike the `dev`
//! stand-in it does not RSA-sign on every call (that would make the stand-in, not the
//! service, the bottleneck on 2 cores): it hands out a small pool of tokens per scope,
//! re-signed every 30 s so their `exp` stays close to the configured lifetime.
//! `GET /_bench/calls` returns how many token requests it has answered (the herd check).
//!
//! `sessions` writes pre-signed HS256 session JWTs (claims `sub`, `sid`, `iat`, `exp`),
//! one per line, dealt round-robin into `--files` files `OUT.0`, `OUT.1`, … (one per wrk
//! thread, so every request in a run can carry a different user).

use std::collections::HashMap;
use std::io::{BufWriter, Write};
use std::net::TcpListener;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use actix_web::{web, App, HttpResponse, HttpServer};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use clap::{Parser, Subcommand};
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use rsa::pkcs1::EncodeRsaPrivateKey;
use rsa::traits::PublicKeyParts;
use serde_json::json;

#[derive(Parser)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the Keycloak-shaped upstream with a fixed latency.
    Upstream {
        #[arg(long, default_value_t = 20)]
        latency_ms: u64,
        #[arg(long)]
        client_id: String,
        #[arg(long)]
        client_secret: String,
        /// Lifetime of the tokens handed out (Corti: 300 s).
        #[arg(long, default_value_t = 300)]
        lifetime: i64,
        /// Written with the port once the listener is bound.
        #[arg(long)]
        port_file: std::path::PathBuf,
    },
    /// Write pre-signed HS256 session JWTs, one per line.
    Sessions {
        #[arg(long)]
        secret: String,
        #[arg(long)]
        prefix: String,
        #[arg(long)]
        count: usize,
        #[arg(long, default_value_t = 1)]
        files: usize,
        #[arg(long)]
        out: String,
        /// Session lifetime in seconds.
        #[arg(long, default_value_t = 6 * 3600)]
        lifetime: i64,
    },
}

fn main() -> std::io::Result<()> {
    match Cli::parse().command {
        Command::Upstream {
            latency_ms,
            client_id,
            client_secret,
            lifetime,
            port_file,
        } => upstream(
            Duration::from_millis(latency_ms),
            client_id,
            client_secret,
            lifetime,
            &port_file,
        ),
        Command::Sessions {
            secret,
            prefix,
            count,
            files,
            out,
            lifetime,
        } => sessions(&secret, &prefix, count, files.max(1), &out, lifetime),
    }
}

fn sessions(
    secret: &str,
    prefix: &str,
    count: usize,
    files: usize,
    out: &str,
    lifetime: i64,
) -> std::io::Result<()> {
    let key = EncodingKey::from_secret(secret.as_bytes());
    let header = Header::new(Algorithm::HS256);
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let mut writers = (0..files)
        .map(|i| std::fs::File::create(format!("{out}.{i}")).map(BufWriter::new))
        .collect::<std::io::Result<Vec<_>>>()?;
    for i in 0..count {
        let claims = json!({
            "sub": format!("{prefix}-{i}"),
            "sid": format!("sid-{prefix}-{i}"),
            "iat": now,
            "exp": now + lifetime,
        });
        let jwt = encode(&header, &claims, &key).map_err(std::io::Error::other)?;
        writeln!(writers[i % files], "{jwt}")?;
    }
    for mut w in writers {
        w.flush()?;
    }
    Ok(())
}

struct Signer {
    kid: String,
    key: EncodingKey,
    jwk: serde_json::Value,
}

struct Upstream {
    latency: Duration,
    client_id: String,
    client_secret: String,
    lifetime: i64,
    signer: Signer,
    base_url: String,
    calls: AtomicUsize,
    pools: Mutex<HashMap<String, Pool>>,
    next: AtomicUsize,
}

/// Tokens for one scope: when they were signed, and each token with its signing time.
type Pool = (Instant, Vec<(String, i64)>);

const POOL: usize = 16;
const RESIGN_AFTER: Duration = Duration::from_secs(30);

impl Upstream {
    fn token_for(&self, realm: &str, scope: &str) -> Option<(String, i64)> {
        let mut pools = self.pools.lock().ok()?;
        let fresh = pools
            .get(scope)
            .is_some_and(|(at, _)| at.elapsed() < RESIGN_AFTER);
        if !fresh {
            let now = time::OffsetDateTime::now_utc().unix_timestamp();
            let mut header = Header::new(Algorithm::RS256);
            header.kid = Some(self.signer.kid.clone());
            let mut tokens = Vec::with_capacity(POOL);
            for _ in 0..POOL {
                let claims = json!({
                    "exp": now + self.lifetime,
                    "iat": now,
                    "jti": uuid::Uuid::new_v4().to_string(),
                    "iss": format!("{}/realms/{realm}", self.base_url),
                    "aud": "account",
                    "sub": uuid::Uuid::new_v4().to_string(),
                    "typ": "Bearer",
                    "azp": self.client_id,
                    "scope": scope,
                    "client_id": self.client_id,
                });
                tokens.push((encode(&header, &claims, &self.signer.key).ok()?, now));
            }
            pools.insert(scope.to_owned(), (Instant::now(), tokens));
        }
        let (_, tokens) = pools.get(scope)?;
        let (token, signed) = &tokens[self.next.fetch_add(1, Ordering::Relaxed) % tokens.len()];
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        Some((token.clone(), self.lifetime - (now - signed)))
    }
}

fn upstream(
    latency: Duration,
    client_id: String,
    client_secret: String,
    lifetime: i64,
    port_file: &std::path::Path,
) -> std::io::Result<()> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let port = listener.local_addr()?.port();
    let shared = Arc::new(Upstream {
        latency,
        client_id,
        client_secret,
        lifetime,
        signer: signer()?,
        base_url: format!("http://127.0.0.1:{port}"),
        calls: AtomicUsize::new(0),
        pools: Mutex::new(HashMap::new()),
        next: AtomicUsize::new(0),
    });
    let data = web::Data::from(shared);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
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
                .route("/_bench/calls", web::get().to(calls))
        })
        .workers(1)
        .backlog(4096)
        .max_connections(100_000)
        .listen(listener)?
        .run();
        std::fs::write(port_file, format!("{port}\n"))?;
        server.await
    })
}

fn signer() -> std::io::Result<Signer> {
    let mut rng = rand::thread_rng();
    let private = rsa::RsaPrivateKey::new(&mut rng, 2048).map_err(std::io::Error::other)?;
    let pem = private
        .to_pkcs1_pem(rsa::pkcs8::LineEnding::LF)
        .map_err(std::io::Error::other)?;
    let key = EncodingKey::from_rsa_pem(pem.as_bytes()).map_err(std::io::Error::other)?;
    let public = private.to_public_key();
    let n = URL_SAFE_NO_PAD.encode(public.n().to_bytes_be());
    let e = URL_SAFE_NO_PAD.encode(public.e().to_bytes_be());
    let kid = uuid::Uuid::new_v4().simple().to_string();
    let jwk = json!({"kid": kid, "kty": "RSA", "alg": "RS256", "use": "sig", "n": n, "e": e});
    Ok(Signer { kid, key, jwk })
}

fn oauth_error(status: actix_web::http::StatusCode, error: &str) -> HttpResponse {
    HttpResponse::build(status).json(json!({"error": error}))
}

async fn token(
    realm: web::Path<String>,
    form: web::Form<HashMap<String, String>>,
    shared: web::Data<Upstream>,
) -> HttpResponse {
    use actix_web::http::StatusCode;
    shared.calls.fetch_add(1, Ordering::Relaxed);
    tokio::time::sleep(shared.latency).await;
    if form.get("grant_type").map(String::as_str) != Some("client_credentials") {
        return oauth_error(StatusCode::BAD_REQUEST, "unsupported_grant_type");
    }
    if form.get("client_id") != Some(&shared.client_id)
        || form.get("client_secret") != Some(&shared.client_secret)
    {
        return oauth_error(StatusCode::UNAUTHORIZED, "invalid_client");
    }
    let scope = form
        .get("scope")
        .map(|s| s.split_ascii_whitespace().collect::<Vec<_>>().join(" "))
        .unwrap_or_default();
    let Some((access_token, expires_in)) = shared.token_for(&realm, &scope) else {
        return oauth_error(StatusCode::INTERNAL_SERVER_ERROR, "server_error");
    };
    HttpResponse::Ok()
        .insert_header(("Cache-Control", "no-store"))
        .json(json!({
            "access_token": access_token,
            "expires_in": expires_in,
            "refresh_expires_in": 0,
            "token_type": "Bearer",
            "not-before-policy": 0,
            "scope": scope,
        }))
}

async fn certs(shared: web::Data<Upstream>) -> HttpResponse {
    HttpResponse::Ok().json(json!({"keys": [shared.signer.jwk]}))
}

async fn calls(shared: web::Data<Upstream>) -> HttpResponse {
    HttpResponse::Ok().body(shared.calls.load(Ordering::Relaxed).to_string())
}
