//! The Tenant controller: finds the org's instance, asks the host what it runs, and writes what it
//! observed back as status and conditions. It carries out `status.target`; it never decides it.

use super::{Context, Error, FINALIZER, MANAGER};
use crate::aws::{AwsScope, InstanceQuery, Invocation, InvocationStatus, Ping};
use crate::core::adoption::{self, Step};
use crate::core::conditions::{self, Cond};
use crate::core::report::{self, CommandResult, Delivery, HostReport, short_digest};
use crate::core::tenant::{self as plan, Desired, Next, PlanInput};
use crate::crd::{
    AdoptionMode, AdoptionStatus, ApplyRecord, ImportedContainer, InFlightCommand, RolloutPolicySpec, Tenant,
    TenantStatus, condition as ct,
};
use crate::host::revision::{self, DesiredRevision, Rollout};
use futures::{StreamExt, TryStreamExt};
use jiff::Timestamp;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::{Event as KubeEvent, EventType, Recorder};
use kube::runtime::finalizer::{Event as Finalizer, finalizer};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Resource, ResourceExt};
use serde_json::json;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use tracing::{info, warn};

/// Runs the Tenant controller until `shutdown` resolves.
pub async fn run(ctx: Arc<Context>, shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static) {
    // Secrets trigger the tenants that name them: their metadata is all that is needed (no Secret
    // data crosses the watch or sits in memory).
    let secrets =
        watcher(ctx.watched::<kube::core::PartialObjectMeta<Secret>>(), watcher::Config::default().any_semantic())
            .default_backoff()
            .touched_objects();
    // One watch of the Tenants feeds the controller's cache (trimmed of managedFields: nothing here
    // reads them, and they are most of an object's size) and the claims index.
    let (reader, writer) = kube::runtime::reflector::store();
    let claims = ctx.claims.clone();
    let trigger = watcher(ctx.watched::<Tenant>(), watcher::Config::default().any_semantic())
        .modify(|t| t.managed_fields_mut().clear())
        .map_ok(move |event| {
            claims.observe(&event);
            event
        })
        .reflect(writer)
        .applied_objects();
    let controller = Controller::for_stream(trigger, reader);
    let store = controller.store();
    // The coordinator reads the same cache (no LIST of every tenant per rollout pass).
    ctx.share_tenants(Some(store.clone()));
    let _withdraw = Withdraw(ctx.clone());
    // Tenants by condition, from the controller's own cache (no extra API calls).
    let gauge_store = store.clone();
    let metrics = ctx.metrics.clone();
    let gauge = tokio::spawn(async move {
        loop {
            let tenants: Vec<Tenant> = gauge_store.state().iter().map(|t| (**t).clone()).collect();
            metrics.set_tenants(&crate::metrics::tenants_by_condition(&tenants));
            tokio::time::sleep(Duration::from_secs(5)).await;
        }
    });
    let _stop_gauge = AbortOnDrop(gauge);
    controller
        .watches_stream(secrets, move |secret: kube::core::PartialObjectMeta<Secret>| {
            let ns = secret.namespace();
            let name = secret.name_any();
            store
                .state()
                .into_iter()
                .filter(|t| {
                    t.namespace() == ns
                        && (t.spec.container.env_from.iter().any(|e| e.secret_ref.name == name)
                            || t.spec.container.image_pull_secret.as_ref().is_some_and(|r| r.name == name))
                })
                .map(|t| kube::runtime::reflector::ObjectRef::from_obj(&*t))
                .collect::<Vec<_>>()
        })
        .graceful_shutdown_on(shutdown)
        .run(reconcile, error_policy, ctx)
        .for_each(|res| async move {
            if let Err(e) = res {
                warn!(error = %e, "tenant reconcile failed");
            }
        })
        .await;
}

/// Withdraws the shared Tenant cache when the controller stops (its watch stops with it).
struct Withdraw(Arc<Context>);

impl Drop for Withdraw {
    fn drop(&mut self) {
        self.0.share_tenants(None);
    }
}

/// Aborts a background task when dropped (the gauge stops with the controller).
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

async fn reconcile(tenant: Arc<Tenant>, ctx: Arc<Context>) -> Result<Action, Error> {
    let ns = tenant.namespace().ok_or(Error::MissingField("metadata.namespace"))?;
    let api: Api<Tenant> = Api::namespaced(ctx.client.clone(), &ns);
    // Decide from state that holds our own last write, never from a cache that may predate it: a
    // stale `inFlight` would otherwise be lost and a second command sent. The watch's copy is
    // that state when it is the very version our last status write returned; otherwise (another
    // writer since, a restart, a cache behind) the stored object is read.
    let tenant_name = tenant.name_any();
    let ours = tenant.resource_version().is_some_and(|rv| ctx.last_written(&ns, &tenant_name).as_deref() == Some(&rv));
    let tenant = if ours {
        tenant
    } else {
        let Some(stored) = api.get_opt(&tenant_name).await?.map(Arc::new) else {
            return Ok(Action::await_change());
        };
        stored
    };
    let res = finalizer(&api, FINALIZER, tenant, |event| async {
        match event {
            Finalizer::Apply(t) => t.reconcile(&ctx).await,
            Finalizer::Cleanup(t) => t.cleanup(&ctx).await,
        }
    })
    .await
    .map_err(|e| match e {
        kube::runtime::finalizer::Error::ApplyFailed(e) | kube::runtime::finalizer::Error::CleanupFailed(e) => e,
        other => Error::Finalizer(other.to_string()),
    });
    ctx.metrics.reconciled("tenant", res.as_ref().map(|_| "ok").unwrap_or_else(|e| e.category()));
    match res {
        // The operator's RBAC does not allow a request this tenant needs: say so on the tenant
        // (a user has to grant it) and look again later, instead of retrying in a hot loop.
        Err(e) if e.is_forbidden() => {
            let Some(tenant) = api.get_opt(&tenant_name).await? else { return Ok(Action::await_change()) };
            tenant.report_forbidden(&ctx, &e).await?;
            Ok(Action::requeue(FORBIDDEN_RETRY))
        }
        other => other,
    }
}

/// How soon a tenant whose reconcile was refused by RBAC is tried again.
const FORBIDDEN_RETRY: Duration = Duration::from_secs(60);

fn error_policy(_tenant: Arc<Tenant>, err: &Error, _ctx: Arc<Context>) -> Action {
    Action::requeue(err.retry_after())
}

/// Where a tenant's desired state lives in Parameter Store.
pub fn parameter_prefix(root: &str, slug: &str) -> String {
    format!("{}/{}", root.trim_end_matches('/'), slug)
}

/// The result of looking for the tenant's instance.
enum Found {
    Instance(String),
    Problem(&'static str, String),
}

impl Tenant {
    fn scope(&self) -> AwsScope {
        AwsScope {
            region: self.spec.instance.region.clone(),
            assume_role_arn: self.spec.instance.assume_role_arn.clone(),
        }
    }

