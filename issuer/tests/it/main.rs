//! The issuer's integration tests: one binary (`cargo test -p alga-issuer --test it`).

mod hsm;
mod log_key;
mod mac_zeroized;
mod ops;
mod pin_latch;
mod pki;
mod server;
mod trust_root;
