//! token-vendor: vends limited-scope Corti tokens to signed-in browsers, so browser
//! code can open Corti's speech WebSockets without ever seeing the client secret.

pub mod address;
pub mod audit;
pub mod background;
pub mod browser;
pub mod catalog;
pub mod cli;
pub mod config;
pub mod corti;
pub mod deny;
pub mod dev;
pub mod http;
pub mod lifecycle;
pub mod limits;
pub mod metrics;
pub mod probe;
pub mod redis_link;
pub mod relay;
pub mod reload;
pub mod reuse;
pub mod scope;
pub mod session;
pub mod startup;
pub mod telemetry;
pub mod text;
pub mod vend;