    fn status_or_default(&self) -> TenantStatus {
        self.status.clone().unwrap_or_default()
    }

    /// Finds the one managed instance whose org tag is the slug, or says why not.
    async fn find_instance(&self, ctx: &Context) -> Result<Found, Error> {
        let s = &ctx.settings;
        let scope = self.scope();
        let query = match (&self.spec.instance.id, &self.spec.instance.tags) {
            (Some(id), _) => InstanceQuery { ids: vec![id.clone()], tags: BTreeMap::new() },
            (None, Some(tags)) => {
                let mut tags: BTreeMap<String, Vec<String>> =
                    tags.iter().map(|(k, v)| (k.clone(), vec![v.clone()])).collect();
                tags.insert(s.org_tag.clone(), vec![self.spec.slug.clone()]);
                InstanceQuery { ids: vec![], tags }
            }
            (None, None) => {
                return Ok(Found::Problem(
                    "InvalidSpec",
                    "exactly one of instance.id or instance.tags must be set".into(),
                ));
            }
        };
        let found = ctx.lookups().ask(&scope, query).await?;
        match found.as_slice() {
            [] => Ok(Found::Problem("InstanceNotFound", "no instance matches spec.instance".into())),
            [one] => {
                if one.tags.get(&s.managed_tag).map(String::as_str) != Some("true") {
                    Ok(Found::Problem(
                        "InstanceNotManaged",
                        format!("instance {} is not tagged {}=true", one.id, s.managed_tag),
                    ))
                } else if one.tags.get(&s.org_tag) != Some(&self.spec.slug) {
                    Ok(Found::Problem(
                        "OrgTagMismatch",
                        format!("instance {} has {} different from the slug", one.id, s.org_tag),
                    ))
                } else {
                    Ok(Found::Instance(one.id.clone()))
                }
            }
            many => Ok(Found::Problem(
                "AmbiguousInstance",
                format!("{} instances match spec.instance; it must select exactly one", many.len()),
            )),
        }
    }

    /// Another Tenant that claims the same instance or org and came first (oldest wins, then
    /// namespace and name): from the claims index the Tenant watch keeps, no request.
    async fn rival_claim(&self, ctx: &Context, instance: &str) -> Option<String> {
        ctx.claims.rival(self, instance).await.map(|c| c.to_string())
    }

    async fn reconcile(&self, ctx: &Arc<Context>) -> Result<Action, Error> {
        let now = Timestamp::now();
        let mut status = self.status_or_default();
        let generation = self.metadata.generation;

        if self.spec.suspend {
            let conds = [
                Cond::no(ct::READY, "Suspended", "spec.suspend is true: the host is left alone"),
                Cond::no(ct::RECONCILING, "Suspended", "suspended"),
                Cond::no(ct::STALLED, "Suspended", "suspended"),
            ];
            self.write_status(ctx, status, &conds, generation, &now).await?;
            return Ok(Action::await_change());
        }

        let (desired, secrets) = match &status.target {
            Some(target) => match self.desired_revision(ctx, &ns_of(self)?, target, status.adoption.as_ref()).await? {
                Ok(rev) => (
                    Some(rev),
                    Cond::yes(
                        ct::SECRETS_SYNCED,
                        "SecretsSynced",
                        "every referenced Secret and key is in the target revision",
                    ),
                ),
                Err(cond) => (None, cond),
            },
            None => (None, Cond::yes(ct::SECRETS_SYNCED, "NoTarget", "no target admitted yet")),
        };
        let failed = failed_revision(&status).map(str::to_string);
        let base = match self.soak_sample_interval(ctx).await? {
            Some(sample) => ctx.settings.observe_interval.min(sample),
            None => ctx.settings.observe_interval,
        };
        let interval = jittered(base, &self.uid().unwrap_or_default());
        // A hand-run host is never applied to unless adopted; a released one is left to its cron.
        let hold =
            self.spec.adoption == AdoptionMode::Release || status.observed.as_ref().is_some_and(adoption::hand_run);
        let adopt_step = if status.in_flight.is_some() {
            Step::Nothing
        } else {
            adoption::step(&adoption::Input {
                now,
                mode: self.spec.adoption,
                observation: status.observed.as_ref(),
                adoption: status.adoption.as_ref(),
                refresh: ctx.settings.observe_interval * 10,
            })
        };
        let next = plan::next(&PlanInput {
            now,
            in_flight: status.in_flight.as_ref(),
            observation: status.observed.as_ref(),
            observe_interval: interval,
            target: status.target.as_ref(),
            desired: desired.as_ref().zip(status.target.as_ref()).filter(|_| !hold).map(|(d, t)| Desired {
                id: &d.id,
                digest: &t.digest,
                env_revision: &d.env_revision,
            }),
            failed_revision: failed.as_deref(),
            apply_not_before: status
                .history
                .first()
                .filter(|h| h.action == "apply" && h.result == CommandResult::NotDelivered.as_str())
                .and_then(|h| h.finished_at.as_deref()?.parse::<Timestamp>().ok())
                .map(|t| t.saturating_add(plan::NOT_DELIVERED_RETRY).unwrap_or(t)),
        });
        // Adoption steps go before anything else but the command in flight.
        let adopt_step = if matches!(next, Next::Poll) { Step::Nothing } else { adopt_step };
        let scope = self.scope();
        // The instance is looked up and its agent pinged only before something is sent (or when the
        // spec changed): a command in flight is followed without either, and an idle reconcile
        // (our own status write wakes one) costs no AWS call.
        let following = status.in_flight.as_ref().is_some_and(|f| f.command_id.is_some());
        let spec_changed = status.observed_generation != generation;
        let needs_aws = spec_changed
            || status.instance_id.is_none()
            || !matches!(next, Next::Wait(_) | Next::Poll)
            || adopt_step != Step::Nothing
            || (matches!(next, Next::Poll) && !following);
        let (instance, reachable) = if !needs_aws {
            // Nothing to send: no AWS call at all.
            (status.instance_id.clone().unwrap_or_default(), None)
        } else {
            let instance = match self.find_instance(ctx).await? {
                Found::Instance(id) => id,
                Found::Problem(reason, message) => {
                    status.instance_id = None;
                    let conds = [
                        Cond::no(ct::READY, reason, message.clone()),
                        Cond::no(ct::RECONCILING, reason, "waiting for a change to the instance or the spec"),
                        Cond::yes(ct::STALLED, reason, message),
                        Cond::no(ct::INSTANCE_REACHABLE, reason, "no instance"),
                    ];
                    self.write_status(ctx, status, &conds, generation, &now).await?;
                    return Ok(Action::requeue(Duration::from_secs(60)));
                }
            };
            if let Some(rival) = self.rival_claim(ctx, &instance).await {
                let message = format!("instance {instance} is already claimed by Tenant {rival}");
                let conds = [
                    Cond::no(ct::READY, "InstanceClaimed", message.clone()),
                    Cond::no(ct::RECONCILING, "InstanceClaimed", "waiting for the other claim to go"),
                    Cond::yes(ct::STALLED, "InstanceClaimed", message),
                ];
                self.write_status(ctx, status, &conds, generation, &now).await?;
                return Ok(Action::requeue(Duration::from_secs(60)));
            }
            status.instance_id = Some(instance.clone());

            if ctx.pings().ask(&scope, instance.clone()).await? != Ping::Online {
                // Unreachable is not failed: nothing is sent, no budget is spent, we look again soon.
                let conds = [
                    Cond::no(
                        ct::INSTANCE_REACHABLE,
                        "AgentOffline",
                        format!("the SSM agent of {instance} is not online"),
                    ),
                    Cond::no(ct::READY, "InstanceUnreachable", "the host cannot be reached through SSM"),
                    Cond::yes(ct::RECONCILING, "WaitingForAgent", "waiting for the SSM agent to come back"),
                    Cond::no(ct::STALLED, "WaitingForAgent", "not stalled: the agent may come back"),
                ];
                self.write_status(ctx, status, &conds, generation, &now).await?;
                return Ok(Action::requeue(Duration::from_secs(15)));
            }
            let reachable =
                Cond::yes(ct::INSTANCE_REACHABLE, "AgentOnline", format!("the SSM agent of {instance} is online"));
            (instance, Some(reachable))
        };
        let mut reachable = reachable;

        let mut adoption_problem = None;
        let requeue = match (adopt_step, next) {
            (Step::Inspect, _) => {
                self.send(ctx, &scope, &instance, &mut status, "inspect-legacy", None, &now, generation).await?;
                ctx.settings.poll_interval
            }
            (Step::Release, _) => {
                self.send(ctx, &scope, &instance, &mut status, "unadopt", None, &now, generation).await?;
                ctx.settings.poll_interval
            }
            (Step::Adopt, _) => {
                let imported = status.adoption.as_ref().and_then(|a| a.imported.clone()).unwrap_or_default();
                match self.adoption_revision(ctx, &ns_of(self)?, &imported).await? {
                    Ok(rev) => {
                        info!(tenant = %self.name_any(), revision = %rev.id, digest = %imported.digest, "adopting the hand-run container");
                        self.send(ctx, &scope, &instance, &mut status, "adopt", Some(&rev), &now, generation).await?;
                        ctx.settings.poll_interval
                    }
                    Err(problem) => {
                        adoption_problem = Some(problem);
                        interval
                    }
                }
            }
            (Step::Nothing, Next::Poll) => {
                let (requeue, waiting) = self.poll(ctx, &scope, &instance, &mut status, desired.as_ref(), &now).await?;
                if waiting.is_some() {
                    reachable = waiting;
                }
                requeue
            }
            (Step::Nothing, Next::Observe) => {
                // Observes are batched with other tenants' (one SendCommand for up to 50 hosts).
                let sent = ctx.observer().observe(&scope, &instance).await?;
                status.in_flight = Some(InFlightCommand {
                    intent_token: sent.token,
                    command_id: Some(sent.command_id),
                    action: "observe".into(),
                    revision: None,
                    digest: None,
                    started_at: now.to_string(),
                });
                ctx.settings.poll_interval
            }
            (Step::Nothing, Next::Apply) => {
                let rev = desired.as_ref().ok_or(Error::MissingField("desired revision"))?;
                self.send(ctx, &scope, &instance, &mut status, "apply", Some(rev), &now, generation).await?;
                ctx.settings.poll_interval
            }
            (Step::Nothing, Next::Wait(d)) => d,
        };
        let mut conds = self.conditions(&status, reachable, secrets, desired.as_ref());
        self.adoption_conditions(&status, adoption_problem, &mut conds);
        self.write_status(ctx, status, &conds, generation, &now).await?;
        Ok(Action::requeue(requeue))
    }

