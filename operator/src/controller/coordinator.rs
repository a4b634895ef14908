//! The rollout coordinator: the one component that writes `Tenant.status.target`.
//!
//! Two loops share that job, over disjoint tenants:
//! - a tenant that names no RolloutPolicy, or is pinned (`spec.pinnedDigest`), is admitted at once
//!   to its pin or its channel's digest ([`admit`]);
//! - every other tenant moves under its policy: the rollout engine ([`crate::core::rollout`])
//!   decides, per (policy, channel), which tenants move next, and this module carries the decision
//!   out: the policy's status first (the rollout's record, handled requests), then the tenants'
//!   targets, then promotion of channels fed by the source channel, rejection of an aborted digest,
//!   and events for what changed.
//!
//! Manual control is by one-shot annotations on the RolloutPolicy (`fleet.molecule.ai/<verb>:
//! <token>`, verbs in [`VERBS`]); a token is acknowledged in `status.handledRequests`, so each
//! request acts once even if the annotation stays. [`request`] writes them (the `rollout`
//! subcommand uses it).

use super::{COORDINATOR_MANAGER, Context, Error};
use crate::core::channel as channel_rules;
use crate::core::conditions::{self, Cond};
use crate::core::notify;
use crate::core::rollout::{self, Emergency, Requests, State, TenantView, phase};
use crate::core::tenant as plan;
use crate::crd::{
    DIGEST_PATTERN, ImageChannel, PromotionEvidence, REQUEST_ANNOTATION_PREFIX, Revision, RolloutPolicy, RolloutStatus,
    Tenant, condition as ct,
};
use futures::StreamExt;
use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Api, ListParams, Patch, PatchParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::{Event as KubeEvent, EventType, Recorder};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use kube::{Resource, ResourceExt};
use serde_json::json;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;
use tracing::{info, warn};

/// Request verbs, each an annotation `fleet.molecule.ai/<verb>` whose value is a fresh token.
pub const VERBS: [&str; 6] = ["promote", "pause", "resume", "abort", "retry", "emergency"];
/// Emergency request: the digest to apply to every tier.
pub const EMERGENCY_DIGEST: &str = "fleet.molecule.ai/emergency-digest";
/// Emergency request: only this channel (all of the policy's when absent).
pub const EMERGENCY_CHANNEL: &str = "fleet.molecule.ai/emergency-channel";
/// Emergency request: `"true"` to really move every tier at once.
pub const EMERGENCY_FORCE: &str = "fleet.molecule.ai/emergency-force";
/// Condition type on a RolloutPolicy: the last emergency request was carried out (or refused).
pub const EMERGENCY_CONDITION: &str = "EmergencyApplied";

/// What the tenant is admitted to, from its pin or its channel (tenants without a policy, and
/// pinned ones). Pure.
pub fn admit(tenant: &Tenant, channel: Option<&ImageChannel>, now: &Timestamp) -> Option<Revision> {
    let channel = channel?;
    let (digest, source) = match &tenant.spec.pinned_digest {
        Some(pin) => (pin.clone(), "pin"),
        // A channel that is not Ready (registry down) keeps its last good digest in status.
        None => (channel.status.as_ref()?.digest.clone()?, "channel"),
    };
    let image = format!("{}@{}", channel.spec.image, digest);
    let current = tenant.status.as_ref().and_then(|s| s.target.as_ref());
    if let Some(cur) = current
        && cur.digest == digest
        && cur.image == image
    {
        return Some(cur.clone());
    }
    Some(Revision {
        digest,
        image,
        env_revision: None,
        source: Some(source.into()),
        admitted_at: Some(now.to_string()),
    })
}

/// Whether the rollout engine moves this tenant (otherwise [`admit`] does).
fn under_policy(t: &Tenant) -> bool {
    t.spec.rollout_policy.is_some() && t.spec.pinned_digest.is_none()
}

/// Runs both loops until the shutdown futures resolve.
pub async fn run<F>(ctx: Arc<Context>, shutdown_direct: F, shutdown_rollouts: F)
where
    F: std::future::Future<Output = ()> + Send + Sync + 'static,
{
    tokio::join!(run_direct(ctx.clone(), shutdown_direct), run_rollouts(ctx, shutdown_rollouts));
}

