//! An [`Aws`] wrapper that counts the AWS API calls made through it, by operation.
//!
//! Every trait method is attributed to the AWS operation it is built on (`DescribeInstances`,
//! `DescribeInstanceInformation`, `SendCommand`, ...). One trait call may page or make several
//! requests (`ensure_document`: `DescribeDocument`, then possibly `CreateDocument` or
//! `UpdateDocument` + `UpdateDocumentDefaultVersion`), so this counts **trait calls labelled by their
//! main operation**, not HTTP requests; the SDK's own retries are not counted either. Counts go to
//! `Metrics.aws_calls{operation}` and to the wrapper's own counters (readable with
//! [`Counting::snapshot`], for tests and budgets). A call that fails is also counted in
//! `Metrics.aws_call_errors{operation,error}` by its [`AwsError`] class (after the SDK's own
//! retries: a throttle the SDK absorbed is not seen here).

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
    /// [`super::Aws::command_invocations`].
    pub const LIST_COMMAND_INVOCATIONS: &str = "ListCommandInvocations";
    /// [`super::Aws::put_secure_parameter`].
    pub const PUT_PARAMETER: &str = "PutParameter";
    /// [`super::Aws::list_parameters`].
    pub const GET_PARAMETERS_BY_PATH: &str = "GetParametersByPath";
    /// [`super::Aws::delete_parameters`].
    pub const DELETE_PARAMETERS: &str = "DeleteParameters";
    /// Every operation above.
    pub const ALL: [&str; 10] = [
        DESCRIBE_INSTANCES,
        DESCRIBE_INSTANCE_INFORMATION,
        ENSURE_DOCUMENT,
        SEND_COMMAND,
        LIST_COMMANDS,
        GET_COMMAND_INVOCATION,
        LIST_COMMAND_INVOCATIONS,
        PUT_PARAMETER,
        GET_PARAMETERS_BY_PATH,
        DELETE_PARAMETERS,
    ];
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
        if let Some(m) = &metrics {
            for operation in op::ALL {
                m.aws_operation(operation);
            }
        }
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

impl<A: Aws> Counting<A> {
    fn seen<T>(&self, operation: &'static str, result: Result<T, AwsError>) -> Result<T, AwsError> {
        if let (Some(m), Err(e)) = (&self.metrics, &result) {
            m.aws_error(operation, e);
        }
        result
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
        self.seen(op::DESCRIBE_INSTANCES, self.inner.describe_instances(scope, query).await)
    }

    async fn ping(&self, scope: &AwsScope, ids: &[String]) -> Result<BTreeMap<String, Ping>, AwsError> {
        self.count(op::DESCRIBE_INSTANCE_INFORMATION);
        self.seen(op::DESCRIBE_INSTANCE_INFORMATION, self.inner.ping(scope, ids).await)
    }

    async fn ensure_document(&self, scope: &AwsScope, name: &str, content: &str) -> Result<String, AwsError> {
        self.count(op::ENSURE_DOCUMENT);
        self.seen(op::ENSURE_DOCUMENT, self.inner.ensure_document(scope, name, content).await)
    }

    async fn send_command(&self, scope: &AwsScope, cmd: &SendCommand) -> Result<String, AwsError> {
        self.count(op::SEND_COMMAND);
        self.seen(op::SEND_COMMAND, self.inner.send_command(scope, cmd).await)
    }

    async fn find_command(&self, scope: &AwsScope, instance: &str, token: &str) -> Result<Option<String>, AwsError> {
        self.count(op::LIST_COMMANDS);
        self.seen(op::LIST_COMMANDS, self.inner.find_command(scope, instance, token).await)
    }

    async fn commands_since(
        &self,
        scope: &AwsScope,
        document: &str,
        since: jiff::Timestamp,
    ) -> Result<Vec<CommandProgress>, AwsError> {
        self.count(op::LIST_COMMANDS);
        self.seen(op::LIST_COMMANDS, self.inner.commands_since(scope, document, since).await)
    }

    async fn invocation(
        &self,
        scope: &AwsScope,
        command_id: &str,
        instance: &str,
    ) -> Result<Option<Invocation>, AwsError> {
        self.count(op::GET_COMMAND_INVOCATION);
        self.seen(op::GET_COMMAND_INVOCATION, self.inner.invocation(scope, command_id, instance).await)
    }

    async fn command_invocations(&self, scope: &AwsScope, command_id: &str) -> Result<Vec<ListedInvocation>, AwsError> {
        self.count(op::LIST_COMMAND_INVOCATIONS);
        self.seen(op::LIST_COMMAND_INVOCATIONS, self.inner.command_invocations(scope, command_id).await)
    }

    async fn put_secure_parameter(&self, scope: &AwsScope, name: &str, value: &str) -> Result<(), AwsError> {
        self.count(op::PUT_PARAMETER);
        self.seen(op::PUT_PARAMETER, self.inner.put_secure_parameter(scope, name, value).await)
    }

    async fn list_parameters(&self, scope: &AwsScope, path: &str) -> Result<Vec<String>, AwsError> {
        self.count(op::GET_PARAMETERS_BY_PATH);
        self.seen(op::GET_PARAMETERS_BY_PATH, self.inner.list_parameters(scope, path).await)
    }

