//! AWS behind one narrow trait: what the operator asks of EC2, SSM Run Command and Parameter Store.
//!
//! [`sdk::SdkAws`] is the real implementation (aws-sdk-ec2 / aws-sdk-ssm); tests run it against moto
//! and the fleet simulator. Every call names an [`AwsScope`] (region, role) so that a tenant in
//! another account is reached with its own credentials.

pub mod counting;
#[cfg(test)]
pub mod fake;
pub mod limited;
pub mod sdk;

use async_trait::async_trait;
use std::collections::BTreeMap;

/// Where a call goes: the region and the role assumed for it (`None`: the operator's own).
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AwsScope {
    /// Region; the operator's default when `None`.
    pub region: Option<String>,
    /// Role to assume; the operator's own credentials when `None`.
    pub assume_role_arn: Option<String>,
}

/// How to find instances: EC2 filters, so an unknown id finds nothing instead of failing.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct InstanceQuery {
    /// Instance ids, any of them (empty: any instance).
    pub ids: Vec<String>,
    /// Tags that must all be present, each with one of its values.
    pub tags: BTreeMap<String, Vec<String>>,
}

impl InstanceQuery {
    /// Whether `instance` is one this query finds.
    pub fn matches(&self, instance: &InstanceInfo) -> bool {
        (self.ids.is_empty() || self.ids.contains(&instance.id))
            && self.tags.iter().all(|(k, values)| instance.tags.get(k).is_some_and(|v| values.contains(v)))
    }

    /// Queries of one shape (by id or not, the same tag keys) merge into one that finds a
    /// superset of what each finds.
    pub fn shape(&self) -> (bool, Vec<String>) {
        (!self.ids.is_empty(), self.tags.keys().cloned().collect())
    }

    /// Adds `other`'s ids and tag values (same shape) to this query.
    pub fn merge(&mut self, other: &InstanceQuery) {
        for id in &other.ids {
            if !self.ids.contains(id) {
                self.ids.push(id.clone());
            }
        }
        for (k, values) in &other.tags {
            let mine = self.tags.entry(k.clone()).or_default();
            for v in values {
                if !mine.contains(v) {
                    mine.push(v.clone());
                }
            }
        }
    }
}

/// An EC2 instance as DescribeInstances reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InstanceInfo {
    /// Instance id.
    pub id: String,
    /// `running`, `stopped`, ...
    pub state: String,
    /// Its tags.
    pub tags: BTreeMap<String, String>,
}

/// SSM agent state of an instance.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ping {
    /// The agent answers.
    Online,
    /// The agent has not checked in.
    ConnectionLost,
    /// Not registered with SSM at all.
    Unknown,
}

/// State of one command on one instance.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum InvocationStatus {
    /// Not yet delivered.
    Pending,
    /// Running.
    InProgress,
    /// Exit code 0.
    Success,
    /// Non-zero exit code.
    Failed,
    /// The command ran out of time on the host.
    TimedOut,
    /// Never delivered in time.
    DeliveryTimedOut,
    /// Cancelled.
    Cancelled,
    /// The instance cannot receive commands.
    Undeliverable,
    /// Anything else SSM may say.
    Other(String),
}

impl InvocationStatus {
    /// Parses SSM's status string.
    pub fn parse(s: &str) -> Self {
        match s {
            "Pending" | "Delayed" => Self::Pending,
            "InProgress" | "Cancelling" => Self::InProgress,
            "Success" => Self::Success,
            "Failed" => Self::Failed,
            "TimedOut" => Self::TimedOut,
            "DeliveryTimedOut" => Self::DeliveryTimedOut,
            "Cancelled" => Self::Cancelled,
            "Undeliverable" | "Terminated" | "InvalidPlatform" | "AccessDenied" => Self::Undeliverable,
            other => Self::Other(other.to_string()),
        }
    }

    /// SSM's status with its details: `Status` alone says `TimedOut` for a command that never
    /// reached the host as for one that ran out of time there, and `Failed` for an undeliverable
    /// one; `StatusDetails` tells them apart.
    pub fn parse_with_details(status: &str, details: Option<&str>) -> Self {
        match details {
            Some("DeliveryTimedOut") => Self::DeliveryTimedOut,
            Some("ExecutionTimedOut") => Self::TimedOut,
            Some(d @ ("Undeliverable" | "Terminated" | "InvalidPlatform" | "AccessDenied")) => Self::parse(d),
            _ => Self::parse(status),
        }
    }

    /// Whether the invocation will not change any more.
    pub fn is_final(&self) -> bool {
        !matches!(self, Self::Pending | Self::InProgress)
    }
}

/// One command's result on one instance.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Invocation {
    /// Status.
    pub status: InvocationStatus,
    /// stdout (SSM keeps the first 24,000 characters).
    pub stdout: String,
    /// stderr (first 8,000 characters).
    pub stderr: String,
}

