//! The witness's HTTP handlers (C2SP tlog-witness): status codes as the
//! spec gives them; a 409 answers the recorded size as `text/x.tlog.size`.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};

use super::service::{WitnessError, WitnessService};
use kasbah_audit::witness::{MAX_REQUEST_BYTES, Refusal};

fn text(status: StatusCode, content_type: &'static str, body: String) -> Response {
    (status, [(header::CONTENT_TYPE, content_type)], body).into_response()
}

/// `POST /add-checkpoint`.
pub async fn add_checkpoint(State(w): State<Arc<WitnessService>>, body: Bytes) -> Response {
    if body.len() > MAX_REQUEST_BYTES {
        return text(
            StatusCode::PAYLOAD_TOO_LARGE,
            "text/plain; charset=utf-8",
            "request too large\n".into(),
        );
    }
    let Ok(body) = String::from_utf8(body.to_vec()) else {
        return text(
            StatusCode::BAD_REQUEST,
            "text/plain; charset=utf-8",
            "body is not UTF-8\n".into(),
        );
    };
    let answer = tokio::task::spawn_blocking(move || w.add_checkpoint(&body)).await;
    match answer {
        Ok(Ok(line)) => text(StatusCode::OK, "text/plain; charset=utf-8", line),
        Ok(Err(WitnessError::Refused(Refusal::Conflict { current, .. }))) => text(
            StatusCode::CONFLICT,
            "text/x.tlog.size",
            format!("{current}\n"),
        ),
        Ok(Err(WitnessError::Refused(r))) => text(
            StatusCode::from_u16(r.status()).unwrap_or(StatusCode::BAD_REQUEST),
            "text/plain; charset=utf-8",
            format!("{r}\n"),
        ),
        Ok(Err(e @ WitnessError::Storage(_))) => {
            tracing::error!("{e}");
            text(
                StatusCode::INTERNAL_SERVER_ERROR,
                "text/plain; charset=utf-8",
                "internal error\n".into(),
            )
        }
        Err(e) => {
            tracing::error!("witness task: {e}");
            text(
                StatusCode::INTERNAL_SERVER_ERROR,
                "text/plain; charset=utf-8",
                "internal error\n".into(),
            )
        }
    }
}

/// `GET /<origin hash>/checkpoint`: the last cosigned checkpoint of a log.
pub async fn checkpoint(
    State(w): State<Arc<WitnessService>>,
    Path(origin_hash): Path<String>,
) -> Response {
    match w.checkpoint(&origin_hash) {
        Some(note) => text(StatusCode::OK, "text/plain; charset=utf-8", note),
        None => text(
            StatusCode::NOT_FOUND,
            "text/plain; charset=utf-8",
            "no checkpoint cosigned for this log\n".into(),
        ),
    }
}
