//! Observe commands in batches: tenants that need a fresh report within the same short window share
//! one SendCommand of up to 50 instances (the document's text is the same for every host, and an
//! observe carries no revision). Each tenant still follows its own invocation, through the
//! collector, which lists the command's invocations once for all of them.

use super::batch::Batcher;
use super::{Context, Error};
use crate::aws::{AwsError, AwsScope};
use std::sync::Arc;
use std::time::Duration;

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
    let result = ctx
        .send_document(scope, "observe", "", instances, format!("tenant-operator observe={token}"))
        .await
        .map_err(Error::into_aws);
    ctx.metrics.command("observe", if result.is_ok() { "sent" } else { "send_failed" });
    result.map(|command_id| Sent { token, command_id })
}
