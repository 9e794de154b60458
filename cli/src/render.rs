//! The human output of the store's commands: key–value tables and column tables, built
//! as strings (printed by `main`) so that tests can read them (`audit tenant`'s records
//! and what their verification proved included).
//!
//! `--json` never comes here: it prints the service's body as it came.

use alga_protocol::api::{
    ApplianceState, ApplianceView, CodeView, EntitlementResponse, Health, MailState, MailView,
    RegisterTenantResponse, ReissueResponse, RevokeResponse, TenantStatus, TenantStatusResponse,
    TenantView,
};
use alga_tlog::{ProvenRecord, TenantAudit, TenantAuditReport};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use uuid::Uuid;

/// What a cell shows for a value that is absent.
const NONE: &str = "-";

/// `key  value` lines, the keys padded to the longest.
pub fn kv(rows: &[(&str, String)]) -> String {
    let width = rows
        .iter()
        .map(|(k, _)| k.chars().count())
        .max()
        .unwrap_or(0);
    let mut out = String::new();
    for (k, v) in rows {
        let pad = width - k.chars().count();
        out.push_str(format!("{k}{}  {v}", " ".repeat(pad)).trim_end());
        out.push('\n');
    }
    out
}

/// A column table: a header line, then one line per row; every line indented by two
/// spaces, columns padded to their widest cell (the last one is not padded).
pub fn columns(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            if let Some(w) = widths.get_mut(i) {
                *w = (*w).max(cell.chars().count());
            }
        }
    }
    let line = |cells: &mut dyn Iterator<Item = &str>| {
        let mut s = String::from(" ");
        for (i, cell) in cells.enumerate() {
            let w = widths.get(i).copied().unwrap_or(0);
            s.push(' ');
            s.push_str(cell);
            s.push_str(&" ".repeat(w.saturating_sub(cell.chars().count())));
            s.push(' ');
        }
        s.trim_end().to_owned() + "\n"
    };
    let mut out = line(&mut header.iter().copied());
    for row in rows {
        out.push_str(&line(&mut row.iter().map(String::as_str)));
    }
    out
}

/// A time for people: RFC 3339 to the second, in UTC.
pub fn when(t: OffsetDateTime) -> String {
    let t = t.to_offset(time::UtcOffset::UTC);
    t.replace_nanosecond(0)
        .unwrap_or(t)
        .format(&Rfc3339)
        .unwrap_or_else(|_| t.to_string())
}

/// [`when`] for an optional time (`-` when absent).
pub fn when_opt(t: Option<OffsetDateTime>) -> String {
    t.map_or_else(|| NONE.to_owned(), when)
}

/// [`when`] followed by how long before `now` it was, e.g. `… (3h ago)`.
pub fn when_ago(t: Option<OffsetDateTime>, now: OffsetDateTime) -> String {
    let Some(t) = t else {
        return "never".to_owned();
    };
    let secs = (now - t).whole_seconds();
    let ago = match secs {
        s if s < 0 => "in the future".to_owned(),
        s if s < 60 => format!("{s}s ago"),
        s if s < 3600 => format!("{}m ago", s / 60),
        s if s < 2 * 86_400 => format!("{}h ago", s / 3600),
        s => format!("{}d ago", s / 86_400),
    };
    format!("{} ({ago})", when(t))
}

pub fn state_str(s: ApplianceState) -> &'static str {
    match s {
        ApplianceState::Active => "active",
        ApplianceState::Replaced => "replaced",
        ApplianceState::Revoked => "revoked",
    }
}

pub fn status_str(s: TenantStatus) -> &'static str {
    match s {
        TenantStatus::Active => "active",
        TenantStatus::Suspended => "suspended",
    }
}

fn mail_state_str(s: MailState) -> &'static str {
    match s {
        MailState::Sent => "sent",
        MailState::Queued => "queued",
        MailState::Failed => "failed",
    }
}

fn health_str(h: Option<Health>) -> &'static str {
    h.map_or(NONE, Health::as_str)
}

