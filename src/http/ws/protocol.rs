//! The WebSocket messages of SPEC §4: parsing what a client sends (a serde-tagged enum,
//! with the error codes of SPEC §4 for what does not parse), and the one renderer of
//! what the server sends — stored events as `token`/`done`/`error` messages, and the
//! server's own messages as typed structs. Pure functions, unit-tested.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::event::{Event, EventKind};
use crate::http::error::{ApiError, ErrorCode};
use crate::http::params::StreamParams;

/// A client message. `body` keeps the parameters of the messages that start a stream,
/// for the same validation as `POST /v1/streams`.
#[derive(Debug, PartialEq)]
pub enum Incoming {
    Generate {
        reference: Option<String>,
        cancel_on_disconnect: bool,
        /// As an HTTP request's `Idempotency-Key`.
        idempotency_key: Option<String>,
        body: Map<String, Value>,
    },
    Subscribe {
        stream_id: String,
        /// `None`: from the start.
        after: Option<u64>,
    },
    Cancel {
        stream_id: String,
    },
    Unsubscribe {
        stream_id: String,
    },
    SessionSay {
        reference: Option<String>,
        session_id: Option<String>,
        idempotency_key: Option<String>,
        body: Map<String, Value>,
    },
    Ping,
}

/// The messages as they are on the wire, dispatched on `type` by serde.
#[derive(Deserialize)]
#[serde(tag = "type")]
enum Wire {
    #[serde(rename = "generate")]
    Generate {
        #[serde(rename = "ref", default)]
        reference: Option<String>,
        #[serde(default)]
        cancel_on_disconnect: Option<bool>,
        #[serde(default)]
        idempotency_key: Option<String>,
        #[serde(flatten)]
        body: Map<String, Value>,
    },
    #[serde(rename = "subscribe")]
    Subscribe {
        stream_id: String,
        /// Checked by the cursor rule (`invalid_cursor`), not by serde.
        #[serde(default)]
        after: Option<Value>,
    },
    #[serde(rename = "cancel")]
    Cancel { stream_id: String },
    #[serde(rename = "unsubscribe")]
    Unsubscribe { stream_id: String },
    #[serde(rename = "session.say")]
    SessionSay {
        #[serde(rename = "ref", default)]
        reference: Option<String>,
        #[serde(default)]
        session_id: Option<String>,
        #[serde(default)]
        idempotency_key: Option<String>,
        #[serde(flatten)]
        body: Map<String, Value>,
    },
    #[serde(rename = "ping")]
    Ping,
}

/// Every `type` a client may send.
pub(crate) const TYPES: [&str; 6] = [
    "generate",
    "subscribe",
    "cancel",
    "unsubscribe",
    "session.say",
    "ping",
];

/// Why a text frame is not a message we take; answered with an `error` message.
#[derive(Debug, PartialEq)]
pub struct Rejected {
    pub code: ErrorCode,
    pub message: String,
    /// The `ref` of the message, if it had one.
    pub reference: Option<String>,
}

fn rejected(code: ErrorCode, message: impl Into<String>, reference: Option<String>) -> Rejected {
    Rejected {
        code,
        message: message.into(),
        reference,
    }
}