/// One instance's invocation of a command, as ListCommandInvocations lists it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ListedInvocation {
    /// The instance.
    pub instance: String,
    /// Status, and the host's stdout and stderr as far as the listing carries them.
    pub invocation: Invocation,
    /// Whether `invocation` holds the whole output: the listing keeps only the first 2,500
    /// characters of a plugin's output, so a longer one must be read with GetCommandInvocation.
    pub complete: bool,
}

/// Characters of a plugin's output that ListCommandInvocations carries.
pub const LISTED_OUTPUT_LIMIT: usize = 2500;

/// The marker SSM puts between stdout and stderr in a listed plugin output.
pub const LISTED_STDERR_MARKER: &str = "\n----------ERROR-------\n";

impl ListedInvocation {
    /// Splits a listed plugin output (stdout, then stderr after SSM's marker, cut at
    /// [`LISTED_OUTPUT_LIMIT`] characters) into an invocation.
    pub fn from_listing(instance: String, status: InvocationStatus, output: &str) -> Self {
        let complete = output.chars().count() < LISTED_OUTPUT_LIMIT;
        let (stdout, stderr) = match output.split_once(LISTED_STDERR_MARKER) {
            Some((out, err)) => (out.to_string(), err.to_string()),
            None => (output.to_string(), String::new()),
        };
        ListedInvocation { instance, invocation: Invocation { status, stdout, stderr }, complete }
    }
}

/// One command as ListCommands reports it: how far its invocations have got, all at once.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CommandProgress {
    /// Command id.
    pub id: String,
    /// The command's own status (Pending while every invocation is).
    pub status: InvocationStatus,
    /// Invocations in all.
    pub targets: u32,
    /// Invocations that reached a final status.
    pub completed: u32,
}

/// A command to send.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SendCommand {
    /// Document name.
    pub document: String,
    /// Document version.
    pub document_version: String,
    /// Up to 50 instances.
    pub instances: Vec<String>,
    /// Document parameters (never a user-controlled value).
    pub parameters: BTreeMap<String, String>,
    /// Comment (the intent token travels here; at most 100 characters).
    pub comment: String,
    /// Execution timeout on the host.
    pub timeout_seconds: i32,
}

/// A failed AWS call, by what the caller should do about it.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum AwsError {
    /// Throttled: back off and try again; never a tenant failure.
    #[error("throttled by AWS: {0}")]
    Throttled(String),
    /// The thing asked for does not exist.
    #[error("not found: {0}")]
    NotFound(String),
    /// The request was refused as invalid.
    #[error("invalid request: {0}")]
    Invalid(String),
    /// Credentials or permissions.
    #[error("access denied: {0}")]
    AccessDenied(String),
    /// Anything else (network, service error).
    #[error("AWS call failed: {0}")]
    Other(String),
}

/// The narrow interface the controllers use.
#[async_trait]
pub trait Aws: Send + Sync + 'static {
    /// EC2 DescribeInstances (not terminated).
    async fn describe_instances(&self, scope: &AwsScope, query: &InstanceQuery) -> Result<Vec<InstanceInfo>, AwsError>;
    /// SSM DescribeInstanceInformation for these instances.
    async fn ping(&self, scope: &AwsScope, ids: &[String]) -> Result<BTreeMap<String, Ping>, AwsError>;
    /// Creates or updates the operator's Command document so that its default version has this
    /// content; returns that version.
    async fn ensure_document(&self, scope: &AwsScope, name: &str, content: &str) -> Result<String, AwsError>;
    /// SendCommand; returns the command id.
    async fn send_command(&self, scope: &AwsScope, cmd: &SendCommand) -> Result<String, AwsError>;
    /// ListCommands for this instance, finding the one whose comment carries `token`.
    async fn find_command(&self, scope: &AwsScope, instance: &str, token: &str) -> Result<Option<String>, AwsError>;
    /// GetCommandInvocation (`None` while SSM does not know the invocation yet).
    async fn invocation(
        &self,
        scope: &AwsScope,
        command_id: &str,
        instance: &str,
    ) -> Result<Option<Invocation>, AwsError>;
    /// ListCommands: every command of `document` sent at or after `since` (all pages), with how
    /// many of its invocations are final.
    async fn commands_since(
        &self,
        scope: &AwsScope,
        document: &str,
        since: jiff::Timestamp,
    ) -> Result<Vec<CommandProgress>, AwsError>;
    /// ListCommandInvocations with details: every instance's invocation of one command (all pages).
    async fn command_invocations(&self, scope: &AwsScope, command_id: &str) -> Result<Vec<ListedInvocation>, AwsError>;
    /// PutParameter as a SecureString, overwriting (a tenant's revision parameter is one name).
    async fn put_secure_parameter(&self, scope: &AwsScope, name: &str, value: &str) -> Result<(), AwsError>;
    /// Parameter names under a path (recursive).
    async fn list_parameters(&self, scope: &AwsScope, path: &str) -> Result<Vec<String>, AwsError>;
    /// DeleteParameters.
    async fn delete_parameters(&self, scope: &AwsScope, names: &[String]) -> Result<(), AwsError>;
}
