//! The Corti tenants one deployment vends for: each with its own client, credentials,
//! upstream budget and circuit breaker, and the default one a vend without `tenant`
//! gets.

use std::sync::Arc;

use crate::config::CortiSettings;
use crate::corti::upstream::{ResilientUpstream, UpstreamPolicy};
use crate::corti::{ClientSecret, CortiClient, CortiClientConfig};
use crate::corti::{Environment, Tenant};
use crate::metrics::Metrics;
use crate::reload::Reloader;

/// One tenant: its client behind its own retries and breaker.
pub struct TenantRoute {
    pub upstream: Arc<ResilientUpstream>,
}

impl TenantRoute {
    pub fn tenant(&self) -> &Tenant {
        self.upstream.client().tenant()
    }

    pub fn environment(&self) -> Environment {
        self.upstream.client().environment()
    }

    pub fn client(&self) -> &Arc<CortiClient> {
        self.upstream.client()
    }
}

/// Every configured tenant; the first is the default.
pub struct Tenants {
    routes: Vec<Arc<TenantRoute>>,
}

impl Tenants {
    /// A client and breaker per tenant (`settings` must not be empty: the default is
    /// the first); each secret given as a file is registered with
    /// `reloader`, so a fixed or rotated secret is used without a restart.
    pub fn build(
        settings: &[CortiSettings],
        policy: UpstreamPolicy,
        timeout: std::time::Duration,
        metrics: &Arc<Metrics>,
        reloader: &Reloader,
    ) -> Result<Self, reqwest::Error> {
        let mut routes = Vec::with_capacity(settings.len());
        for t in settings {
            let secret = ClientSecret::new(
                t.client_secret.clone(),
                t.client_secret_file.clone(),
                t.client_secret_setting.clone(),
            );
            if secret.file().is_some() {
                reloader.register(secret.clone());
            }
            let client = Arc::new(CortiClient::new(CortiClientConfig {
                auth_base_url: t.auth_url.clone(),
                tenant: t.tenant.clone(),
                environment: t.environment,
                client_id: t.client_id.clone(),
                client_secret: secret,
                timeout,
            })?);
            routes.push(Arc::new(TenantRoute {
                upstream: Arc::new(ResilientUpstream::new(client, policy, metrics.clone())),
            }));
        }
        Ok(Self { routes })
    }

    /// The tenant of a vend that names none.
    pub fn default_route(&self) -> &Arc<TenantRoute> {
        &self.routes[0]
    }

    /// The configured tenant of this name.
    pub fn get(&self, name: &Tenant) -> Option<&Arc<TenantRoute>> {
        self.routes.iter().find(|r| r.tenant() == name)
    }

    pub fn iter(&self) -> impl Iterator<Item = &Arc<TenantRoute>> {
        self.routes.iter()
    }
}
