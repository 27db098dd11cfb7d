//! Azure OpenAI: `{base}/openai/deployments/{deployment}/{endpoint}?api-version=...`, `api-key`.

use super::Provider;
use crate::api::Endpoint;

pub const AUTH_HEADER: http::HeaderName = http::HeaderName::from_static("api-key");

pub fn path(p: &Provider, endpoint: Endpoint, model: &str) -> String {
    let deployment = p.deployments.get(model).map_or(model, String::as_str);
    let version = p.api_version.as_deref().unwrap_or_default();
    format!(
        "{}/openai/deployments/{deployment}{}?api-version={version}",
        p.base.path,
        endpoint.openai_path()
    )
}
