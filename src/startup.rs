//! Wires settings into the running service and binds the listener.

use std::net::TcpListener;
use std::sync::Arc;

use actix_http::{HttpService, KeepAlive};
use actix_service::{map_config, IntoServiceFactory, ServiceFactoryExt};
use actix_web::dev::{AppConfig, Server};
use actix_web::middleware::from_fn;
use actix_web::{web, App};

use crate::audit::flood::FloodGuard;
use crate::audit::keys::{ChainKey, NoteSigner};
use crate::audit::store::SqlAuditStore;
use crate::audit::writer::{WriterConfig, WriterKeys};
use crate::audit::{AuditStore, Auditor, FingerprintKeyFile, Fingerprinter};
use crate::background::spawn_while_alive;
use crate::browser::OriginPolicy;
use crate::config::{
    ConfigError, ServeSettings, AUDIT_SIGNING_KEY, DENY_LIST_FILE, RATE_LIMIT_REDIS_URL,
    TENANTS_KEY, TOKEN_CACHE_KEY,
};
use crate::corti::tenants::Tenants;
use crate::corti::upstream::UpstreamPolicy;
use crate::deny::DenyList;
use crate::http::{self, AppState};
use crate::lifecycle::{stop_signal, Draining};
use crate::limits::{LimitRates, Limits, RedisLimits};
use crate::metrics::Metrics;
use crate::relay::Relay;
use crate::reload::Reloader;
use crate::reuse::{FleetCache, TokenReuse};
use crate::session::SessionVerifier;
use crate::vend::Vendor;

/// Why the service could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("cannot bind {addr}: {source}")]
    Bind {
        addr: String,
        source: std::io::Error,
    },
    #[error("cannot build the HTTP client: {0}")]
    HttpClient(#[from] reqwest::Error),
    #[error("audit store: {0}")]
    Audit(String),
}

/// The least time allowed to open Corti's speech socket (TCP, TLS, HTTP upgrade).
const RELAY_CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// How long the first request's head may take to arrive (actix answers 408 then).
pub const REQUEST_HEAD_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// How often files behind reloadable settings are checked for a change.
const RELOAD_POLL: std::time::Duration = std::time::Duration::from_secs(1);

/// Extra routes mounted beside the API (the `dev` demo page).
pub type ExtraRoutes = Arc<dyn Fn(&mut web::ServiceConfig) + Send + Sync>;

/// Optional parts a caller (tests, `dev`) may supply.
#[derive(Default)]
pub struct Options {
    pub audit_store: Option<Arc<dyn AuditStore>>,
    /// How repeated refusals are aggregated; `None` for [`FloodGuard::default`].
    pub audit_flood: Option<FloodGuard>,
    pub extra_routes: Option<ExtraRoutes>,
    /// An already-bound listener to serve on instead of binding `LISTEN_ADDR`
    /// (`dev` binds first so it knows its port before it lists its own origins).
    pub listener: Option<TcpListener>,
}

/// A bound, not yet running, service.
pub struct Application {
    port: u16,
    server: Server,
    state: web::Data<AppState>,
}

impl Application {
    /// Builds the service from complete settings.
    pub async fn build(settings: ServeSettings) -> Result<Self, StartupError> {
        Self::build_with(settings, Options::default()).await
    }

