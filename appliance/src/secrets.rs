//! The two Kubernetes Secret manifests the in-cluster bootstrap reads (CONTRACT.md §7).
//!
//! - `appliance-initial-tenant`: `INITIAL_TENANT_ID`.
//! - `appliance-license-seed`: `EDITION`, and for paid editions `LICENSE_TOKEN`,
//!   `APPLIANCE_CERT` (the appliance's certificate followed by its CA chain, PEM),
//!   `APPLIANCE_KEY` (its PKCS#8 private key, PEM), `CA_CERT` (the CA bundle that
//!   authenticates the license service, the one `redeem` was given),
//!   `CHECK_IN_URL`, and `TRUST_ROOT` (the trust root `redeem` was given: every later
//!   license and credential must chain to it; absent from seeds written before it
//!   existed, which then need `check-in --trust-root`).
//!
//! Both are `apiVersion: v1`, `kind: Secret`, `type: Opaque`, values base64 in `data`,
//! and are written with mode 0600 (the license seed holds a key and a token).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use serde::Deserialize;
use uuid::Uuid;
use zeroize::Zeroizing;

use alga_protocol::SecretText;

use crate::error::{Error, Result};

/// Name of the Secret carrying the tenant id.
pub const INITIAL_TENANT: &str = "appliance-initial-tenant";
/// Name of the Secret carrying the license seed.
pub const LICENSE_SEED: &str = "appliance-license-seed";

pub const KEY_INITIAL_TENANT_ID: &str = "INITIAL_TENANT_ID";
pub const KEY_EDITION: &str = "EDITION";
pub const KEY_LICENSE_TOKEN: &str = "LICENSE_TOKEN";
pub const KEY_APPLIANCE_CERT: &str = "APPLIANCE_CERT";
pub const KEY_APPLIANCE_KEY: &str = "APPLIANCE_KEY";
pub const KEY_CA_CERT: &str = "CA_CERT";
pub const KEY_CHECK_IN_URL: &str = "CHECK_IN_URL";
pub const KEY_TRUST_ROOT: &str = "TRUST_ROOT";

/// The edition without a license (CONTRACT.md §2).
pub const ESSENTIALS: &str = "essentials";

/// The manifest file of Secret `name` in `dir`: `<dir>/<name>.yaml`.
pub fn manifest_path(dir: &Path, name: &str) -> PathBuf {
    dir.join(format!("{name}.yaml"))
}

/// A Secret manifest: a name and its data (decoded). Values are zeroized on drop and
/// the `Debug` output shows only the keys.
pub struct SecretManifest {
    pub name: String,
    data: BTreeMap<String, Zeroizing<Vec<u8>>>,
}

