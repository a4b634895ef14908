//! `ImageChannel`: which digest a channel runs.

use super::common::*;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// A channel follows one tag of one repository, or is fed by promotion from another channel.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "fleet.molecule.ai",
    version = "v1alpha1",
    kind = "ImageChannel",
    plural = "imagechannels",
    namespaced,
    status = "ImageChannelStatus",
    shortname = "ich",
    shortname = "channel",
    category = "fleet",
    validation = Rule::new("!has(self.spec.promoteFrom) || self.spec.promoteFrom != self.metadata.name").message("spec.promoteFrom may not name the channel itself").field_path(".spec.promoteFrom"),
    printcolumn(json_path = ".spec.image", name = "Image", type_ = "string"),
    printcolumn(json_path = ".spec.tag", name = "Tag", type_ = "string"),
    printcolumn(json_path = ".spec.promoteFrom", name = "From", type_ = "string"),
    printcolumn(json_path = ".status.short", name = "Digest", type_ = "string"),
    printcolumn(json_path = ".status.conditions[?(@.type==\"Ready\")].status", name = "Ready", type_ = "string"),
    printcolumn(json_path = ".metadata.creationTimestamp", name = "Age", type_ = "date")
)]
#[x_kube(validation = Rule::new("has(self.tag) != has(self.promoteFrom)").message("exactly one of spec.tag or spec.promoteFrom must be set"))]
#[serde(rename_all = "camelCase")]
pub struct ImageChannelSpec {
    /// Repository, with its registry host: `registry.example.com/org/platform-tenant`.
    #[schemars(
        regex(pattern = "^[a-z0-9]([a-z0-9.-]*[a-z0-9])?(:[0-9]{1,5})?(/[a-z0-9]+([._-][a-z0-9]+)*)+$"),
        length(min = 1, max = 255)
    )]
    pub image: String,

    /// Tag to follow (`latest`, `staging`).
    // Not nullable (`with`): an explicit `null` is then pruned like an absent field, as serde
    // reads it. A nullable field set to `null` counts as present for CEL's `has()`, so
    // `tag: null` alone would pass the rule above while the operator sees no source.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "String", regex(pattern = "^[A-Za-z0-9_][A-Za-z0-9._-]{0,127}$"))]
    pub tag: Option<String>,

    /// Take the digest of this channel (same namespace) once it passed a rollout's canary gate.
    // Not nullable: see `tag`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "String", regex(pattern = OBJECT_NAME_PATTERN), length(min = 1, max = 253))]
    pub promote_from: Option<String>,

    /// Freeze the channel at this digest (the rollback path).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = DIGEST_PATTERN))]
    pub pinned_digest: Option<String>,

    /// How often the tag is resolved.
    #[serde(default = "default_interval")]
    pub interval: Duration,

    /// `kubernetes.io/dockerconfigjson` Secret (same namespace) for a private registry.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pull_secret: Option<LocalSecretRef>,

    /// Registry webhook: a call carrying this Secret's token triggers an immediate resolve.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub webhook: Option<WebhookSpec>,

    /// How many digests the status history keeps.
    #[serde(default = "default_history_limit")]
    #[schemars(range(min = 1, max = 100))]
    pub history_limit: i32,
}

fn default_interval() -> Duration {
    Duration::from_secs(300)
}
fn default_history_limit() -> i32 {
    10
}

/// The registry webhook of a channel.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct WebhookSpec {
    /// Secret key holding the bearer token the registry sends.
    pub token_secret_ref: SecretKeyRef,
}

/// Where a digest in the history came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum DigestSource {
    /// Resolved from the registry tag.
    Registry,
    /// Promoted from another channel.
    Promotion,
    /// `spec.pinnedDigest`.
    Pin,
}

/// Evidence that a digest passed a canary gate.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PromotionEvidence {
    /// Source channel.
    pub channel: String,
    /// RolloutPolicy whose gate passed.
    pub policy: String,
    /// Canary tenants that ran the digest verified through the soak.
    pub tenants: Vec<String>,
    /// Soak start (RFC 3339).
    pub soak_started_at: String,
    /// Gate passed (RFC 3339).
    pub passed_at: String,
    /// `soak` or `manual` (a promote request ended the soak).
    pub how: String,
}

/// One digest the channel has had.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ChannelHistoryEntry {
    /// Digest.
    pub digest: String,
    /// When first seen (RFC 3339).
    pub first_seen: String,
    /// Where it came from.
    pub source: DigestSource,
    /// A rollout aborted it: never re-admitted until the tag moves again.
    #[serde(default)]
    pub rejected: bool,
    /// Why it was rejected.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rejected_reason: Option<String>,
    /// For promoted digests: the gate's evidence.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub evidence: Option<PromotionEvidence>,
}

/// Status of an ImageChannel.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ImageChannelStatus {
    /// Generation of the spec this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// The digest in force.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest: Option<String>,
    /// First 12 hex digits of the digest (for `kubectl get`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub short: Option<String>,
    /// When the tag was last resolved successfully (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_resolved_at: Option<String>,
    /// Digests seen, newest first (bounded by `historyLimit`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub history: Vec<ChannelHistoryEntry>,
    /// kstatus conditions.
    #[serde(default)]
    pub conditions: Vec<Condition>,
}
