//! Prometheus metrics (prometheus-client): reconciles, commands by outcome, tenants by condition,
//! rollouts by phase and progress, AWS calls and their failures by operation.
//!
//! `/metrics` answers in OpenMetrics text when the scraper asks for it (Prometheus does) and in the
//! classic Prometheus text format 0.0.4 otherwise ([`Metrics::exposition`]): `promtool check
//! metrics`, curl and older scrapers read the classic one.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use std::collections::BTreeMap;
use std::sync::Mutex;

/// Labels of a reconcile.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReconcileLabels {
    /// `tenant`, `channel`, `rollout`.
    pub controller: String,
    /// `ok` or an error category.
    pub result: String,
}

/// Labels of a request to the Kubernetes API server.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KubeRequestLabels {
    /// The API server's verb: `get`, `list`, `watch`, `create`, `update`, `patch`, `delete`
    /// (`other` for anything else).
    pub verb: String,
    /// The resource, with its subresource: `tenants`, `tenants/status`, `leases`, ...
    pub resource: String,
    /// The HTTP status code, or `error` when no answer came (refused, reset, timed out).
    pub code: String,
}

/// Labels of a command.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CommandLabels {
    /// Document action.
    pub action: String,
    /// `sent`, `succeeded`, `failed`, `timed_out` (ran out of time on the host), `undeliverable`
    /// (never reached the host: undeliverable or its delivery timed out), `adopted` (found after a
    /// restart).
    pub outcome: String,
}

/// Labels of the tenant gauge.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ConditionLabels {
    /// Condition type.
    pub condition: String,
    /// `True` / `False`.
    pub status: String,
}

/// Labels of AWS calls.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AwsCallLabels {
    /// API operation.
    pub operation: String,
}

/// Labels of a notification delivery.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct NotificationLabels {
    /// Event type (`Started`, `GatePassed`, `Halted`, `Aborted`, `Complete`, `Emergency`).
    pub event: String,
    /// `delivered`, `retrying`, `gave_up`, `unknown` (the operator stopped while sending).
    pub result: String,
}

/// Labels of a failed AWS call.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AwsErrorLabels {
    /// API operation.
    pub operation: String,
    /// `throttled`, `not_found`, `invalid`, `access_denied`, `other` (see [`crate::aws::AwsError`]).
    pub error: String,
}

/// Labels of the rollout phase gauge: one rollout is a (policy, channel).
#[derive(Clone, Debug, Hash, PartialEq, Eq, PartialOrd, Ord, EncodeLabelSet)]
pub struct RolloutLabels {
    /// Namespace of the RolloutPolicy (not `namespace`: a scrape's target label of that name, the
    /// operator's own namespace, would rename it).
    pub policy_namespace: String,
    /// RolloutPolicy.
    pub policy: String,
    /// ImageChannel.
    pub channel: String,
    /// One of [`ROLLOUT_PHASES`].
    pub phase: String,
}

/// Labels of the rollout progress gauge.
#[derive(Clone, Debug, Hash, PartialEq, Eq, PartialOrd, Ord, EncodeLabelSet)]
pub struct RolloutTenantLabels {
    /// Namespace of the RolloutPolicy.
    pub policy_namespace: String,
    /// RolloutPolicy.
    pub policy: String,
    /// ImageChannel.
    pub channel: String,
    /// `canary` or `production`.
    pub tier: String,
    /// `moved` (run the revision, verified), `failed` (failed verification), `in_tier` (all).
    pub count: String,
}

/// Every rollout phase the engine writes (`crate::core::rollout::phase`).
pub const ROLLOUT_PHASES: [&str; 8] =
    ["Canary", "WaitingForCanaries", "Soaking", "Production", "Halted", "Aborted", "Complete", "Emergency"];

/// The `error` label of each [`crate::aws::AwsError`] class. Pure.
pub fn aws_error_class(e: &crate::aws::AwsError) -> &'static str {
    use crate::aws::AwsError as E;
    match e {
        E::Throttled(_) => "throttled",
        E::NotFound(_) => "not_found",
        E::Invalid(_) => "invalid",
        E::AccessDenied(_) => "access_denied",
        E::Other(_) => "other",
    }
}

