//! API keys (`SPOOL_API_KEYS`): who is asking, and whether they may.
//!
//! With keys configured, every `/v1` route (and `/metrics` if `SPOOL_METRICS_AUTH`)
//! needs `Authorization: Bearer KEY`; a missing or unknown key is `401`. A request's
//! owner is a digest of its key (the key itself is never stored), and the store scopes
//! streams and sessions to it: another key's stream is a plain `404`, so existence never
//! leaks. Without keys, every request has no owner and everything is open.
//! `/healthz`, `/readyz` and the chat page's assets are always open.
//!
//! A browser's `EventSource` cannot send a header, so a `POST` that creates a stream also
//! returns a **read token**: `EXPIRY.KEYID.HMAC`, an HMAC-SHA256 over the stream id, the
//! expiry (unix seconds) and the id of the key that made it, with a server secret kept
//! in the store. It is accepted as `?token=` on that one stream's events URL, nowhere
//! else, until it expires — and only while its key is still configured: removing a key
//! from `SPOOL_API_KEYS` revokes its tokens too.
//!
//! A **chat token** (`chat.EXPIRY.KEYID.HMAC`, [`ApiKeys::chat_token`]) is the same for
//! one `/v1/chats` chat: sent as `Authorization: Bearer`, it stands for its key on that
//! chat's routes only, so a page never holds the key itself.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderValue, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};

use super::error::{ApiError, ErrorCode};
use crate::engine::Engine;

/// The configured keys, as digests, and the read-token signer.
#[derive(Debug, Default)]
pub struct ApiKeys {
    digests: Vec<[u8; 32]>,
    /// The owner of each configured key (see [`owner_of`]).
    owners: Vec<String>,
    metrics: bool,
    secret: Vec<u8>,
    token_ttl: Duration,
    /// A path prefix guarded besides `/v1/`.
    also_guarded: Option<String>,
}

/// A read token's right: to read this one stream's events.
#[derive(Debug, Clone)]
pub struct ReadGrant(pub String);

/// A chat token presented on a `/v1/chats` route (`Authorization: Bearer chat.…`): the
/// chats surface checks it against the chat the request names ([`ApiKeys::chat_owner`]).
#[derive(Debug, Clone)]
pub struct ChatBearer(pub String);

/// What every chat token starts with.
const CHAT_TOKEN_PREFIX: &str = "chat.";

/// Why a signed token is refused.
enum TokenFault {
    Malformed,
    WrongScope,
    KeyGone,
    Expired,
}

impl ApiKeys {
    pub fn new(keys: &[String], metrics: bool, secret: Vec<u8>, token_ttl: Duration) -> Self {
        let digests: Vec<[u8; 32]> = keys
            .iter()
            .map(|k| k.trim())
            .filter(|k| !k.is_empty())
            .map(|k| Sha256::digest(k.as_bytes()).into())
            .collect();
        ApiKeys {
            owners: digests.iter().map(owner_of).collect(),
            digests,
            metrics,
            secret,
            token_ttl,
            also_guarded: None,
        }
    }

    /// A read token for `stream_id` (only with keys configured: without them, events
    /// URLs are open anyway).
    /// `owner` is the key that created the stream: the token lives only while it does.
    pub fn read_token(&self, stream_id: &str, owner: Option<&str>) -> Option<String> {
        let key_id = owner?.strip_prefix(OWNER_PREFIX)?;
        if !self.enabled() {
            return None;
        }
        let expires = unix_now() + self.token_ttl.as_secs();
        let mac = hex(&self.sign(stream_id, expires, key_id));
        Some(format!("{expires}.{key_id}.{mac}"))
    }

    /// A chat token for `owner`'s chat `chat_id` and when it expires (unix seconds):
    /// `chat.EXPIRY.KEYID.HMAC`, the HMAC over the chat id, the expiry and the key's id.
    /// It stands for its key on that one chat's routes until it expires, and only while
    /// its key is configured. `None` without keys.
    pub fn chat_token(&self, chat_id: &str, owner: Option<&str>) -> Option<(String, u64)> {
        let key_id = owner?.strip_prefix(OWNER_PREFIX)?;
        if !self.enabled() {
            return None;
        }
        let expires = unix_now() + self.token_ttl.as_secs();
        let mac = hex(&self.sign_chat(chat_id, expires, key_id));
        Some((
            format!("{CHAT_TOKEN_PREFIX}{expires}.{key_id}.{mac}"),
            expires,
        ))
    }

