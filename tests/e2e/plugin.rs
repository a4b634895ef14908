//! `kubectl fleet`, the way a user runs it: the real kubectl finds `kubectl-fleet` on PATH and runs
//! it with the user's kubeconfig (`KUBECONFIG`), against the real control plane, while the real
//! controllers roll a new digest out. Covered: `status --watch` as the rollout progresses, `status`,
//! `get tenants` (table, wide, json), `history`, the requests, `hold`/`release`,
//! `suspend`/`unsuspend`, `undo` (plan, refusal without --yes, the pin), exit codes for "not
//! found" and for a user whose RBAC forbids it, and no escape codes off a terminal.

use crate::harness::Bed;
use crate::kubectl::find_kubectl;
use crate::rollout::{all_on, fleet, follow_tag, get_policy, policy};
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};
use tenant_operator::crd::{ImageChannel, Tenant};
use tokio::io::AsyncBufReadExt;

/// `<target>/debug/kubectl-fleet`, next to this test binary (`scripts/test` builds it).
pub(crate) fn plugin_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let dir = exe.ancestors().nth(2).unwrap().to_path_buf();
    assert!(
        dir.join("kubectl-fleet").is_file(),
        "no kubectl-fleet in {} (cargo build -p tenant-operator --bins)",
        dir.display()
    );
    dir
}

pub(crate) struct User {
    kubeconfig: PathBuf,
    path: String,
}

impl User {
    pub(crate) fn new(bed: &Bed, dir: &Path, name: &str) -> User {
        let kubeconfig = dir.join(format!("{name}.kubeconfig"));
        bed.cp.write_kubeconfig_for(&kubeconfig, name).unwrap();
        // kubectl itself, and the plugin beside it: nothing else of the build on PATH.
        let kubectl_dir = find_kubectl().parent().unwrap().to_path_buf();
        let path = format!("{}:{}:/usr/bin:/bin", plugin_dir().display(), kubectl_dir.display());
        User { kubeconfig, path }
    }

    pub(crate) fn command(&self, args: &[&str]) -> tokio::process::Command {
        let mut cmd = tokio::process::Command::new(find_kubectl());
        cmd.arg("fleet")
            .args(args)
            .env("KUBECONFIG", &self.kubeconfig)
            .env("PATH", &self.path)
            .env_remove("NO_COLOR")
            .stdin(Stdio::null())
            .kill_on_drop(true);
        cmd
    }

    /// (exit code, stdout, stderr).
    async fn run(&self, args: &[&str]) -> (i32, String, String) {
        let out = tokio::time::timeout(Duration::from_secs(60), self.command(args).output())
            .await
            .unwrap_or_else(|_| panic!("kubectl fleet {args:?} hung"))
            .unwrap();
        let (stdout, stderr) =
            (String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned());
        assert!(
            !stdout.contains('\u{1b}') && !stderr.contains('\u{1b}'),
            "escape codes off a terminal:\n{stdout}{stderr}"
        );
        (out.status.code().unwrap_or(-1), stdout, stderr)
    }

    async fn ok(&self, args: &[&str]) -> String {
        let (code, out, err) = self.run(args).await;
        assert_eq!(code, 0, "kubectl fleet {args:?}:\n{out}\n{err}");
        out
    }
}