    /// Writes the intent, then sends the command (the token travels in the comment). A revision
    /// (apply, adopt) goes in a batch with other tenants' of the same digest, after its parameter
    /// is written when its base is not the one the last apply or adopt sent.
    #[allow(clippy::too_many_arguments)]
    async fn send(
        &self,
        ctx: &Arc<Context>,
        scope: &AwsScope,
        instance: &str,
        status: &mut TenantStatus,
        action: &str,
        rev: Option<&DesiredRevision>,
        now: &Timestamp,
        generation: Option<i64>,
    ) -> Result<(), Error> {
        // The document exists before the intent is written (a failure here leaves no intent).
        ctx.document_version(scope).await?;
        let put = rev.filter(|r| last_sent_base(status) != Some(r.base.as_str()));
        let ticket = rev.map(|r| ctx.dispatcher().join(scope, action, &r.digest));
        let token = match &ticket {
            Some(t) => t.token().to_string(),
            None => uuid::Uuid::new_v4().simple().to_string(),
        };
        let revision = rev.map(|r| r.id.clone());
        let intent = InFlightCommand {
            intent_token: token.clone(),
            command_id: None,
            action: action.to_string(),
            revision: revision.clone(),
            digest: rev.map(|r| r.digest.clone()).or_else(|| status.target.as_ref().map(|t| t.digest.clone())),
            started_at: now.to_string(),
        };
        status.in_flight = Some(intent.clone());
        // The intent is durable before anything reaches the host. An apply also says so in the
        // conditions at once, so nobody reads a stale `Ready` while the host changes.
        let conds = if action == "observe" || action == "inspect-legacy" {
            vec![]
        } else {
            vec![
                Cond::no(
                    ct::READY,
                    "Applying",
                    format!("applying revision {}", revision.as_deref().unwrap_or_default()),
                ),
                Cond::yes(ct::RECONCILING, "Applying", "a command is changing the host"),
                Cond::no(ct::STALLED, "Applying", "not stalled"),
            ]
        };
        self.write_status(ctx, status.clone(), &conds, generation, now).await?;
        if ctx.faults.crash_after_intent.load(std::sync::atomic::Ordering::SeqCst) {
            // As if the process died here: this reconcile never finishes.
            std::future::pending::<()>().await;
        }
        if let Some(r) = put {
            self.store_revision(ctx, scope, r).await?;
        }
        let id = match ticket {
            Some(t) => t.send(instance).await?,
            None => {
                let id = self.send_intent(ctx, scope, instance, &intent).await?;
                ctx.metrics.command(action, "sent");
                id
            }
        };
        if ctx.faults.crash_after_send.load(std::sync::atomic::Ordering::SeqCst) {
            std::future::pending::<()>().await;
        }
        if let Some(f) = status.in_flight.as_mut() {
            f.command_id = Some(id);
        }
        Ok(())
    }

    async fn send_intent(
        &self,
        ctx: &Context,
        scope: &AwsScope,
        instance: &str,
        intent: &InFlightCommand,
    ) -> Result<String, Error> {
        let digest = match intent.action.as_str() {
            "apply" | "adopt" => intent.digest.clone().unwrap_or_default(),
            _ => String::new(),
        };
        let comment = format!("tenant-operator intent={}", intent.intent_token);
        ctx.send_document(scope, &intent.action, &digest, vec![instance.to_string()], comment).await
    }

