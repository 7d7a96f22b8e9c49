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
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use tracing::Instrument;

use super::auth::Owner;
use super::error::{ApiError, ErrorCode};
use crate::http::state::HttpState;

pub fn router() -> Router<HttpState> {
    Router::new().route("/v1/ws", get(upgrade).connect(upgrade))
}

async fn upgrade(
    State(state): State<HttpState>,
    Owner(owner): Owner,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Response {
    let ws = match ws {
        Ok(ws) => ws,
        Err(rejection) => {
            return ApiError::new(
                ErrorCode::WebsocketRequired,
                format!("this endpoint speaks WebSocket: {}", rejection.body_text()),
            )
            .with_status(rejection.status())
            .into_response();
        }
    };
    let Some(permit) = state.socket_permit() else {
        return ApiError::new(
            ErrorCode::TooManySockets,
            format!(
                "this server holds its limit of {} WebSocket connections; retry shortly",
                state.ws().max_sockets
            ),
        )
        .retry_after(1)
        .into_response();
    };
    let limit = state.ws().max_message;
    // The connection outlives this handler: it keeps the request's span (and id).
    let span = tracing::Span::current();
    ws.max_message_size(limit)
        .max_frame_size(limit)
        .on_upgrade(move |socket| socket::run(socket, state, owner, permit).instrument(span))
}
