//! Validation shared by every domain's services: names and digests as
//! clients send them. Bad input is a 4xx with a stable code.

use kasbah_core::Digest;

use crate::error::{ApiError, ApiResult};

/// A `sha256:<hex>` digest from a path or body (400 `invalid_digest`).
pub fn parse_digest(s: &str) -> ApiResult<Digest> {
    s.parse().map_err(|e: kasbah_core::InvalidDigest| {
        ApiError::bad_request("invalid_digest", e.to_string())
    })
}

/// Operator, tenant, auditor and module names and versions (422
/// `invalid_name`).
pub fn valid_name(n: &str) -> ApiResult<&str> {
    let ok = !n.is_empty()
        && n.len() <= 128
        && n.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.+".contains(&b));
    if ok {
        Ok(n)
    } else {
        Err(ApiError::unprocessable(
            "invalid_name",
            format!("{n:?}: names are 1-128 characters of letters, digits and -_.+"),
        ))
    }
}
