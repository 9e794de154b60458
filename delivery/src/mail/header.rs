//! Header hygiene: text that ends up in a mail header can only be built valid.
//!
//! The store sends us names, company names and addresses typed by customers. A CR or LF
//! in any of them is a header (or SMTP command) injection; other control characters and
//! Unicode line separators and bidi overrides make headers lie to the reader. lettre
//! encodes what it is given, but does not refuse these, so we do, at the edge: the
//! gateway's API validation calls [`validate_header_text`] and [`MailAddress::parse`],
//! and the mail types accept only [`DisplayName`] and [`MailAddress`].
//!
//! Error messages name the field and a position, never echo the value (it is hostile
//! input, and it would land in logs).

use std::fmt;
use std::str::FromStr;

use lettre::message::Mailbox;
use serde::Deserialize;

/// Longest accepted single-line header text (a name, a company), in characters.
pub const MAX_HEADER_TEXT_CHARS: usize = 256;
/// Longest accepted email address, in bytes (RFC 5321's path limit minus the brackets).
pub const MAX_ADDRESS_LEN: usize = 254;

/// Why a value cannot go into a mail header.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HeaderError {
    /// Empty or only whitespace.
    #[error("{field} must not be empty")]
    Empty {
        /// The API field (e.g. `contact.name`).
        field: String,
    },
    /// Longer than the limit.
    #[error("{field} is longer than {max} characters")]
    TooLong {
        /// The API field.
        field: String,
        /// The limit.
        max: usize,
    },
    /// A control character (CR, LF, NUL, TAB, DEL, C1 …): the classic header and SMTP
    /// command injection.
    #[error("{field} contains a control character ({codepoint}) at position {position}")]
    ControlCharacter {
        /// The API field.
        field: String,
        /// 1-based character position.
        position: usize,
        /// The character as `U+XXXX`.
        codepoint: String,
    },
    /// A Unicode line/paragraph separator, bidirectional override or invisible format
    /// character: not an injection in SMTP, but it makes a header display other than it
    /// reads.
    #[error(
        "{field} contains a disallowed formatting character ({codepoint}) at position {position}"
    )]
    FormattingCharacter {
        /// The API field.
        field: String,
        /// 1-based character position.
        position: usize,
        /// The character as `U+XXXX`.
        codepoint: String,
    },
    /// The RFC 2047 encoded-word opener `=?`: a receiver would decode it into text
    /// the sender never wrote (lettre leaves ASCII text as is).
    #[error(
        "{field} contains \"=?\" at position {position}, which mail programs decode as encoded text"
    )]
    EncodedWordLike {
        /// The API field.
        field: String,
        /// 1-based character position of the `=`.
        position: usize,
    },
    /// Not an email address we can send to (syntax, or lettre refuses it).
    #[error("{field} is not a valid email address: {reason}")]
    InvalidAddress {
        /// The API field.
        field: String,
        /// What is wrong (never the address itself).
        reason: &'static str,
    },
    /// A delivery (outbox) id that cannot go into a `Message-ID`.
    #[error("a delivery id is 1-64 letters, digits, - and _")]
    InvalidDeliveryId,
}

/// Checks that `value` can be one line of a mail header: not blank, at most
/// [`MAX_HEADER_TEXT_CHARS`] characters, no control characters (CR, LF, NUL, TAB, DEL, C1)
/// no Unicode separators, bidi controls or invisible formatting characters, and no `=?`
/// (which receivers would decode as an RFC 2047 encoded word).
///
/// `field` names the API field in the error. The gateway calls this on `company` and
/// `contact.name` so the API refuses what the mail could not carry.
pub fn validate_header_text(field: &str, value: &str) -> Result<(), HeaderError> {
    if value.trim().is_empty() {
        return Err(HeaderError::Empty {
            field: field.to_owned(),
        });
    }
    check_characters(field, value)?;
    if let Some(at) = value.find("=?") {
        return Err(HeaderError::EncodedWordLike {
            field: field.to_owned(),
            position: value[..at].chars().count() + 1,
        });
    }
    if value.chars().count() > MAX_HEADER_TEXT_CHARS {
        return Err(HeaderError::TooLong {
            field: field.to_owned(),
            max: MAX_HEADER_TEXT_CHARS,
        });
    }
    Ok(())
}

/// Refuses control and formatting characters; the first one found is reported.
fn check_characters(field: &str, value: &str) -> Result<(), HeaderError> {
    for (i, c) in value.chars().enumerate() {
        let codepoint = || format!("U+{:04X}", u32::from(c));
        if c.is_control() {
            return Err(HeaderError::ControlCharacter {
                field: field.to_owned(),
                position: i + 1,
                codepoint: codepoint(),
            });
        }
        if is_formatting(c) {
            return Err(HeaderError::FormattingCharacter {
                field: field.to_owned(),
                position: i + 1,
                codepoint: codepoint(),
            });
        }
    }
    Ok(())
}

