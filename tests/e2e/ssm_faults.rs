//! SSM misbehaving under a rollout, at the operator: a command that is undeliverable, one whose
//! delivery times out, one that runs out of time on the host, one whose output is garbled and one
//! whose output passes SSM's 24,000-character limit (the report at its end is cut off), beside a
//! host that behaves. Judged from the API server (histories, the rollout's record, the conditions
//! each tenant showed on the way) and the simulator's timeline:
//! - a command that never reached the host is no failure: it is sent again, and the tenant moves;
//! - one the host ran and that did not end in a readable success counts against `maxErrors`, with
//!   its own reason, and the tenant goes back to what it ran;
//! - the rollout completes within its budget (`maxErrors: 3`, three counted).
//!
//! And a throttling storm: every SSM call of the account refused with ThrottlingException, many in
//! a row, as a rollout starts. It slows the rollout and fails nothing.

use crate::apply::tenant_json;
use crate::harness::Bed;
use crate::hostile::TenantLog;
use crate::rollout::{all_on, follow_tag, policy, record, wait_policy};
use serde_json::json;
use std::collections::BTreeMap;
use std::time::Duration;
use tenant_operator::crd::Tenant;
use testbed::demo::launch_managed;
use testbed::stack::HostState;

/// (tenant, the fault its host gets for the next command, the result its apply of v2 records first,
/// the reason its conditions show for it, whether it counts against the budget).
const CASES: [(&str, &str, &str, &str, bool); 6] = [
    ("nd-lost", "fail_next_delivery", "NotDelivered", "CommandNotDelivered", false),
    ("nd-late", "delivery_timeout_next", "NotDelivered", "CommandNotDelivered", false),
    ("x-slow", "execution_timeout_next", "TimedOut", "CommandTimedOut", true),
    ("x-garbled", "garble_next", "ReportUnreadable", "ReportUnreadable", true),
    ("x-padded", "pad_next", "ReportUnreadable", "ReportUnreadable", true),
    ("ok-a", "", "Succeeded", "Converged", false),
];

/// A bed with its controllers, a tenant log, channel `staging` on v1 (returned) and policy `p`:
/// `limits` (maxConcurrency, maxErrors), no stagger, no canary gate.
async fn production_fleet(limits: serde_json::Value) -> (Bed, TenantLog, String) {
    production_fleet_observed_every(limits, crate::harness::test_settings().observe_interval).await
}

