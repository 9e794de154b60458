//! `algactl audit export|verify|tail`: security staff's view of the audit log through
//! the gateway's auditor routes (`/audit/events`, `/audit/checkpoints`, `/audit/keys`).
//!
//! `export` writes the same JSON-lines format as `alga-audit export` (header,
//! checkpoints, records), so `verify` — and `alga-audit verify --export` on another
//! machine — checks it offline: the chain is recomputed and every checkpoint signature
//! is checked against the HSM's audit keys.
//!
//! `audit tenant` and `audit log-keys` read the audit log as a transparency log (store
//! and auditor): a tenant's records, each with its inclusion proof in a signed
//! checkpoint (`GET /tenants/{id}/audit`, every page), checked offline with
//! `alga_tlog` against log keys kept from before (`GET /audit/log/vkey`). No database
//! and no key of the service is needed to check them: the file `--out` writes (a JSON
//! list of the pages as they came) is what `alga-audit verify-proof` reads.

use std::io::Write;
use std::path::Path;
use std::time::Duration;

use alga_audit::export::ExportHeader;
use alga_audit::{AuditKeys, ExportFilter, VerifyOptions, VerifyReport, verify_export};
use alga_tlog::{LogKeys, TenantAudit};
use anyhow::{Context, Result};
use serde::Deserialize;
use serde_json::Value;
use time::OffsetDateTime;
use uuid::Uuid;

use crate::client::Client;

/// Records per page (the gateway's maximum is at least this).
const PAGE: u32 = 500;

#[derive(Debug, Deserialize)]
struct EventsPage {
    events: Vec<Value>,
    next_after: Option<u64>,
}

#[derive(Debug, Deserialize)]
struct CheckpointsPage {
    checkpoints: Vec<Value>,
    next_after: Option<u64>,
}

/// What an export holds.
#[derive(Debug, Clone, Copy, Default)]
pub struct Exported {
    pub records: u64,
    pub checkpoints: u64,
    pub head_seq: u64,
}

/// Writes every checkpoint and every record after `after_seq` to `out`.
pub async fn export(client: &Client, after_seq: u64, out: &mut impl Write) -> Result<Exported> {
    let checkpoints = all_checkpoints(client).await?;
    let mut records = Vec::new();
    let mut after = after_seq;
    loop {
        let page: EventsPage = client
            .get(&format!("/audit/events?after={after}&limit={PAGE}"))
            .await?;
        let n = page.events.len();
        records.extend(page.events);
        match page.next_after {
            Some(next) if n > 0 => after = next,
            _ => break,
        }
    }
    let head_seq = records
        .last()
        .and_then(|r| r["seq"].as_u64())
        .unwrap_or(after_seq);
    let header = ExportHeader {
        kind: "header".to_owned(),
        format: "alga-license/audit-export/v1".to_owned(),
        exported_at: OffsetDateTime::now_utc(),
        head_seq,
        filter: ExportFilter {
            since_seq: if after_seq == 0 { 0 } else { after_seq + 1 },
            ..ExportFilter::default()
        },
    };
    writeln!(out, "{}", serde_json::to_string(&header)?)?;
    for cp in &checkpoints {
        let mut line = cp.clone();
        if let Some(obj) = line.as_object_mut() {
            obj.insert("type".to_owned(), Value::from("checkpoint"));
        }
        writeln!(out, "{}", serde_json::to_string(&line)?)?;
    }
    for r in &records {
        writeln!(out, "{}", serde_json::to_string(r)?)?;
    }
    out.flush()?;
    Ok(Exported {
        records: records.len() as u64,
        checkpoints: checkpoints.len() as u64,
        head_seq,
    })
}

async fn all_checkpoints(client: &Client) -> Result<Vec<Value>> {
    let mut out = Vec::new();
    let mut after = 0u64;
    loop {
        let page: CheckpointsPage = client
            .get(&format!("/audit/checkpoints?after={after}&limit={PAGE}"))
            .await?;
        let n = page.checkpoints.len();
        out.extend(page.checkpoints);
        match page.next_after {
            Some(next) if n > 0 => after = next,
            _ => return Ok(out),
        }
    }
}

/// The audit public keys the gateway republishes from the issuer.
pub async fn keys(client: &Client) -> Result<AuditKeys> {
    let v: Value = client.get("/audit/keys").await?;
    AuditKeys::parse(&v.to_string()).context("the audit keys served by the gateway do not parse")
}

/// Verifies an export file offline.
pub fn verify(path: &Path, keys: AuditKeys) -> Result<VerifyReport> {
    let opts = VerifyOptions {
        keys,
        external_checkpoints: Vec::new(),
        now: OffsetDateTime::now_utc(),
        unchained_alarm_after: time::Duration::seconds(30),
    };
    verify_export(path, &opts).context("verifying the export")
}

/// Records per page of `GET /tenants/{id}/audit` (the gateway's maximum).
const TENANT_PAGE: u32 = 1000;

