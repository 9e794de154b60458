//! The issuer: the isolated process that holds every key in a PKCS#11 HSM and signs
//! install codes, licenses, appliance credentials and audit checkpoints for the
//! gateway, over mTLS, within the hard bounds of the policy.
//!
//! Layout: [`hsm`] is the only module that speaks PKCS#11; [`keyring`] is the seam the
//! signing operations ([`ops`]) use; [`server`] is the mTLS API; [`config`] the file.
#![forbid(unsafe_code)]

pub mod config;
pub mod endorse;
pub mod hsm;
pub mod keyring;
pub mod ops;
pub mod server;
pub mod signlog;
