//! Integration tests of alga-delivery against real servers: alga-dev-s3 (S3, SigV4) and
//! Debian's aiosmtpd (SMTP). A missing server fails the test loudly; nothing is skipped.
#![allow(
    clippy::disallowed_methods,
    clippy::disallowed_types,
    reason = "tests set up and inspect real state directly: SQL, the clock, the environment, anyhow"
)]

mod mail;
mod presign;
mod servers;
