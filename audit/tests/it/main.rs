//! Integration tests of the audit log against a real Postgres (`DATABASE_URL`, a
//! superuser; each test makes its own database).
#![allow(
    clippy::disallowed_methods,
    clippy::disallowed_types,
    reason = "tests set up and inspect real state directly: SQL, the clock, the environment, anyhow"
)]
// Tests fail by panicking: unwrap is the assertion.
#![allow(clippy::unwrap_used)]

mod chain;
mod cli;
mod concurrent;
mod loadgen;
mod log_cli;
mod props;
mod reconcile;
mod schema;
mod secrets;
mod support;
mod tamper;
mod tamper_random;
mod tree;