    /// Writes the tenant's revision parameter (its base: everything but the digest).
    async fn store_revision(&self, ctx: &Context, scope: &AwsScope, rev: &DesiredRevision) -> Result<(), Error> {
        let name = revision::parameter_name(&ctx.settings.document.param_root, &self.spec.slug);
        Ok(ctx.aws.put_secure_parameter(scope, &name, &rev.value).await?)
    }

    /// Follows the command in flight; finds it by its token after a restart instead of resending.
    async fn poll(
        &self,
        ctx: &Context,
        scope: &AwsScope,
        instance: &str,
        status: &mut TenantStatus,
        desired: Option<&DesiredRevision>,
        now: &Timestamp,
    ) -> Result<(Duration, Option<Cond>), Error> {
        let Some(mut f) = status.in_flight.clone() else { return Ok((Duration::ZERO, None)) };
        if f.command_id.is_none() {
            match ctx.aws.find_command(scope, instance, &f.intent_token).await? {
                Some(id) => {
                    info!(tenant = %self.name_any(), command = %id, "found the in-flight command by its intent token");
                    ctx.metrics.command(&f.action, "adopted");
                    f.command_id = Some(id);
                }
                None => {
                    // Never sent (the operator stopped between the intent and the send, or the batch
                    // went without it): send it now, once, alone. A revision is written again first
                    // (the stop may have come before its parameter was); one that is no longer the
                    // desired one is not sent at all, and goes to history as never delivered, so
                    // that the next apply writes the parameter again.
                    let carries_revision = matches!(f.action.as_str(), "apply" | "adopt");
                    let still_desired =
                        desired.filter(|d| f.action == "apply" && f.revision.as_deref() == Some(d.id.as_str()));
                    if carries_revision && still_desired.is_none() {
                        let unsent = Invocation {
                            status: InvocationStatus::Undeliverable,
                            stdout: String::new(),
                            stderr: String::new(),
                        };
                        self.finish(ctx, status, &f, &unsent, now);
                        return Ok((Duration::from_millis(100), None));
                    }
                    if let Some(rev) = still_desired {
                        self.store_revision(ctx, scope, rev).await?;
                    }
                    let id = self.send_intent(ctx, scope, instance, &f).await?;
                    ctx.metrics.command(&f.action, "sent");
                    f.command_id = Some(id);
                }
            }
            status.in_flight = Some(f);
            return Ok((ctx.settings.poll_interval, None));
        }
        let id = f.command_id.clone().unwrap_or_default();
        // The intent's time: the command went out after it (after a restart too).
        let sent = f
            .started_at
            .parse::<Timestamp>()
            .unwrap_or_else(|_| now.checked_sub(jiff::SignedDuration::from_hours(1)).unwrap_or(*now));
        let Some(inv) = ctx.collector.invocation(ctx.aws.as_ref(), scope, &id, instance, sent).await? else {
            return Ok((ctx.settings.poll_interval, None));
        };
        if !inv.status.is_final() {
            // Not delivered for a while: is the agent still there? Offline is "unreachable", not
            // failed; the command stays in flight (SSM delivers it when the agent returns, or times
            // it out) and is polled less often meanwhile.
            let started = f.started_at.parse::<Timestamp>().ok();
            let waited = started.map(|s| now.duration_since(s).as_secs()).unwrap_or(0);
            if inv.status == InvocationStatus::Pending
                && waited >= UNDELIVERED_PING_AFTER_SECS
                && ctx.pings().ask(scope, instance.to_string()).await? != Ping::Online
            {
                status.in_flight = Some(f);
                let msg = format!("the SSM agent of {instance} went offline; command {id} waits for it");
                return Ok((Duration::from_secs(15), Some(Cond::no(ct::INSTANCE_REACHABLE, "AgentOffline", msg))));
            }
            status.in_flight = Some(f);
            return Ok((ctx.settings.poll_interval, None));
        }
        self.finish(ctx, status, &f, &inv, now);
        Ok((Duration::from_millis(100), None))
    }

    /// Takes a finished command's report into status.
    fn finish(&self, ctx: &Context, status: &mut TenantStatus, f: &InFlightCommand, inv: &Invocation, now: &Timestamp) {
        status.in_flight = None;
        let outcome = match inv.status {
            InvocationStatus::Success => "succeeded",
            InvocationStatus::Failed => "failed",
            InvocationStatus::TimedOut => "timed_out",
            _ => "undeliverable",
        };
        ctx.metrics.command(&f.action, outcome);
        let report = HostReport::parse(&inv.stdout);
        match &report {
            Ok(report) => {
                let obs = report.to_observation(now.to_string());
                status.running = plan::serving(&obs).and_then(|(_, s)| s.digest.as_deref()).map(short_digest);
                status.observed = Some(obs);
            }
            Err(e) => {
                warn!(tenant = %self.name_any(), error = %e, status = ?inv.status, "host report unreadable");
            }
        }
        if matches!(f.action.as_str(), "inspect-legacy" | "adopt" | "unadopt") {
            self.finish_adoption(ctx, status, f, report.as_ref().ok(), now);
        }
        if f.action != "observe" && f.action != "inspect-legacy" {
            let delivery = match inv.status {
                InvocationStatus::DeliveryTimedOut | InvocationStatus::Undeliverable => Delivery::NotDelivered,
                InvocationStatus::TimedOut => Delivery::TimedOut,
                _ => Delivery::Ran,
            };
            let (result, message) = report::command_result(delivery, report.as_ref());
            status.history.insert(
                0,
                ApplyRecord {
                    revision: f.revision.clone().unwrap_or_default(),
                    digest: f.digest.clone(),
                    action: f.action.clone(),
                    result: result.as_str().into(),
                    message: Some(message),
                    command_id: f.command_id.clone(),
                    started_at: f.started_at.clone(),
                    finished_at: Some(now.to_string()),
                },
            );
            status.history.truncate(ctx.settings.history_limit);
        }
    }

    /// A canary whose policy is soaking a rollout of its channel is observed at the gate's sample
    /// interval, so its health is re-sampled through the soak.
    async fn soak_sample_interval(&self, ctx: &Context) -> Result<Option<Duration>, Error> {
        let (Some(name), crate::crd::Tier::Canary) = (&self.spec.rollout_policy, self.spec.tier) else {
            return Ok(None);
        };
        let Some(policy) = ctx.policy(&ns_of(self)?, name).await? else {
            return Ok(None);
        };
        let soaking = policy.status.as_ref().is_some_and(|s| {
            s.rollouts.iter().any(|r| r.channel == self.spec.channel && r.phase == crate::core::rollout::phase::SOAKING)
        });
        Ok(soaking.then(|| policy.spec.canary.sample_interval.as_std().max(Duration::from_secs(1))))
    }

