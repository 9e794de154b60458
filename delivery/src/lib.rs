//! Delivery of install codes: the presigned ISO download link and the email that carries
//! it with the code.
//!
//! The gateway owns the outbox table and the worker loop; this crate provides the parts
//! that talk to the outside world, each testable against a real server:
//! - [`presign`]: SigV4 query-string links to the one ISO object (pure: `now` is passed in);
//! - [`mail`]: the two mail templates, header hygiene types and an SMTP sender whose
//!   errors say whether a retry can help.
//!
//! Errors: one public enum, [`Error`] (`error.rs` states the policy); no `anyhow` here
//! (only in tests). No error, `Debug` output or log line carries a secret: not the S3
//! secret key or session token, not an SMTP password, not an install code, not a
//! presigned URL's query.
#![forbid(unsafe_code)]

mod error;
pub mod mail;
pub mod presign;

pub use error::Error;
pub use mail::{
    DeliveryId, DisplayName, MailAddress, MailKind, Mailer, OutgoingMail, Sender, SmtpConfig,
    SmtpSecurity, validate_header_text,
};
pub use presign::{PresignedLink, Presigner, S3Config, S3Credentials};
