//! API keys (`SPOOL_API_KEYS`): who is asking, and whether they may.
//!
//! With keys configured, every `/v1` route (and `/metrics` if `SPOOL_METRICS_AUTH`)
//! needs `Authorization: Bearer KEY`; a missing or unknown key is `401`. A request's
//! owner is a digest of its key (the key itself is never stored), and the store scopes
//! streams and sessions to it: another key's stream is a plain `404`, so existence never
//! leaks. Without keys, every request has no owner and everything is open.
//! `/healthz`, `/readyz` and the chat page's assets are always open.

use std::sync::Arc;

use axum::extract::{FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};

use super::error::ApiError;
use crate::app::AppState;

/// The configured keys, as digests.
#[derive(Debug, Default)]
pub struct ApiKeys {
    digests: Vec<[u8; 32]>,
    metrics: bool,
}

impl ApiKeys {
    pub fn new(keys: &[String], metrics: bool) -> Self {
        ApiKeys {
            digests: keys
                .iter()
                .map(|k| k.trim())
                .filter(|k| !k.is_empty())
                .map(|k| Sha256::digest(k.as_bytes()).into())
                .collect(),
            metrics,
        }
    }

    pub fn enabled(&self) -> bool {
        !self.digests.is_empty()
    }

    /// The owner behind a bearer key, if it is one of ours. Compares every configured
    /// key in constant time.
    fn owner(&self, key: &str) -> Option<String> {
        let digest: [u8; 32] = Sha256::digest(key.as_bytes()).into();
        let mut found = false;
        for known in &self.digests {
            found |= constant_time_eq(known, &digest);
        }
        found.then(|| owner_of(&digest))
    }

    fn guards(&self, path: &str) -> bool {
        self.enabled() && (path.starts_with("/v1/") || (self.metrics && path == "/metrics"))
    }
}

/// The owner name of a key: a digest prefix, so logs and the store never hold keys.
fn owner_of(digest: &[u8; 32]) -> String {
    let hex: String = digest.iter().take(8).map(|b| format!("{b:02x}")).collect();
    format!("key_{hex}")
}

fn constant_time_eq(a: &[u8; 32], b: &[u8; 32]) -> bool {
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Who made a request: `Some(owner)` with keys configured, `None` without.
#[derive(Debug, Clone, Default)]
pub struct Owner(pub Option<String>);

impl<S: Send + Sync> FromRequestParts<S> for Owner {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        Ok(parts.extensions.get::<Owner>().cloned().unwrap_or_default())
    }
}

/// Middleware: checks the key of a guarded route and records its owner.
pub async fn require_key(
    State(keys): State<Arc<ApiKeys>>,
    mut request: Request,
    next: Next,
) -> Response {
    if keys.guards(request.uri().path()) {
        let key = request
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim);
        let Some(owner) = key.and_then(|k| keys.owner(k)) else {
            let mut response = ApiError::new(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                if key.is_some() {
                    "the API key is not valid"
                } else {
                    "this server needs an API key: Authorization: Bearer KEY"
                },
            )
            .into_response();
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            return response;
        };
        request.extensions_mut().insert(Owner(Some(owner)));
    }
    next.run(request).await
}

/// The keys of a server's state (for the middleware).
pub fn keys(state: &AppState) -> Arc<ApiKeys> {
    state.keys.clone()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_map_to_stable_owners_and_unknown_keys_to_none() {
        let keys = ApiKeys::new(&["alpha".into(), " beta ".into(), "".into()], false);
        assert!(keys.enabled());
        let a = keys.owner("alpha").unwrap();
        assert_eq!(keys.owner("alpha").unwrap(), a);
        assert_ne!(keys.owner("beta").unwrap(), a);
        assert!(a.starts_with("key_") && !a.contains("alpha"));
        assert_eq!(keys.owner("gamma"), None);
        assert!(keys.guards("/v1/streams"));
        assert!(!keys.guards("/healthz"));
        assert!(!keys.guards("/metrics"));
        assert!(!ApiKeys::new(&[], true).guards("/v1/streams"));
    }
}