pub(crate) async fn wait<T>(what: &str, limit: Duration, mut f: impl AsyncFnMut() -> Option<T>) -> T {
    let t0 = Instant::now();
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(t0.elapsed() < limit, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_fleet_watches_a_rollout_and_acts_as_the_user() {
    let bed = Bed::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let admin = User::new(&bed, dir.path(), "admin");
    let ns = bed.ns.clone();
    let v1 = bed.stack.push_image("platform-tenant", "staging", &[("sim.version", "1")], false).await.unwrap();
    follow_tag(&bed, "staging", "staging").await;
    policy(&bed, "default", json!({"maxConcurrency": 1, "stagger": "1s", "canary": {"minCanaries": 1, "soak": "4s", "sampleInterval": "1s"}})).await;
    let members =
        [("can-p", "canary", "staging"), ("prod-p", "production", "staging"), ("prod-q", "production", "staging")];
    fleet(&bed, "default", &members).await;
    let names = ["can-p", "prod-p", "prod-q"];
    all_on(&bed, &names, &v1, Duration::from_secs(120)).await;
    wait("the first rollout complete", Duration::from_secs(60), async || {
        let p = get_policy(&bed, "default").await;
        p.status?.rollouts.iter().any(|r| r.digest == v1 && r.phase == "Complete").then_some(())
    })
    .await;

    // The tree, once.
    let out = admin.ok(&["status", "-n", &ns]).await;
    assert!(out.starts_with("rolloutpolicy/default  Ready"), "{out}");
    assert!(out.contains(&format!("staging@{}  Complete", &v1[7..19])), "{out}");
    assert!(out.contains("Ready (Converged): can-p, prod-p, prod-q"), "{out}");

    // --watch while a new digest rolls out: the phases follow each other in the output.
    let mut watch = admin.command(&["status", "-n", &ns, "--watch"]).stdout(Stdio::piped()).spawn().unwrap();
    let mut lines = tokio::io::BufReader::new(watch.stdout.take().unwrap()).lines();
    let first = tokio::time::timeout(Duration::from_secs(30), lines.next_line()).await.unwrap().unwrap().unwrap();
    assert!(first.starts_with("--- "), "off a terminal each render starts with a stamp: {first}");
    let v2 = bed.stack.push_image("platform-tenant", "staging", &[("sim.version", "2")], false).await.unwrap();
    let short = v2[7..19].to_string();
    let mut seen: Vec<String> = Vec::new();
    let t0 = Instant::now();
    while !seen.iter().any(|p| p == "Complete") {
        let line = tokio::time::timeout(Duration::from_secs(120), lines.next_line())
            .await
            .unwrap_or_else(|_| panic!("--watch printed nothing new; phases seen: {seen:?}"))
            .unwrap()
            .unwrap_or_else(|| panic!("--watch ended; phases seen: {seen:?}"));
        if let Some(rest) = line.strip_prefix(&format!("├── staging@{short}  ")) {
            let phase = rest.split_whitespace().next().unwrap_or_default().to_string();
            if seen.last() != Some(&phase) {
                seen.push(phase);
            }
        }
        assert!(t0.elapsed() < Duration::from_secs(180), "phases seen: {seen:?}");
    }
    let _ = watch.start_kill();
    let at = |p: &str| seen.iter().position(|x| x == p);
    assert!(at("Soaking").is_some() && at("Production").is_some(), "phases seen: {seen:?}");
    assert!(at("Soaking") < at("Production") && at("Production") < at("Complete"), "phases out of order: {seen:?}");
    all_on(&bed, &names, &v2, Duration::from_secs(60)).await;

    // get tenants: desired vs running, as a table and as JSON.
    let out = admin.ok(&["get", "tenants", "-n", &ns]).await;
    let header: Vec<&str> = out.lines().next().unwrap().split_whitespace().collect();
    assert_eq!(header, ["NAME", "TIER", "CHANNEL", "DESIRED", "RUNNING", "DRIFT", "SLOT", "READY", "REASON"], "{out}");
    for name in names {
        let row = out.lines().find(|l| l.starts_with(&format!("{name} "))).unwrap_or_else(|| panic!("{name}:\n{out}"));
        assert_eq!(row.matches(short.as_str()).count(), 2, "desired and running are v2: {row}");
    }
    let wide = admin.ok(&["get", "tenants", "-n", &ns, "-o", "wide"]).await;
    assert!(wide.lines().next().unwrap().contains("INSTANCE") && wide.contains("default"), "{wide}");
    let list: Value = serde_json::from_str(&admin.ok(&["get", "tenants", "-n", &ns, "-o", "json"]).await).unwrap();
    assert_eq!(list["items"].as_array().unwrap().len(), 3);

    // history: the channel's digests, numbered; a tenant's applies.
    let out = admin.ok(&["history", "channel/staging", "-n", &ns]).await;
    assert!(out.lines().nth(1).is_some_and(|l| l.starts_with("1 ") && l.contains(&v2)), "{out}");
    assert!(out.lines().nth(2).is_some_and(|l| l.starts_with("2 ") && l.contains(&v1)), "{out}");
    let out = admin.ok(&["history", "prod-p", "-n", &ns]).await;
    assert!(out.contains(&short) && out.contains(&v1[7..19]), "{out}");

    // A request, acknowledged by the coordinator.
    let out = admin.ok(&["pause", "default", "-n", &ns]).await;
    let token = out.split("(token ").nth(1).and_then(|r| r.split(')').next()).unwrap().to_string();
    wait("the pause acknowledged", Duration::from_secs(30), async || {
        let p = get_policy(&bed, "default").await;
        (p.status?.handled_requests.get("pause") == Some(&token)).then_some(())
    })
    .await;
    admin.ok(&["resume", "default", "-n", &ns]).await;

    // hold pins what the host serves; release removes it; suspend and unsuspend.
    let out = admin.ok(&["hold", "prod-p", "-n", &ns]).await;
    assert!(out.contains(&v2), "{out}");
    let t: Tenant = bed.tenants().get("prod-p").await.unwrap();
    assert_eq!(t.spec.pinned_digest.as_deref(), Some(v2.as_str()));
    admin.ok(&["release", "prod-p", "-n", &ns]).await;
    assert_eq!(bed.tenants().get("prod-p").await.unwrap().spec.pinned_digest, None);
    admin.ok(&["suspend", "prod-q", "-n", &ns]).await;
    assert!(bed.tenants().get("prod-q").await.unwrap().spec.suspend);
    admin.ok(&["unsuspend", "prod-q", "-n", &ns]).await;
    assert!(!bed.tenants().get("prod-q").await.unwrap().spec.suspend);

    // undo: the plan first; without --yes and with no terminal it is refused (exit 5) and nothing
    // changes; with --yes the channel is pinned to the earlier digest.
    let (code, out, err) = admin.run(&["undo", "staging", "-n", &ns, "--to", "2"]).await;
    assert_eq!(code, 5, "{out}\n{err}");
    assert!(out.contains(&v1) && out.contains("3 tenant(s) would move: can-p, prod-p, prod-q"), "{out}");
    let channels: kube::Api<ImageChannel> = kube::Api::namespaced(bed.client.clone(), &ns);
    assert_eq!(channels.get("staging").await.unwrap().spec.pinned_digest, None);
    admin.ok(&["undo", "staging", "-n", &ns, "--to", "2", "--yes"]).await;
    assert_eq!(channels.get("staging").await.unwrap().spec.pinned_digest.as_deref(), Some(v1.as_str()));

    // Exit codes: not found (3); a user without rights (4), with the server's words.
    let (code, _, err) = admin.run(&["hold", "no-such-tenant", "-n", &ns]).await;
    assert_eq!(code, 3, "{err}");
    let viewer = User::new(&bed, dir.path(), "viewer");
    let (code, _, err) = viewer.run(&["pause", "default", "-n", &ns]).await;
    assert_eq!(code, 4, "{err}");
    assert!(err.contains("forbidden") && err.contains("viewer"), "{err}");
    let (code, _, _) = admin.run(&["frobnicate"]).await;
    assert_eq!(code, 2);
    let help = admin.ok(&["--help"]).await;
    assert!(help.contains("Examples:") && help.contains("Exit codes:"), "{help}");
}
