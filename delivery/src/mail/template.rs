//! The two mails (registration, reissue): what the contact needs to install the
//! appliance, as text and HTML alternatives of the same content.
//!
//! Every interpolated value is HTML-escaped in the HTML part; in the text part it is
//! inserted as is (the types already refuse control characters). The code and the link
//! are secrets: they appear in the bodies and nowhere else (not in `Debug`, not in logs).

use std::fmt;
use std::fmt::Write as _;

use alga_protocol::InstallCode;
use time::OffsetDateTime;
use time::macros::format_description;
use uuid::Uuid;
use zeroize::Zeroizing;

use super::header::{DisplayName, MailAddress};
use crate::Error;
use crate::presign::PresignedLink;

/// Which mail: it selects the template and is part of the `Message-ID`. The gateway's
/// outbox stores it too, by its [`MailKind::as_str`] name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MailKind {
    /// The first code of a new tenant.
    Registration,
    /// A new code for an existing tenant; earlier unclaimed codes were revoked.
    Reissue,
}

impl MailKind {
    /// Every kind, in declaration order.
    pub const ALL: [MailKind; 2] = [MailKind::Registration, MailKind::Reissue];

    /// The stable name used in `Message-ID`s, metrics, audit details and the gateway's
    /// `mail_outbox.kind` column: changing one breaks stored rows.
    pub fn as_str(self) -> &'static str {
        match self {
            MailKind::Registration => "registration",
            MailKind::Reissue => "reissue",
        }
    }

    /// The kind whose [`MailKind::as_str`] name is `name`, if any.
    pub fn from_name(name: &str) -> Option<MailKind> {
        MailKind::ALL.into_iter().find(|k| k.as_str() == name)
    }
}

/// The identity of one delivery (the gateway's outbox row), so that every retry of
/// the same row carries the same `Message-ID` and a receiving system can de-duplicate.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct DeliveryId(String);

impl DeliveryId {
    /// From any identifier whose text form is 1–64 of `A-Z a-z 0-9 - _` (a UUID, an
    /// integer).
    pub fn new(id: impl fmt::Display) -> Result<DeliveryId, Error> {
        let s = id.to_string();
        if s.is_empty()
            || s.len() > 64
            || !s
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err(Error::InvalidDeliveryId);
        }
        Ok(DeliveryId(s))
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl From<Uuid> for DeliveryId {
    fn from(id: Uuid) -> DeliveryId {
        DeliveryId(id.hyphenated().to_string())
    }
}

impl From<i64> for DeliveryId {
    fn from(id: i64) -> DeliveryId {
        DeliveryId(id.to_string())
    }
}

/// The `Message-ID` of a delivery: `<{outbox_id}.{kind}@{domain of from}>`.
pub fn message_id(id: &DeliveryId, kind: MailKind, from: &MailAddress) -> String {
    format!("<{}.{}@{}>", id.as_str(), kind.as_str(), from.domain())
}

/// One mail to send: everything the templates need, already valid.
///
/// Holds the install code and the presigned link; `Debug` shows neither.
#[derive(Clone)]
pub struct OutgoingMail {
    /// The outbox row this mail belongs to (for the `Message-ID`).
    pub outbox_id: DeliveryId,
    /// Registration or reissue.
    pub kind: MailKind,
    /// The one recipient's address.
    pub to: MailAddress,
    /// The recipient's name (greeting and `To` display name).
    pub to_name: Option<DisplayName>,
    /// The customer's company (subject and body).
    pub company: DisplayName,
    /// The install code (secret).
    pub code: InstallCode,
    /// When the code stops being redeemable.
    pub code_expires_at: OffsetDateTime,
    /// The ISO download link (its query is a secret).
    pub link: PresignedLink,
}

impl fmt::Debug for OutgoingMail {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OutgoingMail")
            .field("outbox_id", &self.outbox_id)
            .field("kind", &self.kind)
            .field("to", &self.to)
            .field("to_name", &self.to_name)
            .field("company", &self.company)
            .field("code", &"[redacted]")
            .field("code_expires_at", &self.code_expires_at)
            .field("link", &"[redacted]")
            .field("link_expires_at", &self.link.expires_at)
            .finish()
    }
}

/// A rendered mail: subject and the two alternatives. The bodies hold the code and
/// are zeroized when dropped.
pub(crate) struct Rendered {
    pub subject: String,
    pub text: Zeroizing<String>,
    pub html: Zeroizing<String>,
}