/// Unicode characters that change how surrounding text is laid out or hide in it.
fn is_formatting(c: char) -> bool {
    matches!(c,
        '\u{2028}' | '\u{2029}'            // line and paragraph separators
        | '\u{200B}'..='\u{200F}'          // zero-width space/joiners, LRM, RLM
        | '\u{202A}'..='\u{202E}'          // bidi embeddings and overrides
        | '\u{2060}'..='\u{2064}'          // word joiner, invisible operators
        | '\u{2066}'..='\u{2069}'          // bidi isolates
        | '\u{FEFF}'                       // BOM / zero-width no-break space
        | '\u{FFF9}'..='\u{FFFB}'          // interlinear annotation
    )
}

/// A person's or company's name, fit for a header phrase or a subject: one line of
/// printable text, trimmed, at most [`MAX_HEADER_TEXT_CHARS`] characters. Any script is
/// fine; lettre encodes non-ASCII as RFC 2047 encoded words.
#[derive(Clone, PartialEq, Eq)]
pub struct DisplayName(String);

impl DisplayName {
    /// Parses a name for the API field `field`; surrounding whitespace is dropped.
    pub fn parse(field: &str, value: &str) -> Result<DisplayName, HeaderError> {
        let trimmed = value.trim_matches(|c: char| c == ' ');
        validate_header_text(field, trimmed)?;
        Ok(DisplayName(trimmed.to_owned()))
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for DisplayName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

impl fmt::Display for DisplayName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// An email address we will put into `To`/`From` and the SMTP envelope: plain ASCII
/// `local@domain`, accepted by lettre, at most [`MAX_ADDRESS_LEN`] bytes, with none of
/// the characters that could restructure a header even if quoted (whitespace, quotes,
/// angle brackets, commas, semicolons, parentheses, backslashes).
///
/// Internationalized addresses (RFC 6531) are refused: they need SMTPUTF8 on every hop,
/// and a mail with the install code must not bounce for that.
#[derive(Clone, PartialEq, Eq)]
pub struct MailAddress(lettre::Address);

impl MailAddress {
    /// Parses an address for the API field `field`.
    pub fn parse(field: &str, value: &str) -> Result<MailAddress, HeaderError> {
        let invalid = |reason| HeaderError::InvalidAddress {
            field: field.to_owned(),
            reason,
        };
        if value.is_empty() {
            return Err(HeaderError::Empty {
                field: field.to_owned(),
            });
        }
        check_characters(field, value)?;
        if value.len() > MAX_ADDRESS_LEN {
            return Err(HeaderError::TooLong {
                field: field.to_owned(),
                max: MAX_ADDRESS_LEN,
            });
        }
        if !value.is_ascii() {
            return Err(invalid("only ASCII addresses are supported"));
        }
        if value
            .chars()
            .any(|c| c.is_whitespace() || "\"<>,;()\\[]:".contains(c))
        {
            return Err(invalid(
                "an address may not contain spaces, quotes, brackets, commas, semicolons, colons or backslashes",
            ));
        }
        let address = lettre::Address::from_str(value).map_err(|_| invalid("bad syntax"))?;
        if !address.domain().contains('.') {
            return Err(invalid("the domain must be a fully qualified name"));
        }
        Ok(MailAddress(address))
    }

    /// The address as typed (validated).
    pub fn as_str(&self) -> &str {
        self.0.as_ref()
    }

    /// The domain part (used for `Message-ID`s).
    pub fn domain(&self) -> &str {
        self.0.domain()
    }

    pub(crate) fn lettre(&self) -> &lettre::Address {
        &self.0
    }
}

impl fmt::Debug for MailAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

impl fmt::Display for MailAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The configured sender, `Name <address>` or `address` (the `from` key of `[smtp]`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub struct Sender {
    name: Option<DisplayName>,
    address: MailAddress,
}

impl Sender {
    /// A sender from its parts.
    pub fn new(name: Option<DisplayName>, address: MailAddress) -> Sender {
        Sender { name, address }
    }

    /// Parses `Name <address>` or a bare address, with the same hygiene as customer
    /// input.
    pub fn parse(value: &str) -> Result<Sender, HeaderError> {
        const FIELD: &str = "smtp.from";
        check_characters(FIELD, value)?;
        let mailbox = Mailbox::from_str(value.trim()).map_err(|_| HeaderError::InvalidAddress {
            field: FIELD.to_owned(),
            reason: "expected `Name <address>` or `address`",
        })?;
        let address = MailAddress::parse(FIELD, mailbox.email.as_ref())?;
        let name = match mailbox.name.as_deref() {
            None | Some("") => None,
            Some(n) => Some(DisplayName::parse(FIELD, n)?),
        };
        Ok(Sender { name, address })
    }

    /// The envelope and `From` address.
    pub fn address(&self) -> &MailAddress {
        &self.address
    }

    /// The display name, if any.
    pub fn name(&self) -> Option<&DisplayName> {
        self.name.as_ref()
    }

    pub(crate) fn mailbox(&self) -> Mailbox {
        Mailbox::new(
            self.name.as_ref().map(|n| n.0.clone()),
            self.address.lettre().clone(),
        )
    }
}

impl TryFrom<String> for Sender {
    type Error = HeaderError;
    fn try_from(s: String) -> Result<Sender, HeaderError> {
        Sender::parse(&s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_text_table() {
        let long = "a".repeat(MAX_HEADER_TEXT_CHARS + 1);
        let ok_long = "é".repeat(MAX_HEADER_TEXT_CHARS);
        let table: &[(&str, Option<&str>)] = &[
            ("Ada Lovelace", None),
            ("Zoë Ünal-Øster", None),
            ("株式会社テスト", None),
            ("O'Brien, \"Acme\" <Ltd>; a=b?c", None),
            ("Ada =?utf-8?q?Bcc:_x?=", Some("EncodedWordLike")),
            (&ok_long, None),
            ("", Some("Empty")),
            ("   ", Some("Empty")),
            ("Ada\r\nBcc: x@evil.test", Some("ControlCharacter")),
            ("Ada\nBcc: x@evil.test", Some("ControlCharacter")),
            ("Ada\rX", Some("ControlCharacter")),
            ("Ada\r\n.\r\nMAIL FROM:<x@y>", Some("ControlCharacter")),
            ("Ada\0", Some("ControlCharacter")),
            ("Ada\tBcc: x", Some("ControlCharacter")),
            ("Ada\u{7f}", Some("ControlCharacter")),
            ("Ada\u{85}", Some("ControlCharacter")),
            ("Ada\u{2028}Bcc", Some("FormattingCharacter")),
            ("Ada\u{202E}evil", Some("FormattingCharacter")),
            ("Ada\u{200B}", Some("FormattingCharacter")),
            (&long, Some("TooLong")),
        ];
        for (value, want) in table {
            let got = validate_header_text("contact.name", value);
            let kind = got.as_ref().err().map(|e| {
                let dbg = format!("{e:?}");
                dbg.split([' ', '{']).next().unwrap_or_default().to_owned()
            });
            assert_eq!(kind.as_deref(), *want, "{value:?}");
            if let Err(e) = got {
                let msg = e.to_string();
                assert!(msg.contains("contact.name"), "{msg}");
                assert!(!msg.contains("evil") && !msg.contains("Ada"), "{msg}");
            }
        }
    }

    #[test]
    fn address_table() {
        let ok = [
            "ada@example.com",
            "a.b+tag@sub.example.co.uk",
            "x_y-z@ex-ample.org",
        ];
        for a in ok {
            assert_eq!(MailAddress::parse("contact.email", a).expect(a).as_str(), a);
        }
        let long = format!("{}@example.com", "a".repeat(250));
        let bad = [
            "",
            "ada",
            "ada@",
            "@example.com",
            "ada@localhost",
            "ada@example.com\r\nRCPT TO:<x@evil.test>",
            "ada@example.com\nBcc: x@evil.test",
            "ada@example.com\0",
            "ada@example.com\t",
            "ada @example.com",
            "ada@example.com, eve@evil.test",
            "Ada <ada@example.com>",
            "\"ada\"@example.com",
            "ada@[127.0.0.1]",
            "ada;eve@example.com",
            "zoë@example.com",
            "ada@exämple.com",
            &long,
        ];
        for a in bad {
            assert!(MailAddress::parse("contact.email", a).is_err(), "{a:?}");
        }
    }

    #[test]
    fn sender_parses_name_and_address() {
        let s = Sender::parse("alga-license <licenses@alga.test>").expect("valid");
        assert_eq!(s.address().as_str(), "licenses@alga.test");
        assert_eq!(s.name().map(DisplayName::as_str), Some("alga-license"));
        let bare = Sender::parse("licenses@alga.test").expect("valid");
        assert!(bare.name().is_none());
        assert!(Sender::parse("x <a@b.test>\r\nBcc: c@d.test").is_err());
        assert!(Sender::parse("a@b.test, c@d.test").is_err());
    }
}
