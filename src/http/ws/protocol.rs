//! The WebSocket messages of SPEC §4: parsing what a client sends, and shaping what
//! the server sends. Pure functions, unit-tested.

use serde_json::{Map, Value, json};

use crate::event::{Event, EventKind};

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
}
