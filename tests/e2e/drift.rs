//! What the host runs drifts, or the world gets in the way: multi-arch indexes, hand edits on the
//! host, deletion, throttling.

use crate::apply::{channel_at, http_get, tenant_json};
use crate::harness::{Bed, cond};
use crate::hostile::{TenantLog, action_of, converged, host_docker, parameters_under};
use kube::api::DeleteParams;
use serde_json::{Value, json};
use std::time::Duration;
use tenant_operator::crd::Tenant;
use testbed::demo::launch_managed;
use testbed::stack::HostState;

async fn applies(bed: &Bed) -> Vec<Value> {
    let t = bed.stack.timeline().await.unwrap();
    t.as_array().unwrap().iter().filter(|r| action_of(r) == "apply").cloned().collect()
}

async fn count(bed: &Bed, action: &str) -> usize {
    let t = bed.stack.timeline().await.unwrap();
    t.as_array().unwrap().iter().filter(|r| action_of(r) == action).count()
}

/// The (digest label, config digest) of the container in `slot`, as the host's docker reports them.
fn slot_container(bed: &Bed, instance: &str, slot: &str) -> Option<(String, String, String)> {
    let dir = bed.stack.host_dir(instance).join("var/lib/docker-sim/containers");
    for entry in std::fs::read_dir(dir).ok()?.flatten() {
        let config: Value = serde_json::from_slice(&std::fs::read(entry.path().join("config.json")).ok()?).ok()?;
        if config["Config"]["Labels"]["fleet.molecule.ai/slot"] == json!(slot) {
            return Some((
                config["Id"].as_str().unwrap_or_default().to_string(),
                config["Config"]["Labels"]["fleet.molecule.ai/digest"].as_str().unwrap_or_default().to_string(),
                config["Image"].as_str().unwrap_or_default().to_string(),
            ));
        }
    }
    None
}