async fn run_direct(ctx: Arc<Context>, shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static) {
    let tenants = ctx.watched::<Tenant>();
    let channels = ctx.watched::<ImageChannel>();
    let controller = Controller::new(tenants, watcher::Config::default().any_semantic());
    let store = controller.store();
    controller
        .watches(channels, watcher::Config::default().any_semantic(), move |ch: ImageChannel| {
            let ns = ch.namespace();
            let name = ch.name_any();
            store
                .state()
                .into_iter()
                .filter(|t| t.namespace() == ns && t.spec.channel == name && !under_policy(t))
                .map(|t| ObjectRef::from_obj(&*t))
                .collect::<Vec<_>>()
        })
        .graceful_shutdown_on(shutdown)
        .run(
            |t, ctx| async move { counted(&ctx.clone(), "coordinator", reconcile_direct(t, ctx).await) },
            |_, e: &Error, _| Action::requeue(e.retry_after()),
            ctx,
        )
        .for_each(|res| async move {
            if let Err(e) = res {
                warn!(error = %e, "coordinator reconcile failed");
            }
        })
        .await;
}

/// A failed reconcile counted by its error's category (successes count themselves).
fn counted(ctx: &Context, controller: &str, res: Result<Action, Error>) -> Result<Action, Error> {
    if let Err(e) = &res {
        ctx.metrics.reconciled(controller, e.category());
    }
    res
}

async fn reconcile_direct(tenant: Arc<Tenant>, ctx: Arc<Context>) -> Result<Action, Error> {
    if under_policy(&tenant) {
        return Ok(Action::await_change());
    }
    let ns = tenant.namespace().ok_or(Error::MissingField("metadata.namespace"))?;
    let channels: Api<ImageChannel> = Api::namespaced(ctx.client.clone(), &ns);
    let channel = channels.get_opt(&tenant.spec.channel).await?;
    let target = admit(&tenant, channel.as_ref(), &Timestamp::now());
    let current = tenant.status.as_ref().and_then(|s| s.target.clone());
    if target != current
        && let Some(target) = target
    {
        write_target(&ctx, &ns, &tenant.name_any(), &target).await?;
    }
    ctx.metrics.reconciled("coordinator", "ok");
    Ok(Action::await_change())
}

async fn write_target(ctx: &Context, ns: &str, tenant: &str, target: &Revision) -> Result<(), Error> {
    let api: Api<Tenant> = Api::namespaced(ctx.client.clone(), ns);
    let patch = json!({"apiVersion": "fleet.molecule.ai/v1alpha1", "kind": "Tenant", "status": {"target": target}});
    api.patch_status(tenant, &PatchParams::apply(COORDINATOR_MANAGER).force(), &Patch::Apply(&patch)).await?;
    ctx.target_written(ns, tenant, target);
    Ok(())
}

async fn run_rollouts(ctx: Arc<Context>, shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static) {
    let policies = ctx.watched::<RolloutPolicy>();
    let controller = Controller::new(policies, watcher::Config::default().any_semantic());
    let store = controller.store();
    controller
        .watches(ctx.watched::<Tenant>(), watcher::Config::default().any_semantic(), |t: Tenant| {
            let ns = t.namespace().unwrap_or_default();
            t.spec.rollout_policy.map(|p| ObjectRef::<RolloutPolicy>::new(&p).within(&ns))
        })
        .watches(ctx.watched::<ImageChannel>(), watcher::Config::default().any_semantic(), move |ch| {
            let ns = ch.namespace();
            store
                .state()
                .into_iter()
                .filter(|p| p.namespace() == ns)
                .map(|p| ObjectRef::from_obj(&*p))
                .collect::<Vec<_>>()
        })
        .graceful_shutdown_on(shutdown)
        .run(
            |p, ctx| async move { counted(&ctx.clone(), "rollout", reconcile_policy(p, ctx).await) },
            |_, e: &Error, _| Action::requeue(e.retry_after()),
            ctx,
        )
        .for_each(|res| async move {
            // A Tenant naming a policy that does not exist triggers it on every change of the
            // tenant; the tenant's own condition (PolicyNotFound) says so, no warning here.
            if let Err(kube::runtime::controller::Error::ObjectNotFound(obj)) = &res {
                tracing::debug!(policy = %obj, "a tenant names a RolloutPolicy that does not exist");
            } else if let Err(e) = res {
                warn!(error = %e, "rollout reconcile failed");
            }
        })
        .await;
}

