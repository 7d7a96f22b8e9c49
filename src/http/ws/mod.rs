//! `GET /v1/ws`: the WebSocket endpoint (SPEC §4). This module upgrades the request
//! within the server's limits; `socket` runs one connection; `protocol` is the wire
//! format of its messages.
//!
//! Over HTTP/1.1 the socket opens with `GET` and `Upgrade: websocket`; over HTTP/2 with
//! an extended `CONNECT` whose `:protocol` is `websocket` (RFC 8441), so the route
//! takes both methods.

pub mod protocol;
mod socket;

use axum::Router;
use axum::extract::State;
use axum::extract::ws::WebSocketUpgrade;
use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use tracing::Instrument;

use super::auth::Owner;
use super::error::ApiError;
use crate::app::AppState;

pub fn router() -> Router<AppState> {
    Router::new().route("/v1/ws", get(upgrade).connect(upgrade))
}

async fn upgrade(
    State(state): State<AppState>,
    Owner(owner): Owner,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Response {
    let ws = match ws {
        Ok(ws) => ws,
        Err(rejection) => {
            return ApiError::new(
                rejection.status(),
                "websocket_required",
                format!("this endpoint speaks WebSocket: {}", rejection.body_text()),
            )
            .into_response();
        }
    };
    let Ok(permit) = state.ws_sockets.clone().try_acquire_owned() else {
        let mut e = ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "too_many_sockets",
            format!(
                "this server holds its limit of {} WebSocket connections; retry shortly",
                state.config.ws_max_sockets
            ),
        );
        e.retry_after = Some(1);
        return e.into_response();
    };
    let limit = state.config.ws_max_message;
    // The connection outlives this handler: it keeps the request's span (and id).
    let span = tracing::Span::current();
    ws.max_message_size(limit)
        .max_frame_size(limit)
        .on_upgrade(move |socket| socket::run(socket, state, owner, permit).instrument(span))
}
