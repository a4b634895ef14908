//! An [`Aws`] wrapper that counts the AWS API calls made through it, by operation.
//!
//! Every trait method is attributed to the AWS operation it is built on (`DescribeInstances`,
//! `DescribeInstanceInformation`, `SendCommand`, ...). One trait call may page or make several
//! requests (`ensure_document`: `DescribeDocument`, then possibly `CreateDocument` or
//! `UpdateDocument` + `UpdateDocumentDefaultVersion`), so this counts **trait calls labelled by their
//! main operation**, not HTTP requests; the SDK's own retries are not counted either. Counts go to
//! `Metrics.aws_calls{operation}` and to the wrapper's own counters (readable with
//! [`Counting::snapshot`], for tests and budgets).

use super::*;
use crate::metrics::{AwsCallLabels, Metrics};
use std::sync::{Arc, Mutex};

/// The operation label of each trait method.
pub mod op {
    /// [`super::Aws::describe_instances`].
    pub const DESCRIBE_INSTANCES: &str = "DescribeInstances";
    /// [`super::Aws::ping`].
    pub const DESCRIBE_INSTANCE_INFORMATION: &str = "DescribeInstanceInformation";
    /// [`super::Aws::ensure_document`] (DescribeDocument first; create/update only on a change).
    pub const ENSURE_DOCUMENT: &str = "DescribeDocument";
    /// [`super::Aws::send_command`].
    pub const SEND_COMMAND: &str = "SendCommand";
    /// [`super::Aws::find_command`].
    pub const LIST_COMMANDS: &str = "ListCommands";
    /// [`super::Aws::invocation`].
    pub const GET_COMMAND_INVOCATION: &str = "GetCommandInvocation";
    /// [`super::Aws::put_secure_parameter`].
    pub const PUT_PARAMETER: &str = "PutParameter";
    /// [`super::Aws::list_parameters`].
    pub const GET_PARAMETERS_BY_PATH: &str = "GetParametersByPath";
    /// [`super::Aws::delete_parameters`].
    pub const DELETE_PARAMETERS: &str = "DeleteParameters";
}

/// Delegates to `A`, counting each call by operation.
pub struct Counting<A: Aws> {
    inner: A,
    metrics: Option<Arc<Metrics>>,
    counts: Mutex<BTreeMap<&'static str, u64>>,
}

impl<A: Aws> Counting<A> {
    /// Counts into its own counters and, when given, into `metrics.aws_calls`.
    pub fn new(inner: A, metrics: Option<Arc<Metrics>>) -> Self {
        Counting { inner, metrics, counts: Mutex::new(BTreeMap::new()) }
    }

    /// The wrapped implementation.
    pub fn inner(&self) -> &A {
        &self.inner
    }

    /// Calls so far, by operation.
    pub fn snapshot(&self) -> BTreeMap<String, u64> {
        match self.counts.lock() {
            Ok(c) => c.iter().map(|(k, v)| ((*k).to_string(), *v)).collect(),
            Err(poisoned) => poisoned.get_ref().iter().map(|(k, v)| ((*k).to_string(), *v)).collect(),
        }
    }

    /// Calls so far, all operations together.
    pub fn total(&self) -> u64 {
        self.snapshot().values().sum()
    }

    fn count(&self, operation: &'static str) {
        match self.counts.lock() {
            Ok(mut c) => *c.entry(operation).or_default() += 1,
            Err(poisoned) => *poisoned.into_inner().entry(operation).or_default() += 1,
        }
        if let Some(m) = &self.metrics {
            m.aws_calls.get_or_create(&AwsCallLabels { operation: operation.to_string() }).inc();
        }
    }
}

/// `after - before`, per operation (operations without calls in between left out).
pub fn delta(before: &BTreeMap<String, u64>, after: &BTreeMap<String, u64>) -> BTreeMap<String, u64> {
    after
        .iter()
        .map(|(k, v)| (k.clone(), v.saturating_sub(before.get(k).copied().unwrap_or(0))))
        .filter(|(_, v)| *v > 0)
        .collect()
}

#[async_trait]
impl<A: Aws> Aws for Counting<A> {
    async fn describe_instances(&self, scope: &AwsScope, query: &InstanceQuery) -> Result<Vec<InstanceInfo>, AwsError> {
        self.count(op::DESCRIBE_INSTANCES);
        self.inner.describe_instances(scope, query).await
    }

    async fn ping(&self, scope: &AwsScope, ids: &[String]) -> Result<BTreeMap<String, Ping>, AwsError> {
        self.count(op::DESCRIBE_INSTANCE_INFORMATION);
        self.inner.ping(scope, ids).await
    }

    async fn ensure_document(&self, scope: &AwsScope, name: &str, content: &str) -> Result<String, AwsError> {
        self.count(op::ENSURE_DOCUMENT);
        self.inner.ensure_document(scope, name, content).await
    }

    async fn send_command(&self, scope: &AwsScope, cmd: &SendCommand) -> Result<String, AwsError> {
        self.count(op::SEND_COMMAND);
        self.inner.send_command(scope, cmd).await
    }

    async fn find_command(&self, scope: &AwsScope, instance: &str, token: &str) -> Result<Option<String>, AwsError> {
        self.count(op::LIST_COMMANDS);
        self.inner.find_command(scope, instance, token).await
    }

    async fn invocation(
        &self,
        scope: &AwsScope,
        command_id: &str,
        instance: &str,
    ) -> Result<Option<Invocation>, AwsError> {
        self.count(op::GET_COMMAND_INVOCATION);
        self.inner.invocation(scope, command_id, instance).await
    }

    async fn put_secure_parameter(&self, scope: &AwsScope, name: &str, value: &str) -> Result<(), AwsError> {
        self.count(op::PUT_PARAMETER);
        self.inner.put_secure_parameter(scope, name, value).await
    }

    async fn list_parameters(&self, scope: &AwsScope, path: &str) -> Result<Vec<String>, AwsError> {
        self.count(op::GET_PARAMETERS_BY_PATH);
        self.inner.list_parameters(scope, path).await
    }

    async fn delete_parameters(&self, scope: &AwsScope, names: &[String]) -> Result<(), AwsError> {
        self.count(op::DELETE_PARAMETERS);
        self.inner.delete_parameters(scope, names).await
    }
}
