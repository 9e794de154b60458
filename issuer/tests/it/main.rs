//! The issuer's integration tests: one binary (`cargo test -p alga-issuer --test it`).
#![allow(
    clippy::disallowed_methods,
    clippy::disallowed_types,
    reason = "tests set up and inspect real state directly: SQL, the clock, the environment, anyhow"
)]

mod hsm;
mod license_verify;
mod log_key;
mod mac_zeroized;
mod ops;
mod pin_latch;
mod pki;
mod server;
mod trust_root;
