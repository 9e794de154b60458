//! Key ceremonies: `token init` (development and tests),
//! `keys init|list|rotate|certify|trust-root`.
//!
//! These run in the `alga-issuer` binary, on the calling thread, with one session of
//! their own; they are the only code that creates objects on the token. Serving
//! ([`super::Hsm::open`]) never does. Every ceremony either completes or destroys what
//! it created.

use std::fmt;
use std::io::Write;

use base64::Engine as _;
use cryptoki::session::UserType;
use secrecy::SecretString;
use serde::Serialize;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use tracing::instrument;

use super::error::{HsmError, map_cryptoki};
use super::objects::{Created, Inventory, RootSigner, create_key, kind_order};
use super::token::{Token, find_slot, login, module};
use crate::config::HsmConfig;
use crate::keyring::{KeyInfo, KeyKind};

/// What `token init` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenInitOutcome {
    /// A free slot was initialized with the label, and the user PIN set.
    Initialized { label: String },
    /// A token with the label already existed; nothing was changed.
    AlreadyInitialized { label: String },
}

impl fmt::Display for TokenInitOutcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TokenInitOutcome::Initialized { label } => write!(f, "token {label} initialized"),
            TokenInitOutcome::AlreadyInitialized { label } => {
                write!(f, "token {label} already initialized")
            }
        }
    }
}

/// Initializes a token labelled `config.token_label` on the first slot without an
/// initialized token (SoftHSM always offers one) and sets its user PIN. For
/// development and tests: production tokens are set up with the vendor's tools.
#[instrument(skip_all, fields(hsm.token = %config.token_label))]
pub fn token_init(
    config: &HsmConfig,
    so_pin: SecretString,
    user_pin: SecretString,
) -> Result<TokenInitOutcome, HsmError> {
    let label = config.token_label.clone();
    if label.is_empty() || label.len() > 32 {
        return Err(HsmError::Config {
            reason: "hsm.token_label must be 1 to 32 bytes".into(),
        });
    }
    let pkcs11 = module(&config.module)?;
    if find_slot(&pkcs11, &label)?.is_some() {
        return Ok(TokenInitOutcome::AlreadyInitialized { label });
    }
    let mut free = None;
    for slot in pkcs11.get_slots_with_token().map_err(map_cryptoki)? {
        if !pkcs11
            .get_token_info(slot)
            .map_err(map_cryptoki)?
            .token_initialized()
        {
            free = Some(slot);
            break;
        }
    }
    let slot = free.ok_or_else(|| HsmError::NoFreeSlot {
        label: label.clone(),
    })?;
    pkcs11
        .init_token(slot, &so_pin, &label)
        .map_err(map_cryptoki)?;

    // SoftHSM moves the new token to another slot id: look it up again by label.
    let slot = find_slot(&pkcs11, &label)?.ok_or_else(|| HsmError::TokenNotFound {
        label: label.clone(),
    })?;
    let session = pkcs11.open_rw_session(slot).map_err(map_cryptoki)?;
    login(&session, UserType::So, &so_pin)?;
    session.init_pin(&user_pin).map_err(map_cryptoki)?;
    session.logout().map_err(map_cryptoki)?;
    tracing::info!("token initialized");
    Ok(TokenInitOutcome::Initialized { label })
}

/// What `keys init` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeysInitOutcome {
    /// The v1 keys (with the root's and the CA's certificates, and the root's
    /// certificate of the CA and endorsement of the license key) were created.
    Created { label: String, keys: Vec<KeyInfo> },
    /// `--if-missing` on a token made before the trust root or the log key existed:
    /// what was added.
    Completed { label: String, added: Vec<String> },
    /// `--if-missing` and the complete set was already there: nothing changed.
    AlreadyComplete { label: String },
}

