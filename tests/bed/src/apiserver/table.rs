//! Server-side `Table` responses (`Accept: application/json;as=Table;g=meta.k8s.io;v=v1`), as
//! `kubectl get` asks for them.
//!
//! Columns: `NAME`, the CRD's `additionalPrinterColumns` (evaluated with the `jsonpath-rust`
//! crate, RFC 9535, which also takes Kubernetes filters like
//! `.status.conditions[?(@.type=="Ready")].status`), and `AGE` unless a column already shows
//! `.metadata.creationTimestamp`. A few built-in kinds have their usual columns.

use jsonpath_rust::JsonPath;
use serde_json::{Value, json};

use super::store::{ResourceType, View};

/// One column: header, type, JSONPath (a Kubernetes printer-column path such as `.spec.x`).
struct Column {
    name: String,
    ty: String,
    format: String,
    description: String,
    priority: i64,
    path: String,
}

fn col(name: &str, ty: &str, path: &str) -> Column {
    Column {
        name: name.to_string(),
        ty: ty.to_string(),
        format: String::new(),
        description: String::new(),
        priority: 0,
        path: path.to_string(),
    }
}

const CREATED: &str = ".metadata.creationTimestamp";
/// Pseudo path: `kind/name` of an Event's `involvedObject`, as kubectl shows it.
const OBJECT_REF: &str = "@involvedObject";

fn columns(rt: &ResourceType, version: &str) -> Vec<Column> {
    let mut cols = vec![Column {
        format: "name".to_string(),
        description: "Name must be unique within a namespace.".to_string(),
        ..col("Name", "string", ".metadata.name")
    }];
    let extra: Vec<Column> = match (rt.group.as_str(), rt.plural.as_str(), rt.view) {
        (_, _, View::CoreEvents) => {
            return vec![
                col("Last Seen", "date", ".lastTimestamp"),
                col("Type", "string", ".type"),
                col("Reason", "string", ".reason"),
                col("Object", "string", OBJECT_REF),
                col("Message", "string", ".message"),
            ];
        }
        ("", "namespaces", _) => vec![col("Status", "string", ".status.phase")],
        ("", "secrets", _) => vec![col("Type", "string", ".type")],
        ("coordination.k8s.io", "leases", _) => vec![col("Holder", "string", ".spec.holderIdentity")],
        ("apiextensions.k8s.io", _, _) => vec![col("Created At", "string", CREATED)],
        _ => rt
            .version(version)
            .map(|v| {
                v.printer_columns
                    .iter()
                    .map(|c| Column {
                        name: c["name"].as_str().unwrap_or("").to_string(),
                        ty: c["type"].as_str().unwrap_or("string").to_string(),
                        format: c["format"].as_str().unwrap_or("").to_string(),
                        description: c["description"].as_str().unwrap_or("").to_string(),
                        priority: c["priority"].as_i64().unwrap_or(0),
                        path: c["jsonPath"].as_str().unwrap_or("").to_string(),
                    })
                    .collect()
            })
            .unwrap_or_default(),
    };
    let has_age = extra.iter().any(|c| c.path == CREATED);
    cols.extend(extra);
    if !has_age {
        cols.push(col("Age", "date", CREATED));
    }
    cols
}

/// Human-readable age in the style of Kubernetes' `HumanDuration`.
pub(crate) fn human_duration(secs: i64) -> String {
    let s = secs.max(0);
    let (m, h, d) = (s / 60, s / 3600, s / 86400);
    if s < 120 {
        format!("{s}s")
    } else if m < 10 {
        if s % 60 == 0 { format!("{m}m") } else { format!("{m}m{}s", s % 60) }
    } else if h < 3 {
        format!("{m}m")
    } else if h < 8 {
        if m % 60 == 0 { format!("{h}h") } else { format!("{h}h{}m", m % 60) }
    } else if h < 48 {
        format!("{h}h")
    } else if d < 8 {
        if h % 24 == 0 { format!("{d}d") } else { format!("{d}d{}h", h % 24) }
    } else if d < 365 * 2 {
        format!("{d}d")
    } else {
        format!("{}y", d / 365)
    }
}

