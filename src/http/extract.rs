//! Extractors whose rejections are our JSON errors, never axum's plain text, and the
//! body limit (`SPOOL_BODY_LIMIT`) they read within.

use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{FromRequest, FromRequestParts, Query, Request};
use axum::http::header;
use axum::http::request::Parts;
use bytes::BytesMut;
use http_body_util::BodyExt;
use serde::de::DeserializeOwned;

use super::error::{ApiError, ErrorCode};
use super::state::HttpState;

/// A JSON body. The `Content-Type` is not required (so `curl -d '{…}'` works).
pub struct JsonBody<T>(pub T);

impl<T: DeserializeOwned> FromRequest<HttpState> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &HttpState) -> Result<Self, ApiError> {
        let bytes = read_body(req, state.limits().body_limit).await?;
        decode_json(&bytes).map(JsonBody)
    }
}

/// A body's bytes, raw (`POST /v1/sessions`, whose body is optional).
pub struct RawBody(pub Bytes);

impl FromRequest<HttpState> for RawBody {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &HttpState) -> Result<Self, ApiError> {
        read_body(req, state.limits().body_limit).await.map(RawBody)
    }
}

/// How much of a body past the limit is still read (and dropped) before the `413`, and
/// for how long at most. A proxy in front (nginx buffers a body it lets through, then
/// writes it all) then reads spool's JSON `413` instead of failing on a connection
/// closed under its feet; a body larger than this, or endless, is cut.
const DRAIN_MAX: u64 = 8 * 1024 * 1024;
const DRAIN_TIME: Duration = Duration::from_secs(5);

/// Reads a body of at most `limit` bytes: `413 payload_too_large` past it.
async fn read_body(req: Request, limit: usize) -> Result<Bytes, ApiError> {
    let too_large = || ApiError::new(ErrorCode::PayloadTooLarge, "the request body is too large");
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let mut body = req.into_body();
    if let Some(n) = declared
        && n > limit as u64
    {
        if n <= DRAIN_MAX {
            drain(body).await;
        }
        return Err(too_large());
    }
    let mut bytes = BytesMut::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|_| {
            ApiError::new(ErrorCode::InvalidBody, "the request body could not be read")
        })?;
        if let Some(data) = frame.data_ref() {
            if bytes.len() + data.len() > limit {
                drain(body).await;
                return Err(too_large());
            }
            bytes.extend_from_slice(data);
        }
    }
    Ok(bytes.freeze())
}

/// Reads and drops what is left of a body, within [`DRAIN_MAX`] and [`DRAIN_TIME`].
async fn drain(mut body: Body) {
    let mut read = 0u64;
    let until = tokio::time::Instant::now() + DRAIN_TIME;
    while read <= DRAIN_MAX {
        match tokio::time::timeout_at(until, body.frame()).await {
            Ok(Some(Ok(frame))) => {
                read += frame.data_ref().map_or(0, |d| d.len() as u64);
            }
            _ => return,
        }
    }
}

/// Decodes a request body as JSON into `T`: an empty body or malformed JSON is
/// `400 invalid_json`, JSON of the wrong shape `400 invalid_request`. Every failure is a
/// `4xx`; the fuzz targets in `fuzz/` hold it to that.
pub fn decode_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::new(
            ErrorCode::InvalidJson,
            "the request body is empty; expected a JSON object",
        ));
    }
    match serde_json::from_slice(bytes) {
        Ok(value) => Ok(value),
        Err(e) if e.is_data() => Err(ApiError::invalid(e.to_string())),
        Err(e) => Err(ApiError::new(
            ErrorCode::InvalidJson,
            format!("malformed JSON: {e}"),
        )),
    }
}

/// Query parameters.
pub struct QueryParams<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for QueryParams<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        Query::<T>::from_request_parts(parts, state)
            .await
            .map(|Query(v)| QueryParams(v))
            .map_err(|e| ApiError::invalid(format!("invalid query string: {}", e.body_text())))
    }
}
