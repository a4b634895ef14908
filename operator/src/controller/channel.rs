//! The ImageChannel controller: resolves a channel's tag to a digest every `spec.interval` and
//! writes the decision of `core::channel` as status. Channels fed by promotion are not resolved
//! (the rollout coordinator writes their digest); pinned channels are not resolved either.
//!
//! A channel is resolved when its generation is new to this process or its interval has passed
//! since the last resolve; any other wake-up (its own status write, the coordinator's) only
//! recomputes the status, and a status that did not change is not written. An immediate resolve
//! is asked for by the registry webhook ([`crate::webhook`]) through the annotation
//! [`RESOLVE_REQUEST_ANNOTATION`]: its change wakes the channel (the watch), and a value this
//! process has not resolved for makes the channel due at once (any replica can serve the webhook;
//! the leader's controller acts). [`ChannelContext::resolve_now`] does the same in-process.

use super::{Context, Error, MANAGER};
use crate::core::channel::{self as decide, Resolution};
use crate::core::conditions;
use crate::crd::{ImageChannel, ImageChannelStatus, condition as ct};
use crate::registry::{self, RegistryCredentials, Resolve};
pub use crate::webhook::RESOLVE_REQUEST_ANNOTATION;
use futures::StreamExt;
use jiff::Timestamp;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::{Event as KubeEvent, EventType, Recorder};
use kube::runtime::watcher;
use kube::{Resource, ResourceExt};
use rand::Rng;
use serde_json::json;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::Mutex;
use tracing::{debug, warn};

/// `type` of a Secret holding registry credentials.
pub const DOCKERCONFIGJSON_TYPE: &str = "kubernetes.io/dockerconfigjson";
/// Key of the credentials document in such a Secret.
pub const DOCKERCONFIGJSON_KEY: &str = ".dockerconfigjson";

/// What a channel reconcile shares.
pub struct ChannelContext {
    /// The operator's context (client, reporter, metrics).
    pub ctx: Arc<Context>,
    /// Tag → digest.
    pub resolver: Arc<dyn Resolve>,
    /// Last resolve per channel uid.
    attempts: Mutex<HashMap<String, Attempt>>,
}

/// The last resolve of a channel.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Attempt {
    /// The generation it was for.
    generation: Option<i64>,
    /// The webhook's request annotation it saw.
    requested: Option<String>,
    /// When.
    at: Instant,
}

/// How long until a channel is due, or `None` when it is due now: never resolved by this process, a
/// new generation, a new webhook request, or its interval passed since `last`.
fn not_due(
    last: Option<&Attempt>,
    generation: Option<i64>,
    requested: Option<&str>,
    interval: Duration,
    now: Instant,
) -> Option<Duration> {
    let last = last?;
    if last.generation != generation || last.requested.as_deref() != requested {
        return None;
    }
    interval.checked_sub(now.saturating_duration_since(last.at)).filter(|d| !d.is_zero())
}

impl ChannelContext {
    /// A context for the channel controller.
    pub fn new(ctx: Arc<Context>, resolver: Arc<dyn Resolve>) -> Self {
        ChannelContext { ctx, resolver, attempts: Mutex::new(HashMap::new()) }
    }

    /// Makes the next reconcile of the channel with this uid resolve, whatever its interval.
    pub async fn resolve_now(&self, uid: &str) {
        self.attempts.lock().await.remove(uid);
    }

    /// How long until the channel is due, or `None` when it is due now.
    async fn not_due(
        &self,
        uid: &str,
        generation: Option<i64>,
        requested: Option<&str>,
        interval: Duration,
    ) -> Option<Duration> {
        not_due(self.attempts.lock().await.get(uid), generation, requested, interval, Instant::now())
    }

    async fn attempted(&self, uid: String, generation: Option<i64>, requested: Option<String>) {
        self.attempts.lock().await.insert(uid, Attempt { generation, requested, at: Instant::now() });
    }
}

/// Runs the ImageChannel controller until `shutdown` resolves.
pub async fn run(
    ctx: Arc<Context>,
    resolver: Arc<dyn Resolve>,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    let cctx = Arc::new(ChannelContext::new(ctx.clone(), resolver));
    controller(&ctx)
        .graceful_shutdown_on(shutdown)
        .run(reconcile, error_policy, cctx)
        .for_each(|res| async move {
            if let Err(e) = res {
                warn!(error = %e, "channel reconcile failed");
            }
        })
        .await;
}

