//! The served OpenAPI document is a valid, self-consistent OpenAPI 3.1
//! document: every `$ref` resolves; path parameters are exactly the path
//! template's names; query parameters are declared `in: query`; every
//! operation documents the errors every route can return, as the envelope;
//! integers carry formats that hold the values the server accepts.
//! (`scripts/schemathesis.sh` checks the live server against it.)

use std::collections::BTreeSet;

use serde_json::Value;

fn doc() -> Value {
    kasbah_server::openapi_document()
}

/// Every `$ref` in `v`, with where it was found.
fn refs<'a>(v: &'a Value, at: String, out: &mut Vec<(String, &'a str)>) {
    match v {
        Value::Object(m) => {
            for (k, x) in m {
                if k == "$ref" {
                    if let Some(r) = x.as_str() {
                        out.push((at.clone(), r));
                    }
                } else {
                    refs(x, format!("{at}/{k}"), out);
                }
            }
        }
        Value::Array(a) => {
            for (i, x) in a.iter().enumerate() {
                refs(x, format!("{at}/{i}"), out);
            }
        }
        _ => {}
    }
}

/// Every schema object in `v` (anything with a `type`).
fn schemas<'a>(v: &'a Value, at: String, out: &mut Vec<(String, &'a Value)>) {
    match v {
        Value::Object(m) => {
            if m.get("type").is_some_and(|t| t.is_string() || t.is_array()) {
                out.push((at.clone(), v));
            }
            for (k, x) in m {
                schemas(x, format!("{at}/{k}"), out);
            }
        }
        Value::Array(a) => {
            for (i, x) in a.iter().enumerate() {
                schemas(x, format!("{at}/{i}"), out);
            }
        }
        _ => {}
    }
}

const METHODS: &[&str] = &[
    "get", "put", "post", "delete", "patch", "head", "options", "trace",
];

fn operations(d: &Value) -> Vec<(String, String, &Value)> {
    let mut out = Vec::new();
    for (path, item) in d["paths"].as_object().expect("paths") {
        for (method, op) in item.as_object().expect("path item") {
            assert!(
                METHODS.contains(&method.as_str()),
                "{path}: unknown key {method}"
            );
            out.push((path.clone(), method.clone(), op));
        }
    }
    out
}

#[test]
fn the_document_is_well_formed() {
    let d = doc();
    assert!(
        d["openapi"].as_str().is_some_and(|v| v.starts_with("3.")),
        "{}",
        d["openapi"]
    );
    assert!(d["info"]["title"].is_string() && d["info"]["version"].is_string());
    assert!(d["components"]["securitySchemes"]["bearer"].is_object());
    let ops = operations(&d);
    assert!(ops.len() >= 30, "{} operations", ops.len());
    let mut ids = BTreeSet::new();
    for (path, method, op) in &ops {
        if let Some(id) = op["operationId"].as_str() {
            assert!(
                ids.insert(id.to_string()),
                "{method} {path}: operationId {id} twice"
            );
        }
        assert!(
            op["responses"].as_object().is_some_and(|r| !r.is_empty()),
            "{method} {path}: no responses"
        );
    }
}

#[test]
fn every_ref_resolves() {
    let d = doc();
    let mut found = Vec::new();
    refs(&d, String::new(), &mut found);
    assert!(!found.is_empty());
    let mut missing = Vec::new();
    for (at, r) in &found {
        let ok = r.strip_prefix('#').and_then(|p| d.pointer(p)).is_some();
        if !ok {
            missing.push(format!("{at}: {r}"));
        }
    }
    assert!(
        missing.is_empty(),
        "unresolved $refs:\n{}",
        missing.join("\n")
    );
}

