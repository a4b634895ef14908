//! `Tenant`: one org's host.

use super::common::*;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// One customer org: its EC2 host, the channel it follows, and the container it runs.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "fleet.molecule.ai",
    version = "v1alpha1",
    kind = "Tenant",
    plural = "tenants",
    namespaced,
    status = "TenantStatus",
    shortname = "tn",
    category = "fleet",
    printcolumn(json_path = ".spec.tier", name = "Tier", type_ = "string"),
    printcolumn(json_path = ".spec.channel", name = "Channel", type_ = "string"),
    printcolumn(
        json_path = ".status.running",
        name = "Running",
        type_ = "string",
        description = "Short digest of the image the active slot runs"
    ),
    printcolumn(json_path = ".status.observed.activeSlot", name = "Slot", type_ = "string"),
    printcolumn(json_path = ".status.conditions[?(@.type==\"Ready\")].status", name = "Ready", type_ = "string"),
    printcolumn(
        json_path = ".status.conditions[?(@.type==\"Ready\")].reason",
        name = "Reason",
        type_ = "string",
        priority = 1
    ),
    printcolumn(json_path = ".status.instanceId", name = "Instance", type_ = "string", priority = 1),
    printcolumn(json_path = ".metadata.creationTimestamp", name = "Age", type_ = "date")
)]
#[serde(rename_all = "camelCase")]
pub struct TenantSpec {
    /// The org's slug: a DNS label, equal to the `fleet.molecule.ai/org` tag of its instance. Immutable.
    #[schemars(regex(pattern = DNS_LABEL_PATTERN), length(min = 1, max = 63))]
    #[x_kube(validation = Rule::new("self == oldSelf").message("slug is immutable"))]
    pub slug: String,

    /// Which EC2 instance is this org's host.
    pub instance: InstanceRef,

    /// Name of the ImageChannel (same namespace) whose digest this tenant follows.
    #[schemars(regex(pattern = OBJECT_NAME_PATTERN), length(min = 1, max = 253))]
    pub channel: String,

    /// Hold this tenant at this digest, whatever its channel says.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = DIGEST_PATTERN))]
    pub pinned_digest: Option<String>,

    /// Leave the host alone: no command is sent while true (observation stops too).
    #[serde(default)]
    pub suspend: bool,

    /// Rollout tier: canaries move first and gate production.
    #[serde(default)]
    pub tier: Tier,

    /// Name of the RolloutPolicy (same namespace); the built-in default policy applies when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = OBJECT_NAME_PATTERN), length(min = 1, max = 253))]
    pub rollout_policy: Option<String>,

    /// The app container on the host.
    #[serde(default)]
    pub container: ContainerSpec,

    /// Taking over a host that today's fleet set up by hand (a container started by user-data and
    /// the cron auto-updater). `Disabled` (default): such a host is only inspected (read-only) and shown
    /// in `status.adoption`; `Adopt`: the operator imports it and disables the cron; `Release`: the
    /// operator hands the host back (cron restored) and sends nothing else.
    #[serde(default)]
    pub adoption: AdoptionMode,
}

/// What the operator may do with a host it did not set up.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum AdoptionMode {
    /// Never take a hand-run host over; inspect it read-only for a preview. (Not `Off`: YAML 1.1
    /// parsers, kubectl's among them, read an unquoted `Off` as the boolean false.)
    #[default]
    Disabled,
    /// Import the hand-run container (digest, run options, env into Parameter Store) and disable
    /// the cron auto-updater; the container keeps serving.
    Adopt,
    /// Hand the host back: restore the cron auto-updater, remove the operator's markers.
    Release,
}

/// Rollout tier of a tenant.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Tier {
    /// Moves first; its health gates the production tier.
    Canary,
    /// Moves after the canary gate passed.
    #[default]
    Production,
}

