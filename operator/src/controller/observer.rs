//! Observe commands in batches: tenants that need a fresh report within the same short window share
//! one SendCommand of up to 50 instances (the document's text is the same for every host, and an
//! observe carries no revision). Each tenant still follows its own invocation.

use super::{Context, Error};
use crate::aws::{AwsScope, SendCommand};
use crate::host::document;
use std::collections::BTreeMap;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};

/// Most instances SSM accepts in one SendCommand.
pub const MAX_BATCH: usize = 50;

/// The sent batch, as one tenant sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sent {
    /// Token in the command's comment (shared by the batch).
    pub token: String,
    /// Command id.
    pub command_id: String,
}

struct Request {
    scope: AwsScope,
    instance: String,
    reply: oneshot::Sender<Result<Sent, String>>,
}

/// Handle to the batching task.
#[derive(Clone)]
pub struct Observer {
    tx: mpsc::Sender<Request>,
}

impl Observer {
    /// Starts the batching task; `window` is how long a batch waits for company.
    pub fn start(ctx: std::sync::Weak<Context>, window: Duration) -> Observer {
        let (tx, rx) = mpsc::channel(1024);
        tokio::spawn(run(ctx, rx, window));
        Observer { tx }
    }

    /// Asks for an observe of `instance`; returns once the batch's command is sent.
    pub async fn observe(&self, scope: &AwsScope, instance: &str) -> Result<Sent, Error> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Request { scope: scope.clone(), instance: instance.to_string(), reply })
            .await
            .map_err(|_| Error::Batch("the observe batcher stopped".into()))?;
        rx.await.map_err(|_| Error::Batch("the observe batcher dropped the request".into()))?.map_err(Error::Batch)
    }
}

async fn run(ctx: std::sync::Weak<Context>, mut rx: mpsc::Receiver<Request>, window: Duration) {
    while let Some(first) = rx.recv().await {
        let mut batch = vec![first];
        let deadline = tokio::time::Instant::now() + window;
        while batch.len() < MAX_BATCH * 4 {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some(r)) => batch.push(r),
                _ => break,
            }
        }
        let Some(ctx) = ctx.upgrade() else { return };
        let mut by_scope: BTreeMap<AwsScope, Vec<Request>> = BTreeMap::new();
        for r in batch {
            by_scope.entry(r.scope.clone()).or_default().push(r);
        }
        for (scope, mut requests) in by_scope {
            // One request per instance per batch; duplicates share the answer.
            requests.sort_by(|a, b| a.instance.cmp(&b.instance));
            let mut chunk: Vec<Request> = Vec::new();
            for r in requests {
                let distinct = chunk.iter().filter(|c| c.instance != r.instance).count() + 1;
                if distinct > MAX_BATCH {
                    send(&ctx, &scope, std::mem::take(&mut chunk)).await;
                }
                chunk.push(r);
            }
            if !chunk.is_empty() {
                send(&ctx, &scope, chunk).await;
            }
        }
    }
}

async fn send(ctx: &Context, scope: &AwsScope, requests: Vec<Request>) {
    let mut instances: Vec<String> = requests.iter().map(|r| r.instance.clone()).collect();
    instances.dedup();
    let token = uuid::Uuid::new_v4().simple().to_string();
    let result = async {
        let version = ctx.document_version(scope).await?;
        let mut parameters = BTreeMap::new();
        parameters.insert("action".to_string(), "observe".to_string());
        parameters.insert("revision".to_string(), String::new());
        let cmd = SendCommand {
            document: document::DOCUMENT_NAME.to_string(),
            document_version: version,
            instances: instances.clone(),
            parameters,
            comment: format!("tenant-operator observe={token}"),
            timeout_seconds: 600,
        };
        Ok::<String, Error>(ctx.aws.send_command(scope, &cmd).await?)
    }
    .await;
    ctx.metrics.command("observe", if result.is_ok() { "sent" } else { "send_failed" });
    for r in requests {
        let answer = match &result {
            Ok(id) => Ok(Sent { token: token.clone(), command_id: id.clone() }),
            Err(e) => Err(e.to_string()),
        };
        let _ = r.reply.send(answer);
    }
}
