//! The Tenant controller: finds the org's instance, asks the host what it runs, and writes what it
//! observed back as status and conditions. It carries out `status.target`; it never decides it.

use super::{Context, Error, FINALIZER, MANAGER};
use crate::aws::{AwsScope, InstanceQuery, Invocation, InvocationStatus, Ping, SendCommand};
use crate::core::conditions::{self, Cond};
use crate::core::report::{HostReport, short_digest};
use crate::core::tenant::{self as plan, Next, PlanInput};
use crate::crd::{InFlightCommand, Tenant, TenantStatus, condition as ct};
use crate::host::document;
use futures::StreamExt;
use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Api, ListParams, Patch, PatchParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::{Event as KubeEvent, EventType, Recorder};
use kube::runtime::finalizer::{Event as Finalizer, finalizer};
use kube::runtime::watcher;
use kube::{Resource, ResourceExt};
use rand::Rng;
use serde_json::json;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use tracing::{info, warn};

/// Runs the Tenant controller until `shutdown` resolves.
pub async fn run(ctx: Arc<Context>, shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static) {
    let tenants = Api::<Tenant>::all(ctx.client.clone());
    Controller::new(tenants, watcher::Config::default().any_semantic())
        .graceful_shutdown_on(shutdown)
        .run(reconcile, error_policy, ctx)
        .for_each(|res| async move {
            if let Err(e) = res {
                warn!(error = %e, "tenant reconcile failed");
            }
        })
        .await;
}

async fn reconcile(tenant: Arc<Tenant>, ctx: Arc<Context>) -> Result<Action, Error> {
    let ns = tenant.namespace().ok_or(Error::MissingField("metadata.namespace"))?;
    let api: Api<Tenant> = Api::namespaced(ctx.client.clone(), &ns);
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
    res
}

