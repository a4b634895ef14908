//! Observe commands in batches: tenants that need a fresh report within the same short window share
//! one SendCommand of up to 50 instances (the document's text is the same for every host, and an
//! observe carries no revision). Each tenant still follows its own invocation, through the
//! collector, which lists the command's invocations once for all of them.

use super::batch::Batcher;
use super::{Context, Error};
use crate::aws::{AwsError, AwsScope, SendCommand};
use crate::host::document;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

/// Most instances SSM accepts in one SendCommand.
pub const MAX_BATCH: usize = super::batch::MAX_BATCH;

/// The sent batch, as one tenant sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sent {
    /// Token in the command's comment (shared by the batch).
    pub token: String,
    /// Command id.
    pub command_id: String,
}

/// Handle to the batching task.
#[derive(Clone)]
pub struct Observer {
    batcher: Batcher<String, Sent>,
}

impl Observer {
    /// Starts the batching task; `window` is how long a batch waits for company.
    pub fn start(ctx: std::sync::Weak<Context>, window: Duration) -> Observer {
        let batcher = Batcher::start(
            window,
            Arc::new(move |scope, instances: Vec<String>| {
                let ctx = ctx.clone();
                Box::pin(async move {
                    let answer = match ctx.upgrade() {
                        Some(ctx) => send(&ctx, &scope, &instances).await,
                        None => Err(AwsError::Other("the operator is stopping".into())),
                    };
                    instances.iter().map(|_| answer.clone()).collect()
                })
            }),
        );
        Observer { batcher }
    }

    /// Asks for an observe of `instance`; returns once the batch's command is sent.
    pub async fn observe(&self, scope: &AwsScope, instance: &str) -> Result<Sent, Error> {
        self.batcher.ask(scope, instance.to_string()).await
    }
}

async fn send(ctx: &Context, scope: &AwsScope, requested: &[String]) -> Result<Sent, AwsError> {
    // One invocation per instance; tenants asking for the same instance share it.
    let mut instances = requested.to_vec();
    instances.sort();
    instances.dedup();
    let token = uuid::Uuid::new_v4().simple().to_string();
    let result = async {
        let version = ctx.document_version(scope).await.map_err(|e| match e {
            Error::Aws(aws) => aws,
            other => AwsError::Other(other.to_string()),
        })?;
        let parameters =
            BTreeMap::from([("action".to_string(), "observe".to_string()), ("digest".to_string(), String::new())]);
        let cmd = SendCommand {
            document: document::DOCUMENT_NAME.to_string(),
            document_version: version,
            instances,
            parameters,
            comment: format!("tenant-operator observe={token}"),
            timeout_seconds: 600,
        };
        ctx.aws.send_command(scope, &cmd).await
    }
    .await;
    ctx.metrics.command("observe", if result.is_ok() { "sent" } else { "send_failed" });
    result.map(|command_id| Sent { token, command_id })
}
