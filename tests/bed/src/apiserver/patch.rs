//! PATCH semantics: JSON merge patch, JSON patch, and server-side apply with per-field
//! `managedFields` tracking.
//!
//! Field ownership model (simplified but faithful where it matters): a field is a path of map
//! keys down to a leaf; scalars and lists are leaves (lists are atomic), an empty map is a leaf.
//! Managers are tracked per `(manager, operation, subresource)` and written to
//! `metadata.managedFields` in the real `FieldsV1` format (`{"f:spec":{"f:replicas":{}}}`).
//! An apply conflicts when another manager owns a field the applied configuration sets to a
//! different value than the live one; `force` takes ownership instead. Fields a manager stops
//! applying are removed unless another manager owns them. Updates (PUT/PATCH/POST) give their
//! manager the fields they changed.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{Map, Value, json};

use super::error::ApiError;
use super::store::now_rfc3339;

/// A field path.
pub(crate) type FieldPath = Vec<String>;
/// A set of owned fields.
pub(crate) type FieldSet = BTreeSet<FieldPath>;

/// Applies an RFC 7386 merge patch.
pub(crate) fn merge_patch(target: &mut Value, patch: &Value) {
    json_patch::merge(target, patch);
}

/// Applies an RFC 6902 JSON patch. As Go's apiserver does, a `test` of a missing path against
/// `null` passes (kube-runtime's finalizer helper relies on it).
pub(crate) fn json_patch(target: &mut Value, body: &[u8]) -> Result<(), ApiError> {
    let patch: json_patch::Patch =
        serde_json::from_slice(body).map_err(|e| ApiError::bad_request(format!("invalid JSON patch: {e}")))?;
    for (i, op) in patch.0.iter().enumerate() {
        if let json_patch::PatchOperation::Test(t) = op
            && t.value.is_null()
            && target.pointer(t.path.as_str()).is_none_or(Value::is_null)
        {
            continue;
        }
        json_patch::patch(target, std::slice::from_ref(op)).map_err(|e| {
            ApiError::new(
                422,
                "Invalid",
                format!("the server rejected our request due to an error in our request: operation {i}: {e}"),
            )
        })?;
    }
    Ok(())
}

/// Paths of the leaves of `v` (see the module docs), below `prefix`.
pub(crate) fn leaves(v: &Value, prefix: &mut FieldPath, out: &mut FieldSet) {
    match v {
        Value::Object(m) if !m.is_empty() => {
            for (k, child) in m {
                prefix.push(k.clone());
                leaves(child, prefix, out);
                prefix.pop();
            }
        }
        _ => {
            if !prefix.is_empty() {
                out.insert(prefix.clone());
            }
        }
    }
}

/// Metadata fields that are not owned by anyone.
const SERVER_META: &[&str] = &[
    "name",
    "namespace",
    "generateName",
    "uid",
    "resourceVersion",
    "generation",
    "creationTimestamp",
    "deletionTimestamp",
    "deletionGracePeriodSeconds",
    "managedFields",
    "selfLink",
];

/// The owned fields of an object: every leaf but `apiVersion`, `kind` and server-set metadata.
/// `status_only`: `Some(true)` keeps only `status`, `Some(false)` drops `status`.
pub(crate) fn owned_fields(obj: &Value, status_only: Option<bool>) -> FieldSet {
    let mut all = FieldSet::new();
    leaves(obj, &mut Vec::new(), &mut all);
    all.into_iter()
        .filter(|p| {
            let first = p.first().map(String::as_str).unwrap_or("");
            if first == "apiVersion" || first == "kind" {
                return false;
            }
            if first == "metadata" {
                let second = p.get(1).map(String::as_str).unwrap_or("");
                if SERVER_META.contains(&second) {
                    return false;
                }
            }
            match status_only {
                Some(true) => first == "status",
                Some(false) => first != "status",
                None => true,
            }
        })
        .collect()
}

fn get_path<'a>(v: &'a Value, p: &[String]) -> Option<&'a Value> {
    let mut cur = v;
    for seg in p {
        cur = cur.get(seg)?;
    }
    Some(cur)
}

fn pointer(p: &[String]) -> String {
    p.iter().map(|s| format!("/{}", s.replace('~', "~0").replace('/', "~1"))).collect()
}

