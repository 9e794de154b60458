//! Issue 18, finding 6: whatever `POST /register-tenant` accepts, the mail carries.
//!
//! Before the fix, a company or contact name with U+2028, U+202E or `=?` got 201 and an
//! install code, and the mail then failed for good (the mailer's header rule refused
//! what the API's own rule had let through): the contact never got the code. Now the
//! API's `Name` and `ContactEmail` are built on the mail's one rule
//! (`alga_delivery::mail::{DisplayName, MailAddress}`). These tests go through the real
//! gateway, issuer and a real SMTP server (`SmtpSink`, Debian's aiosmtpd): a refused
//! value is a 400 with nothing written; an accepted one is a 201 whose first attempt
//! sends the mail, and the message (parsed by Python's own MIME parser) carries the
//! names as given.

use std::path::Path;

use alga_delivery::mail::{DisplayName, MailAddress};
use proptest::prelude::*;
use serde_json::{Value, json};

use crate::harness::{Opts, SmtpSink, Stack, send};

async fn stack(sink: &SmtpSink) -> Stack {
    Stack::start_with(Opts {
        smtp_port: Some(sink.port),
        mail: Some(String::new()),
        ..Opts::default()
    })
    .await
}

async fn register(s: &Stack, company: &str, name: &str, email: &str) -> (u16, Value) {
    let (st, v, _) = send(s.store().post(s.url("/register-tenant")).json(&json!({
        "company": company,
        "contact": {"name": name, "email": email},
        "edition": "essentials",
    })))
    .await;
    (st.as_u16(), v)
}

