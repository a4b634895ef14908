//! `RolloutPolicy`: how a change reaches the tenants that use it.

use super::common::*;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// How revisions roll out to the tenants that name this policy.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "fleet.molecule.ai",
    version = "v1alpha1",
    kind = "RolloutPolicy",
    plural = "rolloutpolicies",
    namespaced,
    status = "RolloutPolicyStatus",
    shortname = "rp",
    category = "fleet",
    printcolumn(json_path = ".spec.strategy", name = "Strategy", type_ = "string"),
    printcolumn(json_path = ".status.phase", name = "Phase", type_ = "string"),
    printcolumn(json_path = ".status.conditions[?(@.type==\"Ready\")].status", name = "Ready", type_ = "string"),
    printcolumn(json_path = ".metadata.creationTimestamp", name = "Age", type_ = "date")
)]
#[serde(rename_all = "camelCase")]
pub struct RolloutPolicySpec {
    /// `InPlace` (brief downtime) or `BlueGreen` (idle slot, health check, router switch).
    #[serde(default)]
    pub strategy: Strategy,

    /// BlueGreen: how long the previous slot stays warm for an instant switch-back.
    #[serde(default = "default_keep_previous")]
    #[schemars(range(min = 0, max = 86400))]
    pub keep_previous_slot_seconds: i32,

    /// Most tenants moving at once per batch: a count (`3`) or a percentage of the tier (`25%`).
    #[serde(default = "default_max_concurrency")]
    #[schemars(schema_with = "int_or_percent_schema")]
    pub max_concurrency: IntOrString,

    /// Pause between batches.
    #[serde(default = "default_stagger")]
    pub stagger: Duration,

    /// How tenants new to a channel (no target yet: a new fleet, a tenant just created) get their
    /// first image: `Batched` (at most `maxConcurrency` of a tier placing at once, in the tier's
    /// spare capacity) or `AllAtOnce`.
    #[serde(default)]
    pub first_placement: FirstPlacement,

    /// The canary gate.
    #[serde(default)]
    pub canary: CanaryGate,

    /// Health check after each apply.
    #[serde(default)]
    pub health_check: HealthCheck,

    /// HTTP checks after the health check, by path only, against the slot's local port.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    /// A list map keyed by name: results are reported by name, and the API server refuses a name
    /// given twice.
    #[schemars(length(max = 16), extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["name"]))]
    pub smoke_checks: Vec<SmokeCheck>,

    /// Failed tenants tolerated before the rollout halts.
    #[serde(default)]
    #[schemars(range(min = 0, max = 10000))]
    pub max_errors: i32,

    /// Webhook sinks told about this policy's rollouts (started, gate passed, halted, aborted,
    /// complete, emergency). A list map keyed by name.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 8), extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["name"]))]
    pub notifications: Vec<NotificationSink>,
}

fn default_keep_previous() -> i32 {
    600
}
fn default_max_concurrency() -> IntOrString {
    IntOrString::Int(1)
}
fn default_stagger() -> Duration {
    Duration::from_secs(30)
}

/// Schema of `maxConcurrency`: an int-or-string holding a count >= 1 or a percentage 1%..100%.
///
/// The rule avoids `type(self)`: it is standard CEL (and works in the API server), but kube-cel,
/// which the test bed validates with, cannot evaluate it. `string(self)` works for both an
/// integer and a string; a string of digits (`"3"`) therefore counts as a count.
/// `nullable: false` stops kube's int-or-string transform from marking the field nullable: a
/// `null` would be admitted as is (no default) and then fail to deserialize into the Rust type.
fn int_or_percent_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "x-kubernetes-int-or-string": true,
        "nullable": false,
        "anyOf": [{"type": "integer"}, {"type": "string"}],
        "x-kubernetes-validations": [{
            "rule": "string(self).matches('^([1-9][0-9]{0,5}|([1-9][0-9]?|100)%)$')",
            "message": "must be a count of at least 1 or a percentage from 1% to 100%"
        }]
    })
}

/// How tenants without a target get their first image.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum FirstPlacement {
    /// At most `maxConcurrency` of a tier placing at once (counting the tier's tenants already
    /// moving): a new fleet never pulls all at once.
    #[default]
    Batched,
    /// Every new tenant at once.
    AllAtOnce,
}

/// Rollout strategy.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum Strategy {
    /// Pull by digest, stop, run, health check: brief downtime.
    #[default]
    InPlace,
    /// Start the idle slot, health check, switch the router; the old slot stays warm.
    BlueGreen,
}

