//! The real `kubectl` against the fake API server with our CRDs and the running controllers: apply
//! `crds/` and `examples/`, printer columns, short name and category, `kubectl wait` on a tenant that
//! really converges, and `kubectl describe` showing its events.
//!
//! kubectl is `$TESTBED_KUBECTL` or `.testbed/venv/bin/kubectl` (scripts/bootstrap); without it the
//! test fails.

use crate::apply::{channel_at, tenant_json};
use crate::harness::Bed;
use std::path::{Path, PathBuf};
use std::time::Duration;
use testbed::demo::launch_managed;
use testbed::stack::HostState;

/// The real kubectl: `$TESTBED_KUBECTL` or `.testbed/venv/bin/kubectl` (scripts/bootstrap). A
/// missing kubectl fails the test.
pub fn find_kubectl() -> PathBuf {
    if let Ok(p) = std::env::var("TESTBED_KUBECTL") {
        let p = PathBuf::from(p);
        if p.is_file() {
            return p;
        }
    }
    let p = testbed::stack::venv_bin("kubectl");
    assert!(p.is_file(), "no kubectl at $TESTBED_KUBECTL or {} (scripts/bootstrap installs it)", p.display());
    p
}

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// kubectl with its own kubeconfig and discovery cache (kubectl caches discovery per host:port, and
/// ports are reused between tests).
pub struct Kubectl {
    pub bin: PathBuf,
    pub kubeconfig: PathBuf,
    pub cache: PathBuf,
}

