//! The HTTP API: one module per resource, merged here with the JSON fallbacks and the
//! body limit. Handlers validate, call the engine or read the store, and shape JSON;
//! they hold no SQL and no generation logic.

pub mod auth;
pub mod error;
pub mod extract;
pub mod openai;
pub mod ops;
pub mod page;
pub mod params;
pub mod sessions;
pub mod sse;
pub mod streams;
pub mod ws;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::StatusCode;

use crate::app::AppState;
use error::ApiError;

pub fn router(state: AppState) -> Router {
    let body_limit = state.config.body_limit;
    Router::new()
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
        .with_state(state)
}
