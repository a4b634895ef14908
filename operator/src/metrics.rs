//! Prometheus metrics (prometheus-client): reconciles, commands by outcome, tenants by condition.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use std::sync::Mutex;

/// Labels of a reconcile.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReconcileLabels {
    /// `tenant`, `channel`, `rollout`.
    pub controller: String,
    /// `ok` or an error category.
    pub result: String,
}

/// Labels of a command.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CommandLabels {
    /// Document action.
    pub action: String,
    /// `sent`, `succeeded`, `failed`, `timed_out`, `undeliverable`, `adopted` (found after a restart).
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
        Metrics { registry: Mutex::new(registry), ..m }
    }
}

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

    /// Text exposition format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        if let Ok(reg) = self.registry.lock() {
            let _ = prometheus_client::encoding::text::encode(&mut out, &reg);
        }
        out
    }
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
}