fn remove_path(v: &mut Value, p: &[String]) {
    for depth in (1..=p.len()).rev() {
        let Some((last, parents)) = p[..depth].split_last() else {
            return;
        };
        if depth < p.len() && !get_path(v, &p[..depth]).and_then(Value::as_object).is_some_and(Map::is_empty) {
            // Only maps left empty by the removal are dropped.
            return;
        }
        match v.pointer_mut(&pointer(parents)).and_then(Value::as_object_mut) {
            Some(m) => {
                m.remove(last);
            }
            None => return,
        }
    }
}

/// Deep-merges `src` into `dst`: maps recursively, everything else replaced; `null` removes.
fn deep_merge(dst: &mut Value, src: &Value) {
    match (dst, src) {
        (Value::Object(d), Value::Object(s)) => {
            for (k, v) in s {
                if v.is_null() {
                    d.remove(k);
                } else if let Some(existing) = d.get_mut(k)
                    && existing.is_object()
                    && v.is_object()
                {
                    deep_merge(existing, v);
                } else {
                    d.insert(k.clone(), v.clone());
                }
            }
        }
        (d, s) => *d = s.clone(),
    }
}

/// One `metadata.managedFields` entry, parsed.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct ManagedEntry {
    pub manager: String,
    pub operation: String,
    pub api_version: String,
    pub subresource: String,
    pub time: String,
    pub fields: FieldSet,
}

fn fields_from_v1(v: &Value, prefix: &mut FieldPath, out: &mut FieldSet) {
    let Some(m) = v.as_object() else {
        return;
    };
    if m.is_empty() && !prefix.is_empty() {
        out.insert(prefix.clone());
        return;
    }
    for (k, child) in m {
        if k == "." {
            if !prefix.is_empty() {
                out.insert(prefix.clone());
            }
        } else if let Some(name) = k.strip_prefix("f:") {
            prefix.push(name.to_string());
            fields_from_v1(child, prefix, out);
            prefix.pop();
        } else if !prefix.is_empty() {
            // `k:`/`v:`/`i:` list keys: this model treats lists as atomic.
            out.insert(prefix.clone());
        }
    }
}

fn fields_to_v1(fields: &FieldSet) -> Value {
    fn build(fields: &[&FieldPath], depth: usize) -> Value {
        let mut out = Map::new();
        let mut children: BTreeMap<&str, Vec<&FieldPath>> = BTreeMap::new();
        for p in fields {
            match p.get(depth) {
                Some(seg) => children.entry(seg.as_str()).or_default().push(p),
                None => {
                    out.insert(".".to_string(), json!({}));
                }
            }
        }
        if children.is_empty() {
            return json!({});
        }
        for (seg, sub) in children {
            out.insert(format!("f:{seg}"), build(&sub, depth + 1));
        }
        Value::Object(out)
    }
    let all: Vec<&FieldPath> = fields.iter().collect();
    build(&all, 0)
}

/// Reads `metadata.managedFields`.
pub(crate) fn read_managed(obj: &Value) -> Vec<ManagedEntry> {
    let Some(list) = obj.pointer("/metadata/managedFields").and_then(Value::as_array) else {
        return Vec::new();
    };
    list.iter()
        .filter_map(|e| {
            let mut fields = FieldSet::new();
            fields_from_v1(e.get("fieldsV1")?, &mut Vec::new(), &mut fields);
            Some(ManagedEntry {
                manager: e.get("manager")?.as_str()?.to_string(),
                operation: e.get("operation").and_then(Value::as_str).unwrap_or("Update").to_string(),
                api_version: e.get("apiVersion").and_then(Value::as_str).unwrap_or("").to_string(),
                subresource: e.get("subresource").and_then(Value::as_str).unwrap_or("").to_string(),
                time: e.get("time").and_then(Value::as_str).unwrap_or("").to_string(),
                fields,
            })
        })
        .collect()
}

