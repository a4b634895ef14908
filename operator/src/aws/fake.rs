//! A fleet in memory behind the [`Aws`] trait, for unit tests of what sits on the trait (batching,
//! collecting, rate limits): it answers queries the way EC2's filters and SSM's listings do, and
//! every call at once.

use super::*;
use std::sync::Mutex;

/// Instances, their agents, and one command's invocations on them.
#[derive(Default)]
pub struct Fleet {
    /// The instances DescribeInstances knows.
    pub hosts: Vec<InstanceInfo>,
    /// Instances whose agent is not online.
    pub offline: Vec<String>,
    /// How the command stands on every instance.
    pub status: Mutex<Option<InvocationStatus>>,
    /// Instances where it stands otherwise.
    pub per_instance: Mutex<BTreeMap<String, InvocationStatus>>,
    /// What each instance printed.
    pub outputs: BTreeMap<String, String>,
}

/// The id ListCommands gives the fleet's one command.
pub const COMMAND: &str = "cmd";

impl Fleet {
    fn status(&self, instance: &str) -> InvocationStatus {
        if let Some(s) = self.per_instance.lock().unwrap_or_else(|e| e.into_inner()).get(instance) {
            return s.clone();
        }
        self.status.lock().unwrap_or_else(|e| e.into_inner()).clone().unwrap_or(InvocationStatus::Pending)
    }
}

#[async_trait]
impl Aws for Fleet {
    async fn describe_instances(&self, _: &AwsScope, query: &InstanceQuery) -> Result<Vec<InstanceInfo>, AwsError> {
        Ok(self.hosts.iter().filter(|i| query.matches(i)).cloned().collect())
    }
    async fn ping(&self, _: &AwsScope, ids: &[String]) -> Result<BTreeMap<String, Ping>, AwsError> {
        if ids.len() > 50 {
            return Err(AwsError::Invalid(format!("{} instance ids in one filter", ids.len())));
        }
        Ok(ids
            .iter()
            .filter(|i| self.hosts.iter().any(|h| &h.id == *i))
            .map(|i| (i.clone(), if self.offline.contains(i) { Ping::ConnectionLost } else { Ping::Online }))
            .collect())
    }
    async fn ensure_document(&self, _: &AwsScope, _: &str, _: &str) -> Result<String, AwsError> {
        Ok("1".into())
    }
    async fn send_command(&self, _: &AwsScope, _: &SendCommand) -> Result<String, AwsError> {
        Ok("00000000-0000-0000-0000-000000000000".into())
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
        let statuses: Vec<_> = self.outputs.keys().map(|i| self.status(i)).collect();
        let completed = statuses.iter().filter(|s| s.is_final()).count();
        let status = if completed == statuses.len() {
            InvocationStatus::Success
        } else if statuses.iter().all(|s| *s == InvocationStatus::Pending) {
            InvocationStatus::Pending
        } else {
            InvocationStatus::InProgress
        };
        let count = |n: usize| u32::try_from(n).unwrap_or(u32::MAX);
        Ok(vec![CommandProgress {
            id: COMMAND.into(),
            status,
            targets: count(statuses.len()),
            completed: count(completed),
        }])
    }
    async fn invocation(&self, _: &AwsScope, _: &str, instance: &str) -> Result<Option<Invocation>, AwsError> {
        let status = self.status(instance);
        Ok(self.outputs.get(instance).map(|o| Invocation { status, stdout: o.clone(), stderr: String::new() }))
    }
    async fn command_invocations(&self, _: &AwsScope, _: &str) -> Result<Vec<ListedInvocation>, AwsError> {
        Ok(self
            .outputs
            .iter()
            .map(|(i, o)| {
                let cut: String = o.chars().take(LISTED_OUTPUT_LIMIT).collect();
                ListedInvocation::from_listing(i.clone(), self.status(i), &cut)
            })
            .collect())
    }
    async fn put_secure_parameter(&self, _: &AwsScope, _: &str, _: &str) -> Result<(), AwsError> {
        Ok(())
    }
    async fn list_parameters(&self, _: &AwsScope, _: &str) -> Result<Vec<String>, AwsError> {
        Ok(vec![])
    }
    async fn delete_parameters(&self, _: &AwsScope, _: &[String]) -> Result<(), AwsError> {
        Ok(())
    }
}
