//! The secret guard: an audit record never contains a code, a token, a PIN or a key.
//!
//! Records are permanent and readable by auditors, so a secret written into one could
//! never be removed. Every [`NewRecord`](crate::NewRecord) passes this guard when it is
//! built, and a failing guard fails the append (and so the caller's action): a record
//! that *looks* like it carries a secret is a bug to fix, not to log.
//!
//! Two checks, on every key and string in the record (actor identity, request id,
//! subject keys and values, detail keys and values at any depth):
//!
//! - **Names** ([`secret_like_key`]): `code`, `install_code`, `token`, `pin`, `key`,
//!   `password`, `secret`, `csr`… and any `_`/`-`/`.`-separated name containing such a
//!   word (`license_token`, `hsm_pin`, `private_key`). `code` is allowed next to a word
//!   that makes it a label rather than the code (`code_id`, `error_code`,
//!   `code_expires_at`).
//! - **Values** ([`secret_like_text`]): an install code (30 Crockford symbols, grouped
//!   or not), a JWT (`eyJ…` header, or three long base64url parts), or a PEM block.
//!
//! The rules err on the side of refusing: a false positive costs a renamed field.

use crate::error::AuditError;
use crate::record::Record;
use serde_json::Value;

/// Why a key or value was refused, in words (never the value itself).
pub type Reason = &'static str;

/// Words that, as a whole name or as one part of a name, mark a secret.
const SECRET_WORDS: &[&str] = &[
    "token",
    "tokens",
    "jwt",
    "pin",
    "pins",
    "privkey",
    "password",
    "passwd",
    "pwd",
    "passphrase",
    "secret",
    "secrets",
    "csr",
    "hmac",
    "seed",
    "authorization",
    "cookie",
];

/// Words that name a secret unless a label word makes the name a label of it.
const LABELLED_WORDS: &[&str] = &["code", "codes", "key", "keys"];

/// Words that make `code` or `key` a label rather than the thing itself
/// (`code_id`, `error_code`, `key_version`, `key_fingerprint`).
const LABEL_WORDS: &[&str] = &[
    "id",
    "ids",
    "state",
    "status",
    "error",
    "reason",
    "country",
    "expires",
    "expiry",
    "at",
    "count",
    "kind",
    "version",
    "http",
    "fingerprint",
    "sha256",
    "type",
    "alg",
    "algorithm",
];

/// Whether a key names something secret. Case-insensitive; `-` and `.` separate words
/// like `_`.
pub fn secret_like_key(key: &str) -> Option<Reason> {
    let lower = key.to_ascii_lowercase();
    let words: Vec<&str> = lower
        .split(['_', '-', '.'])
        .filter(|w| !w.is_empty())
        .collect();
    let compact: String = words.concat();
    if ["installcode", "apikey", "privatekey", "clientsecret"].contains(&compact.as_str()) {
        return Some("the key names a secret");
    }
    if words.iter().any(|w| SECRET_WORDS.contains(w)) {
        return Some("the key names a secret (token, PIN, key, password, secret, CSR…)");
    }
    if words.iter().any(|w| LABELLED_WORDS.contains(w))
        && !words.iter().any(|w| LABEL_WORDS.contains(w))
    {
        return Some(
            "the key names a code or key (labels such as `code_id` or `key_version` are fine)",
        );
    }
    None
}

/// Whether a string looks like an install code, a JWT or a PEM block.
pub fn secret_like_text(s: &str) -> Option<Reason> {
    if s.len() < 20 {
        return None;
    }
    if s.contains("-----BEGIN") || s.to_ascii_uppercase().contains("PRIVATE KEY") {
        return Some("the value contains a PEM block");
    }
    if looks_like_jwt(s) {
        return Some("the value looks like a JWT");
    }
    if looks_like_install_code(s) {
        return Some("the value looks like an install code");
    }
    None
}

/// Checks a whole record. The error names the field, never the value.
pub(crate) fn check_record(r: &Record) -> Result<(), AuditError> {
    let refuse = |path: String, reason: Reason| AuditError::SecretLike { path, reason };
    if let Some(id) = r.actor.identity()
        && let Some(why) = secret_like_text(id)
    {
        return Err(refuse("actor.identity".into(), why));
    }
    if let Some(id) = &r.request_id
        && let Some(why) = secret_like_text(id)
    {
        return Err(refuse("request_id".into(), why));
    }
    for (k, v) in &r.subjects {
        if let Some(why) = secret_like_key(k).or_else(|| secret_like_text(v)) {
            return Err(refuse(format!("subjects.{k}"), why));
        }
    }
    for (k, v) in &r.details {
        check_value(&format!("details.{k}"), k, v).map_err(|(p, why)| refuse(p, why))?;
    }
    Ok(())
}

fn check_value(path: &str, key: &str, v: &Value) -> Result<(), (String, Reason)> {
    if let Some(why) = secret_like_key(key) {
        return Err((path.to_owned(), why));
    }
    match v {
        Value::String(s) => match secret_like_text(s) {
            Some(why) => Err((path.to_owned(), why)),
            None => Ok(()),
        },
        Value::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                // Array items inherit the array's key (already checked).
                check_value(&format!("{path}[{i}]"), "", item)?;
            }
            Ok(())
        }
        Value::Object(map) => {
            for (k, item) in map {
                check_value(&format!("{path}.{k}"), k, item)?;
            }
            Ok(())
        }
        Value::Null | Value::Bool(_) | Value::Number(_) => Ok(()),
    }
}

/// A Crockford base32 symbol, including the look-alikes a typist may use (I, L, O).
fn is_code_symbol(b: u8) -> bool {
    b.is_ascii_alphanumeric() && !matches!(b, b'u' | b'U')
}

