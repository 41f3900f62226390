//! The audit log against real stores: every case runs on SQLite and on PostgreSQL
//! (`TEST_DATABASE_URL`), each in a database of its own.

mod helpers;

mod cli;
mod events;
mod flood;
mod keyed;
mod outage;
mod reading;
mod tamper;
