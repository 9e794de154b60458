//! Header hygiene: text that ends up in a mail header can only be built valid.
//!
//! The store sends us names, company names and addresses typed by customers. A CR or LF
//! in any of them is a header (or SMTP command) injection; other control characters,
//! Unicode line separators, bidi controls and invisible format characters make headers
//! lie to the reader; `=?` makes receivers decode text the sender never wrote. lettre
//! encodes what it is given, but does not refuse these, so we do, at the edge.
//!
//! **This module is the one rule** for what a name, a company or an address may be.
//! The gateway's API validation (`gateway::flows::validate`'s `Name` and
//! `ContactEmail`) is built on [`DisplayName::parse_with_limit`] and
//! [`MailAddress::parse`], and the mail types accept only [`DisplayName`] and
//! [`MailAddress`], so whatever the API accepts, the mail can carry (the property test
//! `delivery/tests/it/mail.rs::every_accepted_name_and_address_is_delivered_intact`
//! sends them to a real SMTP server).
//!
//! Error messages name the field and a position, never echo the value (it is hostile
//! input, and it would land in logs).

use std::fmt;
use std::str::FromStr;

use lettre::message::Mailbox;
use serde::Deserialize;
use unicode_properties::general_category::{GeneralCategory, UnicodeGeneralCategory};

use crate::Error;

/// Longest accepted single-line header text (a name, a company), in characters.
pub const MAX_HEADER_TEXT_CHARS: usize = 256;
/// Longest accepted email address, in bytes (RFC 5321's path limit minus the brackets).
pub const MAX_ADDRESS_LEN: usize = 254;
/// Longest local part (before the `@`) of an address, in bytes (RFC 5321).
pub const MAX_LOCAL_PART_LEN: usize = 64;
/// Longest label of a domain name, in bytes (RFC 1035).
pub const MAX_DOMAIN_LABEL_LEN: usize = 63;

/// What is wrong with a character, if anything: the character rule shared by names,
/// companies and addresses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Refusal {
    Control,
    Formatting,
    Unassigned,
}

/// Which characters header text may not contain. Accepted: letters, marks, numbers,
/// punctuation, symbols and space separators (Unicode general categories L*, M*, N*,
/// P*, S*, Zs).
fn refusal(c: char) -> Option<Refusal> {
    use GeneralCategory as G;
    match c.general_category() {
        G::Control => Some(Refusal::Control),
        G::Format | G::LineSeparator | G::ParagraphSeparator => Some(Refusal::Formatting),
        G::Unassigned | G::PrivateUse | G::Surrogate => Some(Refusal::Unassigned),
        _ => None,
    }
}

/// Whether header text may contain `c` (see [`validate_header_text`]). The gateway's
/// OpenAPI document derives the character class of its name pattern from this.
pub fn is_allowed_header_char(c: char) -> bool {
    refusal(c).is_none()
}

/// The characters of the Basic Multilingual Plane that header text may not contain, as
/// inclusive ranges in ascending order, leaving out the unassigned code points other
/// than the noncharacters (U+FDD0–U+FDEF, U+FFFE, U+FFFF): the compact list a JSON
/// Schema pattern can carry (the gateway's OpenAPI document). The rule itself also
/// refuses the left-out unassigned code points and the refused characters above
/// U+FFFF (tags, private use, unassigned planes).
pub fn refused_bmp_ranges() -> Vec<std::ops::RangeInclusive<char>> {
    let mut ranges: Vec<std::ops::RangeInclusive<char>> = Vec::new();
    let listed = |c: char| match refusal(c) {
        None => false,
        Some(Refusal::Unassigned) => {
            c.general_category() != GeneralCategory::Unassigned
                || ('\u{FDD0}'..='\u{FDEF}').contains(&c)
                || c >= '\u{FFFE}'
        }
        Some(_) => true,
    };
    for c in ('\0'..='\u{FFFF}').filter(|&c| listed(c)) {
        match ranges.last_mut() {
            Some(last) if u32::from(*last.end()) + 1 == u32::from(c) => {
                *last = *last.start()..=c;
            }
            _ => ranges.push(c..=c),
        }
    }
    ranges
}

