//! The one error type of the HTTP layer, [`ApiError`], and the one list of error codes,
//! [`ErrorCode`]: each code's HTTP status and OpenAI error type live here and nowhere
//! else. The native body is `{"error":{"code","message",…}}`; the OpenAI-shaped surfaces
//! render the same error with [`ApiError::into_openai`]. Codes are stable; messages are
//! for people. Internal failures are logged in full and reach the client as
//! `internal_error` only.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use serde_json::{Map, Value};

use crate::engine::{FollowError, InvalidCursor, StartError};
use crate::store::StoreError;

/// Every error code the API sends (in an HTTP body, a WebSocket `error` message, or an
/// OpenAI error object).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    // The request itself.
    InvalidRequest,
    InvalidJson,
    InvalidBody,
    InvalidCursor,
    CursorOutOfRange,
    PromptTooLong,
    PayloadTooLarge,
    UnsupportedParameter,
    // What it names.
    NotFound,
    MethodNotAllowed,
    StreamNotFound,
    SessionNotFound,
    ModelNotFound,
    /// `previous_response_id` names no response that can be continued (`400`, as
    /// OpenAI answers it).
    PreviousResponseNotFound,
    // Access and load.
    Unauthorized,
    RateLimited,
    Overloaded,
    TurnInProgress,
    IdempotencyConflict,
    /// A Durable Streams conflict: another configuration, a closed stream, a content
    /// type, a `Stream-Seq` or a producer sequence gap.
    Conflict,
    /// A Durable Streams producer whose epoch is stale.
    StaleProducerEpoch,
    /// A Durable Stream that no longer exists.
    Gone,
    ShuttingDown,
    StoreUnavailable,
    // The WebSocket.
    WebsocketRequired,
    TooManySockets,
    TooManyStreams,
    AlreadySubscribed,
    StreamEnded,
    UnsupportedFrame,
    UnknownType,
    InvalidMessage,
    // Durable Streams subscriptions: the protocol's own codes, as it spells them.
    #[serde(rename = "INVALID_REQUEST")]
    SubscriptionInvalid,
    #[serde(rename = "SUBSCRIPTION_NOT_FOUND")]
    SubscriptionNotFound,
    #[serde(rename = "SUBSCRIPTION_ALREADY_EXISTS")]
    SubscriptionExists,
    #[serde(rename = "WEBHOOK_URL_REJECTED")]
    WebhookUrlRejected,
    #[serde(rename = "TOKEN_INVALID")]
    TokenInvalid,
    #[serde(rename = "FENCED")]
    Fenced,
    #[serde(rename = "ALREADY_CLAIMED")]
    AlreadyClaimed,
    #[serde(rename = "NO_PENDING_WORK")]
    NoPendingWork,
    #[serde(rename = "INVALID_OFFSET")]
    InvalidOffset,
    // The generation (a non-streaming completion whose stream failed).
    GenerationFailed,
    InternalError,
}