/// The requests on the policy that were not handled yet, and their tokens (to acknowledge).
pub fn pending_requests(policy: &RolloutPolicy) -> (Requests, BTreeMap<String, String>, Option<String>) {
    let annotations = policy.annotations();
    let handled = policy.status.as_ref().map(|s| s.handled_requests.clone()).unwrap_or_default();
    let mut acks = BTreeMap::new();
    let mut req = Requests::default();
    let mut invalid = None;
    for verb in VERBS {
        let Some(token) = annotations.get(&format!("{REQUEST_ANNOTATION_PREFIX}{verb}")) else {
            continue;
        };
        if handled.get(verb) == Some(token) || token.is_empty() {
            continue;
        }
        acks.insert(verb.to_string(), token.clone());
        match verb {
            "promote" => req.promote = true,
            "pause" => req.pause = true,
            "resume" => req.resume = true,
            "abort" => req.abort = true,
            "retry" => req.retry = true,
            _ => {
                let digest = annotations.get(EMERGENCY_DIGEST).cloned().unwrap_or_default();
                let valid = crate::core::report::is_digest(&digest);
                if valid {
                    req.emergency = Some(Emergency {
                        digest,
                        channel: annotations.get(EMERGENCY_CHANNEL).cloned(),
                        force: annotations.get(EMERGENCY_FORCE).map(String::as_str) == Some("true"),
                    });
                } else {
                    invalid =
                        Some(format!("emergency request refused: {EMERGENCY_DIGEST} must match {DIGEST_PATTERN}"));
                }
            }
        }
    }
    (req, acks, invalid)
}

/// The annotations that make a request (the token should be new each time).
pub fn request_annotations(verb: &str, token: &str, emergency: Option<&Emergency>) -> BTreeMap<String, String> {
    let mut a = BTreeMap::new();
    a.insert(format!("{REQUEST_ANNOTATION_PREFIX}{verb}"), token.to_string());
    if let Some(e) = emergency {
        a.insert(EMERGENCY_DIGEST.into(), e.digest.clone());
        a.insert(EMERGENCY_FORCE.into(), e.force.to_string());
        if let Some(c) = &e.channel {
            a.insert(EMERGENCY_CHANNEL.into(), c.clone());
        }
    }
    a
}

/// Makes a request on a policy (a merge patch of its annotations). Returns the token.
pub async fn request(
    client: kube::Client,
    ns: &str,
    policy: &str,
    verb: &str,
    emergency: Option<&Emergency>,
) -> Result<String, Error> {
    if !VERBS.contains(&verb) {
        return Err(Error::InvalidRequest(format!("unknown request {verb:?}; one of {}", VERBS.join(", "))));
    }
    let token = uuid::Uuid::new_v4().simple().to_string();
    let mut annotations = serde_json::Map::new();
    for (k, v) in request_annotations(verb, &token, emergency) {
        annotations.insert(k, v.into());
    }
    if verb == "emergency" && emergency.is_some_and(|e| e.channel.is_none()) {
        annotations.insert(EMERGENCY_CHANNEL.into(), serde_json::Value::Null);
    }
    let api: Api<RolloutPolicy> = Api::namespaced(client, ns);
    api.patch(policy, &PatchParams::default(), &Patch::Merge(&json!({"metadata": {"annotations": annotations}})))
        .await?;
    Ok(token)
}