/// The canary gate: what must hold before production moves.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CanaryGate {
    /// Canary tenants that must run the revision verified.
    #[serde(default = "default_min_canaries")]
    #[schemars(range(min = 0, max = 1000))]
    pub min_canaries: i32,
    /// How long they must stay healthy (health re-sampled throughout).
    #[serde(default = "default_soak")]
    pub soak: Duration,
    /// How often health is re-sampled during the soak.
    #[serde(default = "default_sample")]
    pub sample_interval: Duration,
    /// Let production move when there are fewer canaries than `minCanaries` (otherwise `NoCanaries`).
    #[serde(default)]
    pub allow_skip: bool,
}

impl Default for CanaryGate {
    fn default() -> Self {
        CanaryGate {
            min_canaries: default_min_canaries(),
            soak: default_soak(),
            sample_interval: default_sample(),
            allow_skip: false,
        }
    }
}
fn default_min_canaries() -> i32 {
    1
}
fn default_soak() -> Duration {
    Duration::from_secs(1800)
}
fn default_sample() -> Duration {
    Duration::from_secs(30)
}

/// The health check after an apply.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HealthCheck {
    /// Path on the slot's local port; the tenant's `container.healthPath` when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = "^/[A-Za-z0-9._~!$&'()*+,;=:@%/-]*$"), length(max = 256))]
    pub path: Option<String>,
    /// How long to wait for a 200.
    #[serde(default = "default_health_timeout")]
    pub timeout: Duration,
}

impl Default for HealthCheck {
    fn default() -> Self {
        HealthCheck { path: None, timeout: default_health_timeout() }
    }
}
fn default_health_timeout() -> Duration {
    Duration::from_secs(60)
}

/// One HTTP smoke check, by path only, against the slot's local port. Redirects are not followed.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct SmokeCheck {
    /// Name, unique in the policy.
    #[schemars(regex(pattern = DNS_LABEL_PATTERN), length(min = 1, max = 63))]
    pub name: String,
    /// Path (and query) on the slot's local port. Never a URL.
    #[schemars(regex(pattern = "^/[A-Za-z0-9._~!$&'()*+,;=:@%/?-]*$"), length(min = 1, max = 1024))]
    #[x_kube(validation = Rule::new("!self.startsWith('//')").message("path may not start with '//' (that would name another host)"))]
    pub path: String,
    /// `GET` or `HEAD`.
    #[serde(default)]
    pub method: SmokeMethod,
    /// Expected HTTP status.
    #[schemars(range(min = 100, max = 599))]
    pub expect_status: i32,
    /// Send `Authorization: Bearer <value>` with this key of the tenant's own env (from its Secrets).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = "^[A-Za-z_][A-Za-z0-9_]*$"), length(max = 128))]
    pub bearer_env: Option<String>,
}

/// HTTP method of a smoke check.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "UPPERCASE")]
pub enum SmokeMethod {
    /// GET.
    #[default]
    Get,
    /// HEAD.
    Head,
}

/// A webhook that hears of rollouts.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NotificationSink {
    /// Name, unique in the policy (deliveries are recorded under it).
    #[schemars(regex(pattern = DNS_LABEL_PATTERN), length(min = 1, max = 63))]
    pub name: String,
    /// The body: `Generic` JSON or a `Slack` incoming-webhook message.
    #[serde(default)]
    pub format: NotificationFormat,
    /// The Secret (in the policy's namespace) and key holding the URL to POST to (http or https).
    /// The URL is never logged or written to status: a Slack webhook URL is a credential.
    pub url_secret_ref: SecretKeyRef,
    /// The events sent (every event when empty).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 6), extend("x-kubernetes-list-type" = "set"))]
    pub events: Vec<RolloutEventType>,
}

/// Body format of a notification sink.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum NotificationFormat {
    /// `{"id", "type", "policy", "channel", "digest", "tenants", ...}`.
    #[default]
    Generic,
    /// `{"text", "blocks"}`, accepted by Slack incoming webhooks (and Mattermost, Rocket.Chat).
    Slack,
}

/// What happened to a rollout.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, JsonSchema)]
pub enum RolloutEventType {
    /// A new digest started rolling out.
    Started,
    /// The canary gate passed: production moves.
    GatePassed,
    /// Too many tenants failed: nothing else moves.
    Halted,
    /// Aborted by request: moved tenants go back, the digest is rejected.
    Aborted,
    /// Every tenant runs the digest.
    Complete,
    /// An emergency rollout moved every tier at once.
    Emergency,
}

/// A tenant named by an event, with why.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct EventTenant {
    /// Tenant name.
    pub name: String,
    /// Why it is named (for a halt: why its apply failed).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub reason: String,
}

/// One rollout event, recorded by the coordinator in the same write as the transition it
/// describes: the outbox the notifier delivers from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RolloutEvent {
    /// Stable id (also sent as `X-Tenant-Operator-Delivery`, so a receiver can deduplicate).
    pub id: String,
    /// What happened.
    #[serde(rename = "type")]
    pub type_: RolloutEventType,
    /// Channel.
    pub channel: String,
    /// Digest.
    pub digest: String,
    /// When (RFC 3339).
    pub at: String,
    /// Human-readable.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
    /// Tenants it names (a halt: the failed ones and why).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tenants: Vec<EventTenant>,
}