fn id_opt(id: Option<Uuid>) -> String {
    id.map_or_else(|| NONE.to_owned(), |u| u.to_string())
}

fn list_or_none(items: &[String]) -> String {
    if items.is_empty() {
        "none".to_owned()
    } else {
        items.join(", ")
    }
}

/// The rows of a registration's answer (and the first rows of a reissue's).
fn registration_rows(resp: &RegisterTenantResponse) -> Vec<(&'static str, String)> {
    vec![
        ("tenant", resp.tenant_id.to_string()),
        ("edition", resp.edition.clone()),
        ("code id", resp.install_code.code_id.clone()),
        ("code expires", when(resp.install_code.expires_at)),
        ("download link expires", when(resp.download.expires_at)),
        ("email", mail_state_str(resp.email.status).to_owned()),
    ]
}

const CODE_NOT_SHOWN: &str =
    "The install code went to the contact's mailbox only; it is never shown here.";

/// `algactl register`.
pub fn registration(resp: &RegisterTenantResponse) -> String {
    format!("{}\n{CODE_NOT_SHOWN}\n", kv(&registration_rows(resp)))
}

/// What a reissued code's redeem will do to the tenant's appliances.
pub fn replaces(id: Option<Uuid>) -> String {
    match id {
        Some(id) => format!("{id} (retired when the new code is redeemed)"),
        None => "none (adds an appliance)".to_owned(),
    }
}

/// `algactl reissue`.
pub fn reissue(resp: &ReissueResponse) -> String {
    let mut rows = registration_rows(&resp.code);
    rows.push(("replaces appliance", replaces(resp.replaces_appliance_id)));
    rows.push(("revoked codes", list_or_none(&resp.revoked_code_ids)));
    format!("{}\n{CODE_NOT_SHOWN}\n", kv(&rows))
}

/// `algactl tenant set-edition`.
pub fn entitlement(resp: &EntitlementResponse) -> String {
    let edition = if resp.changed {
        format!("{} (was {})", resp.edition, resp.previous_edition)
    } else {
        format!("{} (unchanged)", resp.edition)
    };
    let mut out = kv(&[
        ("tenant", resp.tenant_id.to_string()),
        ("edition", edition),
        (
            "appliances",
            format!(
                "{} active of {} allowed",
                resp.active_appliances, resp.max_appliances
            ),
        ),
        ("revoked codes", list_or_none(&resp.revoked_code_ids)),
    ]);
    if !resp.revoked_code_ids.is_empty() {
        out.push_str(
            "\nUnclaimed codes of the previous edition were revoked: re-issue a code where an install is still pending.\n",
        );
    }
    out
}

/// `algactl tenant suspend|resume`.
pub fn tenant_status(resp: &TenantStatusResponse) -> String {
    kv(&[
        ("tenant", resp.tenant_id.to_string()),
        ("status", status_str(resp.status).to_owned()),
        ("suspended since", when_opt(resp.suspended_at)),
    ])
}