/// How to find the org's instance: exactly one of `id` or `tags`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("has(self.id) != has(self.tags)").message("exactly one of instance.id or instance.tags must be set"))]
pub struct InstanceRef {
    /// EC2 instance id.
    // Not nullable (`with`): an explicit `null` is then pruned like an absent field, as serde
    // reads it. A nullable field set to `null` counts as present for CEL's `has()`, so
    // `id: null` alone would pass the rule below while the operator sees neither id nor tags.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "String", regex(pattern = "^i-([0-9a-f]{8}|[0-9a-f]{17})$"))]
    pub id: Option<String>,

    /// Tags that select exactly one instance (in addition to the managed and org tags).
    // `length` does not reach a map's schema; the bounds are written out. Not nullable: see `id`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "BTreeMap<String, String>", extend("minProperties" = 1, "maxProperties" = 10))]
    #[x_kube(validation = Rule::new("self.all(k, k.size() <= 128 && !k.startsWith('aws:'))").message("tag keys are at most 128 characters and may not start with aws:"))]
    #[x_kube(validation = Rule::new("self.all(k, self[k].size() <= 256)").message("tag values are at most 256 characters"))]
    pub tags: Option<BTreeMap<String, String>>,

    /// AWS region of the instance; the operator's default region when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = "^[a-z]{2}(-gov|-iso[a-z]?)?-[a-z]+-[0-9]{1,2}$"))]
    pub region: Option<String>,

    /// Role to assume to reach the instance (for a fleet in another AWS account).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = "^arn:aws[a-z-]*:iam::[0-9]{12}:role/[A-Za-z0-9+=,.@_/-]{1,512}$"))]
    pub assume_role_arn: Option<String>,
}

/// The app container and how `docker run` starts it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct ContainerSpec {
    /// Base name of the container; the slot is appended (`app-blue`, `app-green`).
    #[serde(default = "default_container_name")]
    #[schemars(regex(pattern = "^[a-z0-9][a-z0-9_.-]*$"), length(min = 1, max = 48))]
    pub name: String,

    /// Ports on the host.
    #[serde(default)]
    pub ports: SlotPorts,

    /// Port the app listens on inside the container.
    #[serde(default = "default_container_port")]
    #[schemars(range(min = 1, max = 65535))]
    pub container_port: i32,

    /// Health endpoint of the app (a path, queried on the slot's local port).
    #[serde(default = "default_health_path")]
    #[schemars(regex(pattern = "^/[A-Za-z0-9._~!$&'()*+,;=:@%/-]*$"), length(max = 256))]
    pub health_path: String,

    /// Plain environment variables.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    /// A list map keyed by name: the API server itself refuses a name given twice (a CEL rule
    /// comparing every pair would be quadratic, beyond the server's cost budget).
    #[schemars(length(max = 256), extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["name"]))]
    pub env: Vec<EnvVar>,

    /// Secrets in the same namespace whose keys become environment variables.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    pub env_from: Vec<EnvFromSource>,

    /// Bind mounts.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    pub volumes: Vec<VolumeMount>,

    /// Docker network to attach to (`bridge` when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = "^[a-zA-Z0-9][a-zA-Z0-9_.-]*$"), length(max = 64))]
    pub network: Option<String>,

    /// Docker restart policy.
    #[serde(default)]
    pub restart_policy: RestartPolicy,

    /// Extra container labels. Keys under `fleet.molecule.ai/` are reserved.
    // `length` does not reach a map's schema; the bound is written out.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(extend("maxProperties" = 64))]
    #[x_kube(validation = Rule::new("self.all(k, !k.startsWith('fleet.molecule.ai/'))").message("label keys under fleet.molecule.ai/ are reserved"))]
    #[x_kube(validation = Rule::new("self.all(k, k.matches('^[A-Za-z0-9][A-Za-z0-9._/-]{0,127}$'))").message("label keys must be 1-128 characters of letters, digits, '.', '_', '-', '/'"))]
    pub labels: BTreeMap<String, String>,

    /// Entries added to the container's /etc/hosts.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    pub extra_hosts: Vec<ExtraHost>,

    /// Mount the host's docker socket into the container (the app manages sibling containers).
    #[serde(default)]
    pub mount_docker_socket: bool,

    /// A `kubernetes.io/dockerconfigjson` Secret (same namespace) with the login for the image's
    /// registry. Only the entry for the image's own registry host is used; it reaches the host inside
    /// the revision's SecureString under the tenant's prefix (never in command text), and the host
    /// logs in with `--password-stdin` before it pulls.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_pull_secret: Option<LocalSecretRef>,
}

