//! Routing and the resource handlers (GET/LIST/WATCH/POST/PUT/PATCH/DELETE).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use http::{HeaderMap, Method, StatusCode, Uri, header};
use serde_json::{Value, json};

use super::Shared;
use super::error::{ApiError, json_response};
use super::selectors::{FieldSelector, LabelSelector};
use super::store::{ObjKey, ResourceType, Store, View, now_rfc3339};
use super::{crd, discovery, events, patch, table, watch};

/// A parsed resource request path.
#[derive(Debug, Clone)]
pub(crate) struct Target {
    pub rt: ResourceType,
    pub version: String,
    pub ns: Option<String>,
    pub name: Option<String>,
    pub sub: Option<String>,
}

/// What the client wants back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Shape {
    Full,
    Table,
    Metadata,
}

fn shape(headers: &HeaderMap) -> Shape {
    let accept = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()).unwrap_or("");
    // The first acceptable media type wins; we can produce Table, PartialObjectMetadata and JSON.
    for part in accept.split(',') {
        if part.contains("as=Table") {
            return Shape::Table;
        }
        if part.contains("as=PartialObjectMetadata") {
            return Shape::Metadata;
        }
        if part.contains("json") || part.trim() == "*/*" {
            return Shape::Full;
        }
    }
    Shape::Full
}

fn parse_query(uri: &Uri) -> HashMap<String, String> {
    uri.query()
        .map(|q| {
            form_urlencoded::parse(q.as_bytes())
                .filter(|(k, _)| !k.is_empty())
                .map(|(k, v)| (k.into_owned(), v.into_owned()))
                .collect()
        })
        .unwrap_or_default()
}

/// The single entry point: routes every request.
pub(crate) async fn handle(
    State(shared): State<Arc<Shared>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let path = uri.path().to_string();
    let query = parse_query(&uri);
    let segs: Vec<String> = path.split('/').filter(|s| !s.is_empty()).map(percent_decode).collect();
    let segs: Vec<&str> = segs.iter().map(String::as_str).collect();
    tracing::debug!(%method, %uri, "fake apiserver request");
    let result = match segs.as_slice() {
        ["version"] => Ok(json_response(StatusCode::OK, &discovery::version())),
        ["healthz"] | ["livez"] | ["readyz"] => Ok((StatusCode::OK, "ok").into_response()),
        ["openapi", rest @ ..] => discovery::openapi(
            &shared,
            rest,
            &uri,
            headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()).unwrap_or(""),
        ),
        ["api"] => Ok(json_response(StatusCode::OK, &discovery::api_versions())),
        ["apis"] => Ok(json_response(StatusCode::OK, &discovery::api_groups(&shared))),
        ["api", "v1"] => discovery::resource_list(&shared, "", "v1"),
        ["apis", g] => discovery::api_group(&shared, g),
        ["apis", g, v] => discovery::resource_list(&shared, g, v),
        ["api", "v1", rest @ ..] => resource(&shared, "", "v1", rest, method, &query, &headers, body),
        ["apis", g, v, rest @ ..] => resource(&shared, g, v, rest, method, &query, &headers, body),
        _ => Err(ApiError::not_found_path(&path)),
    };
    match result {
        Ok(r) => r,
        Err(e) => {
            tracing::debug!(code = e.code, message = %e.message, "fake apiserver error");
            e.into_response()
        }
    }
}

