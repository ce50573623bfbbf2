//! API errors: `{ "error": { "code", "message" } }` with a stable code and
//! the right HTTP status. Internal errors are logged with detail and reported
//! to the client only as `internal`.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    pub retry_after_s: Option<u32>,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct ErrorDetail {
    /// Stable machine-readable code, e.g. `not_found`, `imports_not_granted`.
    pub code: String,
    pub message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
            retry_after_s: None,
        }
    }
    pub fn bad_request(code: &'static str, m: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, m)
    }
    pub fn unprocessable(code: &'static str, m: impl Into<String>) -> Self {
        Self::new(StatusCode::UNPROCESSABLE_ENTITY, code, m)
    }
    pub fn not_found(what: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("{what} not found"),
        )
    }
    pub fn forbidden(m: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "forbidden", m)
    }
    /// 500 with a specific code (a fault the operator must look at, e.g.
    /// `audit_log_corrupt`), logged by the caller.
    pub fn fault(code: &'static str, m: impl Into<String>) -> Self {
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, code, m)
    }
    /// 403 with a specific code (a refusal that is a policy decision,
    /// e.g. `residency_violation`).
    pub fn refused(code: &'static str, m: impl Into<String>) -> Self {
        ApiError::new(StatusCode::FORBIDDEN, code, m)
    }
    pub fn unauthenticated(m: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "unauthenticated", m)
    }
    pub fn conflict(code: &'static str, m: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, code, m)
    }
    pub fn too_large(code: &'static str, m: impl Into<String>) -> Self {
        Self::new(StatusCode::PAYLOAD_TOO_LARGE, code, m)
    }
    pub fn overloaded(m: impl Into<String>, retry_after_s: u32) -> Self {
        ApiError {
            retry_after_s: Some(retry_after_s),
            ..Self::new(StatusCode::TOO_MANY_REQUESTS, "rate_limited", m)
        }
    }
    /// 503 with Retry-After: nothing can take the request now (e.g. no
    /// live worker in any zone a run may use).
    pub fn unavailable(code: &'static str, m: impl Into<String>, retry_after_s: u32) -> Self {
        ApiError {
            retry_after_s: Some(retry_after_s),
            ..Self::new(StatusCode::SERVICE_UNAVAILABLE, code, m)
        }
    }
    /// 502: the pipeline behind a raw invoke failed (trapped, hit a limit,
    /// returned `failed`).
    pub fn bad_gateway(code: &'static str, m: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_GATEWAY, code, m)
    }
    /// 504: the pipeline behind a raw invoke ran past its deadline.
    pub fn gateway_timeout(code: &'static str, m: impl Into<String>) -> Self {
        Self::new(StatusCode::GATEWAY_TIMEOUT, code, m)
    }
    /// Log the detail; tell the client only that something went wrong.
    pub fn internal(detail: impl std::fmt::Display) -> Self {
        tracing::error!("internal error: {detail}");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "internal error; see the server log",
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            error: ErrorDetail {
                code: self.code.to_string(),
                message: self.message,
            },
        };
        let mut resp = (self.status, axum::Json(body)).into_response();
        if let Some(s) = self.retry_after_s {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(s));
        }
        resp
    }
}

impl From<rusqlite::Error> for ApiError {
    fn from(e: rusqlite::Error) -> Self {
        ApiError::internal(format!("database: {e}"))
    }
}

impl From<crate::store::DbError> for ApiError {
    fn from(e: crate::store::DbError) -> Self {
        ApiError::internal(e)
    }
}

pub type ApiResult<T> = Result<T, ApiError>;

/// The stable code for an error status that no handler chose a code for
/// (framework rejections: bad query strings and paths, wrong methods,
/// bodies over the limit).
pub fn code_for_status(status: StatusCode) -> &'static str {
    match status.as_u16() {
        400 | 422 => "invalid_request",
        401 => "unauthenticated",
        403 => "forbidden",
        404 => "not_found",
        405 => "method_not_allowed",
        408 => "request_timeout",
        409 => "conflict",
        413 => "payload_too_large",
        415 => "unsupported_media_type",
        429 => "rate_limited",
        s if s >= 500 => "internal",
        _ => "invalid_request",
    }
}