impl Default for ContainerSpec {
    fn default() -> Self {
        ContainerSpec {
            name: default_container_name(),
            ports: SlotPorts::default(),
            container_port: default_container_port(),
            health_path: default_health_path(),
            env: Vec::new(),
            env_from: Vec::new(),
            volumes: Vec::new(),
            network: None,
            restart_policy: RestartPolicy::default(),
            labels: BTreeMap::new(),
            extra_hosts: Vec::new(),
            mount_docker_socket: false,
            image_pull_secret: None,
        }
    }
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

fn default_container_name() -> String {
    "app".to_string()
}
fn default_container_port() -> i32 {
    8080
}
fn default_health_path() -> String {
    "/health".to_string()
}

/// The host ports of the two slots and of the router in front of them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.blue != self.green && self.blue != self.routing && self.green != self.routing").message("blue, green and routing ports must differ"))]
pub struct SlotPorts {
    /// Host port of the blue slot.
    #[serde(default = "default_blue")]
    #[schemars(range(min = 1, max = 65535))]
    pub blue: i32,
    /// Host port of the green slot.
    #[serde(default = "default_green")]
    #[schemars(range(min = 1, max = 65535))]
    pub green: i32,
    /// Port the host's router listens on and forwards to the active slot.
    #[serde(default = "default_routing")]
    #[schemars(range(min = 1, max = 65535))]
    pub routing: i32,
}

impl Default for SlotPorts {
    fn default() -> Self {
        SlotPorts { blue: default_blue(), green: default_green(), routing: default_routing() }
    }
}
fn default_blue() -> i32 {
    8080
}
fn default_green() -> i32 {
    8081
}
fn default_routing() -> i32 {
    8000
}

/// A plain environment variable.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct EnvVar {
    /// Variable name.
    #[schemars(regex(pattern = "^[A-Za-z_][A-Za-z0-9_]*$"), length(min = 1, max = 128))]
    pub name: String,
    /// Value, passed to the container byte for byte (never interpreted by a shell).
    #[serde(default)]
    #[schemars(length(max = 32768))]
    pub value: String,
}

/// Every key of a Secret becomes an environment variable.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct EnvFromSource {
    /// The Secret (same namespace).
    pub secret_ref: LocalSecretRef,
    /// Prepended to every key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = "^[A-Za-z_][A-Za-z0-9_]*$"), length(max = 64))]
    pub prefix: Option<String>,
    /// Do not fail when the Secret is missing.
    #[serde(default)]
    pub optional: bool,
}

/// A bind mount of a host path.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct VolumeMount {
    /// Absolute path on the host.
    #[schemars(regex(pattern = "^/[A-Za-z0-9._/@+-]*$"), length(max = 512))]
    #[x_kube(validation = Rule::new("!self.matches('(^|/)[.][.](/|$)')").message("hostPath may not contain '..'"))]
    pub host_path: String,
    /// Absolute path in the container.
    #[schemars(regex(pattern = "^/[A-Za-z0-9._/@+-]*$"), length(max = 512))]
    #[x_kube(validation = Rule::new("!self.matches('(^|/)[.][.](/|$)')").message("containerPath may not contain '..'"))]
    pub container_path: String,
    /// Mount read-only.
    #[serde(default)]
    pub read_only: bool,
}