/// Parses one text frame.
pub fn parse(text: &str) -> Result<Incoming, Rejected> {
    let value: Value = serde_json::from_str(text)
        .map_err(|e| rejected(ErrorCode::InvalidJson, format!("malformed JSON: {e}"), None))?;
    let Value::Object(body) = value else {
        return Err(rejected(
            ErrorCode::InvalidMessage,
            "a message is a JSON object",
            None,
        ));
    };
    // The `ref` first: every later refusal carries it back.
    let reference = match body.get("ref") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(_) => {
            return Err(rejected(
                ErrorCode::InvalidMessage,
                "`ref` must be a string",
                None,
            ));
        }
    };
    let kind = match body.get("type") {
        Some(Value::String(t)) => t.clone(),
        Some(_) => {
            return Err(rejected(
                ErrorCode::InvalidMessage,
                "`type` must be a string",
                reference,
            ));
        }
        None => {
            return Err(rejected(
                ErrorCode::InvalidMessage,
                "the message has no `type`",
                reference,
            ));
        }
    };
    if !TYPES.contains(&kind.as_str()) {
        return Err(rejected(
            ErrorCode::UnknownType,
            format!(
                "unknown message type {kind:?}; expected generate, subscribe, cancel, unsubscribe, session.say or ping"
            ),
            reference,
        ));
    }
    let wire = Wire::deserialize(Value::Object(body)).map_err(|e| {
        rejected(
            ErrorCode::InvalidMessage,
            format!("`{kind}`: {e}"),
            reference.clone(),
        )
    })?;
    Ok(match wire {
        Wire::Generate {
            reference,
            cancel_on_disconnect,
            idempotency_key,
            body,
        } => Incoming::Generate {
            reference,
            cancel_on_disconnect: cancel_on_disconnect.unwrap_or(false),
            idempotency_key,
            body,
        },
        Wire::Subscribe { stream_id, after } => {
            let after = match after {
                None | Some(Value::Null) => None,
                Some(v) => Some(v.as_u64().ok_or_else(|| {
                    rejected(
                        ErrorCode::InvalidCursor,
                        "`after` must be a non-negative integer",
                        reference,
                    )
                })?),
            };
            Incoming::Subscribe { stream_id, after }
        }
        Wire::Cancel { stream_id } => Incoming::Cancel { stream_id },
        Wire::Unsubscribe { stream_id } => Incoming::Unsubscribe { stream_id },
        Wire::SessionSay {
            reference,
            session_id,
            idempotency_key,
            body,
        } => Incoming::SessionSay {
            reference,
            session_id,
            idempotency_key,
            body,
        },
        Wire::Ping => Incoming::Ping,
    })
}

/// A `generate` or `session.say` message's parameters, as `POST /v1/streams` takes them.
pub fn stream_params(body: Map<String, Value>) -> Result<StreamParams, ApiError> {
    serde_json::from_value(Value::Object(body)).map_err(|e| ApiError::invalid(e.to_string()))
}

/// [`stream_params`], with the message's idempotency key (checked as the header is).
pub fn keyed_params(
    body: Map<String, Value>,
    idempotency_key: Option<String>,
) -> Result<StreamParams, ApiError> {
    let mut params = stream_params(body)?;
    params.idempotency_key =
        crate::http::params::idempotency_key(idempotency_key.as_deref().map(str::as_bytes))?;
    Ok(params)
}

/// The message for a stored event: `token`, `done` or `error` with the event's seq
/// (the same number as its SSE `id:`) and the members of its data. `None` for `start`.
pub fn event_message(stream_id: &str, event: &Event) -> Option<String> {
    let kind = match event.kind {
        EventKind::Start => return None,
        EventKind::Token => "token",
        EventKind::Done => "done",
        EventKind::Error => "error",
    };
    // The stored data is one JSON object; its members follow ours.
    let rest = event.data.trim().strip_prefix('{')?;
    let sep = if rest.trim_start().starts_with('}') {
        ""
    } else {
        ","
    };
    let id = serde_json::to_string(stream_id).ok()?;
    Some(format!(
        r#"{{"type":"{kind}","stream_id":{id},"seq":{}{sep}{rest}"#,
        event.seq
    ))
}

/// The server's own messages (not events), member for member.
#[derive(Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum Outgoing<'a> {
    Error {
        code: &'a str,
        message: &'a str,
        #[serde(rename = "ref", skip_serializing_if = "Option::is_none")]
        reference: Option<&'a str>,
        #[serde(skip_serializing_if = "Option::is_none")]
        stream_id: Option<&'a str>,
        /// What the HTTP error object would carry besides (e.g. the list of models).
        #[serde(flatten, skip_serializing_if = "Option::is_none")]
        extra: Option<&'a Map<String, Value>>,
    },
    Started {
        stream_id: &'a str,
        #[serde(rename = "ref", skip_serializing_if = "Option::is_none")]
        reference: Option<&'a str>,
        #[serde(skip_serializing_if = "Option::is_none")]
        session_id: Option<&'a str>,
    },
    Session {
        session_id: &'a str,
        #[serde(rename = "ref", skip_serializing_if = "Option::is_none")]
        reference: Option<&'a str>,
    },
}

