//! Types shared by the processes: install codes and their binding, SPIFFE identities,
//! secrets on the wire, and the issuer's API. No I/O here, except `config_file`: the
//! one reader of the servers' configuration files and of every file that holds one
//! secret (the S3 credentials file, `key=value` lines, is `alga_delivery`'s).
#![forbid(unsafe_code)]

pub mod api;
pub mod code;
pub mod config_file;
pub mod csr;
mod gf32;
pub mod issuer_api;
pub mod offline;
pub mod secret;
pub mod signlog;
pub mod spiffe;
pub mod trust;

pub use code::{CodeBinding, CodeFormatError, CodeId, InstallCode};
pub use secret::SecretText;
pub use spiffe::ApplianceIdentity;
