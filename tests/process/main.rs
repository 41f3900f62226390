//! The real `token-vendor` binary as a process, in one test binary: each suite spawns
//! `serve` (or several replicas of it) with generated fake secrets and speaks to it
//! from outside, over HTTP or raw TCP, as a client, an operator or an attacker would.
//! What only a process shows lives here: signals and exit codes, `kill -9` and a full
//! disk, the bytes on the wire, everything the process writes to its logs and files.

#[path = "../support/mod.rs"]
mod support;

/// Durability of "stored: true" through a full disk and `kill -9`.
mod audit_durability;
/// The connection edge: forwarded addresses, cookies, slow and oversized requests.
mod edge;
/// Three replicas sharing one Redis and one PostgreSQL.
mod fleet;
/// The hostile corpus (`tests/hostile/cases.json`) over raw TCP.
mod hostile;
/// No secret, session or token in anything a run leaves behind.
mod leak_scan;
/// SIGTERM with vends in flight.
mod lifecycle;
/// OpenTelemetry traces to a local OTLP receiver.
mod otlp;
/// The PostgreSQL server stopped and started again under a running service.
mod pg_outage;
/// Rolling back: the previous release's binary on this release's schema.
mod rollback;

use tokio::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};

/// Turns on the machine. The suites of this binary run in parallel, each taking a
/// shared turn; the few that stop the shared PostgreSQL, measure time, or count upstream
/// calls under a herd whose Redis calls have a 250 ms budget, take the machine to themselves, as they had when
/// each was a binary of its own (on 2 cores, a neighbour's herd is their noise).
static TURNS: RwLock<()> = RwLock::const_new(());

/// A turn alongside other suites.
pub async fn shared_turn() -> RwLockReadGuard<'static, ()> {
    TURNS.read().await
}

/// The machine to this suite alone, once every running suite has finished.
pub async fn alone() -> RwLockWriteGuard<'static, ()> {
    TURNS.write().await
}
