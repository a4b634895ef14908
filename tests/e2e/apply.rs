//! Tenant reconciliation onto real (simulated) hosts: revision, env from Secrets, rollback.

use crate::harness::{Bed, cond};
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::json;
use std::collections::BTreeMap;
use std::time::Duration;
use tenant_operator::crd::{ImageChannel, Tenant};
use testbed::demo::launch_managed;
use testbed::stack::HostState;

/// A channel whose status digest is set directly (the channel controller is tested on its own).
pub async fn channel_at(bed: &Bed, name: &str, digest: &str) {
    let api: Api<ImageChannel> = Api::namespaced(bed.client.clone(), &bed.ns);
    if api.get_opt(name).await.unwrap().is_none() {
        let ch: ImageChannel = serde_json::from_value(json!({
            "apiVersion": "fleet.molecule.ai/v1alpha1", "kind": "ImageChannel",
            "metadata": {"name": name, "namespace": bed.ns},
            "spec": {"image": format!("{}/platform-tenant", bed.stack.registry), "tag": name}
        }))
        .unwrap();
        api.create(&PostParams::default(), &ch).await.unwrap();
    }
    let patch = json!({"status": {"digest": digest}});
    api.patch_status(name, &PatchParams::default(), &Patch::Merge(&patch)).await.unwrap();
}

pub async fn secret(bed: &Bed, name: &str, data: &[(&str, &str)]) {
    let api: Api<k8s_openapi::api::core::v1::Secret> = Api::namespaced(bed.client.clone(), &bed.ns);
    let string_data: BTreeMap<String, String> = data.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    let s: k8s_openapi::api::core::v1::Secret = serde_json::from_value(json!({
        "metadata": {"name": name, "namespace": bed.ns},
        "data": string_data.iter().map(|(k, v)| (k.clone(), b64(v))).collect::<BTreeMap<_, _>>()
    }))
    .unwrap();
    match api.get_opt(name).await.unwrap() {
        None => {
            api.create(&PostParams::default(), &s).await.unwrap();
        }
        Some(_) => {
            api.patch(name, &PatchParams::default(), &Patch::Merge(&json!({"data": s.data}))).await.unwrap();
        }
    }
}

fn b64(s: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(s.as_bytes())
}

/// The environment of the process serving `slot` on a simulated host, read from /proc.
pub fn container_env(bed: &Bed, instance: &str, slot: &str) -> Option<BTreeMap<String, Vec<u8>>> {
    let dir = bed.stack.host_dir(instance).join("var/lib/docker-sim/containers");
    for entry in std::fs::read_dir(dir).ok()? {
        let path = entry.ok()?.path();
        let config: serde_json::Value = serde_json::from_slice(&std::fs::read(path.join("config.json")).ok()?).ok()?;
        if config["Config"]["Labels"]["fleet.molecule.ai/slot"] != json!(slot) {
            continue;
        }
        let state: serde_json::Value = serde_json::from_slice(&std::fs::read(path.join("state.json")).ok()?).ok()?;
        let pid = state["Pid"].as_u64().filter(|p| *p > 0)?;
        let raw = std::fs::read(format!("/proc/{pid}/environ")).ok()?;
        let mut env = BTreeMap::new();
        for item in raw.split(|b| *b == 0).filter(|i| !i.is_empty()) {
            let eq = item.iter().position(|b| *b == b'=')?;
            env.insert(String::from_utf8_lossy(&item[..eq]).into_owned(), item[eq + 1..].to_vec());
        }
        return Some(env);
    }
    None
}

/// GET on the host's own address, as a client of the host would.
pub fn http_get(addr: &str, port: u16, path: &str) -> (u16, String) {
    let out = std::process::Command::new("curl")
        .args(["-s", "-o", "-", "-w", "\n%{http_code}", "--max-time", "3"])
        .arg(format!("http://{addr}:{port}{path}"))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", "000"));
    (code.trim().parse().unwrap_or(0), body.to_string())
}

fn ready(t: &Tenant) -> bool {
    cond(t, "Ready").is_some_and(|c| c.0 == "True" && c.1 == "Converged")
}

