//! Walks the TOML table by hand so that every problem is collected with its path,
//! instead of stopping at the first as a derived deserializer would.

use std::collections::{BTreeMap, BTreeSet};

use time::Duration;
use toml::{Table, Value};

use crate::{
    AuditPolicy, DEFAULT_ROTATION_OVERLAP, Edition, MAX_APPLIANCES_LIMIT, MAX_CREDENTIAL_LIFETIME,
    MAX_DOWNLOAD_LINK_TTL, MAX_INSTALL_CODE_TTL, MAX_LICENSE_LIFETIME, MIN_CREDENTIAL_LIFETIME,
    MIN_ROTATION_OVERLAP, PaidTerms, Policy, PolicyError, Problem, Quota, RateLimits, Role,
    STALE_AFTER, format_duration, parse_duration,
};

/// Collects problems while reading.
struct Reader {
    problems: Vec<Problem>,
}

impl Reader {
    fn problem(&mut self, path: &str, message: impl Into<String>) {
        self.problems.push(Problem {
            path: path.to_owned(),
            message: message.into(),
        });
    }

    /// Reports keys of `table` that are not in `known`.
    fn unknown_keys(&mut self, path: &str, table: &Table, known: &[&str]) {
        for key in table.keys() {
            if !known.contains(&key.as_str()) {
                let p = join(path, key);
                self.problem(
                    &p,
                    format!("unknown key (expected one of: {})", known.join(", ")),
                );
            }
        }
    }

    fn table<'t>(&mut self, path: &str, parent: &'t Table, key: &str) -> Option<&'t Table> {
        let p = join(path, key);
        match parent.get(key) {
            None => {
                self.problem(&p, "missing table");
                None
            }
            Some(Value::Table(t)) => Some(t),
            Some(other) => {
                self.problem(&p, format!("expected a table, found {}", other.type_str()));
                None
            }
        }
    }

    fn string(&mut self, path: &str, parent: &Table, key: &str) -> Option<String> {
        let p = join(path, key);
        match parent.get(key) {
            None => {
                self.problem(&p, "missing");
                None
            }
            Some(Value::String(s)) => Some(s.clone()),
            Some(other) => {
                self.problem(&p, format!("expected a string, found {}", other.type_str()));
                None
            }
        }
    }

    fn duration(&mut self, path: &str, parent: &Table, key: &str) -> Option<Duration> {
        let text = self.string(path, parent, key)?;
        match parse_duration(&text) {
            Ok(d) => Some(d),
            Err(e) => {
                self.problem(&join(path, key), e);
                None
            }
        }
    }

    fn bounded_duration(
        &mut self,
        path: &str,
        parent: &Table,
        key: &str,
        min: Duration,
        max: Duration,
    ) -> Option<Duration> {
        let d = self.duration(path, parent, key)?;
        if d > max {
            self.problem(
                &join(path, key),
                format!(
                    "{} is more than the maximum {}",
                    format_duration(d),
                    format_duration(max)
                ),
            );
            return None;
        }
        if d < min {
            self.problem(
                &join(path, key),
                format!(
                    "{} is less than the minimum {}",
                    format_duration(d),
                    format_duration(min)
                ),
            );
            return None;
        }
        Some(d)
    }

    /// A top-level table holding exactly one bounded duration, e.g. `[install_codes] ttl`.
    fn section_duration(
        &mut self,
        root: &Table,
        section: &str,
        key: &str,
        min: Duration,
        max: Duration,
    ) -> Option<Duration> {
        let t = self.table("", root, section)?;
        self.unknown_keys(section, t, &[key]);
        self.bounded_duration(section, t, key, min, max)
    }

    fn positive_int(&mut self, path: &str, parent: &Table, key: &str, max: i64) -> Option<i64> {
        self.int_in(path, parent, key, 1, max)
    }

    fn int_in(&mut self, path: &str, parent: &Table, key: &str, min: i64, max: i64) -> Option<i64> {
        let p = join(path, key);
        match parent.get(key) {
            None => {
                self.problem(&p, "missing");
                None
            }
            Some(Value::Integer(n)) if *n >= min && *n <= max => Some(*n),
            Some(Value::Integer(n)) => {
                self.problem(&p, format!("{n} is out of range ({min} to {max})"));
                None
            }
            Some(other) => {
                self.problem(
                    &p,
                    format!("expected an integer, found {}", other.type_str()),
                );
                None
            }
        }
    }

    fn bool(&mut self, path: &str, parent: &Table, key: &str) -> Option<bool> {
        let p = join(path, key);
        match parent.get(key) {
            None => {
                self.problem(&p, "missing");
                None
            }
            Some(Value::Boolean(b)) => Some(*b),
            Some(other) => {
                self.problem(
                    &p,
                    format!("expected true or false, found {}", other.type_str()),
                );
                None
            }
        }
    }
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_owned()
    } else {
        format!("{path}.{key}")
    }
}

