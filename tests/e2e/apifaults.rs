//! The API server misbehaving under rollouts, at the operator: the controllers talk to the real
//! kube-apiserver through a fault-injecting proxy (`testbed::apifault`) while a fleet rolls three
//! digests, one per kind of trouble:
//! - status writes refused with 409 Conflict, requests throttled (429 with Retry-After) and
//!   failed (503, 500);
//! - every watch cut every two seconds, watches answered with 410 Gone, connections closed with
//!   no answer, before the request reached the server or after a write was carried out there;
//! - two seconds of latency on every request.
//!
//! Judged from what the API server stored (read straight from it, not through the proxy) and the
//! simulator's timeline: each rollout completes with every tenant on its digest, no host applies a
//! revision twice, every command a host ran is in its tenant's history with its result, the
//! policy's outbox holds each rollout's start and completion; and the operator's metrics say what
//! happened (requests by code, reconciles failed by category).

use crate::apply::tenant_json;
use crate::chaos::{changes_the_host, commands, double_applies};
use crate::harness::{Bed, uuid_like};
use crate::rollout::{all_on, follow_tag, policy, record, wait_policy};
use kube::api::{Api, ListParams};
use serde_json::json;
use std::collections::BTreeMap;
use std::time::Duration;
use tenant_operator::crd::{RolloutEventType, RolloutPolicy, Tenant};
use testbed::apifault::{ApiFaults, Fault, Requests};
use testbed::controlplane::ControlPlane;
use testbed::demo::launch_managed;
use testbed::stack::HostState;

const TENANTS: [(&str, &str); 5] =
    [("c-1", "canary"), ("p-1", "production"), ("p-2", "production"), ("p-3", "production"), ("p-4", "production")];

/// The operator's metric lines named `name` whose labels contain every one of `labels`, summed.
fn metric(bed: &Bed, name: &str, labels: &[&str]) -> u64 {
    let text = bed.metrics.encode();
    text.lines()
        .filter(|l| l.starts_with(&format!("{name}{{")) && labels.iter().all(|x| l.contains(x)))
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum::<f64>() as u64
}

