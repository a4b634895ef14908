//! Adopting today's fleet: hosts whose app was started by hand (user-data) and that run the cron
//! auto-updater. Taken over without downtime, env values never leaving the host's own prefix, the
//! cron disabled (and restored by a release), a hand change afterwards treated as drift.

use crate::apply::{channel_at, container_env, tenant_json};
use crate::bluegreen::Load;
use crate::harness::{Bed, cond};
use crate::hostile::{action_of, b64, contains, converged, files_under, host_docker, parameters_under, unique};
use kube::api::{ListParams, Patch, PatchParams};
use serde_json::{Value, json};
use std::time::Duration;
use tenant_operator::controller::Settings;
use tenant_operator::crd::Tenant;
use testbed::stack::HostState;

/// Seconds between two firings of a legacy host's cron entry (the simulator's compressed clock).
const CRON_SECONDS: f64 = 1.5;

/// A legacy host: `molecule-tenant` on :8080 started by hand with these env values and options, and
/// the cron auto-updater following `platform-tenant:latest`.
async fn legacy_host(bed: &Bed, slug: &str, env: Value) -> String {
    let s = Settings::default();
    let tags = [(s.managed_tag.as_str(), "true"), (s.org_tag.as_str(), slug)];
    bed.stack
        .launch_host_with(
            slug,
            &tags,
            HostState::Legacy,
            json!({"legacy_env": env, "cron_interval_seconds": CRON_SECONDS,
                   "legacy_args": ["-v", "/srv/tenant-data:/data", "--add-host", "db.internal:10.0.0.5",
                                   "--label", "team=core", "--restart", "always"]}),
        )
        .await
        .unwrap()
}

async fn host_info(bed: &Bed, id: &str) -> Value {
    bed.stack.host_info(id).await.unwrap()
}

async fn cron_runs(bed: &Bed, id: &str) -> u64 {
    host_info(bed, id).await["cron"]["runs"].as_u64().unwrap()
}

/// The simulated cron's firings that found the entry not active (counted in order with the runs:
/// once one is counted, no run of an earlier firing can appear).
async fn cron_passed(bed: &Bed, id: &str) -> u64 {
    host_info(bed, id).await["cron"]["passed"].as_u64().unwrap()
}

