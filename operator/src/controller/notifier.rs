//! The notifier: delivers the rollout events the coordinator recorded in a policy's
//! `status.events` to the policy's webhook sinks (`spec.notifications`), and records each delivery
//! in `status.notifications` (its own field, its own field manager). It runs beside the
//! coordinator and never holds up a rollout: a sink that is down only delays its own deliveries.
//! What to send and when is decided in [`crate::core::notify`]; this module reads the sink's URL
//! from its Secret, writes the attempt before it sends, sends, and writes the outcome.

use super::{Context, Error, NOTIFIER_MANAGER};
use crate::core::notify::{self, Outcome, Step};
use crate::crd::{DeliveryResult, NotificationSink, RolloutEvent, RolloutPolicy, SinkStatus};
use futures::StreamExt;
use jiff::Timestamp;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::{Event as KubeEvent, EventType, Recorder};
use kube::runtime::watcher;
use kube::{Resource, ResourceExt};
use serde_json::json;
use std::sync::Arc;
use std::time::Duration;
use tracing::{info, warn};

/// How long one delivery may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Rounds of deliveries in one reconcile (each round sends at most one event per sink).
const ROUNDS: usize = 25;

struct Notifier {
    ctx: Arc<Context>,
    http: reqwest::Client,
}

/// Runs the notifier until `shutdown` resolves.
pub async fn run(ctx: Arc<Context>, shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static) {
    let http = match reqwest::Client::builder()
        .timeout(REQUEST_TIMEOUT)
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("tenant-operator/", env!("CARGO_PKG_VERSION")))
        .build()
    {
        Ok(c) => c,
        Err(e) => {
            warn!(error = %e.without_url(), "notifications are off: no HTTP client");
            return;
        }
    };
    let policies = ctx.watched::<RolloutPolicy>();
    let n = Arc::new(Notifier { ctx, http });
    Controller::new(policies, watcher::Config::default().any_semantic())
        .graceful_shutdown_on(shutdown)
        .run(reconcile, |_, e: &Error, _| Action::requeue(e.retry_after()), n)
        .for_each(|res| async move {
            if let Err(e) = res {
                warn!(error = %e, "notifier reconcile failed");
            }
        })
        .await;
}

