//! The audit log as a transparency log, read over HTTP (c2sp.org/tlog-tiles under
//! `/audit/log/`): the newest checkpoint with its cosignatures, hash tiles and entry
//! bundles, the log's verifier keys, one record's inclusion proof, and a tenant's
//! records with theirs. Everything here but the tenant's records is public: the tree
//! holds digests, never record content.
//!
//! Every tile this serves is immutable (a partial tile of width `W` never changes
//! either), so tiles carry a year-long `immutable` cache lifetime and sit well
//! behind any HTTP cache; full tiles are also kept in a small in-process cache. The
//! checkpoint changes and is served `no-cache`.

use std::collections::HashMap;
use std::sync::Mutex;

use alga_audit::AuditError;
use alga_tlog::{TilePath, TlogError};
use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use uuid::Uuid;

use super::extract::{AppState, ReaderCaller};
use crate::error::ApiError;

/// Full tiles kept in memory (each at most 256 × 34 bytes).
const TILE_CACHE_ENTRIES: usize = 2048;

/// Full tiles already read: immutable, so never stale.
#[derive(Debug, Default)]
pub struct TileCache(Mutex<HashMap<TilePath, Bytes>>);

impl TileCache {
    fn get(&self, path: &TilePath) -> Option<Bytes> {
        self.0.lock().ok()?.get(path).cloned()
    }

    fn put(&self, path: TilePath, data: Bytes) {
        if let Ok(mut map) = self.0.lock() {
            if map.len() >= TILE_CACHE_ENTRIES {
                map.clear();
            }
            map.insert(path, data);
        }
    }
}

/// Maps the audit library's refusals to the API's.
fn log_error(e: AuditError) -> ApiError {
    match e {
        AuditError::NoCheckpoint(what) => {
            ApiError::NotInLog(format!("no signed checkpoint covers {what} yet"))
        }
        AuditError::Log(TlogError::BeyondTree(what)) => ApiError::NotInLog(what),
        AuditError::Log(TlogError::Proof(detail)) => {
            // The stored tree does not hash to its own signed checkpoint: damage.
            tracing::error!(error = %detail, "audit tree does not match its signed checkpoint: run alga-audit verify");
            ApiError::internal(detail)
        }
        other => ApiError::internal(other),
    }
}

async fn newest(app: &crate::App) -> Result<alga_audit::LogCheckpoint, ApiError> {
    let conn = app.pool.get().await.map_err(crate::db::DbError::from)?;
    alga_audit::tree::latest_checkpoint(&**conn)
        .await
        .map_err(log_error)?
        .ok_or_else(|| ApiError::NotInLog("no signed checkpoint of the audit log yet".into()))
}

fn text(body: String, cache: &'static str) -> Response {
    (
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/plain; charset=utf-8"),
            ),
            (header::CACHE_CONTROL, HeaderValue::from_static(cache)),
        ],
        body,
    )
        .into_response()
}

/// `GET /audit/log/checkpoint` (anyone): the newest signed checkpoint, with every
/// witness cosignature collected for it.
pub async fn checkpoint(State(app): AppState) -> Result<Response, ApiError> {
    Ok(text(newest(&app).await?.cosigned(), "no-cache"))
}

/// `GET /audit/log/vkey` (anyone): the log's verifier keys, one per line, the active
/// one first (older ones verify older checkpoints).
pub async fn vkey(State(app): AppState) -> Result<Response, ApiError> {
    let keys = app.public_keys().await?;
    if keys.log_keys.is_empty() {
        return Err(ApiError::ServiceUnavailable);
    }
    let body: String = keys
        .log_keys
        .iter()
        .map(|k| format!("{}\n", k.vkey))
        .collect();
    Ok(text(body, "public, max-age=300"))
}

/// `GET /audit/log/tile/{*path}` (anyone): a hash tile (`<L>/<N>[.p/<W>]`) or an
/// entry bundle (`entries/<N>[.p/<W>]`) of the tree of the newest checkpoint.
pub async fn tile(State(app): AppState, Path(rest): Path<String>) -> Result<Response, ApiError> {
    let path = TilePath::parse(&format!("tile/{rest}"))
        .map_err(|e| ApiError::field("path", e.to_string()))?;
    let data = match app.tiles.get(&path) {
        Some(d) => d,
        None => {
            let size = newest(&app).await?.size;
            let conn = app.pool.get().await.map_err(crate::db::DbError::from)?;
            let d = Bytes::from(
                alga_audit::tree::read_tile(&**conn, &path, size)
                    .await
                    .map_err(log_error)?,
            );
            if path.is_full() {
                app.tiles.put(path, d.clone());
            }
            d
        }
    };
    Ok((
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/octet-stream"),
            ),
            (
                header::CACHE_CONTROL,
                HeaderValue::from_static("public, max-age=31536000, immutable"),
            ),
        ],
        data,
    )
        .into_response())
}

/// `GET /audit/log/proof/{seq}` (anyone): record `seq`'s inclusion in the newest
/// checkpoint: `{index, size, entry, proof, checkpoint}`.
pub async fn proof(State(app): AppState, Path(seq): Path<String>) -> Result<Response, ApiError> {
    let seq: u64 = seq
        .parse()
        .ok()
        .filter(|s| *s >= 1)
        .ok_or_else(|| ApiError::field("seq", "a record's sequence number, from 1"))?;
    let conn = app.pool.get().await.map_err(crate::db::DbError::from)?;
    let bundle = alga_audit::tree::inclusion_proof(&**conn, seq)
        .await
        .map_err(log_error)?;
    Ok(Json(bundle).into_response())
}

/// Paging of `GET /tenants/{tenant_id}/audit`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TenantPage {
    pub after: Option<u64>,
    pub limit: Option<u32>,
}

/// `GET /tenants/{tenant_id}/audit` (store, auditor): the tenant's records after
/// `after`, each with its inclusion proof, all against one checkpoint.
pub async fn tenant_audit(
    State(app): AppState,
    _caller: ReaderCaller,
    Path(tenant_id): Path<Uuid>,
    page: Result<Query<TenantPage>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(page) = page.map_err(|e| ApiError::field("query", e.body_text()))?;
    let limit = page.limit.unwrap_or(100);
    if !(1..=alga_audit::tree::MAX_TENANT_PAGE).contains(&limit) {
        return Err(ApiError::field("limit", "1 to 1000"));
    }
    let conn = app.pool.get().await.map_err(crate::db::DbError::from)?;
    if crate::db::tenants::get(&conn, tenant_id).await?.is_none() {
        return Err(ApiError::TenantNotFound);
    }
    let bundle = alga_audit::tree::tenant_audit(&**conn, tenant_id, page.after.unwrap_or(0), limit)
        .await
        .map_err(log_error)?;
    Ok(Json(bundle).into_response())
}
