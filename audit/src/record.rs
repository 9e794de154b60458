//! The audit record of CONTRACT.md §6: who did what to which tenant, with which outcome.
//!
//! A [`NewRecord`] can only be built valid: every name has a fixed charset, every free
//! string a length bound, times are UTC truncated to microseconds (Postgres' precision),
//! and the [`guard`](crate::guard) has rejected anything that looks like a secret. Its
//! [canonical bytes](crate::canonical) are computed once, at construction, and those
//! bytes (not a re-encoding) are what is stored and hashed.
//!
//! Sequence number, `prev_hash` and `hash` are not part of a `NewRecord`: the sequencer
//! assigns them after commit ([`ChainedRecord`](crate::store::ChainedRecord)).

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::canonical;
use crate::error::AuditError;
use crate::guard;

/// Largest canonical encoding of one record (details included).
pub const MAX_RECORD_BYTES: usize = 16 * 1024;
/// Longest action name.
pub const MAX_ACTION_LEN: usize = 64;
/// Longest role, subject key, detail key or error code.
pub const MAX_NAME_LEN: usize = 64;
/// Longest identity URI, subject value or request id.
pub const MAX_VALUE_LEN: usize = 512;
/// Deepest nesting of `details`.
pub const MAX_DETAILS_DEPTH: usize = 8;
/// Largest integer magnitude in `details` (I-JSON: exactly representable as a double).
pub const MAX_SAFE_INTEGER: u64 = (1 << 53) - 1;

/// Actions the gateway records today. [`Action`] is an open set; these are the names
/// in use, so that two call sites never spell the same action two ways.
pub mod actions {
    pub const TENANT_REGISTER: &str = "tenant.register";
    pub const CODE_MINT: &str = "code.mint";
    pub const CODE_REDEEM: &str = "code.redeem";
    pub const CODE_REISSUE: &str = "code.reissue";
    pub const CODE_REVOKE: &str = "code.revoke";
    pub const APPLIANCE_CHECK_IN: &str = "appliance.check_in";
    pub const APPLIANCE_REVOKE: &str = "appliance.revoke";
    /// A rebuild's redeem retired the appliance (subject `appliance_id`, the old one;
    /// `replaced_by`, the new one), in the redeem's transaction.
    pub const APPLIANCE_REPLACE: &str = "appliance.replace";
    /// A paid appliance went past its next expected check-in plus its edition's grace
    /// (subject `appliance_id`; details `edition`, `last_seen_at`: its last check-in,
    /// or its redeem before the first, in Unix seconds). Written once per episode by
    /// the gateways' overdue sweep; a later check-in ends the episode.
    pub const APPLIANCE_OVERDUE: &str = "appliance.overdue";
    pub const TENANT_SUSPEND: &str = "tenant.suspend";
    pub const TENANT_RESUME: &str = "tenant.resume";
    /// The store moved the tenant to another edition (details `from`, `to`).
    pub const ENTITLEMENT_CHANGE: &str = "entitlement.change";
    pub const MAIL_SENT: &str = "mail.sent";
    pub const MAIL_FAILED: &str = "mail.failed";
    pub const CHECKPOINT_SIGNED: &str = "checkpoint.signed";
    /// Requests refused before a caller was established (no or a wrong client
    /// certificate, a wrong role, a redeem rate-limited or malformed before its code
    /// was verified), counted in memory and recorded once per window: one record per
    /// refused action, error code, route and source network. Such refusals have no
    /// record of their own.
    ///
    /// - `actor`: `anonymous`; `tenant_id`, `request_id`, `source`: `null`;
    ///   `subjects`: `{}`; `outcome`: failure with the callers' `error_code`;
    ///   `time`: when the summary was written (after the window, or at shutdown).
    /// - `details`: `refused_action` (what the requests would have been:
    ///   `access.denied` for an identity refused by a route, `code.redeem`, …),
    ///   `error_code` (as in `outcome`), `count` (requests, ≥ 1), `window_start` (RFC
    ///   3339, UTC, a multiple of the window), `window_seconds` (default 60),
    ///   `source_network` (`a.b.c.0/24`, an IPv6 `/48`, or `other` once the gateway's
    ///   bound on keys in memory is reached), and for `access.denied` the `method` and
    ///   `route` template (`/tenants/{tenant_id}`).
    ///
    /// Each gateway process writes its own: with N gateways, up to N records per key
    /// and window. Counts of a window not yet written are lost if the process dies.
    pub const REFUSED_SUMMARY: &str = "access.refused_summary";
}

/// What happened: dotted lowercase words, e.g. `code.redeem`
/// (`[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)+`, at most 64 bytes).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Action(String);

