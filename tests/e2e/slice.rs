//! The first vertical slice: the real Tenant controller finds the instance, asks the host what it
//! runs through the simulator, and writes observedGeneration, the observation and conditions.

use crate::harness::{Bed, cond};
use serde_json::json;
use std::time::Duration;
use tenant_operator::crd::Tenant;
use testbed::demo::launch_managed;
use testbed::stack::HostState;

fn tenant(name: &str, slug: &str, instance: serde_json::Value) -> serde_json::Value {
    json!({
        "apiVersion": "fleet.molecule.ai/v1alpha1", "kind": "Tenant",
        "metadata": {"name": name},
        "spec": {"slug": slug, "instance": instance, "channel": "staging"}
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenant_is_observed_and_gets_kstatus_conditions() {
    let bed = Bed::start().await.unwrap();
    let id = launch_managed(&bed.stack, "acme", &[], HostState::Fresh).await.unwrap();
    bed.create::<Tenant>(tenant("acme", "acme", json!({"id": id}))).await.unwrap();

    let t = bed
        .wait_tenant("acme", Duration::from_secs(60), "a host report", |t| {
            t.status.as_ref().is_some_and(|s| s.observed.is_some() && s.in_flight.is_none())
        })
        .await
        .unwrap();
    let st = t.status.clone().unwrap();
    assert_eq!(st.observed_generation, t.metadata.generation);
    assert_eq!(st.instance_id.as_deref(), Some(id.as_str()));
    assert_eq!(cond(&t, "InstanceReachable"), Some(("True".into(), "AgentOnline".into())));
    // A fresh host serves nothing yet and no target is admitted: not ready, with a reason.
    assert_eq!(cond(&t, "Ready").map(|c| c.0), Some("False".into()));
    assert!(cond(&t, "Reconciling").is_some());
    assert_eq!(cond(&t, "Stalled").map(|c| c.0), Some("False".into()));
    let obs = st.observed.unwrap();
    assert!(!obs.managed);
    assert!(obs.blue.is_none() && obs.green.is_none());
    // Tenants by condition, as Prometheus scrapes them (refreshed every 5 s from the cache).
    let want = "tenant_operator_tenants{condition=\"Ready\",status=\"False\"} 1";
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    while !bed.metrics.encode().contains(want) {
        assert!(tokio::time::Instant::now() < deadline, "no {want} in {}", bed.metrics.encode());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // The simulator really ran the operator's document on that host.
    let timeline = bed.stack.timeline().await.unwrap();
    let runs: Vec<_> = timeline
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["instance_id"] == json!(id) || r["instance"] == json!(id))
        .collect();
    assert!(!runs.is_empty(), "no command ran on {id}: {timeline}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unmanaged_or_mismatched_instances_get_a_condition_and_no_command() {
    let bed = Bed::start().await.unwrap();
    let unmanaged =
        launch_managed(&bed.stack, "rogue", &[("fleet.molecule.ai/managed", "false")], HostState::Fresh).await.unwrap();
    let other = launch_managed(&bed.stack, "beta", &[], HostState::Fresh).await.unwrap();
    bed.create::<Tenant>(tenant("rogue", "rogue", json!({"id": unmanaged}))).await.unwrap();
    // Claims an instance whose org tag is another slug.
    bed.create::<Tenant>(tenant("gamma", "gamma", json!({"id": other}))).await.unwrap();
    // Tags that match nothing.
    bed.create::<Tenant>(tenant("nobody", "nobody", json!({"tags": {"team": "none"}}))).await.unwrap();

    for (name, reason) in [("rogue", "InstanceNotManaged"), ("gamma", "OrgTagMismatch"), ("nobody", "InstanceNotFound")]
    {
        let t = bed
            .wait_tenant(name, Duration::from_secs(30), reason, |t| cond(t, "Stalled").is_some_and(|c| c.1 == reason))
            .await
            .unwrap();
        assert_eq!(cond(&t, "Stalled").unwrap().0, "True");
        assert_eq!(cond(&t, "Ready").unwrap().0, "False");
    }
    let timeline = bed.stack.timeline().await.unwrap();
    assert_eq!(timeline.as_array().map(Vec::len), Some(0), "a command was sent: {timeline}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_offline_is_unreachable_not_failed_and_recovers() {
    let bed = Bed::start().await.unwrap();
    let id = launch_managed(&bed.stack, "delta", &[], HostState::Fresh).await.unwrap();
    bed.stack.set_fault(&id, json!({"agent_offline": true})).await.unwrap();
    bed.create::<Tenant>(tenant("delta", "delta", json!({"id": id}))).await.unwrap();
    let t = bed
        .wait_tenant("delta", Duration::from_secs(30), "unreachable", |t| {
            cond(t, "InstanceReachable").is_some_and(|c| c.0 == "False")
        })
        .await
        .unwrap();
    assert_eq!(cond(&t, "InstanceReachable").unwrap().1, "AgentOffline");
    assert_eq!(cond(&t, "Stalled").unwrap().0, "False");
    assert!(t.status.unwrap().in_flight.is_none(), "nothing is sent to an offline host");
    assert_eq!(bed.stack.timeline().await.unwrap().as_array().map(Vec::len), Some(0));

    bed.stack.set_fault(&id, json!({"agent_offline": false})).await.unwrap();
    bed.wait_tenant("delta", Duration::from_secs(60), "reachable and observed", |t| {
        cond(t, "InstanceReachable").is_some_and(|c| c.0 == "True")
            && t.status.as_ref().is_some_and(|s| s.observed.is_some())
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_that_goes_offline_with_a_command_pending_is_unreachable_and_the_command_lands_later() {
    let bed = Bed::start().await.unwrap();
    let id = launch_managed(&bed.stack, "echo-o", &[], HostState::Fresh).await.unwrap();
    bed.create::<Tenant>(tenant("echo-o", "echo-o", json!({"id": id}))).await.unwrap();
    bed.wait_tenant("echo-o", Duration::from_secs(60), "a first report", |t| {
        t.status.as_ref().is_some_and(|s| s.observed.is_some() && s.in_flight.is_none())
    })
    .await
    .unwrap();
    // The next command is sent while the agent answers, then waits: the agent went away.
    bed.stack.set_fault(&id, json!({"delivery_delay_seconds": 600.0})).await.unwrap();
    bed.wait_tenant("echo-o", Duration::from_secs(30), "a command in flight", |t| {
        t.status.as_ref().and_then(|s| s.in_flight.as_ref()).is_some_and(|f| f.command_id.is_some())
    })
    .await
    .unwrap();
    bed.stack.set_fault(&id, json!({"agent_offline": true})).await.unwrap();
    let t = bed
        .wait_tenant("echo-o", Duration::from_secs(60), "unreachable with the command pending", |t| {
            cond(t, "InstanceReachable").is_some_and(|c| c.0 == "False")
        })
        .await
        .unwrap();
    assert_eq!(cond(&t, "InstanceReachable").unwrap().1, "AgentOffline");
    assert_eq!(cond(&t, "Stalled").unwrap().0, "False", "unreachable is not failed");
    assert!(t.status.as_ref().unwrap().in_flight.is_some(), "the command stays in flight, not sent again");
    let sent = bed.stack.timeline().await.unwrap().as_array().unwrap().len();
    // Back online, delivery resumes: the same command lands, nothing is sent twice meanwhile.
    bed.stack.set_fault(&id, json!({"agent_offline": false, "delivery_delay_seconds": 0.0})).await.unwrap();
    bed.wait_tenant("echo-o", Duration::from_secs(90), "reachable again", |t| {
        cond(t, "InstanceReachable").is_some_and(|c| c.0 == "True")
            && t.status.as_ref().is_some_and(|s| s.in_flight.is_none())
    })
    .await
    .unwrap();
    let timeline = bed.stack.timeline().await.unwrap();
    let statuses: Vec<&str> =
        timeline.as_array().unwrap()[..sent].iter().filter_map(|r| r["status"].as_str()).collect();
    assert!(statuses.iter().all(|s| *s != "Pending"), "the pending command finished: {timeline}");
}
