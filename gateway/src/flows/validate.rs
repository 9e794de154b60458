//! Parse, don't validate: registration input becomes types that can only hold valid
//! values. Every problem is reported at once, by field path.

use std::collections::BTreeMap;

use alga_delivery::mail::{DisplayName, MAX_ADDRESS_LEN, MAX_HEADER_TEXT_CHARS, MailAddress};
use alga_policies::{Edition, Policy};
use alga_protocol::api::RegisterTenantRequest;

use crate::error::ApiError;

/// Longest company or contact name (the API's bound; the mail's own is higher).
pub const MAX_NAME_CHARS: usize = 200;
/// Longest email address (RFC 5321 path limit), the mail's own bound.
pub const MAX_EMAIL_LEN: usize = MAX_ADDRESS_LEN;

const _: () = assert!(MAX_NAME_CHARS <= MAX_HEADER_TEXT_CHARS);

/// A single-line human name: what a mail header can carry, by the one rule of
/// `alga_delivery::mail` ([`DisplayName`]): letters, marks, numbers, punctuation,
/// symbols and spaces only (no control character such as CR, LF, TAB, DEL or C1, no
/// line separator, bidi control or other invisible format character, no unassigned or
/// private-use code point), no `=?`, trimmed, runs of spaces collapsed, 1–200
/// characters. Company and contact names go into mail headers and bodies, so anything
/// accepted here is deliverable; host names, versions and reasons follow the same rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Name(String);

impl Name {
    /// Parses a name; the error is a message for the caller's field (it never echoes
    /// the value).
    pub fn parse(input: &str) -> Result<Name, String> {
        DisplayName::parse_with_limit("name", input, MAX_NAME_CHARS)
            .map(|n| Name(n.as_str().to_owned()))
            .map_err(|e| e.reason())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Case- and space-insensitive form for uniqueness.
    pub fn normalized(&self) -> String {
        self.0
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ")
            .to_lowercase()
    }
}

/// A contact email address, by the one rule of `alga_delivery::mail`
/// ([`MailAddress`]): `local@domain`, ASCII, the local part a dot-atom of RFC 5322
/// `atext` (at most 64 bytes), a fully qualified domain of letter-digit-hyphen labels,
/// no `=?`, at most 254 bytes; surrounding spaces are dropped. (Deliberately narrower
/// than RFC 5322: it goes into an SMTP envelope and a header.)
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContactEmail(String);

impl ContactEmail {
    /// Parses an address; the error is a message for the caller's field.
    pub fn parse(input: &str) -> Result<ContactEmail, String> {
        MailAddress::parse_trimmed("email", input)
            .map(|a| ContactEmail(a.as_str().to_owned()))
            .map_err(|e| e.reason())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Lower-cased, for lookups and uniqueness.
    pub fn normalized(&self) -> String {
        self.0.to_ascii_lowercase()
    }
}

/// The edition of the policy called `name`, or what is wrong with the name (the
/// editions that exist).
pub fn edition<'p>(policy: &'p Policy, name: &str) -> Result<&'p Edition, String> {
    policy.edition(name).ok_or_else(|| {
        let known: Vec<&str> = policy.editions.keys().map(String::as_str).collect();
        format!("unknown edition (known: {})", known.join(", "))
    })
}

/// A valid registration.
#[derive(Debug, Clone)]
pub struct Registration<'p> {
    pub company: Name,
    pub contact_name: Name,
    pub contact_email: ContactEmail,
    pub edition: &'p Edition,
}