impl Action {
    /// Parses an action name.
    pub fn new(name: &str) -> Result<Action, AuditError> {
        let valid =
            name.len() <= MAX_ACTION_LEN && name.contains('.') && name.split('.').all(is_word);
        if valid {
            Ok(Action(name.to_owned()))
        } else {
            Err(invalid(
                "action",
                "must be dotted lowercase words like `code.redeem`",
            ))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for Action {
    type Error = AuditError;
    fn try_from(s: String) -> Result<Action, AuditError> {
        Action::new(&s)
    }
}

impl From<Action> for String {
    fn from(a: Action) -> String {
        a.0
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Who acted: a role (`store`, `auditor`, … from the policy, or `appliance`,
/// `anonymous`, `system`) and, when known, an identity (a certificate's URI SAN, an
/// appliance's SPIFFE id, a component name).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Actor {
    role: String,
    identity: Option<String>,
}

impl Actor {
    /// A client authenticated by certificate, with the role the policy maps it to.
    pub fn client(role: &str, identity_uri: &str) -> Result<Actor, AuditError> {
        Actor::new(role, Some(identity_uri))
    }

    /// An appliance, by its credential's SPIFFE id.
    pub fn appliance(identity_uri: &str) -> Result<Actor, AuditError> {
        Actor::new("appliance", Some(identity_uri))
    }

    /// A caller without a client certificate (an appliance redeeming its code).
    pub fn anonymous() -> Actor {
        Actor {
            role: "anonymous".to_owned(),
            identity: None,
        }
    }

    /// The service itself (the mail worker, the sequencer), named by component.
    pub fn system(component: &str) -> Result<Actor, AuditError> {
        Actor::new("system", Some(component))
    }

    /// Any role and optional identity.
    pub fn new(role: &str, identity: Option<&str>) -> Result<Actor, AuditError> {
        if !is_word(role) || role.len() > MAX_NAME_LEN {
            return Err(invalid("actor.role", "must be a lowercase word"));
        }
        if let Some(id) = identity {
            check_token("actor.identity", id)?;
        }
        Ok(Actor {
            role: role.to_owned(),
            identity: identity.map(str::to_owned),
        })
    }

    pub fn role(&self) -> &str {
        &self.role
    }

    pub fn identity(&self) -> Option<&str> {
        self.identity.as_deref()
    }
}

/// Success, or failure with the stable error code the caller was given.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum Outcome {
    Success,
    Failure { error_code: String },
}

impl Outcome {
    /// A failure with a stable error code (`code_invalid`, `rate_limited`, …).
    pub fn failure(error_code: &str) -> Result<Outcome, AuditError> {
        if is_word(error_code) && error_code.len() <= MAX_NAME_LEN {
            Ok(Outcome::Failure {
                error_code: error_code.to_owned(),
            })
        } else {
            Err(invalid("outcome.error_code", "must be a lowercase word"))
        }
    }

    pub fn is_success(&self) -> bool {
        matches!(self, Outcome::Success)
    }
}

/// A record ready to be appended: valid, secret-free, with its canonical bytes.
#[derive(Clone, PartialEq, Eq)]
pub struct NewRecord {
    record: Record,
    canonical: Vec<u8>,
}

impl fmt::Debug for NewRecord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NewRecord")
            .field("action", &self.record.action)
            .field("tenant_id", &self.record.tenant_id)
            .field("outcome", &self.record.outcome)
            .finish_non_exhaustive()
    }
}

impl NewRecord {
    /// Starts a record of `action` by `actor` at `time`, successful, with no subjects
    /// and empty details. `time` is the caller's clock (time is a parameter); it is
    /// stored in UTC, truncated to microseconds.
    pub fn builder(time: OffsetDateTime, actor: Actor, action: Action) -> RecordBuilder {
        RecordBuilder {
            record: Record {
                time: truncate_to_micros(time),
                actor,
                action,
                tenant_id: None,
                subjects: BTreeMap::new(),
                outcome: Outcome::Success,
                request_id: None,
                source: None,
                details: Map::new(),
            },
            error: None,
        }
    }

    pub fn record(&self) -> &Record {
        &self.record
    }

    /// The canonical encoding: what is stored and hashed.
    pub fn canonical_bytes(&self) -> &[u8] {
        &self.canonical
    }
}

/// Builds a [`NewRecord`]; the first invalid input is reported by [`RecordBuilder::build`].
#[derive(Debug)]
pub struct RecordBuilder {
    record: Record,
    error: Option<AuditError>,
}

impl RecordBuilder {
    pub fn tenant(mut self, tenant_id: Uuid) -> Self {
        self.record.tenant_id = Some(tenant_id);
        self
    }

    /// Adds a subject id (`code_id`, `appliance_id`, `jti`, `serial`, …).
    pub fn subject(mut self, key: &str, value: impl fmt::Display) -> Self {
        let value = value.to_string();
        if let Err(e) = check_subject(key, &value) {
            self.error.get_or_insert(e);
        } else {
            self.record.subjects.insert(key.to_owned(), value);
        }
        self
    }

    pub fn outcome(mut self, outcome: Outcome) -> Self {
        self.record.outcome = outcome;
        self
    }

    /// Marks the action failed with a stable error code.
    pub fn failure(mut self, error_code: &str) -> Self {
        match Outcome::failure(error_code) {
            Ok(o) => self.record.outcome = o,
            Err(e) => {
                self.error.get_or_insert(e);
            }
        }
        self
    }

    pub fn request_id(mut self, request_id: &str) -> Self {
        match check_token("request_id", request_id) {
            Ok(()) => self.record.request_id = Some(request_id.to_owned()),
            Err(e) => {
                self.error.get_or_insert(e);
            }
        }
        self
    }

    pub fn source(mut self, address: IpAddr) -> Self {
        self.record.source = Some(address);
        self
    }

    /// Adds one detail. Values go through the secret guard at [`build`](Self::build).
    pub fn detail(mut self, key: &str, value: impl Into<Value>) -> Self {
        self.record.details.insert(key.to_owned(), value.into());
        self
    }

    /// Replaces the details with a JSON object (anything else is an error).
    pub fn details(mut self, details: Value) -> Self {
        match details {
            Value::Object(map) => self.record.details = map,
            _ => {
                self.error
                    .get_or_insert(invalid("details", "must be a JSON object"));
            }
        }
        self
    }

    /// Validates everything, runs the secret guard and computes the canonical bytes.
    pub fn build(self) -> Result<NewRecord, AuditError> {
        if let Some(e) = self.error {
            return Err(e);
        }
        let record = self.record;
        check_details(&record.details)?;
        guard::check_record(&record)?;
        let canonical = canonical::encode(&record);
        if canonical.len() > MAX_RECORD_BYTES {
            return Err(invalid("details", "record larger than 16 KiB"));
        }
        Ok(NewRecord { record, canonical })
    }
}

/// A record's content, as encoded in its canonical bytes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Record {
    #[serde(with = "canonical::time_format")]
    pub time: OffsetDateTime,
    pub actor: Actor,
    pub action: Action,
    pub tenant_id: Option<Uuid>,
    pub subjects: BTreeMap<String, String>,
    pub outcome: Outcome,
    pub request_id: Option<String>,
    pub source: Option<IpAddr>,
    pub details: Map<String, Value>,
}

impl Record {
    /// Decodes canonical bytes, refusing anything that is not exactly canonical (so one
    /// record has one encoding).
    pub fn from_canonical(bytes: &[u8]) -> Result<Record, AuditError> {
        let wire: canonical::Wire = serde_json::from_slice(bytes)
            .map_err(|e| AuditError::Corrupt(format!("record is not canonical JSON: {e}")))?;
        if wire.v != canonical::VERSION {
            return Err(AuditError::Corrupt(format!(
                "record format version {} is not {}",
                wire.v,
                canonical::VERSION
            )));
        }
        let record = Record::try_from(wire)?;
        if canonical::encode(&record) != bytes {
            return Err(AuditError::Corrupt(
                "record bytes are valid JSON but not the canonical encoding".into(),
            ));
        }
        Ok(record)
    }
}

pub(crate) fn truncate_to_micros(t: OffsetDateTime) -> OffsetDateTime {
    let t = t.to_offset(time::UtcOffset::UTC);
    let micros = t.nanosecond() / 1_000;
    // Invariant: micros * 1000 < 1e9, always a valid nanosecond value.
    t.replace_nanosecond(micros * 1_000).unwrap_or(t)
}

fn invalid(field: &'static str, reason: &str) -> AuditError {
    AuditError::InvalidRecord {
        field: field.to_owned(),
        reason: reason.to_owned(),
    }
}

/// `[a-z][a-z0-9_]*`
pub(crate) fn is_word(s: &str) -> bool {
    let mut bytes = s.bytes();
    matches!(bytes.next(), Some(b'a'..=b'z'))
        && bytes.all(|b| matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'_'))
}

