//! Secret text on the wire: codes and tokens travel in JSON between our processes, but
//! never reach a `Debug`/`Display` output or a log, and are zeroized when dropped.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use zeroize::Zeroizing;

/// A secret string (an install code, a license token). `Debug` prints `[redacted]`;
/// there is no `Display`. Read it with [`SecretText::expose`], only where it is used.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretText(Zeroizing<String>);

impl SecretText {
    /// Wraps a secret.
    pub fn new(text: String) -> SecretText {
        SecretText(Zeroizing::new(text))
    }

    /// The secret itself. Call sites are the places a secret is really used: grep for them.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for SecretText {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SecretText([redacted])")
    }
}

impl Serialize for SecretText {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for SecretText {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<SecretText, D::Error> {
        String::deserialize(d).map(SecretText::new)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_is_redacted() {
        let s = SecretText::new("hunter2".into());
        assert_eq!(format!("{s:?}"), "SecretText([redacted])");
        assert_eq!(
            serde_json::to_string(&s).expect("serializes"),
            "\"hunter2\""
        );
    }
}
