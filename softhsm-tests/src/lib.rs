//! End-to-end tests of alga-license through real processes.
//!
//! The crate has no library code: everything is in `tests/it/` (one test binary). Each
//! test starts its own `alga-issuer serve` and one or two `alga-gateway serve` on free
//! loopback ports, with its own configuration and a fresh database, and reuses the local
//! stack's dev PKI, SoftHSM2 token, Postgres cluster, SMTP sink and S3 server
//! (`make up`; `make test` exports `.dev/env`).
#![forbid(unsafe_code)]