impl fmt::Display for KeysInitOutcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeysInitOutcome::Created { label, keys } => {
                write!(f, "created on token {label}:")?;
                for key in keys {
                    let extra = match key.kind {
                        KeyKind::Root => " (with root certificate)",
                        KeyKind::ApplianceCa => " (with CA certificate, certified by the root)",
                        KeyKind::License => " (endorsed by the root)",
                        _ => "",
                    };
                    write!(
                        f,
                        "\n  {} {}{extra}",
                        key.kid,
                        key.fingerprint.as_deref().unwrap_or("-")
                    )?;
                }
                Ok(())
            }
            KeysInitOutcome::Completed { label, added } => {
                write!(f, "completed on token {label}:")?;
                for a in added {
                    write!(f, "\n  {a}")?;
                }
                Ok(())
            }
            KeysInitOutcome::AlreadyComplete { label } => {
                write!(f, "keys already initialized on token {label}")
            }
        }
    }
}

/// Creates version 1 of every key kind, the root's and the appliance CA's
/// certificates, the root's certificate of the CA and its endorsement of the license
/// key (from `policy`).
///
/// On a token that already holds alga keys: without `if_missing` that is an error;
/// with it, a token made before the trust root or the log key existed is completed
/// (the root, its certificate of every CA version, its endorsement of the active
/// license key; the log key), a complete one is left alone, and one lacking any other
/// key is an error naming what is missing.
#[instrument(skip_all, fields(hsm.token = %config.token_label))]
pub fn keys_init(
    config: &HsmConfig,
    pin: SecretString,
    policy: &alga_policies::Policy,
    now: OffsetDateTime,
    if_missing: bool,
) -> Result<KeysInitOutcome, HsmError> {
    let token = Token::find(config)?;
    let session = token.user_session(&pin)?;
    let inventory = Inventory::load(&session)?;
    let label = token.label.clone();
    if !inventory.keys.is_empty() {
        if !if_missing {
            let present: Vec<&str> = inventory.keys.iter().map(|k| k.kid.as_str()).collect();
            return Err(HsmError::AlreadyInitialized {
                label,
                present: present.join(", "),
            });
        }
        if inventory.missing().is_empty() {
            return Ok(KeysInitOutcome::AlreadyComplete { label });
        }
        let lacking: Vec<String> = inventory
            .lacking()
            .into_iter()
            .filter(|k| !KeyKind::ADDED_LATER.contains(k))
            .map(|k| format!("{k} key"))
            .collect();
        if !lacking.is_empty() {
            return Err(HsmError::PartialKeySet {
                label,
                missing: lacking.join(", "),
            });
        }
        let mut created = Created::default();
        return match complete(&session, inventory, policy, now, &mut created) {
            Ok(added) => {
                tracing::info!(added = added.len(), "key set completed");
                Ok(KeysInitOutcome::Completed { label, added })
            }
            Err(e) => {
                created.roll_back(&session);
                Err(e)
            }
        };
    }

    let mut created = Created::default();
    let mut keys = Vec::new();
    for kind in KeyKind::ALL {
        match create_key(&session, kind, 1, now, &mut created) {
            Ok(info) => keys.push(info),
            Err(e) => {
                created.roll_back(&session);
                return Err(e);
            }
        }
    }
    let certified = Inventory::load(&session)
        .and_then(|inventory| complete(&session, inventory, policy, now, &mut created));
    if let Err(e) = certified {
        created.roll_back(&session);
        return Err(e);
    }
    tracing::info!(policy.trust_domain = %policy.trust_domain, "keys initialized");
    Ok(KeysInitOutcome::Created { label, keys })
}

