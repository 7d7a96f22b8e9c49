//! Extractors whose rejections are our JSON errors, never axum's plain text.

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Query, Request};
use axum::http::StatusCode;
use axum::http::request::Parts;
use serde::de::DeserializeOwned;

use super::error::{ApiError, ErrorCode};

/// A JSON body. The `Content-Type` is not required (so `curl -d '{…}'` works); the
/// size limit is the router's `DefaultBodyLimit` (`413` past it).
pub struct JsonBody<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let bytes = Bytes::from_request(req, state).await.map_err(|rejection| {
            if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::new(ErrorCode::PayloadTooLarge, "the request body is too large")
            } else {
                ApiError::new(ErrorCode::InvalidBody, "the request body could not be read")
            }
        })?;
        decode_json(&bytes).map(JsonBody)
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