fn to_text(message: &Outgoing<'_>) -> String {
    // Serializing strings cannot fail.
    serde_json::to_string(message).unwrap_or_default()
}

/// An `error` message.
pub fn error(
    code: &str,
    message: &str,
    reference: Option<&str>,
    stream_id: Option<&str>,
) -> String {
    to_text(&Outgoing::Error {
        code,
        message,
        reference,
        stream_id,
        extra: None,
    })
}

/// The `error` message of an API error: its code, message and extra members.
pub fn api_error(e: &ApiError, reference: Option<&str>, stream_id: Option<&str>) -> String {
    to_text(&Outgoing::Error {
        code: e.code.as_str(),
        message: &e.message,
        reference,
        stream_id,
        extra: e.extra.as_deref(),
    })
}

pub fn started(reference: Option<&str>, stream_id: &str, session_id: Option<&str>) -> String {
    to_text(&Outgoing::Started {
        stream_id,
        reference,
        session_id,
    })
}

pub fn session(reference: Option<&str>, session_id: &str) -> String {
    to_text(&Outgoing::Session {
        session_id,
        reference,
    })
}

pub const PONG: &str = r#"{"type":"pong"}"#;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{FinishReason, Usage};
    use serde_json::json;

    #[test]
    fn events_become_messages_with_the_sse_seq() {
        let token = event_message("st_a", &Event::token(7, " hi \"x\"")).unwrap();
        let v: Value = serde_json::from_str(&token).unwrap();
        assert_eq!(
            v,
            json!({"type":"token","stream_id":"st_a","seq":7,"text":" hi \"x\""})
        );
        let done = Event::done(
            9,
            FinishReason::Length,
            Usage {
                prompt_tokens: 2,
                completion_tokens: 7,
                session_turns: None,
            },
        );
        let v: Value = serde_json::from_str(&event_message("st_a", &done).unwrap()).unwrap();
        assert_eq!(v["type"], "done");
        assert_eq!(v["seq"], 9);
        assert_eq!(v["finish_reason"], "length");
        assert_eq!(v["usage"]["completion_tokens"], 7);
        let err = Event::error(3, "interrupted", "gone");
        let v: Value = serde_json::from_str(&event_message("st_a", &err).unwrap()).unwrap();
        assert_eq!(
            v,
            json!({"type":"error","stream_id":"st_a","seq":3,"code":"interrupted","message":"gone"})
        );
        assert!(event_message("st_a", &Event::start(1, "st_a", "mock", "t")).is_none());
        let empty = Event {
            seq: 4,
            kind: EventKind::Token,
            data: "{}".into(),
        };
        let v: Value = serde_json::from_str(&event_message("st_a", &empty).unwrap()).unwrap();
        assert_eq!(v, json!({"type":"token","stream_id":"st_a","seq":4}));
    }

    #[test]
    fn parses_every_client_message() {
        assert_eq!(parse(r#"{"type":"ping"}"#), Ok(Incoming::Ping));
        assert_eq!(
            parse(r#"{"type":"subscribe","stream_id":"st_x","after":3}"#),
            Ok(Incoming::Subscribe {
                stream_id: "st_x".into(),
                after: Some(3)
            })
        );
        assert_eq!(
            parse(r#"{"type":"cancel","stream_id":"st_x"}"#),
            Ok(Incoming::Cancel {
                stream_id: "st_x".into()
            })
        );
        assert_eq!(
            parse(r#"{"type":"unsubscribe","stream_id":"st_x"}"#),
            Ok(Incoming::Unsubscribe {
                stream_id: "st_x".into()
            })
        );
        match parse(r#"{"type":"generate","ref":"c1","prompt":"hi","cancel_on_disconnect":true}"#) {
            Ok(Incoming::Generate {
                reference,
                cancel_on_disconnect,
                body,
                ..
            }) => {
                assert_eq!(reference.as_deref(), Some("c1"));
                assert!(cancel_on_disconnect);
                assert_eq!(body["prompt"], "hi");
                assert!(!body.contains_key("type"));
            }
            other => panic!("{other:?}"),
        }
        match parse(r#"{"type":"session.say","content":"hi"}"#) {
            Ok(Incoming::SessionSay {
                session_id: None,
                body,
                ..
            }) => assert_eq!(body["content"], "hi"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn bad_messages_are_named() {
        assert_eq!(parse("{nope").unwrap_err().code, "invalid_json");
        assert_eq!(parse("[1]").unwrap_err().code, "invalid_message");
        assert_eq!(
            parse(r#"{"ref":"r"}"#).unwrap_err().reference.as_deref(),
            Some("r")
        );
        let unknown = parse(r#"{"type":"dance","ref":"r2"}"#).unwrap_err();
        assert_eq!(unknown.code, "unknown_type");
        assert!(unknown.message.contains("dance"));
        assert_eq!(unknown.reference.as_deref(), Some("r2"));
        assert_eq!(
            parse(r#"{"type":"cancel"}"#).unwrap_err().code,
            "invalid_message"
        );
        assert_eq!(
            parse(r#"{"type":"subscribe","stream_id":"s","after":-1}"#)
                .unwrap_err()
                .code,
            "invalid_cursor"
        );
    }

    mod properties {
        use super::*;
        use crate::http::strategies::{
            self, Field, SETUP, a_list, a_string, an_integer, an_object, check, one_of, run_shaped,
            shaped,
        };
        use crate::llm::GenerateRequest;
        use proptest::prelude::*;

        const FIELDS: &[&str] = &[
            "type",
            "ref",
            "stream_id",
            "after",
            "cancel_on_disconnect",
            "session_id",
            "prompt",
            "content",
            "messages",
            "max_tokens",
        ];

        const CODES: &[&str] = &[
            "invalid_json",
            "invalid_message",
            "invalid_cursor",
            "unknown_type",
        ];

        /// What the socket does with a text frame before it touches the engine: parse
        /// it, and for the messages that start a stream, validate their parameters as
        /// `POST /v1/streams` would. `None` for the messages that need no parameters.
        fn handle(text: &str) -> Result<Option<Result<GenerateRequest, ApiError>>, Rejected> {
            let (limits, models) = &*SETUP;
            Ok(match parse(text)? {
                Incoming::Generate { body, .. } => {
                    Some(stream_params(body).and_then(|p| p.validate(limits, models)))
                }
                Incoming::SessionSay { body, .. } => {
                    Some(stream_params(body).and_then(|p| p.validate_turn(limits, models, None)))
                }
                _ => None,
            })
        }

        fn check_message(text: &str) -> Result<(), TestCaseError> {
            match handle(text) {
                Ok(Some(result)) => check(result)?,
                Ok(None) => {}
                Err(rejected) => {
                    prop_assert!(CODES.contains(&rejected.code.as_str()), "{:?}", rejected);
                    prop_assert!(!rejected.message.is_empty());
                    // The error message the socket sends back is one JSON object.
                    let sent = error(
                        rejected.code.as_str(),
                        &rejected.message,
                        rejected.reference.as_deref(),
                        None,
                    );
                    let v: Value = serde_json::from_str(&sent)
                        .map_err(|e| TestCaseError::fail(format!("{sent}: {e}")))?;
                    prop_assert_eq!(&v["code"], rejected.code.as_str());
                    prop_assert_eq!(v["ref"].as_str(), rejected.reference.as_deref());
                }
            }
            Ok(())
        }

        /// A client message, give or take.
        fn message_fields() -> (Vec<Field>, Vec<Field>) {
            let required = vec![("type", one_of(&TYPES))];
            let message = an_object(
                vec![
                    ("role", one_of(&["user", "system"])),
                    ("content", a_string()),
                ],
                vec![],
            );
            let optional = vec![
                ("ref", a_string()),
                ("stream_id", one_of(&["st_0123456789abcdef", ""])),
                ("after", an_integer(&[0, 3, i64::MAX])),
                (
                    "cancel_on_disconnect",
                    any::<bool>().prop_map(Value::from).boxed(),
                ),
                ("session_id", one_of(&["se_0123456789abcdef"])),
                ("prompt", a_string()),
                ("content", a_string()),
                ("messages", a_list(message, 0..3)),
                ("max_tokens", an_integer(&[0, 256])),
            ];
            (required, optional)
        }

        #[test]
        fn any_shaped_message_is_taken_or_answered_with_a_named_error() {
            run_shaped(message_fields(), 1024, 10, |bytes| {
                let text = String::from_utf8_lossy(bytes);
                match handle(&text) {
                    Ok(Some(result)) => vec![result],
                    _ => vec![],
                }
            });
        }

        proptest! {
            #![proptest_config(strategies::config(384))]

            #[test]
            fn any_text_frame_is_taken_or_answered_with_a_named_error(text in any::<String>()) {
                check_message(&text)?;
            }

            #[test]
            fn any_json_frame_is_taken_or_answered_with_a_named_error(v in strategies::json(FIELDS)) {
                check_message(&v.to_string())?;
            }

            #[test]
            fn any_shaped_frame_is_taken_or_answered_with_a_named_error(
                o in shaped(message_fields().0, message_fields().1),
            ) {
                check_message(&Value::Object(o).to_string())?;
            }

            #[test]
            fn subscribe_arrives_as_sent(
                stream_id in any::<String>(),
                after in prop::option::of(any::<u64>()),
                reference in prop::option::of(any::<String>()),
            ) {
                let mut m = json!({"type": "subscribe", "stream_id": stream_id});
                if let Some(after) = after {
                    m["after"] = Value::from(after);
                }
                if let Some(r) = &reference {
                    m["ref"] = Value::from(r.as_str());
                }
                prop_assert_eq!(
                    parse(&m.to_string()),
                    Ok(Incoming::Subscribe { stream_id, after })
                );
            }

            #[test]
            fn an_after_that_is_not_a_non_negative_integer_is_an_invalid_cursor(
                after in prop_oneof![
                    (i64::MIN..0).prop_map(Value::from),
                    any::<f64>().prop_filter("integral", |f| f.fract() != 0.0 && f.is_finite()).prop_map(Value::from),
                    any::<u64>().prop_map(|n| Value::from(n.to_string())),
                    Just(Value::from(true)),
                    Just(json!([1])),
                ],
            ) {
                let m = json!({"type": "subscribe", "stream_id": "st_x", "after": after, "ref": "r"});
                let e = parse(&m.to_string()).err();
                prop_assert_eq!(
                    e.map(|e| (e.code.as_str(), e.reference)),
                    Some(("invalid_cursor", Some("r".to_owned()))),
                    "{}", m
                );
            }

            #[test]
            fn server_messages_are_json_whatever_the_text(
                code in any::<String>(),
                message in any::<String>(),
                reference in prop::option::of(any::<String>()),
                stream_id in any::<String>(),
                session_id in prop::option::of(any::<String>()),
            ) {
                let e: Value = serde_json::from_str(&error(&code, &message, reference.as_deref(), Some(&stream_id))).unwrap();
                prop_assert_eq!(
                    (e["code"].as_str(), e["message"].as_str(), e["ref"].as_str(), e["stream_id"].as_str()),
                    (Some(code.as_str()), Some(message.as_str()), reference.as_deref(), Some(stream_id.as_str()))
                );
                let s: Value = serde_json::from_str(&started(reference.as_deref(), &stream_id, session_id.as_deref())).unwrap();
                prop_assert_eq!(s["stream_id"].as_str(), Some(stream_id.as_str()));
                prop_assert_eq!(s["session_id"].as_str(), session_id.as_deref());
                let t: Value = serde_json::from_str(&event_message(&stream_id, &Event::token(1, &message)).unwrap()).unwrap();
                prop_assert_eq!(t["text"].as_str(), Some(message.as_str()));
                prop_assert_eq!(t["stream_id"].as_str(), Some(stream_id.as_str()));
            }
        }
    }
}
