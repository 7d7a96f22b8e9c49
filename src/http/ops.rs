//! Operations: liveness, readiness, Prometheus metrics, and the model list.

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use serde::Serialize;

use super::state::HttpState;

pub fn router() -> Router<HttpState> {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/v1/models", get(models))
}

#[derive(Serialize)]
struct Health {
    status: &'static str,
}

/// The process is up and serving HTTP.
async fn healthz() -> Json<Health> {
    Json(Health { status: "ok" })
}

#[derive(Serialize)]
struct Readiness {
    status: &'static str,
    store: bool,
    models: bool,
    shutting_down: bool,
    /// Why the store is not ready (only then).
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<String>,
}

/// The store answers and accepts writes, the models are loaded, and the server is not
/// shutting down.
async fn readyz(State(state): State<HttpState>) -> impl IntoResponse {
    let store = state.engine().store_ready().await;
    let reason = (!store).then(|| {
        state
            .engine()
            .store_unavailable_reason()
            .unwrap_or_else(|| "the store does not answer".to_owned())
    });
    let models = state.engine().models().ready();
    let shutting_down = state.is_shutting_down() || state.engine().is_draining();
    let ready = store && models && !shutting_down;
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let body = Readiness {
        status: if ready { "ready" } else { "not_ready" },
        store,
        models,
        shutting_down,
        reason,
    };
    (status, Json(body))
}

async fn metrics(State(state): State<HttpState>) -> impl IntoResponse {
    let text = state.metrics().render(&state.engine().gauges());
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        text,
    )
}

#[derive(Serialize)]
struct ModelList {
    object: &'static str,
    data: Vec<ModelObject>,
}

#[derive(Serialize)]
struct ModelObject {
    id: String,
    object: &'static str,
    created: i64,
    owned_by: &'static str,
}

/// `GET /v1/models`, shaped like OpenAI's list.
async fn models(State(state): State<HttpState>) -> Json<ModelList> {
    let data = state
        .engine()
        .models()
        .names()
        .into_iter()
        .map(|id| ModelObject {
            id,
            object: "model",
            created: 0,
            owned_by: "spool",
        })
        .collect();
    Json(ModelList {
        object: "list",
        data,
    })
}