fn percent_decode(s: &str) -> String {
    fn hex(b: u8) -> Option<u8> {
        char::from(b).to_digit(16).and_then(|d| u8::try_from(d).ok())
    }
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && let (Some(h), Some(l)) =
                (bytes.get(i + 1).copied().and_then(hex), bytes.get(i + 2).copied().and_then(hex))
        {
            out.push(h * 16 + l);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn parse_target(shared: &Shared, group: &str, version: &str, rest: &[&str]) -> Result<Target, ApiError> {
    let (ns, plural, name, sub) = match rest {
        ["namespaces", ns, plural, tail @ ..]
            if !(tail.is_empty() && (*plural == "status" || *plural == "finalize")) =>
        {
            (Some(ns.to_string()), *plural, tail.first(), tail.get(1))
        }
        [plural, tail @ ..] => (None, *plural, tail.first(), tail.get(1)),
        [] => return Err(ApiError::not_found_path("")),
    };
    if rest.len() > 5 || (ns.is_none() && rest.len() > 3) {
        return Err(ApiError::not_found_path(&rest.join("/")));
    }
    let rt = shared
        .lock()
        .find_type(group, version, plural)
        .ok_or_else(|| ApiError::not_found_path(&format!("{}/{version}/{plural}", group)))?;
    if ns.is_some() && !rt.namespaced {
        return Err(ApiError::not_found_path(&rest.join("/")));
    }
    if let Some(s) = sub
        && !(*s == "status" && rt.status_subresource)
    {
        return Err(ApiError::not_found_path(&rest.join("/")));
    }
    Ok(Target {
        rt,
        version: version.to_string(),
        ns,
        name: name.map(|s| s.to_string()),
        sub: sub.map(|s| s.to_string()),
    })
}

#[allow(clippy::too_many_arguments)]
fn resource(
    shared: &Arc<Shared>,
    group: &str,
    version: &str,
    rest: &[&str],
    method: Method,
    query: &HashMap<String, String>,
    headers: &HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let t = parse_target(shared, group, version, rest)?;
    let shape = shape(headers);
    let q = |k: &str| query.get(k).map(String::as_str);
    let read_only = t.rt.view != View::Stored;
    if read_only && method != Method::GET {
        return Err(ApiError::method_not_allowed(format!(
            "{} is a read-only view here; write events.k8s.io/v1 Events",
            t.rt.plural
        )));
    }
    let manager = q("fieldManager").map(ToString::to_string).unwrap_or_else(|| default_manager(headers));
    let dry_run = q("dryRun").is_some_and(|d| d == "All");
    match (method, &t.name) {
        (Method::GET, None) => {
            if q("watch").is_some_and(|w| w == "true" || w == "1") {
                let params = watch::Params::from_query(t, query, shape)?;
                Ok(watch::serve(shared.clone(), params))
            } else {
                list(shared, &t, query, shape)
            }
        }
        (Method::GET, Some(name)) => {
            let st = shared.lock();
            let obj = st.get(&t.rt.storage, &obj_key(&t, name)).ok_or_else(|| ApiError::not_found(&t.rt, name))?;
            let obj = present(&t.rt, &t.version, obj);
            let rv = st.rv.to_string();
            drop(st);
            Ok(shaped(&t, shape, vec![obj], &rv, false))
        }
        (Method::POST, None) => {
            let obj = parse_body(headers, &body)?;
            let created = create(shared, &t, obj, &manager, dry_run)?;
            Ok(shaped(&t, shape, vec![created], "", true))
        }
        (Method::PUT, Some(name)) => {
            let obj = parse_body(headers, &body)?;
            let updated = replace(shared, &t, name, obj, &manager, dry_run)?;
            Ok(shaped(&t, shape, vec![updated], "", false))
        }
        (Method::PATCH, Some(name)) => {
            let ct = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
            let force = q("force").is_some_and(|f| f == "true");
            let field_manager = q("fieldManager").map(ToString::to_string);
            let (code, obj) = patch_object(
                shared,
                &t,
                name,
                &ct,
                &body,
                PatchOpts { manager: &manager, field_manager: field_manager.as_deref(), force, dry_run },
            )?;
            let mut resp = shaped(&t, shape, vec![obj], "", false);
            *resp.status_mut() = code;
            Ok(resp)
        }
        (Method::DELETE, Some(name)) => {
            let opts: Value =
                if body.is_empty() { json!({}) } else { serde_json::from_slice(&body).unwrap_or(json!({})) };
            let dry =
                dry_run || opts.get("dryRun").and_then(Value::as_array).is_some_and(|a| a.iter().any(|d| d == "All"));
            let obj = delete(shared, &t, name, &opts, dry)?;
            Ok(shaped(&t, shape, vec![obj], "", false))
        }
        (Method::DELETE, None) => delete_collection(shared, &t, query),
        (m, _) => Err(ApiError::method_not_allowed(format!(
            "the server does not allow this method on the requested resource ({m})"
        ))),
    }
}

/// The default field manager: the user agent's program name, as the apiserver does.
fn default_manager(headers: &HeaderMap) -> String {
    headers
        .get(header::USER_AGENT)
        .and_then(|v| v.to_str().ok())
        .and_then(|ua| ua.split('/').next())
        .filter(|s| !s.is_empty())
        .unwrap_or("unknown")
        .to_string()
}

fn parse_body(headers: &HeaderMap, body: &[u8]) -> Result<Value, ApiError> {
    let ct = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("application/json");
    if ct.contains("protobuf") {
        return Err(ApiError::unsupported_media(format!(
            "the body of the request was in an unknown format - accepted media types include: application/json, application/yaml (got {ct})"
        )));
    }
    let v: Value = if ct.contains("yaml") {
        serde_yaml_ng::from_slice(body).map_err(|e| ApiError::bad_request(format!("invalid YAML body: {e}")))?
    } else {
        serde_json::from_slice(body).map_err(|e| ApiError::bad_request(format!("invalid JSON body: {e}")))?
    };
    if !v.is_object() {
        return Err(ApiError::bad_request("the request body must be an object"));
    }
    Ok(v)
}

fn obj_key(t: &Target, name: &str) -> ObjKey {
    (t.ns.clone().unwrap_or_default(), name.to_string())
}

/// The object as served in `version` (views converted).
pub(crate) fn present(rt: &ResourceType, version: &str, obj: &Value) -> Value {
    match rt.view {
        View::CoreEvents => events::to_core_v1(obj),
        View::Stored => {
            let mut o = obj.clone();
            o["apiVersion"] = json!(rt.api_version(version));
            o
        }
    }
}

fn metadata_only(obj: &Value) -> Value {
    json!({
        "apiVersion": "meta.k8s.io/v1",
        "kind": "PartialObjectMetadata",
        "metadata": obj.get("metadata").cloned().unwrap_or(json!({})),
    })
}

/// One object, in the shape the client asked for.
fn shaped(t: &Target, shape: Shape, objs: Vec<Value>, rv: &str, created: bool) -> Response {
    let code = if created { StatusCode::CREATED } else { StatusCode::OK };
    match shape {
        Shape::Table => json_response(code, &table::to_table(&t.rt, &t.version, &objs, true, rv)),
        Shape::Metadata => json_response(code, &objs.first().map(metadata_only).unwrap_or(json!({}))),
        Shape::Full => json_response(code, objs.first().unwrap_or(&json!({}))),
    }
}

/// Objects of a type that a request selects, presented.
pub(crate) fn select(
    st: &Store,
    rt: &ResourceType,
    version: &str,
    ns: Option<&str>,
    labels: &LabelSelector,
    fields: &FieldSelector,
) -> Vec<Value> {
    st.list(&rt.storage).iter().map(|o| present(rt, version, o)).filter(|o| matches(o, ns, labels, fields)).collect()
}

pub(crate) fn matches(obj: &Value, ns: Option<&str>, labels: &LabelSelector, fields: &FieldSelector) -> bool {
    let in_ns = ns.is_none_or(|n| obj.pointer("/metadata/namespace").and_then(Value::as_str) == Some(n));
    in_ns && labels.matches(obj) && fields.matches(obj)
}

pub(crate) fn selectors(query: &HashMap<String, String>) -> Result<(LabelSelector, FieldSelector), ApiError> {
    let labels = LabelSelector::parse(query.get("labelSelector").map(String::as_str).unwrap_or(""))?;
    let fields = FieldSelector::parse(query.get("fieldSelector").map(String::as_str).unwrap_or(""))?;
    Ok((labels, fields))
}

fn list(shared: &Shared, t: &Target, query: &HashMap<String, String>, shape: Shape) -> Result<Response, ApiError> {
    let (labels, fields) = selectors(query)?;
    let st = shared.lock();
    let items = select(&st, &t.rt, &t.version, t.ns.as_deref(), &labels, &fields);
    let rv = st.rv.to_string();
    drop(st);
    let body = match shape {
        Shape::Table => table::to_table(&t.rt, &t.version, &items, true, &rv),
        Shape::Metadata => json!({
            "apiVersion": "meta.k8s.io/v1",
            "kind": "PartialObjectMetadataList",
            "metadata": {"resourceVersion": rv, "continue": ""},
            "items": items.iter().map(metadata_only).collect::<Vec<_>>(),
        }),
        Shape::Full => json!({
            "apiVersion": t.rt.api_version(&t.version),
            "kind": format!("{}List", t.rt.kind),
            "metadata": {"resourceVersion": rv, "continue": ""},
            "items": items,
        }),
    };
    Ok(json_response(StatusCode::OK, &body))
}

/// How a write is recorded in `managedFields`.
enum Track<'a> {
    /// An update by this manager.
    Update(&'a str),
    /// Already recorded (server-side apply).
    Done,
}

struct WriteOpts<'a> {
    sub: &'a str,
    track: Track<'a>,
    dry_run: bool,
}

fn strip_volatile(v: &Value) -> Value {
    let mut v = v.clone();
    if let Some(meta) = v.get_mut("metadata").and_then(Value::as_object_mut) {
        meta.remove("resourceVersion");
        if let Some(Value::Array(mf)) = meta.get_mut("managedFields") {
            for e in mf {
                if let Some(e) = e.as_object_mut() {
                    e.remove("time");
                }
            }
        }
    }
    v
}

fn spec_part(v: &Value) -> Value {
    let mut v = v.clone();
    if let Some(m) = v.as_object_mut() {
        for k in ["metadata", "status", "apiVersion", "kind"] {
            m.remove(k);
        }
    }
    v
}

fn finalizers(v: &Value) -> Vec<String> {
    v.pointer("/metadata/finalizers")
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(Value::as_str).map(ToString::to_string).collect())
        .unwrap_or_default()
}