#[test]
fn parameters_match_the_path_template() {
    let d = doc();
    let mut problems = Vec::new();
    for (path, method, op) in operations(&d) {
        let template: BTreeSet<String> = path
            .split('/')
            .filter_map(|s| s.strip_prefix('{').and_then(|s| s.strip_suffix('}')))
            .map(str::to_string)
            .collect();
        let mut in_path = BTreeSet::new();
        let mut seen = BTreeSet::new();
        for p in op["parameters"]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or_default()
        {
            let name = p["name"].as_str().expect("parameter name").to_string();
            let loc = p["in"].as_str().expect("parameter in").to_string();
            if !["path", "query", "header", "cookie"].contains(&loc.as_str()) {
                problems.push(format!("{method} {path}: {name} is in {loc:?}"));
            }
            if !seen.insert((name.clone(), loc.clone())) {
                problems.push(format!("{method} {path}: {name} declared twice"));
            }
            if p["schema"].is_null() && p["content"].is_null() {
                problems.push(format!("{method} {path}: {name} has no schema"));
            }
            if loc == "path" {
                if p["required"] != Value::Bool(true) {
                    problems.push(format!(
                        "{method} {path}: path parameter {name} not required"
                    ));
                }
                in_path.insert(name);
            }
        }
        if in_path != template {
            problems.push(format!(
                "{method} {path}: path parameters {in_path:?}, template {template:?}"
            ));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn every_operation_documents_its_errors_as_the_envelope() {
    let d = doc();
    let mut problems = Vec::new();
    for (path, method, op) in operations(&d) {
        let r = &op["responses"];
        let has = |s: &str| !r[s].is_null();
        let params = op["parameters"].as_array().map_or(0, Vec::len);
        let body = &op["requestBody"];
        let mut want = vec!["401"];
        if params > 0 || !body.is_null() {
            want.push("400");
        }
        if path.contains('{') {
            want.push("404");
        }
        if !body.is_null() {
            want.extend(["408", "413"]);
        }
        if !body["content"]["application/json"].is_null() {
            want.extend(["415", "422"]);
        }
        for s in want {
            if !has(s) {
                problems.push(format!("{method} {path}: {s} not documented"));
            }
        }
        for (status, resp) in r.as_object().expect("responses") {
            if status.starts_with('4') || status.starts_with('5') {
                let schema = &resp["content"]["application/json"]["schema"]["$ref"];
                if schema != "#/components/schemas/ErrorBody" {
                    problems.push(format!("{method} {path}: {status} is not the envelope"));
                }
            }
        }
    }
    // The one route that queues work documents being full.
    assert!(!d["paths"]["/v1/runs"]["post"]["responses"]["429"].is_null());
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn integers_have_formats_that_hold_what_the_server_accepts() {
    let d = doc();
    let mut found = Vec::new();
    schemas(&d, String::new(), &mut found);
    let mut problems = Vec::new();
    let mut integers = 0;
    for (at, s) in found {
        let is_int = s["type"] == "integer"
            || s["type"]
                .as_array()
                .is_some_and(|a| a.iter().any(|t| t == "integer"));
        if !is_int {
            continue;
        }
        integers += 1;
        let min = s["minimum"].as_f64();
        let max = s["maximum"].as_f64();
        match s["format"].as_str() {
            Some("int32") => {
                // utoipa's u32 is int32 from 0: 2^31 and above would be
                // refused by a client trusting the document, accepted by
                // the server.
                if min == Some(0.0) {
                    problems.push(format!("{at}: unsigned documented as int32"));
                }
                if max.is_some_and(|m| m > f64::from(i32::MAX)) {
                    problems.push(format!("{at}: int32 with maximum {max:?}"));
                }
            }
            Some("int64") => {
                if max.is_some_and(|m| m > 9.223_372_036_854_776e18) {
                    problems.push(format!("{at}: int64 with maximum {max:?}"));
                }
            }
            other => problems.push(format!("{at}: integer format {other:?}")),
        }
    }
    assert!(integers > 10, "{integers} integers");
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    // The query parameters the issue found declared in the path.
    let runs = &d["paths"]["/v1/runs"]["get"]["parameters"];
    assert!(
        runs.as_array()
            .expect("params")
            .iter()
            .all(|p| p["in"] == "query"),
        "{runs}"
    );
    assert!(!d["components"]["schemas"]["Period"].is_null());
    // u32 as it is: up to 2^32 - 1.
    let limit = &d["paths"]["/v1/runs"]["get"]["parameters"]
        .as_array()
        .expect("params")
        .iter()
        .find(|p| p["name"] == "limit")
        .expect("limit")["schema"];
    assert_eq!(limit["maximum"], u32::MAX, "{limit}");
    // Uploads are bytes.
    assert_eq!(
        d["paths"]["/v1/modules"]["post"]["requestBody"]["content"]["application/wasm"]["schema"]["format"],
        "binary"
    );
}

/// Secrets (issue 18): the three operations are documented, a run record
/// names granted secrets by a schema that exists, and no example or
/// description in the document carries a value.
#[test]
fn secrets_are_documented_by_name_and_version_only() {
    let doc = kasbah_server::openapi_document();
    let paths = &doc["paths"];
    assert!(paths["/v1/secrets"]["get"].is_object());
    assert!(paths["/v1/secrets/{name}"]["put"].is_object());
    assert!(paths["/v1/secrets/{name}"]["delete"].is_object());
    for status in ["200", "403", "409", "413", "422"] {
        assert!(
            paths["/v1/secrets/{name}"]["put"]["responses"][status].is_object(),
            "PUT documents {status}"
        );
    }
    let schemas = &doc["components"]["schemas"];
    let record = &schemas["SecretRecord"]["properties"];
    assert!(record["name"].is_object() && record["version"].is_object());
    assert!(record.get("value").is_none(), "a record has no value field");
    assert!(
        schemas["RunSecret"].is_object(),
        "RunRecord.secrets refers to it"
    );
    assert!(
        schemas["RunRecord"]["properties"]["secrets"].is_object(),
        "run records name granted secrets"
    );
}
