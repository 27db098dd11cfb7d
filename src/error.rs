//! The one error type a client sees: OpenAI's `{"error":{"message","type","code"}}` with a status.

use bytes::Bytes;
use serde_json::json;
use std::borrow::Cow;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub status: u16,
    pub kind: &'static str,
    pub code: Cow<'static, str>,
    pub message: String,
}

impl ApiError {
    pub fn new(
        status: u16,
        kind: &'static str,
        code: impl Into<Cow<'static, str>>,
        message: impl Into<String>,
    ) -> Self {
        ApiError {
            status,
            kind,
            code: code.into(),
            message: message.into(),
        }
    }

    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(400, "invalid_request_error", code, message)
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(404, "invalid_request_error", "not_found", message)
    }

    pub fn model_not_found(model: &str) -> Self {
        Self::new(
            404,
            "invalid_request_error",
            "model_not_found",
            format!("The model `{model}` does not exist or is not configured on this gateway."),
        )
    }

    pub fn upstream(status: u16, code: &'static str, message: impl Into<String>) -> Self {
        Self::new(status, "upstream_error", code, message)
    }

    pub fn body(&self) -> Bytes {
        let v = json!({"error": {"message": self.message, "type": self.kind, "code": self.code}});
        Bytes::from(v.to_string())
    }

    /// The same error in Anthropic's shape, for clients of `/v1/messages`.
    pub fn anthropic_body(&self) -> Bytes {
        let kind = match self.status {
            401 => "authentication_error",
            402 => "billing_error",
            403 => "permission_error",
            404 => "not_found_error",
            413 => "request_too_large",
            429 => "rate_limit_error",
            529 => "overloaded_error",
            s if s >= 500 => "api_error",
            _ => "invalid_request_error",
        };
        let v = json!({"type": "error", "error": {"type": kind, "message": self.message}});
        Bytes::from(v.to_string())
    }

    /// The body in the dialect a client speaks.
    pub fn body_for(&self, anthropic: bool) -> Bytes {
        if anthropic {
            self.anthropic_body()
        } else {
            self.body()
        }
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}: {}", self.status, self.code, self.message)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn body_has_openai_shape() {
        let e = ApiError::model_not_found("nope");
        let v: serde_json::Value = serde_json::from_slice(&e.body()).unwrap();
        assert_eq!(v["error"]["code"], "model_not_found");
        assert_eq!(v["error"]["type"], "invalid_request_error");
        assert!(v["error"]["message"].as_str().unwrap().contains("nope"));
    }
}