/// Puts the targets the coordinator wrote (by namespace and name) over `tenants` of `ns` where
/// they do not show them yet, and forgets those they show.
pub fn overlay_written(ns: &str, tenants: &mut [Tenant], written: &mut HashMap<(String, String), Revision>) {
    for t in tenants {
        let key = (ns.to_string(), t.name_any());
        let Some(mine) = written.get(&key) else { continue };
        let status = t.status.get_or_insert_with(Default::default);
        if status.target.as_ref() == Some(mine) {
            written.remove(&key);
        } else {
            status.target = Some(mine.clone());
        }
    }
}

/// How the coordinator sees one tenant relative to its target.
pub fn view(t: &Tenant) -> TenantView {
    let st = t.status.clone().unwrap_or_default();
    let target = st.target.as_ref().map(|x| x.digest.clone());
    let healthy = match (&st.observed, &st.target) {
        (Some(o), Some(x)) => plan::runs_target(o, x),
        _ => false,
    };
    let failed = super::tenant::failed_revision(&st).is_some()
        && st.history.first().and_then(|h| h.digest.as_deref()) == target.as_deref();
    let ready =
        conditions::find(&st.conditions, ct::READY).is_some_and(|c| c.status == "True" && c.reason == "Converged");
    // An observe in flight changes nothing; an apply does.
    let applying = st.in_flight.as_ref().is_some_and(|f| f.action != "observe");
    let state = if failed {
        let why = st.history.first().and_then(|h| h.message.clone()).unwrap_or_else(|| "apply failed".into());
        State::Failed(why)
    } else if ready && healthy && !applying {
        State::Verified
    } else {
        State::Moving
    };
    TenantView { name: t.name_any(), tier: t.spec.tier, target, state, healthy }
}

