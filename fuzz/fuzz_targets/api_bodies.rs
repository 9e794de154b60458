//! Request bodies of the public API (serde of `protocol::api`): never panics.
#![no_main]

use alga_protocol::api::{CheckInRequest, RedeemRequest, RegisterTenantRequest, ReissueRequest};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = serde_json::from_slice::<RegisterTenantRequest>(data);
    let _ = serde_json::from_slice::<ReissueRequest>(data);
    let _ = serde_json::from_slice::<RedeemRequest>(data);
    let _ = serde_json::from_slice::<CheckInRequest>(data);
});
