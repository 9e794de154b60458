//! The install-code mail: rendering and SMTP delivery (lettre, rustls with ring).
//!
//! The gateway's outbox worker builds an [`OutgoingMail`] (re-deriving the code through
//! the issuer; the outbox never stores it) and calls [`Mailer::send`]. A failure says
//! whether retrying can help ([`Error::is_transient`]), so the worker backs off on a
//! transient error and gives up at once on a permanent one.
//!
//! Invariants:
//! - One recipient per mail: the envelope is exactly the `From` and the one `To`.
//! - Header values come only from [`DisplayName`], [`MailAddress`] and [`Sender`], which
//!   refuse CR, LF and every other control character, format characters (bidi
//!   controls, line separators …) and `=?` before any SMTP traffic. They are also the
//!   gateway API's rule for names and addresses, so what the API accepts is deliverable.
//! - The code, the link and the SMTP password are never logged nor in an error.
//! - With credentials configured, the connection must be encrypted.

mod header;
mod template;

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use lettre::message::{Mailbox, MultiPart};
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::{Certificate, Tls, TlsParameters};
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Deserializer};
use tracing::instrument;

use crate::Error;

pub use header::{
    DisplayName, MAX_ADDRESS_LEN, MAX_HEADER_TEXT_CHARS, MAX_LOCAL_PART_LEN, MailAddress, Sender,
    is_allowed_header_char, refused_bmp_ranges, validate_header_text,
};
pub use template::{DeliveryId, MailKind, OutgoingMail, html_escape, message_id};

/// Default time limit of one delivery (connect, TLS, the whole SMTP dialogue).
pub const DEFAULT_SMTP_TIMEOUT: Duration = Duration::from_secs(30);

/// How the connection to the SMTP server is protected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SmtpSecurity {
    /// Plain SMTP: only for a relay on the same host or a test sink. Refused together
    /// with credentials.
    None,
    /// Plain connection upgraded with STARTTLS, which is required (never opportunistic:
    /// a stripped STARTTLS must fail, not downgrade).
    Starttls,
    /// TLS from the first byte (implicit TLS, usually port 465).
    Tls,
}

/// The gateway's `[smtp]` table.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SmtpConfig {
    /// SMTP server host name (also the name its certificate must carry).
    pub host: String,
    /// SMTP server port.
    pub port: u16,
    /// Transport security.
    pub security: SmtpSecurity,
    /// `From` header and envelope sender; its domain names the `Message-ID`s.
    pub from: Sender,
    /// SMTP AUTH user (with `password_file`).
    #[serde(default)]
    pub username: Option<String>,
    /// File holding the SMTP AUTH password (one line).
    #[serde(default)]
    pub password_file: Option<PathBuf>,
    /// Extra trust root(s), PEM, for the SMTP server's certificate (a private CA).
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// Time limit of one whole delivery (connect, TLS, dialogue), in seconds.
    #[serde(default = "default_timeout", deserialize_with = "seconds")]
    pub timeout: Duration,
}

fn default_timeout() -> Duration {
    DEFAULT_SMTP_TIMEOUT
}

fn seconds<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let secs = u64::deserialize(d)?;
    if secs == 0 {
        return Err(serde::de::Error::custom(
            "timeout must be at least 1 second",
        ));
    }
    Ok(Duration::from_secs(secs))
}

/// Sends install-code mails through one SMTP server. Cheap to share; each
/// [`Mailer::send`] opens its own connection (no pool: mails are rare, and a fresh
/// connection after an outage needs no pool recovery).
pub struct Mailer {
    transport: AsyncSmtpTransport<Tokio1Executor>,
    from: Sender,
    server: String,
    timeout: Duration,
}

impl std::fmt::Debug for Mailer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mailer")
            .field("server", &self.server)
            .field("from", &self.from)
            .finish_non_exhaustive()
    }
}

impl Mailer {
    /// Builds the mailer; reads the password and CA files now, so a broken
    /// configuration stops the gateway at start-up rather than at the first mail.
    #[instrument(skip_all)]
    pub fn new(config: &SmtpConfig) -> Result<Mailer, Error> {
        let mut builder = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(&config.host)
            .port(config.port)
            .timeout(Some(config.timeout));
        let tls_params = || -> Result<TlsParameters, Error> {
            let mut params = TlsParameters::builder(config.host.clone());
            if let Some(path) = &config.ca_file {
                for cert in read_ca_file(path)? {
                    params = params.add_root_certificate(cert);
                }
            }
            params
                .build_rustls()
                .map_err(|e| Error::SmtpTls(e.to_string()))
        };
        builder = match config.security {
            SmtpSecurity::None => {
                if config.ca_file.is_some() {
                    return Err(Error::SmtpCaWithoutTls);
                }
                if !is_loopback(&config.host) {
                    tracing::warn!(
                        smtp.host = %config.host,
                        "SMTP without TLS to a host that is not loopback: install codes travel in clear"
                    );
                }
                builder.tls(Tls::None)
            }
            SmtpSecurity::Starttls => builder.tls(Tls::Required(tls_params()?)),
            SmtpSecurity::Tls => builder.tls(Tls::Wrapper(tls_params()?)),
        };
        match (&config.username, &config.password_file) {
            (None, None) => {}
            (Some(user), Some(path)) => {
                if config.security == SmtpSecurity::None {
                    return Err(Error::SmtpCredentialsWithoutTls);
                }
                if user.is_empty() || user.chars().any(char::is_control) {
                    return Err(Error::SmtpInvalidCredential("username"));
                }
                let password = read_password(path)?;
                builder = builder.credentials(Credentials::new(
                    user.clone(),
                    password.expose_secret().to_owned(),
                ));
            }
            _ => return Err(Error::SmtpIncompleteCredentials),
        }
        Ok(Mailer {
            transport: builder.build(),
            from: config.from.clone(),
            server: format!("{}:{}", config.host, config.port),
            timeout: config.timeout,
        })
    }