    fn sign_chat(&self, chat_id: &str, expires: u64, key_id: &str) -> [u8; 32] {
        hmac_sha256(
            &self.secret,
            format!("chat:{chat_id}:{expires}:{key_id}").as_bytes(),
        )
    }

    /// The owner a chat token speaks for on chat `chat_id`, if it is valid for it now.
    pub fn chat_owner(&self, chat_id: &str, token: &str) -> Result<String, &'static str> {
        let rest = token
            .strip_prefix(CHAT_TOKEN_PREFIX)
            .ok_or(TokenFault::Malformed)
            .and_then(|rest| self.verify("chat", chat_id, rest));
        rest.map_err(|fault| match fault {
            TokenFault::Malformed => "the chat token is malformed",
            TokenFault::WrongScope => "the chat token is not valid for this chat",
            TokenFault::KeyGone => "the API key that made this chat token is no longer configured",
            TokenFault::Expired => "the chat token has expired; ask for a new one",
        })
    }

    fn sign(&self, stream_id: &str, expires: u64, key_id: &str) -> [u8; 32] {
        hmac_sha256(
            &self.secret,
            format!("read:{stream_id}:{expires}:{key_id}").as_bytes(),
        )
    }

    /// Whether `token` lets its bearer read `stream_id` now.
    fn check_token(&self, stream_id: &str, token: &str) -> Result<(), &'static str> {
        self.verify("read", stream_id, token)
            .map(|_| ())
            .map_err(|fault| match fault {
                TokenFault::Malformed => "the token is malformed",
                TokenFault::WrongScope => "the token is not valid for this stream",
                TokenFault::KeyGone => "the API key that made this token is no longer configured",
                TokenFault::Expired => "the token has expired; start a new one",
            })
    }

    /// The one check of a signed token `EXPIRY.KEYID.HMAC` of `kind` (`read`, `chat`)
    /// for `scope`: signature, key still configured, not expired. Returns its owner.
    fn verify(&self, kind: &str, scope: &str, token: &str) -> Result<String, TokenFault> {
        let mut parts = token.splitn(3, '.');
        let (Some(expires), Some(key_id), Some(signature)) =
            (parts.next(), parts.next(), parts.next())
        else {
            return Err(TokenFault::Malformed);
        };
        let expires: u64 = expires.parse().map_err(|_| TokenFault::Malformed)?;
        let signature = unhex(signature).ok_or(TokenFault::Malformed)?;
        let expected = hmac_sha256(
            &self.secret,
            format!("{kind}:{scope}:{expires}:{key_id}").as_bytes(),
        );
        if !constant_time_eq(&expected, &signature) {
            return Err(TokenFault::WrongScope);
        }
        let owner = format!("{OWNER_PREFIX}{key_id}");
        if !self.owners.contains(&owner) {
            return Err(TokenFault::KeyGone);
        }
        if expires <= unix_now() {
            return Err(TokenFault::Expired);
        }
        Ok(owner)
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
        self.enabled()
            && (path.starts_with("/v1/")
                || (self.metrics && path == "/metrics")
                || self.also_guarded.as_deref().is_some_and(|prefix| {
                    path.starts_with(prefix)
                        // A wake's callback, ack and release carry its token instead;
                        // the webhook keys are public.
                        && !path
                            .strip_prefix(prefix)
                            .and_then(|p| p.strip_prefix("v1/stream/"))
                            .is_some_and(crate::subscription::keyless)
                }))
    }

    /// The read-token scope of a Durable Stream's `GET` (`ds:{name}`), if `path` is one.
    fn ds_read_scope(&self, method: &axum::http::Method, path: &str) -> Option<String> {
        if method != axum::http::Method::GET {
            return None;
        }
        let rest = path.strip_prefix(self.also_guarded.as_deref()?)?;
        let name = crate::ds::decode_path(rest.strip_prefix("v1/stream/")?)?;
        Some(format!("ds:{name}"))
    }

    /// Guards the routes under `prefix` too (the Durable Streams protocol's).
    pub fn guard_prefix(mut self, prefix: &str) -> Self {
        self.also_guarded = Some(format!("{}/", prefix.trim_end_matches('/')));
        self
    }
}