/// What a receiving mail program sees, by Python's MIME parser: the `To` and `Subject`
/// headers unfolded and RFC 2047-decoded, and the text part.
fn parsed(eml: &Path) -> Value {
    const SCRIPT: &str = r#"
import email, email.header, email.policy, json, re, sys
msg = email.message_from_bytes(open(sys.argv[1], "rb").read(), policy=email.policy.default)
def rfc2047(name):
    values = [str(v) for (n, v) in msg.raw_items() if n.lower() == name]
    unfolded = re.sub(r"\r?\n(?=[ \t])", "", values[0]) if len(values) == 1 else None
    return None if unfolded is None else str(email.header.make_header(email.header.decode_header(unfolded)))
text = [p.get_content() for p in msg.walk() if p.get_content_type() == "text/plain"]
to = msg["To"]
print(json.dumps({
    "to": rfc2047("to"),
    "to_addresses": [a.addr_spec for a in to.addresses] if to is not None else [],
    "subject": rfc2047("subject"),
    "text": text[0] if len(text) == 1 else None,
    "defects": [repr(d) for p in msg.walk() for d in p.defects],
}))
"#;
    let out = std::process::Command::new("/usr/bin/python3")
        .args(["-c", SCRIPT])
        .arg(eml)
        .output()
        .expect("/usr/bin/python3 runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("the parser's JSON")
}

/// The one message the sink holds for `recipient`, parsed.
fn the_mail_to(sink: &SmtpSink, recipient: &str) -> Value {
    let rcpt = format!("X-Alga-Sink-Rcpt-To: <{recipient}>");
    let files: Vec<_> = std::fs::read_dir(sink.dir())
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    let matching: Vec<_> = files
        .into_iter()
        .filter(|p| std::fs::read_to_string(p).is_ok_and(|raw| raw.lines().any(|l| l == rcpt)))
        .collect();
    assert_eq!(matching.len(), 1, "one message to {recipient}");
    parsed(&matching[0])
}

/// Trimmed, runs of spaces collapsed: how the API stores a name (written out here, not
/// taken from the rule under test).
fn canonical(s: &str) -> String {
    let mut out = String::new();
    for c in s.trim().chars() {
        if !(c == ' ' && out.ends_with(' ')) {
            out.push(c);
        }
    }
    out
}

/// The checks of one accepted registration: sent within the request, and the mail
/// as a receiving program reads it carries the address and both names.
fn assert_delivered_intact(sink: &SmtpSink, v: &Value, company: &str, name: &str, email: &str) {
    assert_eq!(v["email"]["status"], "sent", "{v}");
    let email = email.trim();
    let m = the_mail_to(sink, email);
    assert_eq!(m["defects"], json!([]), "{m}");
    assert_eq!(m["to_addresses"], json!([email]), "{m}");
    let (company, name) = (canonical(company), canonical(name));
    let to = m["to"].as_str().unwrap_or_default();
    assert!(
        to == format!("{name} <{email}>") || to == format!("\"{name}\" <{email}>"),
        "To: {to:?}, want the name {name:?}"
    );
    assert_eq!(
        m["subject"].as_str(),
        Some(format!("Your alga appliance install code for {company}").as_str())
    );
    let text = m["text"].as_str().unwrap_or_default();
    assert!(text.contains(&format!("Hello {name},")), "{text}");
    assert!(
        text.contains(&format!("under your tenant ({company})")),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn names_the_mail_cannot_carry_are_refused_and_nothing_is_written() {
    let sink = SmtpSink::start().await;
    let s = stack(&sink).await;
    let hostile = [
        "Acme\u{2028}GmbH",
        "Acme\u{2029}GmbH",
        "Acme \u{202E}HbmG",
        "Acme =? GmbH",
        "=?utf-8?q?Acme?=",
        "Acme\u{061C}",
        "Acme\u{200F}",
        "Acme\u{2066}x\u{2069}",
        "Acme\u{200B}",
        "Acme\u{00AD}",
        "\u{FEFF}Acme",
        "Acme\u{E0041}",
        "Acme\u{E000}",
        "Acme\u{FFFF}",
    ];
    for (i, bad) in hostile.iter().enumerate() {
        let email = format!("refused-{i}@mail.test");
        for (company, name, field) in [(*bad, "Ada", "company"), ("Good Co", *bad, "contact.name")]
        {
            let (st, v) = register(&s, company, name, &email).await;
            assert_eq!(st, 400, "{bad:?} in {field}: {v}");
            assert_eq!(v["error"]["code"], "validation_failed", "{v}");
            let message = v["error"]["fields"][field].as_str().unwrap_or_default();
            assert!(!message.is_empty(), "{field}: {v}");
            assert!(
                !message.contains("Acme"),
                "the value is not echoed: {message}"
            );
        }
        for bad_email in [
            format!("a{bad}@mail.test"),
            format!("=?utf-8?q?x?=-{i}@mail.test"),
        ] {
            let (st, v) = register(&s, "Good Co", "Ada", &bad_email).await;
            assert_eq!(st, 400, "{bad_email:?}: {v}");
            assert!(v["error"]["fields"]["contact.email"].is_string(), "{v}");
        }
    }
    assert_eq!(s.count("SELECT count(*) FROM tenants").await, 0);
    assert_eq!(s.count("SELECT count(*) FROM mail_outbox").await, 0);
    assert!(
        std::fs::read_dir(sink.dir()).map_or(true, |d| d.count() == 0),
        "nothing reached the SMTP server"
    );

    // Legitimate text of every kind still registers and arrives as typed (runs of
    // spaces collapsed).
    for (i, (company, name)) in [
        ("Zoë  Ørsted  A/S", "Zoë Ünal-Øster"),
        ("株式会社テスト", "李雷\u{3000}韩梅梅"),
        ("عبد الله للتجارة", "שלום עליכם"),
        (
            "O'Brien & \"Sons\" <Ltd>; a=b? (x)",
            "Mallory <eve@evil.test>, \\ Bob",
        ),
        ("Société Générale — €100 ☃ 👩🏽", "e\u{0301}"),
    ]
    .into_iter()
    .enumerate()
    {
        let email = format!("ok-{i}@mail.test");
        let (st, v) = register(&s, company, name, &email).await;
        assert_eq!(st, 201, "{company:?} / {name:?}: {v}");
        assert_delivered_intact(&sink, &v, company, name, &email);
    }
    s.stop().await;
}

/// Characters people type, from many scripts, with every ASCII special.
fn typed_char() -> BoxedStrategy<char> {
    prop_oneof![
        30 => proptest::char::range(' ', '~'),
        8 => Just(' '),
        3 => proptest::sample::select(vec!['=', '?', '"', '\\', '<', '>', '(', ')', ',', ';', ':', '@']),
        8 => proptest::char::range('\u{a0}', '\u{24f}'),
        6 => proptest::char::range('\u{370}', '\u{52f}'),
        3 => proptest::char::range('\u{5d0}', '\u{5ea}'),
        3 => proptest::char::range('\u{620}', '\u{64a}'),
        3 => proptest::char::range('\u{2000}', '\u{200a}'),
        3 => proptest::char::range('\u{2010}', '\u{2027}'),
        8 => proptest::char::range('\u{3000}', '\u{30ff}'),
        6 => proptest::char::range('\u{4e00}', '\u{9fff}'),
        4 => proptest::char::range('\u{1f300}', '\u{1f64f}'),
        2 => proptest::char::range('\u{300}', '\u{36f}'),
    ]
    .boxed()
}

/// Three names in four as typed, one with a character the mail cannot carry.
fn name() -> BoxedStrategy<String> {
    let typed = || proptest::collection::vec(typed_char(), 0..90).prop_map(String::from_iter);
    let hostile = prop_oneof![
        proptest::sample::select(vec![
            '\r',
            '\n',
            '\t',
            '\u{85}',
            '\u{ad}',
            '\u{61c}',
            '\u{200f}',
            '\u{2028}',
            '\u{2029}',
            '\u{202e}',
            '\u{2066}',
            '\u{feff}',
            '\u{e000}',
            '\u{fdd0}',
            '\u{e0041}',
        ]),
        any::<char>(),
    ];
    prop_oneof![
        3 => typed(),
        1 => (typed(), hostile, typed()).prop_map(|(a, c, b)| format!("{a}{c}{b}")),
    ]
    .boxed()
}

/// The property through the API (`ALGA_DELIVERABLE_CASES`, default 48 registrations):
/// a 201 always means the mail went out in the request and arrived intact; a 400 names
/// the field, and the mail's rule refuses that value too; nothing else (no 5xx).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_registration_the_api_accepts_is_delivered_intact() {
    let cases: u32 = std::env::var("ALGA_DELIVERABLE_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(48);
    let sink = SmtpSink::start().await;
    let s = stack(&sink).await;
    let strategy = (
        name(),
        name(),
        "[a-zA-Z0-9!#$%&'*+/=?^_`{|}~-]{1,12}(\\.[a-zA-Z0-9!#$%&'*+/=?^_`{|}~-]{1,8}){0,2}",
        "([a-zA-Z0-9]([a-zA-Z0-9-]{0,10}[a-zA-Z0-9])?\\.){1,2}[a-zA-Z]{2,6}",
        proptest::sample::select(vec!["", " ", "  "]),
    );
    let mut runner = proptest::test_runner::TestRunner::new(proptest::test_runner::Config {
        cases,
        failure_persistence: None,
        // Each case is a registration against the real stack: shrink a little only.
        max_shrink_iters: 64,
        ..proptest::test_runner::Config::default()
    });
    let rt = tokio::runtime::Handle::current();
    let counts = std::cell::Cell::new((0usize, 0usize, 0usize)); // cases, accepted, refused
    let outcome = runner.run(&strategy, |(company, contact, local, domain, pad)| {
        let (n, accepted, refused) = counts.get();
        // Unique per case (a tenant is unique by company and contact).
        let email = format!("{pad}{local}.c{n}@{domain}{pad}");
        let st_v =
            tokio::task::block_in_place(|| rt.block_on(register(&s, &company, &contact, &email)));
        match st_v {
            (201, v) => {
                counts.set((n + 1, accepted + 1, refused));
                assert_delivered_intact(&sink, &v, &company, &contact, &email);
            }
            (400, v) => {
                counts.set((n + 1, accepted, refused + 1));
                prop_assert_eq!(&v["error"]["code"], "validation_failed", "{}", v);
                let fields = v["error"]["fields"]
                    .as_object()
                    .cloned()
                    .unwrap_or_default();
                prop_assert!(!fields.is_empty(), "{}", v);
                for (field, _) in fields {
                    let mail_refuses = match field.as_str() {
                        "company" => DisplayName::parse("company", &company).is_err(),
                        "contact.name" => DisplayName::parse("contact.name", &contact).is_err(),
                        "contact.email" => {
                            MailAddress::parse_trimmed("contact.email", &email).is_err()
                        }
                        other => return Err(TestCaseError::fail(format!("field {other}: {v}"))),
                    };
                    // Only the API's tighter length bound may refuse more.
                    let too_long = |t: &str| t.trim().chars().count() > 200;
                    prop_assert!(
                        mail_refuses || too_long(&company) || too_long(&contact),
                        "{} refused by the API but not by the mail",
                        field
                    );
                }
            }
            (other, v) => {
                counts.set((n + 1, accepted, refused));
                return Err(TestCaseError::fail(format!("status {other}: {v}")));
            }
        }
        Ok(())
    });
    let (total, accepted, refused) = counts.get();
    println!(
        "finding 6 (API): {total} registrations: {accepted} × 201 sent and delivered intact, \
         {refused} × 400"
    );
    if let Err(e) = outcome {
        panic!("{e}");
    }
    assert!(
        accepted * 4 >= cases as usize,
        "too few accepted to mean anything: {accepted} of {cases}"
    );
    s.stop().await;
}
