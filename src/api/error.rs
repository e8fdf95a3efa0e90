//! Typed API errors. Messages say what the operator should do. No variant
//! ever holds the key or a whole response body.

use std::time::Duration;

use super::types::ErrorEnvelope;
use crate::text::{cut, shorten};

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("the ClawMesh API rejected the API key (401 unauthenticated, request {request_id}): check that the key is set and belongs to this workspace")]
    Unauthenticated { request_id: String },

    #[error("the ClawMesh API key has expired (401 token_expired, request {request_id}): create a new key with agents:read and tasks:read")]
    TokenExpired { request_id: String },

    #[error("the API key lacks scope {scope} (403 insufficient_scope, request {request_id}): create a key with agents:read and tasks:read")]
    InsufficientScope { scope: String, request_id: String },

    #[error("the ClawMesh API answered 404 not_found: check the base URL (it should end in /v1)")]
    NotFound,

    /// 400: `invalid_request`, `invalid_cursor`, `cursor_expired` (once the
    /// restarts ran out) or a code we do not know yet.
    #[error("the ClawMesh API rejected the request (400 {code}: {message}, request {request_id}): this is a bug in the exporter or a changed API; report it")]
    BadRequest {
        code: String,
        message: String,
        request_id: String,
    },

    /// Any other 4xx with an error envelope (403 with another code, 409, 422...).
    #[error(
        "the ClawMesh API refused the request ({status} {code}: {message}, request {request_id})"
    )]
    Rejected {
        status: u16,
        code: String,
        message: String,
        request_id: String,
    },

    #[error("the ClawMesh API kept answering 429 rate_limited{}: lower the exporter's budget share or poll less often", fmt_retry_after(.retry_after))]
    RateLimited { retry_after: Option<Duration> },

    #[error("the ClawMesh API failed with {status}{} (request {}): probably a platform incident; retried with backoff, and the next poll tries again", fmt_code(.code), .request_id.as_deref().unwrap_or("unknown"))]
    Server {
        status: u16,
        code: Option<String>,
        request_id: Option<String>,
    },

    #[error("unexpected response body from {endpoint} (HTTP {status}): {detail}; a proxy may be in the way, check the base URL")]
    UnexpectedBody {
        endpoint: String,
        status: u16,
        detail: String,
    },

    #[error("request to {endpoint} timed out: the API or the network is slow; raise the request timeout if it persists")]
    Timeout { endpoint: String },

    #[error("could not reach the ClawMesh API at {endpoint}: {detail}; check the base URL and the network")]
    Connection { endpoint: String, detail: String },

    #[error("invalid API client configuration: {detail}")]
    Config { detail: String },

    /// One answer larger than `--api.max-body-size`, even for a page of a
    /// single object (a listing asks again with a smaller `limit` first).
    #[error("an answer from {endpoint} is larger than --api.max-body-size ({limit} bytes){}: not the ClawMesh API, or objects larger than the contract's; raise --api.max-body-size if they are real", if *.single_object { " even for a page of one object" } else { "" })]
    BodyTooLarge {
        endpoint: String,
        limit: u64,
        single_object: bool,
    },

    /// A listing that cannot end or has grown past its bounds: a cursor
    /// cycle, a cursor too long, too many pages or bytes.
    #[error("the listing of {endpoint} was abandoned: {detail}")]
    Listing { endpoint: String, detail: String },
}

fn fmt_retry_after(d: &Option<Duration>) -> String {
    match d {
        Some(d) => format!(" (Retry-After {} s)", d.as_secs()),
        None => String::new(),
    }
}

fn fmt_code(c: &Option<String>) -> String {
    match c {
        Some(c) => format!(" {c}"),
        None => String::new(),
    }
}

impl ApiError {
    pub fn config(detail: impl Into<String>) -> Self {
        ApiError::Config {
            detail: detail.into(),
        }
    }

    /// Worth trying again later: the platform or the path to it had a
    /// problem, not the request.
    pub fn is_retryable(&self) -> bool {
        match self {
            ApiError::RateLimited { .. }
            | ApiError::Server { .. }
            | ApiError::Timeout { .. }
            | ApiError::Connection { .. } => true,
            // A 2xx whose body does not parse was most likely cut by a proxy.
            ApiError::UnexpectedBody { status, .. } => (200..300).contains(status),
            _ => false,
        }
    }

    /// The key itself is the problem (401/403): retrying cannot help, an
    /// operator has to act.
    pub fn is_fatal_auth(&self) -> bool {
        match self {
            ApiError::Unauthenticated { .. }
            | ApiError::TokenExpired { .. }
            | ApiError::InsufficientScope { .. } => true,
            ApiError::Rejected { status, .. } | ApiError::UnexpectedBody { status, .. } => {
                *status == 401 || *status == 403
            }
            _ => false,
        }
    }

    /// The `code` of the error envelope, when there was one.
    pub fn code(&self) -> Option<&str> {
        match self {
            ApiError::Unauthenticated { .. } => Some("unauthenticated"),
            ApiError::TokenExpired { .. } => Some("token_expired"),
            ApiError::InsufficientScope { .. } => Some("insufficient_scope"),
            ApiError::NotFound => Some("not_found"),
            ApiError::BadRequest { code, .. } | ApiError::Rejected { code, .. } => Some(code),
            ApiError::RateLimited { .. } => Some("rate_limited"),
            ApiError::Server { code, .. } => code.as_deref(),
            _ => None,
        }
    }
}