    /// The policy that governs this tenant (the built-in default when none is named).
    async fn policy(&self, ctx: &Context, ns: &str) -> Result<Option<RolloutPolicySpec>, Error> {
        let Some(name) = &self.spec.rollout_policy else {
            return Ok(Some(default_policy()));
        };
        Ok(ctx.policy(ns, name).await?.map(|p| p.spec.clone()))
    }

    /// The env (plain `env` over every key of the `envFrom` Secrets) and the revision built from it;
    /// or the condition that says why it cannot be built. Nothing reaches the host in that case.
    async fn desired_revision(
        &self,
        ctx: &Context,
        ns: &str,
        target: &crate::crd::Revision,
        adoption: Option<&AdoptionStatus>,
    ) -> Result<Result<DesiredRevision, Cond>, Error> {
        let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), ns);
        let mut env = BTreeMap::new();
        for from in &self.spec.container.env_from {
            let Some(secret) = secrets.get_opt(&from.secret_ref.name).await? else {
                if from.optional {
                    continue;
                }
                return Ok(Err(Cond::no(
                    ct::SECRETS_SYNCED,
                    "SecretNotFound",
                    format!("Secret {} (envFrom) does not exist", from.secret_ref.name),
                )));
            };
            for (k, v) in secret.data.unwrap_or_default() {
                let key = format!("{}{}", from.prefix.as_deref().unwrap_or(""), k);
                let Ok(value) = String::from_utf8(v.0) else {
                    return Ok(Err(Cond::no(
                        ct::SECRETS_SYNCED,
                        "InvalidSecretValue",
                        format!("key {k} of Secret {} is not UTF-8 text", from.secret_ref.name),
                    )));
                };
                env.insert(key, value);
            }
        }
        for e in &self.spec.container.env {
            env.insert(e.name.clone(), e.value.clone());
        }
        let rollout = match self.rollout(ctx, ns).await? {
            Ok(r) => r,
            Err(c) => return Ok(Err(c)),
        };
        let image = target.image.split('@').next().unwrap_or_default();
        // An adopted tenant runs with what was imported from its hand-run container.
        let imported = adoption.filter(|a| a.revision.is_some()).and_then(|a| a.imported.as_ref());
        let container = match imported {
            Some(imp) => adoption::merged_container(&self.spec.container, imp),
            None => self.spec.container.clone(),
        };
        let names = imported.map(|i| i.env_names.as_slice());
        let login = match self.registry_login(ctx, ns, image).await? {
            Ok(l) => l,
            Err(c) => return Ok(Err(c)),
        };
        let extras = revision::Extras { imported_env_names: names, registry_login: login.as_ref() };
        Ok(self.build_revision(ctx, &container, image, &target.digest, &env, extras, &rollout))
    }

    /// The login for `image`'s registry from `spec.container.imagePullSecret` (its entry for that
    /// host only), or why it cannot be had.
    async fn registry_login(
        &self,
        ctx: &Context,
        ns: &str,
        image: &str,
    ) -> Result<Result<Option<revision::RegistryLogin>, Cond>, Error> {
        let Some(r) = &self.spec.container.image_pull_secret else { return Ok(Ok(None)) };
        let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), ns);
        let Some(secret) = secrets.get_opt(&r.name).await? else {
            return Ok(Err(Cond::no(
                ct::SECRETS_SYNCED,
                "SecretNotFound",
                format!("Secret {} (imagePullSecret) does not exist", r.name),
            )));
        };
        let host = revision::registry_host(image);
        let doc = secret.data.unwrap_or_default().remove(".dockerconfigjson").map(|b| b.0).unwrap_or_default();
        match crate::registry::credentials_for(&doc, &host) {
            Ok(Some(c)) => Ok(Ok(Some(revision::RegistryLogin { host, username: c.username, password: c.password }))),
            Ok(None) => Ok(Err(Cond::no(
                ct::SECRETS_SYNCED,
                "NoRegistryLogin",
                format!("Secret {} has no login for {host}, the image's registry", r.name),
            ))),
            Err(e) => Ok(Err(Cond::no(
                ct::SECRETS_SYNCED,
                "InvalidPullSecret",
                format!("Secret {} (imagePullSecret): {e}", r.name),
            ))),
        }
    }

    /// How a revision reaches the host, from the tenant's policy (or why it cannot be known).
    async fn rollout(&self, ctx: &Context, ns: &str) -> Result<Result<Rollout, Cond>, Error> {
        let Some(policy) = self.policy(ctx, ns).await? else {
            return Ok(Err(Cond::no(
                ct::SECRETS_SYNCED,
                "PolicyNotFound",
                format!("RolloutPolicy {} does not exist", self.spec.rollout_policy.as_deref().unwrap_or_default()),
            )));
        };
        Ok(Ok(Rollout {
            strategy: policy.strategy,
            health_timeout_secs: policy.health_check.timeout.as_std().as_secs().max(1),
            health_path: policy.health_check.path.clone().unwrap_or_else(|| self.spec.container.health_path.clone()),
            keep_warm_secs: u64::try_from(policy.keep_previous_slot_seconds).unwrap_or(0),
            smoke_checks: policy.smoke_checks.clone(),
        }))
    }

    /// The adopted host's first revision: the digest and run options the hand-run container has, its
    /// env taken over as the host stores it (none of the spec's own env: the container keeps running
    /// untouched, so the revision describes exactly what runs), or why it cannot be built.
    async fn adoption_revision(
        &self,
        ctx: &Context,
        ns: &str,
        imported: &ImportedContainer,
    ) -> Result<Result<DesiredRevision, (&'static str, String)>, Error> {
        if let Some(problem) = adoption::problem(imported, &self.spec.container) {
            return Ok(Err(problem));
        }
        let rollout = match self.rollout(ctx, ns).await? {
            Ok(r) => r,
            Err(c) => return Ok(Err((c.reason, c.message))),
        };
        let container = adoption::merged_container(&self.spec.container, imported);
        let env = BTreeMap::new();
        let login = match self.registry_login(ctx, ns, &imported.image).await? {
            Ok(l) => l,
            Err(c) => return Ok(Err((c.reason, c.message))),
        };
        let extras = revision::Extras { imported_env_names: Some(&imported.env_names), registry_login: login.as_ref() };
        Ok(self
            .build_revision(ctx, &container, &imported.image, &imported.digest, &env, extras, &rollout)
            .map_err(|c| (c.reason, c.message)))
    }

    #[allow(clippy::too_many_arguments)]
    fn build_revision(
        &self,
        ctx: &Context,
        container: &crate::crd::ContainerSpec,
        image: &str,
        digest: &str,
        env: &BTreeMap<String, String>,
        extras: revision::Extras<'_>,
        rollout: &Rollout,
    ) -> Result<DesiredRevision, Cond> {
        match revision::build_with_import(&ctx.settings.env_hmac_key, container, image, digest, env, extras, rollout) {
            Ok(rev) => Ok(rev),
            Err(e @ revision::RevisionError::InvalidEnvName(_)) => {
                Err(Cond::no(ct::SECRETS_SYNCED, "InvalidSecretKey", e.to_string()))
            }
            Err(e @ revision::RevisionError::InvalidEnvValue(_)) => {
                Err(Cond::no(ct::SECRETS_SYNCED, "InvalidEnvValue", e.to_string()))
            }
            Err(e @ revision::RevisionError::TooLarge(_)) => {
                Err(Cond::no(ct::SECRETS_SYNCED, "EnvTooLarge", e.to_string()))
            }
            Err(e @ revision::RevisionError::SmokeBearerMissing(..)) => {
                Err(Cond::no(ct::SECRETS_SYNCED, "SmokeBearerMissing", e.to_string()))
            }
            Err(e @ revision::RevisionError::InvalidSmokeCheck(_)) => {
                Err(Cond::no(ct::SECRETS_SYNCED, "InvalidSmokeCheck", e.to_string()))
            }
            Err(e @ revision::RevisionError::InvalidDigest(_)) => {
                Err(Cond::no(ct::SECRETS_SYNCED, "InvalidDigest", e.to_string()))
            }
        }
    }

    /// Takes the result of an `inspect-legacy`, `adopt` or `unadopt` into `status.adoption`.
    fn finish_adoption(
        &self,
        ctx: &Context,
        status: &mut TenantStatus,
        f: &InFlightCommand,
        report: Option<&HostReport>,
        now: &Timestamp,
    ) {
        let ok = report.is_some_and(|r| r.status == "ok");
        let detail = report.map(|r| r.detail.clone()).filter(|d| !d.is_empty()).unwrap_or_else(|| "no-report".into());
        let retry = now.checked_add(ctx.settings.observe_interval).ok().map(|t| t.to_string());
        let a = status.adoption.get_or_insert_with(AdoptionStatus::default);
        match f.action.as_str() {
            "inspect-legacy" => {
                a.inspected_at = Some(now.to_string());
                match report.and_then(|r| r.legacy.clone()).filter(|_| ok) {
                    Some(imported) => {
                        a.imported = Some(imported);
                        a.failure = None;
                        a.retry_after = None;
                    }
                    None => {
                        a.imported = None;
                        a.failure = Some(format!("inspect-legacy: {detail}"));
                        a.retry_after = retry;
                    }
                }
            }
            "adopt" if ok => {
                a.revision = f.revision.clone();
                a.adopted_at = Some(now.to_string());
                a.released_at = None;
                a.imported_env_parameter =
                    Some(revision::imported_env_parameter(&ctx.settings.document.param_root, &self.spec.slug));
                a.failure = None;
                a.retry_after = None;
                info!(tenant = %self.name_any(), revision = f.revision.as_deref().unwrap_or_default(), "host adopted");
            }
            "adopt" => {
                // Inspect again before the next attempt: the container may have changed meanwhile.
                a.imported = None;
                a.failure = Some(format!("adopt: {detail}"));
                a.retry_after = retry;
                warn!(tenant = %self.name_any(), detail = %detail, "adoption failed");
            }
            "unadopt" if ok => {
                a.revision = None;
                a.released_at = Some(now.to_string());
                a.failure = None;
                info!(tenant = %self.name_any(), "host released to its cron auto-updater");
            }
            _ => {
                a.failure = Some(format!("{}: {detail}", f.action));
            }
        }
    }

    /// The `Adopted` condition, and `Ready`/`Reconciling`/`Stalled` in place of the others while a
    /// hand-run host is not (or no longer) the operator's.
    fn adoption_conditions(
        &self,
        status: &TenantStatus,
        problem: Option<(&'static str, String)>,
        conds: &mut Vec<Cond>,
    ) {
        let a = status.adoption.as_ref();
        let obs = status.observed.as_ref();
        let hand_run = obs.is_some_and(adoption::hand_run);
        let cron = obs.and_then(|o| o.cron.clone()).unwrap_or_else(|| "unknown".into());
        let mut set = |adopted: Option<Cond>, over: Option<[Cond; 3]>| {
            if let Some(over) = over {
                conds.retain(|c| ![ct::READY, ct::RECONCILING, ct::STALLED].contains(&c.type_));
                conds.extend(over);
            }
            conds.extend(adopted);
        };
        if self.spec.adoption == AdoptionMode::Release {
            let (reason, adopted_msg, reconciling) = if adoption::adopted(a) {
                ("Releasing", "handing the host back to its cron auto-updater", true)
            } else {
                ("Released", "spec.adoption is Release: the host is left to its cron auto-updater", false)
            };
            let mut rec = if reconciling { Cond::yes } else { Cond::no }(ct::RECONCILING, reason, adopted_msg);
            rec.message = adopted_msg.into();
            set(
                Some(Cond::no(ct::ADOPTED, reason, format!("{adopted_msg}; cron {cron}"))),
                Some([Cond::no(ct::READY, reason, adopted_msg), rec, Cond::no(ct::STALLED, reason, "not stalled")]),
            );
            return;
        }
        if adoption::adopted(a) {
            let imp = a.and_then(|a| a.imported.as_ref());
            let msg = format!(
                "adopted {} (image {}); the cron auto-updater is {cron}",
                imp.map(|i| i.container.as_str()).unwrap_or("the hand-run container"),
                imp.map(|i| short_digest(&i.digest)).unwrap_or_default()
            );
            set(Some(Cond::yes(ct::ADOPTED, "Adopted", msg)), None);
            return;
        }
        if !hand_run {
            return;
        }
        let preview = "status.adoption.imported shows what would be imported";
        match self.spec.adoption {
            AdoptionMode::Disabled => {
                let msg = format!(
                    "the host runs a hand-run container and the cron auto-updater ({cron}); set spec.adoption to Adopt to take it over ({preview})"
                );
                set(
                    Some(Cond::no(ct::ADOPTED, "NotAdopted", msg.clone())),
                    Some([
                        Cond::no(ct::READY, "NotAdopted", msg.clone()),
                        Cond::no(
                            ct::RECONCILING,
                            "NotAdopted",
                            "nothing is sent to a hand-run host that is not adopted",
                        ),
                        Cond::yes(ct::STALLED, "NotAdopted", msg),
                    ]),
                );
            }
            _ => {
                let blocked = problem.or_else(|| {
                    a.and_then(|a| a.imported.as_ref()).and_then(|i| adoption::problem(i, &self.spec.container))
                });
                if let Some((reason, msg)) = blocked {
                    set(
                        Some(Cond::no(ct::ADOPTED, reason, msg.clone())),
                        Some([
                            Cond::no(ct::READY, reason, msg.clone()),
                            Cond::no(ct::RECONCILING, reason, "waiting for the host or the spec to change"),
                            Cond::yes(ct::STALLED, reason, msg),
                        ]),
                    );
                    return;
                }
                let (reason, msg) = match a.and_then(|a| a.failure.clone()) {
                    Some(f) => ("AdoptionFailed", format!("the last attempt failed ({f}); trying again")),
                    None => ("Adopting", "taking the hand-run container over; it keeps serving".to_string()),
                };
                set(
                    Some(Cond::no(ct::ADOPTED, reason, msg.clone())),
                    Some([
                        Cond::no(ct::READY, reason, msg.clone()),
                        Cond::yes(ct::RECONCILING, reason, msg),
                        Cond::no(ct::STALLED, reason, "not stalled"),
                    ]),
                );
            }
        }
    }

    /// Conditions from the current status (after a poll or a send).
    fn conditions(
        &self,
        status: &TenantStatus,
        reachable: Option<Cond>,
        secrets: Cond,
        desired: Option<&DesiredRevision>,
    ) -> Vec<Cond> {
        let secrets_ok = secrets.status;
        let secrets_msg = secrets.message.clone();
        let secrets_reason = secrets.reason;
        let mut out: Vec<Cond> = reachable.into_iter().collect();
        out.push(secrets);
        let obs = status.observed.as_ref();
        let serving = obs.and_then(plan::serving);
        // The last apply, and how it ended (a result this version does not know counts as failed).
        let last = status.history.first().filter(|h| h.action == "apply");
        let result_of = |h: &ApplyRecord| CommandResult::parse(&h.result).unwrap_or(CommandResult::Failed);
        let failed = last.filter(|h| result_of(h).is_failure());
        let not_delivered = last.filter(|h| result_of(h) == CommandResult::NotDelivered);
        let runs = |d: &DesiredRevision, t: &crate::crd::Revision| {
            obs.is_some_and(|o| {
                plan::runs_desired(o, &Desired { id: &d.id, digest: &t.digest, env_revision: &d.env_revision })
            })
        };
        match (obs, &status.target) {
            (None, _) => {
                out.push(Cond::no(ct::READY, "Observing", "waiting for the host's first report"));
                out.push(Cond::yes(ct::RECONCILING, "Observing", "asking the host what it runs"));
                out.push(Cond::no(ct::STALLED, "Observing", "not stalled"));
            }
            (Some(_), Some(_)) if !secrets_ok => {
                out.push(Cond::no(ct::READY, secrets_reason, secrets_msg.clone()));
                out.push(Cond::no(ct::RECONCILING, secrets_reason, "waiting for the Secrets to be fixed"));
                out.push(Cond::yes(ct::STALLED, secrets_reason, secrets_msg));
            }
            (Some(_), Some(target)) => match desired {
                Some(d) if runs(d, target) => {
                    out.push(Cond::yes(
                        ct::READY,
                        "Converged",
                        format!("the host runs {} and is healthy", target.image),
                    ));
                    out.push(Cond::no(ct::RECONCILING, "Converged", "nothing to do"));
                    out.push(Cond::no(ct::STALLED, "Converged", "not stalled"));
                    out.push(Cond::yes(ct::IMAGE_UP_TO_DATE, "Converged", "the serving slot runs the target revision"));
                }
                Some(d) if failed.is_some_and(|f| f.revision == d.id) && status.in_flight.is_none() => {
                    let f = failed.map(|f| (result_of(f), f.message.clone().unwrap_or_default()));
                    let (result, why) = f.unwrap_or((CommandResult::Failed, String::new()));
                    let reason = result.reason();
                    let message = format!("revision {} failed on the host ({}): {why}", d.id, result.as_str());
                    out.push(Cond::no(ct::READY, reason, message.clone()));
                    out.push(Cond::no(ct::RECONCILING, reason, "not retried until the revision changes"));
                    out.push(Cond::yes(ct::STALLED, reason, message.clone()));
                    out.push(Cond::no(ct::IMAGE_UP_TO_DATE, reason, message));
                }
                Some(d) if not_delivered.is_some_and(|f| f.revision == d.id) && status.in_flight.is_none() => {
                    let reason = CommandResult::NotDelivered.reason();
                    let message = format!("the command for revision {} never reached the host; it is sent again", d.id);
                    out.push(Cond::no(ct::READY, reason, message.clone()));
                    out.push(Cond::yes(ct::RECONCILING, reason, message));
                    out.push(Cond::no(ct::STALLED, reason, "not stalled: nothing changed on the host"));
                    out.push(Cond::no(
                        ct::IMAGE_UP_TO_DATE,
                        reason,
                        "the serving slot does not run the target revision",
                    ));
                }
                _ => {
                    out.push(Cond::no(ct::READY, "Progressing", format!("moving the host to {}", target.image)));
                    out.push(Cond::yes(ct::RECONCILING, "Progressing", "moving the host to the target revision"));
                    out.push(Cond::no(ct::STALLED, "Progressing", "not stalled"));
                    out.push(Cond::no(
                        ct::IMAGE_UP_TO_DATE,
                        "Progressing",
                        "the serving slot does not run the target revision",
                    ));
                }
            },
            (Some(_), None) => {
                let healthy = serving.is_some_and(|(_, s)| s.running && s.health.as_deref() == Some("healthy"));
                if healthy {
                    out.push(Cond::yes(ct::READY, "Serving", "no target admitted yet; the serving slot is healthy"));
                } else {
                    out.push(Cond::no(ct::READY, "NotServing", "no target admitted yet and nothing healthy serves"));
                }
                out.push(Cond::no(ct::RECONCILING, "NoTarget", "waiting for the coordinator to admit a revision"));
                out.push(Cond::no(ct::STALLED, "NoTarget", "not stalled"));
            }
        }
        out
    }

    /// Writes status by server-side apply (one field manager) and records an event for each
    /// condition whose status or reason changed.
    /// `Ready=False Forbidden` (and `Stalled=True`): a request was refused by the API server's RBAC;
    /// the message is the server's (who, which verb, which resource).
    async fn report_forbidden(&self, ctx: &Context, err: &Error) -> Result<(), Error> {
        let message = format!("the operator's RBAC refused a request: {err}");
        let conds = [
            Cond::no(ct::READY, "Forbidden", message.clone()),
            Cond::yes(ct::STALLED, "Forbidden", message),
            Cond::no(ct::RECONCILING, "Forbidden", "waiting for the operator's RBAC to allow the request"),
        ];
        self.write_status(ctx, self.status_or_default(), &conds, self.metadata.generation, &Timestamp::now()).await
    }

    async fn write_status(
        &self,
        ctx: &Context,
        mut status: TenantStatus,
        conds: &[Cond],
        generation: Option<i64>,
        now: &Timestamp,
    ) -> Result<(), Error> {
        let before = self.status.as_ref().map(|s| s.conditions.clone()).unwrap_or_default();
        status.conditions = conditions::merge(&status.conditions, conds, generation, &Time(*now));
        status.observed_generation = generation;
        let changes: Vec<(String, String, String)> = conditions::changed(&before, &status.conditions)
            .into_iter()
            .filter(|(type_, st, _)| {
                let was = conditions::find(&before, type_).map(|c| c.status.as_str());
                crate::core::tenant::worth_an_event(type_, was, st)
            })
            .collect();
        let ns = self.namespace().ok_or(Error::MissingField("metadata.namespace"))?;
        let api: Api<Tenant> = Api::namespaced(ctx.client.clone(), &ns);
        let mut body = serde_json::to_value(&status)?;
        // The coordinator owns `target` under its own field manager.
        if let Some(obj) = body.as_object_mut() {
            obj.remove("target");
        }
        let patch = json!({"apiVersion": "fleet.molecule.ai/v1alpha1", "kind": "Tenant", "status": body});
        let written =
            api.patch_status(&self.name_any(), &PatchParams::apply(MANAGER).force(), &Patch::Apply(&patch)).await?;
        ctx.wrote(&ns, &self.name_any(), written.resource_version());
        if !changes.is_empty() {
            self.record_changes(ctx, &status, &changes).await;
        }
        Ok(())
    }

    async fn record_changes(&self, ctx: &Context, status: &TenantStatus, changes: &[(String, String, String)]) {
        let recorder = Recorder::new(ctx.client.clone(), ctx.reporter.clone());
        for (type_, st, reason) in changes {
            let message = conditions::find(&status.conditions, type_).map(|c| c.message.clone()).unwrap_or_default();
            let warning = (type_ == ct::STALLED && st == "True") || (type_ == ct::INSTANCE_REACHABLE && st == "False");
            let ev = KubeEvent {
                type_: if warning { EventType::Warning } else { EventType::Normal },
                reason: reason.clone(),
                note: Some(format!("{type_}={st}: {message}")),
                action: "Reconcile".into(),
                secondary: None,
            };
            if let Err(e) = recorder.publish(&ev, &self.object_ref(&())).await {
                warn!(error = %e, "could not record event");
            }
        }
    }

    /// Deletion: remove the tenant's parameters; the host keeps running.
    async fn cleanup(&self, ctx: &Context) -> Result<Action, Error> {
        let prefix = parameter_prefix(&ctx.settings.document.param_root, &self.spec.slug);
        let scope = self.scope();
        // The env an adoption took over from a hand-run container exists nowhere else the operator
        // could rebuild it from: it stays (the host wrote it; only its own role and the operator's
        // prefix rights reach it).
        let imported = revision::imported_env_parameter(&ctx.settings.document.param_root, &self.spec.slug);
        let names: Vec<String> =
            ctx.aws.list_parameters(&scope, &prefix).await?.into_iter().filter(|n| *n != imported).collect();
        if !names.is_empty() {
            ctx.aws.delete_parameters(&scope, &names).await?;
        }
        info!(tenant = %self.name_any(), removed = names.len(), "tenant deleted: parameters removed, host left running");
        ctx.wrote(&ns_of(self)?, &self.name_any(), None);
        Ok(Action::await_change())
    }
}