/// Writes `metadata.managedFields` (entries without fields are dropped).
pub(crate) fn write_managed(obj: &mut Value, entries: &[ManagedEntry]) {
    let list: Vec<Value> = entries
        .iter()
        .filter(|e| !e.fields.is_empty())
        .map(|e| {
            let mut v = json!({
                "manager": e.manager,
                "operation": e.operation,
                "apiVersion": e.api_version,
                "time": e.time,
                "fieldsType": "FieldsV1",
                "fieldsV1": fields_to_v1(&e.fields),
            });
            if !e.subresource.is_empty() {
                v["subresource"] = json!(e.subresource);
            }
            v
        })
        .collect();
    if let Some(meta) = obj.get_mut("metadata").and_then(Value::as_object_mut) {
        if list.is_empty() {
            meta.remove("managedFields");
        } else {
            meta.insert("managedFields".to_string(), Value::Array(list));
        }
    }
}

fn overlaps(a: &[String], b: &[String]) -> bool {
    a.starts_with(b) || b.starts_with(a)
}

/// Records an update (PUT/PATCH/POST) by `manager`: it owns the fields it changed; those are
/// taken from other managers; removed fields are owned by nobody.
pub(crate) fn track_update(old: Option<&Value>, new: &mut Value, manager: &str, api_version: &str, subresource: &str) {
    let mut entries = old.map(read_managed).unwrap_or_default();
    let status_only = if subresource == "status" { Some(true) } else { None };
    let new_fields = owned_fields(new, status_only);
    let old_fields = old.map(|o| owned_fields(o, status_only)).unwrap_or_default();
    let changed: FieldSet =
        new_fields.iter().filter(|p| old.and_then(|o| get_path(o, p)) != get_path(new, p)).cloned().collect();
    let removed: FieldSet = old_fields.difference(&new_fields).cloned().collect();
    for e in &mut entries {
        e.fields.retain(|p| !removed.contains(p));
        if e.manager != manager {
            e.fields.retain(|p| !changed.iter().any(|c| overlaps(c, p)));
        }
    }
    if !changed.is_empty() {
        let now = now_rfc3339();
        match entries
            .iter_mut()
            .find(|e| e.manager == manager && e.operation == "Update" && e.subresource == subresource)
        {
            Some(e) => {
                e.fields.extend(changed);
                e.time = now;
                e.api_version = api_version.to_string();
            }
            None => entries.push(ManagedEntry {
                manager: manager.to_string(),
                operation: "Update".to_string(),
                api_version: api_version.to_string(),
                subresource: subresource.to_string(),
                time: now,
                fields: changed,
            }),
        }
    }
    write_managed(new, &entries);
}