/// The transparency log's verifier keys route (anyone).
const LOG_VKEY: &str = "/audit/log/vkey";

/// A tenant's pages of `GET /tenants/{id}/audit`: as they came (for `--out` and
/// `--json`) and typed (for the table and the verification).
#[derive(Debug)]
pub struct TenantPages {
    pub raw: Vec<Value>,
    pub pages: Vec<TenantAudit>,
}

/// Every page of the tenant's proven records, following `next_after`.
pub async fn tenant_pages(client: &Client, tenant: Uuid) -> Result<TenantPages> {
    let mut out = TenantPages {
        raw: Vec::new(),
        pages: Vec::new(),
    };
    let mut after = 0u64;
    loop {
        let raw: Value = client
            .get(&format!(
                "/tenants/{tenant}/audit?after={after}&limit={TENANT_PAGE}"
            ))
            .await?;
        let page: TenantAudit = serde_json::from_value(raw.clone())
            .context("the service's tenant audit page is not what this client expects")?;
        let next = page.next_after;
        let n = page.records.len();
        out.raw.push(raw);
        out.pages.push(page);
        match next {
            None => return Ok(out),
            Some(next) if n > 0 && next > after => after = next,
            Some(next) => anyhow::bail!(
                "the service's page after seq {after} points back to after={next}: stopping"
            ),
        }
    }
}

/// `GET /audit/log/vkey` as served, and the keys it holds.
pub async fn fetch_log_keys(client: &Client) -> Result<(String, LogKeys)> {
    let text = client.get_text(LOG_VKEY).await?;
    let keys = LogKeys::parse(&text)
        .context("the log's verifier keys served by the gateway do not parse")?;
    Ok((text, keys))
}

/// Log keys kept in a file (one verifier key per line, as `GET /audit/log/vkey`).
pub fn read_log_keys(path: &Path) -> Result<LogKeys> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading log keys {}", path.display()))?;
    LogKeys::parse(&text).with_context(|| format!("log keys {}", path.display()))
}

/// The pages as `--out` writes them: a JSON list of the answers as they came, in the
/// order fetched (what `alga-audit verify-proof` reads).
pub fn pages_json(pages: &TenantPages) -> Result<String> {
    Ok(serde_json::to_string_pretty(&pages.raw)? + "\n")
}

/// Prints new records as they are chained, one line each, until interrupted.
pub async fn tail(client: &Client, mut after: u64, follow: bool, json: bool) -> Result<()> {
    loop {
        let page: EventsPage = client
            .get(&format!("/audit/events?after={after}&limit={PAGE}"))
            .await?;
        for r in &page.events {
            if json {
                println!("{r}");
            } else {
                println!("{}", tail_line(r));
            }
        }
        if let (Some(next), false) = (page.next_after, page.events.is_empty()) {
            after = next;
            continue;
        }
        if !follow {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// One event of `audit tail` as a table line: sequence, time, action, status, tenant,
/// error code. A record whose stored bytes are not JSON (served as `record_hex`: a
/// damaged row) says so instead of printing empty columns.
fn tail_line(event: &Value) -> String {
    // A `Value` ignores width and alignment: format the number itself.
    let seq = event["seq"]
        .as_u64()
        .map_or_else(|| "-".to_owned(), |n| n.to_string());
    if let Some(hex) = event["record_hex"].as_str() {
        return format!(
            "{seq:>8}  DAMAGED: the stored record is not JSON ({} bytes; `audit verify` reports it)",
            hex.len() / 2
        );
    }
    let rec = &event["record"];
    format!(
        "{seq:>8}  {}  {:<22} {:<8} {}  {}",
        rec["time"].as_str().unwrap_or("-"),
        rec["action"].as_str().unwrap_or("-"),
        rec["outcome"]["status"].as_str().unwrap_or("-"),
        rec["tenant_id"].as_str().unwrap_or("-"),
        rec["outcome"]["error_code"].as_str().unwrap_or(""),
    )
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::tail_line;

    #[test]
    fn a_tail_line_has_the_record_columns() {
        let event = json!({"seq": 7, "record": {
            "time": "2026-11-23T06:00:00Z", "action": "redeem",
            "outcome": {"status": "denied", "error_code": "code_used"},
            "tenant_id": "9b2f0c1e-0000-4000-8000-000000000001"}});
        let line = tail_line(&event);
        assert!(
            line.starts_with("       7  2026-11-23T06:00:00Z  redeem"),
            "{line}"
        );
        assert!(line.contains("denied"), "{line}");
        assert!(
            line.ends_with("9b2f0c1e-0000-4000-8000-000000000001  code_used"),
            "{line}"
        );
    }

    #[test]
    fn a_damaged_record_is_named_not_shown_as_empty_columns() {
        let event = json!({"seq": 12, "record_hex": "7b2261"});
        let line = tail_line(&event);
        assert_eq!(
            line,
            "      12  DAMAGED: the stored record is not JSON (3 bytes; `audit verify` reports it)"
        );
        assert!(!line.contains(" - "), "{line}");
    }
}
