//! The demo binary, run as a user runs it: it stands on the real control plane (`kubectl version`
//! says v1.37.2, `api-resources` lists the built-in API, `/readyz?verbose` shows etcd), its fleet
//! converges, and nothing it started outlives it — after SIGTERM or SIGKILL alike.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

struct Demo {
    child: Child,
    lines: mpsc::Receiver<String>,
    marker: String,
    seen: Vec<String>,
}

impl Demo {
    fn start(kubeconfig: &Path, extra: &[&str]) -> Demo {
        let mut child = Command::new(env!("CARGO_BIN_EXE_tenant-operator-demo"))
            .arg("--kubeconfig")
            .arg(kubeconfig)
            .args(extra)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("the demo starts");
        let (tx, lines) = mpsc::channel();
        let stderr = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut demo = Demo { child, lines, marker: String::new(), seen: Vec::new() };
        let line = demo.wait_line(Duration::from_secs(600), |l| l.starts_with("test bed processes: "));
        demo.marker = line.trim_start_matches("test bed processes: ").to_string();
        demo
    }

    /// Waits for a line of the demo's output that matches.
    fn wait_line(&mut self, limit: Duration, pred: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + limit;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if pred(&line) {
                        return line;
                    }
                }
                Err(_) => panic!("no such line within {limit:?}; the demo said:\n{}", self.seen.join("\n")),
            }
        }
    }
}

/// Processes of the demo: its environment marker, or its run directories on the command line
/// (`.testbed/runs/<millis>-<demo pid>-…`: the simulated containers, whose environment is theirs).
fn marked(marker: &str, demo_pid: u32) -> Vec<String> {
    let dirs = format!("{}/", testbed::stack::repo_root().join(".testbed/runs").display());
    let pid_part = format!("-{demo_pid}-");
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if !name.chars().all(|c| c.is_ascii_digit()) {
            continue;
        }
        let Ok(env) = std::fs::read(entry.path().join("environ")) else { continue };
        let cmd = String::from_utf8_lossy(&std::fs::read(entry.path().join("cmdline")).unwrap_or_default())
            .replace('\0', " ");
        let in_run_dir =
            cmd.split(&dirs).skip(1).any(|rest| rest.split('/').next().is_some_and(|d| d.contains(&pid_part)));
        if env.split(|b| *b == 0).any(|e| e == marker.as_bytes()) || in_run_dir {
            out.push(format!("{name}: {cmd}"));
        }
    }
    out
}

/// After the demo is gone, every process of it goes within a few seconds (the warden's work).
fn nothing_outlives(marker: &str, demo_pid: u32, alive_before: usize) {
    assert!(alive_before >= 5, "the marker should be on the control plane and the stand-ins: {alive_before}");
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let left = marked(marker, demo_pid);
        if left.is_empty() {
            return;
        }
        assert!(Instant::now() < deadline, "{} test-bed processes outlived the demo:\n{}", left.len(), left.join("\n"));
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn kubectl(kubeconfig: &Path, args: &[&str]) -> String {
    let bin = testbed::stack::venv_bin("kubectl");
    let out = Command::new(&bin).arg("--kubeconfig").arg(kubeconfig).args(args).output().expect("kubectl runs");
    assert!(out.status.success(), "kubectl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn the_demo_runs_on_the_real_control_plane_and_leaves_nothing_behind() {
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("demo.kubeconfig");
    let mut demo = Demo::start(&kubeconfig, &["--canaries", "1", "--production", "2", "--legacy", "1"]);
    demo.wait_line(Duration::from_secs(300), |l| l.contains("every tenant runs its channel's digest"));

    let version: serde_json::Value = serde_json::from_str(&kubectl(&kubeconfig, &["version", "-o", "json"])).unwrap();
    assert_eq!(version["serverVersion"]["gitVersion"], "v1.37.2", "{version}");
    let resources = kubectl(&kubeconfig, &["api-resources", "-o", "name"]);
    for r in [
        "pods",
        "deployments.apps",
        "leases.coordination.k8s.io",
        "customresourcedefinitions.apiextensions.k8s.io",
        "clusterroles.rbac.authorization.k8s.io",
        "tenants.fleet.molecule.ai",
        "rolloutpolicies.fleet.molecule.ai",
    ] {
        assert!(resources.lines().any(|l| l == r), "api-resources lacks {r}:\n{resources}");
    }
    assert!(resources.lines().count() > 50, "{resources}");
    let readyz = kubectl(&kubeconfig, &["get", "--raw", "/readyz?verbose"]);
    assert!(readyz.contains("[+]etcd ok"), "{readyz}");
    let tenants = kubectl(&kubeconfig, &["get", "tenants", "-n", "fleet", "-o", "name"]);
    assert_eq!(tenants.lines().count(), 4, "{tenants}");
    // The dashboard the demo started shows the same fleet (read with the real curl).
    let line = demo.seen.iter().find(|l| l.starts_with("dashboard: http://127.0.0.1:")).cloned();
    let url = line.unwrap_or_else(|| panic!("no dashboard line:\n{}", demo.seen.join("\n")))["dashboard: ".len()..]
        .to_string();
    let curl = |path: &str| {
        let out = Command::new("curl").args(["-sS", "--fail", "-i", &format!("{url}{path}")]).output().unwrap();
        assert!(out.status.success(), "curl {url}{path}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let page = curl("");
    assert!(page.to_lowercase().contains("content-security-policy: default-src 'none'"), "{page}");
    let summary = curl("api/summary");
    let body: serde_json::Value = serde_json::from_str(summary.split("\r\n\r\n").nth(1).unwrap()).unwrap();
    assert_eq!(body["namespace"], "fleet");
    assert_eq!(body["total"], 4, "{body}");

    let alive = marked(&demo.marker, demo.child.id()).len();
    let pid = demo.child.id().to_string();
    assert!(Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
    let status = demo.child.wait().unwrap();
    assert!(demo.seen.iter().all(|l| !l.contains("panicked")), "{}", demo.seen.join("\n"));
    eprintln!("demo exited ({status}) after SIGTERM; {alive} test-bed processes were running");
    nothing_outlives(&demo.marker, demo.child.id(), alive);
}

#[test]
fn a_killed_demo_leaves_nothing_behind() {
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("demo.kubeconfig");
    let mut demo = Demo::start(&kubeconfig, &["--canaries", "1", "--production", "1", "--legacy", "0"]);
    // Hosts with their routers and containers are up once the fleet converged.
    demo.wait_line(Duration::from_secs(300), |l| l.contains("every tenant runs its channel's digest"));
    let pid = demo.child.id();
    let alive = marked(&demo.marker, pid).len();
    // The simulated containers (one per host) are among them.
    assert!(marked(&demo.marker, pid).iter().filter(|p| p.contains("slot_app.py")).count() >= 2);
    demo.child.kill().unwrap();
    demo.child.wait().unwrap();
    nothing_outlives(&demo.marker, pid, alive);
}
