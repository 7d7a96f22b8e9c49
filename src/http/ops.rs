//! Operations: liveness, readiness, Prometheus metrics, and the model list.

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{Value, json};

use crate::app::AppState;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/v1/models", get(models))
}

/// The process is up and serving HTTP.
async fn healthz() -> Json<Value> {
    Json(json!({ "status": "ok" }))
}

/// The store answers, the models are loaded, and the server is not shutting down.
async fn readyz(State(state): State<AppState>) -> impl IntoResponse {
    let store = state.store.ping().await;
    let models = state.engine.models().ready();
    let open = !state.http_shutdown.is_cancelled();
    let ready = store && models && open;
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let body = json!({
        "status": if ready { "ready" } else { "not_ready" },
        "store": store,
        "models": models,
        "shutting_down": !open,
    });
    (status, Json(body))
}

async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    let text = state.metrics.render(&state.engine.gauges());
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        text,
    )
}

/// `GET /v1/models`, shaped like OpenAI's list.
async fn models(State(state): State<AppState>) -> Json<Value> {
    let data: Vec<Value> = state
        .engine
        .models()
        .names()
        .into_iter()
        .map(|id| json!({ "id": id, "object": "model", "created": 0, "owned_by": "spool" }))
        .collect();
    Json(json!({ "object": "list", "data": data }))
}