async fn reconcile_policy(policy: Arc<RolloutPolicy>, ctx: Arc<Context>) -> Result<Action, Error> {
    let ns = policy.namespace().ok_or(Error::MissingField("metadata.namespace"))?;
    let name = policy.name_any();
    let papi: Api<RolloutPolicy> = Api::namespaced(ctx.client.clone(), &ns);
    // Decide from the stored objects, never from a cache older than our own last write.
    let Some(policy) = papi.get_opt(&name).await? else {
        ctx.metrics.set_rollouts(&ns, &name, &[]);
        return Ok(Action::await_change());
    };
    let capi: Api<ImageChannel> = Api::namespaced(ctx.client.clone(), &ns);
    // The shared cache with our own target writes over it: no LIST per pass.
    let tenants: Vec<Tenant> = ctx
        .tenants_of(&ns)
        .await?
        .into_iter()
        .filter(|t| t.spec.rollout_policy.as_deref() == Some(name.as_str()) && t.metadata.deletion_timestamp.is_none())
        .collect();
    let status = policy.status.clone().unwrap_or_default();
    let (requests, acks, invalid) = pending_requests(&policy);
    let now = Timestamp::now();
    let channels: BTreeSet<String> = tenants.iter().map(|t| t.spec.channel.clone()).collect();

    let mut records = Vec::new();
    let mut writes: Vec<(String, Revision)> = Vec::new();
    let mut after: Vec<Followup> = Vec::new();
    let mut notes = Vec::new();
    let mut events = Vec::new();
    let mut requeue = Duration::from_secs(60);
    let mut emergency: Option<Cond> = invalid.map(|m| Cond::no(EMERGENCY_CONDITION, "InvalidRequest", m));
    for ch in &channels {
        let channel = capi.get_opt(ch).await?;
        let views: Vec<TenantView> =
            tenants.iter().filter(|t| &t.spec.channel == ch && under_policy(t) && !t.spec.suspend).map(view).collect();
        let record = status.rollouts.iter().find(|r| &r.channel == ch);
        let channel_digest = channel.as_ref().and_then(|c| c.status.as_ref()).and_then(|s| s.digest.clone());
        let out = rollout::step(&rollout::Input {
            policy: &name,
            spec: &policy.spec,
            channel: ch,
            channel_digest: channel_digest.as_deref(),
            promoted: channel.as_ref().is_some_and(|c| c.spec.promote_from.is_some()),
            record,
            tenants: &views,
            requests: &requests,
            now,
        });
        if let Some(m) = &out.emergency_refused {
            emergency = Some(Cond::no(EMERGENCY_CONDITION, "ForceRequired", m.clone()));
        }
        if let Some(m) = &out.emergency_applied {
            emergency = Some(Cond::yes(EMERGENCY_CONDITION, "Applied", m.clone()));
        }
        if let Some(image) = channel.as_ref().map(|c| c.spec.image.clone()) {
            for (tenant, digest) in &out.admit {
                let source = match out.record.as_ref().and_then(|r| r.source.as_deref()) {
                    Some("emergency") => "emergency".to_string(),
                    _ => format!("rollout/{name}"),
                };
                writes.push((
                    tenant.clone(),
                    Revision {
                        digest: digest.clone(),
                        image: format!("{image}@{digest}"),
                        env_revision: None,
                        source: Some(source),
                        admitted_at: Some(now.to_string()),
                    },
                ));
            }
        }
        // Rejections are kept level-triggered: a digest this policy aborted is marked rejected in
        // the channel now and whenever the channel's status lost the mark (a concurrent write).
        if let Some(c) = &channel {
            let mut rejected: Vec<String> = out.record.as_ref().map(|r| r.rejected.clone()).unwrap_or_default();
            if let Some(d) = &out.reject
                && !rejected.contains(d)
            {
                rejected.push(d.clone());
            }
            let history = c.status.as_ref().map(|s| s.history.clone()).unwrap_or_default();
            for d in rejected {
                let marked = history.iter().any(|h| h.digest == d && h.rejected);
                if !marked && c.spec.pinned_digest.is_none() {
                    after.push(Followup::Reject(Box::new(c.clone()), d));
                }
            }
        }
        if out.gate_passed
            && let Some(r) = &out.record
        {
            after.push(Followup::Promote(ch.clone(), Box::new(r.clone())));
        }
        if let Some(d) = out.requeue {
            requeue = requeue.min(d);
        }
        if let Some(r) = &out.record {
            events.extend(notify::events_of(&ns, &name, r, &out.notes, |t| failure(&tenants, t), &now));
        }
        notes.extend(out.notes.iter().cloned());
        if let Some(r) = out.record {
            records.push(r);
        }
    }

    // The record first: after a crash between the writes, the next step finds the batch recorded
    // (and waits a stagger) instead of admitting a second one.
    let mut handled = status.handled_requests.clone();
    handled.extend(acks);
    let conds = policy_conditions(&records, emergency);
    let newest = records.iter().max_by(|a, b| a.started_at.cmp(&b.started_at)).map(|r| r.phase.clone());
    let new_conditions = conditions::merge(&status.conditions, &conds, policy.metadata.generation, &Time(now));
    // Rollout events go in the same write as the transitions they describe (the notifier's outbox).
    let events = notify::append(&status.events, events);
    let patch = json!({
        "apiVersion": "fleet.molecule.ai/v1alpha1", "kind": "RolloutPolicy",
        "status": {
            "observedGeneration": policy.metadata.generation,
            "phase": newest,
            "rollouts": records,
            "handledRequests": handled,
            "conditions": new_conditions,
            "events": events,
        }
    });
    let changed = status.rollouts != records
        || status.handled_requests != handled
        || status.conditions != new_conditions
        || status.events != events
        || status.observed_generation != policy.metadata.generation;
    if changed {
        papi.patch_status(&name, &PatchParams::apply(COORDINATOR_MANAGER).force(), &Patch::Apply(&patch)).await?;
    }
    // Events describe what the record now says (durable), before the writes that carry it out.
    let recorder = Recorder::new(ctx.client.clone(), ctx.reporter.clone());
    for n in notes {
        let ev = KubeEvent {
            type_: if n.warning { EventType::Warning } else { EventType::Normal },
            reason: n.reason.into(),
            note: Some(n.message),
            action: "Rollout".into(),
            secondary: None,
        };
        if let Err(e) = recorder.publish(&ev, &policy.object_ref(&())).await {
            warn!(error = %e, "could not record event");
        }
    }
    for (tenant, target) in &writes {
        info!(policy = %name, tenant = %tenant, digest = %target.digest, "admitted");
        write_target(&ctx, &ns, tenant, target).await?;
    }
    for f in after {
        match f {
            Followup::Reject(channel, digest) => reject(&ctx, &ns, &channel, &digest, &name, now).await?,
            Followup::Promote(source, record) => promote(&ctx, &ns, &source, &record, &name, now).await?,
        }
    }
    ctx.metrics.set_rollouts(&ns, &name, &records);
    ctx.metrics.reconciled("rollout", "ok");
    Ok(Action::requeue(requeue.max(Duration::from_millis(200))))
}