/// Kind-specific server behaviour before validation.
fn builtin_hooks(rt: &ResourceType, old: Option<&Value>, obj: &mut Value) {
    match (rt.group.as_str(), rt.plural.as_str()) {
        ("", "secrets") => {
            use base64::Engine as _;
            if let Some(sd) =
                obj.as_object_mut().and_then(|m| m.remove("stringData")).and_then(|v| v.as_object().cloned())
            {
                let data = obj.as_object_mut().map(|m| m.entry("data").or_insert_with(|| json!({})));
                if let Some(Value::Object(data)) = data {
                    for (k, v) in sd {
                        let s = v.as_str().unwrap_or("").to_string();
                        data.insert(k, json!(base64::engine::general_purpose::STANDARD.encode(s)));
                    }
                }
            }
            if obj.get("type").is_none() {
                obj["type"] = json!("Opaque");
            }
        }
        ("", "namespaces") => {
            if obj.pointer("/status/phase").is_none() {
                obj["status"] = json!({"phase": "Active"});
            }
            let name = obj.pointer("/metadata/name").cloned().unwrap_or(json!(""));
            if let Some(meta) = obj.get_mut("metadata").and_then(Value::as_object_mut) {
                let labels = meta.entry("labels").or_insert_with(|| json!({}));
                if let Some(l) = labels.as_object_mut() {
                    l.insert("kubernetes.io/metadata.name".to_string(), name);
                }
            }
        }
        ("apiextensions.k8s.io", "customresourcedefinitions") => {
            let status = crd::status(obj, old.and_then(|o| o.get("status")));
            obj["status"] = status;
        }
        _ => {}
    }
}

