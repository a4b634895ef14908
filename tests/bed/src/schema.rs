//! Validation of objects against a CustomResourceDefinition's `openAPIV3Schema`, the way a real
//! Kubernetes API server does it for custom resources.
//!
//! [`validate`] runs the same three steps as the apiserver, in the same order:
//!
//! 1. **pruning**: fields the (structural) schema does not know are dropped, unless a node has
//!    `x-kubernetes-preserve-unknown-fields: true`; `null` values of non-nullable fields are dropped;
//!    `apiVersion`, `kind` and `metadata` of the root (and of `x-kubernetes-embedded-resource`
//!    nodes) are always kept;
//! 2. **defaulting**: `default` values fill missing (or `null`, when not nullable) properties;
//! 3. **validation**: the OpenAPI value validations (type, `nullable`, `enum`, `format: date-time`,
//!    `pattern`, lengths, bounds, item and property counts, `required`, `additionalProperties`,
//!    `items`, `x-kubernetes-int-or-string`, `allOf`/`anyOf`/`oneOf`/`not`), then the CEL rules of
//!    `x-kubernetes-validations` (evaluated with `kube-cel`, re-exported by kube as
//!    `kube::core::cel`), with transition rules seeing the old object.
//!
//! Error messages follow the apiserver's wording, e.g.
//! `spec.slug: Invalid value: "Acme!": spec.slug in body should match '^[a-z0-9-]+$'`;
//! [`format_invalid`] builds the whole `Tenant.fleet.molecule.ai "acme" is invalid: ...` sentence.
//!
//! Patterns are compiled with the `regex` crate: Kubernetes uses ECMA-262 style patterns and the
//! common subset (classes, anchors, quantifiers, groups) behaves the same.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Mutex, OnceLock};

use serde_json::{Map, Value};

/// Reason of a [`FieldError`], as the `reason` of a Kubernetes `StatusCause`.
pub const REASON_INVALID: &str = "FieldValueInvalid";
/// A required field is missing.
pub const REASON_REQUIRED: &str = "FieldValueRequired";
/// The value is not one of the enumerated ones.
pub const REASON_NOT_SUPPORTED: &str = "FieldValueNotSupported";
/// A string or a list is too long.
pub const REASON_TOO_LONG: &str = "FieldValueTooLong";
/// A list or an object has too many entries.
pub const REASON_TOO_MANY: &str = "FieldValueTooMany";
/// The value has the wrong type.
pub const REASON_TYPE_INVALID: &str = "FieldValueTypeInvalid";
/// The change is forbidden (CEL `reason: FieldValueForbidden`).
pub const REASON_FORBIDDEN: &str = "FieldValueForbidden";
/// A duplicate value (CEL `reason: FieldValueDuplicate`).
pub const REASON_DUPLICATE: &str = "FieldValueDuplicate";

/// One validation failure, located at a field.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FieldError {
    /// Path of the field, dotted with list indices, as Kubernetes writes it:
    /// `spec.instance.id`, `spec.container.env[0].name`. Empty for the root.
    pub field: String,
    /// The message without the field, e.g. `Required value` or
    /// `Invalid value: "Acme!": spec.slug in body should match '^[a-z]+$'`.
    pub message: String,
    /// The Kubernetes cause reason (`FieldValueInvalid`, `FieldValueRequired`, ...).
    pub reason: String,
}

impl FieldError {
    fn new(field: &str, reason: &str, message: impl Into<String>) -> Self {
        Self { field: field.to_string(), message: message.into(), reason: reason.to_string() }
    }
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.field.is_empty() {
            write!(f, "{}", self.message)
        } else {
            write!(f, "{}: {}", self.field, self.message)
        }
    }
}

/// Joins errors the way Kubernetes' aggregate error does: one error as is, several as
/// `[e1, e2]`.
pub fn format_errors(errors: &[FieldError]) -> String {
    match errors {
        [one] => one.to_string(),
        many => {
            let parts: Vec<String> = many.iter().map(ToString::to_string).collect();
            format!("[{}]", parts.join(", "))
        }
    }
}

