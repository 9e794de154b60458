//! Install codes (CONTRACT.md §4).
//!
//! A code is 30 Crockford base32 symbols, shown as six groups of five:
//!
//! ```text
//!   K7M2Q-9XD4T - 3HV0R-PZ6WN-1C8JE-FA5BG
//!   └ code_id ┘   └── secret (18) ─┘└check (2)
//! ```
//!
//! - `code_id`: 10 random symbols (50 bits), public, the lookup key.
//! - secret: 18 symbols (90 bits), the first 90 bits of HMAC-SHA256 (code key, in the
//!   HSM) over the code's [`CodeBinding`]. Nothing secret is stored anywhere: the
//!   issuer re-derives it from the binding to verify (or to re-send a mail).
//! - check: 2 symbols of a distance-3 code over GF(32) (see `gf32`), so a typo is
//!   caught offline, and a single mistyped symbol is located to its group.
//!
//! Input is tolerant: case-insensitive, spaces and dashes ignored, and Crockford's
//! look-alikes accepted (`I`, `L` → `1`, `O` → `0`). `U` is not a symbol.

use std::fmt;

use rand::Rng;
use serde::{Deserialize, Serialize};
use subtle::ConstantTimeEq;
use time::OffsetDateTime;
use uuid::Uuid;
use zeroize::{Zeroize, Zeroizing};

use crate::gf32;

/// Crockford's base32 alphabet.
const ALPHABET: &[u8; 32] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";
/// Symbols of the public `code_id`.
pub const CODE_ID_LEN: usize = 10;
/// Symbols of the secret part (90 bits).
pub const SECRET_LEN: usize = 18;
/// Check symbols.
pub const CHECK_LEN: usize = 2;
/// All symbols of a code.
pub const CODE_LEN: usize = CODE_ID_LEN + SECRET_LEN + CHECK_LEN;
/// Symbols per displayed group.
pub const GROUP_LEN: usize = 5;
/// Displayed groups.
pub const GROUPS: usize = CODE_LEN / GROUP_LEN;

/// Why a typed install code is not well formed. Messages name groups (1-based), never
/// the characters themselves.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CodeFormatError {
    /// Too few or too many symbols after removing spaces and dashes.
    #[error(
        "an install code has {CODE_LEN} characters ({GROUPS} groups of {GROUP_LEN}); this one has {found}"
    )]
    WrongLength { found: usize },
    /// A character that is not in the code alphabet.
    #[error(
        "character {position} of group {group} is not a valid install-code character (letters and digits only; there is no U)"
    )]
    InvalidCharacter { group: usize, position: usize },
    /// The check symbols do not match: a typo. `group` is set when a single mistyped
    /// character could be located.
    #[error("{}", match .group { Some(g) => format!("group {g} of the install code looks mistyped: compare it with the email"), None => "the install code looks mistyped: compare each group with the email".to_owned() })]
    Mistyped { group: Option<usize> },
}

/// The public identifier of a code (10 symbols); safe to log and store.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct CodeId(String);

impl CodeId {
    /// A fresh random code id from the operating system's CSPRNG.
    pub fn random() -> CodeId {
        let mut rng = rand::rngs::OsRng;
        let s: String = (0..CODE_ID_LEN)
            .map(|_| ALPHABET[rng.gen_range(0..32)] as char)
            .collect();
        CodeId(s)
    }

    /// Parses a canonical code id (10 upper-case symbols, as stored).
    pub fn parse(s: &str) -> Result<CodeId, CodeFormatError> {
        if s.len() != CODE_ID_LEN {
            return Err(CodeFormatError::WrongLength { found: s.len() });
        }
        for (i, b) in s.bytes().enumerate() {
            if !ALPHABET.contains(&b) {
                return Err(CodeFormatError::InvalidCharacter {
                    group: i / GROUP_LEN + 1,
                    position: i % GROUP_LEN + 1,
                });
            }
        }
        Ok(CodeId(s.to_owned()))
    }

    /// The canonical text (10 symbols, no dash).
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for CodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for CodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CodeId({})", self.0)
    }
}

impl TryFrom<String> for CodeId {
    type Error = CodeFormatError;
    fn try_from(s: String) -> Result<CodeId, CodeFormatError> {
        CodeId::parse(&s)
    }
}

impl From<CodeId> for String {
    fn from(c: CodeId) -> String {
        c.0
    }
}

/// A complete, well-formed install code. Holding one says nothing about whether it is
/// *valid* (that takes the issuer); it says the check symbols match.
#[derive(Clone)]
pub struct InstallCode {
    code_id: CodeId,
    /// Symbol values 0..32 of the secret part.
    secret: Zeroizing<[u8; SECRET_LEN]>,
}

impl fmt::Debug for InstallCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("InstallCode")
            .field("code_id", &self.code_id)
            .field("secret", &"[redacted]")
            .finish()
    }
}

