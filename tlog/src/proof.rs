//! Proof bundles a customer checks offline: one record's inclusion
//! (`GET /audit/log/proof/{seq}`) and a tenant's records with theirs
//! (`GET /tenants/{tenant_id}/audit`), each against one signed checkpoint, and a
//! tenant's pages of those together ([`verify_pages`]).

use serde::{Deserialize, Serialize};
use tlog_tiles::Hash;

use crate::error::TlogError;
use crate::merkle::{entry_of, leaf_hash};
use crate::note::{Checkpoint, LogKeys};
use crate::tiles::check_inclusion;

/// A record's inclusion in a checkpoint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InclusionProof {
    /// Leaf index (the record's `seq − 1`).
    pub index: u64,
    /// Size of the checkpoint's tree.
    pub size: u64,
    /// The entry: SHA-256 of the record's bytes, hex.
    pub entry: String,
    /// RFC 6962 audit path, hex, leaf to root.
    pub proof: Vec<String>,
    /// The signed checkpoint (signed-note text).
    pub checkpoint: String,
}

fn hash_of(hex_text: &str, what: &'static str) -> Result<Hash, TlogError> {
    let bytes = hex::decode(hex_text).map_err(|_| TlogError::malformed(what, "not hex"))?;
    let bytes: [u8; 32] = bytes
        .try_into()
        .map_err(|_| TlogError::malformed(what, "not 32 bytes"))?;
    Ok(Hash(bytes))
}

fn path_of(proof: &[String]) -> Result<Vec<Hash>, TlogError> {
    proof.iter().map(|h| hash_of(h, "proof hash")).collect()
}

impl InclusionProof {
    /// Verifies the checkpoint's signature and the proof; returns the checkpoint.
    pub fn verify(&self, keys: &LogKeys) -> Result<Checkpoint, TlogError> {
        let checkpoint = keys.verify(&self.checkpoint)?;
        if checkpoint.size != self.size {
            return Err(TlogError::Proof(format!(
                "the proof is for size {} but the checkpoint has size {}",
                self.size, checkpoint.size
            )));
        }
        let entry = hash_of(&self.entry, "entry")?;
        check_inclusion(
            &path_of(&self.proof)?,
            self.size,
            checkpoint.root,
            self.index,
            leaf_hash(&entry.0),
        )?;
        Ok(checkpoint)
    }

    /// Also checks that `record` (its stored bytes) is the entry proven.
    pub fn verify_record(&self, keys: &LogKeys, record: &[u8]) -> Result<Checkpoint, TlogError> {
        if hex::encode(entry_of(record)) != self.entry.to_ascii_lowercase() {
            return Err(TlogError::Record {
                seq: self.index + 1,
                detail: "the record's bytes do not hash to the proven entry".into(),
            });
        }
        self.verify(keys)
    }
}

/// One record of a tenant, with its inclusion proof.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProvenRecord {
    /// The record's sequence number (leaf `seq − 1`).
    pub seq: u64,
    /// The record's canonical bytes, as text (`audit/FORMAT.md`); hashed exactly as
    /// given, so a reformatted bundle no longer verifies.
    pub record: String,
    /// Audit path, hex, leaf to root.
    pub proof: Vec<String>,
}

/// A tenant's records, each proven in one checkpoint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TenantAudit {
    pub tenant_id: String,
    /// The signed checkpoint every proof is against.
    pub checkpoint: String,
    pub records: Vec<ProvenRecord>,
    /// When more records follow: pass as `after` for the next page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_after: Option<u64>,
}

/// What [`TenantAudit::verify`] established.
#[derive(Debug, Clone, PartialEq)]
pub struct TenantAuditReport {
    pub checkpoint: Checkpoint,
    /// Records proven, in bundle order.
    pub records: u64,
}

