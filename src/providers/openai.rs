//! OpenAI and OpenAI-compatible servers: `{base}/chat/completions`, `Authorization: Bearer`.

use crate::api::Endpoint;

pub fn path(base: &str, endpoint: Endpoint) -> String {
    format!("{base}{}", endpoint.openai_path())
}
