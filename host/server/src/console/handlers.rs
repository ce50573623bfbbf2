//! HTTP for the console: `/` and `/console/{name}`, each with the CSP and
//! the other hardening headers. No authentication here: the files are the
//! same for everyone; the data comes from `/v1/...` with the user's token.

use axum::extract::Path;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use super::assets::{self, Asset, CSP};
use crate::error::ApiError;

fn serve(a: Asset) -> Response {
    let mut r = (StatusCode::OK, a.body).into_response();
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(a.content_type),
    );
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    r
}

/// `GET /`: the console's page.
pub async fn index() -> Response {
    match assets::get("index.html") {
        Some(a) => serve(a),
        None => ApiError::not_found("route").into_response(),
    }
}

/// `GET /console/{name}`: one of the console's embedded files.
pub async fn asset(Path(name): Path<String>) -> Response {
    match assets::get(&name) {
        Some(a) => serve(a),
        None => ApiError::not_found("route").into_response(),
    }
}