/// The apiserver's sentence for a rejected object:
/// `Tenant.fleet.molecule.ai "acme" is invalid: spec.slug: Invalid value: ...`.
/// `kind_group` is `Kind.group` (just `Kind` for the core group).
pub fn format_invalid(kind_group: &str, name: &str, errors: &[FieldError]) -> String {
    format!("{kind_group} \"{name}\" is invalid: {}", format_errors(errors))
}

/// Prunes, defaults and validates `obj` (a whole custom resource: `apiVersion`, `kind`,
/// `metadata`, `spec`, ...) against `schema` (the version's `openAPIV3Schema`).
///
/// `old` is the stored object on an update (it feeds CEL transition rules, `oldSelf`);
/// `None` on create.
///
/// Returns the pruned and defaulted object, or every error found (never an empty vector).
pub fn validate(schema: &Value, obj: &Value, old: Option<&Value>) -> Result<Value, Vec<FieldError>> {
    let cleaned = prune_and_default(schema, obj.clone(), true);
    let mut errors = Vec::new();
    check(schema, &cleaned, "", &mut errors);
    if errors.is_empty() && has_cel_rules(schema) {
        let old_cleaned = old.map(|o| prune_and_default(schema, o.clone(), true));
        let outcome = CEL_VALIDATOR.with(|v| v.validate(schema, &cleaned, old_cleaned.as_ref()));
        if let Err(cel_errors) = outcome {
            for e in cel_errors {
                errors.push(cel_error(&e));
            }
        }
    }
    if errors.is_empty() { Ok(cleaned) } else { Err(errors) }
}

thread_local! {
    /// Registering the Kubernetes CEL library is not free: one validator per thread.
    static CEL_VALIDATOR: kube::core::cel::Validator = kube::core::cel::Validator::new();
}

fn cel_error(e: &kube::core::cel::ValidationError) -> FieldError {
    let reason = e.reason.clone().unwrap_or_else(|| REASON_INVALID.to_string());
    let message = match reason.as_str() {
        REASON_FORBIDDEN => format!("Forbidden: {}", e.message),
        REASON_REQUIRED => format!("Required value: {}", e.message),
        REASON_DUPLICATE => format!("Duplicate value: {}", e.message),
        _ => format!("Invalid value: \"object\": {}", e.message),
    };
    FieldError { field: e.field_path.clone(), message, reason }
}

fn has_cel_rules(schema: &Value) -> bool {
    match schema {
        Value::Object(m) => m.contains_key("x-kubernetes-validations") || m.values().any(has_cel_rules),
        Value::Array(a) => a.iter().any(has_cel_rules),
        _ => false,
    }
}

fn flag(schema: &Value, key: &str) -> bool {
    schema.get(key).and_then(Value::as_bool) == Some(true)
}