pub fn tenant_json(name: &str, instance: &str, extra: serde_json::Value) -> serde_json::Value {
    let mut spec = json!({"slug": name, "instance": {"id": instance}, "channel": "staging"});
    if let (Some(s), Some(e)) = (spec.as_object_mut(), extra.as_object()) {
        for (k, v) in e {
            s.insert(k.clone(), v.clone());
        }
    }
    json!({"apiVersion": "fleet.molecule.ai/v1alpha1", "kind": "Tenant",
           "metadata": {"name": name}, "spec": spec})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_tenant_converges_and_secret_rotation_reaches_the_container() {
    let bed = Bed::start().await.unwrap();
    let digest = bed.stack.push_image("platform-tenant", "staging", &[("sim.health", "healthy")], false).await.unwrap();
    channel_at(&bed, "staging", &digest).await;
    secret(&bed, "acme-env", &[("MOLECULE_CP_SHARED_SECRET", "s3cr3t-one")]).await;
    let id = launch_managed(&bed.stack, "acme", &[], HostState::Fresh).await.unwrap();
    bed.create::<Tenant>(tenant_json(
        "acme",
        &id,
        json!({"container": {"env": [{"name": "PLAIN", "value": "plain-value"}],
                             "envFrom": [{"secretRef": {"name": "acme-env"}}]}}),
    ))
    .await
    .unwrap();

    let t = bed.wait_tenant("acme", Duration::from_secs(90), "Ready=True Converged", ready).await.unwrap();
    let st = t.status.clone().unwrap();
    assert_eq!(st.target.as_ref().unwrap().digest, digest);
    let obs = st.observed.clone().unwrap();
    let blue = obs.blue.clone().unwrap();
    assert_eq!(blue.digest.as_deref(), Some(digest.as_str()));
    let env_rev_1 = blue.env_revision.clone().unwrap();
    assert_eq!(cond(&t, "SecretsSynced").unwrap().0, "True");
    assert_eq!(st.history[0].result, "Succeeded");
    // The host really serves it.
    let (code, _) = http_get(&bed.stack.host_addr(&id), 8080, "/health");
    assert_eq!(code, 200);
    let env = container_env(&bed, &id, "blue").expect("container env");
    assert_eq!(env.get("MOLECULE_CP_SHARED_SECRET").map(Vec::as_slice), Some(&b"s3cr3t-one"[..]));
    assert_eq!(env.get("PLAIN").map(Vec::as_slice), Some(&b"plain-value"[..]));

    // Rotation: a new value reaches the container; the env revision moves.
    secret(&bed, "acme-env", &[("MOLECULE_CP_SHARED_SECRET", "s3cr3t-two")]).await;
    let t = bed
        .wait_tenant("acme", Duration::from_secs(90), "the rotated secret", |t| {
            ready(t)
                && t.status
                    .as_ref()
                    .and_then(|s| s.observed.as_ref())
                    .and_then(|o| o.blue.as_ref())
                    .and_then(|b| b.env_revision.clone())
                    .is_some_and(|e| e != env_rev_1)
        })
        .await
        .unwrap();
    let env = container_env(&bed, &id, "blue").expect("container env");
    assert_eq!(env.get("MOLECULE_CP_SHARED_SECRET").map(Vec::as_slice), Some(&b"s3cr3t-two"[..]));

    // No secret value in any command text, the document, status or parameter names.
    let timeline = bed.stack.timeline().await.unwrap().to_string();
    let status = serde_json::to_string(&t.status).unwrap();
    for needle in ["s3cr3t-one", "s3cr3t-two", &b64("s3cr3t-one"), &b64("s3cr3t-two")] {
        assert!(!timeline.contains(needle), "secret in command text: {timeline}");
        assert!(!status.contains(needle), "secret in status");
    }
    let doc = tenant_operator::host::document::content(&Default::default());
    assert!(!doc.contains("s3cr3t"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn image_needing_a_missing_env_key_is_rolled_back_then_converges_when_the_key_arrives() {
    let bed = Bed::start().await.unwrap();
    let good = bed.stack.push_image("platform-tenant", "v1", &[("sim.health", "healthy")], false).await.unwrap();
    let needs = bed
        .stack
        .push_image(
            "platform-tenant",
            "v2",
            &[("sim.health", "healthy"), ("sim.requires-env", "MOLECULE_CP_SHARED_SECRET"), ("sim.version", "2")],
            false,
        )
        .await
        .unwrap();
    channel_at(&bed, "staging", &good).await;
    secret(&bed, "beta-env", &[("OTHER", "x")]).await;
    let id = launch_managed(&bed.stack, "beta", &[], HostState::Fresh).await.unwrap();
    bed.create::<Tenant>(tenant_json(
        "beta",
        &id,
        // No rolloutPolicy: the tenant follows its channel directly, so what is tested here is the
        // Tenant controller's own rollback and retry on a new env (under a policy the coordinator
        // also sends the tenant back and halts the rollout: tests/e2e/rollout.rs). The default
        // health check waits up to 60 s for the app that exits at start.
        json!({"container": {"envFrom": [{"secretRef": {"name": "beta-env"}}]}}),
    ))
    .await
    .unwrap();
    bed.wait_tenant("beta", Duration::from_secs(90), "first convergence", ready).await.unwrap();

    // Seed 001: the new image needs a secret this tenant lacks.
    channel_at(&bed, "staging", &needs).await;
    let t = bed
        .wait_tenant("beta", Duration::from_secs(90), "a rollback", |t| {
            cond(t, "Ready").is_some_and(|c| c.1 == "RolledBack")
        })
        .await
        .unwrap();
    assert_eq!(cond(&t, "Stalled").unwrap().0, "True");
    let msg = t.status.as_ref().unwrap().conditions.iter().find(|c| c.type_ == "Ready").unwrap().message.clone();
    assert!(msg.contains("health"), "{msg}");
    // Rolled back: the host serves the previous digest again.
    let obs = t.status.unwrap().observed.unwrap();
    assert_eq!(obs.blue.unwrap().digest.as_deref(), Some(good.as_str()));
    let (code, _) = http_get(&bed.stack.host_addr(&id), 8080, "/health");
    assert_eq!(code, 200);

    // Adding the key makes a new revision, which converges.
    secret(&bed, "beta-env", &[("OTHER", "x"), ("MOLECULE_CP_SHARED_SECRET", "now-here")]).await;
    let t = bed.wait_tenant("beta", Duration::from_secs(90), "convergence with the key", ready).await.unwrap();
    assert_eq!(t.status.unwrap().observed.unwrap().blue.unwrap().digest.as_deref(), Some(needs.as_str()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_secret_touches_nothing_on_the_host() {
    let bed = Bed::start().await.unwrap();
    let digest = bed.stack.push_image("platform-tenant", "staging", &[("sim.health", "healthy")], false).await.unwrap();
    channel_at(&bed, "staging", &digest).await;
    let id = launch_managed(&bed.stack, "gone", &[], HostState::Fresh).await.unwrap();
    bed.create::<Tenant>(tenant_json(
        "gone",
        &id,
        json!({"container": {"envFrom": [{"secretRef": {"name": "nope"}}]}}),
    ))
    .await
    .unwrap();
    let t = bed
        .wait_tenant("gone", Duration::from_secs(60), "SecretsSynced=False", |t| {
            cond(t, "SecretsSynced").is_some_and(|c| c.0 == "False")
                && t.status.as_ref().is_some_and(|s| s.observed.is_some())
        })
        .await
        .unwrap();
    assert_eq!(cond(&t, "SecretsSynced").unwrap().1, "SecretNotFound");
    // The tenant (the only one here) is reconciled twice more, and still nothing is sent.
    bed.reconciled_again("tenant", bed.reconciles("tenant"), 2).await;
    let t = bed.tenants().get("gone").await.unwrap();
    assert_eq!(cond(&t, "SecretsSynced").unwrap().1, "SecretNotFound");
    let timeline = bed.stack.timeline().await.unwrap();
    let applies = timeline.as_array().unwrap().iter().filter(|r| r.to_string().contains("\"apply\"")).count();
    assert_eq!(applies, 0, "an apply reached the host: {timeline}");
}