fn error_policy(_tenant: Arc<Tenant>, err: &Error, _ctx: Arc<Context>) -> Action {
    let base = if err.is_throttled() { 20 } else { 5 };
    Action::requeue(Duration::from_secs(base + rand::rng().random_range(0..base)))
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
        AwsScope { region: self.spec.instance.region.clone(), assume_role_arn: self.spec.instance.assume_role_arn.clone() }
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
                let mut tags = tags.clone();
                tags.insert(s.org_tag.clone(), self.spec.slug.clone());
                InstanceQuery { ids: vec![], tags }
            }
            (None, None) => {
                return Ok(Found::Problem("InvalidSpec", "exactly one of instance.id or instance.tags must be set".into()));
            }
        };
        let found = ctx.aws.describe_instances(&scope, &query).await?;
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

    /// Another Tenant that claims the same instance and came first (oldest wins, then name).
    async fn rival_claim(&self, ctx: &Context, instance: &str) -> Result<Option<String>, Error> {
        let all: Api<Tenant> = Api::all(ctx.client.clone());
        let me = (self.metadata.creation_timestamp.clone(), self.namespace(), self.name_any());
        for other in all.list(&ListParams::default()).await? {
            if other.uid() == self.uid() {
                continue;
            }
            let claims = other.spec.instance.id.as_deref() == Some(instance)
                || other.status.as_ref().and_then(|s| s.instance_id.as_deref()) == Some(instance)
                || (other.spec.slug == self.spec.slug && other.spec.instance.region == self.spec.instance.region);
            if !claims {
                continue;
            }
            let them = (other.metadata.creation_timestamp.clone(), other.namespace(), other.name_any());
            if them < me {
                return Ok(Some(format!("{}/{}", them.1.unwrap_or_default(), them.2)));
            }
        }
        Ok(None)
    }

    async fn reconcile(&self, ctx: &Context) -> Result<Action, Error> {
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
        if let Some(rival) = self.rival_claim(ctx, &instance).await? {
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

        let scope = self.scope();
        let ping = ctx.aws.ping(&scope, std::slice::from_ref(&instance)).await?;
        if ping.get(&instance) != Some(&Ping::Online) {
            // Unreachable is not failed: nothing is sent, no budget is spent, we look again soon.
            let conds = [
                Cond::no(ct::INSTANCE_REACHABLE, "AgentOffline", format!("the SSM agent of {instance} is not online")),
                Cond::no(ct::READY, "InstanceUnreachable", "the host cannot be reached through SSM"),
                Cond::yes(ct::RECONCILING, "WaitingForAgent", "waiting for the SSM agent to come back"),
                Cond::no(ct::STALLED, "WaitingForAgent", "not stalled: the agent may come back"),
            ];
            self.write_status(ctx, status, &conds, generation, &now).await?;
            return Ok(Action::requeue(Duration::from_secs(15)));
        }
        let reachable = Cond::yes(ct::INSTANCE_REACHABLE, "AgentOnline", format!("the SSM agent of {instance} is online"));

        let interval = jittered(ctx.settings.observe_interval, &self.uid().unwrap_or_default());
        let next = plan::next(&PlanInput {
            now,
            in_flight: status.in_flight.as_ref(),
            observation: status.observed.as_ref(),
            observe_interval: interval,
            target: status.target.as_ref(),
        });
        let requeue = match next {
            Next::Poll => self.poll(ctx, &scope, &instance, &mut status, &now).await?,
            Next::Observe => {
                self.send(ctx, &scope, &instance, &mut status, "observe", None, &now, generation).await?;
                ctx.settings.poll_interval
            }
            Next::Wait(d) => d,
        };
        let conds = self.conditions(&status, reachable);
        self.write_status(ctx, status, &conds, generation, &now).await?;
        Ok(Action::requeue(requeue))
    }

    /// Writes the intent, then sends the command (the token travels in the comment).
    #[allow(clippy::too_many_arguments)]
    async fn send(
        &self,
        ctx: &Context,
        scope: &AwsScope,
        instance: &str,
        status: &mut TenantStatus,
        action: &str,
        revision: Option<String>,
        now: &Timestamp,
        generation: Option<i64>,
    ) -> Result<(), Error> {
        let version = ctx.document_version(scope).await?;
        let token = uuid::Uuid::new_v4().simple().to_string();
        let intent = InFlightCommand {
            intent_token: token.clone(),
            command_id: None,
            action: action.to_string(),
            revision: revision.clone(),
            started_at: now.to_string(),
        };
        status.in_flight = Some(intent.clone());
        // The intent is durable before anything reaches the host.
        let conds = self.conditions(status, Cond::yes(ct::INSTANCE_REACHABLE, "AgentOnline", "online"));
        self.write_status(ctx, status.clone(), &conds, generation, now).await?;
        let id = self.send_intent(ctx, scope, instance, &intent, &version).await?;
        ctx.metrics.command(action, "sent");
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
        version: &str,
    ) -> Result<String, Error> {
        let mut parameters = BTreeMap::new();
        parameters.insert("action".to_string(), intent.action.clone());
        parameters.insert("revision".to_string(), intent.revision.clone().unwrap_or_default());
        let cmd = SendCommand {
            document: document::DOCUMENT_NAME.to_string(),
            document_version: version.to_string(),
            instances: vec![instance.to_string()],
            parameters,
            comment: format!("tenant-operator intent={}", intent.intent_token),
            timeout_seconds: 600,
        };
        Ok(ctx.aws.send_command(scope, &cmd).await?)
    }

    /// Follows the command in flight; finds it by its token after a restart instead of resending.
    async fn poll(
        &self,
        ctx: &Context,
        scope: &AwsScope,
        instance: &str,
        status: &mut TenantStatus,
        now: &Timestamp,
    ) -> Result<Duration, Error> {
        let Some(mut f) = status.in_flight.clone() else { return Ok(Duration::ZERO) };
        if f.command_id.is_none() {
            match ctx.aws.find_command(scope, instance, &f.intent_token).await? {
                Some(id) => {
                    info!(tenant = %self.name_any(), command = %id, "found the in-flight command by its intent token");
                    ctx.metrics.command(&f.action, "adopted");
                    f.command_id = Some(id);
                }
                None => {
                    // The operator stopped between writing the intent and sending: send it now, once.
                    let version = ctx.document_version(scope).await?;
                    let id = self.send_intent(ctx, scope, instance, &f, &version).await?;
                    ctx.metrics.command(&f.action, "sent");
                    f.command_id = Some(id);
                }
            }
            status.in_flight = Some(f);
            return Ok(ctx.settings.poll_interval);
        }
        let id = f.command_id.clone().unwrap_or_default();
        let Some(inv) = ctx.aws.invocation(scope, &id, instance).await? else {
            return Ok(ctx.settings.poll_interval);
        };
        if !inv.status.is_final() {
            status.in_flight = Some(f);
            return Ok(ctx.settings.poll_interval);
        }
        self.finish(ctx, status, &f, &inv, now);
        Ok(Duration::from_millis(100))
    }

    /// Takes a finished command's report into status.
    fn finish(&self, ctx: &Context, status: &mut TenantStatus, f: &InFlightCommand, inv: &Invocation, now: &Timestamp) {
        status.in_flight = None;
        let outcome = match inv.status {
            InvocationStatus::Success => "succeeded",
            InvocationStatus::Failed => "failed",
            InvocationStatus::TimedOut | InvocationStatus::DeliveryTimedOut => "timed_out",
            _ => "undeliverable",
        };
        ctx.metrics.command(&f.action, outcome);
        match HostReport::parse(&inv.stdout) {
            Ok(report) => {
                let obs = report.to_observation(now.to_string());
                status.running = plan::serving(&obs).and_then(|(_, s)| s.digest.as_deref()).map(short_digest);
                status.observed = Some(obs);
            }
            Err(e) => {
                warn!(tenant = %self.name_any(), error = %e, status = ?inv.status, "host report unreadable");
            }
        }
    }

    /// Conditions from the current status (after a poll or a send).
    fn conditions(&self, status: &TenantStatus, reachable: Cond) -> Vec<Cond> {
        let mut out = vec![reachable];
        let obs = status.observed.as_ref();
        let serving = obs.and_then(plan::serving);
        match (obs, serving, &status.target) {
            (None, _, _) => {
                out.push(Cond::no(ct::READY, "Observing", "waiting for the host's first report"));
                out.push(Cond::yes(ct::RECONCILING, "Observing", "asking the host what it runs"));
            }
            (Some(o), _, Some(target)) if plan::runs_target(o, target) => {
                out.push(Cond::yes(ct::READY, "Converged", format!("the host runs {} and is healthy", target.image)));
                out.push(Cond::no(ct::RECONCILING, "Converged", "nothing to do"));
                out.push(Cond::yes(ct::IMAGE_UP_TO_DATE, "Converged", "the serving slot runs the target digest"));
            }
            (Some(_), _, Some(target)) => {
                out.push(Cond::no(ct::READY, "Progressing", format!("the host does not run {} yet", target.image)));
                out.push(Cond::yes(ct::RECONCILING, "Progressing", "moving the host to the target revision"));
                out.push(Cond::no(ct::IMAGE_UP_TO_DATE, "Progressing", "the serving slot does not run the target digest"));
            }
            (Some(_), Some((slot, s)), None) if s.running && s.health.as_deref() == Some("healthy") => {
                out.push(Cond::yes(
                    ct::READY,
                    "Serving",
                    format!("no target admitted yet; the {} slot serves healthy", slot.as_str()),
                ));
                out.push(Cond::no(ct::RECONCILING, "NoTarget", "no target admitted yet"));
            }
            (Some(_), _, None) => {
                out.push(Cond::no(ct::READY, "NotServing", "no target admitted yet and nothing healthy serves"));
                out.push(Cond::no(ct::RECONCILING, "NoTarget", "no target admitted yet"));
            }
        }
        out.push(Cond::no(ct::STALLED, "Progressing", "not stalled"));
        out
    }

    /// Writes status by server-side apply (one field manager) and records an event for each
    /// condition whose status or reason changed.
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
        let changes = conditions::changed(&before, &status.conditions);
        let ns = self.namespace().ok_or(Error::MissingField("metadata.namespace"))?;
        let api: Api<Tenant> = Api::namespaced(ctx.client.clone(), &ns);
        let mut body = serde_json::to_value(&status)?;
        // The coordinator owns `target` under its own field manager.
        if let Some(obj) = body.as_object_mut() {
            obj.remove("target");
        }
        let patch = json!({"apiVersion": "fleet.molecule.ai/v1alpha1", "kind": "Tenant", "status": body});
        api.patch_status(&self.name_any(), &PatchParams::apply(MANAGER).force(), &Patch::Apply(&patch)).await?;
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
        let names = ctx.aws.list_parameters(&scope, &prefix).await?;
        if !names.is_empty() {
            ctx.aws.delete_parameters(&scope, &names).await?;
        }
        info!(tenant = %self.name_any(), removed = names.len(), "tenant deleted: parameters removed, host left running");
        Ok(Action::await_change())
    }
}

/// A per-tenant stable jitter of up to a fifth of the interval, so observes spread out.
fn jittered(interval: Duration, key: &str) -> Duration {
    let h = key.bytes().fold(0u64, |a, b| a.wrapping_mul(31).wrapping_add(u64::from(b)));
    let fifth = interval.as_millis() as u64 / 5;
    if fifth == 0 { interval } else { interval + Duration::from_millis(h % fifth) }
}
