//! Smoke checks after every apply: by path on the new slot's local port, no redirects followed, an
//! optional bearer from the tenant's own Secret, the expected status each. A failing check rolls the
//! tenant back on the host (in place) or never switches (blue/green); the apply's record, the policy's
//! halt and its event name the failed check; the rollout coordinator then re-admits the previous
//! digest; the bearer never shows in a command, the host log or any other file of the bed.

use crate::apply::{channel_at, http_get, secret, tenant_json};
use crate::bluegreen::serving;
use crate::harness::{Bed, cond};
use crate::hostile::files_under;
use kube::api::{Api, ListParams, PostParams};
use serde_json::json;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use tenant_operator::crd::{RolloutPolicy, Slot, Tenant};
use testbed::demo::launch_managed;
use testbed::stack::HostState;

const BEARER: &str = "smoke-bearer-5d41402abc4b2a76";

fn converged_on(digest: String) -> impl Fn(&Tenant) -> bool {
    move |t: &Tenant| {
        cond(t, "Ready").is_some_and(|c| c.1 == "Converged")
            && t.status.as_ref().is_some_and(|s| s.in_flight.is_none())
            && serving(t).is_some_and(|(_, d)| d == digest)
    }
}

/// The apply record of `digest` once it failed: (result, message).
fn failed_apply(t: &Tenant, digest: &str) -> Option<(String, String)> {
    t.status
        .as_ref()?
        .history
        .iter()
        .find(|h| h.digest.as_deref() == Some(digest) && h.result != "Succeeded")
        .map(|h| (h.result.clone(), h.message.clone().unwrap_or_default()))
}

/// The policy's events: (reason, note).
async fn policy_events(bed: &Bed, name: &str) -> Vec<(String, String)> {
    let api: Api<k8s_openapi::api::events::v1::Event> = Api::all(bed.client.clone());
    api.list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(name))
        .filter(|e| e.regarding.as_ref().and_then(|r| r.kind.as_deref()) == Some("RolloutPolicy"))
        .map(|e| (e.reason.unwrap_or_default(), e.note.unwrap_or_default()))
        .collect()
}

/// The bad digest failed on the host naming the check (`result` as the tenant's history records it),
/// the policy halted with an event naming tenant and check, and the tenant is back on `good`.
async fn failed_by_the_smoke_check_and_back_on(bed: &Bed, slug: &str, bad: &str, good: &str, result: &str) -> Tenant {
    let t = bed
        .wait_tenant(slug, Duration::from_secs(90), "the failed apply", |t| failed_apply(t, bad).is_some())
        .await
        .unwrap();
    let (res, msg) = failed_apply(&t, bad).unwrap();
    assert_eq!(res, result, "{msg}");
    assert!(msg.contains("smoke-failed:api-with-bearer"), "{msg}");
    let t = bed
        .wait_tenant(slug, Duration::from_secs(90), "the previous digest again", converged_on(good.into()))
        .await
        .unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let events = policy_events(bed, slug).await;
        if events
            .iter()
            .any(|(r, n)| r == "TenantFailed" && n.contains(slug) && n.contains("smoke-failed:api-with-bearer"))
        {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "no TenantFailed event naming the check: {events:?}");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    t
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && hay.windows(needle.len()).any(|w| w == needle)
}

/// The bearer (as is, and base64) appears nowhere but in the container's own config: not in the
/// command timeline, not in the host's agent log, no header file is left behind.
async fn bearer_never_leaks(bed: &Bed, id: &str) {
    use base64::Engine;
    let needles = [BEARER.to_string(), base64::engine::general_purpose::STANDARD.encode(BEARER)];
    let timeline = bed.stack.timeline().await.unwrap().to_string();
    let mut files = Vec::new();
    files_under(&bed.stack.workdir, &mut files);
    let mut agent_logs = 0;
    for f in &files {
        let rel = f.strip_prefix(&bed.stack.workdir).unwrap().to_string_lossy().into_owned();
        if rel.contains("var/lib/docker-sim/containers/") && rel.ends_with("/config.json") {
            continue;
        }
        assert!(!rel.contains("/hdr."), "a header file was left on the host: {rel}");
        let Ok(bytes) = std::fs::read(f) else { continue };
        for n in &needles {
            assert!(!contains(&bytes, n.as_bytes()), "the bearer is in {rel}");
        }
        if rel.ends_with("var/log/tenant-operator/agent.log") {
            agent_logs += 1;
        }
    }
    assert!(agent_logs > 0, "the host log was not scanned");
    for n in &needles {
        assert!(!timeline.contains(n.as_str()), "the bearer is in the command timeline");
    }
    let log = std::fs::read_to_string(bed.stack.host_dir(id).join("var/log/tenant-operator/agent.log")).unwrap();
    assert!(log.contains("smoke check api-with-bearer: expected 200, got 200"), "{log}");
}

/// A listener standing for "anywhere else": counts the connections made to it.
async fn trap() -> (u16, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let hits = Arc::new(AtomicUsize::new(0));
    let counter = hits.clone();
    tokio::spawn(async move {
        while let Ok((_sock, _)) = listener.accept().await {
            counter.fetch_add(1, Ordering::SeqCst);
        }
    });
    (port, hits)
}