async fn reconcile(policy: Arc<RolloutPolicy>, n: Arc<Notifier>) -> Result<Action, Error> {
    let ctx = &n.ctx;
    let ns = policy.namespace().ok_or(Error::MissingField("metadata.namespace"))?;
    let name = policy.name_any();
    let cached = policy.status.as_ref().map(|s| s.notifications.is_empty()).unwrap_or(true);
    if policy.spec.notifications.is_empty() && cached {
        return Ok(Action::await_change());
    }
    let api: Api<RolloutPolicy> = Api::namespaced(ctx.client.clone(), &ns);
    // Decide from the stored object: the watch cache can be older than this notifier's own last
    // write, and an attempt read back as `Sending` would be taken for one cut short by a stop.
    let Some(policy) = api.get_opt(&name).await? else {
        return Ok(Action::await_change());
    };
    let status = policy.status.clone().unwrap_or_default();
    // Sinks that were in the policy from its first generation hear of every recorded event;
    // a sink added later, of events from the moment it was first seen.
    let since = if policy.metadata.generation == Some(1) { Timestamp::UNIX_EPOCH } else { Timestamp::now() };
    let mut sinks: Vec<SinkStatus> = Vec::new();
    let mut urls: Vec<Result<reqwest::Url, String>> = Vec::new();
    for sink in &policy.spec.notifications {
        let mut s = status.notifications.iter().find(|s| s.sink == sink.name).cloned().unwrap_or_else(|| SinkStatus {
            sink: sink.name.clone(),
            since: since.to_string(),
            deliveries: Vec::new(),
            current: None,
            problem: None,
        });
        let url = url_of(ctx, &ns, sink).await?;
        s.problem = url.as_ref().err().cloned();
        sinks.push(s);
        urls.push(url);
    }
    let mut requeue: Option<Duration> = None;
    let mut written = status.notifications.clone();
    for _ in 0..ROUNDS {
        let now = Timestamp::now();
        let mut sends: Vec<(usize, RolloutEvent, reqwest::Url)> = Vec::new();
        for (i, sink) in policy.spec.notifications.iter().enumerate() {
            let Ok(url) = &urls[i] else {
                requeue = Some(requeue.map_or(Duration::from_secs(60), |r| r.min(Duration::from_secs(60))));
                continue;
            };
            let (s, step) = notify::plan(sink, Some(&sinks[i]), &status.events, &since, &now);
            report_unknown(ctx, &policy, sink, &status.events, &sinks[i], &s).await;
            sinks[i] = s;
            match step {
                Step::Idle => {}
                Step::Wait(w) => requeue = Some(requeue.map_or(w, |r| r.min(w))),
                Step::Send(e) => sends.push((i, e, url.clone())),
            }
        }
        // Intent before send: the attempt is recorded first, so a stop mid-request never sends it twice.
        write(&api, &name, &sinks, &mut written).await?;
        if sends.is_empty() {
            break;
        }
        // Each outcome is written as it comes: a slow sink never holds up another's record.
        let mut pending: futures::stream::FuturesUnordered<_> = sends
            .into_iter()
            .map(|(i, e, url)| {
                let sink = &policy.spec.notifications[i];
                let http = &n.http;
                let (ns, name) = (&ns, &name);
                async move {
                    let outcome = deliver(http, url, sink, ns, name, &e).await;
                    (i, e, outcome)
                }
            })
            .collect();
        while let Some((i, e, outcome)) = pending.next().await {
            let sink = &policy.spec.notifications[i];
            let s = notify::after(sinks[i].clone(), &outcome, ctx.settings.notify_retry_base, &Timestamp::now());
            let result = s.deliveries.iter().find(|d| d.id == e.id).map(|d| d.result);
            let label = match (&outcome, result) {
                (Outcome::Delivered, _) => "delivered",
                (_, Some(DeliveryResult::GaveUp)) => "gave_up",
                _ => "retrying",
            };
            ctx.metrics.notification(&format!("{:?}", e.type_), label);
            match (&outcome, result) {
                (Outcome::Delivered, _) => {
                    info!(policy = %name, sink = %sink.name, event = ?e.type_, id = %e.id, "notification delivered");
                }
                (Outcome::Retry(why) | Outcome::Refused(why), Some(DeliveryResult::GaveUp)) => {
                    warn!(policy = %name, sink = %sink.name, event = ?e.type_, id = %e.id, error = %why, "notification given up");
                    let note = format!("{:?} event {} not delivered to sink {}: {why}", e.type_, e.id, sink.name);
                    publish(ctx, &policy, "NotificationFailed", note).await;
                }
                (Outcome::Retry(why) | Outcome::Refused(why), _) => {
                    warn!(policy = %name, sink = %sink.name, event = ?e.type_, id = %e.id, error = %why, "notification failed; will retry");
                }
            }
            sinks[i] = s;
            write(&api, &name, &sinks, &mut written).await?;
        }
    }
    ctx.metrics.reconciled("notifier", "ok");
    Ok(match requeue {
        Some(d) => Action::requeue(d.max(Duration::from_millis(200))),
        None => Action::await_change(),
    })
}

/// Writes `status.notifications` when it changed (sinks no longer in the spec drop out).
async fn write(
    api: &Api<RolloutPolicy>,
    name: &str,
    sinks: &[SinkStatus],
    written: &mut Vec<SinkStatus>,
) -> Result<(), Error> {
    if written.as_slice() == sinks {
        return Ok(());
    }
    let patch = json!({
        "apiVersion": "fleet.molecule.ai/v1alpha1", "kind": "RolloutPolicy",
        "status": {"notifications": sinks},
    });
    api.patch_status(name, &PatchParams::apply(NOTIFIER_MANAGER).force(), &Patch::Apply(&patch)).await?;
    *written = sinks.to_vec();
    Ok(())
}