/// Result of one delivery.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum DeliveryResult {
    /// The sink answered 2xx.
    Delivered,
    /// Every attempt failed, or the sink refused it for good (4xx): not sent again.
    GaveUp,
    /// The operator stopped while sending: not sent again (at most once), the receiver may or may
    /// not have it.
    Unknown,
    /// The event happened before the sink was added: not sent.
    Skipped,
}

/// A finished delivery.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Delivery {
    /// Event id.
    pub id: String,
    /// How it ended.
    pub result: DeliveryResult,
    /// Attempts made.
    #[serde(default)]
    pub attempts: i32,
    /// When it ended (RFC 3339).
    pub at: String,
}

/// State of the delivery under way.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum AttemptState {
    /// An attempt was started (recorded before the request is sent).
    Sending,
    /// The last attempt failed; the next waits until `nextAttemptAt`.
    Retrying,
}

/// The delivery under way.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Attempt {
    /// Event id.
    pub id: String,
    /// Attempts started so far.
    pub attempts: i32,
    /// Sending or waiting to retry.
    pub state: AttemptState,
    /// Why the last attempt failed (never the URL).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// When the next attempt may start (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_attempt_at: Option<String>,
}

/// What a sink was sent; owned by the notifier.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SinkStatus {
    /// The sink's name.
    pub sink: String,
    /// When the notifier first saw the sink: older events are not sent to it.
    pub since: String,
    /// Deliveries that ended, for events still in `status.events`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub deliveries: Vec<Delivery>,
    /// The delivery under way.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current: Option<Attempt>,
    /// Why the sink cannot be used (its Secret or URL), if so.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub problem: Option<String>,
}

/// Counts for one tier of a rollout.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TierProgress {
    /// Tenants that run the revision verified.
    pub moved: i32,
    /// Tenants in the tier.
    pub total: i32,
    /// Tenants that failed verification.
    pub failed: i32,
}

/// One rollout: (policy, channel, revision).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RolloutStatus {
    /// Channel.
    pub channel: String,
    /// Digest rolling out.
    pub digest: String,
    /// The channel's digest this rollout answers (differs from `digest` for an emergency rollout).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub channel_digest: Option<String>,
    /// `channel` or `emergency`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// `Canary`, `WaitingForCanaries`, `Soaking`, `Production`, `Halted`, `Aborted`, `Complete`,
    /// `Emergency`.
    pub phase: String,
    /// New batches wait while paused (a `pause` request; `resume` clears it).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub paused: bool,
    /// Canary tier progress.
    #[serde(default)]
    pub canary: TierProgress,
    /// Production tier progress.
    #[serde(default)]
    pub production: TierProgress,
    /// When the soak started (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub soak_started_at: Option<String>,
    /// When the soak ends (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub soak_ends_at: Option<String>,
    /// When the canary gate passed (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gate_passed_at: Option<String>,
    /// Canary tenants the gate passed on.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub gate_tenants: Vec<String>,
    /// When the newest batch was admitted (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_batch_at: Option<String>,
    /// When the newest batch finished (every tenant in it verified or failed; RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch_done_at: Option<String>,
    /// The largest number of tenants that were moving at once.
    #[serde(default)]
    pub peak_concurrency: i32,
    /// Tenants that failed verification (rolled back).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub failed_tenants: Vec<String>,
    /// What each moved tenant ran before (tenant name and digest), for rollback and abort.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub previous: std::collections::BTreeMap<String, String>,
    /// The newest digest of this channel that completed under this policy: what new tenants get
    /// while a rollout is under way.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stable_digest: Option<String>,
    /// Digests of this channel aborted under this policy: never admitted again.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rejected: Vec<String>,
    /// Start (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<String>,
    /// Human-readable state.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// Status of a RolloutPolicy.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RolloutPolicyStatus {
    /// Generation of the spec this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Phase of the newest rollout.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<String>,
    /// Rollouts, one per channel.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rollouts: Vec<RolloutStatus>,
    /// Request tokens already handled, by verb (`promote`, `pause`, `resume`, `abort`, `retry`, `emergency`).
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub handled_requests: std::collections::BTreeMap<String, String>,
    /// kstatus conditions.
    #[serde(default)]
    pub conditions: Vec<Condition>,
    /// The newest rollout events, oldest first (at most [`EVENTS_KEPT`]); written by the
    /// coordinator with the transition each describes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub events: Vec<RolloutEvent>,
    /// Deliveries to each notification sink; written by the notifier only.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub notifications: Vec<SinkStatus>,
}

/// Rollout events kept in a policy's status.
pub const EVENTS_KEPT: usize = 20;