    /// The configured sender.
    pub fn from(&self) -> &Sender {
        &self.from
    }

    /// Renders and sends `mail` to its one recipient with the `Message-ID`
    /// `<{outbox_id}.{kind}@{from domain}>`: a retry of the same outbox row sends the
    /// same id, so duplicates can be recognised downstream.
    #[instrument(skip_all, fields(mail.kind = mail.kind.as_str(), outbox.id = mail.outbox_id.as_str()))]
    pub async fn send(&self, mail: &OutgoingMail) -> Result<(), Error> {
        let message = self.build(mail)?;
        // lettre bounds only the connect with its timeout; a server that accepts and then
        // stays silent would hold the worker forever.
        let sent = match tokio::time::timeout(self.timeout, self.transport.send(message)).await {
            Ok(sent) => sent,
            Err(_) => {
                let error = Error::Transient {
                    code: None,
                    reason: format!("no complete SMTP exchange within {:?}", self.timeout),
                };
                tracing::warn!(smtp.server = %self.server, error = %error, "mail not delivered");
                return Err(error);
            }
        };
        match sent {
            Ok(_) => {
                tracing::info!(smtp.server = %self.server, "mail accepted by the SMTP server");
                Ok(())
            }
            Err(e) => {
                let error = smtp_error(&e);
                tracing::warn!(
                    smtp.server = %self.server,
                    mail.transient = error.is_transient(),
                    error = %error,
                    "mail not delivered"
                );
                Err(error)
            }
        }
    }

    /// The message as it would be sent (tests and previews). Holds the code.
    #[instrument(skip_all)]
    pub fn build(&self, mail: &OutgoingMail) -> Result<Message, Error> {
        // The link goes into an href: only a web URL may (never `javascript:` and co).
        let url = mail.link.url.as_str();
        if !(url.starts_with("https://") || url.starts_with("http://"))
            || url.chars().any(|c| c.is_whitespace() || c.is_control())
        {
            return Err(Error::InvalidMessage(
                "the download link is not an http(s) URL".into(),
            ));
        }
        let rendered = template::render(mail);
        let to = Mailbox::new(
            mail.to_name.as_ref().map(|n| n.as_str().to_owned()),
            mail.to.lettre().clone(),
        );
        let id = message_id(&mail.outbox_id, mail.kind, self.from.address());
        Message::builder()
            .from(self.from.mailbox())
            .to(to)
            .subject(rendered.subject.clone())
            .message_id(Some(id))
            .multipart(MultiPart::alternative_plain_html(
                String::clone(&rendered.text),
                String::clone(&rendered.html),
            ))
            .map_err(|e| Error::InvalidMessage(e.to_string()))
    }
}

/// A failed SMTP exchange as an [`Error`]: [`Error::Transient`] unless the server's
/// answer says retrying cannot help.
fn smtp_error(e: &lettre::transport::smtp::Error) -> Error {
    let code = e.status().map(u16::from);
    let reason = e.to_string();
    let auth_failure = matches!(code, Some(530 | 534 | 535 | 538));
    if e.is_permanent() && !auth_failure {
        Error::Permanent { code, reason }
    } else {
        // 4xx, timeouts, refused or broken connections, TLS, authentication: all may
        // pass without changing the mail.
        Error::Transient { code, reason }
    }
}

fn is_loopback(host: &str) -> bool {
    host == "localhost"
        || host
            .trim_matches(|c| c == '[' || c == ']')
            .parse::<IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// Reads the SMTP password: the file's first line, without its line ending.
fn read_password(path: &Path) -> Result<SecretString, Error> {
    let password = alga_protocol::config_file::read_secret_file(path)?;
    if password.expose_secret().chars().any(char::is_control) {
        return Err(Error::SmtpInvalidCredential("password"));
    }
    Ok(password)
}

/// Reads every PEM certificate of `path`.
fn read_ca_file(path: &Path) -> Result<Vec<Certificate>, Error> {
    let pem = std::fs::read(path).map_err(|source| Error::SmtpFile {
        what: "ca_file",
        path: path.to_owned(),
        source,
    })?;
    let ders: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<_, _>>()
        .map_err(|_| Error::SmtpCaFile(path.to_owned()))?;
    if ders.is_empty() {
        return Err(Error::SmtpCaFile(path.to_owned()));
    }
    ders.into_iter()
        .map(|der| Certificate::from_der(der.to_vec()).map_err(|e| Error::SmtpTls(e.to_string())))
        .collect()
}