impl Kubectl {
    pub async fn run_for(&self, limit: Duration, args: &[&str]) -> (bool, String, String) {
        let out = tokio::time::timeout(
            limit,
            tokio::process::Command::new(&self.bin)
                .arg("--kubeconfig")
                .arg(&self.kubeconfig)
                .arg("--cache-dir")
                .arg(&self.cache)
                .args(args)
                .env_remove("KUBECONFIG")
                .env_remove("HTTPS_PROXY")
                .env_remove("HTTP_PROXY")
                .env_remove("https_proxy")
                .env_remove("http_proxy")
                .kill_on_drop(true)
                .output(),
        )
        .await
        .unwrap_or_else(|_| panic!("kubectl {args:?} did not finish within {limit:?}"))
        .expect("kubectl runs");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    pub async fn run(&self, args: &[&str]) -> (bool, String, String) {
        self.run_for(Duration::from_secs(60), args).await
    }

    pub async fn ok(&self, args: &[&str]) -> String {
        let (ok, stdout, stderr) = self.run(args).await;
        assert!(ok, "kubectl {args:?} failed:\n{stdout}\n{stderr}");
        stdout
    }
}

fn header(table: &str) -> Vec<String> {
    table.lines().next().unwrap_or_default().split_whitespace().map(str::to_string).collect()
}

/// First column of every row but the header.
fn names(table: &str) -> Vec<String> {
    table.lines().skip(1).filter_map(|l| l.split_whitespace().next()).map(str::to_string).collect()
}

const EXAMPLE_TENANTS: usize = 5;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_applies_crds_and_examples_gets_columns_and_waits_for_a_real_tenant() {
    let bin = find_kubectl();
    // examples/ live in the namespace `fleet`: this test owns it.
    let mut bed = Bed::start_in("fleet").await.unwrap();
    bed.start_controllers(bed.settings()).await;
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("kubeconfig");
    bed.cp.write_kubeconfig(&kubeconfig).unwrap();
    let k = Kubectl { bin, kubeconfig, cache: dir.path().join("cache") };
    let root = repo_root();
    let crds = root.join("crds");
    let examples = root.join("examples");

    // crds/: accepted over the harness's install, then idempotent.
    let out = k.ok(&["apply", "-f", crds.to_str().unwrap()]).await;
    for plural in ["tenants", "imagechannels", "rolloutpolicies"] {
        let name = format!("customresourcedefinition.apiextensions.k8s.io/{plural}.fleet.molecule.ai");
        assert!(out.contains(&name), "{out}");
    }
    let out = k.ok(&["apply", "-f", crds.to_str().unwrap()]).await;
    assert_eq!(out.lines().count(), 3, "{out}");
    assert!(out.lines().all(|l| l.ends_with(" unchanged")), "second apply of crds/ changed something:\n{out}");

    // examples/: every object created (the namespace exists already: configured).
    let out = k.ok(&["apply", "-f", examples.to_str().unwrap()]).await;
    let mut created = 0;
    for line in out.lines() {
        if line.starts_with("namespace/fleet ") {
            continue;
        }
        assert!(line.ends_with(" created"), "not created: {line}\n{out}");
        created += 1;
    }
    // 2 Secrets, 2 ImageChannels, 1 RolloutPolicy, 5 Tenants (one of them adopts a legacy host).
    assert_eq!(created, 10, "{out}");
    let out = k.ok(&["apply", "-f", examples.to_str().unwrap()]).await;
    assert!(out.lines().all(|l| l.ends_with(" unchanged") || l.ends_with(" configured")), "{out}");

    // Printer columns.
    let out = k.ok(&["get", "tenants", "-n", &bed.ns]).await;
    assert_eq!(header(&out), ["NAME", "TIER", "CHANNEL", "RUNNING", "SLOT", "READY", "AGE"], "{out}");
    let rows = names(&out);
    assert_eq!(rows.len(), EXAMPLE_TENANTS, "{out}");
    for name in ["canary-1", "acme"] {
        assert!(rows.iter().any(|r| r == name), "{name} missing:\n{out}");
    }
    let acme = out.lines().find(|l| l.starts_with("acme ")).unwrap();
    assert!(acme.contains(" production ") && acme.contains(" stable "), "{out}");
    let out = k.ok(&["get", "tenants", "-n", &bed.ns, "-o", "wide"]).await;
    let h = header(&out);
    for col in ["REASON", "INSTANCE"] {
        assert!(h.iter().any(|c| c == col), "-o wide lacks {col}:\n{out}");
    }
    // Short name and category.
    let out = k.ok(&["get", "tn", "-n", &bed.ns]).await;
    assert_eq!(names(&out).len(), EXAMPLE_TENANTS, "{out}");
    let out = k.ok(&["get", "fleet", "-n", &bed.ns]).await;
    for kind in [
        "tenant.fleet.molecule.ai/acme",
        "imagechannel.fleet.molecule.ai/staging",
        "rolloutpolicy.fleet.molecule.ai/blue-green",
    ] {
        assert!(out.contains(kind), "`get fleet` lacks {kind}:\n{out}");
    }

    // A tenant that converges for real, applied by kubectl from a generated manifest.
    let digest =
        bed.stack.push_image("platform-tenant", "kubectl-e2e", &[("sim.health", "healthy")], false).await.unwrap();
    channel_at(&bed, "kubectl-e2e", &digest).await;
    let id = launch_managed(&bed.stack, "kube", &[], HostState::Fresh).await.unwrap();
    let manifest = dir.path().join("kube-tenant.yaml");
    let tenant = tenant_json("kube", &id, serde_json::json!({"channel": "kubectl-e2e"}));
    std::fs::write(&manifest, serde_yaml_ng::to_string(&tenant).unwrap()).unwrap();
    let out = k.ok(&["apply", "-n", &bed.ns, "-f", manifest.to_str().unwrap()]).await;
    assert!(out.contains("tenant.fleet.molecule.ai/kube created"), "{out}");
    let (ok, out, err) = k
        .run_for(
            Duration::from_secs(120),
            &["wait", "--for=condition=Ready", "tenant/kube", "-n", &bed.ns, "--timeout=90s"],
        )
        .await;
    let status = bed.tenants().get("kube").await.map(|t| serde_json::to_string_pretty(&t.status).unwrap_or_default());
    assert!(ok && out.contains("condition met"), "kubectl wait: {out}\n{err}\nstatus: {status:?}");

    let out = k.ok(&["get", "tenant", "kube", "-n", &bed.ns, "-o", "wide"]).await;
    let row = out.lines().nth(1).unwrap_or_default();
    assert!(row.contains(" True ") && row.contains(&id), "{out}");
    let short = digest.trim_start_matches("sha256:");
    assert!(row.contains(&short[..12]), "RUNNING column should show the digest {digest}:\n{out}");

    // describe shows the controller's events.
    let out = k.ok(&["describe", "tenant", "kube", "-n", &bed.ns]).await;
    let events = out.split("\nEvents:").nth(1).unwrap_or_else(|| panic!("no Events section:\n{out}"));
    assert!(!events.trim_start().starts_with("<none>"), "no events:\n{out}");
    assert!(events.contains("Normal") || events.contains("Warning"), "{out}");
}
