//! The image a cluster pulls and the chart's Deployment run as a cluster would run it.
//!
//! * `scripts/image` (run by scripts/test before the suite) built an OCI image of the release
//!   binary with umoci; here it is pushed to the test bed's real registry with skopeo, pulled back
//!   and checked: manifest, config (entrypoint, user, labels), and the binary inside is the one
//!   built (same bytes; its `--version` run inside the unpacked rootfs, with the image's own libraries).
//! * The chart is `helm install`ed on the real control plane with that image. No kubelet runs, so
//!   the test takes the Deployment the server stored and runs its container as the kubelet would:
//!   the image's entrypoint with the container's args and env (downward API filled in), as its user
//!   (65532), in the image's rootfs (chroot), with the HMAC Secret where it is mounted and a token
//!   the API server issued for the chart's ServiceAccount where the projected token goes. That
//!   process converges a tenant, and the probes and /metrics answer on the declared port.

use crate::apply::{channel_at, tenant_json};
use crate::harness::{Bed, cond};
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};
use tenant_operator::crd::Tenant;
use testbed::controlplane::kubectl;
use testbed::demo::launch_managed;
use testbed::stack::{HostState, repo_root};

fn version() -> String {
    env!("CARGO_PKG_VERSION").to_string()
}

/// `<target>/release/tenant-operator`, next to this test binary's `<target>/debug/deps/`.
fn release_binary() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let target = exe.ancestors().nth(3).unwrap().to_path_buf();
    target.join("release/tenant-operator")
}