/// Every `error` label value, so each series exists (at zero) from the first call on.
pub const AWS_ERROR_CLASSES: [&str; 5] = ["throttled", "not_found", "invalid", "access_denied", "other"];

/// The rollout phase series and the rollout progress series, with their values.
pub type RolloutSeries = (Vec<(RolloutLabels, i64)>, Vec<(RolloutTenantLabels, i64)>);

/// The series of one policy last written, by gauge.
type RolloutKeys = (Vec<RolloutLabels>, Vec<RolloutTenantLabels>);

/// The series of the rollout gauges for one policy's rollouts: each rollout has every phase, 1 on
/// its own and 0 on the others (so a phase that is left is seen), and per tier its moved, failed
/// and in-tier tenant counts. Pure.
pub fn rollout_series(namespace: &str, policy: &str, rollouts: &[crate::crd::RolloutStatus]) -> RolloutSeries {
    let mut phases = Vec::new();
    let mut tenants = Vec::new();
    for r in rollouts {
        for p in ROLLOUT_PHASES {
            let l = RolloutLabels {
                policy_namespace: namespace.into(),
                policy: policy.into(),
                channel: r.channel.clone(),
                phase: p.into(),
            };
            phases.push((l, i64::from(r.phase == p)));
        }
        for (tier, progress) in [("canary", &r.canary), ("production", &r.production)] {
            for (count, n) in [("moved", progress.moved), ("failed", progress.failed), ("in_tier", progress.total)] {
                let l = RolloutTenantLabels {
                    policy_namespace: namespace.into(),
                    policy: policy.into(),
                    channel: r.channel.clone(),
                    tier: tier.into(),
                    count: count.into(),
                };
                tenants.push((l, i64::from(n)));
            }
        }
    }
    (phases, tenants)
}

/// All metrics of the operator.
pub struct Metrics {
    /// Reconciles by controller and result.
    pub reconciles: Family<ReconcileLabels, Counter>,
    /// Commands by action and outcome.
    pub commands: Family<CommandLabels, Counter>,
    /// Tenants by condition and status.
    pub tenants: Family<ConditionLabels, Gauge>,
    /// AWS calls by operation.
    pub aws_calls: Family<AwsCallLabels, Counter>,
    /// Notification attempts by event and result.
    pub notifications: Family<NotificationLabels, Counter>,
    /// Failed AWS calls by operation and error class (after the SDK's own retries).
    pub aws_call_errors: Family<AwsErrorLabels, Counter>,
    /// Rollouts by phase (1 on the current phase).
    pub rollouts: Family<RolloutLabels, Gauge>,
    /// Requests to the Kubernetes API server by verb, resource and answer (each attempt).
    pub kube_requests: Family<KubeRequestLabels, Counter>,
    /// Rollout progress: tenants per tier, moved, failed and in the tier.
    pub rollout_tenants: Family<RolloutTenantLabels, Gauge>,
    /// The series last written per (namespace, policy), to drop those of a rollout that is gone.
    rollout_keys: Mutex<BTreeMap<(String, String), RolloutKeys>>,
    registry: Mutex<Registry>,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("tenant_operator");
        let m = Metrics {
            reconciles: Family::default(),
            commands: Family::default(),
            tenants: Family::default(),
            aws_calls: Family::default(),
            notifications: Family::default(),
            aws_call_errors: Family::default(),
            rollouts: Family::default(),
            kube_requests: Family::default(),
            rollout_tenants: Family::default(),
            rollout_keys: Mutex::new(BTreeMap::new()),
            registry: Mutex::new(Registry::default()),
        };
        registry.register("reconciles", "Reconciles by controller and result", m.reconciles.clone());
        registry.register("commands", "SSM commands by action and outcome", m.commands.clone());
        registry.register("tenants", "Tenants by condition status", m.tenants.clone());
        registry.register("aws_calls", "AWS API calls by operation", m.aws_calls.clone());
        registry.register(
            "notifications",
            "Rollout notification attempts by event and result",
            m.notifications.clone(),
        );
        registry.register(
            "aws_call_errors",
            "Failed AWS API calls by operation and error class, after the SDK's retries",
            m.aws_call_errors.clone(),
        );
        registry.register(
            "rollouts",
            "Rollouts (policy, channel) by phase: 1 on the current phase",
            m.rollouts.clone(),
        );
        registry.register(
            "kube_requests",
            "Requests to the Kubernetes API server by verb, resource and HTTP code (each attempt, retries included)",
            m.kube_requests.clone(),
        );
        registry.register(
            "rollout_tenants",
            "Tenants of a rollout per tier: moved (verified), failed, in_tier",
            m.rollout_tenants.clone(),
        );
        // Every notification series exists from the start, at zero (see `aws_operation`).
        for event in NOTIFICATION_EVENTS {
            for result in NOTIFICATION_RESULTS {
                let _ =
                    m.notifications.get_or_create(&NotificationLabels { event: event.into(), result: result.into() });
            }
        }
        Metrics { registry: Mutex::new(registry), ..m }
    }
}

