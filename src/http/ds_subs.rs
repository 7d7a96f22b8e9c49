//! The Durable Streams protocol's reserved control routes, `{stream root}/__ds/…`,
//! routed before any stream (see `http::ds`): subscriptions (`PUT`/`GET`/`DELETE
//! subscriptions/{id}`, `POST …/streams`, `DELETE …/streams/{path}`), their webhook
//! `…/callback`, the pull-wake `…/claim`, `…/ack` and `…/release`, and the webhook
//! signing keys at `jwks.json`. Errors carry the protocol's codes (`FENCED`,
//! `ALREADY_CLAIMED`, …). Subscriptions belong to their creator's key; a callback,
//! ack or release is authorized by its wake token alone, so those routes (and the
//! public keys) take no API key (`subscription::keyless`, which `http::auth` asks).

use axum::body::Bytes;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::error::{ApiError, ErrorCode};
use super::state::HttpState;
use crate::engine::{SubError, WakeReply};
use crate::subscription::{self, Config, ConfigError, Delivery, Route};

impl From<SubError> for ApiError {
    fn from(e: SubError) -> Self {
        let message = e.to_string();
        match e {
            SubError::NotFound => ApiError::new(ErrorCode::SubscriptionNotFound, message),
            SubError::Exists => ApiError::new(ErrorCode::SubscriptionExists, message),
            SubError::Invalid(_) => ApiError::new(ErrorCode::SubscriptionInvalid, message),
            SubError::UrlRejected(_) => ApiError::new(ErrorCode::WebhookUrlRejected, message),
            SubError::TokenInvalid => ApiError::new(ErrorCode::TokenInvalid, message),
            SubError::Fenced => ApiError::new(ErrorCode::Fenced, message),
            SubError::AlreadyClaimed { holder, generation } => {
                ApiError::new(ErrorCode::AlreadyClaimed, message)
                    .with("current_holder", Value::String(holder))
                    .with("generation", Value::from(generation))
            }
            SubError::NoPendingWork => ApiError::new(ErrorCode::NoPendingWork, message),
            SubError::InvalidOffset(_) => ApiError::new(ErrorCode::InvalidOffset, message),
            SubError::TooMany => ApiError::new(ErrorCode::Overloaded, message),
            SubError::Random(_) => ApiError::internal("a subscription's id", &e),
            SubError::Store(e) => e.into(),
        }
    }
}

fn method_not_allowed(allowed: &str) -> ApiError {
    ApiError::new(
        ErrorCode::MethodNotAllowed,
        format!("this route takes {allowed}"),
    )
}

fn invalid(message: impl Into<String>) -> ApiError {
    ApiError::new(ErrorCode::SubscriptionInvalid, message)
}

/// The body as JSON (`{}` when empty).
fn json_body(body: &Bytes) -> Result<Value, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(json!({}));
    }
    serde_json::from_slice(body).map_err(|e| invalid(format!("the body is not valid JSON: {e}")))
}

fn wake_reply(body: &Bytes) -> Result<WakeReply, ApiError> {
    serde_json::from_value(json_body(body)?)
        .map_err(|e| invalid(format!("the body is not a wake's reply: {e}")))
}

fn bearer(headers: &HeaderMap) -> Result<&str, ApiError> {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .ok_or_else(|| {
            ApiError::new(
                ErrorCode::TokenInvalid,
                "give the wake's token: Authorization: Bearer TOKEN",
            )
        })
}

fn json_response(status: StatusCode, body: &Value) -> Response {
    (status, axum::Json(body)).into_response()
}

/// Serves `rest` (what follows `{stream root}/__ds/`). `root` is the stream root URL as
/// the request reached this server.
pub async fn handle(
    state: &HttpState,
    owner: Option<&str>,
    method: Method,
    rest: &str,
    root: &str,
    headers: &HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let Some(route) = Route::parse(rest) else {
        return Err(ApiError::new(
            ErrorCode::SubscriptionNotFound,
            "no such Durable Streams control route",
        ));
    };
    let engine = state.engine();
    match route {
        Route::Jwks => {
            if method != Method::GET {
                return Err(method_not_allowed("GET"));
            }
            let jwks = engine.subs_jwks()?;
            let mut response = json_response(StatusCode::OK, &jwks);
            let h = response.headers_mut();
            h.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/jwk-set+json"),
            );
            h.insert(
                header::CACHE_CONTROL,
                HeaderValue::from_static("public, max-age=300"),
            );
            Ok(response)
        }
        Route::Subscription(id) => match method {
            Method::PUT => {
                let config = Config::parse(&json_body(&body)?).map_err(|e| match e {
                    ConfigError::Invalid(why) => invalid(why),
                    ConfigError::UrlRejected(why) => {
                        ApiError::new(ErrorCode::WebhookUrlRejected, why)
                    }
                })?;
                let (created, view) = engine.subs_put(&id, owner, config, root).await?;
                let status = if created {
                    StatusCode::CREATED
                } else {
                    StatusCode::OK
                };
                Ok(json_response(status, &view))
            }
            Method::GET => Ok(json_response(
                StatusCode::OK,
                &engine.subs_get(&id, owner, root).await?,
            )),
            Method::DELETE => {
                engine.subs_delete(&id, owner).await?;
                Ok(StatusCode::NO_CONTENT.into_response())
            }
            _ => Err(method_not_allowed("PUT, GET and DELETE")),
        },
        Route::Streams(id) => {
            if method != Method::POST {
                return Err(method_not_allowed("POST"));
            }
            let body = json_body(&body)?;
            let streams = match body.get("streams") {
                Some(v) => subscription::stream_list(v).map_err(invalid)?,
                None => return Err(invalid("give {\"streams\": [paths]}")),
            };
            if streams.is_empty() {
                return Err(invalid("streams must name at least one stream"));
            }
            engine.subs_add_streams(&id, owner, streams).await?;
            Ok(StatusCode::NO_CONTENT.into_response())
        }
        Route::Stream(id, path) => {
            if method != Method::DELETE {
                return Err(method_not_allowed("DELETE"));
            }
            let path = subscription::stream_path(&path).map_err(invalid)?;
            engine.subs_remove_stream(&id, owner, &path).await?;
            Ok(StatusCode::NO_CONTENT.into_response())
        }
        Route::Claim(id) => {
            if method != Method::POST {
                return Err(method_not_allowed("POST"));
            }
            let body = json_body(&body)?;
            let worker = body
                .get("worker")
                .and_then(Value::as_str)
                .filter(|w| subscription::valid_name(w))
                .ok_or_else(|| invalid("worker must be a name of 1 to 1024 bytes"))?;
            let claimed = engine.subs_claim(&id, owner, worker).await?;
            Ok(json_response(StatusCode::OK, &claimed))
        }
        Route::Callback(id) | Route::Ack(id) => {
            if method != Method::POST {
                return Err(method_not_allowed("POST"));
            }
            let delivery = if rest.ends_with("/callback") {
                Delivery::Webhook
            } else {
                Delivery::PullWake
            };
            let token = bearer(headers)?;
            let reply = wake_reply(&body)?;
            let next_wake = engine.subs_ack(&id, token, reply, delivery).await?;
            Ok(json_response(
                StatusCode::OK,
                &json!({"ok": true, "next_wake": next_wake}),
            ))
        }
        Route::Release(id) => {
            if method != Method::POST {
                return Err(method_not_allowed("POST"));
            }
            let token = bearer(headers)?;
            let reply = wake_reply(&body)?;
            engine.subs_release(&id, token, reply).await?;
            Ok(StatusCode::NO_CONTENT.into_response())
        }
    }
}