impl std::fmt::Debug for SecretManifest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecretManifest")
            .field("name", &self.name)
            .field("keys", &self.data.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl SecretManifest {
    /// An empty Secret named `name`.
    pub fn new(name: &str) -> SecretManifest {
        SecretManifest {
            name: name.to_owned(),
            data: BTreeMap::new(),
        }
    }

    /// Sets `key` (a valid Secret key: letters, digits, `-`, `_`, `.`).
    pub fn set(&mut self, key: &str, value: &[u8]) {
        self.data
            .insert(key.to_owned(), Zeroizing::new(value.to_vec()));
    }

    /// The value of `key`, if present.
    pub fn get(&self, key: &str) -> Option<&[u8]> {
        self.data.get(key).map(|v| v.as_slice())
    }

    /// The value of `key` as UTF-8 text, if present.
    pub fn get_str(&self, key: &str) -> Result<Option<&str>> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => std::str::from_utf8(v).map(Some).map_err(|_| {
                Error::input(
                    format!("Secret {}", self.name),
                    format!("{key} is not UTF-8"),
                )
            }),
        }
    }

    /// A required text value.
    pub fn require_str(&self, key: &str) -> Result<&str> {
        self.get_str(key)?.ok_or_else(|| {
            Error::input(format!("Secret {}", self.name), format!("{key} is missing"))
        })
    }

    /// The manifest as YAML (the returned buffer is zeroized on drop).
    pub fn to_yaml(&self) -> Zeroizing<String> {
        let mut out = Zeroizing::new(String::with_capacity(1024));
        out.push_str("apiVersion: v1\nkind: Secret\nmetadata:\n  name: ");
        out.push_str(&self.name);
        out.push_str(
            "\n  labels:\n    app.kubernetes.io/managed-by: alga-appliance\ntype: Opaque\ndata:\n",
        );
        for (k, v) in &self.data {
            out.push_str("  ");
            out.push_str(k);
            out.push_str(": ");
            let enc = Zeroizing::new(B64.encode(v.as_slice()));
            out.push_str(&enc);
            out.push('\n');
        }
        out
    }

    /// Parses a manifest: it must be a v1 Opaque Secret named `expected_name`.
    pub fn from_yaml(text: &str, expected_name: &str) -> Result<SecretManifest> {
        #[derive(Deserialize)]
        #[serde(rename_all = "camelCase")]
        struct Doc {
            api_version: String,
            kind: String,
            metadata: Meta,
            #[serde(rename = "type", default)]
            type_: Option<String>,
            #[serde(default)]
            data: Option<BTreeMap<String, String>>,
        }
        #[derive(Deserialize)]
        struct Meta {
            name: String,
        }
        let what = format!("the {expected_name} Secret manifest");
        let doc: Doc = serde_yaml::from_str(text).map_err(|e| {
            // serde_yaml's message can quote the input; keep only its position.
            let at = e
                .location()
                .map(|l| format!(" at line {}", l.line()))
                .unwrap_or_default();
            Error::input(
                what.clone(),
                format!("it is not a valid Secret manifest{at}"),
            )
        })?;
        if doc.api_version != "v1" || doc.kind != "Secret" {
            return Err(Error::input(what, "it is not a v1 Secret"));
        }
        if doc.metadata.name != expected_name {
            return Err(Error::input(
                what,
                format!("it is named {:?}", doc.metadata.name),
            ));
        }
        if doc.type_.as_deref().is_some_and(|t| t != "Opaque") {
            return Err(Error::input(what, "its type is not Opaque"));
        }
        let mut m = SecretManifest::new(expected_name);
        for (k, v) in doc.data.unwrap_or_default() {
            let v = Zeroizing::new(v);
            let bytes = B64
                .decode(v.trim())
                .map_err(|_| Error::input(what.clone(), format!("{k} is not base64")))?;
            m.data.insert(k, Zeroizing::new(bytes));
        }
        Ok(m)
    }

    /// Reads `<dir>/<name>.yaml`; `None` when the file does not exist.
    pub fn load(dir: &Path, name: &str) -> Result<Option<SecretManifest>> {
        let path = manifest_path(dir, name);
        match std::fs::read(&path) {
            Ok(bytes) => {
                let bytes = Zeroizing::new(bytes);
                let text = std::str::from_utf8(&bytes)
                    .map_err(|_| Error::input(path.display().to_string(), "it is not UTF-8"))?;
                SecretManifest::from_yaml(text, name).map(Some)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::io("read", path, e)),
        }
    }
}

/// `appliance-initial-tenant` for `tenant_id`.
pub fn initial_tenant(tenant_id: Uuid) -> SecretManifest {
    let mut m = SecretManifest::new(INITIAL_TENANT);
    m.set(
        KEY_INITIAL_TENANT_ID,
        tenant_id.hyphenated().to_string().as_bytes(),
    );
    m
}