fn is_name(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_lowercase())
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-')
        && s.len() <= 64
}

fn is_trust_domain(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 255
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '-' | '_'))
        && !s.starts_with('.')
        && !s.ends_with('.')
}

pub(crate) fn read_policy(root: &Table) -> Result<Policy, PolicyError> {
    let mut r = Reader {
        problems: Vec::new(),
    };
    r.unknown_keys(
        "",
        root,
        &[
            "trust_domain",
            "license",
            "install_codes",
            "download_links",
            "credentials",
            "editions",
            "clients",
            "rate_limits",
            "audit",
        ],
    );

    let trust_domain = r.string("", root, "trust_domain").and_then(|td| {
        if is_trust_domain(&td) {
            Some(td)
        } else {
            r.problem(
                "trust_domain",
                "must be a lowercase DNS-like name (letters, digits, '.', '-', '_')",
            );
            None
        }
    });

    let license_issuer = r.table("", root, "license").and_then(|t| {
        r.unknown_keys("license", t, &["issuer"]);
        let iss = r.string("license", t, "issuer")?;
        if iss.trim().is_empty() || iss.chars().any(char::is_control) {
            r.problem(
                "license.issuer",
                "must be a non-empty string without control characters",
            );
            return None;
        }
        Some(iss)
    });

    let install_code_ttl = r.section_duration(
        root,
        "install_codes",
        "ttl",
        Duration::minutes(5),
        MAX_INSTALL_CODE_TTL,
    );
    let download_link_ttl = r.section_duration(
        root,
        "download_links",
        "ttl",
        Duration::minutes(1),
        MAX_DOWNLOAD_LINK_TTL,
    );
    let (credential_lifetime, credential_rotation_overlap) = r
        .table("", root, "credentials")
        .map_or((None, None), |t| read_credentials(&mut r, t));

    let editions = r
        .table("", root, "editions")
        .and_then(|t| read_editions(&mut r, t));
    let clients = read_clients(&mut r, root, trust_domain.as_deref());
    let rate_limits = r.table("", root, "rate_limits").and_then(|t| {
        r.unknown_keys("rate_limits", t, &["redeem_per_source", "redeem_per_code"]);
        let per_source = read_quota(&mut r, "rate_limits", t, "redeem_per_source");
        let per_code = read_quota(&mut r, "rate_limits", t, "redeem_per_code");
        Some(RateLimits {
            redeem_per_source: per_source?,
            redeem_per_code: per_code?,
        })
    });
    let audit = r.table("", root, "audit").and_then(|t| {
        r.unknown_keys(
            "audit",
            t,
            &[
                "checkpoint_every_records",
                "checkpoint_interval",
                "unchained_alarm_after",
            ],
        );
        let every = r.positive_int("audit", t, "checkpoint_every_records", 10_000_000);
        let interval = r.bounded_duration(
            "audit",
            t,
            "checkpoint_interval",
            Duration::seconds(1),
            Duration::days(1),
        );
        let alarm = r.bounded_duration(
            "audit",
            t,
            "unchained_alarm_after",
            Duration::seconds(1),
            Duration::hours(1),
        );
        Some(AuditPolicy {
            checkpoint_every_records: u64::try_from(every?).ok()?,
            checkpoint_interval: interval?,
            unchained_alarm_after: alarm?,
        })
    });

    match (
        trust_domain,
        license_issuer,
        install_code_ttl,
        download_link_ttl,
        credential_lifetime,
        credential_rotation_overlap,
        editions,
        clients,
        rate_limits,
        audit,
    ) {
        (
            Some(trust_domain),
            Some(license_issuer),
            Some(install_code_ttl),
            Some(download_link_ttl),
            Some(credential_lifetime),
            Some(credential_rotation_overlap),
            Some(editions),
            Some(clients),
            Some(rate_limits),
            Some(audit),
        ) if r.problems.is_empty() => Ok(Policy {
            trust_domain,
            license_issuer,
            install_code_ttl,
            download_link_ttl,
            credential_lifetime,
            credential_rotation_overlap,
            editions,
            clients,
            rate_limits,
            audit,
        }),
        _ => Err(PolicyError::Invalid(r.problems)),
    }
}