/// Why a tenant failed, from its Ready condition (for the halt's event).
fn failure(tenants: &[Tenant], name: &str) -> String {
    let ready = tenants
        .iter()
        .find(|t| t.name_any() == name)
        .and_then(|t| t.status.as_ref())
        .and_then(|s| s.conditions.iter().find(|c| c.type_ == ct::READY && c.status == "False"));
    match ready {
        Some(c) => {
            let mut why = format!("{}: {}", c.reason, c.message);
            if let Some((i, _)) = why.char_indices().nth(300) {
                why.truncate(i);
                why.push('…');
            }
            why
        }
        None => "failed verification".into(),
    }
}

enum Followup {
    Reject(Box<ImageChannel>, String),
    Promote(String, Box<RolloutStatus>),
}

fn policy_conditions(records: &[RolloutStatus], emergency: Option<Cond>) -> Vec<Cond> {
    let mut out = Vec::new();
    let halted: Vec<&RolloutStatus> = records.iter().filter(|r| r.phase == phase::HALTED).collect();
    let waiting: Vec<&RolloutStatus> = records.iter().filter(|r| r.phase == phase::WAITING_FOR_CANARIES).collect();
    let moving: Vec<&RolloutStatus> = records
        .iter()
        .filter(|r| [phase::CANARY, phase::SOAKING, phase::PRODUCTION, phase::EMERGENCY].contains(&r.phase.as_str()))
        .collect();
    let msg = |rs: &[&RolloutStatus]| {
        rs.iter()
            .map(|r| format!("{}: {}", r.channel, r.message.clone().unwrap_or_else(|| r.phase.clone())))
            .collect::<Vec<_>>()
            .join("; ")
    };
    if !halted.is_empty() {
        out.push(Cond::no(ct::READY, "RolloutHalted", msg(&halted)));
        out.push(Cond::yes(ct::STALLED, "RolloutHalted", msg(&halted)));
        out.push(Cond::no(ct::RECONCILING, "RolloutHalted", "waiting for a retry or a newer digest"));
    } else if !waiting.is_empty() {
        out.push(Cond::no(ct::READY, "NoCanaries", msg(&waiting)));
        out.push(Cond::yes(ct::STALLED, "NoCanaries", msg(&waiting)));
        out.push(Cond::no(ct::RECONCILING, "NoCanaries", "waiting for canary tenants"));
    } else if !moving.is_empty() {
        let paused = moving.iter().all(|r| r.paused);
        let reason = if paused { "Paused" } else { "Progressing" };
        out.push(Cond::no(ct::READY, reason, msg(&moving)));
        out.push(Cond::no(ct::STALLED, reason, "not stalled"));
        if paused {
            out.push(Cond::no(ct::RECONCILING, "Paused", "paused by request"));
        } else {
            out.push(Cond::yes(ct::RECONCILING, "Progressing", msg(&moving)));
        }
    } else {
        let text = if records.is_empty() { "no rollout".to_string() } else { msg(&records.iter().collect::<Vec<_>>()) };
        out.push(Cond::yes(ct::READY, "RolloutsComplete", text));
        out.push(Cond::no(ct::STALLED, "RolloutsComplete", "not stalled"));
        out.push(Cond::no(ct::RECONCILING, "RolloutsComplete", "nothing to do"));
    }
    if let Some(e) = emergency {
        out.push(e);
    }
    out
}