/// Printable ASCII without spaces, 1..=512 bytes.
fn check_token(field: &'static str, s: &str) -> Result<(), AuditError> {
    if s.is_empty() || s.len() > MAX_VALUE_LEN || !s.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(invalid(
            field,
            "must be 1 to 512 printable ASCII characters without spaces",
        ));
    }
    Ok(())
}

fn check_subject(key: &str, value: &str) -> Result<(), AuditError> {
    if !is_word(key) || key.len() > MAX_NAME_LEN {
        return Err(invalid("subjects", "subject keys are lowercase words"));
    }
    check_token("subjects", value)
}

fn check_details(details: &Map<String, Value>) -> Result<(), AuditError> {
    fn walk(v: &Value, depth: usize) -> Result<(), AuditError> {
        if depth > MAX_DETAILS_DEPTH {
            return Err(invalid("details", "nested deeper than 8 levels"));
        }
        match v {
            Value::Number(n) => {
                let ok = n.as_u64().is_some_and(|u| u <= MAX_SAFE_INTEGER)
                    || n.as_i64()
                        .is_some_and(|i| i.unsigned_abs() <= MAX_SAFE_INTEGER);
                if !ok {
                    return Err(invalid(
                        "details",
                        "numbers must be integers of magnitude below 2^53 (no floats)",
                    ));
                }
            }
            Value::Array(items) => {
                for item in items {
                    walk(item, depth + 1)?;
                }
            }
            Value::Object(map) => {
                for (k, item) in map {
                    if !is_detail_key(k) {
                        return Err(invalid(
                            "details",
                            "keys are 1 to 64 ASCII letters, digits, `_`, `-` or `.`",
                        ));
                    }
                    walk(item, depth + 1)?;
                }
            }
            Value::Null | Value::Bool(_) | Value::String(_) => {}
        }
        Ok(())
    }
    walk(&Value::Object(details.clone()), 0)
}