/// Renders the subject and both bodies of `mail`.
pub(crate) fn render(mail: &OutgoingMail) -> Rendered {
    let code = mail.code.expose_formatted();
    let company = mail.company.as_str();
    let link = mail.link.url.as_str();
    let code_expiry = format_time(mail.code_expires_at);
    let link_expiry = format_time(mail.link.expires_at);
    let greeting = match &mail.to_name {
        Some(name) => format!("Hello {name},"),
        None => "Hello,".to_owned(),
    };
    let (subject, intro, note) = match mail.kind {
        MailKind::Registration => (
            format!("Your alga appliance install code for {company}"),
            format!("your alga appliance for {company} is ready to install."),
            None,
        ),
        MailKind::Reissue => (
            format!("A new alga appliance install code for {company}"),
            format!("a new install code was issued for {company}."),
            Some("Previous unclaimed install codes for your tenant no longer work: use this one."),
        ),
    };
    let steps = [
        "Download the appliance ISO with the link above.".to_owned(),
        "Boot a machine from the ISO and enter the install code on the first-boot setup \
         screen. Set the admin password there: it never travels through email."
            .to_owned(),
        format!("The appliance comes up under your tenant ({company})."),
    ];
    let footer =
        "The install code works once. If you did not expect this message, you can ignore it.";

    let mut text = Zeroizing::new(String::new());
    // Writing to a String cannot fail.
    let _ = write!(
        text,
        "{greeting}\r\n\r\n{intro_cap}\r\n",
        intro_cap = capitalize(&intro)
    );
    if let Some(note) = note {
        let _ = write!(text, "{note}\r\n");
    }
    let _ = write!(
        text,
        "\r\nInstall code: {code}\r\n(valid until {code_expiry})\r\n\
         \r\nDownload the appliance ISO:\r\n{link}\r\n(this link works until {link_expiry})\r\n\
         \r\nInstall in three steps:\r\n",
        code = code.as_str(),
    );
    for (i, step) in steps.iter().enumerate() {
        let _ = write!(text, "{}. {step}\r\n", i + 1);
    }
    let _ = write!(text, "\r\n{footer}\r\n");

    let e = html_escape;
    let mut html = Zeroizing::new(String::new());
    let _ = write!(
        html,
        "<!DOCTYPE html>\r\n<html><head><meta charset=\"utf-8\"><title>{title}</title></head>\r\n\
         <body>\r\n<p>{greeting}</p>\r\n<p>{intro}</p>\r\n",
        title = e(&subject),
        greeting = e(&greeting),
        intro = e(&capitalize(&intro)),
    );
    if let Some(note) = note {
        let _ = write!(html, "<p><strong>{}</strong></p>\r\n", e(note));
    }
    let _ = write!(
        html,
        "<p>Install code:<br>\r\n<code style=\"font-size:1.3em\">{code}</code><br>\r\n\
         (valid until {code_expiry})</p>\r\n\
         <p><a href=\"{link}\">Download the appliance ISO</a><br>\r\n\
         (this link works until {link_expiry})</p>\r\n\
         <p>Install in three steps:</p>\r\n<ol>\r\n",
        code = e(code.as_str()),
        code_expiry = e(&code_expiry),
        link = e(link),
        link_expiry = e(&link_expiry),
    );
    for step in &steps {
        let _ = write!(html, "<li>{}</li>\r\n", e(step));
    }
    let _ = write!(html, "</ol>\r\n<p>{}</p>\r\n</body></html>\r\n", e(footer));

    Rendered {
        subject,
        text,
        html,
    }
}

/// `2026-11-23 22:37 UTC`: unambiguous for people in any locale.
fn format_time(t: OffsetDateTime) -> String {
    let t = t.to_offset(time::UtcOffset::UTC);
    t.format(format_description!(
        "[year]-[month]-[day] [hour]:[minute] UTC"
    ))
    .unwrap_or_else(|_| t.to_string())
}

fn capitalize(s: &str) -> String {
    let mut chars = s.chars();
    match chars.next() {
        Some(first) => first.to_uppercase().chain(chars).collect(),
        None => String::new(),
    }
}

