//! The OpenAPI document: utoipa's, from the handlers' annotations, plus the
//! error statuses every route shares, added by rule.

use utoipa::OpenApi;

use crate::{audit, datasets, error, ops, registry, runs, secrets, tenancy};

#[derive(OpenApi)]
#[openapi(
    info(title = "kasbah", description = "Sovereign WebAssembly sandbox platform API. Every request except this document needs `Authorization: Bearer <token>`. Errors are `{\"error\": {\"code\", \"message\"}}`."),
    paths(
        tenancy::handlers::whoami,
        tenancy::handlers::create_operator, tenancy::handlers::list_operators, tenancy::handlers::create_operator_token, tenancy::handlers::put_operator_ceiling,
        tenancy::handlers::create_tenant, tenancy::handlers::list_tenants, tenancy::handlers::get_tenant, tenancy::handlers::get_policy, tenancy::handlers::put_policy,
        tenancy::handlers::policy_versions,
        tenancy::handlers::create_tenant_token, tenancy::handlers::create_auditor, tenancy::handlers::list_tokens, tenancy::handlers::revoke_token,
        registry::handlers::publish_module, registry::handlers::list_modules, registry::handlers::get_module,
        registry::handlers::get_module_content, registry::handlers::get_module_signatures, registry::handlers::revoke_signing_key, registry::handlers::revoked_signing_keys,
        registry::handlers::put_provenance, registry::handlers::get_provenance,
        runs::handlers::create_run, runs::handlers::invoke, runs::handlers::get_run, runs::handlers::get_run_output, runs::handlers::list_runs,
        runs::handlers::run_logs, runs::handlers::cancel_run,
        datasets::handlers::create_dataset, datasets::handlers::list_datasets, datasets::handlers::get_dataset, datasets::handlers::get_dataset_content,
        secrets::handlers::put_secret, secrets::handlers::list_secrets, secrets::handlers::delete_secret,
        runs::handlers::usage, runs::handlers::fleet_workers, ops::metrics,
        audit::handlers::key, audit::handlers::checkpoint, audit::handlers::entries,
        audit::handlers::inclusion, audit::handlers::consistency,
        audit::handlers::run_receipt, audit::handlers::module_receipt, audit::handlers::entry_receipt,
    ),
    components(schemas(runs::storage::Period, error::ErrorBody)),
    modifiers(&BearerAuth)
)]
pub struct ApiDoc;

/// Routes any authenticated caller may use, whatever the role.
const ANY_ROLE: &[&str] = &[
    "/v1/whoami",
    "/v1/audit/key",
    "/v1/audit/checkpoint",
    "/v1/audit/proof/inclusion",
    "/v1/audit/proof/consistency",
];

/// The document as served: [`ApiDoc`] plus the error statuses every route
/// shares, added by rule so a new route cannot forget them (a status a
/// handler documents itself keeps its own description):
/// 401 everywhere (every route needs a token); 403 where roles matter;
/// 404 except on [`ANY_ROLE`] routes without path parameters; 400 where
/// there are parameters or a body; 408/413 where there is a body; 415 and
/// 422 where the body is JSON. Every error is the `ErrorBody` envelope.
pub fn openapi_document() -> serde_json::Value {
    let mut doc = serde_json::to_value(ApiDoc::openapi()).unwrap_or_default();
    widen_unsigned_int32(&mut doc);
    raw_bodies_are_binary(&mut doc);
    let Some(paths) = doc.get_mut("paths").and_then(|p| p.as_object_mut()) else {
        return doc;
    };
    for (path, item) in paths.iter_mut() {
        let Some(item) = item.as_object_mut() else {
            continue;
        };
        // Token bodies are optional (a name for the token).
        if path.ends_with("/tokens")
            && let Some(b) = item.get_mut("post").and_then(|o| o.get_mut("requestBody"))
        {
            b["required"] = false.into();
        }
        for (_method, op) in item.iter_mut() {
            let Some(op) = op.as_object_mut() else {
                continue;
            };
            let params = op
                .get("parameters")
                .and_then(|p| p.as_array())
                .map_or(0, Vec::len);
            let body = op.get("requestBody");
            let has_body = body.is_some();
            let json_body = body
                .and_then(|b| b.pointer("/content/application~1json"))
                .is_some();
            let any_role = ANY_ROLE.contains(&path.as_str());
            let mut add = vec![(
                "401",
                "`unauthenticated`: no token, or an unknown, expired or revoked one",
            )];
            if !any_role {
                add.push(("403", "`forbidden`: the caller's role may not do this"));
            }
            if !any_role || path.contains('{') {
                add.push((
                    "404",
                    "`not_found`: no such object, or one the caller may not see",
                ));
            }
            if params > 0 || has_body {
                add.push(("400", "`invalid_request`: malformed parameters or body"));
            }
            if has_body {
                add.push(("408", "`request_timeout`: the body stopped arriving"));
                add.push((
                    "413",
                    "`payload_too_large` (or a more specific `*_too_large`)",
                ));
            }
            if json_body {
                add.push((
                    "415",
                    "`unsupported_media_type`: not `Content-Type: application/json`",
                ));
                add.push((
                    "422",
                    "`invalid_request`: well-formed JSON of the wrong shape",
                ));
            }
            let responses = op
                .entry("responses")
                .or_insert_with(|| serde_json::json!({}));
            let Some(responses) = responses.as_object_mut() else {
                continue;
            };
            for (status, description) in add {
                responses.entry(status).or_insert_with(|| {
                    serde_json::json!({
                        "description": description,
                        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}}
                    })
                });
            }
        }
    }
    doc
}

struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{
            HttpAuthScheme, HttpBuilder, SecurityRequirement, SecurityScheme,
        };
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
        openapi.security = Some(vec![SecurityRequirement::new(
            "bearer",
            Vec::<String>::new(),
        )]);
    }
}

/// utoipa documents `u32` as `int32` (minimum 0), whose range stops at
/// 2^31 - 1 while the server accepts up to 2^32 - 1: document the real range.
fn widen_unsigned_int32(v: &mut serde_json::Value) {
    match v {
        serde_json::Value::Object(m) => {
            let unsigned32 = m.get("format").and_then(|f| f.as_str()) == Some("int32")
                && m.get("minimum").and_then(|x| x.as_f64()) == Some(0.0)
                && m.get("maximum").is_none();
            if unsigned32 {
                m.insert("format".into(), "int64".into());
                m.insert("maximum".into(), u32::MAX.into());
            }
            m.values_mut().for_each(widen_unsigned_int32);
        }
        serde_json::Value::Array(a) => a.iter_mut().for_each(widen_unsigned_int32),
        _ => {}
    }
}

/// Streamed uploads (modules, datasets) are raw bytes, not JSON arrays;
/// path digests have a pattern.
fn raw_bodies_are_binary(doc: &mut serde_json::Value) {
    let Some(paths) = doc.get_mut("paths").and_then(|p| p.as_object_mut()) else {
        return;
    };
    for op in paths
        .values_mut()
        .filter_map(|i| i.as_object_mut())
        .flat_map(|i| i.values_mut())
    {
        // Digests in paths have one spelling.
        for p in op
            .get_mut("parameters")
            .and_then(|p| p.as_array_mut())
            .into_iter()
            .flatten()
        {
            if p["in"] == "path" && p["name"] == "digest" {
                p["schema"]["pattern"] = "^sha256:[0-9a-f]{64}$".into();
            }
        }
        let Some(content) = op
            .pointer_mut("/requestBody/content")
            .and_then(|c| c.as_object_mut())
        else {
            continue;
        };
        for (ct, media) in content.iter_mut() {
            if ct != "application/json" {
                media["schema"] = serde_json::json!({"type": "string", "format": "binary"});
            }
        }
        // A module upload is taken whatever its content type says.
        if let Some(wasm) = content.get("application/wasm").cloned() {
            content.entry("application/octet-stream").or_insert(wasm);
        }
    }
}

/// `GET /openapi.json` (no token needed).
pub async fn openapi_json() -> axum::Json<serde_json::Value> {
    static DOC: std::sync::OnceLock<serde_json::Value> = std::sync::OnceLock::new();
    axum::Json(DOC.get_or_init(openapi_document).clone())
}