/// Detail keys are ASCII, so that byte order and RFC 8785's UTF-16 order agree.
fn is_detail_key(k: &str) -> bool {
    !k.is_empty()
        && k.len() <= MAX_NAME_LEN
        && k.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests fail by panicking
mod tests {
    use super::*;
    use serde_json::json;
    use time::macros::datetime;

    fn base() -> RecordBuilder {
        NewRecord::builder(
            datetime!(2025-01-02 03:04:05.123456789 UTC),
            Actor::client("store", "spiffe://alga.test/service/nm-store").unwrap(),
            Action::new(actions::CODE_MINT).unwrap(),
        )
    }

    #[test]
    fn action_names() {
        for ok in ["code.redeem", "appliance.check_in", "a.b.c", "x1.y_2"] {
            assert!(Action::new(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "code",
            "Code.redeem",
            "code.",
            ".code",
            "code..x",
            "code.re deem",
            "1a.b",
            "code.redeem\n",
        ] {
            assert!(Action::new(bad).is_err(), "{bad:?}");
        }
        assert!(Action::new(&format!("a.{}", "b".repeat(63))).is_err());
    }

    #[test]
    fn time_is_truncated_to_microseconds_in_utc() {
        let r = base().build().unwrap();
        assert_eq!(r.record().time, datetime!(2025-01-02 03:04:05.123456 UTC));
        let local = datetime!(2025-01-02 05:04:05 +02:00);
        let r = NewRecord::builder(local, Actor::anonymous(), Action::new("a.b").unwrap())
            .build()
            .unwrap();
        assert_eq!(r.record().time.offset(), time::UtcOffset::UTC);
    }

    #[test]
    fn floats_and_deep_details_are_refused() {
        assert!(base().detail("ratio", json!(0.5)).build().is_err());
        assert!(base().detail("big", json!(1u64 << 60)).build().is_err());
        assert!(base().detail("ok", json!(-(1i64 << 40))).build().is_ok());
        let mut deep = json!(1);
        for _ in 0..9 {
            deep = json!([deep]);
        }
        assert!(base().detail("deep", deep).build().is_err());
        assert!(base().details(json!([1])).build().is_err());
        assert!(base().detail("bad key", 1).build().is_err());
    }

    #[test]
    fn builder_reports_bad_fields() {
        assert!(base().subject("Code-Id", "X").build().is_err());
        assert!(base().subject("code_id", "has space").build().is_err());
        assert!(base().failure("Not A Code").build().is_err());
        assert!(base().request_id("").build().is_err());
        assert!(Actor::client("Store", "spiffe://x").is_err());
        assert!(Actor::client("store", "spiffe://x y").is_err());
    }

    #[test]
    fn canonical_round_trip() {
        let r = base()
            .tenant(Uuid::nil())
            .subject("code_id", "K7M2Q9XD4T")
            .failure("code_invalid")
            .request_id("req-1")
            .source("192.0.2.1".parse().unwrap())
            .detail("edition", "pro")
            .build()
            .unwrap();
        let back = Record::from_canonical(r.canonical_bytes()).unwrap();
        assert_eq!(&back, r.record());
    }

    #[test]
    fn non_canonical_bytes_are_refused() {
        let r = base().build().unwrap();
        let text = String::from_utf8(r.canonical_bytes().to_vec()).unwrap();
        let spaced = text.replacen(':', ": ", 1);
        assert!(Record::from_canonical(spaced.as_bytes()).is_err());
    }
}
