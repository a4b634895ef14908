//! One shared token bucket per AWS scope and API family, in front of every call the operator
//! makes: a thousand tenants that want AWS at once queue at the bucket instead of each retrying a
//! `ThrottlingException` on its own. The buckets are `governor`'s (GCRA, the token bucket's
//! equivalent), keyed by [`AwsScope`], since AWS throttles per account and region.
//!
//! Defaults (see [`Limits::default`]): EC2's published bucket for non-mutating actions (refill 20
//! a second, burst 100); Parameter Store's published standard throughput (40 a second, shared by
//! its reads; the operator's writes stay far below); Run Command's APIs, whose rates AWS does not
//! publish per operation, 10 a second with a burst of 20 until an account's own quota says more.

use super::*;
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use std::num::NonZeroU32;
use std::sync::Arc;

/// A sustained rate and the burst above it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rate {
    /// Calls a second, sustained.
    pub per_second: u32,
    /// Calls allowed at once after a quiet spell.
    pub burst: u32,
}

impl Rate {
    fn quota(self) -> Quota {
        let per_second = NonZeroU32::new(self.per_second.max(1)).unwrap_or(NonZeroU32::MIN);
        let burst = NonZeroU32::new(self.burst.max(1)).unwrap_or(NonZeroU32::MIN);
        Quota::per_second(per_second).allow_burst(burst)
    }

    /// Parses `RATE` or `RATE/BURST`, e.g. `20/100`.
    pub fn parse(s: &str) -> Result<Rate, String> {
        let (rate, burst) = s.split_once('/').unwrap_or((s, s));
        let n = |v: &str| v.trim().parse::<u32>().ok().filter(|n| *n > 0);
        match (n(rate), n(burst)) {
            (Some(per_second), Some(burst)) => Ok(Rate { per_second, burst }),
            _ => Err(format!("{s:?} is not RATE or RATE/BURST with positive whole numbers")),
        }
    }
}

/// The buckets' sizes, one per API family.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// DescribeInstances.
    pub ec2: Rate,
    /// Run Command and instance information: SendCommand, ListCommands, ListCommandInvocations,
    /// GetCommandInvocation, DescribeInstanceInformation, the document calls.
    pub run_command: Rate,
    /// Parameter Store: PutParameter, GetParametersByPath, DeleteParameters.
    pub parameters: Rate,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            ec2: Rate { per_second: 20, burst: 100 },
            run_command: Rate { per_second: 10, burst: 20 },
            parameters: Rate { per_second: 40, burst: 40 },
        }
    }
}

/// Delegates to `A` once the call's bucket has a token.
pub struct Limited<A: Aws> {
    inner: A,
    ec2: Arc<DefaultKeyedRateLimiter<AwsScope>>,
    run_command: Arc<DefaultKeyedRateLimiter<AwsScope>>,
    parameters: Arc<DefaultKeyedRateLimiter<AwsScope>>,
}

impl<A: Aws> Limited<A> {
    /// Wraps `inner` with buckets of these sizes.
    pub fn new(inner: A, limits: Limits) -> Self {
        Limited {
            inner,
            ec2: Arc::new(RateLimiter::keyed(limits.ec2.quota())),
            run_command: Arc::new(RateLimiter::keyed(limits.run_command.quota())),
            parameters: Arc::new(RateLimiter::keyed(limits.parameters.quota())),
        }
    }

    /// The wrapped implementation.
    pub fn inner(&self) -> &A {
        &self.inner
    }
}

#[async_trait]
impl<A: Aws> Aws for Limited<A> {
    async fn describe_instances(&self, scope: &AwsScope, query: &InstanceQuery) -> Result<Vec<InstanceInfo>, AwsError> {
        self.ec2.until_key_ready(scope).await;
        self.inner.describe_instances(scope, query).await
    }

    async fn ping(&self, scope: &AwsScope, ids: &[String]) -> Result<BTreeMap<String, Ping>, AwsError> {
        self.run_command.until_key_ready(scope).await;
        self.inner.ping(scope, ids).await
    }

    async fn ensure_document(&self, scope: &AwsScope, name: &str, content: &str) -> Result<String, AwsError> {
        self.run_command.until_key_ready(scope).await;
        self.inner.ensure_document(scope, name, content).await
    }

