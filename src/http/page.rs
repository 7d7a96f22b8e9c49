//! The chat page at `GET /` (SPEC §8): one HTML file, its scripts and its stylesheet,
//! embedded in the binary at compile time from `src/http/page/` (no build step, nothing
//! fetched from elsewhere), plus a `204` for `/favicon.ico` and the minimal
//! `examples/eventsource.html` at `/examples/eventsource.html`. The page talks only to the
//! public API: `/v1/models`, the sessions endpoints, `EventSource` on a stream's events
//! and `cancel` over `/v1/ws` — or, on a server with API keys, the key the page asks for
//! on fetches, the stream's read token on the `EventSource`, and
//! `POST /v1/streams/{id}/cancel` (a browser's WebSocket cannot send the key).

use axum::Router;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;

use super::state::HttpState;

const INDEX_HTML: &str = include_str!("page/index.html");
const APP_JS: &str = include_str!("page/app.js");
/// The safe Markdown renderer of answers (DOM nodes and `textContent`, never HTML).
const MARKDOWN_JS: &str = include_str!("page/markdown.js");
const STYLE_CSS: &str = include_str!("page/style.css");
/// `examples/eventsource.html`, served so that it runs on the API's origin. It has an
/// inline script, so it goes without the page's CSP.
const EVENTSOURCE_EXAMPLE: &str = include_str!("../../examples/eventsource.html");

/// Scripts, styles and connections only from this origin; no inline script, no frames.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
     connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; \
     frame-ancestors 'none'";

pub fn router() -> Router<HttpState> {
    Router::new()
        .route(
            "/",
            get(|| async { asset("text/html; charset=utf-8", INDEX_HTML) }),
        )
        .route(
            "/page/app.js",
            get(|| async { asset("text/javascript; charset=utf-8", APP_JS) }),
        )
        .route(
            "/page/markdown.js",
            get(|| async { asset("text/javascript; charset=utf-8", MARKDOWN_JS) }),
        )
        .route(
            "/page/style.css",
            get(|| async { asset("text/css; charset=utf-8", STYLE_CSS) }),
        )
        .route("/favicon.ico", get(|| async { StatusCode::NO_CONTENT }))
        .route(
            "/examples/eventsource.html",
            get(|| async {
                (
                    [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
                    EVENTSOURCE_EXAMPLE,
                )
            }),
        )
}

fn asset(content_type: &'static str, body: &'static str) -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, content_type),
            // Small files; revalidate so a new binary's page is seen at once.
            (header::CACHE_CONTROL, "no-cache"),
            (header::CONTENT_SECURITY_POLICY, CSP),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::REFERRER_POLICY, "no-referrer"),
        ],
        body,
    )
}
