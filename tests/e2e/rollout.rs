//! Rollouts end to end: the real registry, the channel controller following a tag, the rollout
//! coordinator and the Tenant controller, on simulated hosts. What happened is read back from the
//! simulator's command timeline (the hosts' truth), not from what the operator says it did.

use crate::apply::tenant_json;
use crate::harness::{Bed, cond};
use crate::hostile::converged;
use kube::api::{Api, ListParams};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};
use tenant_operator::controller::coordinator;
use tenant_operator::core::rollout::{Emergency, phase};
use tenant_operator::crd::{ImageChannel, RolloutPolicy, RolloutStatus, Tenant};
use testbed::demo::launch_managed;
use testbed::stack::HostState;

const REPO: &str = "platform-tenant";

pub async fn follow_tag(bed: &Bed, name: &str, tag: &str) {
    bed.create::<ImageChannel>(json!({
        "apiVersion": "fleet.molecule.ai/v1alpha1", "kind": "ImageChannel",
        "metadata": {"name": name, "namespace": bed.ns},
        "spec": {"image": format!("{}/{REPO}", bed.stack.registry), "tag": tag, "interval": "1s"}
    }))
    .await
    .unwrap();
}

async fn promoted_channel(bed: &Bed, name: &str, from: &str) {
    bed.create::<ImageChannel>(json!({
        "apiVersion": "fleet.molecule.ai/v1alpha1", "kind": "ImageChannel",
        "metadata": {"name": name, "namespace": bed.ns},
        "spec": {"image": format!("{}/{REPO}", bed.stack.registry), "promoteFrom": from}
    }))
    .await
    .unwrap();
}

pub async fn policy(bed: &Bed, name: &str, spec: Value) {
    bed.create::<RolloutPolicy>(json!({
        "apiVersion": "fleet.molecule.ai/v1alpha1", "kind": "RolloutPolicy",
        "metadata": {"name": name, "namespace": bed.ns}, "spec": spec
    }))
    .await
    .unwrap();
}

/// Hosts and tenants: (name, tier, channel), all under `policy`. Returns name → instance id.
pub async fn fleet(bed: &Bed, policy: &str, members: &[(&str, &str, &str)]) -> BTreeMap<String, String> {
    let mut ids = BTreeMap::new();
    for (name, tier, channel) in members {
        let id = launch_managed(&bed.stack, name, &[], HostState::Fresh).await.unwrap();
        bed.create::<Tenant>(tenant_json(
            name,
            &id,
            json!({"tier": tier, "channel": channel, "rolloutPolicy": policy,
                   "container": {"env": [{"name": "BEARER", "value": "b"}]}}),
        ))
        .await
        .unwrap();
        ids.insert(name.to_string(), id);
    }
    ids
}

fn target(t: &Tenant) -> Option<String> {
    t.status.as_ref()?.target.as_ref().map(|x| x.digest.clone())
}

/// Converged, and the host's own report says it serves `digest` (a fresh target can meet a
/// `Ready` that still speaks of the previous one).
fn runs(t: &Tenant, digest: &str) -> bool {
    let Some(st) = t.status.as_ref() else { return false };
    converged(t)
        && st.in_flight.as_ref().is_none_or(|f| f.action == "observe")
        && st.observed.as_ref().and_then(|o| tenant_operator::core::tenant::serving(o)).is_some_and(|(_, s)| {
            s.digest.as_deref() == Some(digest) && s.running && s.health.as_deref() == Some("healthy")
        })
}