    async fn send_command(&self, scope: &AwsScope, cmd: &SendCommand) -> Result<String, AwsError> {
        self.run_command.until_key_ready(scope).await;
        self.inner.send_command(scope, cmd).await
    }

    async fn find_command(&self, scope: &AwsScope, instance: &str, token: &str) -> Result<Option<String>, AwsError> {
        self.run_command.until_key_ready(scope).await;
        self.inner.find_command(scope, instance, token).await
    }

    async fn commands_since(
        &self,
        scope: &AwsScope,
        document: &str,
        since: jiff::Timestamp,
    ) -> Result<Vec<CommandProgress>, AwsError> {
        self.run_command.until_key_ready(scope).await;
        self.inner.commands_since(scope, document, since).await
    }

    async fn invocation(
        &self,
        scope: &AwsScope,
        command_id: &str,
        instance: &str,
    ) -> Result<Option<Invocation>, AwsError> {
        self.run_command.until_key_ready(scope).await;
        self.inner.invocation(scope, command_id, instance).await
    }

    async fn command_invocations(&self, scope: &AwsScope, command_id: &str) -> Result<Vec<ListedInvocation>, AwsError> {
        self.run_command.until_key_ready(scope).await;
        self.inner.command_invocations(scope, command_id).await
    }

    async fn put_secure_parameter(&self, scope: &AwsScope, name: &str, value: &str) -> Result<(), AwsError> {
        self.parameters.until_key_ready(scope).await;
        self.inner.put_secure_parameter(scope, name, value).await
    }

    async fn list_parameters(&self, scope: &AwsScope, path: &str) -> Result<Vec<String>, AwsError> {
        self.parameters.until_key_ready(scope).await;
        self.inner.list_parameters(scope, path).await
    }

    async fn delete_parameters(&self, scope: &AwsScope, names: &[String]) -> Result<(), AwsError> {
        self.parameters.until_key_ready(scope).await;
        self.inner.delete_parameters(scope, names).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    #[test]
    fn rates_parse_with_or_without_a_burst_and_refuse_nonsense() {
        assert_eq!(Rate::parse("20/100"), Ok(Rate { per_second: 20, burst: 100 }));
        assert_eq!(Rate::parse("7"), Ok(Rate { per_second: 7, burst: 7 }));
        for bad in ["", "0", "x", "5/0", "-1/2", "1/2/3"] {
            assert!(Rate::parse(bad).is_err(), "{bad}");
        }
    }

    /// The bucket is shared by every caller of a scope and family: 30 concurrent SendCommands at
    /// 20 a second with a burst of 10 cannot all pass before 20 tokens have been refilled (1 s).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn callers_of_one_scope_share_one_bucket() {
        let limits = Limits { run_command: Rate { per_second: 20, burst: 10 }, ..Limits::default() };
        let aws = Arc::new(Limited::new(super::super::fake::Fleet::default(), limits));
        let cmd = SendCommand {
            document: "d".into(),
            document_version: "1".into(),
            instances: vec![],
            parameters: BTreeMap::new(),
            comment: String::new(),
            timeout_seconds: 60,
        };
        let start = Instant::now();
        let mut calls = Vec::new();
        for _ in 0..30 {
            let (aws, cmd) = (aws.clone(), cmd.clone());
            calls.push(tokio::spawn(async move { aws.send_command(&AwsScope::default(), &cmd).await }));
        }
        for c in calls {
            c.await.unwrap().unwrap();
        }
        let all = start.elapsed();
        assert!(all >= Duration::from_millis(950), "30 calls passed a 10 + 20/s bucket in {all:?}");
    }

    /// An empty bucket holds up its own scope and family only.
    #[test]
    fn another_scope_or_family_has_its_own_tokens() {
        let limits = Limits { run_command: Rate { per_second: 1, burst: 3 }, ..Limits::default() };
        let aws = Limited::new(super::super::fake::Fleet::default(), limits);
        let scope = AwsScope::default();
        for _ in 0..3 {
            assert!(aws.run_command.check_key(&scope).is_ok());
        }
        assert!(aws.run_command.check_key(&scope).is_err(), "the bucket should be empty");
        let other = AwsScope { region: Some("eu-west-1".into()), assume_role_arn: None };
        assert!(aws.run_command.check_key(&other).is_ok());
        assert!(aws.parameters.check_key(&scope).is_ok());
        assert!(aws.ec2.check_key(&scope).is_ok());
    }
}
