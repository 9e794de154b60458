//! The issuer: the isolated process that holds every key in a PKCS#11 HSM and signs
//! install codes, licenses, appliance credentials and audit checkpoints for the
//! gateway, over mTLS, within the hard bounds of the policy.
//!
//! Layout: [`hsm`] is the only module that speaks PKCS#11; [`keyring`] is the seam the
//! signing operations ([`ops`]) use; [`server`] is the mTLS API; [`config`] the file.
//! The library fails with one [`Error`]; the `hsm` module's own functions with
//! [`hsm::HsmError`], nested in it (see [`error`] for the error policy).
#![forbid(unsafe_code)]

pub mod config;
pub mod endorse;
pub mod error;
pub mod hsm;
pub mod keyring;
pub mod ops;
pub mod server;
pub mod signlog;

pub use error::Error;