/// Adds what a token made before the trust root or the log key lacks, when it has
/// every other key: the root itself, its certificate of each CA version, its
/// endorsement of the active license key, then the log key. Returns a line per object
/// added.
fn complete(
    session: &cryptoki::session::Session,
    mut inventory: Inventory,
    policy: &alga_policies::Policy,
    now: OffsetDateTime,
    created: &mut Created,
) -> Result<Vec<String>, HsmError> {
    let mut added = Vec::new();
    if inventory.max_version(KeyKind::Root).is_none() {
        let root = create_key(session, KeyKind::Root, 1, now, created)?;
        added.push(format!("{} (with root certificate)", root.kid));
        inventory = Inventory::load(session)?;
    }
    let root = RootSigner::newest(session, &inventory)?.ok_or_else(|| HsmError::KeysMissing {
        label: super::kid(KeyKind::Root, 1),
        missing: "the root's certificate".into(),
    })?;
    for ca in &inventory.ca_certificates {
        if ca.certified.is_none() {
            root.certify_ca(session, ca.version, &ca.der, created)?;
            added.push(format!(
                "the root's certificate of {}",
                super::kid(KeyKind::ApplianceCa, ca.version)
            ));
        }
    }
    if let Some(active) = inventory.max_version(KeyKind::License)
        && !inventory.endorsements.iter().any(|e| e.version == active)
    {
        endorse(session, &root, &inventory, active, policy, now, created)?;
        added.push(format!(
            "the root's endorsement of {}",
            super::kid(KeyKind::License, active)
        ));
    }
    if inventory.max_version(KeyKind::Log).is_none() {
        let log = create_key(session, KeyKind::Log, 1, now, created)?;
        added.push(log.kid);
    }
    Ok(added)
}

/// The root endorses license key `version` for `policy`, from `now` until the root
/// expires.
fn endorse(
    session: &cryptoki::session::Session,
    root: &RootSigner,
    inventory: &Inventory,
    version: u32,
    policy: &alga_policies::Policy,
    now: OffsetDateTime,
    created: &mut Created,
) -> Result<alga_protocol::trust::KeyEndorsement, HsmError> {
    let info = inventory
        .versions(KeyKind::License)
        .find(|k| k.version == version)
        .ok_or(HsmError::UnknownKey {
            kind: KeyKind::License,
            version,
        })?;
    let jwk = crate::ops::jwks::jwk(info).map_err(|e| HsmError::InvalidObject {
        label: info.kid.clone(),
        reason: e.to_string(),
    })?;
    let root_until = root_not_after(&root.der)?;
    let endorsement = crate::endorse::endorsement(policy, jwk, now.unix_timestamp(), root_until);
    root.endorse(session, version, &endorsement, created)?;
    Ok(endorsement)
}

/// The root certificate's `notAfter` (NumericDate).
fn root_not_after(der: &[u8]) -> Result<i64, HsmError> {
    use x509_parser::prelude::{FromDer, X509Certificate};
    let (_, cert) = X509Certificate::from_der(der).map_err(|_| HsmError::Certificate {
        reason: "the root certificate does not parse".into(),
    })?;
    Ok(cert.validity().not_after.timestamp())
}

/// `keys certify`: the root endorses the active license key again, from the policy
/// given (after its editions changed), replacing the earlier endorsement. Licenses
/// already signed keep the endorsement they carry. Returns the new endorsement.
#[instrument(skip_all, fields(hsm.token = %config.token_label))]
pub fn keys_certify(
    config: &HsmConfig,
    pin: SecretString,
    policy: &alga_policies::Policy,
    now: OffsetDateTime,
) -> Result<alga_protocol::trust::KeyEndorsement, HsmError> {
    let token = Token::find(config)?;
    let session = token.user_session(&pin)?;
    let inventory = Inventory::load(&session)?;
    let root = RootSigner::newest(&session, &inventory)?.ok_or_else(|| HsmError::KeysMissing {
        label: token.label.clone(),
        missing: "missing: root key (run `keys init --if-missing`)".into(),
    })?;
    let version = inventory
        .max_version(KeyKind::License)
        .ok_or_else(|| HsmError::KeysMissing {
            label: token.label.clone(),
            missing: "missing: license key".into(),
        })?;
    let mut created = Created::default();
    match endorse(
        &session,
        &root,
        &inventory,
        version,
        policy,
        now,
        &mut created,
    ) {
        Ok(e) => {
            tracing::info!(key.kid = %e.key.kid, "license key endorsed");
            Ok(e)
        }
        Err(e) => {
            created.roll_back(&session);
            Err(e)
        }
    }
}

