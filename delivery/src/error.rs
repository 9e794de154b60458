//! The crate's one error type, [`Error`].
//!
//! Error policy: `alga-delivery` is a library, so everything that can fail returns an
//! [`Error`] (`thiserror`), every variant documented; `anyhow` is for binaries, start-up
//! and tests only. No variant, `Display` or `Debug` output carries a secret: not the S3
//! secret key or session token, not an SMTP password, not an install code, not a
//! presigned URL's query, not the value of a refused header (only its field and the
//! position of what is wrong).
//!
//! The variants come in four groups, by what failed:
//! - a value for a mail header, usually customer input ([`Error::field`] and
//!   [`Error::reason`] serve an API that reports errors by field);
//! - setting up the SMTP sender from its configuration (`Smtp…`), at start-up;
//! - delivering one mail ([`Error::is_transient`] tells the outbox worker whether to
//!   retry);
//! - presigning the ISO link (`S3…`, [`Error::InvalidTtl`], [`Error::Signing`]).

use std::path::PathBuf;

use time::OffsetDateTime;

/// Why something in mail or presigning failed. See the module's documentation for the
/// groups of variants; new variants may come.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    // --- A value for a mail header -------------------------------------------------
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
    /// A control character (CR, LF, NUL, TAB, DEL, C1 …; Unicode category Cc): the
    /// classic header and SMTP command injection.
    #[error("{field} contains a control character ({codepoint}) at position {position}")]
    ControlCharacter {
        /// The API field.
        field: String,
        /// 1-based character position.
        position: usize,
        /// The character as `U+XXXX`.
        codepoint: String,
    },
    /// A Unicode line/paragraph separator (Zl, Zp), bidirectional control or other
    /// invisible format character (Cf: LRM, RLM, ALM, embeddings, overrides, isolates,
    /// zero-width characters, soft hyphen, tags …): not an injection in SMTP, but it
    /// makes a header display other than it reads.
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
    /// A code point that is unassigned in Unicode (including the noncharacters
    /// U+FDD0–U+FDEF and U+xxFFFE/F) or for private use (Co): nothing says how a mail
    /// program shows it, and an unassigned one may become a format character later.
    #[error(
        "{field} contains an unassigned or private-use character ({codepoint}) at position {position}"
    )]
    UnassignedCharacter {
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

    // --- Setting up the SMTP sender ------------------------------------------------
    /// A secret file the configuration names (`password_file`) could not be read or
    /// is empty; the message names the file, never its content.
    #[error(transparent)]
    SecretFile(#[from] alga_protocol::config_file::ConfigError),
    /// A file named by the `[smtp]` configuration could not be read.
    #[error("cannot read {what} {path}: {source}")]
    SmtpFile {
        /// Which setting (`ca_file`).
        what: &'static str,
        /// The path.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// `username` and `password_file` must be given together.
    #[error("smtp username and password_file must be given together")]
    SmtpIncompleteCredentials,
    /// Credentials over a plain connection would expose the password.
    #[error("smtp credentials need security = \"starttls\" or \"tls\"")]
    SmtpCredentialsWithoutTls,
    /// The password file or username is empty or has control characters.
    #[error("the smtp {0} is empty or contains control characters")]
    SmtpInvalidCredential(&'static str),
    /// `ca_file` holds no usable PEM certificate.
    #[error("ca_file {0} holds no PEM certificate")]
    SmtpCaFile(PathBuf),
    /// `ca_file` given without TLS.
    #[error("ca_file needs security = \"starttls\" or \"tls\"")]
    SmtpCaWithoutTls,
    /// lettre refused the TLS parameters.
    #[error("cannot set up TLS for the SMTP server: {0}")]
    SmtpTls(String),

    // --- Delivering one mail ---------------------------------------------------------
    /// Worth retrying later: the server is unreachable or timed out, the connection
    /// broke, TLS failed, or the server answered 4xx. Also a 5xx authentication failure
    /// (530, 534, 535, 538): it is the configuration, not this mail, that is wrong, and
    /// the queued mails must go out once an operator fixes it.
    #[error("transient SMTP failure{}: {reason}", fmt_code(*.code))]
    Transient {
        /// The SMTP reply code, when the server answered.
        code: Option<u16>,
        /// lettre's description (no code, link or password in it).
        reason: String,
    },
    /// Retrying will not help: the server answered 5xx (unknown mailbox, policy),
    /// except authentication failures (see [`Error::Transient`]).
    #[error("permanent SMTP failure{}: {reason}", fmt_code(*.code))]
    Permanent {
        /// The SMTP reply code.
        code: Option<u16>,
        /// lettre's description.
        reason: String,
    },
    /// The message could not be built from its parts (a bug, or data that slipped past
    /// validation): permanent.
    #[error("the mail could not be built: {0}")]
    InvalidMessage(String),

    // --- Presigning the ISO link -----------------------------------------------------
    /// The `[s3]` configuration is unusable (bad endpoint, bucket, key or region).
    #[error("invalid S3 configuration: {0}")]
    S3Config(String),
    /// The S3 credentials file could not be read.
    #[error("cannot read the S3 credentials file {path}: {source}")]
    S3CredentialsFile {
        /// The file named by `credentials_file`.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The S3 credentials (file or environment) are malformed; `problem` names the line
    /// or variable, never its value.
    #[error("invalid S3 credentials from {origin}: {problem}")]
    S3CredentialsInvalid {
        /// The file path or "the environment".
        origin: String,
        /// What is wrong.
        problem: String,
    },
    /// The temporary S3 credentials have expired (or expire within the second): a link
    /// signed with them would be dead on arrival. Reload fresher credentials.
    #[error("the S3 credentials expired at {expired_at}")]
    S3CredentialsExpired {
        /// When the credentials stopped being valid.
        expired_at: OffsetDateTime,
    },
    /// The requested validity of a link is not a positive number of seconds.
    #[error("a link must be valid for at least one second")]
    InvalidTtl,
    /// The SigV4 signer refused its input (a bug or an unusable configuration).
    #[error("SigV4 signing failed: {0}")]
    Signing(String),
}

fn fmt_code(code: Option<u16>) -> String {
    code.map(|c| format!(" ({c})")).unwrap_or_default()
}

impl Error {
    /// Whether a failed delivery may succeed later with the same mail (back off and
    /// retry): only [`Error::Transient`]. Every other error is permanent for that mail.
    pub fn is_transient(&self) -> bool {
        matches!(self, Error::Transient { .. })
    }

    /// The API field a header value error is about; none for every other error
    /// (a delivery id included).
    pub fn field(&self) -> Option<&str> {
        match self {
            Error::Empty { field }
            | Error::TooLong { field, .. }
            | Error::ControlCharacter { field, .. }
            | Error::FormattingCharacter { field, .. }
            | Error::UnassignedCharacter { field, .. }
            | Error::EncodedWordLike { field, .. }
            | Error::InvalidAddress { field, .. } => Some(field),
            _ => None,
        }
    }

    /// The message without the leading field name ("contains a control character
    /// (U+000A) at position 4"), for an API that reports errors keyed by field.
    pub fn reason(&self) -> String {
        let message = self.to_string();
        match self.field() {
            Some(field) => message
                .strip_prefix(field)
                .map(|rest| rest.trim_start().to_owned())
                .unwrap_or(message),
            None => message,
        }
    }
}

/// Two errors are equal when they are the same variant and say the same: every
/// variant's message shows all its fields, except an I/O error's, which has no
/// equality of its own and is compared by its message too.
impl PartialEq for Error {
    fn eq(&self, other: &Error) -> bool {
        std::mem::discriminant(self) == std::mem::discriminant(other)
            && self.to_string() == other.to_string()
    }
}

impl Eq for Error {}