/// Evaluates a Kubernetes printer-column JSONPath (`.a.b`, `{.a.b}`, filters) against `obj`.
pub(crate) fn eval_path(obj: &Value, path: &str) -> Option<Value> {
    let p = path.trim();
    let p = p.strip_prefix('{').and_then(|x| x.strip_suffix('}')).unwrap_or(p);
    let query = if p.starts_with('$') {
        p.to_string()
    } else if p.starts_with('.') || p.starts_with('[') {
        format!("${p}")
    } else {
        format!("$.{p}")
    };
    let found = obj.query(&query).ok()?;
    match found.as_slice() {
        [] => None,
        [one] => Some((*one).clone()),
        many => Some(Value::Array(many.iter().map(|v| (*v).clone()).collect())),
    }
}

fn cell(obj: &Value, c: &Column) -> Value {
    if c.path == OBJECT_REF {
        let kind = obj.pointer("/involvedObject/kind").and_then(Value::as_str).unwrap_or("");
        let name = obj.pointer("/involvedObject/name").and_then(Value::as_str).unwrap_or("");
        return Value::String(format!("{}/{name}", kind.to_lowercase()));
    }
    let Some(v) = eval_path(obj, &c.path) else {
        return Value::Null;
    };
    if c.ty == "date"
        && let Some(ts) = v.as_str().and_then(|s| s.parse::<jiff::Timestamp>().ok())
    {
        let age = jiff::Timestamp::now().as_second() - ts.as_second();
        return Value::String(human_duration(age));
    }
    match v {
        Value::String(_) | Value::Number(_) | Value::Bool(_) => v,
        Value::Null => Value::Null,
        other => Value::String(other.to_string()),
    }
}

/// A `meta.k8s.io/v1` Table for `objs` (already presented in the requested version).
/// `headers` false omits the column definitions (watch events after the first).
pub(crate) fn to_table(
    rt: &ResourceType,
    version: &str,
    objs: &[Value],
    headers: bool,
    resource_version: &str,
) -> Value {
    let cols = columns(rt, version);
    let defs: Vec<Value> = if headers {
        cols.iter()
            .map(|c| {
                json!({"name": c.name, "type": c.ty, "format": c.format,
                       "description": c.description, "priority": c.priority})
            })
            .collect()
    } else {
        Vec::new()
    };
    let rows: Vec<Value> = objs
        .iter()
        .map(|o| {
            let cells: Vec<Value> = cols.iter().map(|c| cell(o, c)).collect();
            json!({
                "cells": cells,
                "object": {
                    "kind": "PartialObjectMetadata",
                    "apiVersion": "meta.k8s.io/v1",
                    "metadata": o.get("metadata").cloned().unwrap_or(json!({})),
                }
            })
        })
        .collect();
    json!({
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": {"resourceVersion": resource_version},
        "columnDefinitions": defs,
        "rows": rows,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    #[test]
    fn jsonpath_filters() {
        let o = json!({"status": {"conditions": [
            {"type": "Reconciling", "status": "False"},
            {"type": "Ready", "status": "True"}]}, "spec": {"n": 3}});
        assert_eq!(eval_path(&o, ".status.conditions[?(@.type==\"Ready\")].status"), Some(json!("True")));
        assert_eq!(eval_path(&o, ".spec.n"), Some(json!(3)));
        assert_eq!(eval_path(&o, ".spec.missing"), None);
    }

    #[test]
    fn durations() {
        assert_eq!(human_duration(5), "5s");
        assert_eq!(human_duration(150), "2m30s");
        assert_eq!(human_duration(3600), "60m");
        assert_eq!(human_duration(4 * 3600 + 60), "4h1m");
        assert_eq!(human_duration(3 * 86400), "3d");
    }
}
