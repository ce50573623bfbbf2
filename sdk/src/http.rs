//! Outgoing HTTP over `wasi:http/outgoing-handler` (feature `http`).
//!
//! ```ignore
//! let r = kasbah_sdk::http::get("https://api.example.org/v1/rates")?;
//! if r.status == 200 { /* r.body */ }
//! let r = kasbah_sdk::http::post("https://api.example.org/v1/score", "application/json", b"{}")?;
//! ```
//!
//! The host sends a request only when its URL's `host:port` is in the
//! tenant's `[network] allow` list (by that exact name) and reachable from
//! the run's residency zones; anything else fails with
//! [`HttpError::Denied`] before any connection. HTTPS certificates are
//! verified by the host. Per-run limits (requests, body bytes, timeouts)
//! come from the policy's `[limits]`. An [`HttpError`] converts into the
//! pipeline's [`crate::Error`] with `?`.

use wasip2::http::outgoing_handler;
use wasip2::http::types::{
    ErrorCode, Fields, IncomingBody, Method, OutgoingBody, OutgoingRequest, Scheme,
};
use wasip2::io::streams::StreamError;

/// Largest response body these helpers read by default (the host's
/// `limits.max_http_bytes` applies as well).
pub const DEFAULT_MAX_BODY_BYTES: usize = 16 * 1024 * 1024;

/// A response: status, headers (names lowercase, as sent), body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, Vec<u8>)>,
    pub body: Vec<u8>,
}

impl Response {
    /// The first value of header `name` (case-insensitive), as text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .and_then(|(_, v)| std::str::from_utf8(v).ok())
    }

    /// The body as UTF-8 text.
    pub fn text(&self) -> Result<&str, HttpError> {
        std::str::from_utf8(&self.body)
            .map_err(|_| HttpError::Failed("response body is not UTF-8".into()))
    }
}

/// Why a request failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HttpError {
    /// The URL could not be used (not `http(s)://host[:port]/…`).
    InvalidUrl(String),
    /// The host refused it: destination not allowed by the policy or the
    /// run's residency.
    Denied(String),
    /// A per-run limit (requests, bytes) or a timeout was reached.
    Limit(String),
    /// The connection, TLS or protocol failed (e.g. a certificate the host
    /// does not trust).
    Failed(String),
}

impl std::fmt::Display for HttpError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HttpError::InvalidUrl(m) => write!(f, "invalid URL: {m}"),
            HttpError::Denied(m) => write!(f, "denied: {m}"),
            HttpError::Limit(m) => write!(f, "limit reached: {m}"),
            HttpError::Failed(m) => write!(f, "failed: {m}"),
        }
    }
}

impl std::error::Error for HttpError {}

impl From<HttpError> for crate::Error {
    fn from(e: HttpError) -> Self {
        match e {
            HttpError::InvalidUrl(m) => crate::Error::invalid_input(format!("http: {m}")),
            HttpError::Denied(m) => crate::Error::denied(format!("http: {m}")),
            HttpError::Limit(m) => crate::Error::unavailable(format!("http: limit: {m}")),
            HttpError::Failed(m) => crate::Error::unavailable(format!("http: {m}")),
        }
    }
}

fn from_code(code: ErrorCode) -> HttpError {
    let m = format!("{code:?}");
    match code {
        ErrorCode::HttpRequestDenied => HttpError::Denied(m),
        ErrorCode::ConnectionLimitReached
        | ErrorCode::HttpRequestBodySize(_)
        | ErrorCode::HttpResponseBodySize(_)
        | ErrorCode::ConnectionTimeout
        | ErrorCode::ConnectionReadTimeout
        | ErrorCode::HttpResponseTimeout => HttpError::Limit(m),
        ErrorCode::HttpRequestUriInvalid | ErrorCode::HttpRequestUriTooLong => {
            HttpError::InvalidUrl(m)
        }
        _ => HttpError::Failed(m),
    }
}

/// `scheme://authority/path?query` split into its parts (fragment dropped).
fn split_url(url: &str) -> Result<(Scheme, &str, &str), HttpError> {
    let bad = || HttpError::InvalidUrl(url.chars().take(200).collect());
    let (scheme, rest) = url.split_once("://").ok_or_else(bad)?;
    let scheme = match scheme.to_ascii_lowercase().as_str() {
        "https" => Scheme::Https,
        "http" => Scheme::Http,
        _ => return Err(bad()),
    };
    let rest = rest.split('#').next().unwrap_or(rest);
    let end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, path) = rest.split_at(end);
    if authority.is_empty() {
        return Err(bad());
    }
    let path = if path.is_empty() { "/" } else { path };
    Ok((scheme, authority, path))
}

/// `GET url`.
pub fn get(url: &str) -> Result<Response, HttpError> {
    request("GET", url, &[], None)
}

/// `POST url` with `body` of `content_type`.
pub fn post(url: &str, content_type: &str, body: &[u8]) -> Result<Response, HttpError> {
    request(
        "POST",
        url,
        &[("content-type", content_type.as_bytes())],
        Some(body),
    )
}

