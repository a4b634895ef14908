//! Discovery (`/api`, `/apis`, `/apis/{g}`, `/apis/{g}/{v}`, `/version`) and OpenAPI documents.
//!
//! Discovery is served in the legacy (unaggregated) form; kubectl falls back to it when the
//! answer's content type is not the aggregated one it asked for first.

use std::collections::BTreeMap;

use axum::response::Response;
use http::{StatusCode, Uri};
use serde_json::{Value, json};

use super::Shared;
use super::error::{ApiError, json_response};
use super::store::{ResourceType, View};

pub(crate) fn version() -> Value {
    json!({
        "major": "1", "minor": "37", "emulationMajor": "1", "emulationMinor": "37",
        "gitVersion": "v1.37.0-testbed", "gitCommit": "0000000000000000000000000000000000000000",
        "gitTreeState": "clean", "buildDate": "2026-01-01T00:00:00Z",
        "goVersion": "go1.25.0", "compiler": "gc", "platform": "linux/amd64"
    })
}

pub(crate) fn api_versions() -> Value {
    json!({
        "kind": "APIVersions",
        "versions": ["v1"],
        "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": "127.0.0.1"}]
    })
}

fn groups(shared: &Shared) -> BTreeMap<String, Vec<String>> {
    let st = shared.lock();
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for rt in st.types.values().filter(|rt| !rt.group.is_empty()) {
        let versions = out.entry(rt.group.clone()).or_default();
        for v in &rt.versions {
            if !versions.contains(&v.name) {
                versions.push(v.name.clone());
            }
        }
    }
    out
}

fn group_json(name: &str, versions: &[String]) -> Value {
    let vs: Vec<Value> =
        versions.iter().map(|v| json!({"groupVersion": format!("{name}/{v}"), "version": v})).collect();
    json!({
        "name": name,
        "versions": vs,
        "preferredVersion": vs.first().cloned().unwrap_or(json!({})),
    })
}

pub(crate) fn api_groups(shared: &Shared) -> Value {
    let groups: Vec<Value> = groups(shared).iter().map(|(g, vs)| group_json(g, vs)).collect();
    json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups})
}

pub(crate) fn api_group(shared: &Shared, group: &str) -> Result<Response, ApiError> {
    let groups = groups(shared);
    let vs = groups.get(group).ok_or_else(|| ApiError::not_found_path(&format!("/apis/{group}")))?;
    let mut body = group_json(group, vs);
    body["kind"] = json!("APIGroup");
    body["apiVersion"] = json!("v1");
    Ok(json_response(StatusCode::OK, &body))
}

const ALL_VERBS: &[&str] = &["create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"];

fn types_in(shared: &Shared, group: &str, version: &str) -> Vec<ResourceType> {
    shared.lock().types.values().filter(|rt| rt.group == group && rt.version(version).is_some()).cloned().collect()
}

pub(crate) fn resource_list(shared: &Shared, group: &str, version: &str) -> Result<Response, ApiError> {
    let types = types_in(shared, group, version);
    if types.is_empty() {
        return Err(ApiError::not_found_path(&format!("/apis/{group}/{version}")));
    }
    let mut resources = Vec::new();
    for rt in &types {
        let verbs: Vec<&str> = match rt.view {
            View::CoreEvents => vec!["get", "list", "watch"],
            View::Stored => ALL_VERBS.to_vec(),
        };
        let mut r = json!({
            "name": rt.plural,
            "singularName": rt.singular,
            "namespaced": rt.namespaced,
            "kind": rt.kind,
            "verbs": verbs,
        });
        if !rt.short_names.is_empty() {
            r["shortNames"] = json!(rt.short_names);
        }
        if !rt.categories.is_empty() {
            r["categories"] = json!(rt.categories);
        }
        resources.push(r);
        if rt.status_subresource {
            resources.push(json!({
                "name": format!("{}/status", rt.plural),
                "singularName": "",
                "namespaced": rt.namespaced,
                "kind": rt.kind,
                "verbs": ["get", "patch", "update"],
            }));
        }
    }
    let gv = if group.is_empty() { version.to_string() } else { format!("{group}/{version}") };
    Ok(json_response(
        StatusCode::OK,
        &json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv, "resources": resources}),
    ))
}

/// `io.k8s...`-style definition name for a kind: reversed group, version, kind.
fn definition_name(rt: &ResourceType, version: &str) -> String {
    let mut parts: Vec<&str> = rt.group.split('.').collect();
    parts.reverse();
    let g = if rt.group.is_empty() { "io.k8s.api.core".to_string() } else { parts.join(".") };
    format!("{g}.{version}.{}", rt.kind)
}

fn gvk(rt: &ResourceType, version: &str) -> Value {
    json!([{"group": rt.group, "version": version, "kind": rt.kind}])
}

/// The schema published for a kind: the CRD schema for custom resources, an open object
/// (no client-side validation) for built-ins.
fn published_schema(rt: &ResourceType, version: &str) -> Value {
    let mut schema = rt
        .version(version)
        .and_then(|v| v.schema.clone())
        .unwrap_or_else(|| json!({"type": "object", "x-kubernetes-preserve-unknown-fields": true}));
    schema["x-kubernetes-group-version-kind"] = gvk(rt, version);
    schema
}

fn query_param(name: &str) -> Value {
    json!({"name": name, "in": "query", "schema": {"type": "string", "uniqueItems": true}})
}

