//! What the trust root endorses a license key for: the policy's paid editions, each
//! with its features, seats and license lifetime, and the policy's license issuer
//! (`alga_protocol::trust` has the format and the appliance's check).
//!
//! The key ceremonies write an endorsement from the policy they are given; the serving
//! issuer refuses to start when its policy allows more than the active license key's
//! endorsement (an edited policy needs `alga-issuer keys certify`), so it never signs
//! a license the appliances would refuse.

use std::collections::BTreeMap;

use alga_policies::Policy;
use alga_protocol::issuer_api::Jwk;
use alga_protocol::trust::{EditionBounds, KeyEndorsement};

use crate::keyring::{KeyKind, KeyOps};

/// The most each paid edition of `policy` lets a license grant.
pub fn edition_bounds(policy: &Policy) -> BTreeMap<String, EditionBounds> {
    policy
        .editions
        .values()
        .filter_map(|e| {
            let terms = e.paid?;
            Some((
                e.name.clone(),
                EditionBounds {
                    features: e.features.clone(),
                    seats: e.seats,
                    license_lifetime_seconds: u64::try_from(terms.license_lifetime.whole_seconds())
                        .unwrap_or(0),
                },
            ))
        })
        .collect()
}

/// The endorsement of license key `key` for `policy`, valid from `nbf` to `exp`
/// (NumericDates; the ceremony passes its `now` and the root's expiry).
pub fn endorsement(policy: &Policy, key: Jwk, nbf: i64, exp: i64) -> KeyEndorsement {
    KeyEndorsement {
        key,
        iss: policy.license_issuer.clone(),
        nbf,
        exp,
        editions: edition_bounds(policy),
    }
}

/// Refuses (with what is not covered) when `policy` allows more than the endorsement
/// of the active license key, or when that key has none.
pub fn check_policy_covered<K: KeyOps>(keys: &K, policy: &Policy) -> Result<(), String> {
    let version = keys.active_version(KeyKind::License);
    let Some(e) = keys.license_endorsement(version) else {
        return Err(format!(
            "license key v{version} has no endorsement by the trust root: run `alga-issuer keys init --if-missing`"
        ));
    };
    let uncovered = e
        .endorsement
        .uncovered(&policy.license_issuer, &edition_bounds(policy));
    if uncovered.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "the policy allows more than license key v{version} is endorsed for ({}): run `alga-issuer keys certify` with this policy",
            uncovered.join("; ")
        ))
    }
}
