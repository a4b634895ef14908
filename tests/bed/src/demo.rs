//! The demo (`cargo run -p testbed --bin tenant-operator-demo`): the real control plane, a simulated
//! fleet (moto, the real OCI registry and the fleet simulator) and the real controllers together,
//! on this machine only. It lives in the test bed, so the release binary carries none of it.

use crate::controlplane::ControlPlane;
use crate::stack::{HostState, Stack};
use anyhow::Context as _;
use kube::api::{Api, ListParams, PostParams};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tenant_operator::aws::sdk::{AwsSettings, SdkAws};
use tenant_operator::controller::{self, Context, Settings};
use tenant_operator::crd::{ImageChannel, RolloutPolicy, Tenant};
use tenant_operator::metrics::Metrics;

/// Flags of the demo.
#[derive(clap::Parser, Debug)]
#[command(
    name = "tenant-operator-demo",
    about = "tenant-operator on a simulated fleet: the real control plane, no cluster, no AWS"
)]
pub struct DemoArgs {
    /// Where to write a kubeconfig for `kubectl` against the demo's API server.
    #[arg(long, default_value = "tenant-demo.kubeconfig")]
    pub kubeconfig: PathBuf,
    /// Canary tenants in the simulated fleet (channel `staging`).
    #[arg(long, default_value_t = 3)]
    pub canaries: usize,
    /// Production tenants in the simulated fleet (channel `stable`, promoted from `staging`).
    #[arg(long, default_value_t = 21)]
    pub production: usize,
    /// Hosts set up as today's fleet is (a hand-run container and the cron auto-updater); the demo
    /// shows what adopting them would do (`adopt --dry-run`), then adopts them.
    #[arg(long, default_value_t = 2)]
    pub legacy: usize,
    /// Stop by itself after this many seconds (0: run until interrupted).
    #[arg(long, default_value_t = 0)]
    pub seconds: u64,
    /// Port of the fleet dashboard on 127.0.0.1 (`kubectl fleet dashboard`, as the admin user; 0:
    /// any free port).
    #[arg(long, default_value_t = 0)]
    pub dashboard_port: u16,
}