/// The `event` label values of `tenant_operator_notifications_total` (`RolloutEventType`).
pub const NOTIFICATION_EVENTS: [&str; 6] = ["Started", "GatePassed", "Halted", "Aborted", "Complete", "Emergency"];
/// The `result` label values of `tenant_operator_notifications_total`.
pub const NOTIFICATION_RESULTS: [&str; 4] = ["delivered", "retrying", "gave_up", "unknown"];

impl Metrics {
    /// Counts a reconcile.
    pub fn reconciled(&self, controller: &str, result: &str) {
        self.reconciles.get_or_create(&ReconcileLabels { controller: controller.into(), result: result.into() }).inc();
    }

    /// Counts a command outcome.
    pub fn command(&self, action: &str, outcome: &str) {
        self.commands.get_or_create(&CommandLabels { action: action.into(), outcome: outcome.into() }).inc();
    }

    /// Counts a notification attempt.
    pub fn notification(&self, event: &str, result: &str) {
        self.notifications.get_or_create(&NotificationLabels { event: event.into(), result: result.into() }).inc();
    }

    /// Sets the tenant gauge (every known condition type and status is written, zeros included,
    /// so a count that drops to zero is seen).
    pub fn set_tenants(&self, counts: &std::collections::BTreeMap<(String, String), i64>) {
        for ((condition, status), n) in counts {
            self.tenants
                .get_or_create(&ConditionLabels { condition: condition.clone(), status: status.clone() })
                .set(*n);
        }
    }

    /// Creates the AWS call and error series of an operation at zero (a counter that appears only
    /// on its first increment hides that increment from `rate()`).
    pub fn aws_operation(&self, operation: &str) {
        let _ = self.aws_calls.get_or_create(&AwsCallLabels { operation: operation.into() });
        for error in AWS_ERROR_CLASSES {
            let _ = self
                .aws_call_errors
                .get_or_create(&AwsErrorLabels { operation: operation.into(), error: error.into() });
        }
    }

    /// Counts a failed AWS call.
    pub fn aws_error(&self, operation: &str, error: &crate::aws::AwsError) {
        let labels = AwsErrorLabels { operation: operation.into(), error: aws_error_class(error).into() };
        self.aws_call_errors.get_or_create(&labels).inc();
    }

    /// Sets the rollout gauges of one policy to its rollouts (none: the policy is gone), dropping
    /// the series of a rollout no longer in the list.
    pub fn set_rollouts(&self, namespace: &str, policy: &str, rollouts: &[crate::crd::RolloutStatus]) {
        let (phases, tenants) = rollout_series(namespace, policy, rollouts);
        let mut keys = match self.rollout_keys.lock() {
            Ok(k) => k,
            Err(poisoned) => poisoned.into_inner(),
        };
        let key = (namespace.to_string(), policy.to_string());
        if let Some((old_phases, old_tenants)) = keys.remove(&key) {
            for l in old_phases.iter().filter(|l| !phases.iter().any(|(n, _)| n == *l)) {
                self.rollouts.remove(l);
            }
            for l in old_tenants.iter().filter(|l| !tenants.iter().any(|(n, _)| n == *l)) {
                self.rollout_tenants.remove(l);
            }
        }
        for (l, v) in &phases {
            self.rollouts.get_or_create(l).set(*v);
        }
        for (l, v) in &tenants {
            self.rollout_tenants.get_or_create(l).set(*v);
        }
        if !phases.is_empty() {
            keys.insert(
                key,
                (phases.into_iter().map(|(l, _)| l).collect(), tenants.into_iter().map(|(l, _)| l).collect()),
            );
        }
    }