/// An attempt that a stop cut short is reported once, when it is found.
async fn report_unknown(
    ctx: &Context,
    policy: &RolloutPolicy,
    sink: &NotificationSink,
    events: &[RolloutEvent],
    before: &SinkStatus,
    after: &SinkStatus,
) {
    for d in after.deliveries.iter().filter(|d| d.result == DeliveryResult::Unknown) {
        if !before.deliveries.iter().any(|b| b.id == d.id) {
            let event = events.iter().find(|e| e.id == d.id).map(|e| format!("{:?}", e.type_)).unwrap_or_default();
            ctx.metrics.notification(&event, "unknown");
            let note = format!(
                "event {} to sink {}: the operator stopped while sending it; not sent again (at most once)",
                d.id, sink.name
            );
            publish(ctx, policy, "NotificationUncertain", note).await;
        }
    }
}

/// The sink's URL from its Secret, or why there is none (never the URL itself).
async fn url_of(ctx: &Context, ns: &str, sink: &NotificationSink) -> Result<Result<reqwest::Url, String>, Error> {
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), ns);
    let r = &sink.url_secret_ref;
    let Some(secret) = secrets.get_opt(&r.name).await? else {
        return Ok(Err(format!("Secret {} does not exist", r.name)));
    };
    let Some(raw) = secret.data.as_ref().and_then(|d| d.get(&r.key)) else {
        return Ok(Err(format!("Secret {} has no key {}", r.name, r.key)));
    };
    let Ok(text) = std::str::from_utf8(&raw.0) else {
        return Ok(Err(format!("key {} of Secret {} is not UTF-8", r.key, r.name)));
    };
    Ok(match reqwest::Url::parse(text.trim()) {
        Ok(u) if (u.scheme() == "https" || u.scheme() == "http") && u.host().is_some() => Ok(u),
        Ok(_) => Err(format!("key {} of Secret {} is not an http(s) URL", r.key, r.name)),
        Err(e) => Err(format!("key {} of Secret {} is not a URL ({e})", r.key, r.name)),
    })
}

/// One POST; the error never carries the URL (a Slack webhook URL is a credential).
async fn deliver(
    http: &reqwest::Client,
    url: reqwest::Url,
    sink: &NotificationSink,
    ns: &str,
    policy: &str,
    e: &RolloutEvent,
) -> Outcome {
    let body = notify::body(sink.format, ns, policy, e);
    let sent = http
        .post(url)
        .header("X-Tenant-Operator-Event", format!("{:?}", e.type_))
        .header("X-Tenant-Operator-Delivery", &e.id)
        .json(&body)
        .send()
        .await;
    match sent {
        Ok(resp) => notify::outcome_of_status(resp.status().as_u16()),
        Err(err) => {
            let kind = if err.is_timeout() {
                "timed out"
            } else if err.is_connect() {
                "connection failed"
            } else {
                "request failed"
            };
            let err = err.without_url();
            let mut why = format!("{kind}: {err}");
            let mut source = std::error::Error::source(&err);
            while let Some(s) = source {
                why.push_str(&format!(": {s}"));
                source = s.source();
            }
            Outcome::Retry(why)
        }
    }
}

async fn publish(ctx: &Context, policy: &RolloutPolicy, reason: &str, note: String) {
    let recorder = Recorder::new(ctx.client.clone(), ctx.reporter.clone());
    let ev = KubeEvent {
        type_: EventType::Warning,
        reason: reason.into(),
        note: Some(note),
        action: "Notify".into(),
        secondary: None,
    };
    if let Err(e) = recorder.publish(&ev, &policy.object_ref(&())).await {
        warn!(error = %e, "could not record event");
    }
}