/// Runs the demo until interrupted.
pub async fn run(args: DemoArgs) -> anyhow::Result<()> {
    tenant_operator::registry::install_crypto_provider();
    eprintln!(
        "tenant-operator demo: starting the test bed (the control plane is built and the stand-ins installed on first use; the first run takes a while)"
    );
    let cp = ControlPlane::start()
        .await
        .context("starting the control plane (etcd, kube-apiserver, kube-controller-manager)")?;
    eprintln!("control plane ready in {:.1}s ({})", cp.start_time.as_secs_f64(), cp.dir.display());
    // Everything the demo starts carries this marker; the warden kills it all once the demo exits.
    eprintln!("test bed processes: {}={}", crate::warden::MARKER, crate::warden::ensure()?);
    let operator_client = cp.operator_client().await.context("installing crds/ and the chart's RBAC")?;
    let stack = Stack::start().await.context("starting the test bed (moto, registry, fleet simulator)")?;
    cp.write_kubeconfig(&args.kubeconfig)?;
    let kubeconfig = std::fs::canonicalize(&args.kubeconfig).unwrap_or(args.kubeconfig.clone());
    eprintln!("API server: {}  kubeconfig: {}", cp.url, kubeconfig.display());
    eprintln!("  try: kubectl --kubeconfig {} get tenants -n fleet -w", kubeconfig.display());

    let client = cp.admin_client().await?;
    let digest = stack
        .push_image("platform-tenant", "staging", &[("sim.health", "healthy"), ("sim.version", "1.0.0")], false)
        .await?;
    eprintln!("registry {}: platform-tenant:staging = {digest}", stack.registry);

    seed_objects(&client, &stack, args.canaries, args.production).await?;
    if args.legacy > 0 {
        // Today's fleet follows `:latest` with its cron; the channel follows `staging`.
        stack
            .push_image("platform-tenant", "latest", &[("sim.health", "healthy"), ("sim.version", "0.9.0")], false)
            .await?;
        seed_legacy(&client, &stack, args.legacy).await?;
    }
    let mut adopting = args.legacy == 0;

    let ctx = Arc::new(Context::new(
        operator_client.clone(),
        Arc::new(sdk_for(&stack).await),
        Settings {
            observe_interval: Duration::from_secs(20),
            env_hmac_key: b"demo-key".to_vec(),
            ..Default::default()
        },
        Arc::new(Metrics::default()),
    ));
    let (tx, rx) = tokio::sync::watch::channel(false);
    let resolver = Arc::new(tenant_operator::registry::OciResolver::new(
        tenant_operator::registry::RegistrySettings::new(vec![], vec![stack.registry.clone()], vec![]),
    )?);
    let webhook =
        tenant_operator::webhook::serve(([127, 0, 0, 1], 0).into(), operator_client.clone(), std::future::pending())
            .await?;
    eprintln!("registry webhook: http://{webhook}/webhook/<namespace>/<channel>");
    // The page `kubectl fleet dashboard -n fleet` serves, with the admin kubeconfig's rights.
    let (stop_dashboard, dashboard_stopped) = tokio::sync::oneshot::channel::<()>();
    let dashboard = tenant_operator::dashboard::serve(
        ([127, 0, 0, 1], args.dashboard_port).into(),
        client.clone(),
        tenant_operator::dashboard::Options { namespace: "fleet".into(), read_only: false },
        async {
            let _ = dashboard_stopped.await;
        },
    )
    .await
    .context("starting the dashboard")?;
    eprintln!("dashboard: http://{}/", dashboard.addr);
    let controllers = tokio::spawn(controller::run_all(ctx, resolver, rx));
    let started = tokio::time::Instant::now();
    let deadline = (args.seconds > 0).then(|| started + Duration::from_secs(args.seconds));
    let mut last = String::new();
    let mut step = 0;
    let mut rotated_from = None;
    let mut tag_moved: Option<(f64, tokio::time::Instant, String)> = None;
    let mut first_canary_seen = false;
    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    loop {
        let summary = rollout_summary(&client).await.unwrap_or_else(|e| format!("(cannot read the fleet: {e})"));
        if summary != last {
            eprintln!("[{:>4}s] {summary}", started.elapsed().as_secs());
            last.clone_from(&summary);
        }
        let all_ready = fleet_ready(&client).await.unwrap_or(false);
        let org00_env = env_revision(&client, "org-00").await;
        // The story: everyone converges; one tenant's secret rotates; a new image is pushed and
        // rolls out: canaries, the soak, stable promoted, production in batches.
        if !adopting && legacy_inspected(&client, args.legacy).await {
            adopting = true;
            eprintln!("== legacy hosts inspected (read-only). tenant-operator adopt --dry-run says:");
            eprintln!("{}", tenant_operator::adopt::dry_run(client.clone(), Some("fleet")).await?);
            eprintln!(
                "== adopting them (spec.adoption: Adopt): the hand-run containers keep serving, the cron goes off"
            );
            let tenants: Api<Tenant> = Api::namespaced(client.clone(), "fleet");
            let patch = serde_json::json!({"spec": {"adoption": "Adopt"}});
            for i in 0..args.legacy {
                tenants
                    .patch(&format!("old-{i:02}"), &kube::api::PatchParams::default(), &kube::api::Patch::Merge(&patch))
                    .await?;
            }
        }
        if all_ready && step == 0 {
            step = 1;
            eprintln!("{}", progress(&client).await.unwrap_or_default());
            rotated_from = org00_env.clone();
            eprintln!("== every tenant runs its channel's digest. Rotating org-00's MOLECULE_CP_SHARED_SECRET ...");
            let secrets: Api<k8s_openapi::api::core::v1::Secret> = Api::namespaced(client.clone(), "fleet");
            let patch = serde_json::json!({"stringData": {"MOLECULE_CP_SHARED_SECRET": "demo-secret-0-v2"}});
            secrets.patch("org-00-env", &kube::api::PatchParams::default(), &kube::api::Patch::Merge(&patch)).await?;
        } else if all_ready && step == 1 && org00_env != rotated_from {
            step = 2;
            let digest = stack
                .push_image("platform-tenant", "staging", &[("sim.health", "healthy"), ("sim.version", "1.1.0")], false)
                .await?;
            let epoch = jiff::Timestamp::now().as_millisecond() as f64 / 1000.0;
            eprintln!(
                "== org-00 runs its new env revision (only org-00 restarted). Moved the tag: platform-tenant:staging = {digest}"
            );
            tag_moved = Some((epoch, tokio::time::Instant::now(), digest));
        } else if step == 2
            && let Some((epoch, at, digest)) = &tag_moved
        {
            if !first_canary_seen && let Some(after) = first_command_after(&stack, *epoch).await {
                first_canary_seen = true;
                eprintln!("== the first canary command was sent {after:.1}s after the tag moved");
            }
            if all_ready && fleet_on(&client, digest).await.unwrap_or(false) {
                step = 3;
                eprintln!("{}", progress(&client).await.unwrap_or_default());
                eprintln!(
                    "== {digest} runs on every tenant, {}s after the tag moved. Ctrl-C to stop (kubectl still works until then).",
                    at.elapsed().as_secs()
                );
            }
        }
        let tick = tokio::time::sleep(Duration::from_millis(if step == 2 { 250 } else { 2000 }));
        tokio::select! {
            _ = tokio::signal::ctrl_c() => break,
            _ = sigterm.recv() => break,
            _ = tick => {}
        }
        if deadline.is_some_and(|d| tokio::time::Instant::now() >= d) {
            break;
        }
    }
    let _ = tx.send(true);
    let _ = stop_dashboard.send(());
    let _ = tokio::time::timeout(Duration::from_secs(5), controllers).await;
    eprintln!("demo stopped");
    Ok(())
}