/// What every owner name starts with; the rest is the key's id.
const OWNER_PREFIX: &str = "key_";

/// The owner name of a key: a digest prefix, so logs and the store never hold keys.
fn owner_of(digest: &[u8; 32]) -> String {
    let hex: String = digest.iter().take(8).map(|b| format!("{b:02x}")).collect();
    format!("{OWNER_PREFIX}{hex}")
}

fn constant_time_eq(a: &[u8; 32], b: &[u8; 32]) -> bool {
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// HMAC-SHA256 (RFC 2104).
fn hmac_sha256(key: &[u8], message: &[u8]) -> [u8; 32] {
    let mut block = [0u8; 64];
    if key.len() > 64 {
        block[..32].copy_from_slice(&Sha256::digest(key));
    } else {
        block[..key.len()].copy_from_slice(key);
    }
    let mut inner = Sha256::new();
    inner.update(block.map(|b| b ^ 0x36));
    inner.update(message);
    let mut outer = Sha256::new();
    outer.update(block.map(|b| b ^ 0x5c));
    outer.update(inner.finalize());
    outer.finalize().into()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> Option<[u8; 32]> {
    if s.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The stream a read token may open at `path`: `/v1/streams/{id}/events`, or a
/// `GET` of `/v1/responses/{id}` (its object, or its events with `?stream=true`).
fn events_path_stream<'p>(method: &axum::http::Method, path: &'p str) -> Option<&'p str> {
    let id = match path.strip_prefix("/v1/responses/") {
        Some(id) if method == axum::http::Method::GET => id,
        Some(_) => return None,
        None => path.strip_prefix("/v1/streams/")?.strip_suffix("/events")?,
    };
    Some(id).filter(|id| !id.contains('/'))
}

fn query_token(query: Option<&str>) -> Option<&str> {
    query?
        .split('&')
        .find_map(|pair| pair.strip_prefix("token="))
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

/// What the key check needs: the keys, and the engine whose rate limit every `/v1`
/// request of a key counts against.
pub struct KeyCheck {
    pub keys: ApiKeys,
    pub engine: Arc<Engine>,
}

/// Middleware: checks the key of a guarded route and records its owner.
pub async fn require_key(
    State(check): State<Arc<KeyCheck>>,
    mut request: Request,
    next: Next,
) -> Response {
    let keys = &check.keys;
    if keys.guards(request.uri().path()) {
        let key = request
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim);
        match key.and_then(|k| keys.owner(k)) {
            Some(owner) => {
                // Every `/v1` request counts against its key's rate limit.
                if let Err(e) = check.engine.charge(&owner) {
                    return ApiError::from(e).into_response();
                }
                request.extensions_mut().insert(Owner(Some(owner)));
            }
            None => {
                // No key: a read token may open this one stream's events.
                let path = request.uri().path();
                // Or a Durable Stream's GETs (its token signs `ds:{name}`).
                let scope = events_path_stream(request.method(), path)
                    .map(str::to_owned)
                    .or_else(|| keys.ds_read_scope(request.method(), path));
                let grant = match (scope, query_token(request.uri().query())) {
                    (Some(scope), Some(token)) if key.is_none() => {
                        Some(keys.check_token(&scope, token).map(|()| scope))
                    }
                    _ => None,
                };
                // A chat token as the bearer, or (for an `EventSource`, which sends no
                // header) as `?token=` on a chat's `GET`s.
                let chat_token = key
                    .or_else(|| {
                        query_token(request.uri().query())
                            .filter(|_| request.method() == axum::http::Method::GET)
                    })
                    .filter(|k| k.starts_with(CHAT_TOKEN_PREFIX))
                    .filter(|_| path == "/v1/chats" || path.starts_with("/v1/chats/"))
                    .map(str::to_owned);
                match grant {
                    Some(Ok(stream)) => {
                        request.extensions_mut().insert(ReadGrant(stream));
                    }
                    // Checked by the chats surface against the chat named.
                    None if chat_token.is_some() => {
                        if let Some(token) = chat_token {
                            request.extensions_mut().insert(ChatBearer(token));
                        }
                    }
                    Some(Err(why)) => return unauthorized(why),
                    None if key.is_some() => return unauthorized("the API key is not valid"),
                    None => {
                        return unauthorized(
                            "this server needs an API key: Authorization: Bearer KEY",
                        );
                    }
                }
            }
        }
    }
    next.run(request).await
}

fn unauthorized(message: &'static str) -> Response {
    let mut response = ApiError::new(ErrorCode::Unauthorized, message).into_response();
    response
        .headers_mut()
        .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_map_to_stable_owners_and_unknown_keys_to_none() {
        let keys = ApiKeys::new(
            &["alpha".into(), " beta ".into(), "".into()],
            false,
            b"secret".to_vec(),
            Duration::from_secs(60),
        );
        assert!(keys.enabled());
        let a = keys.owner("alpha").unwrap();
        assert_eq!(keys.owner("alpha").unwrap(), a);
        assert_ne!(keys.owner("beta").unwrap(), a);
        assert!(a.starts_with("key_") && !a.contains("alpha"));
        assert_eq!(keys.owner("gamma"), None);
        assert!(keys.guards("/v1/streams"));
        assert!(!keys.guards("/healthz"));
        assert!(!keys.guards("/metrics"));
        assert!(!ApiKeys::new(&[], true, vec![], Duration::ZERO).guards("/v1/streams"));
    }

    fn keys_owner_id(keys: &ApiKeys, key: &str) -> String {
        keys.owner(key)
            .unwrap()
            .strip_prefix(OWNER_PREFIX)
            .unwrap()
            .to_owned()
    }

    #[test]
    fn hmac_matches_rfc_4231_case_2() {
        let mac = hmac_sha256(b"Jefe", b"what do ya want for nothing?");
        assert_eq!(
            hex(&mac),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn read_tokens_are_scoped_to_one_stream_and_expire() {
        let keys = ApiKeys::new(&["k".into()], false, b"s".to_vec(), Duration::from_secs(60));
        let owner = keys.owner("k");
        let token = keys.read_token("st_a", owner.as_deref()).unwrap();
        assert_eq!(keys.check_token("st_a", &token), Ok(()));
        assert!(keys.check_token("st_b", &token).is_err());
        let mut forged = token.clone();
        forged.pop();
        forged.push(if token.ends_with('0') { '1' } else { '0' });
        assert!(keys.check_token("st_a", &forged).is_err());
        let expired = ApiKeys::new(&["k".into()], false, b"s".to_vec(), Duration::ZERO);
        let old = expired.read_token("st_a", owner.as_deref()).unwrap();
        assert!(
            expired
                .check_token("st_a", &old)
                .unwrap_err()
                .contains("expired")
        );
        // Bound to its key: another key's id in it breaks the signature; the key gone
        // (a restart with other keys, the same secret), the token is refused.
        let (expires, rest) = token.split_once('.').unwrap();
        let mac = rest.split_once('.').unwrap().1;
        let other = keys_owner_id(
            &ApiKeys::new(&["j".into()], false, vec![], Duration::ZERO),
            "j",
        );
        assert!(
            keys.check_token("st_a", &format!("{expires}.{other}.{mac}"))
                .is_err()
        );
        let without = ApiKeys::new(&["j".into()], false, b"s".to_vec(), Duration::from_secs(60));
        assert!(
            without
                .check_token("st_a", &token)
                .unwrap_err()
                .contains("no longer configured")
        );
        assert_eq!(keys.read_token("st_a", None), None);
        assert!(
            keys.check_token("st_a", &format!("{expires}.{mac}"))
                .is_err()
        );
        let (get, delete) = (&axum::http::Method::GET, &axum::http::Method::DELETE);
        assert_eq!(
            events_path_stream(get, "/v1/streams/st_a/events"),
            Some("st_a")
        );
        assert_eq!(events_path_stream(get, "/v1/streams/st_a"), None);
        assert_eq!(events_path_stream(get, "/v1/responses/st_a"), Some("st_a"));
        assert_eq!(events_path_stream(delete, "/v1/responses/st_a"), None);
        assert_eq!(
            events_path_stream(get, "/v1/responses/st_a/input_items"),
            None
        );
        assert_eq!(query_token(Some("after=3&token=9.ab")), Some("9.ab"));
    }
}
