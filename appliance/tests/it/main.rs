//! Integration tests of alga-appliance: one test binary (STYLE.md).
//!
//! - `offline`: code validation, Secret format, atomic writes (no stack needed);
//! - `bootstrap_db`: the bootstrap against a fresh database made via `DATABASE_URL`;
//! - `stack`: redeem, check-in and reinstall against the real local stack (`make up`).
//!
//! Environment comes from the process (`make test` exports `.dev/env`) or, failing
//! that, from the workspace's `.dev/env`; a missing variable fails the test loudly.
#![allow(
    clippy::disallowed_methods,
    clippy::disallowed_types,
    reason = "tests set up and inspect real state directly: SQL, the clock, the environment, anyhow"
)]

mod bootstrap_db;
mod common;
mod fake;
mod offline;
mod stack;
mod with_fake;
