//! HTTP helpers every domain's handlers share: JSON body rejections as the
//! error envelope, streamed uploads into the blob store (bounded, hashed
//! while read).

use axum::body::Body;
use axum::http::{HeaderMap, StatusCode, header};
use futures_util::StreamExt;
use kasbah_core::Digest;

use crate::blobs::Blobs;
use crate::error::ApiError;

/// A JSON body the extractor refused, as the error envelope.
pub fn json_error(e: axum::extract::rejection::JsonRejection) -> ApiError {
    use axum::extract::rejection::JsonRejection::*;
    match e {
        JsonDataError(e) => ApiError::unprocessable("invalid_request", e.body_text()),
        MissingJsonContentType(_) => ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "expected `Content-Type: application/json`",
        ),
        BytesRejection(e) => {
            let (status, text) = (e.status(), e.body_text());
            crate::error::body_error(status, text, &e)
        }
        other => ApiError::bad_request("invalid_request", other.body_text()),
    }
}

/// A query string the extractor refused.
pub fn query_error(e: axum::extract::rejection::QueryRejection) -> ApiError {
    ApiError::bad_request("invalid_request", e.body_text())
}

/// How much of a refused upload is read and discarded before answering.
pub const DRAIN_LIMIT: u64 = 64 << 20;

/// Read and discard up to `limit` bytes of a request body.
pub async fn drain(body: Body, limit: u64) {
    let mut stream = body.into_data_stream();
    let mut seen = 0u64;
    while let Some(Ok(chunk)) = stream.next().await {
        seen += chunk.len() as u64;
        if seen > limit {
            break;
        }
    }
}

/// Why [`receive_upload`] stored nothing.
pub enum UploadRefused {
    /// Over `max` bytes (declared, or found while streaming).
    TooLarge,
    Failed(ApiError),
}

/// Stream an upload to a temp file in the blob store while hashing it,
/// storing at most `max` bytes. The rest of an oversize body is read and
/// discarded (up to [`DRAIN_LIMIT`]) so the client gets the 413 instead of a
/// reset connection; a declared `Content-Length` past that is refused at once.
pub async fn receive_upload(
    blobs: &Blobs,
    headers: &HeaderMap,
    body: Body,
    max: u64,
) -> Result<(Digest, u64, tempfile::NamedTempFile), UploadRefused> {
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > max.saturating_add(DRAIN_LIMIT)) {
        return Err(UploadRefused::TooLarge);
    }
    let failed = |e: ApiError| UploadRefused::Failed(e);
    let mut w = blobs.writer().map_err(|e| failed(ApiError::internal(e)))?;
    let mut stream = body.into_data_stream();
    let mut over = 0u64;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| {
            failed(ApiError::bad_request(
                "invalid_request",
                format!("upload failed: {e}"),
            ))
        })?;
        if over > 0 || w.size() + chunk.len() as u64 > max {
            over += chunk.len() as u64;
            if over > DRAIN_LIMIT {
                break;
            }
            continue;
        }
        w.write(&chunk).map_err(|e| failed(ApiError::internal(e)))?;
    }
    if over > 0 {
        return Err(UploadRefused::TooLarge);
    }
    Ok(blobs.finish(w))
}