impl TenantAudit {
    /// Verifies the checkpoint, then every record: its bytes hash to a leaf proven in
    /// the checkpoint, and it names this tenant. The first failure is the error, naming
    /// the record's `seq`.
    pub fn verify(&self, keys: &LogKeys) -> Result<TenantAuditReport, TlogError> {
        let checkpoint = keys.verify(&self.checkpoint)?;
        let mut last = 0u64;
        for r in &self.records {
            if r.seq == 0 || r.seq <= last {
                return Err(TlogError::Record {
                    seq: r.seq,
                    detail: "records are not in increasing sequence order".into(),
                });
            }
            last = r.seq;
            let tenant = serde_json::from_str::<serde_json::Value>(&r.record)
                .ok()
                .and_then(|v| {
                    v.get("tenant_id")
                        .and_then(|t| t.as_str())
                        .map(str::to_owned)
                });
            if tenant.as_deref() != Some(self.tenant_id.as_str()) {
                return Err(TlogError::Record {
                    seq: r.seq,
                    detail: "the record does not name this tenant".into(),
                });
            }
            let leaf = leaf_hash(&entry_of(r.record.as_bytes()));
            check_inclusion(
                &path_of(&r.proof)?,
                checkpoint.size,
                checkpoint.root,
                r.seq - 1,
                leaf,
            )
            .map_err(|e| TlogError::Record {
                seq: r.seq,
                detail: e.to_string(),
            })?;
        }
        Ok(TenantAuditReport {
            records: self.records.len() as u64,
            checkpoint,
        })
    }
}

/// Prefixes an error about one page of [`verify_pages`] with the page's number (a
/// record's error already names its `seq`).
fn on_page(page: usize, e: TlogError) -> TlogError {
    match e {
        TlogError::Signature(m) => TlogError::Signature(format!("page {page}: {m}")),
        TlogError::Proof(m) => TlogError::Proof(format!("page {page}: {m}")),
        TlogError::Malformed { what, detail } => TlogError::Malformed {
            what,
            detail: format!("page {page}: {detail}"),
        },
        other => other,
    }
}

/// Verifies a tenant's records fetched page by page (each page a
/// `GET /tenants/{tenant_id}/audit` answer, the next one asked for with the previous
/// one's `next_after`), as `algactl audit tenant --out` keeps them. Every page is
/// checked ([`TenantAudit::verify`]), and the pages must belong together: one tenant,
/// records in increasing `seq` across pages, and checkpoints that never go back (the
/// log grows between two pages, so each may be proven in a newer checkpoint, never in
/// an older one, and two pages proven in trees of the same size must name the same
/// root: otherwise the log forked). The first failure is the error, naming the page
/// or the record. Returns one report per page, in order.
pub fn verify_pages(
    pages: &[TenantAudit],
    keys: &LogKeys,
) -> Result<Vec<TenantAuditReport>, TlogError> {
    let Some(first) = pages.first() else {
        return Err(TlogError::malformed("tenant audit pages", "no page"));
    };
    let mut reports: Vec<TenantAuditReport> = Vec::with_capacity(pages.len());
    let mut last_seq = 0u64;
    for (i, page) in pages.iter().enumerate() {
        let n = i + 1;
        if page.tenant_id != first.tenant_id {
            return Err(TlogError::malformed(
                "tenant audit pages",
                format!(
                    "page {n} is of tenant {} but page 1 of tenant {}",
                    page.tenant_id, first.tenant_id
                ),
            ));
        }
        if let Some(r) = page.records.first()
            && r.seq <= last_seq
        {
            return Err(TlogError::Record {
                seq: r.seq,
                detail: format!(
                    "page {n} does not follow page {}: its records do not come after seq {last_seq}",
                    n - 1
                ),
            });
        }
        let report = page.verify(keys).map_err(|e| on_page(n, e))?;
        if let Some(previous) = reports.last().map(|r| &r.checkpoint) {
            let (old_size, new_size) = (previous.size, report.checkpoint.size);
            if new_size < old_size {
                return Err(TlogError::Rollback { old_size, new_size });
            }
            if new_size == old_size && report.checkpoint.root != previous.root {
                return Err(TlogError::Fork { old_size, new_size });
            }
        }
        last_seq = page.records.last().map_or(last_seq, |r| r.seq);
        reports.push(report);
    }
    Ok(reports)
}
