//! The service through its public interface, in one test binary (one link on 2 cores).
//! Suites that stop a shared server, or install a global subscriber, have their own.

#[path = "../support/mod.rs"]
mod support;

mod browser;
mod cli;
mod dev;
mod dev_demo;
mod observability;
mod operator;
mod ops;
mod probe;
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
    mod upstream;
}
