//! The minimal rollout coordinator: the one component that writes `Tenant.status.target`.
//!
//! Until the rollout engine lands it admits the channel's digest (or the tenant's pin) at once.
//! It writes with its own field manager and owns nothing but `status.target`.

use super::{COORDINATOR_MANAGER, Context, Error};
use crate::core::conditions;
use crate::crd::{ImageChannel, Revision, Tenant};
use futures::StreamExt;
use jiff::Timestamp;
use kube::ResourceExt;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use serde_json::json;
use std::sync::Arc;
use std::time::Duration;
use tracing::warn;

/// What the tenant is admitted to, from its pin or its channel. Pure.
pub fn admit(tenant: &Tenant, channel: Option<&ImageChannel>, now: &Timestamp) -> Option<Revision> {
    let channel = channel?;
    let (digest, source) = match &tenant.spec.pinned_digest {
        Some(pin) => (pin.clone(), "pin"),
        None => {
            let st = channel.status.as_ref()?;
            // A channel that is not Ready (registry down) keeps its last good digest in status.
            let _ = conditions::find(&st.conditions, "Ready");
            (st.digest.clone()?, "channel")
        }
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

/// Runs the coordinator until `shutdown` resolves.
pub async fn run(ctx: Arc<Context>, shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static) {
    let tenants = Api::<Tenant>::all(ctx.client.clone());
    let channels = Api::<ImageChannel>::all(ctx.client.clone());
    let controller = Controller::new(tenants, watcher::Config::default().any_semantic());
    let store = controller.store();
    controller
        .watches(channels, watcher::Config::default().any_semantic(), move |ch: ImageChannel| {
            let ns = ch.namespace();
            let name = ch.name_any();
            store
                .state()
                .into_iter()
                .filter(|t| t.namespace() == ns && t.spec.channel == name)
                .map(|t| ObjectRef::from_obj(&*t))
                .collect::<Vec<_>>()
        })
        .graceful_shutdown_on(shutdown)
        .run(reconcile, |_, _, _| Action::requeue(Duration::from_secs(5)), ctx)
        .for_each(|res| async move {
            if let Err(e) = res {
                warn!(error = %e, "coordinator reconcile failed");
            }
        })
        .await;
}

async fn reconcile(tenant: Arc<Tenant>, ctx: Arc<Context>) -> Result<Action, Error> {
    let ns = tenant.namespace().ok_or(Error::MissingField("metadata.namespace"))?;
    let channels: Api<ImageChannel> = Api::namespaced(ctx.client.clone(), &ns);
    let channel = channels.get_opt(&tenant.spec.channel).await?;
    let target = admit(&tenant, channel.as_ref(), &Timestamp::now());
    let current = tenant.status.as_ref().and_then(|s| s.target.clone());
    if target != current && target.is_some() {
        let api: Api<Tenant> = Api::namespaced(ctx.client.clone(), &ns);
        let patch = json!({"apiVersion": "fleet.molecule.ai/v1alpha1", "kind": "Tenant", "status": {"target": target}});
        api.patch_status(&tenant.name_any(), &PatchParams::apply(COORDINATOR_MANAGER).force(), &Patch::Apply(&patch))
            .await?;
    }
    ctx.metrics.reconciled("coordinator", "ok");
    Ok(Action::await_change())
}