/// What replaces a secret in server-provided text.
const REDACTED: &str = "<redacted>";

/// Characters that end a token in free text (a quote, a separator...).
fn ends_token(c: char) -> bool {
    c.is_whitespace()
        || matches!(
            c,
            '"' | '\'' | ',' | ';' | '<' | '>' | '(' | ')' | '[' | ']' | '{' | '}' | '\\'
        )
}

/// Server-provided text without the API key or anything that looks like a
/// bearer token, at most `max` bytes: an upstream (or a proxy) that echoes
/// the request must not get the key into a log line or an error. The key is
/// redacted whole, from its first 8 characters to the end of the token
/// (an echo cut short), and after any "Bearer ".
pub(crate) fn clean(text: &str, key: &str, max: usize) -> String {
    // Only a window can reach the output, so a huge text costs little.
    let window = cut(text, max.saturating_add(key.len()).saturating_add(16));
    let mut out = window.to_string();
    if !key.is_empty() {
        out = out.replace(key, REDACTED);
        if let Some(prefix) = key.get(..8) {
            out = redact_tokens_after(&out, prefix, false);
        }
    }
    out = redact_tokens_after(&out, "bearer ", true);
    shorten(&out, max)
}

/// Replaces each token starting with `marker` (or, with `keep_marker`, the
/// token after it) by [`REDACTED`]. `marker` is matched ASCII
/// case-insensitively.
fn redact_tokens_after(text: &str, marker: &str, keep_marker: bool) -> String {
    let lower = text.to_ascii_lowercase();
    let marker_lc = marker.to_ascii_lowercase();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    while let Some(found) = lower[i..].find(&marker_lc) {
        let start = i + found;
        let token_start = start + marker.len();
        let end = text[token_start..]
            .find(ends_token)
            .map_or(text.len(), |e| token_start + e);
        out.push_str(&text[i..start]);
        if keep_marker {
            out.push_str(&text[start..token_start]);
        }
        if end > token_start || !keep_marker {
            out.push_str(REDACTED);
        }
        i = end.max(token_start);
    }
    out.push_str(&text[i..]);
    out
}

/// Why a body is not the JSON we wanted, in a few words (never the body).
pub(crate) fn describe_bad_body(body: &[u8], err: &serde_json::Error, key: &str) -> String {
    let trimmed = body.iter().position(|b| !b.is_ascii_whitespace());
    match trimmed {
        None => "empty body".to_string(),
        Some(i) if body[i] == b'<' => "HTML instead of JSON".to_string(),
        Some(_) => {
            let kind = match err.classify() {
                serde_json::error::Category::Eof => "truncated JSON",
                serde_json::error::Category::Syntax => "invalid JSON",
                serde_json::error::Category::Data => "JSON not matching the contract",
                serde_json::error::Category::Io => "unreadable body",
            };
            format!(
                "{kind} ({} bytes): {}",
                body.len(),
                clean(&err.to_string(), key, 160)
            )
        }
    }
}

/// Maps a non-2xx answer to its typed error. `request_id_header` is the
/// `X-Request-Id` fallback for bodies that are not the envelope.
pub(crate) fn from_status(
    endpoint: &str,
    status: u16,
    body: &[u8],
    retry_after: Option<Duration>,
    request_id_header: Option<String>,
    key: &str,
) -> ApiError {
    let envelope = serde_json::from_slice::<ErrorEnvelope>(body);
    if status == 429 {
        return ApiError::RateLimited { retry_after };
    }
    if status >= 500 {
        let (code, request_id) = match envelope {
            Ok(e) => (
                Some(clean(&e.error.code, key, 64)),
                Some(clean(&e.error.request_id, key, 64)).filter(|r| !r.is_empty()),
            ),
            Err(_) => (None, None),
        };
        return ApiError::Server {
            status,
            code,
            request_id: request_id.or(request_id_header),
        };
    }
    let e = match envelope {
        Ok(e) => e.error,
        Err(err) => {
            return ApiError::UnexpectedBody {
                endpoint: endpoint.to_string(),
                status,
                detail: format!(
                    "not the error envelope: {}",
                    describe_bad_body(body, &err, key)
                ),
            }
        }
    };
    let request_id = if e.request_id.is_empty() {
        request_id_header.unwrap_or_else(|| "unknown".to_string())
    } else {
        clean(&e.request_id, key, 64)
    };
    let code = clean(&e.code, key, 64);
    let message = clean(&e.message, key, 200);
    match (status, code.as_str()) {
        (401, "token_expired") => ApiError::TokenExpired { request_id },
        (401, _) => ApiError::Unauthenticated { request_id },
        (403, "insufficient_scope") => {
            let scope = e
                .details
                .as_ref()
                .and_then(|d| d.get("required_scope"))
                .and_then(|s| s.as_str())
                .map(|s| clean(s, key, 64))
                .unwrap_or_else(|| "unknown".to_string());
            ApiError::InsufficientScope { scope, request_id }
        }
        (404, _) => ApiError::NotFound,
        (400, _) => ApiError::BadRequest {
            code,
            message,
            request_id,
        },
        _ => ApiError::Rejected {
            status,
            code,
            message,
            request_id,
        },
    }
}