/// `algactl tenant show`: the tenant, then its appliances, codes and mail as tables.
pub fn tenant(t: &TenantView, now: OffsetDateTime) -> String {
    let status = match (t.status, t.suspended_at) {
        (TenantStatus::Suspended, Some(at)) => format!("suspended since {}", when(at)),
        (s, _) => status_str(s).to_owned(),
    };
    let active = t
        .appliances
        .iter()
        .filter(|a| a.state == ApplianceState::Active)
        .count();
    let mut rows = vec![
        ("tenant", t.tenant_id.to_string()),
        ("company", t.company.clone()),
        (
            "contact",
            format!("{} <{}>", t.contact.name, t.contact.email),
        ),
        ("status", status),
        ("edition", t.edition.clone()),
    ];
    match &t.entitlement {
        Some(e) => {
            rows.push((
                "appliances",
                format!(
                    "{} active of {} allowed",
                    e.active_appliances, e.max_appliances
                ),
            ));
            let paid = if e.paid { "paid" } else { "free" };
            rows.push((
                "entitlement",
                format!("{} ({paid}, {} seats)", e.edition, e.seats),
            ));
            rows.push(("features", list_or_none(&e.features)));
        }
        None => {
            rows.push(("appliances", format!("{active} active")));
            rows.push(("entitlement", "none".to_owned()));
        }
    }
    rows.push(("created", when(t.created_at)));
    let mut out = kv(&rows);

    out.push_str(&format!("\nappliances ({})\n", t.appliances.len()));
    if t.appliances.is_empty() {
        out.push_str("  none yet: no code was redeemed\n");
    } else {
        let rows: Vec<Vec<String>> = t
            .appliances
            .iter()
            .map(|a| {
                vec![
                    a.appliance_id.to_string(),
                    state_str(a.state).to_owned(),
                    health_str(a.health).to_owned(),
                    a.hostname.clone(),
                    a.version.clone(),
                    when_ago(a.last_check_in_at, now),
                    id_opt(a.replaced_by),
                ]
            })
            .collect();
        out.push_str(&columns(
            &[
                "APPLIANCE",
                "STATE",
                "HEALTH",
                "HOSTNAME",
                "VERSION",
                "LAST CHECK-IN",
                "REPLACED BY",
            ],
            &rows,
        ));
    }

    out.push_str(&format!("\ninstall codes ({})\n", t.install_codes.len()));
    let rows: Vec<Vec<String>> = t.install_codes.iter().map(code_row).collect();
    out.push_str(&columns(
        &["CODE ID", "STATE", "EXPIRES", "APPLIANCE", "REPLACES"],
        &rows,
    ));

    out.push_str(&format!("\nmail ({})\n", t.mail.len()));
    let rows: Vec<Vec<String>> = t.mail.iter().map(mail_row).collect();
    out.push_str(&columns(
        &[
            "CODE ID",
            "KIND",
            "STATUS",
            "ATTEMPTS",
            "SENT / NEXT ATTEMPT",
            "LAST ERROR",
        ],
        &rows,
    ));
    out
}

fn code_row(c: &CodeView) -> Vec<String> {
    let state = if c.expired && c.state == "unclaimed" {
        "unclaimed (expired)".to_owned()
    } else {
        c.state.clone()
    };
    vec![
        c.code_id.clone(),
        state,
        when(c.expires_at),
        id_opt(c.appliance_id),
        id_opt(c.replaces_appliance_id),
    ]
}

fn mail_row(m: &MailView) -> Vec<String> {
    let at = match (m.sent_at, m.next_attempt_at) {
        (Some(sent), _) => when(sent),
        (None, Some(next)) => format!("next {}", when(next)),
        (None, None) => NONE.to_owned(),
    };
    vec![
        m.code_id.clone(),
        m.kind.clone(),
        m.status.clone(),
        m.attempts.to_string(),
        at,
        m.last_error.clone().unwrap_or_else(|| NONE.to_owned()),
    ]
}

/// `algactl appliance list`: one line per appliance.
pub fn appliances(list: &[ApplianceView], now: OffsetDateTime) -> String {
    let rows: Vec<Vec<String>> = list
        .iter()
        .map(|a| {
            vec![
                a.appliance_id.to_string(),
                a.tenant_id.to_string(),
                state_str(a.state).to_owned(),
                health_str(a.health).to_owned(),
                a.hostname.clone(),
                a.version.clone(),
                when_ago(a.last_check_in_at, now),
            ]
        })
        .collect();
    columns(
        &[
            "APPLIANCE",
            "TENANT",
            "STATE",
            "HEALTH",
            "HOSTNAME",
            "VERSION",
            "LAST CHECK-IN",
        ],
        &rows,
    )
}

