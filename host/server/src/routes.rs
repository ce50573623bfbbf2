//! The router: every route, its handler, and the layers every request
//! passes (the JSON-object check, the body limit, the error envelope).
//! A new endpoint: its handler in its domain's `handlers.rs`, a line here,
//! a line in `openapi.rs`'s path list.

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::routing::{delete, get, post, put};

use crate::audit::handlers as audit;
use crate::console::handlers as console;
use crate::datasets::handlers as datasets;
use crate::error::{self, ApiError};
use crate::openapi::openapi_json;
use crate::ops;
use crate::registry::handlers as registry;
use crate::runs::handlers as runs;
use crate::secrets::handlers as secrets;
use crate::state::AppState;
use crate::tenancy::handlers as tenancy;
use crate::witness::handlers as witness;
use crate::witness::service::WitnessService;

async fn not_found() -> ApiError {
    ApiError::not_found("route")
}

pub fn router(state: AppState) -> Router {
    let max_body = state.config.max_request_bytes;
    Router::new()
        // The web console (not part of the API document).
        .route("/", get(console::index))
        .route("/console/{name}", get(console::asset))
        .route("/openapi.json", get(openapi_json))
        .route("/metrics", get(ops::metrics))
        .route("/readyz", get(ops::readyz))
        .route("/v1/whoami", get(tenancy::whoami))
        .route(
            "/v1/operators",
            post(tenancy::create_operator).get(tenancy::list_operators),
        )
        .route(
            "/v1/operators/{id}/tokens",
            post(tenancy::create_operator_token),
        )
        .route(
            "/v1/operators/{id}/ceiling",
            put(tenancy::put_operator_ceiling),
        )
        .route(
            "/v1/tenants",
            post(tenancy::create_tenant).get(tenancy::list_tenants),
        )
        .route("/v1/tenants/{id}", get(tenancy::get_tenant))
        .route(
            "/v1/tenants/{id}/policy",
            get(tenancy::get_policy).put(tenancy::put_policy),
        )
        .route(
            "/v1/tenants/{id}/policy/versions",
            get(tenancy::policy_versions),
        )
        .route(
            "/v1/tenants/{id}/tokens",
            post(tenancy::create_tenant_token),
        )
        .route("/v1/auditors", post(tenancy::create_auditor))
        .route("/v1/tokens", get(tenancy::list_tokens))
        .route("/v1/tokens/{id}", delete(tenancy::revoke_token))
        .route(
            "/v1/modules",
            post(registry::publish_module).get(registry::list_modules),
        )
        .route("/v1/modules/{digest}", get(registry::get_module))
        .route("/v1/modules/{digest}/receipt", get(audit::module_receipt))
        .route(
            "/v1/modules/{digest}/content",
            get(registry::get_module_content),
        )
        .route(
            "/v1/modules/{digest}/signatures",
            get(registry::get_module_signatures),
        )
        .route(
            "/v1/tenants/{id}/signing-keys/{key_id}/revoke",
            post(registry::revoke_signing_key),
        )
        .route(
            "/v1/tenants/{id}/signing-keys/revoked",
            get(registry::revoked_signing_keys),
        )
        .route(
            "/v1/modules/{digest}/provenance",
            put(registry::put_provenance).get(registry::get_provenance),
        )
        .route(
            "/v1/datasets",
            post(datasets::create_dataset).get(datasets::list_datasets),
        )
        .route("/v1/datasets/{id}", get(datasets::get_dataset))
        .route(
            "/v1/datasets/{id}/content",
            get(datasets::get_dataset_content),
        )
        .route("/v1/secrets", get(secrets::list_secrets))
        .route(
            "/v1/secrets/{name}",
            put(secrets::put_secret).delete(secrets::delete_secret),
        )
        .route("/v1/runs", post(runs::create_run).get(runs::list_runs))
        .route("/v1/runs/{id}", get(runs::get_run))
        .route("/v1/invoke/{name}", post(runs::invoke))
        .route("/v1/runs/{id}/output", get(runs::get_run_output))
        .route("/v1/runs/{id}/logs", get(runs::run_logs))
        .route("/v1/runs/{id}/cancel", post(runs::cancel_run))
        .route("/v1/fleet/workers", get(runs::fleet_workers))
        .route("/v1/runs/{id}/receipt", get(audit::run_receipt))
        .route("/v1/audit/key", get(audit::key))
        .route("/v1/audit/checkpoint", get(audit::checkpoint))
        .route("/v1/audit/entries", get(audit::entries))
        .route(
            "/v1/audit/entries/{index}/receipt",
            get(audit::entry_receipt),
        )
        .route("/v1/audit/proof/inclusion", get(audit::inclusion))
        .route("/v1/audit/proof/consistency", get(audit::consistency))
        .route("/v1/usage", get(runs::usage))
        // The log as C2SP tlog-tiles (public by default: see the config).
        .route("/checkpoint", get(audit::tlog_checkpoint))
        .route("/tile/{*path}", get(audit::tlog_tile))
        .fallback(not_found)
        .layer(axum::middleware::from_fn(move |req, next| {
            error::json_objects(req, next, max_body)
        }))
        .layer(DefaultBodyLimit::max(max_body))
        .layer(axum::middleware::map_response(error::envelope))
        .with_state(state)
}

/// The router of `kasbah witness serve` (C2SP tlog-witness), a service of
/// its own: the add-checkpoint call and the monitoring checkpoint.
pub fn witness_router(w: std::sync::Arc<WitnessService>) -> Router {
    Router::new()
        .route("/add-checkpoint", post(witness::add_checkpoint))
        .route("/{origin_hash}/checkpoint", get(witness::checkpoint))
        .layer(DefaultBodyLimit::max(
            kasbah_audit::witness::MAX_REQUEST_BYTES,
        ))
        .with_state(w)
}
