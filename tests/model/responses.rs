//! The OpenAI Responses API on the real model: a text response is the native stream's
//! answer (greedy, the same text), and tools are refused naming them.

use serde_json::{Value, json};

use crate::server::{base, client, run};

#[tokio::test]
async fn a_response_is_the_models_answer_and_tools_are_refused() {
    let question = "What is the capital of France? Answer in one sentence.";
    let response: Value = client()
        .post(format!("{}/v1/responses", base()))
        .json(
            &json!({"model": "smollm2-135m", "input": question, "max_output_tokens": 40,
                      "temperature": 0}),
        )
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let native = run(json!({"messages": [{"role": "user", "content": question}],
                            "max_tokens": 40, "temperature": 0}))
    .await;
    assert_eq!(response["status"], "completed", "{response}");
    assert_eq!(
        response["output_text"],
        native.text().as_str(),
        "{response}"
    );
    assert!(native.text().contains("Paris"), "{:?}", native.text());
    assert_eq!(response["output"][0]["type"], "message");
    assert!(response["usage"]["input_tokens"].as_u64().unwrap() > 0);

    let r = client()
        .post(format!("{}/v1/responses", base()))
        .json(&json!({"model": "smollm2-135m", "input": "hi",
                      "tools": [{"type": "function", "name": "f", "parameters": {"type": "object"}}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let e: Value = r.json().await.unwrap();
    assert_eq!(e["error"]["code"], "unsupported_parameter", "{e}");
    assert_eq!(e["error"]["param"], "tools", "{e}");
    assert_eq!(e["error"]["type"], "invalid_request_error", "{e}");
}