fn run(cmd: &mut std::process::Command) -> String {
    let out = cmd.stdin(Stdio::null()).output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Pushes the image built by scripts/image to the bed's registry, then pulls it back into an OCI
/// layout and unpacks it. Returns (image reference, skopeo's inspect, the config, the rootfs).
fn push_pull_unpack(bed: &Bed, dir: &Path) -> (String, Value, Value, PathBuf) {
    let reference = format!("{}/tenant-operator:{}", bed.stack.registry, version());
    run(std::process::Command::new(repo_root().join("scripts/image")).args(["--push-only", &reference, "--insecure"]));
    let docker = format!("docker://{reference}");
    let inspect: Value = serde_json::from_str(&run(std::process::Command::new("skopeo").args([
        "inspect",
        "--tls-verify=false",
        &docker,
    ])))
    .unwrap();
    let config: Value = serde_json::from_str(&run(std::process::Command::new("skopeo").args([
        "inspect",
        "--config",
        "--tls-verify=false",
        &docker,
    ])))
    .unwrap();
    let layout = dir.join("pulled");
    run(std::process::Command::new("skopeo").args([
        "copy",
        "--quiet",
        "--src-tls-verify=false",
        &docker,
        &format!("oci:{}:{}", layout.display(), version()),
    ]));
    let bundle = dir.join("bundle");
    run(std::process::Command::new("umoci").args([
        "unpack",
        "--image",
        &format!("{}:{}", layout.display(), version()),
        bundle.to_str().unwrap(),
    ]));
    (reference, inspect, config, bundle.join("rootfs"))
}

fn b64(s: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(s)
}

fn sha256(path: &Path) -> String {
    run(std::process::Command::new("sha256sum").arg(path)).split_whitespace().next().unwrap_or_default().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_image_is_pushed_pulled_back_and_runs_the_binary_that_was_built() {
    let bed = Bed::start_without_controllers().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (_, inspect, config, rootfs) = push_pull_unpack(&bed, dir.path());
    let revision =
        run(std::process::Command::new("git").args(["rev-parse", "--short=12", "HEAD"]).current_dir(repo_root()));
    let revision = revision.trim();

    // The manifest and config a cluster reads.
    assert_eq!(inspect["Os"], "linux", "{inspect}");
    assert_eq!(inspect["Architecture"], "amd64", "{inspect}");
    let labels = &config["config"]["Labels"];
    assert_eq!(labels["org.opencontainers.image.version"], version(), "{config}");
    assert_eq!(labels["org.opencontainers.image.revision"], revision, "{config}");
    assert!(labels["org.opencontainers.image.source"].as_str().is_some_and(|s| s.starts_with("https://")), "{config}");
    assert_eq!(config["config"]["Entrypoint"], json!(["/usr/local/bin/tenant-operator"]), "{config}");
    assert_eq!(config["config"]["Cmd"], json!(["run"]), "{config}");
    assert_eq!(config["config"]["User"], "65532:65532", "{config}");
    // No shell in it.
    assert!(!rootfs.join("bin/sh").exists() && !rootfs.join("usr/bin/sh").exists());

    // The binary inside is the one built, and runs with what the image carries (chroot: only the
    // image's own libraries and files), as its user.
    let inside = rootfs.join("usr/local/bin/tenant-operator");
    assert_eq!(sha256(&inside), sha256(&release_binary()), "the image carries another binary");
    let out = run(std::process::Command::new("chroot").args([
        "--userspec=65532:65532",
        rootfs.to_str().unwrap(),
        "/usr/local/bin/tenant-operator",
        "--version",
    ]));
    assert_eq!(out.trim(), format!("tenant-operator {} ({revision})", version()));
}

/// The env the kubelet would give the container: values as they are, the downward API filled in.
fn container_env(container: &Value, pod: &str, ns: &str) -> Vec<(String, String)> {
    let mut env = Vec::new();
    for e in container["env"].as_array().cloned().unwrap_or_default() {
        let name = e["name"].as_str().unwrap().to_string();
        let value = match (&e["value"], e["valueFrom"]["fieldRef"]["fieldPath"].as_str()) {
            (Value::String(v), _) => v.clone(),
            (_, Some("metadata.name")) => pod.to_string(),
            (_, Some("metadata.namespace")) => ns.to_string(),
            other => panic!("env {name}: no kubelet stand-in for {other:?}"),
        };
        env.push((name, value));
    }
    env
}

async fn get_ok(url: &str) -> Option<String> {
    let resp = reqwest::Client::new().get(url).timeout(Duration::from_secs(2)).send().await.ok()?;
    if !resp.status().is_success() {
        return None;
    }
    resp.text().await.ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_charts_deployment_runs_as_a_cluster_would_and_converges_a_tenant() {
    let bed = Bed::start_without_controllers().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (reference, _, config, rootfs) = push_pull_unpack(&bed, dir.path());
    let (repository, tag) = reference.rsplit_once(':').unwrap();
    let kubeconfig = dir.path().join("admin.kubeconfig");
    bed.cp.write_kubeconfig(&kubeconfig).unwrap();

    // helm install, as a user would: the image above, this test's stand-ins, this namespace only.
    let release = format!("op-{}", bed.ns.trim_start_matches("e2e-"));
    let release_ns = format!("{}-operator", bed.ns);
    let hmac = dir.path().join("hmac.key");
    std::fs::write(&hmac, b"chart-e2e-hmac-key").unwrap();
    kubectl(&kubeconfig, &["create", "namespace", &release_ns], None, None).await.unwrap();
    kubectl(
        &kubeconfig,
        &[
            "create",
            "secret",
            "generic",
            "tenant-operator-hmac",
            "-n",
            &release_ns,
            &format!("--from-file=hmac.key={}", hmac.display()),
        ],
        None,
        None,
    )
    .await
    .unwrap();
    let metrics_port = testbed::stack::free_port().unwrap();
    let webhook_port = testbed::stack::free_port().unwrap();
    let extra_env: Vec<Value> = bed.stack.aws_env().into_iter().map(|(k, v)| json!({"name": k, "value": v})).collect();
    let home = dir.path().join("helm");
    let helm = repo_root().join(".testbed/bin/helm");
    run(std::process::Command::new(&helm)
        .args(["install", &release])
        .arg(repo_root().join("charts/tenant-operator"))
        .args(["--namespace", &release_ns, "--kubeconfig", kubeconfig.to_str().unwrap()])
        .args(["--set", &format!("image.repository={repository}"), "--set", &format!("image.tag={tag}")])
        .args(["--set", &format!("metrics.port={metrics_port}"), "--set", &format!("webhook.port={webhook_port}")])
        .args(["--set", &format!("operator.watchNamespace={}", bed.ns), "--set", "operator.observeInterval=3s"])
        .args(["--set", &format!("operator.insecureRegistries={{{}}}", bed.stack.registry)])
        .args(["--set-json", &format!("operator.extraEnv={}", Value::Array(extra_env))])
        .env("HELM_CACHE_HOME", home.join("cache"))
        .env("HELM_CONFIG_HOME", home.join("config"))
        .env("HELM_DATA_HOME", home.join("data"))
        .env_remove("KUBECONFIG"));

    // The Deployment as the server stored it.
    let deployments: Value = serde_json::from_str(
        &kubectl(
            &kubeconfig,
            &[
                "get",
                "deployments",
                "-n",
                &release_ns,
                "-l",
                &format!("app.kubernetes.io/instance={release}"),
                "-o",
                "json",
            ],
            None,
            None,
        )
        .await
        .unwrap(),
    )
    .unwrap();
    let deployment = &deployments["items"][0];
    let pod_spec = &deployment["spec"]["template"]["spec"];
    let container = &pod_spec["containers"][0];
    assert_eq!(container["image"], reference.as_str());
    let service_account = pod_spec["serviceAccountName"].as_str().unwrap();
    let user = pod_spec["securityContext"]["runAsUser"].as_i64().unwrap();
    let group = pod_spec["securityContext"]["runAsGroup"].as_i64().unwrap();

    // Every env var the chart itself sets is one the binary reads (clap lists them in --help).
    let help = run(std::process::Command::new(release_binary()).args(["run", "--help"]));
    let pod = format!("{release}-7d4b9c-x2x9p");
    let env = container_env(container, &pod, &release_ns);
    for (name, _) in &env {
        let from_values = bed.stack.aws_env().iter().any(|(k, _)| k == name);
        assert!(
            from_values || help.contains(&format!("[env: {name}=")),
            "the chart sets {name}, which `run` does not read:\n{help}"
        );
    }

    // The volumes where the kubelet would mount them: the HMAC Secret (its items), the projected
    // ServiceAccount token, its CA and namespace; /tmp is an emptyDir.
    for mount in container["volumeMounts"].as_array().unwrap() {
        let volume = pod_spec["volumes"].as_array().unwrap().iter().find(|v| v["name"] == mount["name"]).unwrap();
        let at = rootfs.join(mount["mountPath"].as_str().unwrap().trim_start_matches('/'));
        std::fs::create_dir_all(&at).unwrap();
        if let Some(secret) = volume["secret"]["secretName"].as_str() {
            let data: Value = serde_json::from_str(
                &kubectl(&kubeconfig, &["get", "secret", secret, "-n", &release_ns, "-o", "json"], None, None)
                    .await
                    .unwrap(),
            )
            .unwrap();
            for item in volume["secret"]["items"].as_array().unwrap() {
                use base64::Engine;
                let b64 = data["data"][item["key"].as_str().unwrap()].as_str().unwrap();
                let bytes = base64::engine::general_purpose::STANDARD.decode(b64).unwrap();
                std::fs::write(at.join(item["path"].as_str().unwrap()), bytes).unwrap();
            }
        }
    }
    let sa_dir = rootfs.join("var/run/secrets/kubernetes.io/serviceaccount");
    std::fs::create_dir_all(&sa_dir).unwrap();
    let token =
        kubectl(&kubeconfig, &["create", "token", service_account, "-n", &release_ns], None, None).await.unwrap();
    std::fs::write(sa_dir.join("token"), token.trim()).unwrap();
    std::fs::write(sa_dir.join("ca.crt"), &bed.cp.ca_pem).unwrap();
    std::fs::write(sa_dir.join("namespace"), &release_ns).unwrap();
    run(std::process::Command::new("chown").args([
        "-R",
        &format!("{user}:{group}"),
        rootfs.join("tmp").to_str().unwrap(),
    ]));

    // Entrypoint from the image, args from the container (no `command`: the image's wins).
    assert!(container["command"].is_null(), "the chart sets no command");
    let entrypoint: Vec<String> = serde_json::from_value(config["config"]["Entrypoint"].clone()).unwrap();
    let args: Vec<String> = serde_json::from_value(container["args"].clone()).unwrap();
    let port = bed.cp.url.rsplit(':').next().unwrap().to_string();
    let (marker, run_id) = testbed::warden::env().unwrap();
    // The kubelet gives the container no PATH of the host's: env_clear, chroot by its path.
    let mut process = tokio::process::Command::new("/usr/sbin/chroot")
        .arg(format!("--userspec={user}:{group}"))
        .arg(&rootfs)
        .args(&entrypoint)
        .args(&args)
        .env_clear()
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .env("KUBERNETES_SERVICE_HOST", "127.0.0.1")
        .env("KUBERNETES_SERVICE_PORT", &port)
        .env("HOME", "/home/nonroot")
        .env(marker, run_id)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.path().join("operator.log")).unwrap())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let log = || std::fs::read_to_string(dir.path().join("operator.log")).unwrap_or_default();

    // The probes the chart declares, on the port it declares.
    let probe_port = |probe: &str| {
        let p = &container[probe]["httpGet"];
        let named = p["port"].as_str().unwrap();
        let port = container["ports"].as_array().unwrap().iter().find(|x| x["name"] == named).unwrap()["containerPort"]
            .as_i64()
            .unwrap();
        format!("http://127.0.0.1:{port}{}", p["path"].as_str().unwrap())
    };
    let (liveness, readiness) = (probe_port("livenessProbe"), probe_port("readinessProbe"));
    let t0 = Instant::now();
    while get_ok(&readiness).await.is_none() {
        if let Ok(Some(status)) = process.try_wait() {
            panic!("the operator exited ({status}) with the chart's args and env:\n{}", log());
        }
        assert!(t0.elapsed() < Duration::from_secs(60), "{readiness} never answered 200:\n{}", log());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(get_ok(&liveness).await.as_deref(), Some("ok"));

    // It converges a tenant.
    let digest = bed.stack.push_image("platform-tenant", "chart", &[("sim.health", "healthy")], false).await.unwrap();
    channel_at(&bed, "chart", &digest).await;
    const PLANTED: &str = "chart-planted-secret-value-7f3a";
    crate::apply::secret(&bed, "chart-env", &[("API_TOKEN", PLANTED)]).await;
    let id = launch_managed(&bed.stack, "chart", &[], HostState::Fresh).await.unwrap();
    bed.create::<Tenant>(tenant_json(
        "chart",
        &id,
        json!({"channel": "chart", "container": {"envFrom": [{"secretRef": {"name": "chart-env"}}]}}),
    ))
    .await
    .unwrap();
    let converged = bed
        .wait_tenant("chart", Duration::from_secs(120), "convergence by the chart's process", |t| {
            cond(t, "Ready") == Some(("True".into(), "Converged".into()))
        })
        .await;
    if let Err(e) = converged {
        panic!("{e}\noperator log:\n{}", log());
    }
    // A figure, not an assertion: the resident memory of `run` with one converged tenant.
    if let Some(pid) = process.id() {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        let rss = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap_or("VmRSS: ?");
        eprintln!(
            "chart's operator process, one tenant converged: {}",
            rss.split_whitespace().skip(1).collect::<Vec<_>>().join(" ")
        );
    }
    let metrics_url = format!("http://127.0.0.1:{metrics_port}/metrics");
    let metrics = get_ok(&metrics_url).await.unwrap();
    assert!(metrics.contains("tenant_operator_aws_calls_total{operation=\"SendCommand\"}"), "{metrics}");
    assert!(metrics.contains("tenant_operator_reconciles_total"), "{metrics}");
    // A tenant under a RolloutPolicy, so the rollout gauges have series too; then promtool on the
    // scrape, and its families are the fixture's (tests/e2e/observability.rs).
    crate::rollout::policy(&bed, "chart-policy", json!({"stagger": "0s"})).await;
    let rolled = launch_managed(&bed.stack, "chart-rolled", &[], HostState::Fresh).await.unwrap();
    bed.create::<Tenant>(tenant_json(
        "chart-rolled",
        &rolled,
        json!({"channel": "chart", "tier": "canary", "rolloutPolicy": "chart-policy"}),
    ))
    .await
    .unwrap();
    let t0 = Instant::now();
    loop {
        let m = get_ok(&metrics_url).await.unwrap_or_default();
        let phase = "tenant_operator_rollouts{policy_namespace=";
        if m.contains(phase) && m.contains("tenant_operator_rollout_tenants{") {
            break;
        }
        assert!(t0.elapsed() < Duration::from_secs(60), "no rollout gauges:\n{m}\noperator log:\n{}", log());
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    crate::observability::check_scrape(&metrics_url).await;
    // JSON logs (the chart's default), no ANSI codes; no secret in them, nor in the API server's
    // audit log (Secrets are audited at Metadata level).
    let text = log();
    for secret in [PLANTED, "chart-e2e-hmac-key"] {
        assert!(!text.contains(secret), "{secret} in the operator's log");
        let audit = std::fs::read_to_string(bed.cp.audit_log()).unwrap_or_default();
        assert!(!audit.contains(secret) && !audit.contains(&b64(secret)), "{secret} in the audit log");
    }
    assert!(!text.contains('\u{1b}'), "ANSI codes in the log:\n{text}");
    assert!(text.lines().filter(|l| !l.trim().is_empty()).all(|l| serde_json::from_str::<Value>(l).is_ok()), "{text}");
    let _ = process.start_kill();
}
