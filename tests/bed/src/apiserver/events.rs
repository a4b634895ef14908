//! The read-only `core/v1` view of `events.k8s.io/v1` Events (what `kubectl describe` reads).

use serde_json::{Map, Value, json};

/// Converts a stored `events.k8s.io/v1` Event to a `core/v1` Event.
pub(crate) fn to_core_v1(ev: &Value) -> Value {
    let get = |k: &str| ev.get(k).cloned();
    let series_count = ev.pointer("/series/count").cloned();
    let series_last = ev.pointer("/series/lastObservedTime").cloned();
    let event_time = get("eventTime").filter(|v| !v.is_null());
    let first = get("deprecatedFirstTimestamp").filter(|v| !v.is_null()).or_else(|| event_time.clone());
    let last =
        series_last.or_else(|| get("deprecatedLastTimestamp").filter(|v| !v.is_null())).or_else(|| event_time.clone());
    let count = series_count.or_else(|| get("deprecatedCount").filter(|v| !v.is_null())).unwrap_or(json!(1));
    let mut out = Map::new();
    out.insert("apiVersion".into(), json!("v1"));
    out.insert("kind".into(), json!("Event"));
    out.insert("metadata".into(), get("metadata").unwrap_or(json!({})));
    out.insert("involvedObject".into(), get("regarding").unwrap_or(json!({})));
    let put = |out: &mut Map<String, Value>, k: &str, v: Option<Value>| {
        if let Some(v) = v.filter(|v| !v.is_null()) {
            out.insert(k.to_string(), v);
        }
    };
    put(&mut out, "related", get("related"));
    put(&mut out, "reason", get("reason"));
    put(&mut out, "message", get("note"));
    put(&mut out, "type", get("type"));
    put(&mut out, "action", get("action"));
    put(&mut out, "reportingComponent", get("reportingController"));
    put(&mut out, "reportingInstance", get("reportingInstance"));
    if let Some(c) = get("reportingController") {
        let mut source = json!({"component": c});
        if let Some(h) = ev.pointer("/deprecatedSource/host") {
            source["host"] = h.clone();
        }
        out.insert("source".into(), source);
    }
    put(&mut out, "firstTimestamp", first.map(seconds));
    put(&mut out, "lastTimestamp", last.map(seconds));
    out.insert("count".into(), count);
    put(&mut out, "eventTime", event_time);
    if let Some(s) = get("series").filter(|v| !v.is_null()) {
        out.insert("series".into(), s);
    }
    Value::Object(out)
}

/// `Time` fields have second precision: cut a `MicroTime` down.
fn seconds(v: Value) -> Value {
    match v.as_str() {
        Some(s) => match s.parse::<jiff::Timestamp>() {
            Ok(ts) => json!(ts.strftime("%Y-%m-%dT%H:%M:%SZ").to_string()),
            Err(_) => v,
        },
        None => v,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    #[test]
    fn converts_series_events() {
        let ev = json!({"apiVersion": "events.k8s.io/v1", "kind": "Event",
            "metadata": {"name": "e", "namespace": "n"},
            "eventTime": "2026-01-01T00:00:00.123456Z",
            "regarding": {"kind": "Tenant", "name": "acme", "uid": "u"},
            "note": "hello", "reason": "Applied", "type": "Normal",
            "reportingController": "tenant-operator",
            "series": {"count": 3, "lastObservedTime": "2026-01-01T00:05:00.000001Z"}});
        let core = to_core_v1(&ev);
        assert_eq!(core["involvedObject"]["name"], "acme");
        assert_eq!(core["message"], "hello");
        assert_eq!(core["count"], 3);
        assert_eq!(core["firstTimestamp"], "2026-01-01T00:00:00Z");
        assert_eq!(core["lastTimestamp"], "2026-01-01T00:05:00Z");
        assert_eq!(core["source"]["component"], "tenant-operator");
    }
}