/// Server-side apply of `config` by `manager` onto `live` (or onto a new object).
/// Returns the merged object with updated `managedFields`, or a 409 with
/// `FieldManagerConflict` causes.
pub(crate) fn server_side_apply(
    live: Option<&Value>,
    config: &Value,
    manager: &str,
    force: bool,
    api_version: &str,
    subresource: &str,
    has_status_subresource: bool,
) -> Result<Value, ApiError> {
    let status_only = if subresource == "status" {
        Some(true)
    } else if has_status_subresource {
        Some(false)
    } else {
        None
    };
    let applied = owned_fields(config, status_only);
    let mut entries = live.map(read_managed).unwrap_or_default();
    let empty = json!({});
    let live_v = live.unwrap_or(&empty);

    // Conflicts with other managers.
    let mut conflicts: Vec<(String, String)> = Vec::new();
    for e in &mut entries {
        if e.manager == manager {
            continue;
        }
        let mut taken = Vec::new();
        for p in &applied {
            for q in &e.fields {
                if overlaps(p, q) && get_path(live_v, p) != get_path(config, p) {
                    taken.push(q.clone());
                    conflicts.push((e.manager.clone(), format!(".{}", p.join("."))));
                }
            }
        }
        if force {
            e.fields.retain(|q| !taken.contains(q));
        }
    }
    if !force && !conflicts.is_empty() {
        conflicts.sort();
        conflicts.dedup();
        let causes: Vec<Value> = conflicts
            .iter()
            .map(|(m, f)| {
                json!({"reason": "FieldManagerConflict", "message": format!("conflict with \"{m}\""), "field": f})
            })
            .collect();
        let list: Vec<String> = conflicts.iter().map(|(m, f)| format!("conflict with \"{m}\": {f}")).collect();
        let n = conflicts.len();
        let mut err = ApiError::new(
            409,
            "Conflict",
            format!("Apply failed with {n} conflict{}: {}", if n == 1 { "" } else { "s" }, list.join("\n")),
        );
        err.details = Some(json!({"causes": causes}));
        return Err(err);
    }

    // Fields this manager applied before and no longer applies go away, unless others own them.
    let mut result = live.cloned().unwrap_or_else(|| json!({}));
    let previous: FieldSet = entries
        .iter()
        .filter(|e| e.manager == manager && e.operation == "Apply" && e.subresource == subresource)
        .flat_map(|e| e.fields.iter().cloned())
        .collect();
    for p in previous.difference(&applied) {
        let owned_by_other = entries.iter().any(|e| e.manager != manager && e.fields.iter().any(|q| overlaps(p, q)));
        if !owned_by_other {
            remove_path(&mut result, p);
        }
    }
    let mut cfg = config.clone();
    match status_only {
        Some(true) => {
            if let Some(m) = cfg.as_object_mut() {
                m.retain(|k, _| k == "status" || k == "metadata");
            }
        }
        Some(false) => {
            if let Some(m) = cfg.as_object_mut() {
                m.remove("status");
            }
        }
        None => {}
    }
    deep_merge(&mut result, &cfg);

    let now = now_rfc3339();
    entries.retain(|e| !(e.manager == manager && e.operation == "Apply" && e.subresource == subresource));
    entries.push(ManagedEntry {
        manager: manager.to_string(),
        operation: "Apply".to_string(),
        api_version: api_version.to_string(),
        subresource: subresource.to_string(),
        time: now,
        fields: applied,
    });
    if !result.get("metadata").is_some_and(Value::is_object) {
        result["metadata"] = json!({});
    }
    write_managed(&mut result, &entries);
    Ok(result)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    #[test]
    fn json_patch_test_null_passes_on_missing_path() {
        let mut doc = json!({"metadata": {"name": "a"}});
        let body = br#"[{"op":"test","path":"/metadata/finalizers","value":null},
                        {"op":"add","path":"/metadata/finalizers","value":["x"]}]"#;
        json_patch(&mut doc, body).unwrap();
        assert_eq!(doc["metadata"]["finalizers"], json!(["x"]));
        let err = json_patch(&mut doc, br#"[{"op":"test","path":"/metadata/name","value":"b"}]"#).unwrap_err();
        assert_eq!(err.code, 422);
    }

    #[test]
    fn fields_v1_round_trip() {
        let mut obj = json!({"metadata": {"name": "a"}, "spec": {"a": 1, "b": {"c": [1]}, "e": {}}});
        let mut entries = vec![ManagedEntry {
            manager: "m".into(),
            operation: "Apply".into(),
            api_version: "v1".into(),
            subresource: String::new(),
            time: String::new(),
            fields: owned_fields(&obj, None),
        }];
        entries[0].fields.insert(vec!["spec".into(), "b".into()]);
        write_managed(&mut obj, &entries);
        let back = read_managed(&obj);
        assert_eq!(back[0].fields, entries[0].fields);
        assert!(obj.pointer("/metadata/managedFields/0/fieldsV1/f:spec/f:b/.").is_some());
    }

    #[test]
    fn apply_conflicts_and_force() {
        let a = server_side_apply(None, &json!({"spec": {"x": 1, "y": 2}}), "a", false, "v1", "", false).unwrap();
        // Same value from another manager: shared, no conflict.
        let b = server_side_apply(Some(&a), &json!({"spec": {"x": 1}}), "b", false, "v1", "", false).unwrap();
        let err = server_side_apply(Some(&b), &json!({"spec": {"y": 3}}), "b", false, "v1", "", false).unwrap_err();
        assert_eq!(err.code, 409);
        assert_eq!(err.details.unwrap()["causes"][0]["field"], ".spec.y");
        let forced = server_side_apply(Some(&b), &json!({"spec": {"y": 3}}), "b", true, "v1", "", false).unwrap();
        assert_eq!(forced["spec"]["y"], 3);
        // `a` re-applies without y: y stays (b owns it), x stays (both own it).
        let again = server_side_apply(Some(&forced), &json!({"spec": {"x": 1}}), "a", false, "v1", "", false).unwrap();
        assert_eq!(again["spec"], json!({"x": 1, "y": 3}));
        // `b` drops everything: y removed (nobody else owns it), x kept (a owns it).
        let dropped = server_side_apply(Some(&again), &json!({}), "b", false, "v1", "", false).unwrap();
        assert_eq!(dropped["spec"], json!({"x": 1}));
    }
}
