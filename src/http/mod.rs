//! The HTTP API: one module per resource, merged here with the JSON fallbacks, the
//! body limit, the key check, CORS and (outermost) the request id. Handlers validate, call the engine or read the store, and shape JSON;
//! they hold no SQL and no generation logic.

pub mod auth;
pub mod error;
pub mod extract;
pub mod openai;
pub mod ops;
pub mod page;
pub mod params;
pub mod request_id;
pub mod sessions;
pub mod sse;
#[cfg(test)]
mod strategies;
pub mod streams;
pub mod ws;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::StatusCode;

use crate::app::AppState;
use error::ApiError;

pub fn router(state: AppState) -> Router {
    let body_limit = state.config.body_limit;
    let cors = cors(&state.config.cors_origins);
    let router = Router::new()
        .merge(streams::router())
        .merge(sessions::router())
        .merge(ws::router())
        .merge(openai::router())
        .merge(ops::router())
        .merge(page::router())
        .fallback(|| async { ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such route") })
        .method_not_allowed_fallback(|| async {
            ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "method not allowed on this route",
            )
        })
        .layer(DefaultBodyLimit::max(body_limit))
        .layer(axum::middleware::from_fn_with_state(
            auth::keys(&state),
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
            .allow_methods([Method::GET, Method::POST, Method::DELETE])
            .allow_headers([
                header::AUTHORIZATION,
                header::CONTENT_TYPE,
                HeaderName::from_static("last-event-id"),
                request_id::HEADER,
            ])
            .expose_headers([
                HeaderName::from_static("x-stream-id"),
                HeaderName::from_static("x-session-id"),
                header::LOCATION,
                header::RETRY_AFTER,
                request_id::HEADER,
            ])
            .max_age(std::time::Duration::from_secs(3600)),
    )
}
