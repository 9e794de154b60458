//! Process-wide PKCS#11 state: the loaded module, the token's slot, logged-in sessions.
//!
//! `C_Initialize` runs once per process and module path (a `OnceLock` over a map of
//! loaded modules): every `Hsm`, admin command and test in the process shares it, and
//! it is never finalized (finalizing under live sessions of another `Hsm` would break
//! them). The slot is found by token label on every lookup, because SoftHSM moves a
//! token to a random slot id when it is initialized and lists empty slots too.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::session::{Session, UserType};
use cryptoki::slot::Slot;
use secrecy::SecretString;
use tracing::instrument;

use super::error::{HsmError, is_already_initialized, is_already_logged_in, map_cryptoki};
use crate::config::HsmConfig;

/// Loaded and initialized modules, by canonical path.
static MODULES: OnceLock<Mutex<HashMap<PathBuf, Pkcs11>>> = OnceLock::new();

/// The loaded, initialized module at `path` (loading and initializing it on first use).
pub(crate) fn module(path: &Path) -> Result<Pkcs11, HsmError> {
    let load_error = |reason: String| HsmError::ModuleLoad {
        path: path.to_owned(),
        reason,
    };
    let key = path
        .canonicalize()
        .map_err(|e| load_error(format!("{}", e.kind())))?;
    let modules = MODULES.get_or_init(|| Mutex::new(HashMap::new()));
    // A poisoned lock only means another thread panicked while holding it; the map
    // itself is always consistent (one insert), so keep using it.
    let mut modules = modules.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(pkcs11) = modules.get(&key) {
        return Ok(pkcs11.clone());
    }
    let pkcs11 = Pkcs11::new(&key).map_err(|e| load_error(e.to_string()))?;
    match pkcs11.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK)) {
        Ok(()) => {}
        Err(e) if is_already_initialized(&e) => {}
        Err(e) => return Err(load_error(map_cryptoki(e).to_string())),
    }
    tracing::debug!(hsm.module = %key.display(), "PKCS#11 module initialized");
    modules.insert(key, pkcs11.clone());
    Ok(pkcs11)
}

/// The module and the slot of the configured token.
#[derive(Debug, Clone)]
pub(crate) struct Token {
    pub(crate) pkcs11: Pkcs11,
    pub(crate) slot: Slot,
    pub(crate) label: String,
    /// `C_Login` calls made through [`Token::user_session`] by this token and its
    /// clones (an `Hsm`'s open and its workers), whatever the answer.
    pub(crate) login_calls: Arc<AtomicU64>,
}

impl Token {
    /// Loads the module and finds the slot whose initialized token has the configured label.
    pub(crate) fn find(config: &HsmConfig) -> Result<Token, HsmError> {
        let pkcs11 = module(&config.module)?;
        let slot =
            find_slot(&pkcs11, &config.token_label)?.ok_or_else(|| HsmError::TokenNotFound {
                label: config.token_label.clone(),
            })?;
        Ok(Token {
            pkcs11,
            slot,
            label: config.token_label.clone(),
            login_calls: Arc::new(AtomicU64::new(0)),
        })
    }

    /// Looks the token up by label again and follows it to its current slot.
    pub(crate) fn refresh_slot(&mut self) -> Result<(), HsmError> {
        self.slot =
            find_slot(&self.pkcs11, &self.label)?.ok_or_else(|| HsmError::TokenNotFound {
                label: self.label.clone(),
            })?;
        Ok(())
    }

    /// Opens a read-write session and logs the user in ("already logged in" is success).
    #[instrument(skip_all)]
    pub(crate) fn user_session(&self, pin: &SecretString) -> Result<Session, HsmError> {
        let session = self
            .pkcs11
            .open_rw_session(self.slot)
            .map_err(map_cryptoki)?;
        self.login_calls.fetch_add(1, Ordering::Relaxed);
        login(&session, UserType::User, pin)?;
        Ok(session)
    }
}

/// Logs `session` in as `user`; "already logged in" is success.
#[instrument(skip_all)]
pub(crate) fn login(session: &Session, user: UserType, pin: &SecretString) -> Result<(), HsmError> {
    match session.login(user, Some(pin)) {
        Ok(()) => Ok(()),
        Err(e) if is_already_logged_in(&e) => Ok(()),
        Err(e) => Err(map_cryptoki(e)),
    }
}

/// The slot holding an initialized token labelled `label`, if any. Two tokens with the
/// same label are refused rather than guessed between.
pub(crate) fn find_slot(pkcs11: &Pkcs11, label: &str) -> Result<Option<Slot>, HsmError> {
    let mut found = None;
    for slot in pkcs11.get_slots_with_token().map_err(map_cryptoki)? {
        let info = pkcs11.get_token_info(slot).map_err(map_cryptoki)?;
        if info.token_initialized() && info.label() == label {
            if found.is_some() {
                return Err(HsmError::TokenAmbiguous {
                    label: label.to_owned(),
                });
            }
            found = Some(slot);
        }
    }
    Ok(found)
}