/// The SDK pointed at the stand-ins.
pub async fn sdk_for(stack: &Stack) -> SdkAws {
    SdkAws::new(AwsSettings {
        default_region: "us-east-1".into(),
        ec2_endpoint: Some(stack.moto_url.clone()),
        ssm_endpoint: Some(stack.ssm_url.clone()),
        static_credentials: Some(("testing".into(), "testing".into())),
    })
    .await
}

/// Launches a simulated host tagged as managed, with its org tag set to `slug` (extra tags win).
pub async fn launch_managed(
    stack: &Stack,
    slug: &str,
    extra: &[(&str, &str)],
    state: HostState,
) -> anyhow::Result<String> {
    let settings = Settings::default();
    let mut tags: BTreeMap<&str, &str> = BTreeMap::new();
    tags.insert(&settings.managed_tag, "true");
    tags.insert(&settings.org_tag, slug);
    for (k, v) in extra {
        tags.insert(k, v);
    }
    let tags: Vec<(&str, &str)> = tags.into_iter().collect();
    stack.launch_host(slug, &tags, state).await
}

async fn seed_objects(client: &kube::Client, stack: &Stack, canaries: usize, production: usize) -> anyhow::Result<()> {
    let ns = "fleet";
    let namespaces: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(client.clone());
    namespaces
        .create(&PostParams::default(), &serde_json::from_value(serde_json::json!({"metadata": {"name": ns}}))?)
        .await?;
    let channels: Api<ImageChannel> = Api::namespaced(client.clone(), ns);
    let channel: ImageChannel = serde_json::from_value(serde_json::json!({
        "apiVersion": "fleet.molecule.ai/v1alpha1", "kind": "ImageChannel",
        "metadata": {"name": "staging"},
        "spec": {"image": format!("{}/platform-tenant", stack.registry), "tag": "staging", "interval": "5s"}
    }))?;
    channels.create(&PostParams::default(), &channel).await?;
    let stable: ImageChannel = serde_json::from_value(serde_json::json!({
        "apiVersion": "fleet.molecule.ai/v1alpha1", "kind": "ImageChannel",
        "metadata": {"name": "stable"},
        "spec": {"image": format!("{}/platform-tenant", stack.registry), "promoteFrom": "staging"}
    }))?;
    channels.create(&PostParams::default(), &stable).await?;
    let policies: Api<RolloutPolicy> = Api::namespaced(client.clone(), ns);
    let policy: RolloutPolicy = serde_json::from_value(serde_json::json!({
        "apiVersion": "fleet.molecule.ai/v1alpha1", "kind": "RolloutPolicy",
        "metadata": {"name": "default"},
        "spec": {"strategy": "BlueGreen", "maxConcurrency": "25%", "stagger": "5s",
                 "canary": {"minCanaries": 1, "soak": "20s", "sampleInterval": "2s"},
                 "keepPreviousSlotSeconds": 60}
    }))?;
    policies.create(&PostParams::default(), &policy).await?;
    let tenants: Api<Tenant> = Api::namespaced(client.clone(), ns);
    for i in 0..(canaries + production) {
        let (tier, channel) = if i < canaries { ("canary", "staging") } else { ("production", "stable") };
        let slug = format!("org-{i:02}");
        let id = launch_managed(stack, &slug, &[], HostState::Fresh).await?;
        let secrets: Api<k8s_openapi::api::core::v1::Secret> = Api::namespaced(client.clone(), ns);
        let secret: k8s_openapi::api::core::v1::Secret = serde_json::from_value(serde_json::json!({
            "metadata": {"name": format!("{slug}-env")},
            "stringData": {"MOLECULE_CP_SHARED_SECRET": format!("demo-secret-{i}-v1")}
        }))?;
        secrets.create(&PostParams::default(), &secret).await?;
        let tenant: Tenant = serde_json::from_value(serde_json::json!({
            "apiVersion": "fleet.molecule.ai/v1alpha1", "kind": "Tenant",
            "metadata": {"name": slug},
            "spec": {"slug": slug, "instance": {"id": id}, "channel": channel, "tier": tier,
                     "rolloutPolicy": "default",
                     "container": {"envFrom": [{"secretRef": {"name": format!("{slug}-env")}}]}}
        }))?;
        tenants.create(&PostParams::default(), &tenant).await?;
    }
    Ok(())
}