impl ErrorCode {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::InvalidRequest => "invalid_request",
            ErrorCode::InvalidJson => "invalid_json",
            ErrorCode::InvalidBody => "invalid_body",
            ErrorCode::InvalidCursor => "invalid_cursor",
            ErrorCode::CursorOutOfRange => "cursor_out_of_range",
            ErrorCode::PromptTooLong => "prompt_too_long",
            ErrorCode::PayloadTooLarge => "payload_too_large",
            ErrorCode::UnsupportedParameter => "unsupported_parameter",
            ErrorCode::NotFound => "not_found",
            ErrorCode::MethodNotAllowed => "method_not_allowed",
            ErrorCode::StreamNotFound => "stream_not_found",
            ErrorCode::SessionNotFound => "session_not_found",
            ErrorCode::ModelNotFound => "model_not_found",
            ErrorCode::PreviousResponseNotFound => "previous_response_not_found",
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::Overloaded => "overloaded",
            ErrorCode::TurnInProgress => "turn_in_progress",
            ErrorCode::IdempotencyConflict => "idempotency_conflict",
            ErrorCode::Conflict => "conflict",
            ErrorCode::StaleProducerEpoch => "stale_producer_epoch",
            ErrorCode::Gone => "gone",
            ErrorCode::ShuttingDown => "shutting_down",
            ErrorCode::StoreUnavailable => "store_unavailable",
            ErrorCode::WebsocketRequired => "websocket_required",
            ErrorCode::TooManySockets => "too_many_sockets",
            ErrorCode::TooManyStreams => "too_many_streams",
            ErrorCode::AlreadySubscribed => "already_subscribed",
            ErrorCode::StreamEnded => "stream_ended",
            ErrorCode::UnsupportedFrame => "unsupported_frame",
            ErrorCode::UnknownType => "unknown_type",
            ErrorCode::InvalidMessage => "invalid_message",
            ErrorCode::SubscriptionInvalid => "INVALID_REQUEST",
            ErrorCode::SubscriptionNotFound => "SUBSCRIPTION_NOT_FOUND",
            ErrorCode::SubscriptionExists => "SUBSCRIPTION_ALREADY_EXISTS",
            ErrorCode::WebhookUrlRejected => "WEBHOOK_URL_REJECTED",
            ErrorCode::TokenInvalid => "TOKEN_INVALID",
            ErrorCode::Fenced => "FENCED",
            ErrorCode::AlreadyClaimed => "ALREADY_CLAIMED",
            ErrorCode::NoPendingWork => "NO_PENDING_WORK",
            ErrorCode::InvalidOffset => "INVALID_OFFSET",
            ErrorCode::GenerationFailed => "generation_failed",
            ErrorCode::InternalError => "internal_error",
        }
    }

    /// The HTTP status an error with this code answers with.
    pub fn status(self) -> StatusCode {
        match self {
            ErrorCode::InvalidRequest
            | ErrorCode::InvalidJson
            | ErrorCode::InvalidBody
            | ErrorCode::InvalidCursor
            | ErrorCode::CursorOutOfRange
            | ErrorCode::PromptTooLong
            | ErrorCode::UnsupportedParameter
            | ErrorCode::PreviousResponseNotFound
            | ErrorCode::TooManyStreams
            | ErrorCode::AlreadySubscribed
            | ErrorCode::StreamEnded
            | ErrorCode::UnsupportedFrame
            | ErrorCode::UnknownType
            | ErrorCode::InvalidMessage
            | ErrorCode::WebsocketRequired
            | ErrorCode::SubscriptionInvalid
            | ErrorCode::WebhookUrlRejected => StatusCode::BAD_REQUEST,
            ErrorCode::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ErrorCode::NotFound
            | ErrorCode::StreamNotFound
            | ErrorCode::SessionNotFound
            | ErrorCode::ModelNotFound
            | ErrorCode::SubscriptionNotFound => StatusCode::NOT_FOUND,
            ErrorCode::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ErrorCode::Unauthorized | ErrorCode::TokenInvalid => StatusCode::UNAUTHORIZED,
            ErrorCode::RateLimited | ErrorCode::Overloaded => StatusCode::TOO_MANY_REQUESTS,
            ErrorCode::TurnInProgress
            | ErrorCode::IdempotencyConflict
            | ErrorCode::Conflict
            | ErrorCode::SubscriptionExists
            | ErrorCode::Fenced
            | ErrorCode::AlreadyClaimed
            | ErrorCode::NoPendingWork
            | ErrorCode::InvalidOffset => StatusCode::CONFLICT,
            ErrorCode::StaleProducerEpoch => StatusCode::FORBIDDEN,
            ErrorCode::Gone => StatusCode::GONE,
            ErrorCode::ShuttingDown | ErrorCode::TooManySockets | ErrorCode::StoreUnavailable => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            ErrorCode::GenerationFailed | ErrorCode::InternalError => {
                StatusCode::INTERNAL_SERVER_ERROR
            }
        }
    }
}