fn ns_of(t: &Tenant) -> Result<String, Error> {
    t.namespace().ok_or(Error::MissingField("metadata.namespace"))
}

/// A command not delivered after this long makes the operator ask whether the agent is online.
const UNDELIVERED_PING_AFTER_SECS: i64 = 20;

/// The base the tenant's revision parameter holds as far as the operator knows: that of the
/// newest apply or adopt it sent or meant to send (in flight, else in history; an intent never sent
/// is recorded in history when it is given up, so it counts too). Pure.
pub fn last_sent_base(status: &TenantStatus) -> Option<&str> {
    let carries = |action: &str| matches!(action, "apply" | "adopt");
    let in_flight = status.in_flight.iter().filter(|f| carries(&f.action)).filter_map(|f| f.revision.as_deref());
    let history = status.history.iter().filter(|h| carries(&h.action)).map(|h| h.revision.as_str());
    in_flight.chain(history).next().map(revision::base_of)
}

/// The revision whose last apply failed, if the newest apply failed after the target was admitted
/// (the coordinator admitting the same revision again, a retry, asks for one more attempt).
pub fn failed_revision(status: &TenantStatus) -> Option<&str> {
    let admitted =
        status.target.as_ref().and_then(|t| t.admitted_at.as_deref()).and_then(|a| a.parse::<Timestamp>().ok());
    status
        .history
        .first()
        .filter(|h| h.action == "apply" && CommandResult::parse(&h.result).is_none_or(CommandResult::is_failure))
        .filter(|h| match (admitted, h.started_at.parse::<Timestamp>()) {
            (Some(a), Ok(started)) => started >= a,
            _ => true,
        })
        .map(|h| h.revision.as_str())
}