fn health_digest(bed: &Bed, instance: &str) -> Option<String> {
    let (code, body) = http_get(&bed.stack.host_addr(instance), 8080, "/health");
    if code != 200 {
        return None;
    }
    serde_json::from_str::<Value>(&body).ok()?["digest"].as_str().map(str::to_string)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_multi_arch_index_converges_once_and_stays_converged() {
    let bed = Bed::start().await.unwrap();
    let log = TenantLog::start(&bed);
    let index = bed.stack.push_image("platform-tenant", "staging", &[("sim.health", "healthy")], true).await.unwrap();
    channel_at(&bed, "staging", &index).await;
    let id = launch_managed(&bed.stack, "multi", &[], HostState::Fresh).await.unwrap();
    bed.create::<Tenant>(tenant_json("multi", &id, json!({}))).await.unwrap();
    let t = bed.wait_tenant("multi", Duration::from_secs(90), "Ready=True Converged", converged).await.unwrap();
    let st = t.status.unwrap();
    assert_eq!(st.observed.unwrap().blue.unwrap().digest.as_deref(), Some(index.as_str()));
    // The label carries the index digest; the image docker runs is the (different) config digest.
    let (_, label, image_id) = slot_container(&bed, &id, "blue").expect("the blue container");
    assert_eq!(label, index);
    assert_ne!(image_id, index, "the simulator should run the platform image, not the index");
    assert_eq!(health_digest(&bed, &id).as_deref(), Some(index.as_str()));

    // Eight more observe cycles (3 s apart in tests, slower on a loaded machine): still converged,
    // never a second apply.
    let observes_before = count(&bed, "observe").await;
    let until = tokio::time::Instant::now() + Duration::from_secs(150);
    while count(&bed, "observe").await < observes_before + 8 {
        assert!(tokio::time::Instant::now() < until, "fewer than 8 observes in 150 s");
        let t = bed.tenants().get("multi").await.unwrap();
        assert!(converged(&t), "left Converged: {:?}", t.status.map(|s| s.conditions));
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert_eq!(applies(&bed).await.len(), 1, "{}", bed.stack.timeline().await.unwrap());
    // Ready never went back to False after the first convergence.
    let seen = log.of("multi");
    let first = seen.iter().position(converged).unwrap();
    assert!(seen[first..].iter().all(converged), "Ready flapped after convergence");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hand_edit_on_the_host_is_detected_and_reverted() {
    let bed = Bed::start().await.unwrap();
    let log = TenantLog::start(&bed);
    let d1 = bed.stack.push_image("platform-tenant", "v1", &[("sim.health", "healthy")], false).await.unwrap();
    let d2 = bed
        .stack
        .push_image("platform-tenant", "v2", &[("sim.health", "healthy"), ("sim.version", "2")], false)
        .await
        .unwrap();
    channel_at(&bed, "staging", &d1).await;
    let id = launch_managed(&bed.stack, "drift", &[], HostState::Fresh).await.unwrap();
    bed.create::<Tenant>(tenant_json("drift", &id, json!({}))).await.unwrap();
    bed.wait_tenant("drift", Duration::from_secs(90), "Ready=True Converged", converged).await.unwrap();
    assert_eq!(applies(&bed).await.len(), 1);
    let addr = bed.stack.host_addr(&id);

    // 1. Someone removes the container by hand.
    let (cid, _, _) = slot_container(&bed, &id, "blue").unwrap();
    host_docker(&bed, &id, &["rm", "-f", &cid]);
    assert_eq!(http_get(&addr, 8080, "/health").0, 0, "the container still answers");
    let seen_before = log.of("drift").len();
    bed.wait_tenant("drift", Duration::from_secs(60), "converged again after the removal", |t| {
        converged(t) && t.status.as_ref().is_some_and(|s| s.history.len() >= 2)
    })
    .await
    .unwrap();
    let went_false = log.of("drift")[seen_before..].iter().any(|t| cond(t, "Ready").is_some_and(|c| c.0 == "False"));
    assert!(went_false, "Ready never went False while the host had no container");
    assert_eq!(applies(&bed).await.len(), 2);
    assert_eq!(health_digest(&bed, &id).as_deref(), Some(d1.as_str()));

    // 2. Someone runs another image in the slot, labelled honestly.
    let (cid, _, _) = slot_container(&bed, &id, "blue").unwrap();
    host_docker(&bed, &id, &["rm", "-f", &cid]);
    let image = format!("{}/platform-tenant@{d2}", bed.stack.registry);
    host_docker(
        &bed,
        &id,
        &[
            "run",
            "-d",
            "--name",
            "app-blue",
            "-p",
            &format!("{addr}:8080:8080"),
            "--label",
            "fleet.molecule.ai/slot=blue",
            "--label",
            &format!("fleet.molecule.ai/digest={d2}"),
            "--label",
            "fleet.molecule.ai/port=8080",
            "--label",
            "fleet.molecule.ai/health-path=/health",
            &image,
        ],
    );
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while health_digest(&bed, &id).as_deref() != Some(d2.as_str()) {
        assert!(tokio::time::Instant::now() < deadline, "the hand-run container never served");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let seen_before = log.of("drift").len();
    let t = bed
        .wait_tenant("drift", Duration::from_secs(60), "converged again after the swap", |t| {
            converged(t) && t.status.as_ref().is_some_and(|s| s.history.len() >= 3)
        })
        .await
        .unwrap();
    let after = log.of("drift");
    assert!(
        after[seen_before..].iter().any(|t| cond(t, "Ready").is_some_and(|c| c.0 == "False")),
        "Ready never went False while the slot ran another image"
    );
    assert!(
        after[seen_before..].iter().any(|t| t
            .status
            .as_ref()
            .and_then(|s| s.observed.as_ref())
            .and_then(|o| o.blue.as_ref())
            .is_some_and(|b| b.digest.as_deref() == Some(d2.as_str()))),
        "the operator never observed the foreign digest"
    );
    assert_eq!(applies(&bed).await.len(), 3);
    assert_eq!(t.status.unwrap().observed.unwrap().blue.unwrap().digest.as_deref(), Some(d1.as_str()));
    assert_eq!(health_digest(&bed, &id).as_deref(), Some(d1.as_str()));
    let (_, label, _) = slot_container(&bed, &id, "blue").unwrap();
    assert_eq!(label, d1);

    // 3. Someone stops it: not running is drift too.
    let (cid, _, _) = slot_container(&bed, &id, "blue").unwrap();
    host_docker(&bed, &id, &["stop", &cid]);
    bed.wait_tenant("drift", Duration::from_secs(60), "converged again after the stop", |t| {
        converged(t) && t.status.as_ref().is_some_and(|s| s.history.len() >= 4)
    })
    .await
    .unwrap();
    assert_eq!(applies(&bed).await.len(), 4);
    assert_eq!(health_digest(&bed, &id).as_deref(), Some(d1.as_str()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_a_tenant_removes_its_parameters_and_leaves_the_host_running() {
    let bed = Bed::start().await.unwrap();
    let digest = bed.stack.push_image("platform-tenant", "staging", &[("sim.health", "healthy")], false).await.unwrap();
    channel_at(&bed, "staging", &digest).await;
    crate::hostile::aws_cli(
        &bed,
        &["ssm", "put-parameter", "--name", "/tenant-operator/delta-two/keep", "--type", "String", "--value", "x"],
    );
    crate::hostile::aws_cli(
        &bed,
        &["ssm", "put-parameter", "--name", "/tenant-operator/deltax", "--type", "String", "--value", "x"],
    );
    let id = launch_managed(&bed.stack, "delta", &[], HostState::Fresh).await.unwrap();
    bed.create::<Tenant>(tenant_json("delta", &id, json!({"container": {"env": [{"name": "A", "value": "1"}]}})))
        .await
        .unwrap();
    // A witness beside it: its observes show the controllers still at work after the deletion.
    let witness = launch_managed(&bed.stack, "witness", &[], HostState::Fresh).await.unwrap();
    bed.create::<Tenant>(tenant_json("witness", &witness, json!({}))).await.unwrap();
    bed.wait_tenant("delta", Duration::from_secs(90), "Ready=True Converged", converged).await.unwrap();
    // A second revision (the one revision parameter written again), and a parameter an older
    // operator left under the tenant's prefix: both go with the tenant.
    crate::hostile::aws_cli(
        &bed,
        &["ssm", "put-parameter", "--name", "/tenant-operator/delta/revisions/old", "--type", "String", "--value", "x"],
    );
    bed.tenants()
        .patch(
            "delta",
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(json!({"spec": {"container": {"env": [{"name": "A", "value": "2"}]}}})),
        )
        .await
        .unwrap();
    bed.wait_tenant("delta", Duration::from_secs(90), "the second revision", |t| {
        converged(t) && t.status.as_ref().is_some_and(|s| s.history.len() >= 2)
    })
    .await
    .unwrap();
    let before = parameters_under(&bed, "/tenant-operator/delta");
    assert_eq!(before.len(), 2, "{before:?}");
    assert!(before.contains(&"/tenant-operator/delta/revision".to_string()), "{before:?}");
    assert!(before.iter().all(|n| n.starts_with("/tenant-operator/delta/")), "{before:?}");

    bed.tenants().delete("delta", &DeleteParams::default()).await.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while bed.tenants().get_opt("delta").await.unwrap().is_some() {
        assert!(tokio::time::Instant::now() < deadline, "the tenant was never finalized");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(parameters_under(&bed, "/tenant-operator/delta"), Vec::<String>::new());
    assert_eq!(parameters_under(&bed, "/tenant-operator/delta-two"), vec!["/tenant-operator/delta-two/keep"]);
    let rest = crate::hostile::aws_cli(&bed, &["ssm", "get-parameter", "--name", "/tenant-operator/deltax"]);
    assert_eq!(rest["Parameter"]["Value"], "x");

    // The host keeps serving, and nothing more is sent to it while the witness is observed twice.
    let of = |t: &Value, host: &str| -> usize {
        t.as_array().unwrap().iter().filter(|r| r["instance_id"].as_str() == Some(host)).count()
    };
    let t = bed.stack.timeline().await.unwrap();
    let (sent, witnessed) = (of(&t, &id), of(&t, &witness));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    loop {
        let t = bed.stack.timeline().await.unwrap();
        if of(&t, &witness) >= witnessed + 2 {
            assert_eq!(of(&t, &id), sent, "commands after deletion: {t}");
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "the witness was not observed twice: {t}");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert_eq!(http_get(&bed.stack.host_addr(&id), 8080, "/health").0, 200, "the host stopped serving");
    let (_, label, _) = slot_container(&bed, &id, "blue").unwrap();
    assert_eq!(label, digest);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn throttling_is_backed_off_and_never_a_failure() {
    let bed = Bed::start().await.unwrap();
    let log = TenantLog::start(&bed);
    let d1 = bed.stack.push_image("platform-tenant", "v1", &[("sim.health", "healthy")], false).await.unwrap();
    let d2 = bed
        .stack
        .push_image("platform-tenant", "v2", &[("sim.health", "healthy"), ("sim.version", "2")], false)
        .await
        .unwrap();
    channel_at(&bed, "staging", &d1).await;
    let id = launch_managed(&bed.stack, "tango", &[], HostState::Fresh).await.unwrap();
    bed.stack.sim_post("/_sim/faults", json!({"throttle_next": 3})).await.unwrap();
    bed.stack.set_fault(&id, json!({"throttle_next": 2})).await.unwrap();
    bed.create::<Tenant>(tenant_json("tango", &id, json!({}))).await.unwrap();
    bed.wait_tenant("tango", Duration::from_secs(240), "Ready=True Converged", converged).await.unwrap();

    // Throttled again in the middle of the next apply: as soon as the intent is written.
    channel_at(&bed, "staging", &d2).await;
    bed.wait_tenant("tango", Duration::from_secs(60), "an apply in flight", |t| {
        t.status.as_ref().and_then(|s| s.in_flight.as_ref()).is_some_and(|f| f.action == "apply")
    })
    .await
    .unwrap();
    bed.stack.sim_post("/_sim/faults", json!({"throttle_next": 3})).await.unwrap();
    bed.stack.set_fault(&id, json!({"throttle_next": 3})).await.unwrap();
    let t = bed
        .wait_tenant("tango", Duration::from_secs(240), "convergence on v2", |t| {
            converged(t) && t.status.as_ref().and_then(|s| s.target.as_ref()).is_some_and(|x| x.digest == d2)
        })
        .await
        .unwrap();
    let sim_get = |path: String| {
        let out = std::process::Command::new("curl").args(["-sf", &format!("{}{path}", bed.stack.ssm_url)]).output();
        serde_json::from_slice::<Value>(&out.unwrap().stdout).unwrap()
    };
    assert_eq!(sim_get("/_sim/faults".into())["throttle_next"], 0, "the global throttle was never used up");
    assert_eq!(sim_get(format!("/_sim/hosts/{id}"))["faults"]["throttle_next"], 0, "the host's throttle was never hit");

    let st = t.status.unwrap();
    assert!(st.history.iter().all(|h| h.result == "Succeeded"), "{:?}", st.history);
    let seen = log.conditions("tango");
    let allowed_ready = ["Observing", "Progressing", "Applying", "Converged", "Serving", "NoTarget"];
    for (type_, status, reason) in &seen {
        if type_ == "Ready" {
            assert!(allowed_ready.contains(&reason.as_str()), "Ready showed {status} {reason}: {seen:?}");
        }
        if type_ == "Stalled" {
            assert_eq!(status, "False", "stalled by throttling: {seen:?}");
        }
        if type_ == "InstanceReachable" {
            assert_eq!(status, "True", "throttling made the instance unreachable: {seen:?}");
        }
        assert!(!reason.contains("Throttl") && !reason.contains("Failed"), "{type_}={status} {reason}: {seen:?}");
    }
    // One apply per digest: a throttled call is retried, never sent twice.
    assert_eq!(applies(&bed).await.len(), 2, "{}", bed.stack.timeline().await.unwrap());
}

/// PutParameter calls so far, from the operator's own counter.
fn puts(bed: &Bed) -> u64 {
    let text = bed.metrics.encode();
    let line = text.lines().find(|l| l.starts_with("tenant_operator_aws_calls_total{operation=\"PutParameter\"}"));
    line.and_then(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok()).unwrap_or(0.0) as u64
}

/// A tenant has one revision parameter: each env change writes it again (a new version of the same
/// name), a rollout that changes only the digest writes nothing (the command carries the digest),
/// and the host names each revision it applied as the operator does: the parameter's base, then
/// the digest's first 32 hex digits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_revision_parameter_written_again_only_when_the_env_changes() {
    let bed = Bed::start().await.unwrap();
    let digest = bed.stack.push_image("platform-tenant", "staging", &[("sim.health", "healthy")], false).await.unwrap();
    channel_at(&bed, "staging", &digest).await;
    let id = launch_managed(&bed.stack, "echo-r", &[], HostState::Fresh).await.unwrap();
    let env = |n: usize| json!({"container": {"env": [{"name": "GEN", "value": n.to_string()}]}});
    bed.create::<Tenant>(tenant_json("echo-r", &id, env(0))).await.unwrap();
    bed.wait_tenant("echo-r", Duration::from_secs(90), "Ready=True Converged", converged).await.unwrap();
    let applied = |n: usize| {
        move |t: &Tenant| {
            converged(t)
                && t.status
                    .as_ref()
                    .is_some_and(|s| s.history.first().is_some_and(|h| h.result == "Succeeded") && s.history.len() > n)
        }
    };
    // Three env changes, one after the other: three writes of the one parameter.
    let before = puts(&bed);
    for n in 1..=3 {
        bed.tenants()
            .patch("echo-r", &kube::api::PatchParams::default(), &kube::api::Patch::Merge(json!({"spec": env(n)})))
            .await
            .unwrap();
        bed.wait_tenant("echo-r", Duration::from_secs(90), "the new env applied", applied(n)).await.unwrap();
    }
    assert_eq!(puts(&bed) - before, 3, "one write per env change");
    // A new digest, the same env: no write at all.
    let moved = bed.stack.push_image("platform-tenant", "staging", &[("sim.version", "2")], false).await.unwrap();
    channel_at(&bed, "staging", &moved).await;
    bed.wait_tenant("echo-r", Duration::from_secs(90), "the new digest applied", applied(4)).await.unwrap();
    assert_eq!(puts(&bed) - before, 3, "a digest-only change wrote the revision parameter");

    let st = bed.tenants().get("echo-r").await.unwrap().status.unwrap();
    assert_eq!(parameters_under(&bed, "/tenant-operator/echo-r"), ["/tenant-operator/echo-r/revision"]);
    let revs: Vec<&str> = st.history.iter().filter(|h| h.action == "apply").map(|h| h.revision.as_str()).collect();
    assert_eq!(revs.len(), 5, "{:?}", st.history);
    // Newest first: the digest move kept the base; each env change made a new one.
    assert_eq!(revs[0][..32], revs[1][..32], "{revs:?}");
    assert_eq!(&revs[0][32..], &moved[7..39], "{revs:?}");
    let bases: std::collections::BTreeSet<&str> = revs[1..].iter().map(|r| &r[..32]).collect();
    assert_eq!(bases.len(), 4, "{revs:?}");
    // The host applied exactly what the operator named.
    let observed = st.observed.as_ref().and_then(|o| o.applied_revision.as_deref());
    assert_eq!(observed, Some(revs[0]));
}