/// So that a test can say `assert_eq!(e.code, "invalid_json")`.
impl PartialEq<&str> for ErrorCode {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

/// OpenAI's error `type` for an HTTP status.
fn openai_type(status: StatusCode) -> &'static str {
    match status.as_u16() {
        401 => "authentication_error",
        429 => "rate_limit_error",
        400..=499 => "invalid_request_error",
        _ => "server_error",
    }
}

#[derive(Debug)]
pub struct ApiError {
    /// Usually `code.status()`; a few errors answer with a status of their own (a
    /// WebSocket upgrade refused by axum, a generation failed upstream).
    pub status: StatusCode,
    pub code: ErrorCode,
    pub message: String,
    /// Extra members of the `error` object (e.g. the list of models).
    pub extra: Option<Box<Map<String, Value>>>,
    pub retry_after: Option<u32>,
}

/// The body of every native error response.
#[derive(Serialize)]
struct ErrorBody<'a> {
    error: ErrorObject<'a>,
}

#[derive(Serialize)]
struct ErrorObject<'a> {
    code: ErrorCode,
    message: &'a str,
    #[serde(flatten)]
    extra: Option<&'a Map<String, Value>>,
}

impl ApiError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        ApiError {
            status: code.status(),
            code,
            message: message.into(),
            extra: None,
            retry_after: None,
        }
    }

    /// `400 invalid_request`: a field is missing, of the wrong type or out of range.
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::InvalidRequest, message)
    }

    pub fn stream_not_found() -> Self {
        Self::new(ErrorCode::StreamNotFound, "no such stream")
    }

    pub fn session_not_found() -> Self {
        Self::new(ErrorCode::SessionNotFound, "no such session")
    }

    /// `404 model_not_found`, always with the list of models there are.
    pub fn model_not_found(model: &str, available: Vec<String>) -> Self {
        ApiError::new(
            ErrorCode::ModelNotFound,
            format!(
                "unknown model {model:?}; available: {}",
                available.join(", ")
            ),
        )
        .with("models", Value::from(available))
    }

    /// `503 store_unavailable`: commits are failing; retry shortly.
    pub fn store_unavailable() -> Self {
        ApiError::new(
            ErrorCode::StoreUnavailable,
            "the store does not accept writes right now; retry shortly",
        )
        .retry_after(STORE_RETRY_AFTER)
    }

    pub fn internal(context: &str, error: &dyn std::fmt::Display) -> Self {
        tracing::error!(%error, "{context}");
        Self::new(ErrorCode::InternalError, "internal error")
    }

    pub fn with(mut self, key: &str, value: Value) -> Self {
        self.extra
            .get_or_insert_with(Default::default)
            .insert(key.to_owned(), value);
        self
    }

    pub fn with_status(mut self, status: StatusCode) -> Self {
        self.status = status;
        self
    }

    pub fn retry_after(mut self, seconds: u32) -> Self {
        self.retry_after = Some(seconds);
        self
    }

    /// The same error in OpenAI's shape: `{"error":{"message","type","param","code"}}`.
    pub fn into_openai(mut self) -> Response {
        let extra = self.extra.get_or_insert_with(Default::default);
        extra.insert("type".into(), Value::from(openai_type(self.status)));
        extra.entry("param").or_insert(Value::Null);
        self.into_response()
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            error: ErrorObject {
                code: self.code,
                message: &self.message,
                extra: self.extra.as_deref(),
            },
        };
        let mut response = (self.status, axum::Json(body)).into_response();
        if let Some(secs) = self.retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        response
    }
}

/// Seconds a client is asked to wait before retrying while the store fails.
const STORE_RETRY_AFTER: u32 = 5;

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Unavailable | StoreError::Fenced => ApiError::store_unavailable(),
            e => ApiError::internal("store error", &e),
        }
    }
}