/// Validates a `POST /register-tenant` body against the policy, reporting every field.
pub fn registration<'p>(
    req: &RegisterTenantRequest,
    policy: &'p Policy,
) -> Result<Registration<'p>, ApiError> {
    let mut fields = BTreeMap::new();
    let company = Name::parse(&req.company).map_err(|m| fields.insert("company".into(), m));
    let contact_name =
        Name::parse(&req.contact.name).map_err(|m| fields.insert("contact.name".into(), m));
    let contact_email = ContactEmail::parse(&req.contact.email)
        .map_err(|m| fields.insert("contact.email".into(), m));
    let edition = edition(policy, &req.edition).map_err(|m| fields.insert("edition".into(), m));
    match (company, contact_name, contact_email, edition) {
        (Ok(company), Ok(contact_name), Ok(contact_email), Ok(edition)) => Ok(Registration {
            company,
            contact_name,
            contact_email,
            edition,
        }),
        _ => Err(ApiError::Validation(fields)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        for bad in [
            "",
            "   ",
            "a\rb",
            "a\nb",
            "a\r\nb",
            "tab\there",
            "nul\0",
            "del\u{7f}",
            "c1\u{85}",
            // Issue 18, finding 6: these got 201 and a code that was never mailed.
            "Acme\u{2028}GmbH",
            "Acme\u{2029}GmbH",
            "Acme \u{202E}HbmG",
            "Acme =? GmbH",
            "=?utf-8?q?Acme?=",
            // Every bidi control and other invisible format characters.
            "A\u{061C}",
            "A\u{200E}",
            "A\u{200F}",
            "A\u{202A}",
            "A\u{202B}",
            "A\u{202C}",
            "A\u{202D}",
            "A\u{2066}",
            "A\u{2067}",
            "A\u{2068}",
            "A\u{2069}",
            "A\u{200B}",
            "A\u{200D}",
            "A\u{00AD}",
            "\u{FEFF}A",
            "A\u{E0041}",
            // Unassigned, noncharacter, private use.
            "A\u{0378}",
            "A\u{FFFF}",
            "A\u{E000}",
        ] {
            let err = Name::parse(bad).expect_err(bad);
            assert!(
                !err.is_empty() && !err.contains("Acme") && !err.contains("HbmG"),
                "{err}"
            );
        }
        assert_eq!(
            Name::parse("  Acme GmbH ").expect("valid").as_str(),
            "Acme GmbH"
        );
        assert_eq!(
            Name::parse("Acme   GmbH").expect("valid").normalized(),
            "acme gmbh"
        );
        assert!(Name::parse(&"x".repeat(200)).is_ok());
        assert!(Name::parse(&"x".repeat(201)).is_err());
        assert!(Name::parse("Zoë Ünal").is_ok());
        assert!(Name::parse("عبد الله — שלום — 株式会社 ☃").is_ok());
        assert!(Name::parse("Acme = Beta? yes").is_ok());
        assert_eq!(
            Name::parse("Acme\u{2028}").expect_err("refused"),
            "contains a disallowed formatting character (U+2028) at position 5"
        );
        assert_eq!(
            Name::parse("Acme =?").expect_err("refused"),
            "contains \"=?\" at position 6, which mail programs decode as encoded text"
        );
    }

    #[test]
    fn emails() {
        for good in [
            "a@b.co",
            "first.last+tag@sub.example.com",
            "ops@alga.test",
            "o'brien@example.com",
        ] {
            assert!(ContactEmail::parse(good).is_ok(), "{good}");
        }
        assert_eq!(
            ContactEmail::parse(" a@b.co ").expect("trimmed").as_str(),
            "a@b.co"
        );
        for bad in [
            "",
            "plain",
            "@b.co",
            "a@",
            "a@b",
            "a b@c.co",
            "a@b..co",
            "a@-b.co",
            ".a@b.co",
            "a..b@c.co",
            "a@b.co\r\nBcc: x@y.z",
            "a@b.co\n",
            "zoë@b.co",
            "a@b_c.co",
            "=?utf-8?q?a?=@b.co",
            "a\u{202E}@b.co",
            "\ta@b.co",
        ] {
            assert!(ContactEmail::parse(bad).is_err(), "{bad:?}");
        }
        assert_eq!(
            ContactEmail::parse("Ops@Alga.Test")
                .expect("valid")
                .normalized(),
            "ops@alga.test"
        );
    }
}

#[cfg(test)]
mod proptests {
    use alga_delivery::mail::{DisplayName, MailAddress};
    use proptest::prelude::*;

    use super::*;

    /// A dot-atom local part: 1-3 atoms of `atext` (RFC 5322 §3.2.3), at most 64 bytes.
    fn dot_atom() -> impl Strategy<Value = String> {
        let atext = prop_oneof![
            4 => proptest::char::range('a', 'z'),
            2 => proptest::char::range('A', 'Z'),
            2 => proptest::char::range('0', '9'),
            2 => proptest::sample::select("!#$%&'*+-/=?^_`{|}~".chars().collect::<Vec<_>>()),
        ];
        proptest::collection::vec(
            proptest::collection::vec(atext, 1..12).prop_map(String::from_iter),
            1..4,
        )
        .prop_map(|atoms| atoms.join("."))
    }