/// 30 code symbols as one run (dashes allowed between them), or six groups of five
/// separated by spaces and/or dashes. A real code has at least one digit with
/// near certainty (all-letter codes are 1 in 77,000), which keeps prose out.
fn looks_like_install_code(s: &str) -> bool {
    let b = s.as_bytes();
    // Runs of [0-9A-Za-z-].
    let mut i = 0;
    while i < b.len() {
        if b[i].is_ascii_alphanumeric() || b[i] == b'-' {
            let start = i;
            while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'-') {
                i += 1;
            }
            let run = &b[start..i];
            let symbols = run.iter().filter(|c| **c != b'-').count();
            if symbols == 30
                && run.iter().all(|c| *c == b'-' || is_code_symbol(*c))
                && run.iter().any(u8::is_ascii_digit)
            {
                return true;
            }
        } else {
            i += 1;
        }
    }
    // Groups of exactly five symbols separated by spaces or dashes.
    let mut groups = 0;
    let mut digit = false;
    for word in s.split([' ', '-', '\t']) {
        if word.is_empty() {
            continue;
        }
        if word.len() == 5 && word.bytes().all(is_code_symbol) {
            groups += 1;
            digit |= word.bytes().any(|c| c.is_ascii_digit());
            if groups >= 6 && digit {
                return true;
            }
        } else {
            groups = 0;
            digit = false;
        }
    }
    false
}

fn is_b64url(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'-' || b == b'_'
}

/// A run of base64url parts joined by dots: three or more parts whose first is a JSON
/// header (`eyJ`), or three parts of at least 16 characters each.
fn looks_like_jwt(s: &str) -> bool {
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if is_b64url(b[i]) {
            let start = i;
            while i < b.len() && (is_b64url(b[i]) || b[i] == b'.') {
                i += 1;
            }
            let parts: Vec<&[u8]> = b[start..i].split(|c| *c == b'.').collect();
            for w in parts.windows(3) {
                let header = w[0].starts_with(b"eyJ") && w[0].len() >= 10 && !w[1].is_empty();
                let long = w.iter().all(|p| p.len() >= 16);
                if header || long {
                    return true;
                }
            }
        } else {
            i += 1;
        }
    }
    false
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests fail by panicking
mod tests {
    use super::*;

    #[test]
    fn secret_keys_are_refused() {
        for k in [
            "code",
            "install_code",
            "installCode",
            "Install-Code",
            "token",
            "license_token",
            "access.token",
            "pin",
            "hsm_pin",
            "key",
            "private_key",
            "api-key",
            "password",
            "admin_password",
            "secret",
            "client_secret",
            "csr",
            "csr_pem",
            "jwt",
            "passphrase",
        ] {
            assert!(secret_like_key(k).is_some(), "{k} should be refused");
        }
    }

    #[test]
    fn label_keys_are_allowed() {
        for k in [
            "code_id",
            "revoked_code_ids",
            "error_code",
            "code_expires_at",
            "kid",
            "key_version",
            "key_fingerprint",
            "jti",
            "serial",
            "edition",
            "hostname",
            "keyboard",
            "pinned",
            "tokenizer",
        ] {
            assert!(secret_like_key(k).is_none(), "{k} should be allowed");
        }
    }

    #[test]
    fn install_codes_in_any_shape_are_refused() {
        for s in [
            "K7M2Q-9XD4T-3HV0R-PZ6WN-1C8JE-FA5BG",
            "k7m2q-9xd4t-3hv0r-pz6wn-1c8je-fa5bg",
            "K7M2Q9XD4T3HV0RPZ6WN1C8JEFA5BG",
            "K7M2Q 9XD4T 3HV0R PZ6WN 1C8JE FA5BG",
            "K7M2Q-9XD4T - 3HV0R-PZ6WN-1C8JE-FA5BG",
            "the code was K7M2Q-9XD4T-3HV0R-PZ6WN-1C8JE-FA5BG, typed twice",
            "code=K7M2Q9XD4T3HV0RPZ6WN1C8JEFA5BG",
        ] {
            assert!(secret_like_text(s).is_some(), "{s}");
        }
    }

    #[test]
    fn ordinary_values_are_allowed() {
        for s in [
            "0190f2a4-7b5c-7d3e-8f00-123456789abc",
            "spiffe://alga.test/tenant/0190f2a4-7b5c-7d3e-8f00-123456789abc/appliance/5f1c2d3e-0000-4000-8000-000000000001",
            "appliance-01.customer.example.internal",
            "Acme Corporation International Holdings Limited",
            "there were three small white birds there today",
            "591deee4a90dc82e1bd562a60c88e68e942d9a01900c6d5562a7a9019524db87",
            "v1.2.3-rc.1+build.2025.06.30",
            "K7M2Q9XD4T",
            "alga-license 1.4.2 (debian 12)",
        ] {
            assert!(secret_like_text(s).is_none(), "{s}");
        }
    }

    #[test]
    fn jwts_and_pem_are_refused() {
        let jwt =
            "eyJhbGciOiJFUzI1NiIsImtpZCI6ImxpYy0xIn0.eyJzdWIiOiJ4In0.c2lnbmF0dXJlc2lnbmF0dXJl";
        assert!(secret_like_text(jwt).is_some());
        assert!(secret_like_text(&format!("Bearer {jwt}")).is_some());
        assert!(
            secret_like_text("aaaaaaaaaaaaaaaaaaaa.bbbbbbbbbbbbbbbbbbbb.cccccccccccccccccccc")
                .is_some()
        );
        assert!(secret_like_text("-----BEGIN CERTIFICATE REQUEST-----\nMIIB\n-----END").is_some());
        assert!(secret_like_text("BEGIN EC PRIVATE KEY material here").is_some());
    }
}
