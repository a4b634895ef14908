//! The operator runs with exactly the rights the chart grants: every other e2e test runs its
//! controllers with the token of the chart's ServiceAccount (a verb the chart forgot fails them);
//! here, what the chart does not grant is refused by the real API server, and a refusal while
//! reconciling is a condition on the tenant, not a crash loop.

use crate::apply::{channel_at, secret, tenant_json};
use crate::harness::{Bed, cond};
use k8s_openapi::api::core::v1::{Pod, Secret};
use k8s_openapi::api::rbac::v1::{ClusterRole, RoleBinding};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use serde_json::json;
use std::sync::Arc;
use std::time::Duration;
use tenant_operator::crd::Tenant;
use tenant_operator::metrics::Metrics;
use testbed::controlplane::RELEASE;
use testbed::demo::launch_managed;
use testbed::stack::HostState;

fn forbidden<T: std::fmt::Debug>(res: Result<T, kube::Error>) -> String {
    match res {
        Err(kube::Error::Api(s)) if s.code == 403 => s.message.clone(),
        other => panic!("expected 403 Forbidden, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_the_chart_does_not_grant_is_refused_to_the_operator() {
    let bed = Bed::start_without_controllers().await.unwrap();
    let op = bed.operator_client.clone();
    // Allowed by the chart: reading its kinds and Secrets.
    Api::<Tenant>::namespaced(op.clone(), &bed.ns).list(&ListParams::default()).await.unwrap();
    Api::<Secret>::namespaced(op.clone(), &bed.ns).list(&ListParams::default()).await.unwrap();
    // Not granted: creating or deleting fleet objects, writing Secrets, anything about pods, and a
    // Lease outside its own namespace.
    bed.create::<Tenant>(tenant_json("rbac", "i-0123456789abcdef0", json!({}))).await.unwrap();
    let msg = forbidden(Api::<Tenant>::namespaced(op.clone(), &bed.ns).delete("rbac", &DeleteParams::default()).await);
    assert!(msg.contains("system:serviceaccount:tenant-operator:tenant-operator"), "{msg}");
    let s: Secret = serde_json::from_value(json!({"metadata": {"name": "x"}, "stringData": {"a": "b"}})).unwrap();
    forbidden(Api::<Secret>::namespaced(op.clone(), &bed.ns).create(&PostParams::default(), &s).await);
    forbidden(Api::<Pod>::namespaced(op.clone(), &bed.ns).list(&ListParams::default()).await);
    let lease = json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": {"name": "x"}});
    let leases: Api<k8s_openapi::api::coordination::v1::Lease> = Api::namespaced(op.clone(), &bed.ns);
    forbidden(leases.create(&PostParams::default(), &serde_json::from_value(lease).unwrap()).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_the_rbac_refuses_is_a_tenant_condition_and_clears_once_granted() {
    let bed = Bed::start_without_controllers().await.unwrap();
    // `alice` gets the chart's ClusterRole without its Secrets rule, in this namespace only.
    let roles: Api<ClusterRole> = Api::all(bed.client.clone());
    let mut role = roles.get(RELEASE).await.unwrap();
    let rules = role.rules.clone().unwrap_or_default();
    let (secret_rules, others): (Vec<_>, Vec<_>) =
        rules.into_iter().partition(|r| r.resources.as_ref().is_some_and(|res| res.iter().any(|x| x == "secrets")));
    assert_eq!(secret_rules.len(), 1, "the chart grants Secrets in one rule");
    let name = format!("no-secrets-{}", bed.ns);
    role.metadata = serde_json::from_value(json!({"name": name})).unwrap();
    role.rules = Some(others);
    roles.create(&PostParams::default(), &role).await.unwrap();
    let bindings: Api<RoleBinding> = Api::namespaced(bed.client.clone(), &bed.ns);
    let binding = |role: &str, binding: &str| {
        serde_json::from_value::<RoleBinding>(json!({
            "metadata": {"name": binding},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role},
            "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": "alice"}]
        }))
        .unwrap()
    };
    bindings.create(&PostParams::default(), &binding(&name, "alice")).await.unwrap();
    let alice = bed.cp.client_for("alice").await.unwrap();

    let digest = bed.stack.push_image("platform-tenant", "rbac", &[("sim.health", "healthy")], false).await.unwrap();
    channel_at(&bed, "rbac", &digest).await;
    secret(&bed, "acme-env", &[("TOKEN", "rbac-secret-value")]).await;
    let id = launch_managed(&bed.stack, "acme", &[], HostState::Fresh).await.unwrap();
    bed.create::<Tenant>(tenant_json(
        "acme",
        &id,
        json!({"channel": "rbac", "container": {"envFrom": [{"secretRef": {"name": "acme-env"}}]}}),
    ))
    .await
    .unwrap();

    // The operator as alice.
    let aws = testbed::demo::sdk_for(&bed.stack).await;
    let metrics = Arc::new(Metrics::default());
    let settings = bed.settings();
    let ctx = Arc::new(tenant_operator::controller::Context::new(alice, Arc::new(aws), settings, metrics.clone()));
    let (stop, rx) = tokio::sync::watch::channel(false);
    let resolver = bed.resolver();
    let controllers = tokio::spawn(tenant_operator::controller::run_all(ctx, resolver, rx));

    let t = bed
        .wait_tenant("acme", Duration::from_secs(90), "Ready=False Forbidden", |t| {
            cond(t, "Ready") == Some(("False".into(), "Forbidden".into()))
        })
        .await
        .unwrap();
    let ready = t.status.as_ref().unwrap().conditions.iter().find(|c| c.type_ == "Ready").unwrap().clone();
    assert!(ready.message.contains("secrets") && ready.message.contains("alice"), "{}", ready.message);
    assert_eq!(cond(&t, "Stalled"), Some(("True".into(), "Forbidden".into())));
    assert!(!ready.message.contains("rbac-secret-value"));

    // Granting the rule is enough: the tenant converges, with no restart of the operator.
    let mut grant = role.clone();
    grant.metadata = serde_json::from_value(json!({"name": format!("{name}-secrets")})).unwrap();
    grant.rules = Some(secret_rules);
    roles.create(&PostParams::default(), &grant).await.unwrap();
    bindings.create(&PostParams::default(), &binding(&format!("{name}-secrets"), "alice-secrets")).await.unwrap();
    // A change to the tenant is what a user does after fixing RBAC (the retry comes by itself
    // within a minute too).
    let patch = json!({"metadata": {"annotations": {"rbac-fixed": "yes"}}});
    bed.tenants().patch("acme", &PatchParams::default(), &Patch::Merge(&patch)).await.unwrap();
    bed.wait_tenant("acme", Duration::from_secs(120), "convergence once granted", |t| {
        cond(t, "Ready") == Some(("True".into(), "Converged".into()))
    })
    .await
    .unwrap();
    // Refused reconciles were retried at the Forbidden pace, not in a hot loop.
    let refused = metrics
        .encode()
        .lines()
        .filter(|l| l.starts_with("tenant_operator_reconciles_total") && l.contains("Forbidden"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>();
    assert!((1.0..=4.0).contains(&refused), "refused reconciles: {refused}");
    let _ = stop.send(true);
    let _ = tokio::time::timeout(Duration::from_secs(5), controllers).await;
}