/// Pruning and defaulting of one node. `keep_meta` keeps `apiVersion`, `kind`, `metadata`
/// (root and embedded resources).
fn prune_and_default(schema: &Value, value: Value, keep_meta: bool) -> Value {
    match value {
        Value::Object(map) => {
            let props = schema.get("properties").and_then(Value::as_object);
            let additional = schema.get("additionalProperties");
            let preserve = flag(schema, "x-kubernetes-preserve-unknown-fields");
            let keep_meta = keep_meta || flag(schema, "x-kubernetes-embedded-resource");
            let mut out = Map::new();
            for (k, v) in map {
                if keep_meta && (k == "apiVersion" || k == "kind" || k == "metadata") {
                    out.insert(k, v);
                } else if let Some(prop) = props.and_then(|p| p.get(&k)) {
                    if v.is_null() && !flag(prop, "nullable") {
                        continue; // a default (if any) fills it below
                    }
                    out.insert(k, prune_and_default(prop, v, false));
                } else if let Some(add) = additional.filter(|a| a.is_object()) {
                    out.insert(k, prune_and_default(add, v, false));
                } else if preserve || additional == Some(&Value::Bool(true)) {
                    out.insert(k, v);
                }
            }
            if let Some(props) = props {
                for (k, prop) in props {
                    if out.contains_key(k) {
                        continue;
                    }
                    if let Some(d) = prop.get("default") {
                        out.insert(k.clone(), prune_and_default(prop, d.clone(), false));
                    }
                }
            }
            Value::Object(out)
        }
        Value::Array(items) => match schema.get("items") {
            Some(item_schema) if item_schema.is_object() => {
                Value::Array(items.into_iter().map(|v| prune_and_default(item_schema, v, false)).collect())
            }
            _ => Value::Array(items),
        },
        other => other,
    }
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() { key.to_string() } else { format!("{path}.{key}") }
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_i64() || n.is_u64() => "integer",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// How Kubernetes shows a value after `Invalid value:`.
fn shown(v: &Value) -> String {
    match v {
        Value::String(s) => format!("{s:?}"),
        Value::Number(n) => n.to_string(),
        Value::Bool(b) => b.to_string(),
        other => format!("\"{}\"", type_name(other)),
    }
}

fn body_path(path: &str) -> String {
    if path.is_empty() { "body".to_string() } else { format!("{path} in body") }
}

fn invalid(path: &str, v: &Value, detail: &str) -> FieldError {
    FieldError::new(path, REASON_INVALID, format!("Invalid value: {}: {} {detail}", shown(v), body_path(path)))
}

fn type_matches(ty: &str, v: &Value) -> bool {
    match ty {
        "object" => v.is_object(),
        "array" => v.is_array(),
        "string" => v.is_string(),
        "boolean" => v.is_boolean(),
        "number" => v.is_number(),
        "integer" => match v {
            Value::Number(n) => n.is_i64() || n.is_u64() || n.as_f64().is_some_and(|f| f.fract() == 0.0),
            _ => false,
        },
        _ => true,
    }
}

fn regex_for(pattern: &str) -> Option<regex::Regex> {
    static CACHE: OnceLock<Mutex<HashMap<String, Option<regex::Regex>>>> = OnceLock::new();
    let cache = CACHE.get_or_init(|| Mutex::new(HashMap::new()));
    let mut guard = match cache.lock() {
        Ok(g) => g,
        Err(poisoned) => poisoned.into_inner(),
    };
    guard.entry(pattern.to_string()).or_insert_with(|| regex::Regex::new(pattern).ok()).clone()
}

fn num(schema: &Value, key: &str) -> Option<f64> {
    schema.get(key).and_then(Value::as_f64)
}

fn count(schema: &Value, key: &str) -> Option<usize> {
    schema.get(key).and_then(Value::as_u64).and_then(|n| usize::try_from(n).ok())
}

/// Value validation of one node (after pruning and defaulting).
fn check(schema: &Value, v: &Value, path: &str, errors: &mut Vec<FieldError>) {
    let int_or_string = flag(schema, "x-kubernetes-int-or-string");
    if v.is_null() {
        if !flag(schema, "nullable") && schema.get("type").is_some() {
            let ty = schema.get("type").and_then(Value::as_str).unwrap_or("");
            errors.push(FieldError::new(
                path,
                REASON_TYPE_INVALID,
                format!("Invalid value: \"null\": {} must be of type {ty}: \"null\"", body_path(path)),
            ));
        }
        return;
    }
    if int_or_string {
        if !(type_matches("integer", v) || v.is_string()) {
            errors.push(FieldError::new(
                path,
                REASON_TYPE_INVALID,
                format!(
                    "Invalid value: \"{}\": {} must be of type integer or string: \"{}\"",
                    type_name(v),
                    body_path(path),
                    type_name(v)
                ),
            ));
            return;
        }
    } else if let Some(ty) = schema.get("type").and_then(Value::as_str)
        && !type_matches(ty, v)
    {
        errors.push(FieldError::new(
            path,
            REASON_TYPE_INVALID,
            format!(
                "Invalid value: \"{}\": {} must be of type {ty}: \"{}\"",
                type_name(v),
                body_path(path),
                type_name(v)
            ),
        ));
        return;
    }

    if let Some(options) = schema.get("enum").and_then(Value::as_array)
        && !options.contains(v)
    {
        let supported: Vec<String> = options.iter().map(shown).collect();
        errors.push(FieldError::new(
            path,
            REASON_NOT_SUPPORTED,
            format!("Unsupported value: {}: supported values: {}", shown(v), supported.join(", ")),
        ));
    }

    match v {
        Value::String(s) => check_string(schema, v, s, path, errors),
        Value::Number(n) => check_number(schema, v, n.as_f64().unwrap_or(0.0), path, errors),
        Value::Array(items) => {
            let len = items.len();
            if let Some(max) = count(schema, "maxItems")
                && len > max
            {
                errors.push(FieldError::new(
                    path,
                    REASON_TOO_MANY,
                    format!("Too many: {len}: must have at most {max} items"),
                ));
            }
            if let Some(min) = count(schema, "minItems")
                && len < min
            {
                errors.push(invalid(path, v, &format!("should have at least {min} items")));
            }
            if let Some(item_schema) = schema.get("items").filter(|s| s.is_object()) {
                for (i, item) in items.iter().enumerate() {
                    check(item_schema, item, &format!("{path}[{i}]"), errors);
                }
            }
        }
        Value::Object(map) => check_object(schema, v, map, path, errors),
        _ => {}
    }

    check_junctors(schema, v, path, errors);
}

fn check_string(schema: &Value, v: &Value, s: &str, path: &str, errors: &mut Vec<FieldError>) {
    let len = s.chars().count();
    if let Some(max) = count(schema, "maxLength")
        && len > max
    {
        errors.push(FieldError::new(path, REASON_TOO_LONG, format!("Too long: may not be more than {max} bytes")));
    }
    if let Some(min) = count(schema, "minLength")
        && len < min
    {
        errors.push(invalid(path, v, &format!("should be at least {min} chars long")));
    }
    if let Some(pattern) = schema.get("pattern").and_then(Value::as_str) {
        match regex_for(pattern) {
            Some(re) if re.is_match(s) => {}
            _ => errors.push(invalid(path, v, &format!("should match '{pattern}'"))),
        }
    }
    if schema.get("format").and_then(Value::as_str) == Some("date-time") && s.parse::<jiff::Timestamp>().is_err() {
        errors.push(invalid(path, v, "must be of type date-time"));
    }
}

fn check_number(schema: &Value, v: &Value, n: f64, path: &str, errors: &mut Vec<FieldError>) {
    // OpenAPI v3.0 writes `exclusiveMinimum: true` next to `minimum`; JSON Schema 2020-12 writes
    // the bound itself in `exclusiveMinimum`. Both are accepted.
    let excl_min_flag = flag(schema, "exclusiveMinimum");
    let excl_max_flag = flag(schema, "exclusiveMaximum");
    if let Some(min) = num(schema, "minimum") {
        if excl_min_flag && n <= min {
            errors.push(invalid(path, v, &format!("should be greater than {min}")));
        } else if n < min {
            errors.push(invalid(path, v, &format!("should be greater than or equal to {min}")));
        }
    }
    if let Some(min) = num(schema, "exclusiveMinimum")
        && n <= min
    {
        errors.push(invalid(path, v, &format!("should be greater than {min}")));
    }
    if let Some(max) = num(schema, "maximum") {
        if excl_max_flag && n >= max {
            errors.push(invalid(path, v, &format!("should be less than {max}")));
        } else if n > max {
            errors.push(invalid(path, v, &format!("should be less than or equal to {max}")));
        }
    }
    if let Some(max) = num(schema, "exclusiveMaximum")
        && n >= max
    {
        errors.push(invalid(path, v, &format!("should be less than {max}")));
    }
    if let Some(m) = num(schema, "multipleOf")
        && m > 0.0
        && (n / m).fract() != 0.0
    {
        errors.push(invalid(path, v, &format!("should be a multiple of {m}")));
    }
}

fn check_object(schema: &Value, v: &Value, map: &Map<String, Value>, path: &str, errors: &mut Vec<FieldError>) {
    if let Some(required) = schema.get("required").and_then(Value::as_array) {
        for key in required.iter().filter_map(Value::as_str) {
            if !map.contains_key(key) {
                errors.push(FieldError::new(&join(path, key), REASON_REQUIRED, "Required value"));
            }
        }
    }
    if let Some(max) = count(schema, "maxProperties")
        && map.len() > max
    {
        errors.push(FieldError::new(
            path,
            REASON_TOO_MANY,
            format!("Too many: {}: must have at most {max} items", map.len()),
        ));
    }
    if let Some(min) = count(schema, "minProperties")
        && map.len() < min
    {
        errors.push(invalid(path, v, &format!("should have at least {min} properties")));
    }
    let props = schema.get("properties").and_then(Value::as_object);
    let additional = schema.get("additionalProperties");
    for (k, child) in map {
        let child_path = join(path, k);
        if let Some(prop) = props.and_then(|p| p.get(k)) {
            check(prop, child, &child_path, errors);
        } else if let Some(add) = additional.filter(|a| a.is_object()) {
            check(add, child, &child_path, errors);
        } else if additional == Some(&Value::Bool(false))
            && !(path.is_empty() && matches!(k.as_str(), "apiVersion" | "kind" | "metadata"))
        {
            errors.push(FieldError::new(
                &child_path,
                REASON_INVALID,
                "Forbidden: additional properties are not allowed",
            ));
        }
    }
}

fn passes(schema: &Value, v: &Value, path: &str) -> bool {
    let mut errs = Vec::new();
    check(schema, v, path, &mut errs);
    errs.is_empty()
}

fn check_junctors(schema: &Value, v: &Value, path: &str, errors: &mut Vec<FieldError>) {
    if let Some(all) = schema.get("allOf").and_then(Value::as_array) {
        for branch in all {
            check(branch, v, path, errors);
        }
    }
    if let Some(any) = schema.get("anyOf").and_then(Value::as_array)
        && !any.is_empty()
        && !any.iter().any(|b| passes(b, v, path))
    {
        errors.push(invalid(path, v, "must validate at least one schema (anyOf)"));
        if let Some(first) = any.first() {
            check(first, v, path, errors);
        }
    }
    if let Some(one) = schema.get("oneOf").and_then(Value::as_array)
        && !one.is_empty()
    {
        let ok = one.iter().filter(|b| passes(b, v, path)).count();
        if ok != 1 {
            let found = if ok == 0 { "Found none valid".to_string() } else { format!("Found {ok} valid alternatives") };
            errors.push(invalid(path, v, &format!("must validate one and only one schema (oneOf). {found}")));
        }
    }
    if let Some(not) = schema.get("not")
        && not.is_object()
        && passes(not, v, path)
    {
        errors.push(invalid(path, v, "must not validate the schema (not)"));
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;
    use serde_json::json;

    fn schema() -> Value {
        json!({
            "type": "object",
            "properties": {
                "apiVersion": {"type": "string"},
                "kind": {"type": "string"},
                "metadata": {"type": "object"},
                "spec": {
                    "type": "object",
                    "required": ["slug"],
                    "x-kubernetes-validations": [
                        {"rule": "self.replicas <= 5 || self.tier == 'production'",
                         "message": "canary tenants have at most 5 replicas", "fieldPath": ".replicas"},
                        {"rule": "self.slug == oldSelf.slug", "message": "slug is immutable",
                         "reason": "FieldValueForbidden"}
                    ],
                    "properties": {
                        "slug": {"type": "string", "pattern": "^[a-z0-9-]+$", "maxLength": 10},
                        "tier": {"type": "string", "enum": ["canary", "production"], "default": "production"},
                        "replicas": {"type": "integer", "minimum": 1, "default": 1},
                        "note": {"type": "string", "nullable": true},
                        "port": {"x-kubernetes-int-or-string": true},
                        "at": {"type": "string", "format": "date-time"},
                        "labels": {"type": "object", "additionalProperties": {"type": "string"}},
                        "extra": {"type": "object", "x-kubernetes-preserve-unknown-fields": true},
                        "items": {"type": "array", "maxItems": 2,
                                  "items": {"type": "object", "required": ["name"],
                                            "properties": {"name": {"type": "string"}}}}
                    }
                },
                "status": {"type": "object", "properties": {"ok": {"type": "boolean"}}}
            }
        })
    }

    fn obj(spec: Value) -> Value {
        json!({"apiVersion": "fleet.molecule.ai/v1alpha1", "kind": "Tenant",
               "metadata": {"name": "acme", "labels": {"a": "b"}}, "spec": spec})
    }

    #[test]
    fn prunes_and_defaults() {
        let out = validate(
            &schema(),
            &obj(json!({"slug": "acme", "unknown": 1, "note": null, "extra": {"x": {"y": 1}},
                        "labels": {"k": "v"}, "items": [{"name": "a", "drop": true}]})),
            None,
        )
        .unwrap();
        assert_eq!(out["metadata"]["labels"]["a"], "b");
        assert_eq!(out["spec"]["tier"], "production");
        assert_eq!(out["spec"]["replicas"], 1);
        assert!(out["spec"].get("unknown").is_none());
        assert!(out["spec"]["note"].is_null() && out["spec"].get("note").is_some());
        assert_eq!(out["spec"]["extra"]["x"]["y"], 1);
        assert_eq!(out["spec"]["items"][0], json!({"name": "a"}));
    }

    #[test]
    fn structural_errors_name_fields() {
        let errs = validate(
            &schema(),
            &obj(json!({"slug": "Acme!", "tier": "gold", "replicas": 0, "port": true,
                        "at": "yesterday", "labels": {"k": 1}, "items": [{}, {"name": "b"}, {"name": "c"}]})),
            None,
        )
        .unwrap_err();
        let text = format_invalid("Tenant.fleet.molecule.ai", "acme", &errs);
        assert!(text.starts_with("Tenant.fleet.molecule.ai \"acme\" is invalid: [spec."), "{text}");
        assert!(
            text.contains(", spec.slug: Invalid value: \"Acme!\": spec.slug in body should match '^[a-z0-9-]+$', "),
            "{text}"
        );
        let fields: Vec<&str> = errs.iter().map(|e| e.field.as_str()).collect();
        for f in [
            "spec.slug",
            "spec.tier",
            "spec.replicas",
            "spec.port",
            "spec.at",
            "spec.labels.k",
            "spec.items",
            "spec.items[0].name",
        ] {
            assert!(fields.contains(&f), "{f} missing in {fields:?}");
        }
        let tier = errs.iter().find(|e| e.field == "spec.tier").unwrap();
        assert_eq!(tier.reason, REASON_NOT_SUPPORTED);
        assert_eq!(tier.message, "Unsupported value: \"gold\": supported values: \"canary\", \"production\"");
    }

    #[test]
    fn required_and_types() {
        let errs = validate(&schema(), &obj(json!({"replicas": 1.5})), None).unwrap_err();
        assert!(errs.iter().any(|e| e.field == "spec.slug" && e.message == "Required value"));
        assert!(errs.iter().any(|e| e.field == "spec.replicas" && e.message.contains("must be of type integer")));
        assert!(validate(&schema(), &obj(json!({"slug": "a", "port": "http"})), None).is_ok());
        assert!(validate(&schema(), &obj(json!({"slug": "a", "port": 80})), None).is_ok());
    }

    #[test]
    fn cel_rules_and_transition_rules() {
        let errs = validate(&schema(), &obj(json!({"slug": "a", "tier": "canary", "replicas": 9})), None).unwrap_err();
        assert_eq!(errs.len(), 1, "{errs:?}");
        assert_eq!(errs[0].field, "spec.replicas");
        assert!(errs[0].message.contains("canary tenants have at most 5 replicas"));

        let old = obj(json!({"slug": "a"}));
        let errs = validate(&schema(), &obj(json!({"slug": "b"})), Some(&old)).unwrap_err();
        assert_eq!(errs[0].field, "spec");
        assert_eq!(errs[0].reason, REASON_FORBIDDEN);
        assert!(errs[0].message.contains("slug is immutable"));
        assert!(validate(&schema(), &obj(json!({"slug": "a"})), Some(&old)).is_ok());
    }

    #[test]
    fn junctors() {
        let s = json!({"type": "object", "properties": {"spec": {
            "type": "object",
            "properties": {"a": {"type": "string"}, "b": {"type": "string"}},
            "oneOf": [{"required": ["a"]}, {"required": ["b"]}],
            "not": {"required": ["c"]}
        }}});
        assert!(validate(&s, &json!({"spec": {"a": "x"}}), None).is_ok());
        let errs = validate(&s, &json!({"spec": {}}), None).unwrap_err();
        assert!(errs[0].message.contains("oneOf"), "{errs:?}");
        let errs = validate(&s, &json!({"spec": {"a": "x", "b": "y"}}), None).unwrap_err();
        assert!(errs[0].message.contains("oneOf"), "{errs:?}");
    }
}
