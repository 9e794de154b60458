//! Parse, don't validate: registration input becomes types that can only hold valid
//! values. Every problem is reported at once, by field path.

use std::collections::BTreeMap;

use alga_policies::{Edition, Policy};
use alga_protocol::api::RegisterTenantRequest;

use crate::error::ApiError;

/// Longest company or contact name.
pub const MAX_NAME_CHARS: usize = 200;
/// Longest email address (RFC 5321 path limit).
pub const MAX_EMAIL_LEN: usize = 254;

/// A single-line human name: trimmed, 1–200 characters, no control characters (CR, LF,
/// bare LF, TAB, DEL, C1…): it goes into mail headers and bodies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Name(String);

impl Name {
    pub fn parse(input: &str) -> Result<Name, &'static str> {
        if input.chars().any(char::is_control) {
            return Err("must be a single line without control characters");
        }
        let trimmed = input.trim();
        if trimmed.is_empty() {
            return Err("must not be empty");
        }
        if trimmed.chars().count() > MAX_NAME_CHARS {
            return Err("is too long (at most 200 characters)");
        }
        Ok(Name(trimmed.to_owned()))
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

/// A contact email address: `local@domain`, ASCII, no spaces or control characters, a
/// dotted domain of LDH labels. (Deliberately narrower than RFC 5322: it goes into an
/// SMTP envelope and a header.)
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContactEmail(String);

impl ContactEmail {
    pub fn parse(input: &str) -> Result<ContactEmail, &'static str> {
        const MSG: &str = "must be an email address like name@example.com";
        if input.chars().any(char::is_control) {
            return Err("must be a single line without control characters");
        }
        let s = input.trim();
        if s.is_empty() || s.len() > MAX_EMAIL_LEN || !s.is_ascii() {
            return Err(MSG);
        }
        let Some((local, domain)) = s.rsplit_once('@') else {
            return Err(MSG);
        };
        let local_ok = !local.is_empty()
            && local.len() <= 64
            && !local.starts_with('.')
            && !local.ends_with('.')
            && !local.contains("..")
            && local
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-/=?^_`{|}~.".contains(&b));
        let labels: Vec<&str> = domain.split('.').collect();
        let domain_ok = labels.len() >= 2
            && labels.iter().all(|l| {
                !l.is_empty()
                    && l.len() <= 63
                    && !l.starts_with('-')
                    && !l.ends_with('-')
                    && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            });
        if local_ok && domain_ok {
            Ok(ContactEmail(s.to_owned()))
        } else {
            Err(MSG)
        }
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

/// A validation error on one field.
pub fn field_error(field: &str, message: impl Into<String>) -> ApiError {
    let mut f = BTreeMap::new();
    f.insert(field.to_owned(), message.into());
    ApiError::Validation(f)
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
    let company = Name::parse(&req.company).map_err(|m| fields.insert("company".into(), m.into()));
    let contact_name =
        Name::parse(&req.contact.name).map_err(|m| fields.insert("contact.name".into(), m.into()));
    let contact_email = ContactEmail::parse(&req.contact.email)
        .map_err(|m| fields.insert("contact.email".into(), m.into()));
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
        ] {
            assert!(Name::parse(bad).is_err(), "{bad:?}");
        }
        assert_eq!(
            Name::parse("  Acme GmbH ").expect("valid").as_str(),
            "Acme GmbH"
        );
        assert_eq!(
            Name::parse("Acme   GmbH").expect("valid").normalized(),
            "acme gmbh"
        );
        assert!(Name::parse(&"x".repeat(201)).is_err());
        assert!(Name::parse("Zoë Ünal").is_ok());
    }

    #[test]
    fn emails() {
        for good in ["a@b.co", "first.last+tag@sub.example.com", "ops@alga.test"] {
            assert!(ContactEmail::parse(good).is_ok(), "{good}");
        }
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
    use proptest::prelude::*;

    use super::*;

    proptest! {
        /// Whatever comes in: no panic, and what is accepted is single-line, trimmed,
        /// bounded.
        #[test]
        fn names_accepted_are_clean(input in any::<String>()) {
            if let Ok(n) = Name::parse(&input) {
                prop_assert!(!n.as_str().chars().any(char::is_control));
                prop_assert_eq!(n.as_str().trim(), n.as_str());
                prop_assert!(!n.as_str().is_empty() && n.as_str().chars().count() <= MAX_NAME_CHARS);
            }
        }

        #[test]
        fn emails_accepted_are_header_safe(input in any::<String>()) {
            if let Ok(e) = ContactEmail::parse(&input) {
                prop_assert!(e.as_str().is_ascii());
                prop_assert!(!e.as_str().bytes().any(|b| b.is_ascii_control() || b == b' '));
                prop_assert_eq!(e.as_str().matches('@').count(), 1);
                prop_assert!(e.as_str().len() <= MAX_EMAIL_LEN);
            }
        }

        #[test]
        fn email_like_inputs_roundtrip(local in "[a-z0-9]{1,20}", domain in "[a-z0-9]{1,20}\\.[a-z]{2,6}") {
            let s = format!("{local}@{domain}");
            prop_assert_eq!(ContactEmail::parse(&s).map(|e| e.normalized()), Ok(s));
        }
    }
}