    /// The body and content type of `/metrics` for a request with this `Accept` header:
    /// OpenMetrics text when it names `application/openmetrics-text`, else the classic text
    /// format 0.0.4.
    pub fn exposition(&self, accept: Option<&str>) -> (&'static str, String) {
        if accept.is_some_and(|a| a.contains("application/openmetrics-text")) {
            ("application/openmetrics-text; version=1.0.0; charset=utf-8", self.encode())
        } else {
            ("text/plain; version=0.0.4; charset=utf-8", classic_text(&self.encode()))
        }
    }

    /// OpenMetrics text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        if let Ok(reg) = self.registry.lock() {
            let _ = prometheus_client::encoding::text::encode(&mut out, &reg);
        }
        out
    }
}

/// The classic Prometheus text format (0.0.4) of an OpenMetrics text exposition as
/// prometheus-client writes it: a counter family's `# HELP`/`# TYPE` name its `_total` samples,
/// `unknown` is `untyped`, and the `# UNIT` and `# EOF` lines (OpenMetrics only) go. Pure.
pub fn classic_text(openmetrics: &str) -> String {
    let counters: std::collections::BTreeSet<&str> = openmetrics
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.strip_suffix(" counter"))
        .collect();
    let mut out = String::with_capacity(openmetrics.len());
    for line in openmetrics.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let rewritten = ["# HELP ", "# TYPE "].iter().find_map(|prefix| {
            let rest = line.strip_prefix(prefix)?;
            let (name, tail) = rest.split_once(' ').unwrap_or((rest, ""));
            let name = if counters.contains(name) { format!("{name}_total") } else { name.to_string() };
            let tail = if *prefix == "# TYPE " && tail == "unknown" { "untyped" } else { tail };
            Some(format!("{prefix}{name} {tail}"))
        });
        out.push_str(rewritten.as_deref().unwrap_or(line));
        out.push('\n');
    }
    out
}

/// Condition types counted by the tenant gauge.
pub const COUNTED_CONDITIONS: [&str; 6] =
    ["Ready", "Reconciling", "Stalled", "InstanceReachable", "ImageUpToDate", "SecretsSynced"];