/// Validates and stores a write. `old` is the stored object (None on create).
#[allow(clippy::too_many_arguments)]
fn commit(
    st: &mut Store,
    rt: &ResourceType,
    version: &str,
    ns: &str,
    name: &str,
    old: Option<&Value>,
    mut new: Value,
    w: &WriteOpts<'_>,
) -> Result<Value, ApiError> {
    if !new.is_object() {
        return Err(ApiError::bad_request("the object must be a JSON object"));
    }
    let api_version = rt.api_version(version);
    new["apiVersion"] = json!(api_version);
    new["kind"] = json!(rt.kind);
    if !new.get("metadata").is_some_and(Value::is_object) {
        new["metadata"] = json!({});
    }
    if let Some(old) = old
        && rt.status_subresource
    {
        if w.sub == "status" {
            let status = new.get("status").cloned();
            let managed = new.pointer("/metadata/managedFields").cloned();
            new = old.clone();
            match status {
                Some(s) => new["status"] = s,
                None => {
                    if let Some(m) = new.as_object_mut() {
                        m.remove("status");
                    }
                }
            }
            if let (Some(mf), Some(meta)) = (managed, new.get_mut("metadata").and_then(Value::as_object_mut)) {
                meta.insert("managedFields".to_string(), mf);
            }
        } else {
            match old.get("status") {
                Some(s) => new["status"] = s.clone(),
                None => {
                    if let Some(m) = new.as_object_mut() {
                        m.remove("status");
                    }
                }
            }
        }
    }
    let Some(meta) = new.get_mut("metadata").and_then(Value::as_object_mut) else {
        return Err(ApiError::bad_request("metadata must be an object"));
    };
    meta.insert("name".to_string(), json!(name));
    if rt.namespaced {
        meta.insert("namespace".to_string(), json!(ns));
    } else {
        meta.remove("namespace");
    }
    if meta.get("finalizers").is_some_and(|f| f.as_array().is_none_or(Vec::is_empty)) {
        meta.remove("finalizers");
    }
    match old {
        Some(old) => {
            for k in ["uid", "creationTimestamp", "deletionTimestamp", "deletionGracePeriodSeconds", "generation"] {
                match old.pointer(&format!("/metadata/{k}")) {
                    Some(v) => {
                        meta.insert(k.to_string(), v.clone());
                    }
                    None => {
                        meta.remove(k);
                    }
                }
            }
        }
        None => {
            meta.insert("uid".to_string(), json!(uuid::Uuid::new_v4().to_string()));
            meta.insert("creationTimestamp".to_string(), json!(now_rfc3339()));
            for k in ["deletionTimestamp", "deletionGracePeriodSeconds", "resourceVersion"] {
                meta.remove(k);
            }
            if rt.generation {
                meta.insert("generation".to_string(), json!(1));
            } else {
                meta.remove("generation");
            }
        }
    }
    if old.is_none()
        && rt.status_subresource
        && w.sub != "status"
        && let Some(m) = new.as_object_mut()
    {
        m.remove("status");
    }
    if let Some(old) = old
        && old.pointer("/metadata/deletionTimestamp").is_some()
    {
        let before = finalizers(old);
        let added: Vec<String> = finalizers(&new).into_iter().filter(|f| !before.contains(f)).collect();
        if !added.is_empty() {
            return Err(ApiError::invalid_field(
                rt,
                name,
                "metadata.finalizers",
                &format!(
                    "Forbidden: no new finalizers can be added if the object is being deleted, found new finalizers {added:?}"
                ),
            ));
        }
    }
    builtin_hooks(rt, old, &mut new);
    if rt.group == "apiextensions.k8s.io"
        && let Err(errs) = crd::check(&new)
    {
        return Err(ApiError::invalid(rt, name, &errs));
    }
    if rt.custom
        && let Some(schema) = rt.version(version).and_then(|v| v.schema.as_ref())
    {
        new = crate::schema::validate(schema, &new, old).map_err(|errs| ApiError::invalid(rt, name, &errs))?;
    }
    if rt.generation
        && let Some(old) = old
        && spec_part(old) != spec_part(&new)
    {
        let g = old.pointer("/metadata/generation").and_then(Value::as_i64).unwrap_or(0);
        new["metadata"]["generation"] = json!(g + 1);
    }
    if let Track::Update(manager) = w.track {
        patch::track_update(old, &mut new, manager, &api_version, w.sub);
    }
    if let Some(old) = old
        && strip_volatile(old) == strip_volatile(&new)
    {
        return Ok(old.clone());
    }
    if w.dry_run {
        return Ok(new);
    }
    let key = (if rt.namespaced { ns.to_string() } else { String::new() }, name.to_string());
    if let Some(old) = old
        && old.pointer("/metadata/deletionTimestamp").is_some()
        && finalizers(&new).is_empty()
    {
        st.objects.entry(rt.storage.clone()).or_default().insert(key.clone(), new.clone());
        let gone = st.remove(&rt.storage, &key).unwrap_or(new);
        after_delete(st, rt, &gone);
        return Ok(gone);
    }
    let stored = st.put(&rt.storage, key, new, old.cloned());
    if rt.group == "apiextensions.k8s.io"
        && let Some(nt) = crd::resource_type(&stored)
    {
        st.add_type(nt);
    }
    Ok(stored)
}