/// An /etc/hosts entry.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ExtraHost {
    /// Host name.
    #[schemars(regex(pattern = "^[A-Za-z0-9]([-A-Za-z0-9.]*[A-Za-z0-9])?$"), length(min = 1, max = 253))]
    pub hostname: String,
    /// IPv4 or IPv6 address, or `host-gateway`.
    #[schemars(regex(pattern = "^([0-9]{1,3}(\\.[0-9]{1,3}){3}|[0-9a-fA-F:]+|host-gateway)$"), length(max = 45))]
    pub ip: String,
}

/// Docker restart policy.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum RestartPolicy {
    /// Never restart.
    No,
    /// Always restart.
    Always,
    /// Restart unless stopped by hand.
    #[default]
    UnlessStopped,
    /// Restart when the process exits non-zero.
    OnFailure,
}

impl RestartPolicy {
    /// The value of docker's `--restart`.
    pub fn as_docker(self) -> &'static str {
        match self {
            RestartPolicy::No => "no",
            RestartPolicy::Always => "always",
            RestartPolicy::UnlessStopped => "unless-stopped",
            RestartPolicy::OnFailure => "on-failure",
        }
    }
}

/// A blue/green slot on the host.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Slot {
    /// The slot on `ports.blue`.
    Blue,
    /// The slot on `ports.green`.
    Green,
}

impl Slot {
    /// The other slot.
    pub fn other(self) -> Slot {
        match self {
            Slot::Blue => Slot::Green,
            Slot::Green => Slot::Blue,
        }
    }
    /// Lower-case name as used on the host.
    pub fn as_str(self) -> &'static str {
        match self {
            Slot::Blue => "blue",
            Slot::Green => "green",
        }
    }
}

/// What the tenant is admitted to run: written only by the rollout coordinator.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Revision {
    /// Image digest (`sha256:...`).
    pub digest: String,
    /// Full image reference pulled by digest (`repo@sha256:...`).
    pub image: String,
    /// HMAC of the env file, keyed by the operator (never a plain hash of secret values).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub env_revision: Option<String>,
    /// Why this target: `channel`, `pin`, `rollout/<name>`, `emergency`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// When the coordinator admitted it (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub admitted_at: Option<String>,
}

/// What one slot on the host runs, as the host reports it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SlotObservation {
    /// Container name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container: Option<String>,
    /// Digest the container was applied from (its label; `docker inspect` shows a config digest).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest: Option<String>,
    /// Env revision the container was started with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub env_revision: Option<String>,
    /// Whether the container process runs.
    #[serde(default)]
    pub running: bool,
    /// Health as probed on the host: `healthy`, `unhealthy`, `unknown`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health: Option<String>,
}

/// The host's own report.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HostObservation {
    /// The slot the router sends traffic to (or the only slot, for in-place hosts).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub active_slot: Option<Slot>,
    /// Blue slot.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub blue: Option<SlotObservation>,
    /// Green slot.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub green: Option<SlotObservation>,
    /// The revision the host applied last: its revision parameter's base id, then the first 32 hex
    /// digits of the digest.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub applied_revision: Option<String>,
    /// Whether the operator manages this host (an applied-revision marker exists).
    #[serde(default)]
    pub managed: bool,
    /// Running containers the operator did not start (a hand-run app), the adopted one excepted.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub unmanaged_containers: u32,
    /// The cron auto-updater of a hand-run host: `active`, `disabled` (set aside), `absent`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cron: Option<String>,
    /// The blue slot is a hand-run container the operator adopted (not yet replaced).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub adopted: bool,
    /// When this report was taken (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_at: Option<String>,
}

/// A command sent to the host and not yet finished.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct InFlightCommand {
    /// Token written before SendCommand and carried in the command's comment.
    pub intent_token: String,
    /// SSM command id, once known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command_id: Option<String>,
    /// `observe`, `apply`, `switch`, ...
    pub action: String,
    /// The revision the command applies, if any (the command carries its digest; the host reads
    /// the rest from its revision parameter).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision: Option<String>,
    /// The image digest of that revision.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest: Option<String>,
    /// When the intent was written (RFC 3339).
    pub started_at: String,
}

