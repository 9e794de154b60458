//! The gateway's integration tests: one binary, real Postgres, the real issuer on
//! SoftHSM2, the real gateway on `127.0.0.1:0` (see `harness`). No mocks.
#![allow(
    clippy::disallowed_methods,
    clippy::disallowed_types,
    reason = "tests set up and inspect real state directly: SQL, the clock, the environment, anyhow"
)]

mod harness;

mod audit;
mod check_in;
mod credentials;
mod cut_after_commit;
mod deliverable;
mod edge;
mod events;
mod explain;
mod hsm_session_loss;
mod issuer_batch;
mod issuer_keepalive;
mod lifecycle;
mod mail;
mod ops;
mod pool;
mod redeem;
mod refusals;
mod register;
mod relayed;
mod reliability;
mod roles;
mod s3_secret;
mod soak_bounds;
mod transparency;