fn after_delete(st: &mut Store, rt: &ResourceType, gone: &Value) {
    if rt.group == "apiextensions.k8s.io"
        && let Some(dt) = crd::resource_type(gone)
    {
        st.types.remove(&dt.key());
        st.drop_objects(&dt.storage);
    }
}

const NAME_CHARS: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";

fn random_suffix() -> String {
    let id = uuid::Uuid::new_v4();
    id.as_bytes().iter().take(5).map(|b| NAME_CHARS[usize::from(*b) % NAME_CHARS.len()] as char).collect()
}

fn check_namespace(t: &Target, obj: &Value) -> Result<String, ApiError> {
    let ns = t.ns.clone().unwrap_or_default();
    if t.rt.namespaced {
        if ns.is_empty() {
            return Err(ApiError::not_found_path("namespace required"));
        }
        if let Some(body_ns) = obj.pointer("/metadata/namespace").and_then(Value::as_str)
            && !body_ns.is_empty()
            && body_ns != ns
        {
            return Err(ApiError::bad_request(
                "the namespace of the provided object does not match the namespace sent on the request",
            ));
        }
    }
    Ok(ns)
}

fn create(shared: &Shared, t: &Target, obj: Value, manager: &str, dry_run: bool) -> Result<Value, ApiError> {
    let ns = check_namespace(t, &obj)?;
    let name = match obj.pointer("/metadata/name").and_then(Value::as_str) {
        Some(n) if !n.is_empty() => n.to_string(),
        _ => match obj.pointer("/metadata/generateName").and_then(Value::as_str) {
            Some(g) if !g.is_empty() => format!("{g}{}", random_suffix()),
            _ => {
                return Err(ApiError::invalid_field(
                    &t.rt,
                    "",
                    "metadata.name",
                    "Required value: name or generateName is required",
                ));
            }
        },
    };
    let result = {
        let mut st = shared.lock();
        let key = (ns.clone(), name.clone());
        if st.get(&t.rt.storage, &key).is_some() {
            return Err(ApiError::already_exists(&t.rt, &name));
        }
        commit(
            &mut st,
            &t.rt,
            &t.version,
            &ns,
            &name,
            None,
            obj,
            &WriteOpts { sub: "", track: Track::Update(manager), dry_run },
        )?
    };
    shared.notify();
    Ok(present(&t.rt, &t.version, &result))
}