/// Paths of one resource type (v3): enough for kubectl to see which query parameters
/// (`fieldValidation`, `fieldManager`, `dryRun`) the server supports per kind.
fn v3_paths(rt: &ResourceType, version: &str, out: &mut serde_json::Map<String, Value>) {
    let prefix = if rt.group.is_empty() { format!("/api/{version}") } else { format!("/apis/{}/{version}", rt.group) };
    let base = if rt.namespaced {
        format!("{prefix}/namespaces/{{namespace}}/{}", rt.plural)
    } else {
        format!("{prefix}/{}", rt.plural)
    };
    let ext = json!({"group": rt.group, "version": version, "kind": rt.kind});
    let params: Vec<Value> =
        ["dryRun", "fieldManager", "fieldValidation", "force"].iter().map(|n| query_param(n)).collect();
    let reference = json!({"$ref": format!("#/components/schemas/{}", definition_name(rt, version))});
    let op = |action: &str| {
        json!({
            "x-kubernetes-action": action,
            "x-kubernetes-group-version-kind": ext,
            "parameters": params,
            "responses": {"200": {"content": {"application/json": {"schema": reference}}}},
        })
    };
    out.insert(base.clone(), json!({"post": op("post"), "get": op("list")}));
    out.insert(
        format!("{base}/{{name}}"),
        json!({"get": op("get"), "put": op("put"), "patch": op("patch"), "delete": op("delete")}),
    );
}

fn v3_document(shared: &Shared, group: &str, version: &str) -> Option<Value> {
    let types: Vec<ResourceType> =
        types_in(shared, group, version).into_iter().filter(|rt| rt.view == View::Stored).collect();
    if types.is_empty() {
        return None;
    }
    let mut paths = serde_json::Map::new();
    let mut schemas = serde_json::Map::new();
    for rt in &types {
        v3_paths(rt, version, &mut paths);
        schemas.insert(definition_name(rt, version), published_schema(rt, version));
    }
    Some(json!({
        "openapi": "3.0.0",
        "info": {"title": "Kubernetes", "version": "v1.37.0"},
        "paths": paths,
        "components": {"schemas": schemas},
    }))
}

/// `/openapi/v2` and `/openapi/v3[/...]`.
pub(crate) fn openapi(shared: &Shared, rest: &[&str], uri: &Uri, accept: &str) -> Result<Response, ApiError> {
    match rest {
        ["v2"] if accept.contains("protobuf") => Ok(proto_v2_document()),
        ["v2"] => {
            let st = shared.lock();
            let mut defs = serde_json::Map::new();
            for rt in st.types.values().filter(|rt| rt.view == View::Stored) {
                for v in &rt.versions {
                    defs.insert(definition_name(rt, &v.name), published_schema(rt, &v.name));
                }
            }
            Ok(json_response(
                StatusCode::OK,
                &json!({"swagger": "2.0", "info": {"title": "Kubernetes", "version": "v1.37.0"},
                        "paths": {}, "definitions": defs}),
            ))
        }
        ["v3"] => {
            let rv = shared.lock().rv;
            let mut paths = serde_json::Map::new();
            paths.insert(
                "api/v1".to_string(),
                json!({"serverRelativeURL": format!("/openapi/v3/api/v1?hash={rv:016X}")}),
            );
            for (g, vs) in groups(shared) {
                for v in vs {
                    paths.insert(
                        format!("apis/{g}/{v}"),
                        json!({"serverRelativeURL": format!("/openapi/v3/apis/{g}/{v}?hash={rv:016X}")}),
                    );
                }
            }
            Ok(json_response(StatusCode::OK, &json!({"paths": paths})))
        }
        ["v3", "api", v] => v3_document(shared, "", v)
            .map(|d| json_response(StatusCode::OK, &d))
            .ok_or_else(|| ApiError::not_found_path(uri.path())),
        ["v3", "apis", g, v] => v3_document(shared, g, v)
            .map(|d| json_response(StatusCode::OK, &d))
            .ok_or_else(|| ApiError::not_found_path(uri.path())),
        _ => Err(ApiError::not_found_path(uri.path())),
    }
}

/// Appends a length-delimited protobuf field.
fn proto_field(out: &mut Vec<u8>, field: u8, bytes: &[u8]) {
    out.push((field << 3) | 2);
    let mut n = bytes.len();
    loop {
        let b = (n & 0x7f) as u8;
        n >>= 7;
        if n == 0 {
            out.push(b);
            break;
        }
        out.push(b | 0x80);
    }
    out.extend_from_slice(bytes);
}

/// kubectl reads `/openapi/v2` as protobuf (gnostic `openapi_v2.Document`) whatever the answer's
/// content type, and uses it for client-side validation of kinds missing from its cached v3
/// documents (a CR applied together with its CRD). An empty document (`swagger`, `info`, empty
/// `paths`) means "no schema known": kubectl skips client-side validation, the server validates.
fn proto_v2_document() -> Response {
    let mut info = Vec::new();
    proto_field(&mut info, 1, b"Kubernetes");
    proto_field(&mut info, 2, b"v1.37.0");
    let mut doc = Vec::new();
    proto_field(&mut doc, 1, b"2.0");
    proto_field(&mut doc, 2, &info);
    proto_field(&mut doc, 8, &[]);
    let mut resp = axum::response::IntoResponse::into_response((StatusCode::OK, doc));
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/com.github.proto-openapi.spec.v2.v1.0+protobuf"),
    );
    resp
}