/// Every tenant converged (Ready=True).
async fn fleet_ready(client: &kube::Client) -> anyhow::Result<bool> {
    let tenants: Api<Tenant> = Api::namespaced(client.clone(), "fleet");
    let list = tenants.list(&ListParams::default()).await?;
    Ok(!list.items.is_empty()
        && list.items.iter().all(|t| {
            t.status.as_ref().is_some_and(|s| {
                tenant_operator::core::conditions::find(&s.conditions, "Ready").is_some_and(|c| c.status == "True")
            })
        }))
}

/// Every tenant's host serves `digest`.
async fn fleet_on(client: &kube::Client, digest: &str) -> anyhow::Result<bool> {
    let tenants: Api<Tenant> = Api::namespaced(client.clone(), "fleet");
    let list = tenants.list(&ListParams::default()).await?;
    Ok(list.items.iter().all(|t| {
        t.status
            .as_ref()
            .and_then(|s| s.observed.as_ref())
            .and_then(|o| tenant_operator::core::tenant::serving(o))
            .is_some_and(|(_, s)| s.digest.as_deref() == Some(digest) && s.health.as_deref() == Some("healthy"))
    }))
}

/// Seconds from `epoch` to the first apply command the simulator received after it.
async fn first_command_after(stack: &Stack, epoch: f64) -> Option<f64> {
    let timeline = stack.timeline().await.ok()?;
    timeline
        .as_array()?
        .iter()
        .filter(|r| r["parameters"]["action"][0].as_str() == Some("apply"))
        .filter_map(|r| r["requested"].as_f64())
        .filter(|t| *t >= epoch)
        .min_by(f64::total_cmp)
        .map(|t| t - epoch)
}

/// One line: each rollout's phase and progress, and how many tenants are ready.
async fn rollout_summary(client: &kube::Client) -> anyhow::Result<String> {
    let policies: Api<RolloutPolicy> = Api::namespaced(client.clone(), "fleet");
    let tenants: Api<Tenant> = Api::namespaced(client.clone(), "fleet");
    let list = tenants.list(&ListParams::default()).await?;
    let ready = list
        .items
        .iter()
        .filter(|t| {
            t.status.as_ref().is_some_and(|s| {
                tenant_operator::core::conditions::find(&s.conditions, "Ready").is_some_and(|c| c.status == "True")
            })
        })
        .count();
    let mut parts = vec![format!("ready {ready}/{}", list.items.len())];
    for p in policies.list(&ListParams::default()).await? {
        for r in p.status.map(|s| s.rollouts).unwrap_or_default() {
            let short = tenant_operator::core::report::short_digest(&r.digest);
            let mut part = format!(
                "{}@{short}: {} canary {}/{} production {}/{}",
                r.channel, r.phase, r.canary.moved, r.canary.total, r.production.moved, r.production.total
            );
            if r.phase == tenant_operator::core::rollout::phase::SOAKING
                && let Some(end) = r.soak_ends_at.as_deref().and_then(|e| e.parse::<jiff::Timestamp>().ok())
            {
                let left = jiff::Timestamp::now().duration_until(end).as_secs().max(0);
                part.push_str(&format!(" (soak ends in {left}s)"));
            }
            if r.peak_concurrency > 0 && r.phase != tenant_operator::core::rollout::phase::COMPLETE {
                part.push_str(&format!(" peak {}", r.peak_concurrency));
            }
            parts.push(part);
        }
    }
    Ok(parts.join(" | "))
}