    /// A hostname of 1-3 labels (letters, digits, inner hyphens) and a letters-only TLD.
    fn hostname() -> impl Strategy<Value = String> {
        (
            proptest::collection::vec("[a-zA-Z0-9]([a-zA-Z0-9-]{0,10}[a-zA-Z0-9])?", 1..4),
            "[a-zA-Z]{2,6}",
        )
            .prop_map(|(labels, tld)| format!("{}.{tld}", labels.join(".")))
    }

    fn assert_header_safe(e: &ContactEmail) -> Result<(), TestCaseError> {
        prop_assert!(e.as_str().is_ascii());
        prop_assert!(
            !e.as_str()
                .bytes()
                .any(|b| b.is_ascii_control() || b == b' ')
        );
        prop_assert_eq!(e.as_str().matches('@').count(), 1);
        prop_assert!(!e.as_str().contains("=?"));
        prop_assert!(e.as_str().len() <= MAX_EMAIL_LEN);
        prop_assert!(MailAddress::parse("to", e.as_str()).is_ok());
        Ok(())
    }

    proptest! {
        /// Whatever comes in: no panic, and what is accepted is single-line, trimmed,
        /// bounded, and exactly what the mail's own types make of it (one rule).
        #[test]
        fn names_accepted_are_clean(input in prop_oneof![any::<String>(), "[ -~\u{a0}-\u{2fff}\r\n\t\u{200b}-\u{202e}]{0,220}"]) {
            if let Ok(n) = Name::parse(&input) {
                prop_assert!(!n.as_str().chars().any(char::is_control));
                prop_assert_eq!(n.as_str().trim(), n.as_str());
                prop_assert!(!n.as_str().is_empty() && n.as_str().chars().count() <= MAX_NAME_CHARS);
                let mail = DisplayName::parse("company", n.as_str());
                prop_assert_eq!(mail.as_ref().map(DisplayName::as_str), Ok(n.as_str()));
            }
        }

        #[test]
        fn names_from_typed_text_agree_with_the_mail(input in "[ -~\u{a0}-\u{2fff}\u{3000}-\u{30ff}]{0,220}") {
            let api = Name::parse(&input);
            let mail = DisplayName::parse_with_limit("name", &input, MAX_NAME_CHARS);
            prop_assert_eq!(api.as_ref().ok().map(Name::as_str), mail.as_ref().ok().map(DisplayName::as_str));
        }

        /// Well-formed addresses (dot-atom local parts from every `atext` character,
        /// hostnames with hyphens, any case, surrounding spaces) are accepted as the
        /// address itself, except that `=?` is refused anywhere; what is accepted is
        /// header-safe. Built well-formed so every case reaches the assertions.
        #[test]
        fn well_formed_emails_are_accepted_and_header_safe(
            (pad_l, local, domain, pad_r) in (" {0,2}", dot_atom(), hostname(), " {0,2}"),
        ) {
            let input = format!("{pad_l}{local}@{domain}{pad_r}");
            let got = ContactEmail::parse(&input);
            if local.contains("=?") {
                prop_assert!(got.is_err(), "accepted an encoded-word opener: {input:?}");
            } else {
                prop_assert!(got.is_ok(), "refused {input:?}: {:?}", got.err());
                let e = got.expect("checked");
                prop_assert_eq!(e.as_str(), format!("{local}@{domain}"));
                assert_header_safe(&e)?;
            }
        }

        /// The same addresses with any one character inserted anywhere: refused, or
        /// accepted and still header-safe.
        #[test]
        fn emails_with_any_character_inserted_are_refused_or_header_safe(
            (local, domain) in (dot_atom(), hostname()),
            at in any::<proptest::sample::Index>(),
            c in any::<char>(),
        ) {
            let mut chars: Vec<char> = format!("{local}@{domain}").chars().collect();
            chars.insert(at.index(chars.len() + 1), c);
            let input: String = chars.into_iter().collect();
            if let Ok(e) = ContactEmail::parse(&input) {
                assert_header_safe(&e)?;
            }
        }

        #[test]
        fn email_like_inputs_roundtrip(local in "[a-z0-9]{1,20}", domain in "[a-z0-9]{1,20}\\.[a-z]{2,6}") {
            let s = format!("{local}@{domain}");
            prop_assert_eq!(ContactEmail::parse(&s).map(|e| e.normalized()), Ok(s));
        }
    }
}
