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
            registry: Mutex::new(Registry::default()),
        };
        registry.register("reconciles", "Reconciles by controller and result", m.reconciles.clone());
        registry.register("commands", "SSM commands by action and outcome", m.commands.clone());
        registry.register("tenants", "Tenants by condition status", m.tenants.clone());
        registry.register("aws_calls", "AWS API calls by operation", m.aws_calls.clone());
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

    /// Text exposition format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        if let Ok(reg) = self.registry.lock() {
            let _ = prometheus_client::encoding::text::encode(&mut out, &reg);
        }
        out
    }
}