/// Legacy tenants `old-NN`: hosts with a hand-run container, env frozen at first boot and the cron
/// auto-updater; their Tenants start with `spec.adoption: Disabled` (inspected, never touched).
async fn seed_legacy(client: &kube::Client, stack: &Stack, n: usize) -> anyhow::Result<()> {
    let settings = Settings::default();
    let tenants: Api<Tenant> = Api::namespaced(client.clone(), "fleet");
    for i in 0..n {
        let slug = format!("old-{i:02}");
        let tags = [(settings.managed_tag.as_str(), "true"), (settings.org_tag.as_str(), slug.as_str())];
        let id = stack
            .launch_host_with(
                &slug,
                &tags,
                HostState::Legacy,
                serde_json::json!({"legacy_env": {"MOLECULE_CP_SHARED_SECRET": format!("frozen-at-boot-{i}")},
                                   "legacy_args": ["-v", "/srv/tenant-data:/data"],
                                   "cron_interval_seconds": 10}),
            )
            .await?;
        let tenant: Tenant = serde_json::from_value(serde_json::json!({
            "apiVersion": "fleet.molecule.ai/v1alpha1", "kind": "Tenant",
            "metadata": {"name": slug},
            "spec": {"slug": slug, "instance": {"id": id}, "channel": "staging", "tier": "production",
                     "rolloutPolicy": "default", "adoption": "Disabled"}
        }))?;
        tenants.create(&PostParams::default(), &tenant).await?;
    }
    Ok(())
}

async fn legacy_inspected(client: &kube::Client, n: usize) -> bool {
    let tenants: Api<Tenant> = Api::namespaced(client.clone(), "fleet");
    for i in 0..n {
        let Ok(Some(t)) = tenants.get_opt(&format!("old-{i:02}")).await else { return false };
        if t.status.and_then(|s| s.adoption).and_then(|a| a.imported).is_none() {
            return false;
        }
    }
    true
}

async fn env_revision(client: &kube::Client, name: &str) -> Option<String> {
    let tenants: Api<Tenant> = Api::namespaced(client.clone(), "fleet");
    let t = tenants.get_opt(name).await.ok()??;
    let obs = t.status?.observed?;
    let slot = match obs.active_slot? {
        tenant_operator::crd::Slot::Blue => obs.blue?,
        tenant_operator::crd::Slot::Green => obs.green?,
    };
    slot.env_revision
}

async fn progress(client: &kube::Client) -> anyhow::Result<String> {
    let tenants: Api<Tenant> = Api::namespaced(client.clone(), "fleet");
    let mut rows = BTreeMap::new();
    for t in tenants.list(&ListParams::default()).await? {
        let st = t.status.clone().unwrap_or_default();
        let ready = tenant_operator::core::conditions::find(&st.conditions, "Ready");
        rows.insert(
            t.metadata.name.clone().unwrap_or_default(),
            format!(
                "{:<10} {:<12} {:<13} {:<6} {:<6} {}",
                format!("{:?}", t.spec.tier).to_lowercase(),
                st.instance_id.unwrap_or_default(),
                st.running.unwrap_or_else(|| "-".into()),
                st.observed.and_then(|o| o.active_slot).map(|s| s.as_str()).unwrap_or("-"),
                ready.map(|c| c.status.as_str()).unwrap_or("-"),
                ready.map(|c| c.reason.as_str()).unwrap_or("-"),
            ),
        );
    }
    let mut out = format!(
        "{:<8} {:<10} {:<12} {:<13} {:<6} {:<6} {}\n",
        "TENANT", "TIER", "INSTANCE", "RUNNING", "SLOT", "READY", "REASON"
    );
    for (name, row) in rows {
        out.push_str(&format!("{name:<8} {row}\n"));
    }
    Ok(out)
}