/// Escapes text for HTML element content and double- or single-quoted attributes.
pub fn html_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            _ => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use alga_protocol::CodeId;
    use time::macros::datetime;

    fn mail(kind: MailKind, company: &str) -> OutgoingMail {
        OutgoingMail {
            outbox_id: DeliveryId::from(42_i64),
            kind,
            to: MailAddress::parse("to", "ada@example.com").expect("valid"),
            to_name: Some(DisplayName::parse("name", "Ada <Lovelace>").expect("valid")),
            company: DisplayName::parse("company", company).expect("valid"),
            code: InstallCode::from_mac(CodeId::parse("K7M2Q9XD4T").expect("valid"), &[7; 32]),
            code_expires_at: datetime!(2030-01-02 03:04:05 UTC),
            link: PresignedLink {
                url: "https://s3.test/b/k?X-Amz-Signature=abc&X-Amz-Date=1".into(),
                expires_at: datetime!(2030-01-01 00:00:00 UTC),
            },
        }
    }

    #[test]
    fn html_escape_table() {
        for (input, want) in [
            ("plain", "plain"),
            (
                "<script>alert(1)</script>",
                "&lt;script&gt;alert(1)&lt;/script&gt;",
            ),
            ("a&b", "a&amp;b"),
            ("\"x\" 'y'", "&quot;x&quot; &#39;y&#39;"),
            ("Zoë", "Zoë"),
        ] {
            assert_eq!(html_escape(input), want);
        }
    }

    #[test]
    fn bodies_carry_code_link_expiries_and_steps_with_escaped_html() {
        let m = mail(MailKind::Registration, "<b>Acme</b> & \"Sons\"");
        let code = m.code.expose_formatted();
        let r = render(&m);
        for body in [r.text.as_str(), r.html.as_str()] {
            assert!(body.contains(code.as_str()));
            assert!(body.contains("2030-01-02 03:04 UTC"), "code expiry");
            assert!(body.contains("2030-01-01 00:00 UTC"), "link expiry");
            assert!(body.contains("first-boot setup"));
            assert!(body.contains("never travels through email"));
            assert!(!body.contains("no longer work"));
        }
        assert!(r.text.contains(&m.link.url));
        assert!(r.text.contains("<b>Acme</b> & \"Sons\""));
        assert!(
            r.html
                .contains("&lt;b&gt;Acme&lt;/b&gt; &amp; &quot;Sons&quot;")
        );
        assert!(!r.html.contains("<b>Acme"));
        assert!(r.html.contains("Hello Ada &lt;Lovelace&gt;,"));
        assert!(
            r.html
                .contains("href=\"https://s3.test/b/k?X-Amz-Signature=abc&amp;X-Amz-Date=1\"")
        );
        assert_eq!(
            r.subject,
            "Your alga appliance install code for <b>Acme</b> & \"Sons\""
        );
    }

    #[test]
    fn reissue_says_previous_codes_no_longer_work() {
        let r = render(&mail(MailKind::Reissue, "Acme"));
        assert!(r.text.contains("Previous unclaimed install codes"));
        assert!(r.html.contains("Previous unclaimed install codes"));
        assert!(r.subject.starts_with("A new"));
    }

    #[test]
    fn debug_hides_code_and_link() {
        let m = mail(MailKind::Registration, "Acme");
        let dbg = format!("{m:?}");
        let code = m.code.expose_formatted();
        assert!(!dbg.contains(code.as_str()), "{dbg}");
        assert!(!dbg.contains(&code[11..]), "{dbg}");
        assert!(!dbg.contains("X-Amz-Signature"), "{dbg}");
    }

    #[test]
    fn kind_names_are_stable_and_round_trip() {
        assert_eq!(MailKind::Registration.as_str(), "registration");
        assert_eq!(MailKind::Reissue.as_str(), "reissue");
        for kind in MailKind::ALL {
            assert_eq!(MailKind::from_name(kind.as_str()), Some(kind));
        }
        assert_eq!(MailKind::from_name("Registration"), None);
        assert_eq!(MailKind::from_name(""), None);
    }

    #[test]
    fn message_ids_are_stable_per_row_and_kind() {
        let from = MailAddress::parse("from", "licenses@alga.test").expect("valid");
        let id = DeliveryId::from(Uuid::nil());
        assert_eq!(
            message_id(&id, MailKind::Reissue, &from),
            "<00000000-0000-0000-0000-000000000000.reissue@alga.test>"
        );
        assert_eq!(
            message_id(
                &DeliveryId::new(17).expect("valid"),
                MailKind::Registration,
                &from
            ),
            "<17.registration@alga.test>"
        );
        assert!(DeliveryId::new("a>b").is_err());
        assert!(DeliveryId::new("").is_err());
    }
}