fn rv_of(v: &Value) -> Option<&str> {
    v.pointer("/metadata/resourceVersion").and_then(Value::as_str).filter(|s| !s.is_empty())
}

fn replace(
    shared: &Shared,
    t: &Target,
    name: &str,
    obj: Value,
    manager: &str,
    dry_run: bool,
) -> Result<Value, ApiError> {
    let ns = check_namespace(t, &obj)?;
    if let Some(body_name) = obj.pointer("/metadata/name").and_then(Value::as_str)
        && body_name != name
    {
        return Err(ApiError::bad_request("the name of the object does not match the name on the URL"));
    }
    let result = {
        let mut st = shared.lock();
        let key = (ns.clone(), name.to_string());
        let old = st.get(&t.rt.storage, &key).cloned().ok_or_else(|| ApiError::not_found(&t.rt, name))?;
        if let Some(rv) = rv_of(&obj)
            && Some(rv) != rv_of(&old)
        {
            return Err(ApiError::conflict(&t.rt, name));
        }
        commit(
            &mut st,
            &t.rt,
            &t.version,
            &ns,
            name,
            Some(&old),
            obj,
            &WriteOpts { sub: t.sub.as_deref().unwrap_or(""), track: Track::Update(manager), dry_run },
        )?
    };
    shared.notify();
    Ok(present(&t.rt, &t.version, &result))
}

struct PatchOpts<'a> {
    manager: &'a str,
    field_manager: Option<&'a str>,
    force: bool,
    dry_run: bool,
}

