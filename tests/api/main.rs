//! The service through its public interface, spawned in this process (one test binary:
//! one link on 2 cores). Where each kind of test goes: `tests/README.md`.

#[path = "../support/mod.rs"]
mod support;

mod browser;
mod cli;
mod dev;
mod dev_demo;
/// Replicas sharing one Redis and `TOKEN_CACHE_KEY`.
mod fleet;
mod observability;
mod operator;
mod ops;
mod probe;
/// Property tests (proptest) of the edge parsers and the problem mapping.
mod properties;
mod relay;
mod session;
mod session_introspection;
mod tenants;
mod tokens;
mod upstream;

/// The audit log against real stores: every case runs on SQLite and on PostgreSQL
/// (`TEST_DATABASE_URL`), each in a database of its own.
mod audit {
    mod cli;
    mod events;
    mod flood;
    mod jobs;
    mod keyed;
    mod lookups;
    mod outage;
    mod reading;
    mod tamper;
    mod trail;
}

/// Rate limits, token reuse, single-flight and the resilient upstream.
mod limits {
    mod api;
    /// Limits shared through a real Redis.
    mod redis;
    mod upstream;
}
