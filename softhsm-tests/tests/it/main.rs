//! End-to-end tests of alga-license through real processes (CONTRACT.md §2).
//!
//! Each test starts its own `alga-issuer serve` (two for `two_issuers`, on the same
//! token) and one or two `alga-gateway serve` on free loopback ports, with configuration
//! files in a temporary directory derived from the local stack's (`.dev/issuer.toml`,
//! `.dev/gateway.toml`, `.dev/policy.toml`), and a fresh database (`CREATE DATABASE
//! e2e_… OWNER alga_migrator`, then `alga-gateway migrate`). They reuse the stack's dev
//! PKI, SoftHSM2 token (several issuers on one token are fine), Postgres cluster, SMTP
//! sink and S3 server, and drive the real binaries: `algactl` as the store,
//! `alga-appliance` as the appliance, `alga-audit` as security staff.
//!
//! Needs `make up` and the built binaries; `make test` provides both and exports
//! `.dev/env`. A missing variable or binary fails the test, it never skips.
#![allow(
    clippy::disallowed_methods,
    clippy::disallowed_types,
    reason = "tests set up and inspect real state directly: SQL, the clock, the environment, anyhow"
)]

mod airgap;
mod blocked;
mod essentials;
mod ha;
mod reinstall;
mod rotation_e2e;
mod seed;
mod support;
mod two_gateways;
mod two_issuers;