async fn roll(bed: &Bed, version: &str) -> String {
    let digest = bed.stack.push_image("platform-tenant", "staging", &[("sim.version", version)], false).await.unwrap();
    wait_policy(bed, "p", &format!("the rollout of v{version} complete"), Duration::from_secs(600), |p| {
        record(p, "staging").is_some_and(|r| r.digest == digest && r.phase == "Complete")
    })
    .await;
    let names: Vec<&str> = TENANTS.iter().map(|t| t.0).collect();
    all_on(bed, &names, &digest, Duration::from_secs(300)).await;
    digest
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollouts_ride_out_conflicts_throttling_cut_watches_resets_and_latency_with_nothing_lost() {
    let mut bed = Bed::start_without_controllers().await.unwrap();
    let faults = ApiFaults::start(&bed.cp.url, &bed.cp.ca_pem).await.unwrap();
    let token = bed.cp.install_operator().await.unwrap().to_string();
    // The operator's identity and client stack (its request count), pointed at the proxy.
    bed.operator_client =
        tenant_operator::kubeclient::client(faults.config_with_token(&token).await.unwrap(), bed.metrics.clone())
            .unwrap();
    bed.start_controllers(bed.settings()).await;

    let ids = fleet_on_v1(&bed).await;

    // 1. Conflicts on status writes, throttling and server errors, spread over the rollout.
    faults.inject_every(Fault::Conflict, Requests::StatusWrites, 3, 30);
    faults.inject_every(Fault::TooManyRequests, Requests::Any, 7, 20);
    faults.inject_every(Fault::Unavailable, Requests::Writes, 5, 15);
    faults.inject_every(Fault::InternalError, Requests::Any, 11, 10);
    let t = std::time::Instant::now();
    let v2 = roll(&bed, "2").await;
    let mut walls = vec![t.elapsed().as_secs_f64()];
    for f in [Fault::Conflict, Fault::TooManyRequests, Fault::Unavailable, Fault::InternalError] {
        assert!(faults.injected(f) > 0, "no {f:?} was injected");
    }
    faults.clear();
    // What the metrics said: the answers by code (each attempt; kube retries 429 and 503 by
    // itself) and the reconciles that failed, by what the caller does about them.
    let code = |c: &str| metric(&bed, "tenant_operator_kube_requests_total", &[&format!("code=\"{c}\"")]);
    assert_eq!(code("409"), faults.injected(Fault::Conflict), "{}", bed.metrics.encode());
    assert_eq!(code("429"), faults.injected(Fault::TooManyRequests));
    assert_eq!(code("503"), faults.injected(Fault::Unavailable));
    assert_eq!(code("500"), faults.injected(Fault::InternalError));
    let failed = |c: &str| metric(&bed, "tenant_operator_reconciles_total", &[&format!("result=\"{c}\"")]);
    assert!(failed("KubeConflict") > 0, "{}", bed.metrics.encode());
    assert!(failed("KubeUnavailable") > 0, "{}", bed.metrics.encode());

    // 2. Watches cut every two seconds, answered 410 Gone, connections closed unanswered.
    let watches_before = faults.watches();
    faults.inject_every(Fault::Gone, Requests::Watches, 2, 10);
    faults.inject_every(Fault::Reset, Requests::Any, 9, 15);
    faults.inject_every(Fault::LostAnswer, Requests::Writes, 4, 15);
    let mut cut_count = 0u32;
    let t = std::time::Instant::now();
    let v3 = {
        let rolled = roll(&bed, "3");
        tokio::pin!(rolled);
        let mut tick = tokio::time::interval(Duration::from_secs(2));
        tick.tick().await;
        loop {
            tokio::select! {
                d = &mut rolled => break d,
                _ = tick.tick() => { faults.cut_watches(); cut_count += 1; }
            }
        }
    };
    assert!(cut_count >= 3, "the rollout ended before the watches were cut three times");
    for f in [Fault::Gone, Fault::Reset, Fault::LostAnswer] {
        assert!(faults.injected(f) > 0, "no {f:?} was injected");
    }
    // Every cut and every 410 was answered by watching again.
    assert!(
        faults.watches() >= watches_before + u64::from(cut_count),
        "watches: {} before, {} after {cut_count} cuts",
        watches_before,
        faults.watches()
    );
    faults.clear();
    // Connections closed unanswered are counted, not hidden.
    let unanswered = faults.injected(Fault::Reset) + faults.injected(Fault::LostAnswer);
    assert_eq!(code("error"), unanswered, "{}", bed.metrics.encode());

    // 3. Two seconds on every request.
    faults.set_latency(Duration::from_secs(2));
    walls.push(t.elapsed().as_secs_f64());
    let t = std::time::Instant::now();
    let v4 = roll(&bed, "4").await;
    walls.push(t.elapsed().as_secs_f64());
    faults.set_latency(Duration::ZERO);
    // What each phase met, for the README (figures, not assertions).
    let injected: BTreeMap<String, u64> = [
        Fault::Conflict,
        Fault::TooManyRequests,
        Fault::Unavailable,
        Fault::InternalError,
        Fault::Gone,
        Fault::Reset,
        Fault::LostAnswer,
    ]
    .into_iter()
    .map(|f| (format!("{f:?}"), faults.injected(f)))
    .collect();
    eprintln!(
        "{}",
        json!({"rollout_wall_s": {"errors": walls[0], "watches": walls[1], "latency_2s": walls[2]},
               "watch_cuts": cut_count, "injected": injected, "forwarded": faults.forwarded()})
    );

    nothing_doubled_or_lost(&bed, &ids, &[&v2, &v3, &v4]).await;
    // And the server still holds one Tenant per host.
    let all = bed.tenants().list(&ListParams::default()).await.unwrap();
    assert_eq!(all.items.len(), TENANTS.len());
}

/// No host applied a revision twice; every command that changed a host is in its tenant's history
/// with its result; each digest was applied once per tenant; the policy's outbox holds each
/// rollout's start and completion once.
async fn nothing_doubled_or_lost(bed: &Bed, ids: &BTreeMap<&str, String>, digests: &[&String]) {
    let cmds = commands(bed).await;
    let doubles = double_applies(&cmds);
    assert!(doubles.is_empty(), "applied twice: {doubles:#?}");
    for (name, id) in ids {
        let t = bed.tenants().get(name).await.unwrap();
        let history = t.status.clone().unwrap_or_default().history;
        for c in cmds.iter().filter(|c| &c.instance == id && changes_the_host(c)) {
            let entry = history.iter().find(|h| h.command_id.as_deref() == Some(c.id.as_str()));
            let entry = entry.unwrap_or_else(|| panic!("{name}: command {} ({}) not in {history:#?}", c.id, c.action));
            assert_eq!(entry.result == "Succeeded", c.status == "Success", "{name}: {c:?} recorded as {entry:?}");
        }
        for d in digests {
            let ok = history
                .iter()
                .filter(|h| h.action == "apply" && h.digest.as_deref() == Some(d.as_str()) && h.result == "Succeeded");
            assert_eq!(ok.count(), 1, "{name}: {d}: {history:#?}");
        }
    }
    let p = Api::<RolloutPolicy>::namespaced(bed.client.clone(), &bed.ns).get("p").await.unwrap();
    let events: Vec<(RolloutEventType, String)> =
        p.status.unwrap_or_default().events.into_iter().map(|e| (e.type_, e.digest)).collect();
    for d in digests {
        for ty in [RolloutEventType::Started, RolloutEventType::Complete] {
            let n = events.iter().filter(|(t, dd)| *t == ty && dd == *d).count();
            assert_eq!(n, 1, "{ty:?} {d}: {events:?}");
        }
    }
}

/// The fleet of `TENANTS` under policy `p` on channel `staging`, all on v1.
async fn fleet_on_v1(bed: &Bed) -> BTreeMap<&'static str, String> {
    let v1 = bed.stack.push_image("platform-tenant", "staging", &[("sim.version", "1")], false).await.unwrap();
    follow_tag(bed, "staging", "staging").await;
    policy(
        bed,
        "p",
        json!({"maxConcurrency": 2, "maxErrors": 0, "stagger": "0s", "canary": {"minCanaries": 1, "soak": "1s"}}),
    )
    .await;
    let mut ids = BTreeMap::new();
    for (name, tier) in TENANTS {
        let id = launch_managed(&bed.stack, name, &[], HostState::Fresh).await.unwrap();
        bed.create::<Tenant>(tenant_json(name, &id, json!({"rolloutPolicy": "p", "tier": tier}))).await.unwrap();
        ids.insert(name, id);
    }
    let names: Vec<&str> = TENANTS.iter().map(|t| t.0).collect();
    all_on(bed, &names, &v1, Duration::from_secs(300)).await;
    ids
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rollout_rides_out_a_kube_apiserver_restart_on_the_same_etcd() {
    // A control plane of this test's own: every client of it loses the server.
    let cp: &'static ControlPlane = Box::leak(Box::new(ControlPlane::start().await.unwrap()));
    let mut bed = Bed::start_on(cp, &format!("e2e-{}", uuid_like())).await.unwrap();
    let token = cp.install_operator().await.unwrap().to_string();
    bed.operator_client =
        tenant_operator::kubeclient::client(cp.config_with_token(&token).await.unwrap(), bed.metrics.clone()).unwrap();
    bed.start_controllers(bed.settings()).await;
    let ids = fleet_on_v1(&bed).await;

    let v2 = bed.stack.push_image("platform-tenant", "staging", &[("sim.version", "2")], false).await.unwrap();
    // Mid-rollout: the canary was admitted to v2.
    bed.wait_tenant("c-1", Duration::from_secs(120), "the canary admitted to v2", |t| {
        t.status.as_ref().and_then(|s| s.target.as_ref()).is_some_and(|x| x.digest == v2)
    })
    .await
    .unwrap();
    let unanswered = |bed: &Bed| metric(bed, "tenant_operator_kube_requests_total", &["code=\"error\""]);
    let before = unanswered(&bed);
    let down = cp.restart_apiserver(1).await.unwrap();
    eprintln!("kube-apiserver was gone for {down:?}");

    wait_policy(&bed, "p", "the rollout of v2 complete", Duration::from_secs(600), |p| {
        record(p, "staging").is_some_and(|r| r.digest == v2 && r.phase == "Complete")
    })
    .await;
    let names: Vec<&str> = TENANTS.iter().map(|t| t.0).collect();
    all_on(&bed, &names, &v2, Duration::from_secs(300)).await;
    nothing_doubled_or_lost(&bed, &ids, &[&v2]).await;
    // The operator's requests while the server was gone are counted as unanswered.
    assert!(unanswered(&bed) > before, "{}", bed.metrics.encode());
    drop(bed);
    cp.stop();
}