async fn setup(
    bed: &Bed,
    slug: &str,
    strategy: &str,
    trap_port: u16,
    good_labels: &[(&str, &str)],
) -> (String, String, String) {
    let mut labels = vec![("sim.health", "healthy"), ("sim.bearer-env", "API_TOKEN")];
    labels.extend_from_slice(good_labels);
    let good = bed.stack.push_image("platform-tenant", &format!("{slug}-good"), &labels, false).await.unwrap();
    labels.extend_from_slice(&[("sim.fail-paths", "/api/orgs"), ("sim.version", "2-broken")]);
    let bad = bed.stack.push_image("platform-tenant", &format!("{slug}-bad"), &labels, false).await.unwrap();
    secret(bed, &format!("{slug}-env"), &[("API_TOKEN", BEARER)]).await;
    let policy: RolloutPolicy = serde_json::from_value(json!({
        "apiVersion": "fleet.molecule.ai/v1alpha1", "kind": "RolloutPolicy",
        "metadata": {"name": slug, "namespace": bed.ns},
        "spec": {
            "strategy": strategy, "healthCheck": {"timeout": "10s"},
            "smokeChecks": [
                {"name": "api-with-bearer", "path": "/api/orgs?limit=1", "expectStatus": 200, "bearerEnv": "API_TOKEN"},
                {"name": "liveness-needs-auth", "path": "/api/orgs", "expectStatus": 401},
                {"name": "redirect-not-followed", "path": "/redirect", "expectStatus": 302, "method": "HEAD", "bearerEnv": "API_TOKEN"},
                // Looks like an authority, is a path: the slot app answers 404, nothing else is asked.
                {"name": "stays-local", "path": format!("/@127.0.0.1:{trap_port}/x"), "expectStatus": 404, "bearerEnv": "API_TOKEN"},
            ]
        }
    }))
    .unwrap();
    Api::<RolloutPolicy>::namespaced(bed.client.clone(), &bed.ns)
        .create(&PostParams::default(), &policy)
        .await
        .unwrap();
    channel_at(bed, "staging", &good).await;
    let id = launch_managed(&bed.stack, slug, &[], HostState::Fresh).await.unwrap();
    bed.create::<Tenant>(tenant_json(
        slug,
        &id,
        json!({"tier": "canary", "rolloutPolicy": slug,
               "container": {"envFrom": [{"secretRef": {"name": format!("{slug}-env")}}]}}),
    ))
    .await
    .unwrap();
    (id, good, bad)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smoke_checks_pass_a_good_image_and_roll_back_a_failing_one_in_place() {
    let bed = Bed::start().await.unwrap();
    let (trap_port, trapped) = trap().await;
    let (id, good, bad) = setup(&bed, "smoky", "InPlace", trap_port, &[]).await;

    // The good image passes all three checks: bearer 200, no bearer 401, the redirect seen, not followed.
    let t =
        bed.wait_tenant("smoky", Duration::from_secs(90), "the good image", converged_on(good.clone())).await.unwrap();
    assert_eq!(t.status.as_ref().unwrap().history[0].result, "Succeeded");
    let log = std::fs::read_to_string(bed.stack.host_dir(&id).join("var/log/tenant-operator/agent.log")).unwrap();
    for line in [
        "smoke check liveness-needs-auth: expected 401, got 401",
        "smoke check redirect-not-followed: expected 302, got 302",
        "smoke check stays-local: expected 404, got 404",
    ] {
        assert!(log.contains(line), "{line:?} not in the host log:\n{log}");
    }

    // The broken image is healthy but fails the bearer check: rolled back on the host, the apply
    // and the policy say which check, and the host serves the previous digest.
    channel_at(&bed, "staging", &bad).await;
    let t = failed_by_the_smoke_check_and_back_on(&bed, "smoky", &bad, &good, "RolledBack").await;
    let blue = t.status.as_ref().unwrap().observed.as_ref().unwrap().blue.clone().unwrap();
    assert_eq!(blue.digest.as_deref(), Some(good.as_str()));
    let addr = bed.stack.host_addr(&id);
    assert_eq!(http_get(&addr, 8080, "/health").0, 200);
    assert_eq!(http_get(&addr, 8080, "/api/orgs").0, 401, "the previous build (no bearer) answers 401, not 500");
    assert_eq!(trapped.load(Ordering::SeqCst), 0, "a smoke check reached another address");
    bearer_never_leaks(&bed, &id).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_smoke_check_never_switches_blue_green() {
    let bed = Bed::start().await.unwrap();
    let (trap_port, _) = trap().await;
    let (id, good, bad) = setup(&bed, "smokybg", "BlueGreen", trap_port, &[]).await;
    let t = bed
        .wait_tenant("smokybg", Duration::from_secs(90), "the good image", converged_on(good.clone()))
        .await
        .unwrap();
    let (slot, _) = serving(&t).unwrap();

    channel_at(&bed, "staging", &bad).await;
    let t = failed_by_the_smoke_check_and_back_on(&bed, "smokybg", &bad, &good, "Failed").await;
    // The active slot never stopped serving the good digest; the new slot is gone.
    assert_eq!(serving(&t), Some((slot, good.clone())));
    let obs = t.status.as_ref().unwrap().observed.clone().unwrap();
    let other = if slot == Slot::Blue { obs.green } else { obs.blue };
    assert!(other.is_none(), "the failed slot was left behind: {other:?}");
    let routing = http_get(&bed.stack.host_addr(&id), 8000, "/health");
    assert_eq!(routing.0, 200);
    assert!(routing.1.contains(&good), "the router serves {}", routing.1);
    bearer_never_leaks(&bed, &id).await;
}
