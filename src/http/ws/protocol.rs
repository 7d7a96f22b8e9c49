//! The WebSocket messages of SPEC §4: parsing what a client sends, and shaping what
//! the server sends. Pure functions, unit-tested.

use serde_json::{Map, Value, json};

use crate::event::{Event, EventKind};
use crate::http::error::ApiError;
use crate::http::params::StreamParams;

/// A client message, parsed as far as its `type` and the members every handler needs;
/// `body` keeps the whole object for the handlers that take request parameters.
#[derive(Debug, PartialEq)]
pub enum Incoming {
    Generate {
        reference: Option<String>,
        cancel_on_disconnect: bool,
        body: Map<String, Value>,
    },
    Subscribe {
        stream_id: String,
        after: u64,
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
        body: Map<String, Value>,
    },
    Ping,
}

/// Why a text frame is not a message we take; answered with an `error` message.
#[derive(Debug, PartialEq)]
pub struct Rejected {
    pub code: &'static str,
    pub message: String,
    /// The `ref` of the message, if it had one.
    pub reference: Option<String>,
}

fn rejected(code: &'static str, message: impl Into<String>, reference: Option<String>) -> Rejected {
    Rejected {
        code,
        message: message.into(),
        reference,
    }
}

/// Parses one text frame.
pub fn parse(text: &str) -> Result<Incoming, Rejected> {
    let value: Value = serde_json::from_str(text)
        .map_err(|e| rejected("invalid_json", format!("malformed JSON: {e}"), None))?;
    let Value::Object(mut body) = value else {
        return Err(rejected(
            "invalid_message",
            "a message is a JSON object",
            None,
        ));
    };
    let reference = match body.remove("ref") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s),
        Some(_) => return Err(rejected("invalid_message", "`ref` must be a string", None)),
    };
    let kind = match body.remove("type") {
        Some(Value::String(t)) => t,
        Some(_) => {
            return Err(rejected(
                "invalid_message",
                "`type` must be a string",
                reference,
            ));
        }
        None => {
            return Err(rejected(
                "invalid_message",
                "the message has no `type`",
                reference,
            ));
        }
    };
    let stream_id =
        |body: &Map<String, Value>, reference: &Option<String>| match body.get("stream_id") {
            Some(Value::String(s)) => Ok(s.clone()),
            _ => Err(rejected(
                "invalid_message",
                format!("`{kind}` needs `stream_id` (a string)"),
                reference.clone(),
            )),
        };
    match kind.as_str() {
        "generate" => {
            let cancel_on_disconnect = match body.remove("cancel_on_disconnect") {
                None | Some(Value::Null) => false,
                Some(Value::Bool(b)) => b,
                Some(_) => {
                    return Err(rejected(
                        "invalid_message",
                        "`cancel_on_disconnect` must be true or false",
                        reference,
                    ));
                }
            };
            Ok(Incoming::Generate {
                reference,
                cancel_on_disconnect,
                body,
            })
        }
        "subscribe" => {
            let stream_id = stream_id(&body, &reference)?;
            let after = match body.get("after") {
                None | Some(Value::Null) => 0,
                Some(v) => v.as_u64().ok_or_else(|| {
                    rejected(
                        "invalid_cursor",
                        "`after` must be a non-negative integer",
                        reference.clone(),
                    )
                })?,
            };
            Ok(Incoming::Subscribe { stream_id, after })
        }
        "cancel" => Ok(Incoming::Cancel {
            stream_id: stream_id(&body, &reference)?,
        }),
        "unsubscribe" => Ok(Incoming::Unsubscribe {
            stream_id: stream_id(&body, &reference)?,
        }),
        "session.say" => {
            let session_id = match body.remove("session_id") {
                None | Some(Value::Null) => None,
                Some(Value::String(s)) => Some(s),
                Some(_) => {
                    return Err(rejected(
                        "invalid_message",
                        "`session_id` must be a string",
                        reference,
                    ));
                }
            };
            Ok(Incoming::SessionSay {
                reference,
                session_id,
                body,
            })
        }
        "ping" => Ok(Incoming::Ping),
        other => Err(rejected(
            "unknown_type",
            format!(
                "unknown message type {other:?}; expected generate, subscribe, cancel, unsubscribe, session.say or ping"
            ),
            reference,
        )),
    }
}

