//! Types and schema helpers shared by the three kinds.

use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::{Deserialize, Serialize};
use std::borrow::Cow;

/// `sha256:` followed by 64 lower-case hex digits.
pub const DIGEST_PATTERN: &str = "^sha256:[a-f0-9]{64}$";
/// A DNS-1123 label (what a tenant slug must be).
pub const DNS_LABEL_PATTERN: &str = "^[a-z0-9]([-a-z0-9]*[a-z0-9])?$";
/// A DNS-1123 subdomain (names of other objects).
pub const OBJECT_NAME_PATTERN: &str = "^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$";
/// A Go-style duration of whole units: `90s`, `5m`, `1h30m`, `250ms`.
pub const DURATION_PATTERN: &str = "^([0-9]+(ms|s|m|h))+$";

/// A duration written as Kubernetes writes them (`30s`, `5m`, `1h30m`), never negative.
///
/// Seconds are accepted everywhere so that tests and demos can run fast.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Deserialize)]
#[serde(transparent)]
pub struct Duration(pub kube::core::Duration);

/// Written in the schema's own form (`1h30m`, `0s`, `1s500ms`), so a value read back and written
/// again still validates (kube's own form writes zero as `0ns`, which the pattern refuses).
impl Serialize for Duration {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.to_string())
    }
}

impl std::fmt::Display for Duration {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut ms = self.as_std().as_millis();
        if ms == 0 {
            return f.write_str("0s");
        }
        for (unit, size) in [("h", 3_600_000u128), ("m", 60_000), ("s", 1_000), ("ms", 1)] {
            if ms >= size {
                write!(f, "{}{unit}", ms / size)?;
                ms %= size;
            }
        }
        Ok(())
    }
}

impl Duration {
    /// Parses a duration; panics never, returns an error for a malformed value.
    pub fn parse(s: &str) -> Result<Self, kube::core::duration::ParseError> {
        s.parse::<kube::core::Duration>().map(Duration)
    }

    /// The duration as a standard one (negative values, which the schema forbids, become zero).
    pub fn as_std(&self) -> std::time::Duration {
        std::time::Duration::from(self.0)
    }

    pub(crate) fn from_secs(secs: u64) -> Self {
        Duration(kube::core::Duration::from(std::time::Duration::from_secs(secs)))
    }
}

impl JsonSchema for Duration {
    fn schema_name() -> Cow<'static, str> {
        "Duration".into()
    }

    fn inline_schema() -> bool {
        true
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "type": "string",
            "pattern": DURATION_PATTERN,
            "maxLength": 32,
        })
    }
}

/// A reference to a Secret in the same namespace.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct LocalSecretRef {
    /// Name of the Secret, in the namespace of the object that refers to it.
    #[schemars(regex(pattern = OBJECT_NAME_PATTERN), length(min = 1, max = 253))]
    pub name: String,
}

/// One key of a Secret in the same namespace.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretKeyRef {
    /// Name of the Secret, in the namespace of the object that refers to it.
    #[schemars(regex(pattern = OBJECT_NAME_PATTERN), length(min = 1, max = 253))]
    pub name: String,
    /// Key within the Secret's data.
    #[schemars(regex(pattern = "^[-._a-zA-Z0-9]+$"), length(min = 1, max = 253))]
    pub key: String,
}

/// A one-shot request made by annotation: `fleet.molecule.ai/<verb>: <token>`.
///
/// The token is echoed in status once the request has been handled, so a request acts exactly once
/// even when the annotation stays (the pattern Flux uses for `reconcile.fluxcd.io/requestedAt`).
pub const REQUEST_ANNOTATION_PREFIX: &str = "fleet.molecule.ai/";

/// kstatus condition types used on every kind.
pub mod condition {
    /// The object is in its desired state.
    pub const READY: &str = "Ready";
    /// The controller is working towards the desired state.
    pub const RECONCILING: &str = "Reconciling";
    /// The controller cannot make progress without a change from outside.
    pub const STALLED: &str = "Stalled";
    /// The tenant's instance was found and its SSM agent answers.
    pub const INSTANCE_REACHABLE: &str = "InstanceReachable";
    /// The host runs the target image digest.
    pub const IMAGE_UP_TO_DATE: &str = "ImageUpToDate";
    /// Every referenced Secret and key exists and is in the target revision.
    pub const SECRETS_SYNCED: &str = "SecretsSynced";
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_are_written_in_the_form_the_schema_accepts() {
        assert_eq!(DURATION_PATTERN, "^([0-9]+(ms|s|m|h))+$", "the check below mirrors this pattern");
        for (input, written) in [("0s", "0s"), ("90s", "1m30s"), ("1500ms", "1s500ms"), ("2h", "2h"), ("30m", "30m")] {
            let d = Duration::parse(input).unwrap();
            let json = serde_json::to_value(&d).unwrap();
            assert_eq!(json, serde_json::json!(written));
            assert!(matches_pattern(written), "{written} does not match the pattern");
            let back: Duration = serde_json::from_value(json).unwrap();
            assert_eq!(back.as_std(), d.as_std());
        }
    }

    /// The schema's pattern, checked by hand: digits then a unit, repeated.
    fn matches_pattern(s: &str) -> bool {
        let mut rest = s;
        if rest.is_empty() {
            return false;
        }
        while !rest.is_empty() {
            let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
            if digits == 0 {
                return false;
            }
            rest = &rest[digits..];
            match ["ms", "s", "m", "h"].into_iter().find(|u| rest.starts_with(u)) {
                Some(u) => rest = &rest[u.len()..],
                None => return false,
            }
        }
        true
    }
}
