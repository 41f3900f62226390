//! Wires settings into the running service and binds the listener.

use std::net::TcpListener;
use std::sync::Arc;

use actix_web::dev::Server;
use actix_web::middleware::from_fn;
use actix_web::{web, App, HttpServer};

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
use crate::deny::DenyList;
use crate::http::{self, AppState};
use crate::lifecycle::{stop_signal, Draining};
use crate::limits::{LimitRates, Limits, RedisLimits};
use crate::metrics::Metrics;
use crate::reload::Reloader;
use crate::reuse::{FleetCache, TokenReuse};
use crate::session::SessionVerifier;
use crate::tenants::Tenants;
use crate::upstream::UpstreamPolicy;
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
        let port = listener.local_addr().map_err(|source| StartupError::Bind {
            addr: settings.listen_addr.to_string(),
            source,
        })?;
        let extra = options.extra_routes;
        let server_state = state.clone();
        let draining = state.draining.clone();
        let grace = settings.shutdown_grace;
        let server = HttpServer::new(move || {
            let extra = extra.clone();
            App::new()
                .app_data(server_state.clone())
                .wrap(from_fn(http::cors::cors_middleware))
                .wrap(from_fn(http::head_limit::head_limit_middleware))
                .wrap(from_fn(http::context::request_id_middleware))
                .configure(http::routes)
                .configure(move |cfg| {
                    if let Some(extra) = &extra {
                        extra(cfg);
                    }
                })
                .default_service(web::to(http::problem::not_found))
        })
        .listen(listener)
        .map_err(|source| StartupError::Bind {
            addr: settings.listen_addr.to_string(),
            source,
        })?
        // actix counts the grace in whole seconds; round up so it is never shorter.
        .shutdown_timeout(grace.as_secs() + u64::from(grace.subsec_nanos() > 0))
        .shutdown_signal(async move {
            stop_signal().await;
            draining.begin();
            tracing::info!(
                grace_ms = grace.as_millis() as u64,
                "stop signal: not ready, no new connections, draining in-flight requests"
            );
        })
        .run();
        Ok(Self {
            port: port.port(),
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
        metrics,
    };
    let vendor = Arc::new(vendor);
    let weak = Arc::downgrade(&vendor);
    deny.on_newly_denied(move |denied| {
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
    })
}

/// What SIGHUP and a changed file re-read: the deny list, the session key files, the
/// introspection client secret and the audit fingerprint key file.
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