/// `algactl appliance revoke`.
pub fn revoked(r: &RevokeResponse) -> String {
    let note = match (r.state, r.changed) {
        (ApplianceState::Revoked, true) => "revoked now: its next check-in is refused",
        (ApplianceState::Revoked, false) => "was already revoked (nothing changed)",
        (ApplianceState::Replaced, _) => {
            "was replaced by a rebuild: its check-ins are refused already (nothing changed)"
        }
        (ApplianceState::Active, _) => "still active: the revocation did not take effect",
    };
    kv(&[
        ("appliance", r.appliance_id.to_string()),
        ("tenant", r.tenant_id.to_string()),
        ("state", state_str(r.state).to_owned()),
        ("revoked at", when_opt(r.revoked_at)),
        ("result", note.to_owned()),
    ])
}

/// One proven record of `algactl audit tenant` as table cells: sequence, time (to the
/// second), action, outcome (`success`, or `failure` and the error code). The record
/// is its stored JSON text; one that is not JSON (a damaged record, which then also
/// fails verification) says so instead of showing empty cells.
fn proven_record_row(r: &ProvenRecord) -> Vec<String> {
    let seq = r.seq.to_string();
    let Ok(rec) = serde_json::from_str::<serde_json::Value>(&r.record) else {
        return vec![
            seq,
            NONE.to_owned(),
            format!("DAMAGED: not JSON ({} bytes)", r.record.len()),
            NONE.to_owned(),
        ];
    };
    let text = |v: &serde_json::Value| v.as_str().unwrap_or(NONE).to_owned();
    let time = match rec["time"].as_str() {
        Some(t) => OffsetDateTime::parse(t, &Rfc3339).map_or_else(|_| t.to_owned(), when),
        None => NONE.to_owned(),
    };
    let outcome = match (
        rec["outcome"]["status"].as_str(),
        rec["outcome"]["error_code"].as_str(),
    ) {
        (Some(status), Some(code)) => format!("{status} ({code})"),
        (Some(status), None) => status.to_owned(),
        (None, _) => NONE.to_owned(),
    };
    vec![seq, time, text(&rec["action"]), outcome]
}

/// `algactl audit tenant`: the records of every page under one header, then what they
/// are: how many, of which tenant, over how many pages.
pub fn tenant_audit(pages: &[TenantAudit]) -> String {
    let rows: Vec<Vec<String>> = pages
        .iter()
        .flat_map(|p| &p.records)
        .map(proven_record_row)
        .collect();
    let tenant = pages.first().map_or(NONE, |p| p.tenant_id.as_str());
    let mut out = columns(&["SEQ", "TIME", "ACTION", "OUTCOME"], &rows);
    let n = rows.len();
    let pages_note = match pages.len() {
        1 => String::new(),
        p => format!(" ({p} pages)"),
    };
    out.push_str(&format!(
        "\n{n} record{} of tenant {tenant}, each with its inclusion proof{pages_note}\n",
        if n == 1 { "" } else { "s" },
    ));
    out
}

/// What verifying every page of `algactl audit tenant` established, as one line:
/// `N records proven in the checkpoint of size S signed by <origin>` (or in several
/// checkpoints, the log having grown between pages).
pub fn tenant_audit_proven(reports: &[TenantAuditReport]) -> String {
    let records: u64 = reports.iter().map(|r| r.records).sum();
    let origin = reports
        .first()
        .map_or(NONE, |r| r.checkpoint.origin.as_str());
    let mut sizes: Vec<String> = Vec::new();
    for r in reports {
        let size = r.checkpoint.size.to_string();
        if sizes.last() != Some(&size) {
            sizes.push(size);
        }
    }
    let plural = if records == 1 { "" } else { "s" };
    let checkpoints = match sizes.as_slice() {
        [one] => format!("the checkpoint of size {one}"),
        many => format!("{} checkpoints (sizes {})", many.len(), many.join(", ")),
    };
    let mut line = format!("{records} record{plural} proven in {checkpoints} signed by {origin}");
    if records == 0 {
        line.push_str(" (records newer than a checkpoint are proven in the next one)");
    }
    line + "\n"
}

#[cfg(test)]
mod tests {
    use alga_protocol::api::{
        Contact, DownloadLink, EmailStatus, EntitlementView, InstallCodeInfo,
    };
    use time::macros::datetime;

    use super::*;

