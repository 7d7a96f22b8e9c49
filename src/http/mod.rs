//! The HTTP API: one module per surface (`streams` and `sessions` — the native API —,
//! `ws`, `openai`), plus `ops` and the chat `page`, merged here with the JSON
//! fallbacks, the body limit, the key check, CORS and (outermost) the request id.
//!
//! A surface maps its request onto the one start path ([`HttpState::start`] →
//! `Engine::start`), follows streams through the engine's cursor rule, and writes the
//! engine's events in its own format ([`render::Render`]). Handlers hold no SQL and no
//! generation logic; they reach the engine only through [`HttpState`].

mod auth;
mod chats;
mod ds;
mod ds_subs;
mod error;
mod extract;
mod formats;
mod listing;
mod openai;
mod ops;
mod page;
mod params;
mod render;
mod request_id;
mod responses;
mod sessions;
mod sse;
mod state;
#[cfg(test)]
mod strategies;
mod streams;
mod ws;

pub use error::{ApiError, ErrorCode};
pub use sse::FINAL_WRITE;
pub use state::{HttpConfig, HttpState};

/// The parsers of what clients send, exported for the fuzz targets in `fuzz/`: each
/// must answer any input with a value or a `4xx`, never a panic or a `5xx`.
pub mod inputs {
    pub use super::extract::decode_json;
    pub use super::openai::request::ChatRequest;
    pub use super::params::StreamParams;
    pub use super::responses::request::ResponsesRequest;
    pub use super::sessions::SessionParams;
    pub use super::ws::protocol::{Incoming, Rejected, error, parse, stream_params};
    pub use crate::engine::parse_cursor;
}

use axum::Router;
use axum::extract::DefaultBodyLimit;

/// The whole API, over `state`.
pub fn router(state: HttpState) -> Router {
    let body_limit = state.limits().body_limit;
    let cors = cors(&state.server().cors_origins);
    let router = Router::new()
        .merge(streams::router())
        .merge(sessions::router())
        .merge(chats::router())
        .merge(ds::router(
            &state.server().ds_prefix,
            state.server().ds_body_limit,
        ))
        .merge(ws::router())
        .merge(openai::router())
        .merge(responses::router())
        .merge(ops::router())
        .merge(page::router())
        .fallback(|| async { ApiError::new(ErrorCode::NotFound, "no such route") })
        .method_not_allowed_fallback(|| async {
            ApiError::new(
                ErrorCode::MethodNotAllowed,
                "method not allowed on this route",
            )
        })
        .layer(DefaultBodyLimit::max(body_limit))
        .layer(axum::middleware::from_fn_with_state(
            state.key_check(),
            auth::require_key,
        ))
        .with_state(state);
    // Outside the key check, so that a browser's preflight gets its answer.
    let router = match cors {
        Some(cors) => router.layer(cors),
        None => router,
    };
    // Outermost: every response, whoever made it, carries the request id.
    router.layer(axum::middleware::from_fn(request_id::layer))
}

/// The CORS policy for `SPOOL_CORS_ORIGINS`; `None` (no cross-origin access) when unset.
fn cors(origins: &[String]) -> Option<tower_http::cors::CorsLayer> {
    use axum::http::{HeaderName, HeaderValue, Method, header};
    use tower_http::cors::{AllowOrigin, CorsLayer};
    let origins: Vec<&str> = origins
        .iter()
        .map(|o| o.trim())
        .filter(|o| !o.is_empty())
        .collect();
    if origins.is_empty() {
        return None;
    }
    let allow = if origins.contains(&"*") {
        AllowOrigin::any()
    } else {
        AllowOrigin::list(origins.iter().filter_map(|o| HeaderValue::from_str(o).ok()))
    };
    Some(
        CorsLayer::new()
            .allow_origin(allow)
            // Every method the API has.
            .allow_methods([
                Method::GET,
                Method::POST,
                Method::PATCH,
                Method::DELETE,
                Method::PUT,
                Method::HEAD,
            ])
            .allow_headers([
                header::AUTHORIZATION,
                header::CONTENT_TYPE,
                HeaderName::from_static("last-event-id"),
                HeaderName::from_static("idempotency-key"),
                request_id::HEADER,
                // The Durable Streams protocol's.
                header::IF_NONE_MATCH,
                HeaderName::from_static("stream-seq"),
                HeaderName::from_static("stream-ttl"),
                HeaderName::from_static("stream-expires-at"),
                HeaderName::from_static("stream-closed"),
                HeaderName::from_static("producer-id"),
                HeaderName::from_static("producer-epoch"),
                HeaderName::from_static("producer-seq"),
                HeaderName::from_static("spool-events"),
            ])
            .expose_headers([
                HeaderName::from_static("x-stream-id"),
                HeaderName::from_static("x-session-id"),
                HeaderName::from_static("x-chat-token"),
                HeaderName::from_static("x-vercel-ai-ui-message-stream"),
                header::LOCATION,
                header::RETRY_AFTER,
                request_id::HEADER,
                header::ETAG,
                HeaderName::from_static("stream-next-offset"),
                HeaderName::from_static("stream-cursor"),
                HeaderName::from_static("stream-up-to-date"),
                HeaderName::from_static("stream-closed"),
                HeaderName::from_static("stream-sse-data-encoding"),
                HeaderName::from_static("spool-stream-id"),
                HeaderName::from_static("stream-read-token"),
                HeaderName::from_static("producer-epoch"),
                HeaderName::from_static("producer-seq"),
                HeaderName::from_static("producer-expected-seq"),
                HeaderName::from_static("producer-received-seq"),
            ])
            .max_age(std::time::Duration::from_secs(3600)),
    )
}
