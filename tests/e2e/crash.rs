//! The operator killed between writing an intent and sending the command (or right after sending):
//! exactly one command runs on the host and the revision is applied once.

use crate::apply::{channel_at, tenant_json};
use crate::harness::{Bed, cond};
use serde_json::json;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tenant_operator::crd::Tenant;
use testbed::demo::launch_managed;
use testbed::stack::HostState;

async fn crash_then_restart(after_send: bool) {
    let mut bed = Bed::start().await.unwrap();
    let d1 = bed.stack.push_image("platform-tenant", "v1", &[("sim.health", "healthy")], false).await.unwrap();
    let d2 = bed
        .stack
        .push_image("platform-tenant", "v2", &[("sim.health", "healthy"), ("sim.version", "2")], false)
        .await
        .unwrap();
    channel_at(&bed, "staging", &d1).await;
    let id = launch_managed(&bed.stack, "kilo", &[], HostState::Fresh).await.unwrap();
    bed.create::<Tenant>(tenant_json("kilo", &id, json!({}))).await.unwrap();
    bed.wait_tenant("kilo", Duration::from_secs(90), "first convergence", |t| {
        cond(t, "Ready").is_some_and(|c| c.1 == "Converged")
    })
    .await
    .unwrap();

    let faults = &bed.ctx.as_ref().unwrap().faults;
    if after_send { &faults.crash_after_send } else { &faults.crash_after_intent }.store(true, Ordering::SeqCst);
    channel_at(&bed, "staging", &d2).await;
    let t = bed
        .wait_tenant("kilo", Duration::from_secs(60), "an apply intent", |t| {
            t.status.as_ref().and_then(|s| s.in_flight.as_ref()).is_some_and(|f| f.action == "apply")
        })
        .await
        .unwrap();
    let intent = t.status.unwrap().in_flight.unwrap();
    assert!(intent.command_id.is_none());
    let token = intent.intent_token.clone();
    let sent = || async {
        bed.stack.timeline().await.unwrap().as_array().unwrap().iter().any(|r| r.to_string().contains(&token))
    };
    if after_send {
        // The command reaches the simulator; the operator never records its id.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        while !sent().await {
            assert!(tokio::time::Instant::now() < deadline, "the command was never sent");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    // Killed here: the intent is in status, without a command id.
    bed.stop_controllers().await;
    if !after_send {
        // The process is gone (its tasks aborted and awaited): what it had not sent, it never sends.
        let timeline = bed.stack.timeline().await.unwrap();
        let sent = timeline.as_array().unwrap().iter().any(|r| r.to_string().contains(&token));
        assert!(!sent, "nothing may be sent before the crash point");
    }
    let t = bed.tenants().get("kilo").await.unwrap();
    assert!(t.status.unwrap().in_flight.unwrap().command_id.is_none());

    bed.start_controllers(bed.settings()).await;
    let done = bed
        .wait_tenant("kilo", Duration::from_secs(90), "convergence on v2", |t| {
            cond(t, "Ready").is_some_and(|c| c.1 == "Converged")
                && t.status.as_ref().and_then(|s| s.target.as_ref()).is_some_and(|x| x.digest == d2)
        })
        .await
        .unwrap();
    let timeline = bed.stack.timeline().await.unwrap();
    let with_token: Vec<_> = timeline.as_array().unwrap().iter().filter(|r| r.to_string().contains(&token)).collect();
    let summary: Vec<String> = timeline
        .as_array()
        .unwrap()
        .iter()
        .map(|r| format!("{} {} {}", r["comment"], r["parameters"]["action"], r["status"]))
        .collect();
    assert_eq!(
        with_token.len(),
        1,
        "commands carrying intent {token}: {summary:#?} d1={d1} d2={d2} status={}",
        serde_json::to_string_pretty(&done.status).unwrap()
    );
    let applies: Vec<_> = timeline
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["parameters"].to_string().contains("apply") && r.to_string().contains(&id))
        .collect();
    // One apply for v1, one for v2.
    assert_eq!(applies.len(), 2, "applies on the host: {applies:?}");
    let adopted = bed.metrics.encode();
    if after_send {
        assert!(adopted.contains("outcome=\"adopted\""), "the restarted operator found the command: {adopted}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_after_the_intent_before_send_sends_exactly_once() {
    crash_then_restart(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_after_send_finds_the_command_instead_of_resending() {
    crash_then_restart(true).await;
}
