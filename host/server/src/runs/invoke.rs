//! Raw HTTP invoke (`POST /v1/invoke/{name}[@version]`): the request body
//! is the run's input, the answer is the output's bytes. The run itself is
//! an ordinary run started through [`service::start_with_input`] — the same
//! auth, module resolution, input bound, placement, admission, limits,
//! record and audit entry as `POST /v1/runs` with `wait: true`. This file
//! only maps the run's outcome onto an HTTP status. No HTTP types here.
//!
//! | outcome | status | error code |
//! |---|---|---|
//! | `ok` | 200, the output's bytes and content type | — |
//! | `guest_error` `invalid_input` | 422 | `invalid_input` |
//! | `guest_error` `denied` | 403 | `guest_denied` |
//! | `guest_error` `unavailable` | 503 (Retry-After: 1) | `guest_unavailable` |
//! | `guest_error` `failed` | 502 | `guest_failed` |
//! | `trap`, `memory_limit`, `fuel_exhausted`, `output_too_large` | 502 | the outcome |
//! | `deadline_exceeded` | 504 | `deadline_exceeded` |
//! | `denied` (by the host) | 403 | `denied` |
//! | not finished within `sync_wait_ms` | 202, the run record | — |

use kasbah_core::api::{CreateRun, RunRecord};
use kasbah_core::{GuestErrorKind, Outcome};

use super::service::{self, RunOutput, Started};
use crate::caller::Caller;
use crate::error::{ApiError, ApiResult};
use crate::state::AppState;

/// Longest `Content-Type` passed through to the guest.
pub const MAX_CONTENT_TYPE: usize = 256;

/// How an invoke ended.
pub enum Invoked {
    /// `ok`: the output (its bytes, content type, digest).
    Ok(RunRecord, RunOutput),
    /// Any other outcome: its status and error.
    Failed(RunRecord, ApiError),
    /// Still running past the server's sync wait: poll the record.
    Accepted(RunRecord),
}

/// Request headers named `kasbah-meta-KEY` carry the run's metadata.
pub const META_HEADER_PREFIX: &str = "kasbah-meta-";

/// Most metadata entries an invoke carries.
pub const MAX_METADATA: usize = 32;

/// What a raw invoke carries besides the module.
pub struct Input {
    pub content_type: Option<String>,
    pub metadata: Vec<(String, String)>,
    pub datasets: Vec<String>,
    pub body: Vec<u8>,
}

/// Run the caller tenant's module `reference` on `input`.
pub async fn invoke(
    s: &AppState,
    caller: &Caller,
    reference: &str,
    input: Input,
) -> ApiResult<Invoked> {
    service::may_start(caller)?;
    if let Some(ct) = &input.content_type
        && ct.len() > MAX_CONTENT_TYPE
    {
        return Err(ApiError::unprocessable(
            "invalid_request",
            format!("Content-Type is longer than {MAX_CONTENT_TYPE} bytes"),
        ));
    }
    if input.metadata.len() > MAX_METADATA {
        return Err(ApiError::unprocessable(
            "invalid_request",
            format!("at most {MAX_METADATA} kasbah-meta-* headers"),
        ));
    }
    let req = CreateRun {
        module: reference.to_string(),
        content_type: input.content_type,
        metadata: input.metadata.into_iter().collect(),
        wait: true,
        datasets: input.datasets,
        ..CreateRun::default()
    };
    let body = input.body;
    let record = match service::start_with_input(s, caller, req, body).await? {
        Started::Accepted(r) => return Ok(Invoked::Accepted(r)),
        Started::Finished(r) => r,
    };
    match record.outcome.as_ref().map(failure) {
        Some(None) => {
            let out = service::output(s, caller, &record.id).await?;
            Ok(Invoked::Ok(record, out))
        }
        Some(Some(e)) => Ok(Invoked::Failed(record, e)),
        None => Ok(Invoked::Accepted(record)),
    }
}

/// The error answering an outcome other than `ok` (`None` for `ok`).
pub fn failure(o: &Outcome) -> Option<ApiError> {
    Some(match o {
        Outcome::Ok { .. } => return None,
        Outcome::GuestError { code, message } => match code {
            GuestErrorKind::InvalidInput => ApiError::unprocessable("invalid_input", message),
            GuestErrorKind::Denied => ApiError::refused("guest_denied", message),
            GuestErrorKind::Unavailable => ApiError::unavailable("guest_unavailable", message, 1),
            GuestErrorKind::Failed => ApiError::bad_gateway("guest_failed", message),
        },
        Outcome::Trap { .. } => ApiError::bad_gateway("trap", o.summary()),
        Outcome::MemoryLimit { .. } => ApiError::bad_gateway("memory_limit", o.summary()),
        Outcome::FuelExhausted { .. } => ApiError::bad_gateway("fuel_exhausted", o.summary()),
        Outcome::OutputTooLarge { .. } => ApiError::bad_gateway("output_too_large", o.summary()),
        Outcome::DeadlineExceeded { .. } => {
            ApiError::gateway_timeout("deadline_exceeded", o.summary())
        }
        Outcome::Denied { .. } => ApiError::refused("denied", o.summary()),
        // Its tenant cancelled it (`POST /v1/runs/{id}/cancel`) while the
        // invoke waited.
        Outcome::Cancelled {} => ApiError::conflict("cancelled", o.summary()),
    })
}