    const T: Uuid = Uuid::from_u128(0x1111_1111_1111_4111_8111_1111_1111_1111);
    const A: Uuid = Uuid::from_u128(0xaaaa_aaaa_aaaa_4aaa_8aaa_aaaa_aaaa_aaaa);
    const B: Uuid = Uuid::from_u128(0xbbbb_bbbb_bbbb_4bbb_8bbb_bbbb_bbbb_bbbb);

    fn now() -> OffsetDateTime {
        datetime!(2026-12-07 12:00:00.123456 UTC)
    }

    fn registration_resp() -> RegisterTenantResponse {
        RegisterTenantResponse {
            tenant_id: T,
            edition: "pro".to_owned(),
            install_code: InstallCodeInfo {
                code_id: "ABCDE".to_owned(),
                expires_at: datetime!(2026-12-21 12:00:00.5 UTC),
            },
            download: DownloadLink {
                url: "https://s3.test/iso?X-Amz-Signature=secret".to_owned(),
                expires_at: datetime!(2026-12-14 12:00:00 UTC),
            },
            email: EmailStatus {
                status: MailState::Queued,
            },
        }
    }

    /// The line of `out` whose first word is `key` (after trimming), with the key removed.
    fn value_of<'a>(out: &'a str, key: &str) -> &'a str {
        out.lines()
            .find_map(|l| {
                l.strip_prefix(key)
                    .filter(|rest| rest.starts_with("  ") || rest.is_empty())
            })
            .unwrap_or_else(|| panic!("no `{key}` line in:\n{out}"))
            .trim()
    }

    fn appliance(id: Uuid, state: ApplianceState) -> ApplianceView {
        ApplianceView {
            appliance_id: id,
            tenant_id: T,
            state,
            health: (state == ApplianceState::Active).then_some(Health::Ok),
            hostname: format!("host-{}", &id.to_string()[..4]),
            version: "1.2.3".to_owned(),
            code_id: "ABCDE".to_owned(),
            credential_serial: Some("01ab".to_owned()),
            credential_expires_at: Some(datetime!(2026-12-30 00:00:00 UTC)),
            created_at: datetime!(2026-12-01 00:00:00 UTC),
            last_check_in_at: Some(datetime!(2026-12-07 09:00:00 UTC)),
            revoked_at: None,
            replaced_by: None,
            replaced_at: None,
        }
    }

    fn tenant_view() -> TenantView {
        let mut old = appliance(A, ApplianceState::Replaced);
        old.replaced_by = Some(B);
        old.replaced_at = Some(datetime!(2026-12-07 10:00:00 UTC));
        old.last_check_in_at = None;
        TenantView {
            tenant_id: T,
            company: "Acme".to_owned(),
            contact: Contact {
                name: "Ada".to_owned(),
                email: "ada@acme.test".to_owned(),
            },
            edition: "pro".to_owned(),
            status: TenantStatus::Suspended,
            suspended_at: Some(datetime!(2026-12-07 11:00:00 UTC)),
            created_at: datetime!(2026-12-01 00:00:00 UTC),
            entitlement: Some(EntitlementView {
                edition: "pro".to_owned(),
                paid: true,
                features: vec!["backup".to_owned(), "sso".to_owned()],
                seats: 25,
                max_appliances: 3,
                active_appliances: 1,
            }),
            install_codes: vec![CodeView {
                code_id: "FGHIJ".to_owned(),
                state: "consumed".to_owned(),
                expired: false,
                expires_at: datetime!(2026-12-21 00:00:00 UTC),
                created_at: datetime!(2026-12-07 09:30:00 UTC),
                consumed_at: Some(datetime!(2026-12-07 10:00:00 UTC)),
                revoked_at: None,
                appliance_id: Some(B),
                replaces_appliance_id: Some(A),
            }],
            appliances: vec![old, appliance(B, ApplianceState::Active)],
            mail: vec![],
        }
    }

    #[test]
    fn kv_pads_keys_and_columns_pad_cells() {
        assert_eq!(
            kv(&[("a", "1".into()), ("long", "2".into())]),
            "a     1\nlong  2\n"
        );
        let t = columns(&["X", "LONGER"], &[vec!["wide cell".into(), "v".into()]]);
        assert_eq!(t, "  X          LONGER\n  wide cell  v\n");
    }

    #[test]
    fn times_are_shown_to_the_second_with_their_age() {
        assert_eq!(when(now()), "2026-12-07T12:00:00Z");
        assert_eq!(
            when_ago(Some(datetime!(2026-12-07 09:00:00 UTC)), now()),
            "2026-12-07T09:00:00Z (3h ago)"
        );
        assert_eq!(
            when_ago(Some(datetime!(2026-12-07 11:59:30 UTC)), now()),
            "2026-12-07T11:59:30Z (30s ago)"
        );
        assert_eq!(
            when_ago(Some(datetime!(2026-11-07 12:00:00 UTC)), now()),
            "2026-11-07T12:00:00Z (30d ago)"
        );
        assert_eq!(when_ago(None, now()), "never");
        assert_eq!(when_opt(None), "-");
    }

    #[test]
    fn a_reissue_shows_what_it_replaces_and_revoked_codes() {
        let mut resp = ReissueResponse {
            code: registration_resp(),
            revoked_code_ids: vec!["OLD01".to_owned(), "OLD02".to_owned()],
            replaces_appliance_id: Some(A),
        };
        let out = reissue(&resp);
        assert!(
            value_of(&out, "replaces appliance").starts_with(&A.to_string()),
            "{out}"
        );
        assert_eq!(value_of(&out, "revoked codes"), "OLD01, OLD02");
        assert_eq!(value_of(&out, "code id"), "ABCDE");
        assert_eq!(value_of(&out, "code expires"), "2026-12-21T12:00:00Z");
        assert_eq!(value_of(&out, "email"), "queued");
        // The presigned link is a bearer secret of sorts: the table shows only its expiry.
        assert!(!out.contains("X-Amz-Signature"), "{out}");

        resp.replaces_appliance_id = None;
        resp.revoked_code_ids.clear();
        let out = reissue(&resp);
        assert_eq!(
            value_of(&out, "replaces appliance"),
            "none (adds an appliance)"
        );
        assert_eq!(value_of(&out, "revoked codes"), "none");
    }

    #[test]
    fn a_registration_has_no_reissue_rows() {
        let out = registration(&registration_resp());
        assert_eq!(value_of(&out, "tenant"), T.to_string());
        assert!(!out.contains("replaces appliance"), "{out}");
        assert!(!out.contains("revoked codes"), "{out}");
    }

    #[test]
    fn tenant_show_tells_replaced_from_active_and_the_suspension() {
        let out = tenant(&tenant_view(), now());
        assert_eq!(
            value_of(&out, "status"),
            "suspended since 2026-12-07T11:00:00Z"
        );
        assert_eq!(value_of(&out, "appliances"), "1 active of 3 allowed");
        assert_eq!(value_of(&out, "features"), "backup, sso");
        let line = |id: Uuid| {
            out.lines()
                .find(|l| l.trim_start().starts_with(&id.to_string()))
                .unwrap_or_else(|| panic!("no line for {id} in:\n{out}"))
                .split_whitespace()
                .collect::<Vec<_>>()
        };
        // APPLIANCE STATE HEALTH HOSTNAME VERSION LAST CHECK-IN REPLACED BY
        let a = line(A);
        assert_eq!(a[1..5], ["replaced", "-", "host-aaaa", "1.2.3"]);
        assert_eq!(a[5], "never");
        assert_eq!(a.last().copied(), Some(B.to_string().as_str()));
        let b = line(B);
        assert_eq!(b[1..5], ["active", "ok", "host-bbbb", "1.2.3"]);
        assert_eq!(b[5..8], ["2026-12-07T09:00:00Z", "(3h", "ago)"]);
        assert_eq!(b.last().copied(), Some("-"));
        // The code that replaced A, with both appliances.
        let code = out
            .lines()
            .find(|l| l.trim_start().starts_with("FGHIJ"))
            .unwrap_or_else(|| panic!("no code line in:\n{out}"));
        assert!(
            code.contains(&B.to_string()) && code.contains(&A.to_string()),
            "{code}"
        );
        assert!(out.contains("\nmail (0)\n"), "{out}");
    }

    #[test]
    fn an_active_tenant_without_entitlement_or_appliances() {
        let mut t = tenant_view();
        t.status = TenantStatus::Active;
        t.suspended_at = None;
        t.entitlement = None;
        t.appliances.clear();
        let out = tenant(&t, now());
        assert_eq!(value_of(&out, "status"), "active");
        assert_eq!(value_of(&out, "entitlement"), "none");
        assert_eq!(value_of(&out, "appliances"), "0 active");
        assert!(out.contains("none yet: no code was redeemed"), "{out}");
    }

    #[test]
    fn an_edition_change_says_what_it_was_and_the_seats() {
        let mut r = EntitlementResponse {
            tenant_id: T,
            edition: "essentials".to_owned(),
            previous_edition: "pro".to_owned(),
            changed: true,
            revoked_code_ids: vec!["OLD01".to_owned()],
            active_appliances: 1,
            max_appliances: 1,
        };
        let out = entitlement(&r);
        assert_eq!(value_of(&out, "edition"), "essentials (was pro)");
        assert_eq!(value_of(&out, "appliances"), "1 active of 1 allowed");
        assert_eq!(value_of(&out, "revoked codes"), "OLD01");
        assert!(out.contains("re-issue a code"), "{out}");
        r.changed = false;
        r.previous_edition = "essentials".to_owned();
        r.revoked_code_ids.clear();
        let out = entitlement(&r);
        assert_eq!(value_of(&out, "edition"), "essentials (unchanged)");
        assert!(!out.contains("re-issue a code"), "{out}");
    }

    #[test]
    fn suspend_and_resume_show_the_status() {
        let mut r = TenantStatusResponse {
            tenant_id: T,
            status: TenantStatus::Suspended,
            suspended_at: Some(now()),
        };
        assert_eq!(value_of(&tenant_status(&r), "status"), "suspended");
        assert_eq!(
            value_of(&tenant_status(&r), "suspended since"),
            "2026-12-07T12:00:00Z"
        );
        r.status = TenantStatus::Active;
        r.suspended_at = None;
        assert_eq!(value_of(&tenant_status(&r), "status"), "active");
        assert_eq!(value_of(&tenant_status(&r), "suspended since"), "-");
    }

    #[test]
    fn the_appliance_list_has_one_line_per_appliance_under_a_header() {
        let out = appliances(
            &[
                appliance(A, ApplianceState::Active),
                appliance(B, ApplianceState::Revoked),
            ],
            now(),
        );
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), 3, "{out}");
        assert!(lines[0].trim_start().starts_with("APPLIANCE"), "{out}");
        let a: Vec<&str> = lines[1].split_whitespace().collect();
        assert_eq!(
            a[..4],
            [A.to_string().as_str(), &T.to_string(), "active", "ok"]
        );
        let b: Vec<&str> = lines[2].split_whitespace().collect();
        assert_eq!(b[2..4], ["revoked", "-"]);
    }

    #[test]
    fn a_revocation_of_a_replaced_appliance_reads_as_such() {
        let body = serde_json::json!({
            "appliance_id": A, "tenant_id": T, "state": "replaced",
            "revoked_at": null, "changed": false
        });
        let r: RevokeResponse = serde_json::from_value(body).expect("the gateway's revoke body");
        let out = revoked(&r);
        assert_eq!(value_of(&out, "state"), "replaced");
        assert!(
            value_of(&out, "result").starts_with("was replaced by a rebuild"),
            "{out}"
        );
        let body = serde_json::json!({
            "appliance_id": A, "tenant_id": T, "state": "revoked",
            "revoked_at": "2026-12-07T12:00:00Z", "changed": true
        });
        let r: RevokeResponse = serde_json::from_value(body).expect("the gateway's revoke body");
        assert_eq!(value_of(&revoked(&r), "revoked at"), "2026-12-07T12:00:00Z");
    }

    fn proven(seq: u64, record: &str) -> ProvenRecord {
        ProvenRecord {
            seq,
            record: record.to_owned(),
            proof: Vec::new(),
        }
    }

    fn page(records: Vec<ProvenRecord>) -> TenantAudit {
        TenantAudit {
            tenant_id: T.to_string(),
            checkpoint: String::new(),
            records,
            next_after: None,
        }
    }

    #[test]
    fn a_tenants_audit_records_show_seq_time_action_and_outcome() {
        let ok = r#"{"action":"tenant.register","actor":{"identity":"spiffe://alga.test/service/store","role":"store"},"details":{},"outcome":{"status":"success"},"request_id":null,"source":null,"subjects":{},"tenant_id":"11111111-1111-4111-8111-111111111111","time":"2026-12-07T05:50:01.123456Z","v":1}"#;
        let refused = r#"{"action":"check_in","outcome":{"error_code":"tenant_suspended","status":"failure"},"time":"2026-12-07T05:51:00.000000Z"}"#;
        let first = page(vec![proven(7, ok), proven(4090, refused)]);
        let second = page(vec![proven(12001, "not json at all"), proven(12002, "{}")]);
        let out = tenant_audit(&[first.clone(), second]);
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(
            lines[0],
            "  SEQ    TIME                  ACTION                        OUTCOME"
        );
        assert_eq!(
            lines[1],
            "  7      2026-12-07T05:50:01Z  tenant.register               success"
        );
        assert_eq!(
            lines[2],
            "  4090   2026-12-07T05:51:00Z  check_in                      failure (tenant_suspended)"
        );
        // A record that is not JSON is named, never shown as empty cells.
        assert_eq!(
            lines[3],
            "  12001  -                     DAMAGED: not JSON (15 bytes)  -"
        );
        assert_eq!(
            lines[4],
            "  12002  -                     -                             -"
        );
        assert_eq!(
            lines[6],
            format!("4 records of tenant {T}, each with its inclusion proof (2 pages)")
        );
        let one = tenant_audit(&[page(vec![proven(7, ok)])]);
        assert!(
            one.ends_with(&format!(
                "\n1 record of tenant {T}, each with its inclusion proof\n"
            )),
            "{one}"
        );
        let none = tenant_audit(&[page(Vec::new())]);
        assert_eq!(
            none,
            format!(
                "  SEQ  TIME  ACTION  OUTCOME\n\n0 records of tenant {T}, each with its inclusion proof\n"
            )
        );
    }

    fn report(records: u64, size: u64) -> TenantAuditReport {
        TenantAuditReport {
            checkpoint: alga_tlog::Checkpoint {
                origin: "alga-license.dev/audit-log".to_owned(),
                size,
                root: alga_tlog::Hash([7; 32]),
                body: String::new(),
                note: String::new(),
            },
            records,
        }
    }

    #[test]
    fn the_proof_line_names_the_checkpoints_and_their_signer() {
        assert_eq!(
            tenant_audit_proven(&[report(3, 4545)]),
            "3 records proven in the checkpoint of size 4545 signed by alga-license.dev/audit-log\n"
        );
        assert_eq!(
            tenant_audit_proven(&[report(1000, 9000), report(1000, 9000), report(1, 9100)]),
            "2001 records proven in 2 checkpoints (sizes 9000, 9100) signed by alga-license.dev/audit-log\n"
        );
        assert_eq!(
            tenant_audit_proven(&[report(1, 12)]),
            "1 record proven in the checkpoint of size 12 signed by alga-license.dev/audit-log\n"
        );
        let none = tenant_audit_proven(&[report(0, 12)]);
        assert!(
            none.starts_with("0 records proven in the checkpoint of size 12 signed by ")
                && none.contains("proven in the next one"),
            "{none}"
        );
    }
}