    pub async fn build_with(
        settings: ServeSettings,
        options: Options,
    ) -> Result<Self, StartupError> {
        let metrics = Arc::new(Metrics::new());
        let store: Arc<dyn AuditStore> = match options.audit_store {
            Some(store) => store,
            None => Arc::new(
                SqlAuditStore::open_reporting(
                    &settings.database_url,
                    writer_keys(&settings)?,
                    WriterConfig {
                        watch_every: Some(TRAIL_CHECK_EVERY),
                        ..WriterConfig::default()
                    },
                    metrics.audit_writer(),
                )
                .await
                .map_err(|e| StartupError::Audit(e.to_string()))?,
            ),
        };
        let flood = options.audit_flood.unwrap_or_default();
        let state = web::Data::new(app_state(&settings, store, flood, metrics)?);
        spawn_flood_flusher(&state.auditor);
        state
            .reloader
            .spawn(&state.clone().into_inner(), RELOAD_POLL);
        let listener = match options.listener {
            Some(listener) => listener,
            None => {
                TcpListener::bind(settings.listen_addr).map_err(|source| StartupError::Bind {
                    addr: settings.listen_addr.to_string(),
                    source,
                })?
            }
        };
        let extra = options.extra_routes;
        let server_state = state.clone();
        let body_gate = web::Data::new(http::body_gate::BodyGate::default());
        let draining = state.draining.clone();
        let relay = state.relay.clone();
        let grace = settings.shutdown_grace;
        let local = listener.local_addr().map_err(|source| StartupError::Bind {
            addr: settings.listen_addr.to_string(),
            source,
        })?;
        // actix-web's `HttpServer`, built by hand so that each connection's stream can be
        // watched for the requests actix's parser refuses itself (`http::connection`).
        // The settings are `HttpServer`'s defaults.
        let builder = actix_server::Server::build();
        let graceful = builder.graceful_shutdown_signal();
        let server = builder
            .listen("token-vendor", listener, move || {
                let extra = extra.clone();
                let app = App::new()
                    .app_data(server_state.clone())
                    .app_data(body_gate.clone())
                    .wrap(from_fn(http::cors::cors_middleware))
                    .wrap(from_fn(http::head_limit::head_limit_middleware))
                    .wrap(from_fn(http::context::request_id_middleware))
                    .configure(http::routes)
                    .configure(move |cfg| {
                        if let Some(extra) = &extra {
                            extra(cfg);
                        }
                    })
                    .default_service(web::to(http::problem::not_found));
                let graceful = graceful.clone();
                let app = app
                    .into_factory()
                    .map_err(|e: actix_web::Error| e.error_response());
                let http = HttpService::build()
                    // Each request counts itself on its connection (`request_id_middleware`).
                    .on_connect_ext(|io: &http::connection::Traced<_>, ext| {
                        ext.insert(io.accepted());
                    })
                    // Idle kept-alive connections close at once on SIGTERM.
                    .graceful_shutdown_signal(move || {
                        let graceful = graceful.clone();
                        async move { graceful.notified().await }
                    })
                    .keep_alive(KeepAlive::default())
                    .client_request_timeout(REQUEST_HEAD_TIMEOUT)
                    .client_disconnect_timeout(std::time::Duration::from_secs(1))
                    .local_addr(local)
                    // The host is only used for requests without a `Host` header.
                    .finish(map_config(app, |_| AppConfig::default()));
                http::connection::WatchedFactory {
                    http,
                    state: server_state.clone(),
                }
            })
            .map_err(|source| StartupError::Bind {
                addr: settings.listen_addr.to_string(),
                source,
            })?
            // actix counts the grace in whole seconds; round up so it is never shorter.
            .shutdown_timeout(grace.as_secs() + u64::from(grace.subsec_nanos() > 0))
            .shutdown_signal(async move {
                stop_signal().await;
                draining.begin();
                relay.drain(grace);
                tracing::info!(
                    grace_ms = grace.as_millis() as u64,
                    "stop signal: not ready, no new connections, draining in-flight requests"
                );
            })
            .run();
        Ok(Self {
            port: local.port(),
            server,
            state,
        })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Shared state, for code that runs beside the server (tests, `dev`).
    pub fn state(&self) -> web::Data<AppState> {
        self.state.clone()
    }

    /// Serves until SIGTERM/SIGINT, then drains in-flight requests (at most
    /// `SHUTDOWN_GRACE`), writes the aggregated refusals still being counted and signs
    /// a last audit checkpoint.
    ///
    /// Every request that was answered waited for its own event's commit, so once the
    /// server has stopped the only events left to commit are those aggregated refusals.
    pub async fn run_until_stopped(self) -> std::io::Result<()> {
        let result = self.server.await;
        self.state.auditor.close().await;
        tracing::info!("token-vendor stopped");
        result
    }
}

/// How often the service checks its own audit trail against the database: a rewrite
/// under the running service is reported within about this long.
const TRAIL_CHECK_EVERY: std::time::Duration = std::time::Duration::from_secs(2);

/// The audit chain key (from AUDIT_HMAC_KEY) and checkpoint signer (AUDIT_SIGNING_KEY).
fn writer_keys(settings: &ServeSettings) -> Result<WriterKeys, StartupError> {
    let signer = match &settings.audit_signing_key {
        Some(key) => Some(Arc::new(
            NoteSigner::parse(key).map_err(|e| AUDIT_SIGNING_KEY.error(e.0))?,
        )),
        None => {
            tracing::warn!("AUDIT_SIGNING_KEY is not set: no signed audit checkpoints, so `audit verify` cannot detect a truncated tail or a deleted chain");
            None
        }
    };
    Ok(WriterKeys {
        chain: ChainKey::derive(&settings.audit_hmac_key),
        signer,
    })
}

/// Writes the aggregated events of closed flood windows once a second, until the
/// service's auditor is gone.
fn spawn_flood_flusher(auditor: &Auditor) {
    let weak = auditor.downgrade();
    spawn_while_alive(std::time::Duration::from_secs(1), move || {
        let auditor = Auditor::upgrade(&weak)?;
        Some(async move { auditor.flush_floods(false).await })
    });
}

/// Fleet-wide reuse when Redis and `TOKEN_CACHE_KEY` are both set; start-up says once
/// when reuse stays per replica although replicas share Redis.
fn fleet_cache(
    settings: &ServeSettings,
    metrics: &Arc<Metrics>,
) -> Result<Option<Arc<FleetCache>>, StartupError> {
    let Some(url) = settings.rate_limit_redis_url.as_deref() else {
        return Ok(None);
    };
    let Some(key) = &settings.token_cache_key else {
        tracing::warn!(
            "token reuse is per replica: set {} to share live tokens through Redis",
            TOKEN_CACHE_KEY.name
        );
        return Ok(None);
    };
    let fleet = FleetCache::connect(url, key, settings.upstream_timeout, metrics.clone())
        .map_err(|e| ConfigError::new(RATE_LIMIT_REDIS_URL.name, e.to_string()))?;
    Ok(Some(fleet))
}

fn app_state(
    settings: &ServeSettings,
    store: Arc<dyn AuditStore>,
    flood: FloodGuard,
    metrics: Arc<Metrics>,
) -> Result<AppState, StartupError> {
    if settings.tenants.is_empty() {
        return Err(ConfigError::new(TENANTS_KEY, "no Corti tenant is configured").into());
    }
    let reloader = Reloader::new();
    let refused = metrics.clone();
    reloader.on_refused(move |_item| refused.reload_refused());
    let tenants = Tenants::build(
        &settings.tenants,
        UpstreamPolicy::with_deadline(settings.upstream_timeout),
        settings.upstream_timeout,
        &metrics,
        &reloader,
    )?;
    let jwks_http = reqwest::Client::builder()
        .connect_timeout(std::time::Duration::from_secs(3))
        .timeout(std::time::Duration::from_secs(5))
        // A redirect could lead key fetches to a host nobody configured.
        .redirect(reqwest::redirect::Policy::none())
        .build()?;
    let sessions = SessionVerifier::from_settings(&settings.session, jwks_http)?;
    let fingerprinter = Fingerprinter::new(settings.audit_hmac_key.clone());
    let deny = Arc::new(match &settings.deny_list_file {
        Some(path) => DenyList::load(path).map_err(|e| DENY_LIST_FILE.error(e))?,
        None => DenyList::none(),
    });
    register_reloadables(settings, &reloader, &sessions, &fingerprinter, &deny);
    let gauge = metrics.clone();
    deny.report_size(move |entries| gauge.deny_list_entries(entries));
    let auditor = Auditor::with_flood_guard(store, flood);
    let origins = OriginPolicy::new(settings.allowed_origins.iter().cloned());
    if let Some(cache) = sessions.jwks() {
        metrics.watch_jwks("session", None, cache.stale_gauge());
        // Fetch at once, so a wrong SESSION_JWKS_URL is in the log at start-up and
        // readiness does not wait for the first probe; a failure is logged by the fetch.
        let cache = cache.clone();
        tokio::spawn(async move {
            if let Ok(keys) = cache.refresh_now().await {
                tracing::info!(jwks_url = %cache.url(), keys, "session keys loaded");
            }
        });
    }
    for t in tenants.iter() {
        if let Some(cache) = t.client().keys().jwks() {
            metrics.watch_jwks("corti", Some(t.tenant().as_str()), cache.stale_gauge());
        }
    }
    let redis = settings
        .rate_limit_redis_url
        .as_deref()
        .map(|url| RedisLimits::connect(url, metrics.clone()))
        .transpose()
        .map_err(|e| ConfigError::new(RATE_LIMIT_REDIS_URL.name, e.to_string()))?;
    let fleet = fleet_cache(settings, &metrics)?;
    log_start(settings, &deny, fleet.is_some(), &fingerprinter);
    let vendor = Vendor {
        sessions,
        origins: origins.clone(),
        tenants,
        auditor: auditor.clone(),
        fingerprinter,
        limits: Limits::new(
            LimitRates {
                per_ip: settings.rate_limit_per_ip,
                per_user: settings.rate_limit_per_user,
                upstream: settings.upstream_rate_limit,
            },
            redis,
            metrics.clone(),
        ),
        reuse: TokenReuse::new(settings.token_reuse_min_ttl).with_fleet(fleet),
        deny: deny.clone(),
        metrics: metrics.clone(),
    };
    let relay_metrics = metrics.relay();
    let vendor = Arc::new(vendor);
    let relay = Arc::new(Relay::new(
        &settings.relay,
        &settings.tenants,
        settings.upstream_timeout.max(RELAY_CONNECT_TIMEOUT),
        relay_metrics,
    ));
    let weak = Arc::downgrade(&vendor);
    let weak_relay = Arc::downgrade(&relay);
    deny.on_newly_denied(move |denied| {
        if let Some(relay) = weak_relay.upgrade() {
            relay.deny(&denied);
        }
        let (Some(vendor), Ok(runtime)) = (weak.upgrade(), tokio::runtime::Handle::try_current())
        else {
            return;
        };
        runtime.spawn(async move { vendor.forget_denied(denied).await });
    });
    Ok(AppState {
        vendor,
        auditor,
        origins,
        trusted_proxies: settings.trusted_proxies.clone(),
        cookie_name: settings.session.cookie_name.clone(),
        audit_reader_role: settings.audit_reader_role.clone(),
        draining: Draining::default(),
        reloader,
        relay,
    })
}

/// What SIGHUP and a changed file re-read: the deny list, the session key files (or,
/// on SIGHUP, the session JWKS), the introspection client secret and the audit
/// fingerprint key file.
fn register_reloadables(
    settings: &ServeSettings,
    reloader: &Reloader,
    sessions: &SessionVerifier,
    fingerprinter: &Fingerprinter,
    deny: &Arc<DenyList>,
) {
    if settings.deny_list_file.is_some() {
        reloader.register(deny.clone());
    }
    if let Some(introspector) = sessions.introspector() {
        reloader.register(introspector.clone());
    }
    if let Some(cache) = sessions.jwks() {
        reloader.register(Arc::new(crate::session::jwks::RefetchOnReload(
            cache.clone(),
        )));
    }
    if let Some(keys) = sessions.reloadable() {
        use crate::reload::Reloadable;
        if !keys.paths().is_empty() {
            reloader.register(keys);
        }
    }
    if let Some(path) = &settings.audit_hmac_key_file {
        reloader.register(Arc::new(FingerprintKeyFile {
            path: path.clone(),
            fingerprinter: fingerprinter.clone(),
        }));
    }
}

/// One line at start with what this replica runs on, so a wrong tenant, store, key or
/// deny list shows before the first vend does.
fn log_start(
    settings: &ServeSettings,
    deny: &DenyList,
    fleet: bool,
    fingerprinter: &Fingerprinter,
) {
    let tenants: Vec<String> = settings
        .tenants
        .iter()
        .enumerate()
        .map(|(i, t)| {
            let default = if i == 0 { ", default" } else { "" };
            format!("{} ({}{default})", t.tenant, t.environment.as_str())
        })
        .collect();
    let signing_key = match &settings.audit_signing_key {
        // `name+id`: the public part of the key's text, as in `audit keygen`'s verifier.
        Some(key) => NoteSigner::parse(key)
            .map(|s| {
                s.verifier()
                    .text()
                    .splitn(3, '+')
                    .take(2)
                    .collect::<Vec<_>>()
                    .join("+")
            })
            .unwrap_or_else(|_| "unreadable".into()),
        None => "none (checkpoints unsigned)".into(),
    };
    let session_keys = match &settings.session.keys {
        crate::config::SessionKeys::Secret(_) => "SESSION_JWT_SECRET".to_owned(),
        crate::config::SessionKeys::PublicKeyFile(p) => {
            format!("SESSION_JWT_PUBLIC_KEY_FILE {}", p.display())
        }
        crate::config::SessionKeys::Jwks(url) => {
            format!("SESSION_JWKS_URL {}", crate::config::redact_url(url))
        }
        crate::config::SessionKeys::Introspection(i) => {
            format!(
                "SESSION_INTROSPECTION_URL {}",
                crate::config::redact_url(&i.url)
            )
        }
    };
    let redis = settings
        .rate_limit_redis_url
        .as_deref()
        .map_or_else(|| "off".to_owned(), crate::config::redact_url_password);
    let deny_list = match &settings.deny_list_file {
        Some(path) => format!("{} ({} entries)", path.display(), deny.current().len()),
        None => "none".into(),
    };
    tracing::info!(
        version = env!("CARGO_PKG_VERSION"),
        commit = crate::metrics::BUILD_COMMIT,
        tenants = %tenants.join(", "),
        store = %crate::audit::db::display_target(&settings.database_url),
        redis = %redis,
        shared_limits = settings.rate_limit_redis_url.is_some(),
        token_reuse = if settings.token_reuse_min_ttl.is_zero() { "off" } else if fleet { "fleet-wide (Redis)" } else { "per replica" },
        session_keys = %session_keys,
        audit_signing_key = %signing_key,
        audit_hmac_key_id = %fingerprinter.key_id(),
        deny_list = %deny_list,
        "token-vendor starting"
    );
}

/// Raises the soft limit on open files to the hard limit, so connections (each a file
/// descriptor) run out only where the operator set the ceiling, not at a distribution's
/// low default soft limit. Returns the limit in force, when it could be read.
#[cfg(unix)]
pub fn raise_open_file_limit() -> Option<u64> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read or write the struct passed by pointer.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return None;
    }
    if limit.rlim_cur < limit.rlim_max {
        let raised = libc::rlimit {
            rlim_cur: limit.rlim_max,
            rlim_max: limit.rlim_max,
        };
        // SAFETY: as above.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            tracing::info!(
                from = limit.rlim_cur,
                to = limit.rlim_max,
                "raised the open-file limit to its hard limit"
            );
            return Some(limit.rlim_max);
        }
        tracing::warn!(
            limit = limit.rlim_cur,
            "could not raise the open-file limit"
        );
    }
    Some(limit.rlim_cur)
}

#[cfg(not(unix))]
pub fn raise_open_file_limit() -> Option<u64> {
    None
}