impl InstallCode {
    /// Parses what an operator typed.
    pub fn parse(input: &str) -> Result<InstallCode, CodeFormatError> {
        let mut symbols = Zeroizing::new(Vec::with_capacity(CODE_LEN));
        let mut bad: Option<usize> = None;
        for c in input.chars() {
            if c == '-' || c.is_whitespace() {
                continue;
            }
            match symbol_value(c) {
                Some(v) => symbols.push(v),
                None => {
                    bad.get_or_insert(symbols.len());
                    symbols.push(0);
                }
            }
        }
        if symbols.len() != CODE_LEN {
            return Err(CodeFormatError::WrongLength {
                found: symbols.len(),
            });
        }
        if let Some(i) = bad {
            return Err(CodeFormatError::InvalidCharacter {
                group: i / GROUP_LEN + 1,
                position: i % GROUP_LEN + 1,
            });
        }
        let (s1, s2) = gf32::syndromes(&symbols);
        if s1 != 0 || s2 != 0 {
            let group = if s1 != 0 && s2 != 0 {
                let pos = (gf32::log(s2) + 31 - gf32::log(s1)) % 31;
                (pos < CODE_LEN).then_some(pos / GROUP_LEN + 1)
            } else {
                None
            };
            return Err(CodeFormatError::Mistyped { group });
        }
        let code_id = CodeId(
            symbols[..CODE_ID_LEN]
                .iter()
                .map(|&v| ALPHABET[v as usize] as char)
                .collect(),
        );
        let mut secret = Zeroizing::new([0u8; SECRET_LEN]);
        secret.copy_from_slice(&symbols[CODE_ID_LEN..CODE_ID_LEN + SECRET_LEN]);
        Ok(InstallCode { code_id, secret })
    }

    /// Builds the code for `code_id` from the HMAC of its binding (first 90 bits).
    pub fn from_mac(code_id: CodeId, mac: &[u8; 32]) -> InstallCode {
        let mut secret = Zeroizing::new([0u8; SECRET_LEN]);
        for (i, slot) in secret.iter_mut().enumerate() {
            let bit = i * 5;
            let mut v: u16 = u16::from(mac[bit / 8]) << 8;
            if bit / 8 + 1 < mac.len() {
                v |= u16::from(mac[bit / 8 + 1]);
            }
            // Take 5 bits starting at `bit` (MSB first); the mask makes the cast exact.
            *slot = ((v >> (11 - bit % 8)) & 0x1f) as u8;
        }
        InstallCode { code_id, secret }
    }

    /// The public part.
    pub fn code_id(&self) -> &CodeId {
        &self.code_id
    }

    /// Constant-time comparison of the secret parts (and plain comparison of the ids).
    pub fn ct_matches(&self, other: &InstallCode) -> bool {
        let same_secret: bool = self.secret.as_slice().ct_eq(other.secret.as_slice()).into();
        same_secret & (self.code_id == other.code_id)
    }

    /// The code as shown to a person: six groups of five, upper case, dashes.
    /// This is the secret: only mail bodies and the appliance's input use it.
    pub fn expose_formatted(&self) -> Zeroizing<String> {
        let mut symbols = Zeroizing::new(Vec::with_capacity(CODE_LEN));
        for b in self.code_id.0.bytes() {
            symbols.push(symbol_value(b as char).unwrap_or(0));
        }
        symbols.extend_from_slice(self.secret.as_slice());
        let (c0, c1) = gf32::check_symbols(&symbols);
        symbols.push(c0);
        symbols.push(c1);
        let mut out = Zeroizing::new(String::with_capacity(CODE_LEN + GROUPS));
        for (i, &v) in symbols.iter().enumerate() {
            if i > 0 && i % GROUP_LEN == 0 {
                out.push('-');
            }
            out.push(ALPHABET[v as usize] as char);
        }
        out
    }
}

impl Drop for InstallCode {
    fn drop(&mut self) {
        self.secret.zeroize();
    }
}

/// The value of one typed character, with Crockford's decoding aliases.
fn symbol_value(c: char) -> Option<u8> {
    let c = match c.to_ascii_uppercase() {
        'I' | 'L' => '1',
        'O' => '0',
        other => other,
    };
    ALPHABET
        .iter()
        .position(|&a| a as char == c)
        .and_then(|p| u8::try_from(p).ok())
}

/// What a code is bound to; the HMAC input. Stored (it holds no secret) with the code.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CodeBinding {
    pub code_id: CodeId,
    pub tenant_id: Uuid,
    pub edition: String,
    /// Whole seconds; anything finer is not part of the binding.
    #[serde(with = "time::serde::rfc3339")]
    pub expires_at: OffsetDateTime,
    /// Version of the code key that derived the code.
    pub key_version: u32,
    /// The appliance a rebuild's code replaces: redeeming it retires that appliance.
    /// `None`: the code adds an appliance (a first install, or a tenant's extra one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replaces_appliance_id: Option<Uuid>,
}

/// Domain separation tag of a binding that replaces nothing (every code minted before
/// replacements existed has this encoding, and still verifies).
const BINDING_TAG: &[u8] = b"alga-license/install-code/v1";
/// Domain separation tag of a binding that replaces an appliance: the v1 fields, then
/// the replaced appliance's id.
const BINDING_TAG_REPLACES: &[u8] = b"alga-license/install-code/v2-replaces";

impl CodeBinding {
    /// The exact bytes the HMAC covers: a tag, then each field length-prefixed
    /// (u32 big-endian) so no two bindings share an encoding. A replacement is part of
    /// the binding: its own tag and one more field, so a row edited to replace another
    /// appliance, or none, or to replace one when it did not, no longer verifies.
    pub fn mac_input(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(160);
        let mut field = |bytes: &[u8]| {
            // Field lengths are bounded (ids, an edition name, integers).
            out.extend_from_slice(&u32::try_from(bytes.len()).unwrap_or(u32::MAX).to_be_bytes());
            out.extend_from_slice(bytes);
        };
        field(match self.replaces_appliance_id {
            None => BINDING_TAG,
            Some(_) => BINDING_TAG_REPLACES,
        });
        field(self.code_id.as_str().as_bytes());
        field(self.tenant_id.as_bytes());
        field(self.edition.as_bytes());
        field(&self.expires_at.unix_timestamp().to_be_bytes());
        field(&self.key_version.to_be_bytes());
        if let Some(replaced) = &self.replaces_appliance_id {
            field(replaced.as_bytes());
        }
        out
    }
}

#[cfg(test)]
mod tests;