/// Checks that `value` can be one line of a mail header: not blank, at most
/// [`MAX_HEADER_TEXT_CHARS`] characters, only letters, marks, numbers, punctuation,
/// symbols and spaces (no control characters such as CR, LF, NUL, TAB, DEL or C1; no
/// Unicode line separators, bidi controls or other invisible format characters; no
/// unassigned or private-use code points), and no `=?` (which receivers would decode
/// as an RFC 2047 encoded word).
///
/// `field` names the API field in the error. The value is checked as it is; use
/// [`DisplayName::parse`] to also drop surrounding whitespace.
pub fn validate_header_text(field: &str, value: &str) -> Result<(), Error> {
    check_characters(field, value)?;
    check_text(field, value, MAX_HEADER_TEXT_CHARS)
}

/// Blank, `=?` and length checks of text whose characters passed [`check_characters`].
fn check_text(field: &str, value: &str, max_chars: usize) -> Result<(), Error> {
    if value.trim().is_empty() {
        return Err(Error::Empty {
            field: field.to_owned(),
        });
    }
    check_encoded_word(field, value)?;
    if value.chars().count() > max_chars {
        return Err(Error::TooLong {
            field: field.to_owned(),
            max: max_chars,
        });
    }
    Ok(())
}

fn check_encoded_word(field: &str, value: &str) -> Result<(), Error> {
    match value.find("=?") {
        Some(at) => Err(Error::EncodedWordLike {
            field: field.to_owned(),
            position: value[..at].chars().count() + 1,
        }),
        None => Ok(()),
    }
}

/// Refuses every character [`refusal`] names; the first one found is reported.
fn check_characters(field: &str, value: &str) -> Result<(), Error> {
    for (i, c) in value.chars().enumerate() {
        let Some(refused) = refusal(c) else {
            continue;
        };
        let (field, position, codepoint) =
            (field.to_owned(), i + 1, format!("U+{:04X}", u32::from(c)));
        return Err(match refused {
            Refusal::Control => Error::ControlCharacter {
                field,
                position,
                codepoint,
            },
            Refusal::Formatting => Error::FormattingCharacter {
                field,
                position,
                codepoint,
            },
            Refusal::Unassigned => Error::UnassignedCharacter {
                field,
                position,
                codepoint,
            },
        });
    }
    Ok(())
}

/// Runs of ASCII spaces become one space. lettre encodes a subject word by word and
/// puts a run of spaces between two encoded words as it is, where RFC 2047 decoders
/// drop it ("Zoë  Ørsted" would read "ZoëØrsted"); a single space goes inside the one
/// encoded word. (The gateway already compares names with whitespace collapsed.)
fn collapse_spaces(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut after_space = false;
    for c in s.chars() {
        if c == ' ' && after_space {
            continue;
        }
        after_space = c == ' ';
        out.push(c);
    }
    out
}

/// A person's or company's name, fit for a header phrase or a subject: one line of
/// printable text (see [`validate_header_text`]), without surrounding whitespace, runs
/// of spaces collapsed to one, at most [`MAX_HEADER_TEXT_CHARS`] characters. Any script
/// is fine; lettre encodes non-ASCII as RFC 2047 encoded words.
#[derive(Clone, PartialEq, Eq)]
pub struct DisplayName(String);

impl DisplayName {
    /// Parses a name for the API field `field`; surrounding whitespace is dropped
    /// (after the characters were checked: a trailing LF is refused, not trimmed) and
    /// runs of spaces inside become one space.
    pub fn parse(field: &str, value: &str) -> Result<DisplayName, Error> {
        DisplayName::parse_with_limit(field, value, MAX_HEADER_TEXT_CHARS)
    }

