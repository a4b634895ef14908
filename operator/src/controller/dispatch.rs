//! Applies in batches: the tenants that apply the same digest in one scope within a short window
//! share one SendCommand of up to 50 instances. Its text is the same for every host (the action
//! and the digest); each host reads the rest of its revision under its own prefix.
//!
//! Intent before send holds for a batch as for one tenant: a tenant joins a batch and gets the
//! batch's token first, writes its intent with that token, and only then says it is ready. The
//! batch is sent once every member that joined is ready (or a grace period after its window, with
//! those that are). A member that was not ready in time is told so: its intent names a token whose
//! command does not include its instance, and the tenant's next reconcile sends its own command
//! under that token (`find_command` finds nothing for it, exactly as after a crash before the send).

use super::batch::MAX_BATCH;
use super::{Context, Error};
use crate::aws::{AwsError, AwsScope};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;
use tokio::sync::{Notify, watch};

/// How long a batch waits for its members' intents after its window closed.
const GRACE: Duration = Duration::from_secs(5);

/// What a batch is keyed by: every member sends exactly this.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct Key {
    scope: AwsScope,
    action: String,
    digest: String,
}

type Outcome = Option<Result<String, AwsError>>;

struct Batch {
    token: String,
    state: Mutex<Members>,
    ready: Notify,
    outcome: watch::Sender<Outcome>,
}

#[derive(Default)]
struct Members {
    joined: usize,
    ready: Vec<String>,
    sent: bool,
}

/// A place in a batch: the token to write in the intent, then [`Ticket::send`].
pub struct Ticket {
    batch: Arc<Batch>,
}

impl Ticket {
    /// The token the batch's command carries in its comment.
    pub fn token(&self) -> &str {
        &self.batch.token
    }

    /// Says the intent is written; returns the command id once the batch is sent, or an error if
    /// the batch went without this instance or could not be sent.
    pub async fn send(self, instance: &str) -> Result<String, Error> {
        let mut rx = self.batch.outcome.subscribe();
        {
            let mut m = self.batch.state.lock().unwrap_or_else(|e| e.into_inner());
            if m.sent {
                return Err(Error::Batch("the batch was sent before this tenant's intent was written".into()));
            }
            m.ready.push(instance.to_string());
        }
        self.batch.ready.notify_one();
        let outcome =
            rx.wait_for(Option::is_some).await.map_err(|_| Error::Batch("the apply batcher stopped".into()))?.clone();
        match outcome {
            Some(Ok(id)) => Ok(id),
            Some(Err(e)) => Err(Error::Aws(e)),
            None => Err(Error::Batch("no outcome".into())),
        }
    }
}

/// The shared dispatcher.
pub struct Dispatcher {
    ctx: Weak<Context>,
    window: Duration,
    open: Mutex<HashMap<Key, Arc<Batch>>>,
}

impl Dispatcher {
    /// A dispatcher whose batches wait `window` for company.
    pub fn new(ctx: Weak<Context>, window: Duration) -> Arc<Dispatcher> {
        Arc::new(Dispatcher { ctx, window, open: Mutex::new(HashMap::new()) })
    }

    /// Joins the open batch for this scope, action and digest, or opens one.
    pub fn join(self: &Arc<Self>, scope: &AwsScope, action: &str, digest: &str) -> Ticket {
        let key = Key { scope: scope.clone(), action: action.to_string(), digest: digest.to_string() };
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(b) = open.get(&key) {
            let mut m = b.state.lock().unwrap_or_else(|e| e.into_inner());
            if m.joined < MAX_BATCH && !m.sent {
                m.joined += 1;
                return Ticket { batch: b.clone() };
            }
        }
        let (outcome, _) = watch::channel(None);
        let batch = Arc::new(Batch {
            token: uuid::Uuid::new_v4().simple().to_string(),
            state: Mutex::new(Members { joined: 1, ..Members::default() }),
            ready: Notify::new(),
            outcome,
        });
        open.insert(key.clone(), batch.clone());
        tokio::spawn(self.clone().run(key, batch.clone()));
        Ticket { batch }
    }

    async fn run(self: Arc<Self>, key: Key, batch: Arc<Batch>) {
        // Company: until the window ends or the batch is full.
        let deadline = tokio::time::Instant::now() + self.window;
        loop {
            let full = batch.state.lock().unwrap_or_else(|e| e.into_inner()).joined >= MAX_BATCH;
            if full || tokio::time::timeout_at(deadline, batch.ready.notified()).await.is_err() {
                break;
            }
        }
        // Closed to newcomers; the members' intents are awaited a while longer.
        {
            let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
            if open.get(&key).is_some_and(|b| Arc::ptr_eq(b, &batch)) {
                open.remove(&key);
            }
        }
        let grace = tokio::time::Instant::now() + GRACE;
        let instances = loop {
            {
                let mut m = batch.state.lock().unwrap_or_else(|e| e.into_inner());
                if m.ready.len() >= m.joined || tokio::time::Instant::now() >= grace {
                    m.sent = true;
                    let mut ready = std::mem::take(&mut m.ready);
                    ready.sort();
                    ready.dedup();
                    break ready;
                }
            }
            let _ = tokio::time::timeout_at(grace, batch.ready.notified()).await;
        };
        let outcome = match self.ctx.upgrade() {
            _ if instances.is_empty() => Err(AwsError::Other("no member of the batch was ready".into())),
            Some(ctx) => send(&ctx, &key, &batch.token, instances).await,
            None => Err(AwsError::Other("the operator is stopping".into())),
        };
        batch.outcome.send_replace(Some(outcome));
    }
}

async fn send(ctx: &Context, key: &Key, token: &str, instances: Vec<String>) -> Result<String, AwsError> {
    let comment = format!("tenant-operator intent={token}");
    let result =
        ctx.send_document(&key.scope, &key.action, &key.digest, instances, comment).await.map_err(Error::into_aws);
    ctx.metrics.command(&key.action, if result.is_ok() { "sent" } else { "send_failed" });
    result
}
