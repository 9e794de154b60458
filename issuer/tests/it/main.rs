//! The issuer's integration tests: one binary (`cargo test -p alga-issuer --test it`).

mod hsm;
mod ops;
mod pki;
mod server;