/// What a paid license seed carries besides the edition.
#[derive(Debug, Clone)]
pub struct PaidSeed {
    pub token: SecretText,
    /// Leaf certificate followed by its chain (PEM).
    pub cert_chain_pem: String,
    /// PKCS#8 PEM private key.
    pub key_pem: SecretText,
    /// The CA bundle that authenticates the license service (PEM).
    pub ca_pem: String,
    pub check_in_url: String,
    /// The pinned trust root (PEM), carried forward unchanged by every check-in.
    pub trust_root_pem: Option<String>,
}

/// The typed content of `appliance-license-seed`.
#[derive(Debug, Clone)]
pub struct LicenseSeed {
    pub edition: String,
    /// `None` for essentials.
    pub paid: Option<PaidSeed>,
}

impl LicenseSeed {
    /// As a Secret manifest.
    pub fn to_manifest(&self) -> SecretManifest {
        let mut m = SecretManifest::new(LICENSE_SEED);
        m.set(KEY_EDITION, self.edition.as_bytes());
        if let Some(p) = &self.paid {
            m.set(KEY_LICENSE_TOKEN, p.token.expose().as_bytes());
            m.set(KEY_APPLIANCE_CERT, p.cert_chain_pem.as_bytes());
            m.set(KEY_APPLIANCE_KEY, p.key_pem.expose().as_bytes());
            m.set(KEY_CA_CERT, p.ca_pem.as_bytes());
            m.set(KEY_CHECK_IN_URL, p.check_in_url.as_bytes());
            if let Some(root) = &p.trust_root_pem {
                m.set(KEY_TRUST_ROOT, root.as_bytes());
            }
        }
        m
    }

    /// From a Secret manifest: `EDITION` is required; a paid seed needs the five others
    /// (`TRUST_ROOT` is optional, see the module documentation).
    pub fn from_manifest(m: &SecretManifest) -> Result<LicenseSeed> {
        let edition = m.require_str(KEY_EDITION)?.trim().to_owned();
        if edition.is_empty() {
            return Err(Error::input("the license seed", "EDITION is empty"));
        }
        if m.get(KEY_LICENSE_TOKEN).is_none() {
            return Ok(LicenseSeed {
                edition,
                paid: None,
            });
        }
        let paid = PaidSeed {
            token: SecretText::new(m.require_str(KEY_LICENSE_TOKEN)?.trim().to_owned()),
            cert_chain_pem: m.require_str(KEY_APPLIANCE_CERT)?.to_owned(),
            key_pem: SecretText::new(m.require_str(KEY_APPLIANCE_KEY)?.to_owned()),
            ca_pem: m.require_str(KEY_CA_CERT)?.to_owned(),
            check_in_url: m.require_str(KEY_CHECK_IN_URL)?.trim().to_owned(),
            trust_root_pem: match m.get(KEY_TRUST_ROOT) {
                None => None,
                Some(_) => Some(m.require_str(KEY_TRUST_ROOT)?.to_owned()),
            },
        };
        Ok(LicenseSeed {
            edition,
            paid: Some(paid),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn yaml_round_trip() {
        let mut m = SecretManifest::new(LICENSE_SEED);
        m.set(KEY_EDITION, b"pro");
        m.set(KEY_APPLIANCE_CERT, b"-----BEGIN CERTIFICATE-----\nAA==\n");
        let y = m.to_yaml();
        let back = SecretManifest::from_yaml(&y, LICENSE_SEED).expect("parses");
        assert_eq!(back.get(KEY_EDITION), Some(&b"pro"[..]));
        assert_eq!(
            back.get(KEY_APPLIANCE_CERT),
            Some(&b"-----BEGIN CERTIFICATE-----\nAA==\n"[..])
        );
        assert!(SecretManifest::from_yaml(&y, INITIAL_TENANT).is_err());
    }

    #[test]
    fn debug_shows_no_values() {
        let mut m = SecretManifest::new(LICENSE_SEED);
        m.set(KEY_LICENSE_TOKEN, b"eyJ-secret-token");
        assert!(!format!("{m:?}").contains("eyJ"));
    }
}