/// One finished apply.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ApplyRecord {
    /// The revision applied.
    pub revision: String,
    /// The image digest of that revision.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest: Option<String>,
    /// The action.
    pub action: String,
    /// `Succeeded`, `RolledBack`, `Failed`, `TimedOut`.
    pub result: String,
    /// Human readable detail (never a secret value).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// SSM command id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command_id: Option<String>,
    /// Start (RFC 3339).
    pub started_at: String,
    /// End (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<String>,
}

/// Status of a Tenant.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TenantStatus {
    /// Generation of the spec this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// kstatus conditions (`Ready`, `Reconciling`, `Stalled`, `InstanceReachable`, ...).
    #[serde(default)]
    pub conditions: Vec<Condition>,
    /// The instance this tenant resolved to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance_id: Option<String>,
    /// Short digest of what the active slot runs (for `kubectl get`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub running: Option<String>,
    /// The revision the rollout coordinator admitted this tenant to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<Revision>,
    /// What the host reports it runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed: Option<HostObservation>,
    /// The command in flight, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub in_flight: Option<InFlightCommand>,
    /// The last applies, newest first (bounded).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub history: Vec<ApplyRecord>,
    /// What the hand-run container on the host runs and whether it was adopted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub adoption: Option<AdoptionStatus>,
}

/// The adoption of a hand-run host.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AdoptionStatus {
    /// What the host's hand-run container runs and how it was started (env var names only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub imported: Option<ImportedContainer>,
    /// When the host was inspected (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inspected_at: Option<String>,
    /// The revision the adoption made the host's first (its applied-revision marker).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision: Option<String>,
    /// When the host was adopted (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub adopted_at: Option<String>,
    /// Where the env taken over from the container lives: a write-once SecureString under the
    /// tenant's own prefix, written by the host. Its values never pass through the cluster.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub imported_env_parameter: Option<String>,
    /// When the host was handed back (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub released_at: Option<String>,
    /// Why the last inspect or adopt failed (a short host detail such as `legacy-changed`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure: Option<String>,
    /// No new adopt attempt before this time (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_after: Option<String>,
}

/// A hand-run container as the host reported it. Every value was checked on the host and again by
/// the operator; env values are never reported.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ImportedContainer {
    /// Container name.
    #[serde(default)]
    pub container: String,
    /// Repository the image was pulled from.
    #[serde(default)]
    pub image: String,
    /// The digest the image was pulled by (its repo digest, not the config digest).
    #[serde(default)]
    pub digest: String,
    /// Names of the env vars the container was started with (less the image's own).
    #[serde(default)]
    pub env_names: Vec<String>,
    /// Published TCP ports.
    #[serde(default)]
    pub ports: Vec<ImportedPort>,
    /// Bind mounts (the docker socket is `mountDockerSocket`).
    #[serde(default)]
    #[schemars(length(max = 64))]
    pub volumes: Vec<VolumeMount>,
    /// Docker network.
    #[serde(default)]
    pub network: String,
    /// Docker restart policy (`no`, `always`, `unless-stopped`, `on-failure`).
    #[serde(default)]
    pub restart_policy: String,
    /// /etc/hosts entries.
    #[serde(default)]
    pub extra_hosts: Vec<ExtraHost>,
    /// Labels given on `docker run` (not the image's).
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// The docker socket is mounted.
    #[serde(default)]
    pub mount_docker_socket: bool,
    /// Settings the host could not report safely (they are not imported; adoption waits).
    #[serde(default)]
    pub dropped: Vec<String>,
}

/// A published port.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ImportedPort {
    /// Host port.
    pub host: i32,
    /// Container port.
    pub container: i32,
}