    /// [`DisplayName::parse`] with a lower length limit (the API's own bound);
    /// `max_chars` above [`MAX_HEADER_TEXT_CHARS`] counts as that.
    pub fn parse_with_limit(
        field: &str,
        value: &str,
        max_chars: usize,
    ) -> Result<DisplayName, Error> {
        check_characters(field, value)?;
        let canonical = collapse_spaces(value.trim());
        check_text(field, &canonical, max_chars.min(MAX_HEADER_TEXT_CHARS))?;
        Ok(DisplayName(canonical))
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

/// An email address we will put into `To`/`From` and the SMTP envelope:
/// `local@domain` in plain ASCII, at most [`MAX_ADDRESS_LEN`] bytes, where the local
/// part is a dot-atom of RFC 5322 `atext` (letters, digits and ``!#$%&'*+-/=?^_`{|}~``,
/// dots only between them, at most [`MAX_LOCAL_PART_LEN`] bytes) and the domain is a
/// fully qualified name of letter-digit-hyphen labels; no `=?`; and lettre accepts it.
/// Nothing that could restructure a header even if quoted (whitespace, quotes, angle
/// brackets, commas, semicolons, parentheses, backslashes) gets through.
///
/// Internationalized addresses (RFC 6531) and address literals (`a@[127.0.0.1]`) are
/// refused: they need SMTPUTF8 or special routing on every hop, and a mail with the
/// install code must not bounce for that.
#[derive(Clone, PartialEq, Eq)]
pub struct MailAddress(lettre::Address);

impl MailAddress {
    /// Parses an address for the API field `field` (as it is: surrounding spaces are
    /// refused, see [`MailAddress::parse_trimmed`]).
    pub fn parse(field: &str, value: &str) -> Result<MailAddress, Error> {
        let invalid = |reason| Error::InvalidAddress {
            field: field.to_owned(),
            reason,
        };
        if value.is_empty() {
            return Err(Error::Empty {
                field: field.to_owned(),
            });
        }
        check_characters(field, value)?;
        if value.len() > MAX_ADDRESS_LEN {
            return Err(Error::TooLong {
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
        check_encoded_word(field, value)?;
        let Some((local, domain)) = value.rsplit_once('@') else {
            return Err(invalid("it needs an @"));
        };
        if !is_dot_atom(local) {
            return Err(invalid(
                "the part before the @ must be 1-64 letters, digits or !#$%&'*+-/=?^_`{|}~, dots only between them",
            ));
        }
        if !is_fqdn(domain) {
            return Err(invalid(
                "the domain must be a fully qualified name of letters, digits and hyphens",
            ));
        }
        let address = lettre::Address::from_str(value).map_err(|_| invalid("bad syntax"))?;
        Ok(MailAddress(address))
    }

    /// [`MailAddress::parse`] after dropping surrounding ASCII spaces (a pasted
    /// address); any other whitespace or control character is still refused.
    pub fn parse_trimmed(field: &str, value: &str) -> Result<MailAddress, Error> {
        MailAddress::parse(field, value.trim_matches(' '))
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

/// RFC 5322 `dot-atom-text` of at most [`MAX_LOCAL_PART_LEN`] bytes.
fn is_dot_atom(local: &str) -> bool {
    !local.is_empty()
        && local.len() <= MAX_LOCAL_PART_LEN
        && local
            .split('.')
            .all(|atom| !atom.is_empty() && atom.bytes().all(is_atext))
}

/// RFC 5322 `atext`.
fn is_atext(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-/=?^_`{|}~".contains(&b)
}

/// At least two letter-digit-hyphen labels of 1-63 bytes, no label starting or
/// ending with a hyphen.
fn is_fqdn(domain: &str) -> bool {
    let labels: Vec<&str> = domain.split('.').collect();
    labels.len() >= 2
        && labels.iter().all(|l| {
            !l.is_empty()
                && l.len() <= MAX_DOMAIN_LABEL_LEN
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
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
    pub fn parse(value: &str) -> Result<Sender, Error> {
        const FIELD: &str = "smtp.from";
        check_characters(FIELD, value)?;
        let mailbox = Mailbox::from_str(value.trim()).map_err(|_| Error::InvalidAddress {
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
    type Error = Error;
    fn try_from(s: String) -> Result<Sender, Error> {
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
            ("Ada\u{2029}Bcc", Some("FormattingCharacter")),
            ("Ada\u{202E}evil", Some("FormattingCharacter")),
            ("Ada\u{200B}", Some("FormattingCharacter")),
            // Issue 18, finding 6: accepted by the API before, undeliverable.
            ("Acme\u{2028}GmbH", Some("FormattingCharacter")),
            ("Acme \u{202E}HbmG", Some("FormattingCharacter")),
            ("Acme =? GmbH", Some("EncodedWordLike")),
            ("=?", Some("EncodedWordLike")),
            ("Acme=?utf-8?b?QmNj?=", Some("EncodedWordLike")),
            // Every bidi control (UAX #9): marks, embeddings, overrides, isolates.
            ("Ada\u{061C}", Some("FormattingCharacter")),
            ("Ada\u{200E}", Some("FormattingCharacter")),
            ("Ada\u{200F}", Some("FormattingCharacter")),
            ("Ada\u{202A}", Some("FormattingCharacter")),
            ("Ada\u{202B}", Some("FormattingCharacter")),
            ("Ada\u{202C}", Some("FormattingCharacter")),
            ("Ada\u{202D}", Some("FormattingCharacter")),
            ("Ada\u{2066}", Some("FormattingCharacter")),
            ("Ada\u{2067}", Some("FormattingCharacter")),
            ("Ada\u{2068}", Some("FormattingCharacter")),
            ("Ada\u{2069}", Some("FormattingCharacter")),
            // Other invisible format characters.
            ("Ada\u{00AD}", Some("FormattingCharacter")),
            ("Ada\u{200D}", Some("FormattingCharacter")),
            ("Ada\u{2060}", Some("FormattingCharacter")),
            ("\u{FEFF}Ada", Some("FormattingCharacter")),
            ("Ada\u{FFF9}", Some("FormattingCharacter")),
            ("Ada\u{180E}", Some("FormattingCharacter")),
            ("Ada\u{E0001}\u{E0041}", Some("FormattingCharacter")),
            // Unassigned, noncharacters, private use, lone surrogates cannot exist in a str.
            ("Ada\u{0378}", Some("UnassignedCharacter")),
            ("Ada\u{FDD0}", Some("UnassignedCharacter")),
            ("Ada\u{FFFE}", Some("UnassignedCharacter")),
            ("Ada\u{FFFF}", Some("UnassignedCharacter")),
            ("Ada\u{10FFFF}", Some("UnassignedCharacter")),
            ("Ada\u{E000}", Some("UnassignedCharacter")),
            ("Ada\u{F8FF}", Some("UnassignedCharacter")),
            // Printable text of every kind stays accepted.
            ("Ada\u{00A0}Lovelace\u{3000}株", None),
            ("Zoë 👩\u{1F3FD} ☃ €100 — «Acme»", None),
            ("Acme = Beta? yes", None),
            ("?= Acme =", None),
            ("عبد الله", None),
            ("שלום", None),
            ("e\u{0301}", None),
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
    fn the_listed_bmp_ranges_are_exactly_the_refused_assigned_characters() {
        let ranges = refused_bmp_ranges();
        assert!(ranges.len() < 40, "{} ranges", ranges.len());
        for c in '\0'..='\u{FFFF}' {
            let listed = ranges.iter().any(|r| r.contains(&c));
            let unassigned = c.general_category() == GeneralCategory::Unassigned;
            if listed {
                assert!(!is_allowed_header_char(c), "{c:?} listed but allowed");
            } else if !unassigned {
                assert!(is_allowed_header_char(c), "{c:?} refused but not listed");
            }
        }
        for c in [
            '\n', '\u{7f}', '\u{ad}', '\u{61c}', '\u{2028}', '\u{202e}', '\u{e000}', '\u{fdd0}',
            '\u{ffff}',
        ] {
            assert!(ranges.iter().any(|r| r.contains(&c)), "{c:?}");
        }
    }

    #[test]
    fn display_names_are_trimmed_after_the_characters_are_checked() {
        let ok = |v: &str| DisplayName::parse("company", v).map(|n| n.as_str().to_owned());
        assert_eq!(ok("  Acme GmbH \u{3000}").as_deref(), Ok("Acme GmbH"));
        assert_eq!(ok("\u{00A0}Acme").as_deref(), Ok("Acme"));
        assert_eq!(ok("Zoë   Ørsted  A/S").as_deref(), Ok("Zoë Ørsted A/S"));
        assert_eq!(
            ok("株\u{3000}\u{3000}式").as_deref(),
            Ok("株\u{3000}\u{3000}式")
        );
        // A trailing LF or a leading bidi override is refused, never trimmed away.
        assert!(matches!(
            DisplayName::parse("company", "Acme\n"),
            Err(Error::ControlCharacter { position: 5, .. })
        ));
        assert!(matches!(
            DisplayName::parse("company", "\u{2028}Acme"),
            Err(Error::FormattingCharacter { position: 1, .. })
        ));
        // A lower limit (the API's) applies to the trimmed text.
        assert!(
            DisplayName::parse_with_limit("company", &format!(" {} ", "x".repeat(200)), 200)
                .is_ok()
        );
        assert!(matches!(
            DisplayName::parse_with_limit("company", &"x".repeat(201), 200),
            Err(Error::TooLong { max: 200, .. })
        ));
        // A higher limit cannot lift the header's own.
        assert!(matches!(
            DisplayName::parse_with_limit("company", &"x".repeat(300), 1000),
            Err(Error::TooLong {
                max: MAX_HEADER_TEXT_CHARS,
                ..
            })
        ));
    }

    #[test]
    fn reasons_are_the_messages_without_the_field() {
        let cases = [
            validate_header_text("contact.name", "Ada\u{202E}"),
            validate_header_text("contact.name", "a =?b"),
            validate_header_text("contact.name", " "),
            MailAddress::parse("contact.email", "a b@c.co").map(|_| ()),
        ];
        for case in cases {
            let e = case.expect_err("refused");
            assert_eq!(
                e.field(),
                Some(if e.to_string().starts_with("contact.email") {
                    "contact.email"
                } else {
                    "contact.name"
                })
            );
            assert_eq!(
                format!("{} {}", e.field().unwrap_or_default(), e.reason()),
                e.to_string()
            );
            assert!(!e.reason().starts_with("contact"), "{}", e.reason());
        }
        assert_eq!(
            validate_header_text("x", "Ada\u{2028}")
                .expect_err("refused")
                .reason(),
            "contains a disallowed formatting character (U+2028) at position 4"
        );
    }

    #[test]
    fn address_table() {
        let ok = [
            "ada@example.com",
            "a.b+tag@sub.example.co.uk",
            "x_y-z@ex-ample.org",
            "o'brien@example.com",
            "!#$%&'*+-/=^_`{|}~?@example.com",
            "A1@EXAMPLE.COM",
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
            // The gateway's old ContactEmail rules, now the one rule.
            ".ada@example.com",
            "ada.@example.com",
            "a..da@example.com",
            "ada@example..com",
            "ada@-example.com",
            "ada@example-.com",
            "ada@ex_ample.com",
            "ada@example.com.",
            &format!("{}@example.com", "a".repeat(65)),
            &format!("ada@{}.com", "a".repeat(64)),
            // Encoded-word openers and formatting characters in addresses.
            "=?utf-8?q?eve?=@example.com",
            "a=?b@example.com",
            "ada\u{202E}@example.com",
            "ada@example.com\u{2028}",
            " ada@example.com",
        ];
        for a in bad {
            assert!(MailAddress::parse("contact.email", a).is_err(), "{a:?}");
        }
        assert_eq!(
            MailAddress::parse_trimmed("contact.email", "  ada@example.com ")
                .expect("trimmed")
                .as_str(),
            "ada@example.com"
        );
        for a in [
            "\tada@example.com",
            "ada@example.com\n",
            "\u{3000}ada@example.com",
        ] {
            assert!(
                MailAddress::parse_trimmed("contact.email", a).is_err(),
                "{a:?}"
            );
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