/// How many tenants have each counted condition `True` and `False` (a tenant without the condition
/// counts in neither). Pure.
pub fn tenants_by_condition(tenants: &[crate::crd::Tenant]) -> std::collections::BTreeMap<(String, String), i64> {
    let mut out = std::collections::BTreeMap::new();
    for c in COUNTED_CONDITIONS {
        for s in ["True", "False"] {
            out.insert((c.to_string(), s.to_string()), 0);
        }
    }
    for t in tenants {
        for c in t.status.as_ref().map(|s| s.conditions.as_slice()).unwrap_or_default() {
            if let Some(n) = out.get_mut(&(c.type_.clone(), c.status.clone())) {
                *n += 1;
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tenants_are_counted_by_condition_and_zeros_are_written() {
        let t: crate::crd::Tenant = serde_json::from_value(serde_json::json!({
            "apiVersion": "fleet.molecule.ai/v1alpha1", "kind": "Tenant",
            "metadata": {"name": "a", "namespace": "n"},
            "spec": {"slug": "a", "instance": {"id": "i-1"}, "channel": "c"},
            "status": {"conditions": [
                {"type": "Ready", "status": "True", "reason": "Converged", "message": "", "lastTransitionTime": "2026-01-01T00:00:00Z"},
                {"type": "Stalled", "status": "False", "reason": "Converged", "message": "", "lastTransitionTime": "2026-01-01T00:00:00Z"}
            ]}
        }))
        .unwrap();
        let counts = tenants_by_condition(&[t.clone(), t]);
        assert_eq!(counts[&("Ready".to_string(), "True".to_string())], 2);
        assert_eq!(counts[&("Ready".to_string(), "False".to_string())], 0);
        let m = Metrics::default();
        m.set_tenants(&counts);
        let text = m.encode();
        assert!(text.contains("tenant_operator_tenants{condition=\"Ready\",status=\"True\"} 2"), "{text}");
        assert!(text.contains("tenant_operator_tenants{condition=\"Stalled\",status=\"True\"} 0"), "{text}");
    }
    fn rollout(
        channel: &str,
        phase: &str,
        canary: (i32, i32, i32),
        production: (i32, i32, i32),
    ) -> crate::crd::RolloutStatus {
        let tier = |(moved, failed, total)| crate::crd::TierProgress { moved, failed, total };
        crate::crd::RolloutStatus {
            channel: channel.into(),
            phase: phase.into(),
            canary: tier(canary),
            production: tier(production),
            ..Default::default()
        }
    }

    fn value(text: &str, series: &str) -> Option<String> {
        text.lines().find_map(|l| l.rsplit_once(' ').filter(|(s, _)| *s == series).map(|(_, v)| v.to_string()))
    }

    #[test]
    fn a_rollout_has_every_phase_one_on_its_own_and_its_progress_per_tier() {
        let m = Metrics::default();
        m.set_rollouts(
            "fleet",
            "safe",
            &[rollout("stable", "Halted", (2, 1, 3), (0, 0, 7)), rollout("edge", "Complete", (1, 0, 1), (4, 0, 4))],
        );
        let text = m.encode();
        let phase = |ch: &str, p: &str| {
            value(
                &text,
                &format!(
                    "tenant_operator_rollouts{{policy_namespace=\"fleet\",policy=\"safe\",channel=\"{ch}\",phase=\"{p}\"}}"
                ),
            )
        };
        assert_eq!(phase("stable", "Halted").as_deref(), Some("1"), "{text}");
        assert_eq!(phase("stable", "Production").as_deref(), Some("0"), "{text}");
        assert_eq!(phase("edge", "Complete").as_deref(), Some("1"), "{text}");
        assert_eq!(phase("edge", "Halted").as_deref(), Some("0"), "{text}");
        assert_eq!(text.lines().filter(|l| l.starts_with("tenant_operator_rollouts{")).count(), 16, "{text}");
        let tenants = |ch: &str, tier: &str, count: &str| {
            value(
                &text,
                &format!(
                    "tenant_operator_rollout_tenants{{policy_namespace=\"fleet\",policy=\"safe\",channel=\"{ch}\",tier=\"{tier}\",count=\"{count}\"}}"
                ),
            )
        };
        assert_eq!(tenants("stable", "canary", "moved").as_deref(), Some("2"));
        assert_eq!(tenants("stable", "canary", "failed").as_deref(), Some("1"));
        assert_eq!(tenants("stable", "canary", "in_tier").as_deref(), Some("3"));
        assert_eq!(tenants("stable", "production", "in_tier").as_deref(), Some("7"));
        assert_eq!(tenants("edge", "production", "moved").as_deref(), Some("4"));
    }

    #[test]
    fn a_rollout_that_is_gone_leaves_no_series_and_other_policies_keep_theirs() {
        let m = Metrics::default();
        m.set_rollouts(
            "fleet",
            "safe",
            &[rollout("stable", "Canary", (0, 0, 1), (0, 0, 1)), rollout("edge", "Canary", (0, 0, 1), (0, 0, 1))],
        );
        m.set_rollouts("other", "safe", &[rollout("stable", "Soaking", (1, 0, 1), (0, 0, 1))]);
        m.set_rollouts("fleet", "safe", &[rollout("stable", "Production", (1, 0, 1), (0, 0, 1))]);
        let text = m.encode();
        assert!(!text.contains("channel=\"edge\""), "{text}");
        assert!(text.contains("tenant_operator_rollouts{policy_namespace=\"fleet\",policy=\"safe\",channel=\"stable\",phase=\"Production\"} 1"), "{text}");
        assert!(
            text.contains(
                "tenant_operator_rollouts{policy_namespace=\"fleet\",policy=\"safe\",channel=\"stable\",phase=\"Canary\"} 0"
            ),
            "{text}"
        );
        // The policy is deleted.
        m.set_rollouts("fleet", "safe", &[]);
        let text = m.encode();
        assert!(!text.contains("policy_namespace=\"fleet\""), "{text}");
        assert!(
            text.contains(
                "tenant_operator_rollouts{policy_namespace=\"other\",policy=\"safe\",channel=\"stable\",phase=\"Soaking\"} 1"
            ),
            "{text}"
        );
    }

    #[test]
    fn aws_errors_are_labelled_by_class() {
        use crate::aws::AwsError as E;
        let m = Metrics::default();
        m.aws_operation("SendCommand");
        m.aws_error("SendCommand", &E::Throttled("Rate exceeded".into()));
        m.aws_error("SendCommand", &E::Throttled("Rate exceeded".into()));
        m.aws_error("SendCommand", &E::AccessDenied("no".into()));
        let text = m.encode();
        let v = |e: &str| {
            value(&text, &format!("tenant_operator_aws_call_errors_total{{operation=\"SendCommand\",error=\"{e}\"}}"))
        };
        assert_eq!(v("throttled").as_deref(), Some("2"), "{text}");
        assert_eq!(v("access_denied").as_deref(), Some("1"), "{text}");
        assert_eq!(v("not_found").as_deref(), Some("0"), "{text}");
        assert_eq!(v("invalid").as_deref(), Some("0"), "{text}");
        assert_eq!(v("other").as_deref(), Some("0"), "{text}");
    }

    #[test]
    fn the_classic_format_names_counters_by_their_samples_and_has_no_openmetrics_lines() {
        let m = Metrics::default();
        m.reconciled("tenant", "ok");
        m.aws_operation("SendCommand");
        m.set_tenants(&tenants_by_condition(&[]));
        m.set_rollouts("fleet", "safe", &[rollout("stable", "Canary", (0, 0, 1), (0, 0, 1))]);
        let om = m.encode();
        assert!(om.ends_with("# EOF\n"), "{om}");
        assert!(om.contains("# TYPE tenant_operator_reconciles counter\n"), "{om}");
        let classic = classic_text(&om);
        for want in [
            "# HELP tenant_operator_reconciles_total Reconciles by controller and result.\n",
            "# TYPE tenant_operator_reconciles_total counter\n",
            "tenant_operator_reconciles_total{controller=\"tenant\",result=\"ok\"} 1\n",
            "# TYPE tenant_operator_aws_calls_total counter\n",
            "# TYPE tenant_operator_tenants gauge\n",
            "# TYPE tenant_operator_rollouts gauge\n",
        ] {
            assert!(classic.contains(want), "no {want:?} in {classic}");
        }
        assert!(!classic.contains("# EOF") && !classic.contains("# UNIT"), "{classic}");
        assert!(!classic.contains("# TYPE tenant_operator_reconciles counter"), "{classic}");
        // Every sample line is the same as in the OpenMetrics text.
        let samples = |t: &str| t.lines().filter(|l| !l.starts_with('#')).map(str::to_string).collect::<Vec<_>>();
        assert_eq!(samples(&om), samples(&classic));
        assert_eq!(classic_text("# TYPE x unknown\nx 1\n# EOF\n"), "# TYPE x untyped\nx 1\n");
    }

    #[test]
    fn the_exposition_follows_the_accept_header() {
        let m = Metrics::default();
        // What Prometheus sends by default.
        let prom = "application/openmetrics-text;version=1.0.0;escaping=allow-utf-8;q=0.6,application/openmetrics-text;version=0.0.1;q=0.5,text/plain;version=1.0.0;escaping=allow-utf-8;q=0.4,text/plain;version=0.0.4;q=0.3,*/*;q=0.2";
        let (ct, body) = m.exposition(Some(prom));
        assert!(ct.starts_with("application/openmetrics-text; version=1.0.0"), "{ct}");
        assert!(body.ends_with("# EOF\n"));
        for accept in [None, Some("*/*"), Some("text/plain")] {
            let (ct, body) = m.exposition(accept);
            assert_eq!(ct, "text/plain; version=0.0.4; charset=utf-8");
            assert!(!body.contains("# EOF"), "{body}");
        }
    }
}