/// The policy used when a tenant names none: in place, one at a time, default health check.
pub fn default_policy() -> RolloutPolicySpec {
    serde_json::from_value(json!({})).unwrap_or_else(|_| RolloutPolicySpec {
        strategy: Default::default(),
        keep_previous_slot_seconds: 600,
        max_concurrency: k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(1),
        stagger: crate::crd::Duration::from_secs(30),
        first_placement: Default::default(),
        canary: Default::default(),
        health_check: Default::default(),
        smoke_checks: Vec::new(),
        max_errors: 0,
        notifications: Vec::new(),
    })
}

/// A per-tenant stable jitter of up to a fifth of the interval, so observes spread out.
fn jittered(interval: Duration, key: &str) -> Duration {
    let h = key.bytes().fold(0u64, |a, b| a.wrapping_mul(31).wrapping_add(u64::from(b)));
    let fifth = interval.as_millis() as u64 / 5;
    if fifth == 0 { interval } else { interval + Duration::from_millis(h % fifth) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::ApplyRecord;

    fn rec(rev: &str, result: &str) -> ApplyRecord {
        ApplyRecord {
            revision: rev.into(),
            digest: None,
            action: "apply".into(),
            result: result.into(),
            message: None,
            command_id: None,
            started_at: "2026-01-01T00:00:00Z".into(),
            finished_at: None,
        }
    }

    #[test]
    fn the_parameter_is_written_when_the_newest_revision_sent_had_another_base() {
        let base = |c: char| c.to_string().repeat(32);
        let id = |b: char, d: char| format!("{}{}", base(b), d.to_string().repeat(32));
        let mut status = TenantStatus::default();
        assert_eq!(last_sent_base(&status), None, "nothing sent: write it");
        let observe = ApplyRecord { action: "observe".into(), ..rec(&id('9', '9'), "Succeeded") };
        status.history = vec![observe, rec(&id('a', '1'), "Succeeded"), rec(&id('b', '1'), "Succeeded")];
        assert_eq!(last_sent_base(&status), Some(base('a').as_str()), "the newest apply, not an observe");
        status.in_flight = Some(crate::crd::InFlightCommand {
            intent_token: "t".into(),
            command_id: None,
            action: "adopt".into(),
            revision: Some(id('c', '2')),
            digest: None,
            started_at: "2026-01-01T00:00:00Z".into(),
        });
        assert_eq!(last_sent_base(&status), Some(base('c').as_str()), "what is in flight comes first");
    }
}