fn patch_object(
    shared: &Shared,
    t: &Target,
    name: &str,
    content_type: &str,
    body: &[u8],
    o: PatchOpts<'_>,
) -> Result<(StatusCode, Value), ApiError> {
    let ns = t.ns.clone().unwrap_or_default();
    if t.rt.namespaced && ns.is_empty() {
        return Err(ApiError::not_found_path("namespace required"));
    }
    let sub = t.sub.as_deref().unwrap_or("");
    let ct = content_type.split(';').next().unwrap_or("").trim();
    let key = (ns.clone(), name.to_string());
    let mut code = StatusCode::OK;
    let result = {
        let mut st = shared.lock();
        let old = st.get(&t.rt.storage, &key).cloned();
        let (new, track) = match ct {
            "application/apply-patch+yaml" | "application/apply-patch+json" => {
                let Some(manager) = o.field_manager.filter(|m| !m.is_empty()) else {
                    return Err(ApiError::invalid(
                        &t.rt,
                        name,
                        &[crate::schema::FieldError {
                            field: "fieldManager".to_string(),
                            message: "Required value: is required for apply patch".to_string(),
                            reason: crate::schema::REASON_REQUIRED.to_string(),
                        }],
                    ));
                };
                let config: Value = serde_yaml_ng::from_slice(body)
                    .map_err(|e| ApiError::bad_request(format!("error decoding YAML: {e}")))?;
                if !config.is_object() {
                    return Err(ApiError::bad_request("the apply configuration must be an object"));
                }
                if let Some(kind) = config.get("kind").and_then(Value::as_str)
                    && kind != t.rt.kind
                {
                    return Err(ApiError::bad_request(format!(
                        "the kind in the apply configuration ({kind}) does not match {}",
                        t.rt.kind
                    )));
                }
                if let Some(n) = config.pointer("/metadata/name").and_then(Value::as_str)
                    && n != name
                {
                    return Err(ApiError::bad_request("the name of the object does not match the name on the URL"));
                }
                if let (Some(want), Some(old)) = (rv_of(&config), old.as_ref())
                    && Some(want) != rv_of(old)
                {
                    return Err(ApiError::conflict(&t.rt, name));
                }
                if old.is_none() {
                    if sub == "status" {
                        return Err(ApiError::not_found(&t.rt, name));
                    }
                    code = StatusCode::CREATED;
                }
                let mut applied = patch::server_side_apply(
                    old.as_ref(),
                    &config,
                    manager,
                    o.force,
                    &t.rt.api_version(&t.version),
                    sub,
                    t.rt.status_subresource,
                )?;
                if let Some(m) = applied.pointer_mut("/metadata").and_then(Value::as_object_mut) {
                    m.remove("resourceVersion");
                }
                (applied, Track::Done)
            }
            "application/merge-patch+json"
            | "application/json-patch+json"
            | "application/strategic-merge-patch+json" => {
                let Some(old) = old.as_ref() else {
                    return Err(ApiError::not_found(&t.rt, name));
                };
                let mut new = old.clone();
                match ct {
                    "application/json-patch+json" => patch::json_patch(&mut new, body)?,
                    _ => {
                        if ct == "application/strategic-merge-patch+json" && t.rt.custom {
                            return Err(ApiError::unsupported_media(format!(
                                "the body of the request was in an unknown format - accepted media types include: application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml (strategic merge patch is not supported for custom resources: {})",
                                t.rt.qualified_kind()
                            )));
                        }
                        let p: Value = serde_json::from_slice(body)
                            .map_err(|e| ApiError::bad_request(format!("invalid merge patch: {e}")))?;
                        let strategic = ct == "application/strategic-merge-patch+json";
                        let p = if strategic { strip_directives(p) } else { p };
                        patch::merge_patch(&mut new, &p);
                    }
                }
                if rv_of(&new) != rv_of(old) && rv_of(&new).is_some() {
                    return Err(ApiError::conflict(&t.rt, name));
                }
                (new, Track::Update(o.manager))
            }
            other => {
                return Err(ApiError::unsupported_media(format!(
                    "the body of the request was in an unknown format - accepted media types include: application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml (got {other:?})"
                )));
            }
        };
        commit(&mut st, &t.rt, &t.version, &ns, name, old.as_ref(), new, &WriteOpts { sub, track, dry_run: o.dry_run })?
    };
    shared.notify();
    Ok((code, present(&t.rt, &t.version, &result)))
}

