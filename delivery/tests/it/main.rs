//! Integration tests of alga-delivery against real servers: alga-dev-s3 (S3, SigV4) and
//! Debian's aiosmtpd (SMTP). A missing server fails the test loudly; nothing is skipped.

mod mail;
mod presign;
mod servers;