/// `[credentials]`: `lifetime` (required) and `rotation_overlap` (optional, so that
/// policy files written before it keep loading; [`DEFAULT_ROTATION_OVERLAP`] when
/// absent). The overlap is bounded by the lifetime: it only ever shortens how long a
/// replaced credential stays usable, never lengthens it past what a fresh one gets.
fn read_credentials(r: &mut Reader, t: &Table) -> (Option<Duration>, Option<Duration>) {
    r.unknown_keys("credentials", t, &["lifetime", "rotation_overlap"]);
    let lifetime = r.bounded_duration(
        "credentials",
        t,
        "lifetime",
        MIN_CREDENTIAL_LIFETIME,
        MAX_CREDENTIAL_LIFETIME,
    );
    let overlap = if t.contains_key("rotation_overlap") {
        r.bounded_duration(
            "credentials",
            t,
            "rotation_overlap",
            MIN_ROTATION_OVERLAP,
            MAX_CREDENTIAL_LIFETIME,
        )
    } else {
        Some(DEFAULT_ROTATION_OVERLAP)
    };
    match (lifetime, overlap) {
        (Some(l), Some(o)) if o > l => {
            r.problem(
                "credentials.rotation_overlap",
                format!(
                    "{} is more than credentials.lifetime ({})",
                    format_duration(o),
                    format_duration(l)
                ),
            );
            (Some(l), None)
        }
        other => other,
    }
}

fn read_editions(r: &mut Reader, table: &Table) -> Option<BTreeMap<String, Edition>> {
    if table.is_empty() {
        r.problem("editions", "at least one edition is required");
        return None;
    }
    let mut editions = BTreeMap::new();
    let mut ok = true;
    for (name, value) in table {
        let path = format!("editions.{name}");
        if !is_name(name) {
            r.problem(
                &path,
                "edition names are lowercase letters, digits, '_' and '-', starting with a letter",
            );
            ok = false;
            continue;
        }
        let Value::Table(t) = value else {
            r.problem(
                &path,
                format!("expected a table, found {}", value.type_str()),
            );
            ok = false;
            continue;
        };
        match read_edition(r, &path, name, t) {
            Some(e) => {
                editions.insert(name.clone(), e);
            }
            None => ok = false,
        }
    }
    ok.then_some(editions)
}

fn read_edition(r: &mut Reader, path: &str, name: &str, t: &Table) -> Option<Edition> {
    r.unknown_keys(
        path,
        t,
        &[
            "features",
            "seats",
            "max_appliances",
            "paid",
            "license_lifetime",
            "check_in_interval",
            "check_in_grace_days",
        ],
    );
    let features = match t.get("features") {
        None => {
            r.problem(
                &join(path, "features"),
                "missing (an empty list is allowed)",
            );
            None
        }
        Some(Value::Array(items)) => {
            let mut seen = BTreeSet::new();
            let mut out = Vec::new();
            let mut ok = true;
            for (i, item) in items.iter().enumerate() {
                let p = format!("{path}.features[{i}]");
                match item {
                    Value::String(s) if is_name(s) => {
                        if !seen.insert(s.clone()) {
                            r.problem(&p, format!("duplicate feature {s:?}"));
                            ok = false;
                        }
                        out.push(s.clone());
                    }
                    Value::String(_) => {
                        r.problem(&p, "feature names are lowercase letters, digits, '_' and '-', starting with a letter");
                        ok = false;
                    }
                    other => {
                        r.problem(&p, format!("expected a string, found {}", other.type_str()));
                        ok = false;
                    }
                }
            }
            ok.then_some(out)
        }
        Some(other) => {
            r.problem(
                &join(path, "features"),
                format!("expected an array, found {}", other.type_str()),
            );
            None
        }
    };
    let seats = r
        .positive_int(path, t, "seats", 1_000_000)
        .and_then(|n| u32::try_from(n).ok());
    let max_appliances = r
        .positive_int(path, t, "max_appliances", i64::from(MAX_APPLIANCES_LIMIT))
        .and_then(|n| u32::try_from(n).ok());
    let paid = r.bool(path, t, "paid")?;
    let terms = if paid {
        let lifetime = r.bounded_duration(
            path,
            t,
            "license_lifetime",
            Duration::hours(1),
            MAX_LICENSE_LIFETIME,
        );
        let interval = r.bounded_duration(
            path,
            t,
            "check_in_interval",
            Duration::minutes(5),
            Duration::days(30),
        );
        // Whole days under the stale age: an appliance is overdue before it is stale.
        let grace = r
            .int_in(
                path,
                t,
                "check_in_grace_days",
                0,
                STALE_AFTER.whole_days() - 1,
            )
            .map(Duration::days);
        match (lifetime, interval, grace) {
            (Some(l), Some(i), _) if i >= l => {
                r.problem(
                    &join(path, "check_in_interval"),
                    format!("must be shorter than license_lifetime ({}), or licenses lapse between check-ins", format_duration(l)),
                );
                None
            }
            (Some(_), Some(i), Some(g)) if i + g >= STALE_AFTER => {
                r.problem(
                    &join(path, "check_in_grace_days"),
                    format!(
                        "check_in_interval ({}) plus the grace must be less than {} (when an appliance is stale), or it is never overdue",
                        format_duration(i),
                        format_duration(STALE_AFTER)
                    ),
                );
                None
            }
            (Some(license_lifetime), Some(check_in_interval), Some(check_in_grace)) => {
                Some(Some(PaidTerms {
                    license_lifetime,
                    check_in_interval,
                    check_in_grace,
                }))
            }
            _ => None,
        }
    } else {
        for key in [
            "license_lifetime",
            "check_in_interval",
            "check_in_grace_days",
        ] {
            if t.contains_key(key) {
                r.problem(
                    &join(path, key),
                    "only paid editions have a license (set paid = true or remove this key)",
                );
            }
        }
        Some(None)
    };
    Some(Edition {
        name: name.to_owned(),
        features: features?,
        seats: seats?,
        max_appliances: max_appliances?,
        paid: terms?,
    })
}