/// Marks `digest` rejected in the channel (the newest good digest is in force again).
async fn reject(
    ctx: &Context,
    ns: &str,
    channel: &ImageChannel,
    digest: &str,
    policy: &str,
    now: Timestamp,
) -> Result<(), Error> {
    let capi: Api<ImageChannel> = Api::namespaced(ctx.client.clone(), ns);
    let Some(fresh) = capi.get_opt(&channel.name_any()).await? else {
        return Ok(());
    };
    let reason = format!("rollout under policy {policy} aborted");
    let Some(st) = channel_rules::rejected(&fresh.spec, fresh.status.as_ref(), digest, &reason, now) else {
        return Ok(());
    };
    // Conditional on the version read: a concurrent status write makes this fail and the next
    // reconcile decide again.
    let patch = json!({
        "metadata": {"resourceVersion": fresh.resource_version()},
        "status": {"digest": st.digest, "short": st.short, "history": st.history}
    });
    capi.patch_status(&fresh.name_any(), &PatchParams::apply(COORDINATOR_MANAGER), &Patch::Merge(&patch)).await?;
    publish(ctx, &fresh, true, "DigestRejected", format!("{digest} rejected: {reason}")).await;
    Ok(())
}

/// Gives every channel fed by `source` the digest that passed the gate, with the evidence.
async fn promote(
    ctx: &Context,
    ns: &str,
    source: &str,
    record: &RolloutStatus,
    policy: &str,
    now: Timestamp,
) -> Result<(), Error> {
    let capi: Api<ImageChannel> = Api::namespaced(ctx.client.clone(), ns);
    for ch in capi.list(&ListParams::default()).await?.items {
        if ch.spec.promote_from.as_deref() != Some(source) || ch.spec.pinned_digest.is_some() {
            continue;
        }
        let evidence = PromotionEvidence {
            channel: source.to_string(),
            policy: policy.to_string(),
            tenants: record.gate_tenants.clone(),
            soak_started_at: record.soak_started_at.clone().unwrap_or_default(),
            passed_at: record.gate_passed_at.clone().unwrap_or_else(|| now.to_string()),
            how: if record.soak_ends_at.as_deref().and_then(|e| e.parse::<Timestamp>().ok()).is_some_and(|e| now < e) {
                "manual".into()
            } else {
                "soak".into()
            },
        };
        let Some(st) = channel_rules::promoted(&ch.spec, ch.status.as_ref(), &record.digest, evidence, now) else {
            continue;
        };
        let patch = json!({"status": {"digest": st.digest, "short": st.short, "history": st.history}});
        capi.patch_status(&ch.name_any(), &PatchParams::apply(COORDINATOR_MANAGER), &Patch::Merge(&patch)).await?;
        let msg = format!(
            "{} promoted from channel {source}: passed the canary gate of policy {policy} on {}",
            record.digest,
            record.gate_tenants.join(", ")
        );
        publish(ctx, &ch, false, "Promoted", msg).await;
    }
    Ok(())
}