/// Longest framework error text kept as the message.
const MAX_REJECTION_TEXT: usize = 1024;

/// Router-wide layer: every error response is the JSON envelope. Handlers'
/// own errors already are; this catches what the framework answers by
/// itself (extractor rejections in `text/plain`, an empty 405) so no client
/// ever has to parse another shape.
pub async fn envelope(resp: Response) -> Response {
    let status = resp.status();
    if !(status.is_client_error() || status.is_server_error()) {
        return resp;
    }
    let is_json = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if is_json {
        return resp;
    }
    let (parts, body) = resp.into_parts();
    let text = axum::body::to_bytes(body, MAX_REJECTION_TEXT * 4)
        .await
        .map(|b| String::from_utf8_lossy(&b).trim().to_string())
        .unwrap_or_default();
    let mut message: String = text.chars().take(MAX_REJECTION_TEXT).collect();
    if message.is_empty() {
        message = status
            .canonical_reason()
            .unwrap_or("request failed")
            .to_lowercase();
    }
    let mut out = ApiError::new(status, code_for_status(status), message).into_response();
    // Keep what the framework said besides the body (`Allow` on a 405).
    for (name, value) in &parts.headers {
        if name != header::CONTENT_TYPE && name != header::CONTENT_LENGTH {
            out.headers_mut().insert(name.clone(), value.clone());
        }
    }
    out
}

/// An error reading a request body: too large (413), too slow (408), or
/// malformed (400).
pub fn body_error(
    status: StatusCode,
    text: String,
    source: &(dyn std::error::Error + 'static),
) -> ApiError {
    if status == StatusCode::PAYLOAD_TOO_LARGE {
        return ApiError::too_large("payload_too_large", text);
    }
    let mut e: Option<&(dyn std::error::Error + 'static)> = Some(source);
    while let Some(err) = e {
        if err.is::<tower_http::timeout::TimeoutError>() {
            return ApiError::new(
                StatusCode::REQUEST_TIMEOUT,
                "request_timeout",
                "the request body stopped arriving (server's body_timeout_ms)",
            );
        }
        e = err.source();
    }
    ApiError::new(status, code_for_status(status), text)
}

/// JSON request bodies are objects. serde's derived `Deserialize` also
/// reads a struct from a JSON array (by field order), so `[]` would pass as
/// a request the document says is an object (schemathesis found
/// `PUT /v1/operators/{id}/ceiling` with `[]` accepted as the default
/// ceiling). Refused here, for every route, before any handler: 422
/// `invalid_request`. A body over `max` bytes is 413 `payload_too_large`.
pub async fn json_objects(
    req: axum::extract::Request,
    next: axum::middleware::Next,
    max: usize,
) -> Response {
    let is_json = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| {
            v.split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase()
        })
        .is_some_and(|m| {
            m == "application/json" || (m.starts_with("application/") && m.ends_with("+json"))
        });
    // A raw invoke's body is the pipeline's input, whatever JSON it is; a
    // secret's is its value (never buffered or parsed here).
    let raw = ["/v1/invoke/", "/v1/secrets/"];
    if !is_json || raw.iter().any(|p| req.uri().path().starts_with(p)) {
        return next.run(req).await;
    }
    let (parts, body) = req.into_parts();
    let bytes = match axum::body::to_bytes(body, max).await {
        Ok(b) => b,
        Err(e) => {
            let too_large =
                std::iter::successors(Some(&e as &(dyn std::error::Error + 'static)), |err| {
                    err.source()
                })
                .any(|err| err.to_string().contains("length limit"));
            let status = if too_large {
                StatusCode::PAYLOAD_TOO_LARGE
            } else {
                StatusCode::BAD_REQUEST
            };
            let text = if too_large {
                format!("the request body is larger than {max} bytes")
            } else {
                format!("cannot read the request body: {e}")
            };
            return body_error(status, text, &e).into_response();
        }
    };
    if bytes
        .iter()
        .find(|b| !b.is_ascii_whitespace())
        .is_some_and(|b| *b != b'{')
    {
        return ApiError::unprocessable("invalid_request", "a JSON request body is an object")
            .into_response();
    }
    next.run(axum::extract::Request::from_parts(
        parts,
        axum::body::Body::from(bytes),
    ))
    .await
}
