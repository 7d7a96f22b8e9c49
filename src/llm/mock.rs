//! The mock backend (SPEC §10): model `mock`, token *i* is ` tok{i}`, at a fixed rate,
//! exactly `max_tokens` of them, with fault injection for tests.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::{Backend, BackendError, GenerateRequest, Output, TokenStream, Unsupported};
use crate::event::{FinishReason, Usage};

pub const MODEL: &str = "mock";

#[derive(Debug, Clone, Default)]
pub struct MockBackend {
    /// Tokens per second per stream; 0 = as fast as the engine takes them.
    pub rate: f64,
    pub ttft: Duration,
    /// Fail with `backend_error` after this many tokens.
    pub fail_after: Option<u32>,
    /// Stop producing after this many tokens, until cancelled.
    pub stall_after: Option<u32>,
    /// Continue streams a dead process left running (token *i* stays ` tok{i}`).
    pub continuable: bool,
}

impl MockBackend {
    pub fn from_config(config: &crate::config::MockConfig) -> Self {
        MockBackend {
            rate: config.rate.max(0.0),
            ttft: Duration::from_millis(config.ttft_ms),
            fail_after: config.fail_after,
            stall_after: config.stall_after,
            continuable: config.continuable,
        }
    }
}

impl Backend for MockBackend {
    fn models(&self) -> Vec<String> {
        vec![MODEL.to_owned()]
    }

    fn can_continue(&self) -> bool {
        self.continuable
    }

    fn check(&self, request: &GenerateRequest) -> Result<(), Unsupported> {
        Unsupported::text_only(request, "mock")
    }

    fn generate(&self, request: GenerateRequest, _cancel: CancellationToken) -> TokenStream {
        let this = self.clone();
        // A continued stream picks up after the tokens whose ids were stored.
        let done = request
            .continuation
            .as_ref()
            .map_or(0, |c| (c.ids.len() as u32).min(request.max_tokens));
        Box::pin(async_stream::stream! {
            let prompt_tokens = request.prompt.flat_text().split_whitespace().count() as u32;
            yield Ok(Output::Prompt { tokens: prompt_tokens });
            let start = tokio::time::Instant::now() + this.ttft;
            let interval = (this.rate > 0.0).then(|| Duration::from_secs_f64(1.0 / this.rate));
            for i in done + 1..=request.max_tokens {
                if this.fail_after == Some(i - 1) {
                    yield Err(BackendError {
                        code: "backend_error".into(),
                        message: format!("mock failure injected after {} tokens", i - 1),
                    });
                    return;
                }
                if this.stall_after == Some(i - 1) {
                    std::future::pending::<()>().await;
                }
                match interval {
                    // An absolute schedule, so the rate does not drift under load.
                    Some(every) => tokio::time::sleep_until(start + every * (i - 1 - done)).await,
                    None if i == done + 1 && !this.ttft.is_zero() => tokio::time::sleep_until(start).await,
                    None if i % 64 == 0 => tokio::task::yield_now().await,
                    None => {}
                }
                yield Ok(Output::Token { text: format!(" tok{i}"), id: this.continuable.then_some(i) });
            }
            yield Ok(Output::Done {
                reason: FinishReason::Length,
                usage: Some(Usage { prompt_tokens, completion_tokens: request.max_tokens, session_turns: None }),
            });
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::llm::Prompt;
    use futures_util::StreamExt;

    fn request(max_tokens: u32) -> GenerateRequest {
        GenerateRequest {
            model: MODEL.into(),
            prompt: Prompt::Text("two words".into()),
            max_tokens,
            temperature: None,
            top_p: None,
            seed: None,
            stop: vec![],
            metadata: None,
            session_id: None,
            session_turn: None,
            include_usage: false,
            options: Default::default(),
            unattended: false,
            response: None,
            continuation: None,
        }
    }

    #[tokio::test]
    async fn emits_max_tokens_numbered_tokens() {
        let out: Vec<_> = MockBackend::default()
            .generate(request(3), CancellationToken::new())
            .collect()
            .await;
        assert_eq!(out[0], Ok(Output::Prompt { tokens: 2 }));
        assert_eq!(
            out[1],
            Ok(Output::Token {
                text: " tok1".into(),
                id: None
            })
        );
        assert_eq!(
            out[3],
            Ok(Output::Token {
                text: " tok3".into(),
                id: None
            })
        );
        assert!(matches!(
            out[4],
            Ok(Output::Done {
                reason: FinishReason::Length,
                ..
            })
        ));
        assert_eq!(out.len(), 5);
    }

    #[tokio::test]
    async fn fails_after_n() {
        let mock = MockBackend {
            fail_after: Some(1),
            ..Default::default()
        };
        let out: Vec<_> = mock
            .generate(request(3), CancellationToken::new())
            .collect()
            .await;
        assert_eq!(out.len(), 3);
        assert_eq!(
            out[2].as_ref().map_err(|e| e.code.as_str()),
            Err("backend_error")
        );
    }
}
