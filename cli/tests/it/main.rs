//! `algactl` against the local stack (`make up`), through the built binary: every
//! command's help and options, the success paths with their output checked, and bad
//! input with its error and exit status. The stack's `.dev/env` is required: without it
//! (or with the gateway down) these tests fail, they are never skipped.
//!
//! - `commands`: the command tree and its options (none takes a secret), registration,
//!   the auditor's export, verify and tail;
//! - `stack`: the store's lifecycle commands (reissue, editions, suspension, appliance
//!   lists) and a tenant's records proven in the transparency log;
//! - `refusals`: usage errors, missing settings, identity files, unreachable and
//!   untrusted gateways, certificates the service did not issue or does not allow;
//! - `fake_gateway`: a TLS stand-in for the gateway serving what a test chooses (a
//!   tampered proof bundle);
//! - `support`: the harness.
#![allow(
    clippy::disallowed_methods,
    clippy::disallowed_types,
    reason = "tests set up and inspect real state directly: SQL, the clock, the environment, anyhow"
)]

mod commands;
mod fake_gateway;
mod refusals;
mod stack;
mod support;