/// The controller before it runs. Every change of a channel wakes it, the webhook's request
/// annotation included.
pub fn controller(ctx: &Context) -> Controller<ImageChannel> {
    let api = ctx.watched::<ImageChannel>();
    Controller::new(api, watcher::Config::default().any_semantic())
}

async fn reconcile(channel: Arc<ImageChannel>, cctx: Arc<ChannelContext>) -> Result<Action, Error> {
    // Decide from the stored object: the coordinator writes rejections and promotions into the
    // status, and a cached copy without them would write them away.
    let ns = channel.namespace().ok_or(Error::MissingField("metadata.namespace"))?;
    let api: Api<ImageChannel> = Api::namespaced(cctx.ctx.client.clone(), &ns);
    let Some(channel) = api.get_opt(&channel.name_any()).await? else {
        return Ok(Action::await_change());
    };
    let res = channel.reconcile(&cctx).await;
    cctx.ctx.metrics.reconciled("channel", res.as_ref().map(|_| "ok").unwrap_or_else(|e| e.category()));
    res
}

fn error_policy(_channel: Arc<ImageChannel>, err: &Error, _cctx: Arc<ChannelContext>) -> Action {
    Action::requeue(err.retry_after())
}

/// `interval` plus up to a tenth of it, at random, so channels spread out.
fn with_jitter(interval: Duration) -> Duration {
    let interval = interval.max(Duration::from_secs(1));
    let tenth = u64::try_from(interval.as_millis() / 10).unwrap_or(u64::MAX);
    if tenth == 0 { interval } else { interval + Duration::from_millis(rand::rng().random_range(0..tenth)) }
}

impl ImageChannel {
    async fn reconcile(&self, cctx: &ChannelContext) -> Result<Action, Error> {
        let now = Timestamp::now();
        let ns = self.namespace().ok_or(Error::MissingField("metadata.namespace"))?;
        let uid = self.uid().ok_or(Error::MissingField("metadata.uid"))?;
        let generation = self.metadata.generation;
        let requested = self.annotations().get(RESOLVE_REQUEST_ANNOTATION).cloned();
        let interval = self.spec.interval.as_std().max(Duration::from_secs(1));
        let passive = self.spec.pinned_digest.is_some() || self.spec.promote_from.is_some();
        let outcome = if passive {
            Resolution::NotAttempted
        } else {
            if let Some(wait) = cctx.not_due(&uid, generation, requested.as_deref(), interval).await {
                return Ok(Action::requeue(wait));
            }
            self.resolve(cctx, &ns).await?
        };
        let status = decide::next_status(&self.spec, self.status.as_ref(), &outcome, generation, now);
        if self.status.as_ref() != Some(&status) {
            self.write_status(&cctx.ctx, &ns, status).await?;
        }
        if passive {
            return Ok(Action::await_change());
        }
        cctx.attempted(uid, generation, requested).await;
        Ok(Action::requeue(with_jitter(interval)))
    }

    /// Reads the pull secret (if any) and asks the registry.
    async fn resolve(&self, cctx: &ChannelContext, ns: &str) -> Result<Resolution, Error> {
        let Some(tag) = self.spec.tag.as_deref() else {
            return Ok(Resolution::Failed {
                reason: "InvalidReference",
                message: "exactly one of spec.tag or spec.promoteFrom must be set".into(),
            });
        };
        let creds = match self.credentials(&cctx.ctx, ns).await? {
            Ok(c) => c,
            Err(failed) => return Ok(failed),
        };
        debug!(channel = %self.name_any(), image = %self.spec.image, tag, "resolving");
        Ok(match cctx.resolver.resolve(&self.spec.image, tag, creds).await {
            Ok(digest) => Resolution::Resolved(digest),
            Err(e) => Resolution::Failed { reason: e.reason(), message: e.message().to_string() },
        })
    }

