//! CustomResourceDefinitions: turning one into a servable resource type, and its status.

use serde_json::{Value, json};

use super::store::{ResourceType, VersionInfo, View, now_rfc3339};
use crate::schema::{FieldError, REASON_INVALID, REASON_REQUIRED};

fn strings(v: Option<&Value>) -> Vec<String> {
    v.and_then(Value::as_array)
        .map(|a| a.iter().filter_map(Value::as_str).map(ToString::to_string).collect())
        .unwrap_or_default()
}

/// Basic checks of a CRD (the parts this server relies on).
pub(crate) fn check(crd: &Value) -> Result<(), Vec<FieldError>> {
    let mut errs = Vec::new();
    let mut req = |field: &str, present: bool| {
        if !present {
            errs.push(FieldError {
                field: field.to_string(),
                message: "Required value".to_string(),
                reason: REASON_REQUIRED.to_string(),
            });
        }
    };
    let s = |p: &str| crd.pointer(p).and_then(Value::as_str).unwrap_or("");
    req("spec.group", !s("/spec/group").is_empty());
    req("spec.names.plural", !s("/spec/names/plural").is_empty());
    req("spec.names.kind", !s("/spec/names/kind").is_empty());
    req("spec.versions", crd.pointer("/spec/versions").and_then(Value::as_array).is_some_and(|v| !v.is_empty()));
    let expected = format!("{}.{}", s("/spec/names/plural"), s("/spec/group"));
    let name = s("/metadata/name");
    if errs.is_empty() && name != expected {
        errs.push(FieldError {
            field: "metadata.name".to_string(),
            message: format!("Invalid value: \"{name}\": must be spec.names.plural+\".\"+spec.group"),
            reason: REASON_INVALID.to_string(),
        });
    }
    let scope = s("/spec/scope");
    if errs.is_empty() && scope != "Namespaced" && scope != "Cluster" {
        errs.push(FieldError {
            field: "spec.scope".to_string(),
            message: format!("Unsupported value: \"{scope}\": supported values: \"Cluster\", \"Namespaced\""),
            reason: REASON_INVALID.to_string(),
        });
    }
    if errs.is_empty() { Ok(()) } else { Err(errs) }
}

/// The resource type a CRD defines (served versions only).
pub(crate) fn resource_type(crd: &Value) -> Option<ResourceType> {
    let spec = crd.get("spec")?;
    let group = spec.get("group")?.as_str()?.to_string();
    let names = spec.get("names")?;
    let plural = names.get("plural")?.as_str()?.to_string();
    let kind = names.get("kind")?.as_str()?.to_string();
    let singular =
        names.get("singular").and_then(Value::as_str).map(ToString::to_string).unwrap_or_else(|| kind.to_lowercase());
    let mut status_subresource = false;
    let mut versions = Vec::new();
    for v in spec.get("versions")?.as_array()? {
        if v.get("served").and_then(Value::as_bool) == Some(false) {
            continue;
        }
        if v.pointer("/subresources/status").is_some() {
            status_subresource = true;
        }
        versions.push(VersionInfo {
            name: v.get("name")?.as_str()?.to_string(),
            schema: v.pointer("/schema/openAPIV3Schema").cloned(),
            printer_columns: v.get("additionalPrinterColumns").and_then(Value::as_array).cloned().unwrap_or_default(),
        });
    }
    if versions.is_empty() {
        return None;
    }
    Some(ResourceType {
        storage: (group.clone(), plural.clone()),
        group,
        versions,
        kind,
        plural,
        singular,
        short_names: strings(names.get("shortNames")),
        categories: strings(names.get("categories")),
        namespaced: spec.get("scope").and_then(Value::as_str) != Some("Cluster"),
        status_subresource,
        custom: true,
        generation: true,
        view: View::Stored,
    })
}

/// The status a real apiserver gives an accepted CRD.
pub(crate) fn status(crd: &Value, old_status: Option<&Value>) -> Value {
    let now = now_rfc3339();
    let since = |ty: &str| {
        old_status
            .and_then(|s| s.get("conditions"))
            .and_then(Value::as_array)
            .and_then(|cs| cs.iter().find(|c| c["type"] == ty))
            .and_then(|c| c.get("lastTransitionTime").cloned())
            .unwrap_or_else(|| json!(now))
    };
    let stored: Vec<Value> = crd
        .pointer("/spec/versions")
        .and_then(Value::as_array)
        .map(|vs| {
            vs.iter()
                .filter(|v| v.get("storage").and_then(Value::as_bool) == Some(true))
                .filter_map(|v| v.get("name").cloned())
                .collect()
        })
        .unwrap_or_default();
    let mut accepted = crd.pointer("/spec/names").cloned().unwrap_or(json!({}));
    if accepted.get("singular").is_none()
        && let Some(kind) = accepted.get("kind").and_then(Value::as_str)
    {
        accepted["singular"] = json!(kind.to_lowercase());
    }
    json!({
        "acceptedNames": accepted,
        "conditions": [
            {"type": "NamesAccepted", "status": "True", "reason": "NoConflicts",
             "message": "no conflicts found", "lastTransitionTime": since("NamesAccepted")},
            {"type": "Established", "status": "True", "reason": "InitialNamesAccepted",
             "message": "the initial names have been accepted", "lastTransitionTime": since("Established")},
        ],
        "storedVersions": stored,
    })
}
