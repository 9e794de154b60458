//! `GET /events` (store): the event feed, paged by an opaque cursor; and the JSON
//! body of one event, which webhooks send as it is shown here.

use std::collections::BTreeMap;

use alga_protocol::api as wire;
use axum::Json;
use axum::extract::{Query, State};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

use super::extract::{AppState, StoreCaller};
use super::handlers::query_error;
use crate::error::ApiError;
use crate::flows::events::{self, Cursor, DEFAULT_EVENT_PAGE, FeedEvent, FeedPage, MAX_EVENT_PAGE};

/// `GET /events` query.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventsQuery {
    /// The `next` of the previous page; absent: from the start of the feed.
    #[serde(default)]
    pub after: Option<String>,
    /// At most this many events (1–1000, default 100).
    #[serde(default)]
    pub limit: Option<i64>,
}

/// `GET /events?after=<cursor>&limit=<n>` (store).
pub async fn list(
    State(app): AppState,
    _caller: StoreCaller,
    query: Result<Query<EventsQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(q) = query.map_err(query_error)?;
    let mut f = BTreeMap::new();
    let after = match q.after.as_deref() {
        None => Some(Cursor::START),
        Some(s) => Cursor::parse(s),
    };
    if after.is_none() {
        f.insert(
            "after".to_owned(),
            "must be the `next` of a previous page".to_owned(),
        );
    }
    let limit = q.limit.unwrap_or(i64::from(DEFAULT_EVENT_PAGE));
    let limit = u32::try_from(limit)
        .ok()
        .filter(|l| (1..=MAX_EVENT_PAGE).contains(l));
    if limit.is_none() {
        f.insert(
            "limit".to_owned(),
            format!("must be between 1 and {MAX_EVENT_PAGE}"),
        );
    }
    let (Some(after), Some(limit)) = (after, limit) else {
        return Err(ApiError::Validation(f));
    };
    let page = events::page(&app.pool, after, limit).await?;
    Ok(Json(event_page(page)).into_response())
}

/// The wire form of an event.
pub fn event(e: &FeedEvent) -> wire::Event {
    wire::Event {
        id: e.seq,
        kind: e.kind.as_str().to_owned(),
        at: e.at,
        tenant_id: e.tenant_id,
        appliance_id: e.appliance_id,
        data: e.data.clone(),
    }
}

fn event_page(p: FeedPage) -> wire::EventPage {
    wire::EventPage {
        events: p.events.iter().map(event).collect(),
        next: p.next.encode(),
    }
}

/// The JSON body of a webhook delivery: the event exactly as `GET /events` shows it.
pub fn event_body(e: &FeedEvent) -> Vec<u8> {
    // Invariant: the wire type is plain data (strings, numbers, a JSON map): it
    // always serializes.
    serde_json::to_vec(&event(e)).unwrap_or_default()
}