/// `keys trust-root`: the trust root's certificates (PEM), the file appliances pin.
#[instrument(skip_all, fields(hsm.token = %config.token_label))]
pub fn keys_trust_root(config: &HsmConfig, pin: SecretString) -> Result<String, HsmError> {
    let token = Token::find(config)?;
    let session = token.user_session(&pin)?;
    let inventory = Inventory::load(&session)?;
    if inventory.roots.is_empty() {
        return Err(HsmError::KeysMissing {
            label: token.label.clone(),
            missing: "missing: root key (run `keys init --if-missing`)".into(),
        });
    }
    Ok(inventory
        .roots
        .iter()
        .map(|r| alga_protocol::trust::pem_of(&r.der))
        .collect())
}

/// Every version of every key kind on the token, ordered by kind then version.
#[instrument(skip_all, fields(hsm.token = %config.token_label))]
pub fn keys_list(config: &HsmConfig, pin: SecretString) -> Result<Vec<KeyInfo>, HsmError> {
    let token = Token::find(config)?;
    let session = token.user_session(&pin)?;
    let mut keys = Inventory::load(&session)?.keys;
    keys.sort_by_key(|k| (kind_order(k.kind), k.version));
    Ok(keys)
}

/// Creates version max+1 of `kind` (for `ca`, with a new CA certificate and the
/// root's certificate of it; for `license`, with the root's endorsement from
/// `policy`; for `log`, a new Ed25519 key, hence a new signed-note key id that
/// witnesses and verifiers must be given). Old versions stay on the token and stay
/// published. The root itself is not rotated here: appliances pin it (SECURITY.md,
/// "Changing the trust root").
#[instrument(skip_all, fields(hsm.token = %config.token_label, key.kind = %kind))]
pub fn keys_rotate(
    config: &HsmConfig,
    pin: SecretString,
    kind: KeyKind,
    policy: &alga_policies::Policy,
    now: OffsetDateTime,
) -> Result<KeyInfo, HsmError> {
    if kind == KeyKind::Root {
        return Err(HsmError::Config {
            reason: "the trust root is pinned by every appliance and is not rotated by `keys rotate` (SECURITY.md: changing the trust root)".into(),
        });
    }
    let token = Token::find(config)?;
    let session = token.user_session(&pin)?;
    let inventory = Inventory::load(&session)?;
    inventory.check_complete(&token.label)?;
    let version = inventory
        .max_version(kind)
        .unwrap_or(0)
        .checked_add(1)
        .ok_or_else(|| HsmError::Config {
            reason: format!("no version left for {kind}"),
        })?;
    let mut created = Created::default();
    let rotated = create_key(&session, kind, version, now, &mut created).and_then(|info| {
        let root =
            RootSigner::newest(&session, &inventory)?.ok_or_else(|| HsmError::KeysMissing {
                label: token.label.clone(),
                missing: "missing: root key".into(),
            })?;
        let inventory = Inventory::load(&session)?;
        match kind {
            KeyKind::ApplianceCa => {
                let ca = inventory
                    .ca_certificates
                    .iter()
                    .find(|c| c.version == version)
                    .ok_or_else(|| HsmError::Certificate {
                        reason: format!("no certificate for CA key version {version}"),
                    })?;
                root.certify_ca(&session, version, &ca.der, &mut created)?;
            }
            KeyKind::License => {
                endorse(
                    &session,
                    &root,
                    &inventory,
                    version,
                    policy,
                    now,
                    &mut created,
                )?;
            }
            _ => {}
        }
        Ok(info)
    });
    match rotated {
        Ok(info) => {
            tracing::info!(key.kid = %info.kid, policy.trust_domain = %policy.trust_domain, "key rotated");
            Ok(info)
        }
        Err(e) => {
            created.roll_back(&session);
            Err(e)
        }
    }
}

/// One row of `keys list --json`.
#[derive(Debug, Serialize)]
struct KeyRow<'a> {
    kid: &'a str,
    kind: &'a str,
    version: u32,
    /// `ec-p256`, `ed25519` or `hmac-sha256`.
    r#type: &'static str,
    /// Whether this is the highest version of its kind.
    active: bool,
    fingerprint: Option<&'a str>,
    created: String,
    /// DER SubjectPublicKeyInfo, base64 (key pairs only).
    public_key: Option<String>,
}