/// Strategic merge patch directives (`$patch`, `$retainKeys`, `$setElementOrder/...`,
/// `$deleteFromPrimitiveList/...`) are dropped: built-ins are patched as merge patches.
fn strip_directives(v: Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(
            m.into_iter().filter(|(k, _)| !k.starts_with('$')).map(|(k, v)| (k, strip_directives(v))).collect(),
        ),
        other => other,
    }
}

fn delete(shared: &Shared, t: &Target, name: &str, opts: &Value, dry_run: bool) -> Result<Value, ApiError> {
    if t.sub.is_some() {
        return Err(ApiError::method_not_allowed("cannot delete a subresource"));
    }
    let key = obj_key(t, name);
    let result = {
        let mut st = shared.lock();
        let old = st.get(&t.rt.storage, &key).cloned().ok_or_else(|| ApiError::not_found(&t.rt, name))?;
        if let Some(want) = opts.pointer("/preconditions/uid").and_then(Value::as_str)
            && old.pointer("/metadata/uid").and_then(Value::as_str) != Some(want)
        {
            return Err(ApiError::conflict(&t.rt, name));
        }
        if let Some(want) = opts.pointer("/preconditions/resourceVersion").and_then(Value::as_str)
            && rv_of(&old) != Some(want)
        {
            return Err(ApiError::conflict(&t.rt, name));
        }
        if dry_run {
            old
        } else if !finalizers(&old).is_empty() {
            if old.pointer("/metadata/deletionTimestamp").is_some() {
                old
            } else {
                let mut new = old.clone();
                new["metadata"]["deletionTimestamp"] = json!(now_rfc3339());
                new["metadata"]["deletionGracePeriodSeconds"] = json!(0);
                st.put(&t.rt.storage, key, new, Some(old))
            }
        } else {
            let gone = st.remove(&t.rt.storage, &key).ok_or_else(|| ApiError::not_found(&t.rt, name))?;
            after_delete(&mut st, &t.rt, &gone);
            gone
        }
    };
    shared.notify();
    Ok(present(&t.rt, &t.version, &result))
}

fn delete_collection(shared: &Shared, t: &Target, query: &HashMap<String, String>) -> Result<Response, ApiError> {
    let (labels, fields) = selectors(query)?;
    let names: Vec<String> = {
        let st = shared.lock();
        select(&st, &t.rt, &t.version, t.ns.as_deref(), &labels, &fields)
            .iter()
            .filter_map(|o| o.pointer("/metadata/name").and_then(Value::as_str))
            .map(ToString::to_string)
            .collect()
    };
    let mut items = Vec::new();
    for n in names {
        if let Ok(o) = delete(shared, t, &n, &json!({}), false) {
            items.push(o);
        }
    }
    let rv = shared.lock().rv.to_string();
    Ok(json_response(
        StatusCode::OK,
        &json!({
            "apiVersion": t.rt.api_version(&t.version),
            "kind": format!("{}List", t.rt.kind),
            "metadata": {"resourceVersion": rv},
            "items": items,
        }),
    ))
}

/// Installs or updates a CRD without HTTP (for [`super::FakeApiServer::install_crd`]).
pub(crate) fn install_crd(shared: &Shared, mut crd: Value) -> Result<(), ApiError> {
    let name = crd.pointer("/metadata/name").and_then(Value::as_str).unwrap_or("").to_string();
    {
        let mut st = shared.lock();
        let rt = st
            .find_type("apiextensions.k8s.io", "v1", "customresourcedefinitions")
            .ok_or_else(|| ApiError::internal("CRD type missing"))?;
        let key = (String::new(), name.clone());
        let old = st.get(&rt.storage, &key).cloned();
        if let Some(m) = crd.pointer_mut("/metadata").and_then(Value::as_object_mut) {
            m.remove("resourceVersion");
        }
        commit(
            &mut st,
            &rt,
            "v1",
            "",
            &name,
            old.as_ref(),
            crd,
            &WriteOpts { sub: "", track: Track::Update("testbed"), dry_run: false },
        )?;
    }
    shared.notify();
    Ok(())
}

/// Watch timeout when the client gives none.
pub(crate) const DEFAULT_WATCH_TIMEOUT: Duration = Duration::from_secs(1800);