async fn publish(ctx: &Context, ch: &ImageChannel, warning: bool, reason: &str, note: String) {
    let recorder = Recorder::new(ctx.client.clone(), ctx.reporter.clone());
    let ev = KubeEvent {
        type_: if warning { EventType::Warning } else { EventType::Normal },
        reason: reason.into(),
        note: Some(note),
        action: "Rollout".into(),
        secondary: None,
    };
    if let Err(e) = recorder.publish(&ev, &ch.object_ref(&())).await {
        warn!(error = %e, "could not record event");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(annotations: serde_json::Value, handled: serde_json::Value) -> RolloutPolicy {
        serde_json::from_value(json!({
            "apiVersion": "fleet.molecule.ai/v1alpha1", "kind": "RolloutPolicy",
            "metadata": {"name": "p", "namespace": "ns", "annotations": annotations},
            "spec": {}, "status": {"handledRequests": handled}
        }))
        .unwrap()
    }

    #[test]
    fn a_request_acts_once_per_token() {
        let d = format!("sha256:{}", "a".repeat(64));
        let p =
            policy(json!({"fleet.molecule.ai/pause": "t1", "fleet.molecule.ai/abort": "t2"}), json!({"pause": "t1"}));
        let (req, acks, invalid) = pending_requests(&p);
        assert!(!req.pause && req.abort && invalid.is_none());
        assert_eq!(acks, BTreeMap::from([("abort".to_string(), "t2".to_string())]));
        let p = policy(
            json!({"fleet.molecule.ai/emergency": "t3", EMERGENCY_DIGEST: d, EMERGENCY_FORCE: "true"}),
            json!({}),
        );
        let (req, _, _) = pending_requests(&p);
        assert_eq!(req.emergency, Some(Emergency { digest: d.clone(), channel: None, force: true }));
        let p = policy(json!({"fleet.molecule.ai/emergency": "t3", EMERGENCY_DIGEST: "latest"}), json!({}));
        let (req, acks, invalid) = pending_requests(&p);
        assert!(req.emergency.is_none() && invalid.is_some() && acks.contains_key("emergency"));
    }

    #[test]
    fn conditions_name_the_halted_tenants() {
        let r = RolloutStatus {
            channel: "staging".into(),
            phase: phase::HALTED.into(),
            message: Some("halted: p00 failed".into()),
            ..Default::default()
        };
        let c = policy_conditions(&[r], None);
        assert!(c.iter().any(|c| c.type_ == ct::STALLED && c.status && c.message.contains("p00")));
        let c = policy_conditions(&[], None);
        assert!(c.iter().any(|c| c.type_ == ct::READY && c.status));
    }

    /// A production tenant verified on `digest`: its host serves it, healthy, and it is Ready.
    fn verified(name: &str, digest: &str) -> Tenant {
        let now = "2026-12-07T10:00:00Z";
        serde_json::from_value(json!({
            "apiVersion": "fleet.molecule.ai/v1alpha1", "kind": "Tenant",
            "metadata": {"name": name, "namespace": "ns"},
            "spec": {"slug": name, "instance": {"id": "i-1"}, "channel": "stable", "tier": "production",
                     "rolloutPolicy": "p", "container": {}},
            "status": {
                "target": {"digest": digest, "image": format!("r/app@{digest}")},
                "conditions": [{"type": "Ready", "status": "True", "reason": "Converged", "message": "m",
                                "lastTransitionTime": now}],
                "observed": {"activeSlot": "blue", "observedAt": now,
                             "blue": {"digest": digest, "running": true, "health": "healthy"}}
            }
        }))
        .unwrap()
    }

    /// The cache behind the coordinator's own write still shows the tenant verified on the old
    /// digest; with the write over it, the tenant is moving to the new one (so it counts against
    /// maxConcurrency and no second batch gets in), until the cache shows the write.
    #[test]
    fn a_cache_behind_our_own_target_write_never_shows_the_tenant_idle() {
        let (old, new) = (format!("sha256:{}", "a".repeat(64)), format!("sha256:{}", "b".repeat(64)));
        let cached = vec![verified("p1", &old), verified("p2", &old)];
        assert_eq!(view(&cached[0]).state, State::Verified);
        let target = Revision {
            digest: new.clone(),
            image: format!("r/app@{new}"),
            env_revision: None,
            source: Some("rollout/p".into()),
            admitted_at: None,
        };
        let mut written = HashMap::from([(("ns".to_string(), "p1".to_string()), target.clone())]);

        let mut seen = cached.clone();
        overlay_written("ns", &mut seen, &mut written);
        let p1 = view(&seen[0]);
        assert_eq!((p1.target.as_deref(), &p1.state), (Some(new.as_str()), &State::Moving));
        assert_eq!(view(&seen[1]).state, State::Verified, "a tenant not written to is as cached");
        // Another namespace's tenant of the same name is not ours.
        let mut other = cached.clone();
        overlay_written("elsewhere", &mut other, &mut written);
        assert_eq!(view(&other[0]).target.as_deref(), Some(old.as_str()));
        assert_eq!(written.len(), 1);

        // The cache caught up: it is read as it is, and the write is forgotten.
        let mut caught_up = vec![verified("p1", &new)];
        caught_up[0].status.as_mut().unwrap().target = Some(target);
        overlay_written("ns", &mut caught_up, &mut written);
        assert!(written.is_empty());
    }
}
