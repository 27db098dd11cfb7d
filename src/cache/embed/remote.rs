//! Embeddings from an OpenAI-compatible `/embeddings` API behind one of the gateway's own
//! providers. The call runs on a blocking thread; the tokens it used are priced like any call.

use crate::providers::Provider;
use serde::Deserialize;
use std::sync::Arc;
use std::time::Duration;

/// A slow embedder delays semantic requests by at most this; then they go on exact-only.
const TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Deserialize)]
struct Answer {
    data: Vec<Item>,
    #[serde(default)]
    usage: Option<Used>,
}

#[derive(Deserialize)]
struct Item {
    embedding: Vec<f32>,
}

#[derive(Deserialize)]
struct Used {
    #[serde(default)]
    prompt_tokens: u64,
}

/// Embeds `text` with `model` at `provider`; returns the unit vector and the tokens billed.
pub async fn embed(
    provider: Arc<Provider>,
    model: String,
    text: String,
) -> Result<(Vec<f32>, u64), String> {
    let key = provider
        .keys
        .first()
        .map(|k| (provider.auth_header(), k.header.clone()));
    let b = &provider.base;
    let scheme = if b.tls { "https" } else { "http" };
    let url = format!("{scheme}://{}:{}{}/embeddings", b.host, b.port, b.path);
    let call = move || -> Result<(Vec<f32>, u64), String> {
        let agent = ureq::Agent::config_builder()
            .timeout_global(Some(TIMEOUT))
            .http_status_as_error(true)
            .build()
            .new_agent();
        let mut req = agent.post(&url).header("content-type", "application/json");
        if let Some((name, value)) = &key {
            let value = value.to_str().map_err(|e| e.to_string())?;
            req = req.header(name.as_str(), value);
        }
        let body = serde_json::json!({"model": model, "input": text});
        let mut resp = req
            .send(body.to_string())
            .map_err(|e| format!("embedding call failed: {e}"))?;
        let answer: Answer = resp
            .body_mut()
            .read_json()
            .map_err(|e| format!("embedding answer unreadable: {e}"))?;
        let mut v = answer
            .data
            .into_iter()
            .next()
            .ok_or("embedding answer has no data")?
            .embedding;
        super::normalize(&mut v);
        Ok((v, answer.usage.map_or(0, |u| u.prompt_tokens)))
    };
    tokio::task::spawn_blocking(call)
        .await
        .map_err(|e| e.to_string())?
}
