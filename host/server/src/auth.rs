//! Authentication: the `Caller` extractor. A bearer token (stored hashed)
//! is looked up through the token store; unknown, expired and revoked
//! tokens are 401 with distinct codes. The access rules every service
//! applies are in `caller.rs` and `tenancy/access.rs`.

use axum::extract::FromRequestParts;
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode};

use crate::caller::Caller;
use crate::error::{ApiError, ApiResult};
use crate::state::AppState;
use crate::tenancy::storage::{TokenCheck, TokenStore};

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> ApiResult<Self> {
        authenticate(&parts.headers, state).await
    }
}

/// The caller a request's bearer token names (for routes whose handler
/// decides whether a token is needed, e.g. the tile-served log).
pub async fn authenticate(headers: &HeaderMap, state: &AppState) -> ApiResult<Caller> {
    let header = headers
        .get(AUTHORIZATION)
        .ok_or_else(|| ApiError::unauthenticated("missing `Authorization: Bearer <token>`"))?;
    let token = header
        .to_str()
        .ok()
        .and_then(|h| h.strip_prefix("Bearer "))
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .ok_or_else(|| ApiError::unauthenticated("malformed Authorization header"))?;
    let started = std::time::Instant::now();
    let check = state.tenancy.caller(token).await?;
    tracing::debug!(target: "kasbah::phases", "auth total={}us", started.elapsed().as_micros());
    match check {
        TokenCheck::Valid(c) => Ok(c),
        TokenCheck::Unknown => Err(ApiError::unauthenticated("unknown token")),
        // Distinct codes: they tell the holder whether to renew or to
        // ask why, and tell nobody else anything (it takes the secret
        // to get either answer).
        TokenCheck::Expired => Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "token_expired",
            "this token has expired; ask for a new one",
        )),
        TokenCheck::Revoked => Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "token_revoked",
            "this token has been revoked",
        )),
    }
}