/// Waits until every named tenant is admitted to `digest` and converged on it.
pub async fn all_on(bed: &Bed, names: &[&str], digest: &str, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    loop {
        let list = bed.tenants().list(&ListParams::default()).await.unwrap();
        let behind: Vec<String> = names
            .iter()
            .filter(|n| {
                !list.items.iter().any(|t| {
                    t.metadata.name.as_deref() == Some(**n) && target(t).as_deref() == Some(digest) && runs(t, digest)
                })
            })
            .map(|n| n.to_string())
            .collect();
        if behind.is_empty() {
            return;
        }
        assert!(Instant::now() < deadline, "not on {digest}: {behind:?}; {}", dump(bed).await);
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

async fn dump(bed: &Bed) -> String {
    let list = bed.tenants().list(&ListParams::default()).await.unwrap();
    let tenants: Vec<Value> = list
        .items
        .iter()
        .map(|t| {
            json!({"name": t.metadata.name, "target": target(t), "ready": cond(t, "Ready"),
                         "history": t.status.as_ref().map(|s| &s.history)})
        })
        .collect();
    let policies: Api<RolloutPolicy> = Api::namespaced(bed.client.clone(), &bed.ns);
    let p: Vec<Value> =
        policies.list(&ListParams::default()).await.unwrap().items.iter().map(|p| json!(p.status)).collect();
    serde_json::to_string_pretty(&json!({"tenants": tenants, "policies": p})).unwrap()
}

/// Waits until the coordinator has carried out a whole step of `policy` that began after this
/// call: two requests that change nothing (a `retry` of a rollout that is not halted), each
/// acknowledged in turn. Steps of one policy never overlap, so once the second is acknowledged the
/// first step's writes (targets) are done: what did not move by then was decided not to move.
pub async fn coordinator_settled(bed: &Bed, policy: &str) {
    for _ in 0..2 {
        let p = get_policy(bed, policy).await;
        assert!(
            p.status.iter().flat_map(|s| &s.rollouts).all(|r| r.phase != phase::HALTED),
            "a retry would act on a halted rollout"
        );
        let token = coordinator::request(bed.client.clone(), &bed.ns, policy, "retry", None).await.unwrap();
        wait_policy(bed, policy, "the no-op request acknowledged", Duration::from_secs(30), |p| {
            p.status.as_ref().is_some_and(|s| s.handled_requests.get("retry") == Some(&token))
        })
        .await;
    }
}

/// Waits until the controllers' metrics show `series` at `value` (the gauge follows the record).
async fn gauge_is(bed: &Bed, series: &str, value: &str) {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let text = bed.metrics.encode();
        if text.lines().any(|l| l.rsplit_once(' ') == Some((series, value))) {
            return;
        }
        assert!(Instant::now() < deadline, "no {series} {value} in:\n{text}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

pub async fn get_policy(bed: &Bed, name: &str) -> RolloutPolicy {
    Api::<RolloutPolicy>::namespaced(bed.client.clone(), &bed.ns).get(name).await.unwrap()
}

pub fn record(p: &RolloutPolicy, channel: &str) -> Option<RolloutStatus> {
    p.status.as_ref()?.rollouts.iter().find(|r| r.channel == channel).cloned()
}

fn pcond(p: &RolloutPolicy, type_: &str) -> Option<(String, String, String)> {
    let c = p.status.as_ref()?.conditions.iter().find(|c| c.type_ == type_)?;
    Some((c.status.clone(), c.reason.clone(), c.message.clone()))
}

pub async fn wait_policy(
    bed: &Bed,
    name: &str,
    what: &str,
    timeout: Duration,
    pred: impl Fn(&RolloutPolicy) -> bool,
) -> RolloutPolicy {
    let deadline = Instant::now() + timeout;
    loop {
        let p = get_policy(bed, name).await;
        if pred(&p) {
            return p;
        }
        assert!(Instant::now() < deadline, "policy {name}: timed out waiting for {what}; {}", dump(bed).await);
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

async fn channel_digest(bed: &Bed, name: &str) -> Option<String> {
    let c = Api::<ImageChannel>::namespaced(bed.client.clone(), &bed.ns).get(name).await.unwrap();
    c.status.and_then(|s| s.digest)
}

/// Waits (bounded) until an event for `name` satisfies `pred` (events follow the status write).
async fn wait_event(bed: &Bed, name: &str, what: &str, pred: impl Fn(&(String, String)) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let events = event_reasons(bed, name).await;
        if events.iter().any(&pred) {
            return;
        }
        assert!(Instant::now() < deadline, "no event {what} for {name}: {events:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Reasons of the events recorded for an object.
pub async fn event_reasons(bed: &Bed, name: &str) -> Vec<(String, String)> {
    let api: Api<k8s_openapi::api::events::v1::Event> = Api::all(bed.client.clone());
    api.list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(name))
        .map(|e| (e.reason.unwrap_or_default(), e.note.unwrap_or_default()))
        .collect()
}

/// The host-side apply commands that moved a tenant to `digest`: (tenant, start, end), in seconds,
/// joined by command id and instance from the tenants' history to the simulator's timeline (one
/// command carries the applies of several tenants).
async fn applies_of(bed: &Bed, digest: &str) -> Vec<(String, f64, f64)> {
    let list = bed.tenants().list(&ListParams::default()).await.unwrap();
    let mut by_invocation = BTreeMap::new();
    for t in &list.items {
        let status = t.status.clone().unwrap_or_default();
        let instance = status.instance_id.clone().unwrap_or_default();
        for h in status.history {
            if h.digest.as_deref() == Some(digest)
                && let Some(c) = h.command_id
            {
                by_invocation.insert((c, instance.clone()), t.metadata.name.clone().unwrap_or_default());
            }
        }
    }
    let timeline = bed.stack.timeline().await.unwrap();
    let mut out = Vec::new();
    for r in timeline.as_array().unwrap() {
        let key = (
            r["command_id"].as_str().unwrap_or_default().to_string(),
            r["instance_id"].as_str().unwrap_or_default().to_string(),
        );
        if let Some(name) = by_invocation.get(&key) {
            let start = r["start"].as_f64().unwrap_or(f64::MAX);
            let end = r["end"].as_f64().unwrap_or(f64::MAX);
            out.push((name.clone(), start, end));
        }
    }
    out
}

/// The most intervals open at one instant.
fn max_overlap(intervals: &[(f64, f64)]) -> usize {
    let mut edges: Vec<(f64, i32)> = intervals.iter().flat_map(|(s, e)| [(*s, 1), (*e, -1)]).collect();
    edges.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
    let (mut open, mut most) = (0i32, 0i32);
    for (_, d) in edges {
        open += d;
        most = most.max(open);
    }
    usize::try_from(most).unwrap_or(0)
}

fn epoch(rfc3339: &str) -> f64 {
    rfc3339.parse::<jiff::Timestamp>().map(|t| t.as_millisecond() as f64 / 1000.0).unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_moved_tag_moves_canaries_first_then_production_in_bounded_batches_and_promotes_stable() {
    let bed = Bed::start().await.unwrap();
    let v1 = bed.stack.push_image(REPO, "staging", &[("sim.version", "1")], false).await.unwrap();
    follow_tag(&bed, "staging", "staging").await;
    promoted_channel(&bed, "stable", "staging").await;
    policy(
        &bed,
        "waves",
        json!({"maxConcurrency": 2, "stagger": "2s", "healthCheck": {"timeout": "20s"},
        "canary": {"minCanaries": 1, "soak": "5s", "sampleInterval": "1s"}}),
    )
    .await;
    let prods = ["prod-0", "prod-1", "prod-2", "prod-3", "prod-4"];
    let mut members = vec![("can-0", "canary", "staging")];
    members.extend(prods.iter().map(|p| (*p, "production", "staging")));
    members.push(("st-0", "production", "stable"));
    fleet(&bed, "waves", &members).await;
    let staging: Vec<&str> = members.iter().filter(|m| m.2 == "staging").map(|m| m.0).collect();
    // A new fleet: everyone starts on what the channel has; stable gets it once it passed the gate.
    all_on(&bed, &staging, &v1, Duration::from_secs(120)).await;
    all_on(&bed, &["st-0"], &v1, Duration::from_secs(90)).await;

    // The tag moves.
    let v2 = bed.stack.push_image(REPO, "staging", &[("sim.version", "2")], false).await.unwrap();
    let moved_at = jiff::Timestamp::now().as_millisecond() as f64 / 1000.0;
    all_on(&bed, &staging, &v2, Duration::from_secs(180)).await;
    let p = wait_policy(&bed, "waves", "the staging rollout to complete", Duration::from_secs(30), |p| {
        record(p, "staging").is_some_and(|r| r.digest == v2 && r.phase == phase::COMPLETE)
    })
    .await;
    all_on(&bed, &["st-0"], &v2, Duration::from_secs(90)).await;

    let r = record(&p, "staging").unwrap();
    let gate = epoch(r.gate_passed_at.as_deref().expect("the gate passed"));
    let soak_start = epoch(r.soak_started_at.as_deref().unwrap());
    assert!(gate - soak_start >= 4.9, "the soak lasted {} s, the policy says 5 s", gate - soak_start);
    assert_eq!(r.gate_tenants, vec!["can-0"]);

    let applies = applies_of(&bed, &v2).await;
    let canary: Vec<&(String, f64, f64)> = applies.iter().filter(|a| a.0 == "can-0").collect();
    assert_eq!(canary.len(), 1, "{applies:?}");
    let first_canary = canary[0].1;
    eprintln!("tag move to the first canary command: {:.2} s", first_canary - moved_at);
    let production: Vec<&(String, f64, f64)> = applies.iter().filter(|a| prods.contains(&a.0.as_str())).collect();
    assert_eq!(production.len(), 5, "one apply per production tenant: {applies:?}");
    for (name, start, _) in &production {
        assert!(*start >= gate - 0.5, "{name} moved at {start} before the gate passed at {gate}");
        assert!(*start > canary[0].2, "{name} moved before the canary finished");
    }
    let overlap = max_overlap(&production.iter().map(|a| (a.1, a.2)).collect::<Vec<_>>());
    assert!(overlap <= 2, "{overlap} production hosts moved at once; maxConcurrency is 2");
    assert_eq!(r.peak_concurrency, 2, "batches of two: {r:?}");
    // Batches are staggered: sorted by start, batch k+1 starts >= 2 s after batch k ended.
    let mut starts: Vec<(f64, f64)> = production.iter().map(|a| (a.1, a.2)).collect();
    starts.sort_by(|a, b| a.0.total_cmp(&b.0));
    for w in starts.windows(3) {
        // Two at a time: the third starts after both of the first two ended, plus the stagger.
        assert!(w[2].0 >= w[0].1.max(w[1].1) + 1.9 || w[1].0 >= w[0].1 + 1.9, "not staggered: {starts:?}");
    }

    // stable took v2 only after the gate, with the evidence.
    let stable = Api::<ImageChannel>::namespaced(bed.client.clone(), &bed.ns).get("stable").await.unwrap();
    let st = stable.status.unwrap();
    assert_eq!(st.digest.as_deref(), Some(v2.as_str()));
    let entry = st.history.iter().find(|h| h.digest == v2).unwrap();
    let ev = entry.evidence.as_ref().expect("promotion evidence");
    assert_eq!(
        (ev.channel.as_str(), ev.policy.as_str(), ev.tenants.clone()),
        ("staging", "waves", vec!["can-0".to_string()])
    );
    assert!(epoch(&entry.first_seen) >= gate - 0.5, "stable took v2 before the gate");
    let st0 = applies_of(&bed, &v2).await.into_iter().find(|a| a.0 == "st-0").unwrap();
    assert!(st0.1 >= gate, "st-0 moved before the gate");

    for want in ["RolloutStarted", "SoakStarted", "CanaryGatePassed", "RolloutComplete"] {
        wait_event(&bed, "waves", want, |e| e.0 == want).await;
    }
    assert!(event_reasons(&bed, "stable").await.iter().any(|e| e.0 == "Promoted"));
    let ready = pcond(&p, "Ready").unwrap();
    assert_eq!((ready.0.as_str(), ready.1.as_str()), ("True", "RolloutsComplete"));

    // Events stay meaningful: at most 3 per tenant for the rollout of v2 (a repeat counts too).
    let events: Api<k8s_openapi::api::events::v1::Event> = Api::namespaced(bed.client.clone(), &bed.ns);
    let events = events.list(&ListParams::default()).await.unwrap().items;
    for name in &staging {
        let of: Vec<(String, i32)> = events
            .iter()
            .filter(|e| {
                let about = e.regarding.as_ref();
                about.and_then(|r| r.kind.as_deref()) == Some("Tenant")
                    && about.and_then(|r| r.name.as_deref()) == Some(*name)
                    && e.event_time.as_ref().is_some_and(|t| t.0.as_millisecond() as f64 / 1000.0 >= moved_at)
            })
            .map(|e| (e.reason.clone().unwrap_or_default(), e.series.as_ref().map_or(1, |s| s.count)))
            .collect();
        let count: i32 = of.iter().map(|e| e.1).sum();
        assert!(count <= 3, "{name}: {count} events for one rollout: {of:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_canaries_the_rollout_waits_and_a_canary_unhealthy_in_the_soak_fails_the_gate() {
    let bed = Bed::start().await.unwrap();
    let v1 = bed.stack.push_image(REPO, "staging", &[("sim.version", "1")], false).await.unwrap();
    follow_tag(&bed, "staging", "staging").await;
    promoted_channel(&bed, "stable", "staging").await;
    policy(
        &bed,
        "gated",
        json!({"stagger": "0s", "healthCheck": {"timeout": "10s"},
        "canary": {"minCanaries": 1, "soak": "120s", "sampleInterval": "1s"}}),
    )
    .await;
    fleet(&bed, "gated", &[("prod-a", "production", "staging"), ("prod-b", "production", "staging")]).await;
    all_on(&bed, &["prod-a", "prod-b"], &v1, Duration::from_secs(90)).await;

    let v2 = bed.stack.push_image(REPO, "staging", &[("sim.version", "2")], false).await.unwrap();
    let p = wait_policy(&bed, "gated", "NoCanaries", Duration::from_secs(30), |p| {
        pcond(p, "Stalled").is_some_and(|c| c.0 == "True" && c.1 == "NoCanaries")
    })
    .await;
    assert!(pcond(&p, "Stalled").unwrap().2.contains("0 canary tenants"), "{:?}", pcond(&p, "Stalled"));
    coordinator_settled(&bed, "gated").await;
    for t in bed.tenants().list(&ListParams::default()).await.unwrap() {
        assert_eq!(target(&t).as_deref(), Some(v1.as_str()), "{:?} moved without a canary", t.metadata.name);
    }
    wait_event(&bed, "gated", "NoCanaries", |e| e.0 == "NoCanaries").await;

    // A canary arrives: it moves, the soak starts, then it turns unhealthy.
    let ids = fleet(&bed, "gated", &[("can-a", "canary", "staging")]).await;
    wait_policy(&bed, "gated", "the soak", Duration::from_secs(120), |p| {
        record(p, "staging").is_some_and(|r| r.phase == phase::SOAKING)
    })
    .await;
    bed.stack.set_fault(&ids["can-a"], json!({"unhealthy": true})).await.unwrap();
    let p = wait_policy(&bed, "gated", "the gate to fail", Duration::from_secs(60), |p| {
        record(p, "staging").is_some_and(|r| r.phase == phase::HALTED)
    })
    .await;
    let stalled = pcond(&p, "Stalled").unwrap();
    assert_eq!((stalled.0.as_str(), stalled.1.as_str()), ("True", "RolloutHalted"));
    assert!(stalled.2.contains("can-a"), "the condition names the failing tenant: {stalled:?}");
    wait_event(&bed, "gated", "RolloutHalted naming can-a", |e| e.0 == "RolloutHalted" && e.1.contains("can-a")).await;
    // Production never moved; stable was never promoted; the canary was sent back.
    assert!(applies_of(&bed, &v2).await.iter().all(|a| a.0 == "can-a"));
    for name in ["prod-a", "prod-b"] {
        assert_eq!(target(&bed.tenants().get(name).await.unwrap()).as_deref(), Some(v1.as_str()));
    }
    assert_eq!(target(&bed.tenants().get("can-a").await.unwrap()).as_deref(), Some(v1.as_str()));
    assert_ne!(channel_digest(&bed, "stable").await.as_deref(), Some(v2.as_str()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_canary_failing_verification_is_rolled_back_halts_the_rollout_and_the_next_digest_proceeds() {
    let bed = Bed::start().await.unwrap();
    let v1 = bed.stack.push_image(REPO, "staging", &[("sim.version", "1")], false).await.unwrap();
    follow_tag(&bed, "staging", "staging").await;
    promoted_channel(&bed, "stable", "staging").await;
    policy(
        &bed,
        "strict",
        json!({"stagger": "0s", "maxConcurrency": 2, "healthCheck": {"timeout": "4s"},
        "canary": {"minCanaries": 1, "soak": "2s", "sampleInterval": "1s"}}),
    )
    .await;
    fleet(
        &bed,
        "strict",
        &[("can-b", "canary", "staging"), ("prod-c", "production", "staging"), ("prod-d", "production", "staging")],
    )
    .await;
    all_on(&bed, &["can-b", "prod-c", "prod-d"], &v1, Duration::from_secs(90)).await;
    wait_policy(&bed, "strict", "v1 complete", Duration::from_secs(60), |p| {
        record(p, "staging").is_some_and(|r| r.phase == phase::COMPLETE)
    })
    .await;

    // v2 fails its health check on the canary.
    let v2 = bed
        .stack
        .push_image(REPO, "staging", &[("sim.version", "2"), ("sim.health", "unhealthy")], false)
        .await
        .unwrap();
    let p = wait_policy(&bed, "strict", "the halt", Duration::from_secs(90), |p| {
        record(p, "staging").is_some_and(|r| r.digest == v2 && r.phase == phase::HALTED)
    })
    .await;
    assert_eq!(record(&p, "staging").unwrap().failed_tenants, vec!["can-b"]);
    // What the TenantOperatorRolloutHalted alert reads, and the dashboard's failed count.
    let rollout = format!("policy_namespace=\"{}\",policy=\"strict\",channel=\"staging\"", bed.ns);
    gauge_is(&bed, &format!("tenant_operator_rollouts{{{rollout},phase=\"Halted\"}}"), "1").await;
    gauge_is(&bed, &format!("tenant_operator_rollouts{{{rollout},phase=\"Canary\"}}"), "0").await;
    gauge_is(&bed, &format!("tenant_operator_rollout_tenants{{{rollout},tier=\"canary\",count=\"failed\"}}"), "1")
        .await;
    // The canary went back to v1 and serves it; production and stable never saw v2.
    all_on(&bed, &["can-b"], &v1, Duration::from_secs(60)).await;
    let t = bed.tenants().get("can-b").await.unwrap();
    assert!(
        t.status.unwrap().history.iter().any(|h| h.digest.as_deref() == Some(v2.as_str()) && h.result != "Succeeded")
    );
    assert!(applies_of(&bed, &v2).await.iter().all(|a| a.0 == "can-b"));
    assert_eq!(channel_digest(&bed, "stable").await.as_deref(), Some(v1.as_str()));

    // The next digest supersedes the halted rollout and goes all the way.
    let v3 = bed.stack.push_image(REPO, "staging", &[("sim.version", "3")], false).await.unwrap();
    all_on(&bed, &["can-b", "prod-c", "prod-d"], &v3, Duration::from_secs(120)).await;
    let p = wait_policy(&bed, "strict", "v3 complete and stable promoted", Duration::from_secs(60), |p| {
        record(p, "staging").is_some_and(|r| r.digest == v3 && r.phase == phase::COMPLETE)
    })
    .await;
    assert!(record(&p, "staging").unwrap().failed_tenants.is_empty());
    gauge_is(&bed, &format!("tenant_operator_rollouts{{{rollout},phase=\"Complete\"}}"), "1").await;
    gauge_is(&bed, &format!("tenant_operator_rollouts{{{rollout},phase=\"Halted\"}}"), "0").await;
    gauge_is(&bed, &format!("tenant_operator_rollout_tenants{{{rollout},tier=\"production\",count=\"moved\"}}"), "2")
        .await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while channel_digest(&bed, "stable").await.as_deref() != Some(v3.as_str()) {
        assert!(Instant::now() < deadline, "stable was not promoted to v3");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_act_once_abort_rejects_pause_holds_promote_ends_the_soak_retry_resumes() {
    let bed = Bed::start().await.unwrap();
    let v1 = bed.stack.push_image(REPO, "staging", &[("sim.version", "1")], false).await.unwrap();
    follow_tag(&bed, "staging", "staging").await;
    policy(
        &bed,
        "manual",
        json!({"stagger": "0s", "maxConcurrency": 1, "healthCheck": {"timeout": "5s"},
        "canary": {"minCanaries": 1, "soak": "1h", "sampleInterval": "1s"}}),
    )
    .await;
    let ids = fleet(
        &bed,
        "manual",
        &[("can-m", "canary", "staging"), ("prod-m", "production", "staging"), ("prod-n", "production", "staging")],
    )
    .await;
    let all = ["can-m", "prod-m", "prod-n"];
    all_on(&bed, &all, &v1, Duration::from_secs(90)).await;
    let client = bed.client.clone();
    let ns = bed.ns.clone();
    let ask = |verb: &'static str| {
        let (client, ns) = (client.clone(), ns.clone());
        async move { coordinator::request(client, &ns, "manual", verb, None).await.unwrap() }
    };

    // v2: the canary moves and soaks (an hour); abort sends it back and rejects v2 for the channel.
    let v2 = bed.stack.push_image(REPO, "staging", &[("sim.version", "2")], false).await.unwrap();
    wait_policy(&bed, "manual", "v2 soaking", Duration::from_secs(90), |p| {
        record(p, "staging").is_some_and(|r| r.digest == v2 && r.phase == phase::SOAKING)
    })
    .await;
    let abort = ask("abort").await;
    wait_policy(&bed, "manual", "the abort acknowledged", Duration::from_secs(30), |p| {
        p.status.as_ref().is_some_and(|s| s.handled_requests.get("abort") == Some(&abort))
    })
    .await;
    all_on(&bed, &all, &v1, Duration::from_secs(60)).await;
    let ch = Api::<ImageChannel>::namespaced(bed.client.clone(), &bed.ns).get("staging").await.unwrap().status.unwrap();
    assert_eq!(ch.digest.as_deref(), Some(v1.as_str()));
    assert!(ch.history.iter().any(|h| h.digest == v2 && h.rejected), "{:?}", ch.history);
    // The tag still points at v2 and the channel re-resolves every second: v2 never comes back.
    // Seen after the channel resolved the tag again (to v2, kept out as rejected) and the
    // coordinator then took a whole step.
    let mark = jiff::Timestamp::now();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let ch = Api::<ImageChannel>::namespaced(bed.client.clone(), &bed.ns).get("staging").await.unwrap();
        let st = ch.status.clone().unwrap_or_default();
        let again =
            st.last_resolved_at.as_deref().and_then(|t| t.parse::<jiff::Timestamp>().ok()).is_some_and(|t| t > mark);
        let rejected =
            st.conditions.iter().any(|c| c.type_ == "DigestRejected" && c.status == "True" && c.message.contains(&v2));
        if again && rejected {
            break;
        }
        assert!(Instant::now() < deadline, "the channel did not resolve the tag again: {st:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    coordinator_settled(&bed, "manual").await;
    for t in bed.tenants().list(&ListParams::default()).await.unwrap() {
        assert_eq!(target(&t).as_deref(), Some(v1.as_str()));
    }
    assert_eq!(channel_digest(&bed, "staging").await.as_deref(), Some(v1.as_str()));

    // v3: pause during the soak, then promote: the gate passes but no batch starts until resume.
    let v3 = bed.stack.push_image(REPO, "staging", &[("sim.version", "3")], false).await.unwrap();
    wait_policy(&bed, "manual", "v3 soaking", Duration::from_secs(90), |p| {
        record(p, "staging").is_some_and(|r| r.digest == v3 && r.phase == phase::SOAKING)
    })
    .await;
    let pause = ask("pause").await;
    wait_policy(&bed, "manual", "paused", Duration::from_secs(30), |p| record(p, "staging").is_some_and(|r| r.paused))
        .await;
    let promote = ask("promote").await;
    let p = wait_policy(&bed, "manual", "the gate passed by request", Duration::from_secs(30), |p| {
        record(p, "staging").is_some_and(|r| r.phase == phase::PRODUCTION)
    })
    .await;
    assert_eq!(pcond(&p, "Ready").unwrap().1, "Paused");
    coordinator_settled(&bed, "manual").await;
    for name in ["prod-m", "prod-n"] {
        assert_eq!(target(&bed.tenants().get(name).await.unwrap()).as_deref(), Some(v1.as_str()), "moved while paused");
    }
    let resume = ask("resume").await;
    all_on(&bed, &all, &v3, Duration::from_secs(120)).await;
    let p = wait_policy(&bed, "manual", "v3 complete", Duration::from_secs(30), |p| {
        record(p, "staging").is_some_and(|r| r.digest == v3 && r.phase == phase::COMPLETE)
    })
    .await;
    let handled = p.status.unwrap().handled_requests;
    assert_eq!(handled.get("pause"), Some(&pause));
    assert_eq!(handled.get("promote"), Some(&promote));
    assert_eq!(handled.get("resume"), Some(&resume));
    // The abort annotation is still there, and v3 was not aborted: each request acted once.
    let anns = get_policy(&bed, "manual").await.metadata.annotations.unwrap_or_default();
    assert_eq!(anns.get("fleet.molecule.ai/abort"), Some(&abort));

    // v4 fails on the canary host (a host fault): halt; the fault goes; retry resumes to the end.
    bed.stack.set_fault(&ids["can-m"], json!({"unhealthy": true})).await.unwrap();
    let v4 = bed.stack.push_image(REPO, "staging", &[("sim.version", "4")], false).await.unwrap();
    wait_policy(&bed, "manual", "v4 halted", Duration::from_secs(90), |p| {
        record(p, "staging").is_some_and(|r| r.digest == v4 && r.phase == phase::HALTED)
    })
    .await;
    bed.stack.set_fault(&ids["can-m"], json!({"unhealthy": false})).await.unwrap();
    ask("retry").await;
    wait_policy(&bed, "manual", "v4 soaking after the retry", Duration::from_secs(90), |p| {
        record(p, "staging").is_some_and(|r| r.digest == v4 && r.phase == phase::SOAKING)
    })
    .await;
    ask("promote").await;
    all_on(&bed, &all, &v4, Duration::from_secs(120)).await;
    let reasons: Vec<String> = event_reasons(&bed, "manual").await.into_iter().map(|e| e.0).collect();
    for want in ["RolloutAborted", "RolloutPaused", "RolloutResumed", "RolloutRetried", "CanaryGatePassed"] {
        assert!(reasons.iter().any(|r| r == want), "no {want}: {reasons:?}");
    }
    assert_eq!(reasons.iter().filter(|r| *r == "RolloutAborted").count(), 1, "the abort acted once: {reasons:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_emergency_moves_every_tier_at_once_only_with_force() {
    let bed = Bed::start().await.unwrap();
    let v1 = bed.stack.push_image(REPO, "staging", &[("sim.version", "1")], false).await.unwrap();
    let fix = bed.stack.push_image(REPO, "hotfix", &[("sim.version", "1.0.1")], false).await.unwrap();
    follow_tag(&bed, "staging", "staging").await;
    policy(
        &bed,
        "slow",
        json!({"stagger": "1h", "maxConcurrency": 1, "healthCheck": {"timeout": "10s"},
        "canary": {"minCanaries": 1, "soak": "1h"}}),
    )
    .await;
    let all = ["can-e", "prod-e", "prod-f"];
    fleet(
        &bed,
        "slow",
        &[("can-e", "canary", "staging"), ("prod-e", "production", "staging"), ("prod-f", "production", "staging")],
    )
    .await;
    all_on(&bed, &all, &v1, Duration::from_secs(90)).await;

    let refused = Emergency { digest: fix.clone(), channel: None, force: false };
    coordinator::request(bed.client.clone(), &bed.ns, "slow", "emergency", Some(&refused)).await.unwrap();
    let p =
        wait_policy(&bed, "slow", "the refusal", Duration::from_secs(30), |p| pcond(p, "EmergencyApplied").is_some())
            .await;
    let c = pcond(&p, "EmergencyApplied").unwrap();
    assert_eq!((c.0.as_str(), c.1.as_str()), ("False", "ForceRequired"), "{c:?}");
    wait_event(&bed, "slow", "EmergencyRefused", |e| e.0 == "EmergencyRefused").await;
    coordinator_settled(&bed, "slow").await;
    for t in bed.tenants().list(&ListParams::default()).await.unwrap() {
        assert_eq!(target(&t).as_deref(), Some(v1.as_str()));
    }

    let forced = Emergency { digest: fix.clone(), channel: None, force: true };
    coordinator::request(bed.client.clone(), &bed.ns, "slow", "emergency", Some(&forced)).await.unwrap();
    all_on(&bed, &all, &fix, Duration::from_secs(90)).await;
    // Every tier in one step: one admission time for all, whatever the stagger and the gate say.
    let admitted: Vec<String> = bed
        .tenants()
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .iter()
        .map(|t| t.status.as_ref().unwrap().target.as_ref().unwrap().admitted_at.clone().unwrap())
        .collect();
    assert!(admitted.windows(2).all(|w| w[0] == w[1]), "{admitted:?}");
    let p = get_policy(&bed, "slow").await;
    assert_eq!(pcond(&p, "EmergencyApplied").unwrap().0, "True");
    wait_event(&bed, "slow", "EmergencyRollout", |e| e.0 == "EmergencyRollout" && e.1.contains(&fix)).await;
    // Applying it again is a no-op: no command reaches a host.
    let before = applies_of(&bed, &fix).await.len();
    assert_eq!(before, 3);
    let admitted =
        |ts: &[Tenant]| ts.iter().map(|t| t.status.as_ref().and_then(|s| s.target.clone())).collect::<Vec<_>>();
    let targets = admitted(&bed.tenants().list(&ListParams::default()).await.unwrap().items);
    let again = coordinator::request(bed.client.clone(), &bed.ns, "slow", "emergency", Some(&forced)).await.unwrap();
    wait_policy(&bed, "slow", "the repeated emergency acknowledged", Duration::from_secs(30), |p| {
        p.status.as_ref().is_some_and(|s| s.handled_requests.get("emergency") == Some(&again))
    })
    .await;
    coordinator_settled(&bed, "slow").await;
    // Not admitted again (the same targets, the same admission times), so no command follows.
    assert_eq!(admitted(&bed.tenants().list(&ListParams::default()).await.unwrap().items), targets);
    assert_eq!(applies_of(&bed, &fix).await.len(), 3);
    all_on(&bed, &all, &fix, Duration::from_secs(10)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registry_down_keeps_the_last_good_digest_and_nothing_moves() {
    let mut bed = Bed::start().await.unwrap();
    let v1 = bed.stack.push_image(REPO, "staging", &[("sim.version", "1")], false).await.unwrap();
    follow_tag(&bed, "staging", "staging").await;
    policy(&bed, "steady", json!({"stagger": "0s", "canary": {"minCanaries": 0, "soak": "0s"}})).await;
    fleet(&bed, "steady", &[("prod-r", "production", "staging")]).await;
    all_on(&bed, &["prod-r"], &v1, Duration::from_secs(90)).await;
    let applies_before = applies_of(&bed, &v1).await.len();

    bed.stack.stop_registry().await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let ch = loop {
        let c = Api::<ImageChannel>::namespaced(bed.client.clone(), &bed.ns).get("staging").await.unwrap();
        let st = c.status.clone().unwrap();
        let ready = st.conditions.iter().find(|c| c.type_ == "Ready").cloned().unwrap();
        if ready.status == "False" {
            break (st, ready);
        }
        assert!(Instant::now() < deadline, "the channel never noticed the registry is down");
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    let (st, ready) = ch;
    assert_eq!(ready.reason, "RegistryUnreachable", "{ready:?}");
    assert!(ready.message.contains(&v1), "the message says what stays in force: {}", ready.message);
    assert_eq!(st.digest.as_deref(), Some(v1.as_str()), "the last good digest stays");
    // Nothing moves: the tenant keeps its target and serves on; no apply is sent.
    coordinator_settled(&bed, "steady").await;
    let t = bed.tenants().get("prod-r").await.unwrap();
    assert_eq!(target(&t).as_deref(), Some(v1.as_str()));
    all_on(&bed, &["prod-r"], &v1, Duration::from_secs(15)).await;
    assert_eq!(applies_of(&bed, &v1).await.len(), applies_before);
    let p = get_policy(&bed, "steady").await;
    assert_eq!(record(&p, "staging").unwrap().phase, phase::COMPLETE);
}
