//! The Argo CD resource actions (deploy/argocd) produce objects the real API server accepts: the
//! Go test in tests/gitops applies each action's merge patch, as Argo CD sends it, to a copy of
//! an object captured from a real run, on this binary's control plane.

use crate::harness::Bed;
use testbed::stack::repo_root;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn argo_cd_actions_are_accepted_by_the_real_api_server() {
    let bed = Bed::start_without_controllers().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("admin.kubeconfig");
    bed.cp.write_kubeconfig(&kubeconfig).unwrap();
    let cache = std::env::var("TENANT_OPERATOR_CACHE")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|_| std::path::PathBuf::from(std::env::var("HOME").unwrap()).join(".cache/tenant-operator"));
    let out = tokio::process::Command::new("go")
        .args(["test", "-count=1", "-run", "TestActionsAreAcceptedByTheAPIServer", "-v", "."])
        .current_dir(repo_root().join("tests/gitops"))
        .env("GOMODCACHE", cache.join("go/mod"))
        .env("GOCACHE", cache.join("go/build"))
        .env("GOFLAGS", "-modcacherw")
        .env("GOTOOLCHAIN", "local")
        .env("GOWORK", "off")
        .env("TESTBED_KUBECONFIG", &kubeconfig)
        .env("TESTBED_KUBECTL", testbed::stack::venv_bin("kubectl"))
        .env("TESTBED_NAMESPACE", &bed.ns)
        .output()
        .await
        .expect("go runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "go test failed:\n{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    let passed = stdout.lines().filter(|l| l.trim_start().starts_with("--- PASS")).count();
    assert!(passed >= 10, "too few action cases ran ({passed}):\n{stdout}");
}