/// The entry's time comes three times and the updater never runs.
async fn cron_stays_idle(bed: &Bed, id: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let passed = cron_passed(bed, id).await;
    while cron_passed(bed, id).await < passed + 1 {
        assert!(tokio::time::Instant::now() < deadline, "the simulated cron does not tick");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let runs = cron_runs(bed, id).await;
    while cron_passed(bed, id).await < passed + 3 {
        assert!(tokio::time::Instant::now() < deadline, "the simulated cron does not tick");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(cron_runs(bed, id).await, runs, "the cron fired after the adoption");
}

async fn cron_entry(bed: &Bed, id: &str) -> String {
    host_info(bed, id).await["cron"]["entry"].as_str().unwrap().to_string()
}

fn container_id(bed: &Bed, id: &str, name: &str) -> String {
    let out = host_docker(bed, id, &["inspect", "--format", "{{.Id}}", name]);
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn adopted(t: &Tenant) -> bool {
    cond(t, "Adopted").is_some_and(|c| c.0 == "True" && c.1 == "Adopted")
}

async fn actions(bed: &Bed, instance: &str) -> Vec<String> {
    let t = bed.stack.timeline().await.unwrap();
    t.as_array().unwrap().iter().filter(|r| r["instance_id"] == json!(instance)).map(action_of).collect()
}

async fn set_adoption(bed: &Bed, name: &str, mode: &str) {
    bed.tenants()
        .patch(name, &PatchParams::default(), &Patch::Merge(json!({"spec": {"adoption": mode}})))
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn adoption_keeps_serving_disables_the_cron_and_the_next_digest_rolls_out_with_imported_options() {
    let bed = Bed::start().await.unwrap();
    let d0 = bed.stack.push_image("platform-tenant", "latest", &[("sim.health", "healthy")], false).await.unwrap();
    let secret = unique("legacy-secret-");
    let id = legacy_host(&bed, "acme", json!({"MOLECULE_CP_SHARED_SECRET": secret, "PLAIN": "x"})).await;
    let addr = bed.stack.host_addr(&id);
    let legacy = container_id(&bed, &id, "molecule-tenant");
    // The fleet as it is today: the cron fires.
    let t0 = tokio::time::Instant::now();
    while cron_runs(&bed, &id).await < 1 {
        assert!(t0.elapsed() < Duration::from_secs(20), "the cron never fired");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    channel_at(&bed, "staging", &d0).await;

    let load = Load::start(addr.clone(), 8080);
    load.until_served(&d0, 10).await;
    bed.create::<Tenant>(tenant_json("acme", &id, json!({"adoption": "Adopt"}))).await.unwrap();
    let t = bed
        .wait_tenant("acme", Duration::from_secs(120), "Adopted=True and Ready=True", |t| adopted(t) && converged(t))
        .await
        .unwrap();
    // Keep the traffic going a little past the adoption, then count.
    let after = load.served_by(&d0) + 20;
    load.until_served(&d0, after).await;
    let (served, failed, errors) = load.finish();
    assert_eq!(failed, 0, "requests failed during the adoption: {errors:?}");
    assert!(served.get(&d0).copied().unwrap_or(0) >= 30, "too little traffic to prove anything: {served:?}");
    eprintln!("adoption: {served:?} served, {failed} failed");

    // The same container still serves: it was taken over, not restarted.
    assert_eq!(container_id(&bed, &id, "molecule-tenant"), legacy);
    let st = t.status.clone().unwrap();
    let a = st.adoption.clone().unwrap();
    let imp = a.imported.clone().unwrap();
    assert_eq!(imp.digest, d0);
    assert_eq!(imp.image, format!("{}/platform-tenant", bed.stack.registry));
    assert_eq!(imp.env_names, vec!["MOLECULE_CP_SHARED_SECRET", "ORG_SLUG", "PLAIN"]);
    assert_eq!(imp.volumes.len(), 1);
    assert_eq!(imp.volumes[0].host_path, "/srv/tenant-data");
    assert_eq!(imp.extra_hosts[0].hostname, "db.internal");
    assert_eq!(imp.labels.get("team").map(String::as_str), Some("core"));
    assert_eq!(imp.restart_policy, "always");
    assert_eq!(a.imported_env_parameter.as_deref(), Some("/tenant-operator/acme/imported-env"));
    let obs = st.observed.clone().unwrap();
    assert!(obs.managed && obs.adopted);
    assert_eq!(obs.cron.as_deref(), Some("disabled"));
    assert_eq!(obs.blue.as_ref().and_then(|b| b.digest.clone()), Some(d0.clone()));
    assert!(st.history.iter().any(|h| h.action == "adopt" && h.result == "Succeeded"));
    // The env reached Parameter Store under the tenant's own prefix, written by the host.
    assert!(
        parameters_under(&bed, "/tenant-operator/acme").contains(&"/tenant-operator/acme/imported-env".to_string())
    );

    // The cron no longer fires, even when `:latest` moves.
    // The simulator sees no entry any more (the agent moved it aside; the host reports `disabled`).
    assert_eq!(cron_entry(&bed, &id).await, "absent");
    let latest = bed
        .stack
        .push_image("platform-tenant", "latest", &[("sim.health", "healthy"), ("sim.version", "moved")], false)
        .await
        .unwrap();
    cron_stays_idle(&bed, &id).await;
    let runs = cron_runs(&bed, &id).await;
    assert_eq!(container_id(&bed, &id, "molecule-tenant"), legacy);

    // A hand change after the adoption (someone re-runs the user-data with :latest) is drift: the
    // operator puts back the imported revision, with the imported options.
    let hist_before = bed.tenants().get("acme").await.unwrap().status.unwrap().history.len();
    host_docker(&bed, &id, &["rm", "-f", "molecule-tenant"]);
    let image_latest = format!("{}/platform-tenant:latest", bed.stack.registry);
    host_docker(&bed, &id, &["run", "-d", "--name", "molecule-tenant", "-p", "127.0.0.1:8080:8080", &image_latest]);
    let t = bed
        .wait_tenant("acme", Duration::from_secs(120), "the hand change reverted", |t| {
            converged(t) && t.status.as_ref().is_some_and(|s| s.history.len() > hist_before)
        })
        .await
        .unwrap();
    assert!(t.status.unwrap().history.iter().any(|h| h.action == "apply" && h.result == "Succeeded"));
    let (code, body) = crate::apply::http_get(&addr, 8080, "/health");
    assert_eq!(code, 200);
    assert_eq!(serde_json::from_str::<Value>(&body).unwrap()["digest"], json!(d0), "drift not reverted");
    assert_ne!(serde_json::from_str::<Value>(&body).unwrap()["digest"], json!(latest));

    // A new channel digest rolls out with the imported run options and env.
    let d1 = bed
        .stack
        .push_image("platform-tenant", "next", &[("sim.health", "healthy"), ("sim.version", "d1")], false)
        .await
        .unwrap();
    channel_at(&bed, "staging", &d1).await;
    bed.wait_tenant("acme", Duration::from_secs(120), "the new digest", |t| {
        converged(t) && t.status.as_ref().and_then(|s| s.target.as_ref()).is_some_and(|x| x.digest == d1)
    })
    .await
    .unwrap();
    let c: Value = serde_json::from_slice(&host_docker(&bed, &id, &["inspect", "app-blue"]).stdout).unwrap();
    let c = &c[0];
    assert_eq!(c["HostConfig"]["Binds"], json!(["/srv/tenant-data:/data"]));
    assert_eq!(c["HostConfig"]["ExtraHosts"], json!(["db.internal:10.0.0.5"]));
    assert_eq!(c["HostConfig"]["RestartPolicy"]["Name"], json!("always"));
    assert_eq!(c["Config"]["Labels"]["team"], json!("core"));
    let env = container_env(&bed, &id, "blue").unwrap();
    assert_eq!(env.get("MOLECULE_CP_SHARED_SECRET").map(Vec::as_slice), Some(secret.as_bytes()));
    assert_eq!(env.get("ORG_SLUG").map(Vec::as_slice), Some(&b"acme"[..]));
    assert_eq!(cron_runs(&bed, &id).await, runs, "the cron fired after the rollout");

    // The env value taken over appears in no event, status, command text or log.
    let needles = [secret.clone(), b64(&secret), b64(&format!("{secret}\n"))];
    let find = |what: &str, hay: &[u8]| {
        for n in &needles {
            assert!(!contains(hay, n.as_bytes()), "{n:?} found in {what}");
        }
    };
    let ev: kube::Api<k8s_openapi::api::events::v1::Event> = kube::Api::all(bed.client.clone());
    let ev = ev.list(&ListParams::default()).await.unwrap();
    assert!(ev.items.iter().any(|e| e.reason.as_deref() == Some("Adopted")), "no Adopted event");
    find("events", serde_json::to_string(&ev.items).unwrap().as_bytes());
    find("tenant status", serde_json::to_string(&bed.tenants().get("acme").await.unwrap().status).unwrap().as_bytes());
    find("the command timeline", bed.stack.timeline().await.unwrap().to_string().as_bytes());
    let inv = crate::hostile::aws_cli(&bed, &["ssm", "list-command-invocations", "--details", "--instance-id", &id]);
    find("command invocations", inv.to_string().as_bytes());
    let mut files = Vec::new();
    files_under(&bed.stack.workdir, &mut files);
    let mut scanned = 0;
    for f in &files {
        let rel = f.strip_prefix(&bed.stack.workdir).unwrap().to_string_lossy().into_owned();
        // Docker's own container config holds the env, and so does the hand-made env file of the
        // legacy user-data; nothing else may.
        if (rel.contains("var/lib/docker-sim/containers/") && rel.ends_with("/config.json"))
            || rel.ends_with("etc/molecule/tenant.env")
        {
            continue;
        }
        let Ok(bytes) = std::fs::read(f) else { continue };
        find(&rel, &bytes);
        scanned += 1;
    }
    assert!(scanned > 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dry_run_changes_nothing_and_a_release_restores_the_cron() {
    let bed = Bed::start().await.unwrap();
    let d0 = bed.stack.push_image("platform-tenant", "latest", &[("sim.health", "healthy")], false).await.unwrap();
    let id = legacy_host(&bed, "beta", json!({"API_TOKEN": unique("tok-")})).await;
    let legacy = container_id(&bed, &id, "molecule-tenant");
    channel_at(&bed, "staging", &d0).await;
    bed.create::<Tenant>(tenant_json("beta", &id, json!({}))).await.unwrap();
    let t = bed
        .wait_tenant("beta", Duration::from_secs(90), "the preview", |t| {
            cond(t, "Adopted").is_some_and(|c| c.1 == "NotAdopted")
                && t.status.as_ref().and_then(|s| s.adoption.as_ref()).is_some_and(|a| a.imported.is_some())
        })
        .await
        .unwrap();
    assert_eq!(cond(&t, "Ready").unwrap(), ("False".to_string(), "NotAdopted".to_string()));
    assert_eq!(cond(&t, "Stalled").unwrap().0, "True");

    let out = tenant_operator::adopt::dry_run(bed.client.clone(), Some(&bed.ns)).await.unwrap();
    eprintln!("{out}");
    assert!(out.contains("would be adopted once spec.adoption is Adopt"), "{out}");
    assert!(out.contains(&d0), "{out}");
    assert!(out.contains("env names    API_TOKEN, ORG_SLUG"), "{out}");
    assert!(out.contains("/srv/tenant-data:/data") && out.contains("db.internal:10.0.0.5"), "{out}");
    assert!(out.contains("cron         active -> disabled"), "{out}");
    assert!(out.contains("first apply  none"), "{out}");

    // Nothing changed on the host: same container, cron still firing (it fires again), no marker,
    // nothing stored.
    let runs = cron_runs(&bed, &id).await;
    let deadline = std::time::Instant::now() + Duration::from_secs_f64(CRON_SECONDS * 20.0 + 30.0);
    while cron_runs(&bed, &id).await <= runs {
        assert!(std::time::Instant::now() < deadline, "the cron stopped without an adoption");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(cron_entry(&bed, &id).await, "active");
    assert_eq!(container_id(&bed, &id, "molecule-tenant"), legacy);
    assert!(!bed.stack.host_dir(&id).join("var/lib/tenant-operator/applied-revision").exists());
    assert!(parameters_under(&bed, "/tenant-operator/beta").is_empty());
    let sent = actions(&bed, &id).await;
    assert!(sent.iter().all(|a| a == "observe" || a == "inspect-legacy"), "{sent:?}");
    assert!(sent.iter().any(|a| a == "inspect-legacy"), "{sent:?}");

    // Adopt, then release: the cron entry comes back and fires again; the host is no longer managed.
    set_adoption(&bed, "beta", "Adopt").await;
    bed.wait_tenant("beta", Duration::from_secs(90), "Adopted=True", |t| adopted(t) && converged(t)).await.unwrap();
    assert_eq!(cron_entry(&bed, &id).await, "absent");
    set_adoption(&bed, "beta", "Release").await;
    let t = bed
        .wait_tenant("beta", Duration::from_secs(90), "Adopted=False Released", |t| {
            cond(t, "Adopted").is_some_and(|c| c.0 == "False" && c.1 == "Released")
                && t.status.as_ref().and_then(|s| s.observed.as_ref()).is_some_and(|o| !o.managed)
        })
        .await
        .unwrap();
    assert_eq!(cond(&t, "Ready").unwrap().1, "Released");
    assert_eq!(cron_entry(&bed, &id).await, "active");
    let runs = cron_runs(&bed, &id).await;
    let t0 = tokio::time::Instant::now();
    while cron_runs(&bed, &id).await <= runs {
        assert!(t0.elapsed() < Duration::from_secs(20), "the cron did not fire again after the release");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(container_id(&bed, &id, "molecule-tenant"), legacy, "the release restarted the container");
    assert!(!bed.stack.host_dir(&id).join("var/lib/tenant-operator/applied-revision").exists());
    let sent = actions(&bed, &id).await;
    assert!(sent.iter().any(|a| a == "unadopt") && !sent.iter().any(|a| a == "apply"), "{sent:?}");

    // Deleting the Tenant removes its revisions but keeps the env the adoption took over: it exists
    // nowhere else.
    assert!(parameters_under(&bed, "/tenant-operator/beta").len() > 1);
    bed.tenants().delete("beta", &Default::default()).await.unwrap();
    let t0 = tokio::time::Instant::now();
    while bed.tenants().get_opt("beta").await.unwrap().is_some() {
        assert!(t0.elapsed() < Duration::from_secs(60), "the tenant was never deleted");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(parameters_under(&bed, "/tenant-operator/beta"), vec!["/tenant-operator/beta/imported-env".to_string()]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registry_login_reaches_the_host_only_through_parameter_store() {
    let bed = Bed::start().await.unwrap();
    let d0 = bed.stack.push_image("platform-tenant", "staging", &[("sim.health", "healthy")], false).await.unwrap();
    channel_at(&bed, "staging", &d0).await;
    let password = unique("pull-pw-");
    let doc = json!({"auths": {
        bed.stack.registry.clone(): {"username": "puller", "password": password},
        "other.example.com": {"username": "elsewhere", "password": "not-for-this-registry"}
    }})
    .to_string();
    crate::apply::secret(&bed, "pull", &[(".dockerconfigjson", &doc)]).await;
    let id = testbed::demo::launch_managed(&bed.stack, "gamma", &[], HostState::Fresh).await.unwrap();
    bed.create::<Tenant>(tenant_json("gamma", &id, json!({"container": {"imagePullSecret": {"name": "pull"}}})))
        .await
        .unwrap();
    bed.wait_tenant("gamma", Duration::from_secs(90), "Ready=True Converged", converged).await.unwrap();
    // The host logged in (docker keeps the login, as ~/.docker/config.json would), for that registry only.
    let auth_file = bed.stack.host_dir(&id).join("var/lib/docker-sim/auth.json");
    let auth: Value = serde_json::from_slice(&std::fs::read(&auth_file).unwrap()).unwrap();
    assert_eq!(auth[&bed.stack.registry]["username"], json!("puller"));
    assert!(auth.get("other.example.com").is_none());
    let cmds = std::fs::read_to_string(bed.stack.host_dir(&id).join("var/lib/docker-sim/commands.log")).unwrap();
    assert!(cmds.contains("docker login --username puller --password-stdin"), "{cmds}");

    let needles = [password.clone(), b64(&password), "not-for-this-registry".to_string()];
    let find = |what: &str, hay: &[u8]| {
        for n in &needles {
            assert!(!contains(hay, n.as_bytes()), "{n:?} found in {what}");
        }
    };
    find("the command timeline", bed.stack.timeline().await.unwrap().to_string().as_bytes());
    find("tenant status", serde_json::to_string(&bed.tenants().get("gamma").await.unwrap().status).unwrap().as_bytes());
    let ev: kube::Api<k8s_openapi::api::events::v1::Event> = kube::Api::all(bed.client.clone());
    find("events", serde_json::to_string(&ev.list(&ListParams::default()).await.unwrap().items).unwrap().as_bytes());
    let mut files = Vec::new();
    files_under(&bed.stack.workdir, &mut files);
    for f in &files {
        if f == &auth_file {
            continue;
        }
        let Ok(bytes) = std::fs::read(f) else { continue };
        find(&f.display().to_string(), &bytes);
    }
}