    async fn delete_parameters(&self, scope: &AwsScope, names: &[String]) -> Result<(), AwsError> {
        self.count(op::DELETE_PARAMETERS);
        self.seen(op::DELETE_PARAMETERS, self.inner.delete_parameters(scope, names).await)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Fails every call with the error its name says.
    struct Failing;

    #[async_trait]
    impl Aws for Failing {
        async fn describe_instances(&self, _: &AwsScope, _: &InstanceQuery) -> Result<Vec<InstanceInfo>, AwsError> {
            Err(AwsError::Throttled("Throttling: Rate exceeded".into()))
        }
        async fn ping(&self, _: &AwsScope, _: &[String]) -> Result<BTreeMap<String, Ping>, AwsError> {
            Ok(BTreeMap::new())
        }
        async fn ensure_document(&self, _: &AwsScope, _: &str, _: &str) -> Result<String, AwsError> {
            Err(AwsError::AccessDenied("no".into()))
        }
        async fn send_command(&self, _: &AwsScope, _: &SendCommand) -> Result<String, AwsError> {
            Err(AwsError::Throttled("ThrottlingException".into()))
        }
        async fn find_command(&self, _: &AwsScope, _: &str, _: &str) -> Result<Option<String>, AwsError> {
            Ok(None)
        }
        async fn commands_since(
            &self,
            _: &AwsScope,
            _: &str,
            _: jiff::Timestamp,
        ) -> Result<Vec<CommandProgress>, AwsError> {
            Ok(vec![])
        }
        async fn invocation(&self, _: &AwsScope, _: &str, _: &str) -> Result<Option<Invocation>, AwsError> {
            Err(AwsError::NotFound("InvocationDoesNotExist".into()))
        }
        async fn command_invocations(&self, _: &AwsScope, _: &str) -> Result<Vec<ListedInvocation>, AwsError> {
            Ok(vec![])
        }
        async fn put_secure_parameter(&self, _: &AwsScope, _: &str, _: &str) -> Result<(), AwsError> {
            Err(AwsError::Invalid("bad".into()))
        }
        async fn list_parameters(&self, _: &AwsScope, _: &str) -> Result<Vec<String>, AwsError> {
            Err(AwsError::Other("connection refused".into()))
        }
        async fn delete_parameters(&self, _: &AwsScope, _: &[String]) -> Result<(), AwsError> {
            Ok(())
        }
    }

    fn line<'a>(text: &'a str, series: &str) -> Option<&'a str> {
        text.lines().find(|l| l.rsplit_once(' ').is_some_and(|(s, _)| s == series))
    }

    #[tokio::test]
    async fn failures_are_counted_by_operation_and_class_and_every_series_starts_at_zero() {
        let m = Arc::new(Metrics::default());
        let c = Counting::new(Failing, Some(m.clone()));
        let scope = AwsScope::default();
        let q = InstanceQuery::default();
        let _ = c.describe_instances(&scope, &q).await;
        let _ = c.describe_instances(&scope, &q).await;
        let _ = c.ping(&scope, &[]).await;
        let _ = c.ensure_document(&scope, "d", "{}").await;
        let _ = c.invocation(&scope, "c", "i-1").await;
        let _ = c.list_parameters(&scope, "/p").await;
        let text = m.encode();
        let want = [
            ("tenant_operator_aws_call_errors_total{operation=\"DescribeInstances\",error=\"throttled\"}", "2"),
            ("tenant_operator_aws_call_errors_total{operation=\"DescribeInstances\",error=\"other\"}", "0"),
            (
                "tenant_operator_aws_call_errors_total{operation=\"DescribeInstanceInformation\",error=\"throttled\"}",
                "0",
            ),
            ("tenant_operator_aws_call_errors_total{operation=\"DescribeDocument\",error=\"access_denied\"}", "1"),
            ("tenant_operator_aws_call_errors_total{operation=\"GetCommandInvocation\",error=\"not_found\"}", "1"),
            ("tenant_operator_aws_call_errors_total{operation=\"GetParametersByPath\",error=\"other\"}", "1"),
            // Never called: there at zero all the same.
            ("tenant_operator_aws_call_errors_total{operation=\"SendCommand\",error=\"throttled\"}", "0"),
            ("tenant_operator_aws_calls_total{operation=\"SendCommand\"}", "0"),
            ("tenant_operator_aws_calls_total{operation=\"DescribeInstances\"}", "2"),
            ("tenant_operator_aws_calls_total{operation=\"DescribeInstanceInformation\"}", "1"),
        ];
        for (series, value) in want {
            let l = line(&text, series).unwrap_or_else(|| panic!("no {series} in {text}"));
            assert_eq!(l.rsplit_once(' ').map(|(_, v)| v), Some(value), "{l}");
        }
        // 10 operations x 5 classes, no more.
        assert_eq!(text.lines().filter(|l| l.starts_with("tenant_operator_aws_call_errors_total{")).count(), 50);
        assert_eq!(c.total(), 6);
    }
}