/// [`production_fleet`] with idle hosts observed every `observe` (a large fleet of real-bash
/// hosts observed every few seconds keeps two cores busy with observes alone).
async fn production_fleet_observed_every(limits: serde_json::Value, observe: Duration) -> (Bed, TenantLog, String) {
    let mut bed = Bed::start_without_controllers().await.unwrap();
    let settings = tenant_operator::controller::Settings { observe_interval: observe, ..bed.settings() };
    bed.start_controllers(settings).await;
    let log = TenantLog::start(&bed);
    let v1 = bed.stack.push_image("platform-tenant", "staging", &[("sim.version", "1")], false).await.unwrap();
    follow_tag(&bed, "staging", "staging").await;
    let mut spec = json!({"stagger": "0s", "canary": {"minCanaries": 0, "soak": "0s"}});
    spec.as_object_mut().unwrap().extend(limits.as_object().unwrap().clone());
    policy(&bed, "p", spec).await;
    (bed, log, v1)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_ssm_fault_ends_in_its_own_reason_and_only_what_ran_counts_against_the_budget() {
    let (bed, log, v1) = production_fleet(json!({"maxConcurrency": 10, "maxErrors": 3})).await;
    let mut ids = BTreeMap::new();
    for (name, ..) in CASES {
        let id = launch_managed(&bed.stack, name, &[], HostState::Fresh).await.unwrap();
        bed.create::<Tenant>(tenant_json(name, &id, json!({"rolloutPolicy": "p", "tier": "production"})))
            .await
            .unwrap();
        ids.insert(name, id);
    }
    let names: Vec<&str> = CASES.iter().map(|c| c.0).collect();
    all_on(&bed, &names, &v1, Duration::from_secs(300)).await;

    // Each host misbehaves on its next command, which is the apply of v2.
    for (name, fault, ..) in CASES {
        if !fault.is_empty() {
            bed.stack.set_fault(&ids[name], json!({ fault: 1, "fault_action": "apply" })).await.unwrap();
        }
    }
    let v2 = bed.stack.push_image("platform-tenant", "staging", &[("sim.version", "2")], false).await.unwrap();
    let p = wait_policy(&bed, "p", "the rollout of v2 complete", Duration::from_secs(600), |p| {
        record(p, "staging").is_some_and(|r| r.digest == v2 && r.phase == "Complete")
    })
    .await;
    let r = record(&p, "staging").unwrap();

    // Only what the hosts ran counts: the undeliverable and the late commands are not failures.
    let mut counted: Vec<&str> = CASES.iter().filter(|c| c.4).map(|c| c.0).collect();
    counted.sort();
    let mut failed: Vec<&str> = r.failed_tenants.iter().map(String::as_str).collect();
    failed.sort();
    assert_eq!(failed, counted, "{r:?}");
    assert_eq!(r.production.failed, 3);

    // The ones never reached, and the clean one, run v2; the failed ones went back to v1.
    let moved: Vec<&str> = CASES.iter().filter(|c| !c.4).map(|c| c.0).collect();
    all_on(&bed, &moved, &v2, Duration::from_secs(120)).await;
    all_on(&bed, &counted, &v1, Duration::from_secs(300)).await;

    for (name, _, first, reason, counts) in CASES {
        let t = bed.tenants().get(name).await.unwrap();
        let history = t.status.clone().unwrap_or_default().history;
        // Oldest first: the applies of v2, in the order they ended.
        let v2_applies: Vec<&str> = history
            .iter()
            .rev()
            .filter(|h| h.action == "apply" && h.digest.as_deref() == Some(v2.as_str()))
            .map(|h| h.result.as_str())
            .collect();
        assert_eq!(v2_applies.first().copied(), Some(first), "{name}: {history:?}");
        if counts {
            // Tried once: a failure is not tried again.
            assert_eq!(v2_applies.len(), 1, "{name}: {history:?}");
        } else if first == "NotDelivered" {
            // Sent again, and it went through.
            assert_eq!(v2_applies, ["NotDelivered", "Succeeded"], "{name}: {history:?}");
        }
        let seen = log.conditions(name);
        assert!(
            seen.contains(&(
                "Ready".into(),
                if reason == "Converged" { "True" } else { "False" }.into(),
                reason.into()
            )),
            "{name} never showed Ready {reason}: {seen:?}"
        );
        if first == "NotDelivered" {
            // Never stalled: nothing changed on the host, and it moves on.
            assert!(
                !seen.contains(&("Stalled".into(), "True".into(), reason.into())),
                "{name} was stalled for {reason}: {seen:?}"
            );
        }
    }

    // The simulator's side: the lost and the late commands never started on their hosts.
    let timeline = bed.stack.timeline().await.unwrap();
    for (name, fault, ..) in &CASES[..2] {
        let of_host: Vec<&serde_json::Value> =
            timeline.as_array().unwrap().iter().filter(|t| t["instance_id"].as_str() == Some(&ids[name])).collect();
        let never_ran = if *fault == "fail_next_delivery" { "Undeliverable" } else { "DeliveryTimedOut" };
        let lost: Vec<&&serde_json::Value> = of_host.iter().filter(|t| t["status_details"] == never_ran).collect();
        assert_eq!(lost.len(), 1, "{name}: {of_host:?}");
        assert!(lost[0]["start"].is_null(), "{name}: the command started: {:?}", lost[0]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_throttling_storm_slows_the_rollout_and_fails_nothing() {
    let (bed, log, v1) = production_fleet(json!({"maxConcurrency": 3, "maxErrors": 0})).await;
    let names = ["s-1", "s-2", "s-3", "s-4", "s-5", "s-6"];
    let mut ids = BTreeMap::new();
    for name in names {
        let id = launch_managed(&bed.stack, name, &[], HostState::Fresh).await.unwrap();
        bed.create::<Tenant>(tenant_json(name, &id, json!({"rolloutPolicy": "p", "tier": "production"})))
            .await
            .unwrap();
        ids.insert(name, id);
    }
    all_on(&bed, &names, &v1, Duration::from_secs(300)).await;
    let throttled = |bed: &Bed| {
        let text = bed.metrics.encode();
        text.lines()
            .filter(|l| l.starts_with("tenant_operator_aws_call_errors_total{") && l.contains("error=\"throttled\""))
            .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
            .sum::<f64>() as u64
    };
    let before = throttled(&bed);

    // The storm: the next 60 SSM calls of the account, whoever makes them, are throttled.
    let v2 = bed.stack.push_image("platform-tenant", "staging", &[("sim.version", "2")], false).await.unwrap();
    bed.stack.sim_post("/_sim/faults", json!({"throttle_next": 60})).await.unwrap();
    let p = wait_policy(&bed, "p", "the rollout of v2 complete", Duration::from_secs(900), |p| {
        record(p, "staging").is_some_and(|r| r.digest == v2 && r.phase == "Complete")
    })
    .await;
    all_on(&bed, &names, &v2, Duration::from_secs(300)).await;
    let left = bed.stack.sim_get("/_sim/faults").await.unwrap();
    assert_eq!(left["throttle_next"], 0, "the storm was not used up: {left}");

    // Nothing failed: no budget spent, no failed apply, no tenant ever stalled or failed by it.
    let r = record(&p, "staging").unwrap();
    assert!(r.failed_tenants.is_empty() && r.production.failed == 0, "{r:?}");
    for name in names {
        let history = bed.tenants().get(name).await.unwrap().status.unwrap_or_default().history;
        assert!(history.iter().all(|h| h.result == "Succeeded"), "{name}: {history:?}");
        for (type_, status, reason) in log.conditions(name) {
            assert!(!(type_ == "Stalled" && status == "True"), "{name} stalled: {reason}");
            assert!(!reason.contains("Throttl") && !reason.contains("Failed"), "{name}: {type_}={status} {reason}");
        }
    }
    // One apply of v2 per host: a throttled call is tried again, never sent twice.
    let cmds = crate::chaos::commands(&bed).await;
    for (name, id) in &ids {
        let applies = cmds.iter().filter(|c| &c.instance == id && c.action == "apply").count();
        assert_eq!(applies, 2, "{name}: one apply of v1, one of v2");
    }
    // The metrics say what happened.
    assert!(throttled(&bed) > before, "{}", bed.metrics.encode());
}

/// k of 50 failing in one batch: 53 production tenants under `maxConcurrency: 50` and
/// `maxErrors: 2`. On v2, three hosts of the first batch (admitted by name: `k-00` to `k-49`) fail
/// their apply, each its own way. The rollout halts with exactly those three counted, each tenant
/// showing its own reason; the batch's 47 others converge on v2; the three tenants the batch left
/// out are never admitted. Observes of the new fleet share SendCommands of at most 50 instances.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn k_of_fifty_failing_in_one_batch_halts_with_exactly_those_counted() {
    let (bed, log, v1) =
        production_fleet_observed_every(json!({"maxConcurrency": 50, "maxErrors": 2}), Duration::from_secs(60)).await;
    let names: Vec<String> = (0..53).map(|n| format!("k-{n:02}")).collect();
    let mut ids = BTreeMap::new();
    for name in &names {
        let id = launch_managed(&bed.stack, name, &[], HostState::Fresh).await.unwrap();
        ids.insert(name.clone(), id);
    }
    for name in &names {
        bed.create::<Tenant>(tenant_json(name, &ids[name], json!({"rolloutPolicy": "p", "tier": "production"})))
            .await
            .unwrap();
    }
    let all: Vec<&str> = names.iter().map(String::as_str).collect();
    all_on(&bed, &all, &v1, Duration::from_secs(900)).await;

    // (tenant, fault on its apply of v2, the reason its conditions show)
    let failing = [
        ("k-10", "execution_timeout_next", "CommandTimedOut"),
        ("k-25", "garble_next", "ReportUnreadable"),
        ("k-40", "unhealthy", "RolledBack"),
    ];
    for (name, fault, _) in failing {
        let fault = if fault == "unhealthy" {
            json!({"unhealthy": true})
        } else {
            json!({ fault: 1, "fault_action": "apply" })
        };
        bed.stack.set_fault(&ids[name], fault).await.unwrap();
    }
    let v2 = bed.stack.push_image("platform-tenant", "staging", &[("sim.version", "2")], false).await.unwrap();
    let p = wait_policy(&bed, "p", "the rollout of v2 halted", Duration::from_secs(900), |p| {
        record(p, "staging").is_some_and(|r| r.digest == v2 && r.phase == "Halted")
    })
    .await;
    let r = record(&p, "staging").unwrap();
    let mut failed: Vec<&str> = r.failed_tenants.iter().map(String::as_str).collect();
    failed.sort();
    assert_eq!(failed, ["k-10", "k-25", "k-40"], "{r:?}");

    // The batch's others converge; the three left out keep v1 and were never given v2 as target.
    let others: Vec<&str> = all[..50].iter().copied().filter(|n| !failed.contains(n)).collect();
    all_on(&bed, &others, &v2, Duration::from_secs(600)).await;
    let p = wait_policy(&bed, "p", "the rollout still halted", Duration::from_secs(10), |p| {
        record(p, "staging").is_some_and(|r| r.digest == v2)
    })
    .await;
    let r = record(&p, "staging").unwrap();
    assert_eq!((r.phase.as_str(), r.failed_tenants.len()), ("Halted", 3), "{r:?}");
    for name in &all[50..] {
        let t = bed.tenants().get(name).await.unwrap();
        let st = t.status.unwrap_or_default();
        assert_ne!(st.target.as_ref().map(|t| t.digest.as_str()), Some(v2.as_str()), "{name} was admitted: {st:?}");
        assert_eq!(st.running.as_deref(), Some(tenant_operator::core::report::short_digest(&v1).as_str()), "{name}");
    }
    for (name, _, reason) in failing {
        let seen = log.conditions(name);
        // An unhealthy host under BlueGreen fails on the idle slot (ApplyFailed); in place it is
        // rolled back.
        let reasons: &[&str] = if reason == "RolledBack" { &["RolledBack", "ApplyFailed"] } else { &[reason] };
        assert!(
            reasons.iter().any(|r| seen.contains(&("Ready".into(), "False".into(), (*r).into()))),
            "{name} never showed Ready {reasons:?}: {seen:?}"
        );
        let history = bed.tenants().get(name).await.unwrap().status.unwrap_or_default().history;
        let v2_applies = history.iter().filter(|h| h.action == "apply" && h.digest.as_deref() == Some(v2.as_str()));
        assert_eq!(v2_applies.count(), 1, "{name}: a failure is not tried again: {history:?}");
    }

    // SSM's rule at the simulator: no command names more than 50 instances; observes were shared.
    let cmds = crate::chaos::commands(&bed).await;
    let mut per_command: BTreeMap<(&str, &str), usize> = BTreeMap::new();
    for c in &cmds {
        *per_command.entry((c.id.as_str(), c.action.as_str())).or_default() += 1;
    }
    assert!(per_command.values().all(|n| *n <= 50), "{per_command:?}");
    let widest_observe = per_command.iter().filter(|((_, a), _)| *a == "observe").map(|(_, n)| *n).max();
    assert!(widest_observe.is_some_and(|n| n > 1), "no observe shared a command: {per_command:?}");
    // The batch's applies of v2 shared SendCommands whose text names the digest, nothing of a host.
    let timeline = bed.stack.timeline().await.unwrap();
    let mut v2_commands: BTreeMap<&str, usize> = BTreeMap::new();
    for r in timeline.as_array().unwrap() {
        let p = &r["parameters"];
        let digest = p["digest"][0].as_str().or(p["digest"].as_str()).unwrap_or("");
        if crate::hostile::action_of(r) == "apply" && digest == v2 {
            *v2_commands.entry(r["command_id"].as_str().unwrap()).or_default() += 1;
        }
    }
    let sent: usize = v2_commands.values().sum();
    // How many commands depends on how the reconciles spread in time (a figure, printed); that
    // applies share commands does not.
    println!("the first batch's {sent} applies of v2 went out in {} SendCommands", v2_commands.len());
    assert_eq!(sent, 50, "{v2_commands:?}");
    assert!(v2_commands.values().any(|n| *n > 1), "no apply shared a command: {v2_commands:?}");
}