fn rows(keys: &[KeyInfo]) -> Vec<KeyRow<'_>> {
    keys.iter()
        .map(|k| KeyRow {
            kid: &k.kid,
            kind: k.kind.as_str(),
            version: k.version,
            r#type: k.kind.algorithm().as_str(),
            active: keys
                .iter()
                .filter(|o| o.kind == k.kind)
                .all(|o| o.version <= k.version),
            fingerprint: k.fingerprint.as_deref(),
            created: k
                .created
                .format(&Rfc3339)
                .unwrap_or_else(|_| k.created.to_string()),
            public_key: k
                .public_key_spki
                .as_deref()
                .map(|spki| base64::engine::general_purpose::STANDARD.encode(spki)),
        })
        .collect()
}

/// Prints the key list to stdout: a table, or with `json` an array of objects
/// (`kid`, `kind`, `version`, `type`, `active`, `fingerprint`, `created`, `public_key`).
pub fn print_key_list(keys: &[KeyInfo], json: bool) -> Result<(), HsmError> {
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    write_key_list(&mut out, keys, json)?;
    out.flush()?;
    Ok(())
}

/// [`print_key_list`] into any writer.
pub fn write_key_list(out: &mut impl Write, keys: &[KeyInfo], json: bool) -> Result<(), HsmError> {
    let rows = rows(keys);
    if json {
        serde_json::to_writer_pretty(&mut *out, &rows).map_err(std::io::Error::other)?;
        writeln!(out)?;
        return Ok(());
    }
    writeln!(
        out,
        "{:<18} {:<7} {:<12} {:<6} {:<64} CREATED",
        "KID", "KIND", "TYPE", "ACTIVE", "FINGERPRINT"
    )?;
    for r in rows {
        writeln!(
            out,
            "{:<18} {:<7} {:<12} {:<6} {:<64} {}",
            r.kid,
            r.kind,
            r.r#type,
            if r.active { "yes" } else { "" },
            r.fingerprint.unwrap_or("-"),
            r.created
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    fn key(kind: KeyKind, version: u32) -> KeyInfo {
        KeyInfo {
            kind,
            version,
            kid: super::super::kid(kind, version),
            public_key_spki: kind.is_key_pair().then(|| vec![1, 2, 3]),
            fingerprint: Some(format!("{:064}", version)),
            created: datetime!(2026-01-02 03:04:05 UTC),
        }
    }

    #[test]
    fn json_list_marks_the_active_version() {
        let keys = [
            key(KeyKind::License, 1),
            key(KeyKind::License, 2),
            key(KeyKind::Code, 1),
            key(KeyKind::Log, 1),
        ];
        let mut out = Vec::new();
        write_key_list(&mut out, &keys, true).expect("writes");
        let v: serde_json::Value = serde_json::from_slice(&out).expect("json");
        assert_eq!(v[0]["kid"], "alga-license-v1");
        assert_eq!(v[0]["active"], false);
        assert_eq!(v[1]["active"], true);
        assert_eq!(v[2]["type"], "hmac-sha256");
        assert_eq!(v[2]["public_key"], serde_json::Value::Null);
        assert_eq!(v[0]["public_key"], "AQID");
        assert_eq!(v[0]["created"], "2026-01-02T03:04:05Z");
        assert_eq!(v[0]["type"], "ec-p256");
        assert_eq!(v[3]["kind"], "log");
        assert_eq!(v[3]["type"], "ed25519");
        assert_eq!(v[3]["active"], true);
    }

    #[test]
    fn table_has_a_header_and_one_line_per_key() {
        let keys = [key(KeyKind::Audit, 1)];
        let mut out = Vec::new();
        write_key_list(&mut out, &keys, false).expect("writes");
        let text = String::from_utf8(out).expect("utf-8");
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2, "{text}");
        assert!(lines[0].starts_with("KID"));
        assert!(lines[1].starts_with("alga-audit-v1"));
        assert!(lines[1].contains("2026-01-02T03:04:05Z"));
    }
}