fn read_clients(
    r: &mut Reader,
    root: &Table,
    trust_domain: Option<&str>,
) -> Option<BTreeMap<String, Role>> {
    let items = match root.get("clients") {
        None => {
            r.problem(
                "clients",
                "missing: list the client identities ([[clients]] uri, role)",
            );
            return None;
        }
        Some(Value::Array(items)) => items,
        Some(other) => {
            r.problem(
                "clients",
                format!("expected an array of tables, found {}", other.type_str()),
            );
            return None;
        }
    };
    let mut clients = BTreeMap::new();
    let mut ok = true;
    for (i, item) in items.iter().enumerate() {
        let path = format!("clients[{i}]");
        let Value::Table(t) = item else {
            r.problem(&path, "expected a table with uri and role");
            ok = false;
            continue;
        };
        r.unknown_keys(&path, t, &["uri", "role"]);
        let uri = r.string(&path, t, "uri");
        let role = r.string(&path, t, "role").and_then(|s| {
            let role = Role::parse(&s);
            if role.is_none() {
                r.problem(
                    &join(&path, "role"),
                    format!("unknown role {s:?} (expected store, auditor or gateway)"),
                );
            }
            role
        });
        let (Some(uri), Some(role)) = (uri, role) else {
            ok = false;
            continue;
        };
        if let Some(td) = trust_domain {
            let prefix = format!("spiffe://{td}/");
            if !uri.starts_with(&prefix) || uri.len() == prefix.len() || uri.contains("/tenant/") {
                r.problem(
                    &join(&path, "uri"),
                    format!("must be a service identity spiffe://{td}/<path> (and not an appliance's /tenant/ path)"),
                );
                ok = false;
                continue;
            }
        }
        if clients.insert(uri.clone(), role).is_some() {
            r.problem(&join(&path, "uri"), format!("{uri} is listed twice"));
            ok = false;
        }
    }
    if ok && !clients.values().any(|r| *r == Role::Gateway) {
        r.problem(
            "clients",
            "no client has role \"gateway\": the issuer would accept nobody",
        );
        ok = false;
    }
    ok.then_some(clients)
}

fn read_quota(r: &mut Reader, path: &str, parent: &Table, key: &str) -> Option<Quota> {
    let t = r.table(path, parent, key)?;
    let p = join(path, key);
    r.unknown_keys(&p, t, &["per_minute", "burst"]);
    let per_minute = r.positive_int(&p, t, "per_minute", 1_000_000);
    let burst = r.positive_int(&p, t, "burst", 1_000_000);
    Some(Quota {
        per_minute: u32::try_from(per_minute?).ok()?,
        burst: u32::try_from(burst?).ok()?,
    })
}