/// Any method, headers and optional body; reads at most
/// [`DEFAULT_MAX_BODY_BYTES`] of the response.
pub fn request(
    method: &str,
    url: &str,
    headers: &[(&str, &[u8])],
    body: Option<&[u8]>,
) -> Result<Response, HttpError> {
    request_bounded(method, url, headers, body, DEFAULT_MAX_BODY_BYTES)
}

/// [`request`] reading at most `max_body` bytes of the response body
/// (more is an [`HttpError::Limit`]).
pub fn request_bounded(
    method: &str,
    url: &str,
    headers: &[(&str, &[u8])],
    body: Option<&[u8]>,
    max_body: usize,
) -> Result<Response, HttpError> {
    let (scheme, authority, path) = split_url(url)?;
    let fields = Fields::new();
    for (k, v) in headers {
        fields
            .append(k, v)
            .map_err(|e| HttpError::InvalidUrl(format!("header {k:?}: {e:?}")))?;
    }
    if let Some(b) = body {
        let len = b.len().to_string();
        let _ = fields.set("content-length", &[len.into_bytes()]);
    }
    let req = OutgoingRequest::new(fields);
    let method = match method.to_ascii_uppercase().as_str() {
        "GET" => Method::Get,
        "HEAD" => Method::Head,
        "POST" => Method::Post,
        "PUT" => Method::Put,
        "DELETE" => Method::Delete,
        "PATCH" => Method::Patch,
        "OPTIONS" => Method::Options,
        other => Method::Other(other.to_string()),
    };
    let invalid = |what: &str| HttpError::InvalidUrl(format!("{what} rejected"));
    req.set_method(&method).map_err(|_| invalid("method"))?;
    req.set_scheme(Some(&scheme))
        .map_err(|_| invalid("scheme"))?;
    req.set_authority(Some(authority))
        .map_err(|_| invalid("authority"))?;
    req.set_path_with_query(Some(path))
        .map_err(|_| invalid("path"))?;
    let out_body = req
        .body()
        .map_err(|_| HttpError::Failed("request body already taken".into()))?;
    let future = outgoing_handler::handle(req, None).map_err(from_code)?;

    // Write the body; a failed write means the request itself failed:
    // its reason comes from the response future below.
    let mut write_failed = false;
    if let Ok(stream) = out_body.write() {
        for chunk in body.unwrap_or_default().chunks(4096) {
            if stream.blocking_write_and_flush(chunk).is_err() {
                write_failed = true;
                break;
            }
        }
        drop(stream);
    }
    let finished = OutgoingBody::finish(out_body, None);

    future.subscribe().block();
    let incoming = match future.get() {
        Some(Ok(Ok(r))) => r,
        Some(Ok(Err(code))) => return Err(from_code(code)),
        Some(Err(())) | None => return Err(HttpError::Failed("no response".into())),
    };
    if let Err(code) = finished
        && !write_failed
    {
        return Err(from_code(code));
    }
    let status = incoming.status();
    let headers = incoming.headers().entries();
    let body = read_body(
        incoming
            .consume()
            .map_err(|_| HttpError::Failed("response body already taken".into()))?,
        max_body,
    )?;
    Ok(Response {
        status,
        headers,
        body,
    })
}

fn read_body(body: IncomingBody, max: usize) -> Result<Vec<u8>, HttpError> {
    let stream = body
        .stream()
        .map_err(|_| HttpError::Failed("response body stream already taken".into()))?;
    let mut out = Vec::new();
    loop {
        match stream.blocking_read(64 * 1024) {
            Ok(chunk) => {
                if out.len() + chunk.len() > max {
                    return Err(HttpError::Limit(format!(
                        "response body larger than {max} bytes"
                    )));
                }
                out.extend_from_slice(&chunk);
            }
            Err(StreamError::Closed) => break,
            Err(StreamError::LastOperationFailed(e)) => {
                drop(stream);
                return Err(match wasip2::http::types::http_error_code(&e) {
                    Some(code) => from_code(code),
                    None => HttpError::Failed(e.to_debug_string()),
                });
            }
        }
    }
    drop(stream);
    let _ = IncomingBody::finish(body);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_split_into_scheme_authority_and_path() {
        let (s, a, p) = split_url("https://api.example.org:8443/v1/x?q=1#frag").expect("url");
        assert!(matches!(s, Scheme::Https));
        assert_eq!((a, p), ("api.example.org:8443", "/v1/x?q=1"));
        let (_, a, p) = split_url("http://localhost?x").expect("no path");
        assert_eq!((a, p), ("localhost", "?x"));
        assert_eq!(split_url("HTTP://h").expect("upper").2, "/");
        for bad in ["ftp://h/", "https:///x", "localhost:80/x", ""] {
            assert!(split_url(bad).is_err(), "{bad}");
        }
    }
}