impl From<StartError> for ApiError {
    fn from(e: StartError) -> Self {
        match e {
            StartError::UnknownModel { model, available } => {
                ApiError::model_not_found(&model, available)
            }
            StartError::Unsupported(e) => match e.param {
                Some(param) => ApiError::new(ErrorCode::UnsupportedParameter, e.message)
                    .with("param", Value::from(param)),
                None => ApiError::invalid(e.message),
            },
            StartError::SessionNotFound => ApiError::session_not_found(),
            StartError::InvalidTurn(message) => ApiError::invalid(message),
            StartError::TurnInProgress => ApiError::new(
                ErrorCode::TurnInProgress,
                "the previous turn of this session is still running; wait for its end or cancel it",
            ),
            StartError::IdempotencyConflict(message) => {
                ApiError::new(ErrorCode::IdempotencyConflict, message)
            }
            StartError::Busy => ApiError::new(
                ErrorCode::Overloaded,
                "too many generations are running or queued; retry shortly",
            )
            .retry_after(1),
            StartError::KeyBusy { limit } => ApiError::new(
                ErrorCode::Overloaded,
                format!(
                    "this key has its limit of {limit} generations running or queued; retry when one ends"
                ),
            )
            .retry_after(1),
            StartError::RateLimited { per_minute, wait } => ApiError::new(
                ErrorCode::RateLimited,
                format!(
                    "this key is over its limit of {per_minute} requests per minute; retry in {wait} s"
                ),
            )
            .retry_after(u32::try_from(wait).unwrap_or(u32::MAX)),
            StartError::ShuttingDown => {
                ApiError::new(ErrorCode::ShuttingDown, "the server is shutting down")
                    .retry_after(1)
            }
            StartError::StoreUnavailable => ApiError::store_unavailable(),
            StartError::Random => ApiError::internal("stream id", &e),
            StartError::Store(e) => e.into(),
        }
    }
}

impl From<InvalidCursor> for ApiError {
    fn from(e: InvalidCursor) -> Self {
        ApiError::new(ErrorCode::InvalidCursor, e.to_string())
    }
}

impl From<FollowError> for ApiError {
    fn from(e: FollowError) -> Self {
        match e {
            FollowError::NotFound => ApiError::stream_not_found(),
            FollowError::BeyondEnd { after, last } => ApiError::new(
                ErrorCode::CursorOutOfRange,
                format!("the resume point {after} is beyond the stream's last event ({last})"),
            ),
            FollowError::Store(e) => e.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_serialize_as_their_names() {
        for code in [
            ErrorCode::InvalidRequest,
            ErrorCode::CursorOutOfRange,
            ErrorCode::ModelNotFound,
            ErrorCode::TurnInProgress,
            ErrorCode::InternalError,
            ErrorCode::SubscriptionInvalid,
            ErrorCode::WebhookUrlRejected,
            ErrorCode::Fenced,
            ErrorCode::AlreadyClaimed,
        ] {
            assert_eq!(
                serde_json::to_value(code).unwrap(),
                Value::from(code.as_str())
            );
        }
    }

    #[test]
    fn a_failing_store_answers_503_store_unavailable_with_retry_after() {
        for e in [
            ApiError::from(StoreError::Unavailable),
            ApiError::from(StoreError::Fenced),
            ApiError::from(StartError::StoreUnavailable),
        ] {
            assert_eq!(e.status, StatusCode::SERVICE_UNAVAILABLE);
            assert_eq!(e.code, "store_unavailable");
            assert!(e.retry_after.is_some());
        }
    }

    #[test]
    fn model_not_found_always_lists_the_models() {
        let e = ApiError::model_not_found("x", vec!["a".into(), "b".into()]);
        assert_eq!(e.status, StatusCode::NOT_FOUND);
        assert_eq!(e.extra.unwrap()["models"], serde_json::json!(["a", "b"]));
    }
}