    /// The credentials for the image's registry from `spec.pullSecret`: `Ok(Ok(None))` without a
    /// pull secret or without an entry for that registry, `Ok(Err(..))` when the Secret is missing
    /// or not usable (a condition, not a reconcile error).
    async fn credentials(
        &self,
        ctx: &Context,
        ns: &str,
    ) -> Result<Result<Option<RegistryCredentials>, Resolution>, Error> {
        let Some(secret_ref) = &self.spec.pull_secret else {
            return Ok(Ok(None));
        };
        let host = match registry::split_image(&self.spec.image) {
            Ok((host, _)) => host,
            Err(e) => return Ok(Err(Resolution::Failed { reason: e.reason(), message: e.message().to_string() })),
        };
        let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), ns);
        let invalid = |message: String| Ok(Err(Resolution::Failed { reason: "PullSecretInvalid", message }));
        let Some(secret) = secrets.get_opt(&secret_ref.name).await? else {
            return Ok(Err(Resolution::Failed {
                reason: "PullSecretNotFound",
                message: format!("Secret {ns}/{} (spec.pullSecret) does not exist", secret_ref.name),
            }));
        };
        if secret.type_.as_deref() != Some(DOCKERCONFIGJSON_TYPE) {
            return invalid(format!("Secret {} is not of type {DOCKERCONFIGJSON_TYPE}", secret_ref.name));
        }
        let Some(doc) = secret.data.as_ref().and_then(|d| d.get(DOCKERCONFIGJSON_KEY)) else {
            return invalid(format!("Secret {} has no {DOCKERCONFIGJSON_KEY} key", secret_ref.name));
        };
        match registry::credentials_for(&doc.0, &host) {
            Ok(c) => Ok(Ok(c)),
            Err(why) => invalid(format!("Secret {}: {why}", secret_ref.name)),
        }
    }

    async fn write_status(&self, ctx: &Context, ns: &str, status: ImageChannelStatus) -> Result<(), Error> {
        let before = self.status.as_ref().map(|s| s.conditions.clone()).unwrap_or_default();
        let changes = conditions::changed(&before, &status.conditions);
        let api: Api<ImageChannel> = Api::namespaced(ctx.client.clone(), ns);
        let mut body = serde_json::to_value(&status)?;
        // A promoted channel's digest, short digest and history are the coordinator's, under its
        // own field manager: leave them out so this patch neither takes nor drops them.
        if self.spec.promote_from.is_some()
            && let Some(obj) = body.as_object_mut()
        {
            for key in ["digest", "short", "history", "lastResolvedAt"] {
                obj.remove(key);
            }
        }
        let patch = json!({"apiVersion": "fleet.molecule.ai/v1alpha1", "kind": "ImageChannel", "status": body});
        api.patch_status(&self.name_any(), &PatchParams::apply(MANAGER).force(), &Patch::Apply(&patch)).await?;
        if !changes.is_empty() {
            self.record_changes(ctx, &status, &changes).await;
        }
        Ok(())
    }

    async fn record_changes(&self, ctx: &Context, status: &ImageChannelStatus, changes: &[(String, String, String)]) {
        let recorder = Recorder::new(ctx.client.clone(), ctx.reporter.clone());
        for (type_, st, reason) in changes {
            let message = conditions::find(&status.conditions, type_).map(|c| c.message.clone()).unwrap_or_default();
            let warning = (type_ == ct::STALLED || type_ == decide::DIGEST_REJECTED) && st == "True";
            let ev = KubeEvent {
                type_: if warning { EventType::Warning } else { EventType::Normal },
                reason: reason.clone(),
                note: Some(format!("{type_}={st}: {message}")),
                action: "Resolve".into(),
                secondary: None,
            };
            if let Err(e) = recorder.publish(&ev, &self.object_ref(&())).await {
                warn!(error = %e, "could not record event");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jitter_stays_within_a_tenth() {
        for _ in 0..100 {
            let d = with_jitter(Duration::from_secs(300));
            assert!(d >= Duration::from_secs(300) && d < Duration::from_secs(330));
        }
        assert!(with_jitter(Duration::ZERO) >= Duration::from_secs(1));
    }

    #[test]
    fn a_new_webhook_request_makes_the_channel_due_at_once() {
        let t0 = Instant::now();
        let hour = Duration::from_secs(3600);
        let last = Attempt { generation: Some(1), requested: Some("a".into()), at: t0 };
        // Never resolved here: due.
        assert_eq!(not_due(None, Some(1), None, hour, t0), None);
        // Same generation and request: waits out the interval.
        let wait = not_due(Some(&last), Some(1), Some("a"), hour, t0 + Duration::from_secs(60));
        assert_eq!(wait, Some(hour - Duration::from_secs(60)));
        // A new request (or a first one), a new generation, or the interval passed: due now.
        assert_eq!(not_due(Some(&last), Some(1), Some("b"), hour, t0), None);
        assert_eq!(not_due(Some(&last), Some(2), Some("a"), hour, t0), None);
        let first = Attempt { requested: None, ..last.clone() };
        assert_eq!(not_due(Some(&first), Some(1), Some("a"), hour, t0), None);
        assert_eq!(not_due(Some(&last), Some(1), Some("a"), hour, t0 + hour), None);
    }
}