/// A `generate` or `session.say` message's parameters, as `POST /v1/streams` takes them.
pub fn stream_params(body: Map<String, Value>) -> Result<StreamParams, ApiError> {
    serde_json::from_value(Value::Object(body)).map_err(|e| ApiError::invalid(e.to_string()))
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
    let id = Value::from(stream_id).to_string();
    Some(format!(
        r#"{{"type":"{kind}","stream_id":{id},"seq":{}{sep}{rest}"#,
        event.seq
    ))
}

/// An `error` message.
pub fn error(
    code: &str,
    message: &str,
    reference: Option<&str>,
    stream_id: Option<&str>,
) -> String {
    let mut m = json!({"type": "error", "code": code, "message": message});
    if let Some(r) = reference {
        m["ref"] = Value::from(r);
    }
    if let Some(s) = stream_id {
        m["stream_id"] = Value::from(s);
    }
    m.to_string()
}

pub fn started(reference: Option<&str>, stream_id: &str, session_id: Option<&str>) -> String {
    let mut m = json!({"type": "started", "stream_id": stream_id});
    if let Some(r) = reference {
        m["ref"] = Value::from(r);
    }
    if let Some(s) = session_id {
        m["session_id"] = Value::from(s);
    }
    m.to_string()
}

pub fn session(reference: Option<&str>, session_id: &str) -> String {
    let mut m = json!({"type": "session", "session_id": session_id});
    if let Some(r) = reference {
        m["ref"] = Value::from(r);
    }
    m.to_string()
}

pub const PONG: &str = r#"{"type":"pong"}"#;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{FinishReason, Usage};

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
                after: 3
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
            self, Field, SETUP, a_list, a_string, an_integer, an_object, check, json, one_of,
            run_shaped, shaped,
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
            let (config, models) = &*SETUP;
            Ok(match parse(text)? {
                Incoming::Generate { body, .. } => {
                    Some(stream_params(body).and_then(|p| p.validate(config, models)))
                }
                Incoming::SessionSay { body, .. } => {
                    Some(stream_params(body).and_then(|p| p.validate_turn(config, models, None)))
                }
                _ => None,
            })
        }

        fn check_message(text: &str) -> Result<(), TestCaseError> {
            match handle(text) {
                Ok(Some(result)) => check(result)?,
                Ok(None) => {}
                Err(rejected) => {
                    prop_assert!(CODES.contains(&rejected.code), "{:?}", rejected);
                    prop_assert!(!rejected.message.is_empty());
                    // The error message the socket sends back is one JSON object.
                    let sent = error(
                        rejected.code,
                        &rejected.message,
                        rejected.reference.as_deref(),
                        None,
                    );
                    let v: Value = serde_json::from_str(&sent)
                        .map_err(|e| TestCaseError::fail(format!("{sent}: {e}")))?;
                    prop_assert_eq!(&v["code"], rejected.code);
                    prop_assert_eq!(v["ref"].as_str(), rejected.reference.as_deref());
                }
            }
            Ok(())
        }

        /// A client message, give or take.
        fn message_fields() -> (Vec<Field>, Vec<Field>) {
            let required = vec![(
                "type",
                one_of(&[
                    "generate",
                    "subscribe",
                    "cancel",
                    "unsubscribe",
                    "session.say",
                    "ping",
                ]),
            )];
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
            fn any_json_frame_is_taken_or_answered_with_a_named_error(v in json(FIELDS)) {
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
                    Ok(Incoming::Subscribe { stream_id, after: after.unwrap_or(0) })
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
                    e.map(|e| (e.code, e.reference)),
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
