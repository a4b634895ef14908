//! `kubectl fleet dashboard` in a real browser: the real kubectl runs the real plugin with a
//! user's kubeconfig against the real control plane while the real controllers roll a fleet;
//! Debian's chromium, driven by playwright-core (`tests/dashboard/driver.mjs`), reads the page.
//! Covered: the fleet page lists the tenants; a rollout's progress moves on the page with no
//! reload; Pause on the page shows up in the RolloutPolicy's status, Resume lets it end; a user
//! whose RBAC has no `patch` sees the 403 and nothing changes; abort asks first; CSRF token,
//! Origin and Host checks; `--read-only`; no env value reaches the page; every request the
//! browser made went to 127.0.0.1. The README's screenshots are written by this test.

use crate::apply::tenant_json;
use crate::harness::Bed;
use crate::plugin::{User, wait};
use crate::rollout::{all_on, follow_tag, get_policy, policy};
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;
use tenant_operator::crd::{REQUEST_ANNOTATION_PREFIX, RolloutPolicy, Tenant};
use testbed::demo::launch_managed;
use testbed::stack::HostState;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

/// The browser, through `driver.mjs`.
struct Browser {
    _child: Child,
    stdin: ChildStdin,
    lines: Lines<BufReader<ChildStdout>>,
}

impl Browser {
    async fn start() -> Browser {
        let dir = repo().join("tests/dashboard");
        assert!(
            dir.join("node_modules/playwright-core").is_dir(),
            "no playwright-core in {} (scripts/bootstrap installs it)",
            dir.display()
        );
        assert!(Path::new("/usr/bin/chromium").is_file(), "no /usr/bin/chromium (scripts/bootstrap installs it)");
        let mut child = tokio::process::Command::new("node")
            .arg(dir.join("driver.mjs"))
            .current_dir(&dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("node (scripts/bootstrap installs it)");
        let stdin = child.stdin.take().unwrap();
        let lines = BufReader::new(child.stdout.take().unwrap()).lines();
        Browser { _child: child, stdin, lines }
    }

    /// One command; its value, or the test fails with the driver's error.
    async fn run(&mut self, cmd: Value) -> Value {
        self.try_run(cmd.clone()).await.unwrap_or_else(|e| panic!("browser {cmd}: {e}"))
    }

    async fn try_run(&mut self, cmd: Value) -> Result<Value, String> {
        self.stdin.write_all(format!("{cmd}\n").as_bytes()).await.unwrap();
        // The driver answers within the command's own timeout (60 s unless it names one).
        let bound = Duration::from_millis(cmd["timeout"].as_u64().unwrap_or(60_000)) + Duration::from_secs(90);
        let line = tokio::time::timeout(bound, self.lines.next_line())
            .await
            .unwrap_or_else(|_| panic!("the browser driver did not answer {cmd}"))
            .unwrap()
            .expect("the browser driver ended");
        let answer: Value = serde_json::from_str(&line).unwrap();
        if answer["ok"] == true { Ok(answer["value"].clone()) } else { Err(answer["error"].to_string()) }
    }

    async fn text(&mut self, page: &str, selector: &str) -> Vec<String> {
        let v = self.run(json!({"op": "texts", "page": page, "selector": selector})).await;
        serde_json::from_value(v).unwrap()
    }

    async fn state(&mut self, page: &str) -> Value {
        self.run(json!({"op": "state", "page": page})).await
    }
}

/// A `kubectl fleet dashboard` process and the URL it printed.
struct Dashboard {
    _child: Child,
    url: String,
}

async fn dashboard(user: &User, ns: &str, extra: &[&str]) -> Dashboard {
    let mut args = vec!["dashboard", "-n", ns, "--port", "0"];
    args.extend_from_slice(extra);
    let mut child = user.command(&args).stdout(Stdio::piped()).spawn().unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let first = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
        .await
        .expect("kubectl fleet dashboard printed nothing")
        .unwrap()
        .expect("kubectl fleet dashboard ended");
    let url = first.strip_prefix("dashboard: ").unwrap_or_else(|| panic!("first line: {first}")).to_string();
    assert!(url.starts_with("http://127.0.0.1:") && url.ends_with('/'), "{url}");
    Dashboard { _child: child, url }
}

/// The page's CSRF token, read as the page reads it.
async fn csrf(url: &str) -> (String, reqwest::header::HeaderMap) {
    let res = reqwest::get(url).await.unwrap();
    let headers = res.headers().clone();
    let html = res.text().await.unwrap();
    let token = html.split("name=\"csrf-token\" content=\"").nth(1).unwrap().split('"').next().unwrap().to_string();
    (token, headers)
}

async fn post_action(url: &str, token: Option<&str>, origin: Option<&str>, body: Value) -> (u16, Value) {
    let mut req = reqwest::Client::new().post(format!("{url}api/actions")).json(&body);
    if let Some(t) = token {
        req = req.header("x-csrf-token", t);
    }
    if let Some(o) = origin {
        req = req.header("origin", o);
    }
    let res = req.send().await.unwrap();
    let code = res.status().as_u16();
    (code, res.json().await.unwrap_or(Value::Null))
}

/// Read, list and watch of the three kinds and events, and nothing else: a user who may look.
async fn grant_read_only(bed: &Bed, user: &str) {
    let roles: kube::Api<Role> = kube::Api::namespaced(bed.client.clone(), &bed.ns);
    let bindings: kube::Api<RoleBinding> = kube::Api::namespaced(bed.client.clone(), &bed.ns);
    let pp = kube::api::PostParams::default();
    let role = json!({"metadata": {"name": "fleet-viewer"}, "rules": [
        {"apiGroups": ["fleet.molecule.ai"], "resources": ["tenants", "rolloutpolicies", "imagechannels"],
         "verbs": ["get", "list", "watch"]},
        {"apiGroups": [""], "resources": ["events"], "verbs": ["get", "list", "watch"]}]});
    roles.create(&pp, &serde_json::from_value(role).unwrap()).await.unwrap();
    let binding = json!({"metadata": {"name": "fleet-viewer"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "fleet-viewer"},
        "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": user}]});
    bindings.create(&pp, &serde_json::from_value(binding).unwrap()).await.unwrap();
}

/// How long a rollout step may take before the test says where it stuck: a bound for failure, not
/// a timing. Under the whole suite on 2 cores (the chaos test beside it) one production tenant of
/// this test took 40-50 s to apply in a CI run; the five of them did not fit in 120 s.
const ROLL_MS: u64 = 600_000;

const PRODUCTION: [&str; 5] = ["prod-a", "prod-b", "prod-c", "prod-d", "prod-e"];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_shows_the_fleet_rolling_live_and_acts_as_the_user() {
    let bed = Bed::start().await.unwrap();
    let ns = bed.ns.clone();
    let dir = tempfile::tempdir().unwrap();
    let v1 = bed.stack.push_image("platform-tenant", "staging", &[("sim.version", "1")], false).await.unwrap();
    follow_tag(&bed, "staging", "staging").await;
    policy(
        &bed,
        "default",
        json!({"maxConcurrency": 1, "stagger": "2s",
        "canary": {"minCanaries": 1, "soak": "6s", "sampleInterval": "1s"}}),
    )
    .await;
    // Each tenant carries an env value the page must never see.
    let secret_of = |name: &str| format!("dash-secret-{name}-{}", &bed.ns[bed.ns.len().saturating_sub(6)..]);
    let mut names = vec!["can-a"];
    names.extend(PRODUCTION);
    for name in &names {
        let id = launch_managed(&bed.stack, name, &[], HostState::Fresh).await.unwrap();
        let tier = if name.starts_with("can-") { "canary" } else { "production" };
        bed.create::<Tenant>(tenant_json(
            name,
            &id,
            json!({"tier": tier, "rolloutPolicy": "default",
            "container": {"env": [{"name": "API_TOKEN", "value": secret_of(name)}]}}),
        ))
        .await
        .unwrap();
    }
    all_on(&bed, &names, &v1, Duration::from_millis(ROLL_MS)).await;

    let admin = User::new(&bed, dir.path(), "admin");
    let board = dashboard(&admin, &ns, &[]).await;
    let mut b = Browser::start().await;

    // The fleet page lists every tenant.
    b.run(json!({"op": "open", "url": board.url})).await;
    b.run(json!({"op": "waitFor", "selector": "[data-test=tenant-row]", "count": names.len()})).await;
    let mut listed: Vec<String> = b
        .text("main", "[data-test=tenant-row] td:first-child")
        .await
        .into_iter()
        .map(|s| s.trim().to_string())
        .collect();
    listed.sort();
    let mut want: Vec<String> = names.iter().map(|s| s.to_string()).collect();
    want.sort();
    assert_eq!(listed, want);
    // Search narrows the list (from the keyboard: `/` focuses the search box).
    b.run(json!({"op": "press", "key": "/"})).await;
    assert_eq!(b.run(json!({"op": "focused"})).await["id"], "f-q");
    b.run(json!({"op": "type", "text": "prod-c"})).await;
    b.run(json!({"op": "waitFor", "selector": "[data-test=tenant-row]", "count": 1})).await;
    assert_eq!(b.text("main", "[data-test=tenant-row] td:first-child").await, vec!["prod-c"]);
    for _ in 0.."prod-c".len() {
        b.run(json!({"op": "press", "key": "Backspace"})).await;
    }
    b.run(json!({"op": "waitFor", "selector": "[data-test=tenant-row]", "count": names.len()})).await;

    // A rollout moves on the page with no reload.
    b.run(json!({"op": "mark"})).await;
    b.run(json!({"op": "hash", "hash": "#/policy/default"})).await;
    let v2 = bed.stack.push_image("platform-tenant", "staging", &[("sim.version", "2")], false).await.unwrap();
    let counter = format!("[data-test=rollout][data-digest=\"{v2}\"] [data-test=production-progress-count]");
    b.run(json!({"op": "waitFor", "selector": counter, "text": "/5", "timeout": ROLL_MS})).await;
    let mut seen: Vec<String> = Vec::new();
    let t0 = std::time::Instant::now();
    let paused_at = loop {
        let now = b.text("main", &counter).await.first().cloned().unwrap_or_default();
        if seen.last() != Some(&now) {
            seen.push(now.clone());
        }
        let moved: usize = now.split('/').next().and_then(|m| m.parse().ok()).unwrap_or(0);
        if moved >= 1 {
            // Mid-rollout: the README's rollout screenshot, then Pause from the page.
            b.run(json!({"op": "screenshot", "path": repo().join("tests/dashboard/screenshots/rollout.png"), "fullPage": true}))
                .await;
            b.run(json!({"op": "click", "selector": "[data-action=pause]"})).await;
            b.run(json!({"op": "waitFor", "selector": "#notice", "text": "requested pause"})).await;
            break moved;
        }
        assert!(t0.elapsed() < Duration::from_millis(ROLL_MS), "the page's counter stayed at {seen:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    // The pause, in the policy's status: acknowledged with the token the page's request carried,
    // and the rollout paused; the page then says so.
    let p = wait("the pause acknowledged", Duration::from_secs(30), async || {
        let p = get_policy(&bed, "default").await;
        let st = p.status.clone()?;
        let token = p.metadata.annotations.as_ref()?.get(&format!("{REQUEST_ANNOTATION_PREFIX}pause"))?.clone();
        (st.handled_requests.get("pause") == Some(&token) && st.rollouts.iter().any(|r| r.digest == v2 && r.paused))
            .then_some(p)
    })
    .await;
    let paused = p.status.unwrap().rollouts.into_iter().find(|r| r.digest == v2).unwrap();
    assert!(paused.paused);
    let badge = format!("[data-test=rollout][data-digest=\"{v2}\"] h3 .badge.paused");
    b.run(json!({"op": "waitFor", "selector": badge})).await;
    assert!(
        b.text("main", "[data-test=rollout] [data-test=batches] li").await.len() >= 2,
        "canary + a production batch"
    );
    // Resume from the page; the rollout ends, and the page follows it to 5/5 — all without a
    // reload.
    b.run(json!({"op": "click", "selector": "[data-action=resume]"})).await;
    b.run(json!({"op": "waitFor", "selector": counter, "text": "5/5", "timeout": ROLL_MS})).await;
    seen.push("5/5".into());
    let st = b.state("main").await;
    assert_eq!(st["mark"], "set", "the page was reloaded");
    assert_eq!(st["navigations"], 1);
    assert!(paused_at < 5 && seen.len() >= 2, "the counter moved on the page: {seen:?}");
    all_on(&bed, &names, &v2, Duration::from_secs(60)).await;

    // Abort asks first; cancelled, nothing is requested.
    b.run(json!({"op": "click", "selector": "[data-action=abort]"})).await;
    assert_eq!(b.state("main").await["dialogOpen"], true);
    b.run(json!({"op": "press", "key": "Escape"})).await;
    assert_eq!(b.state("main").await["dialogOpen"], false);
    let annotations = get_policy(&bed, "default").await.metadata.annotations.unwrap_or_default();
    assert!(!annotations.contains_key(&format!("{REQUEST_ANNOTATION_PREFIX}abort")), "{annotations:?}");

    // The tenant view: what the host runs, its applies; never an env value.
    b.run(json!({"op": "hash", "hash": "#/tenant/prod-a"})).await;
    b.run(json!({"op": "waitFor", "selector": "[data-test=history] tbody tr", "text": &v2[7..19]})).await;
    let slots = b.text("main", "[data-test=slots] tbody tr").await.join("\n");
    assert!(slots.contains("serving") && slots.contains(&v2[7..19]), "{slots}");
    b.run(json!({"op": "hash", "hash": "#/channel/staging"})).await;
    b.run(json!({"op": "waitFor", "selector": "[data-test=channel-history] tbody tr", "count": 2})).await;

    // Which tenants run a digest: the digest table's button filters the list by it.
    b.run(json!({"op": "hash", "hash": "#/"})).await;
    b.run(json!({"op": "waitFor", "selector": "[data-test=digests] tbody tr", "text": &v2[7..19]})).await;
    b.run(json!({"op": "click", "selector": "[data-test=digests] tbody tr button"})).await;
    b.run(json!({"op": "waitFor", "selector": "[data-test=page-info]", "text": "of 6"})).await;
    let running = b.text("main", "[data-test=tenant-row] td:nth-child(6)").await;
    assert!(running.len() == 6 && running.iter().all(|r| r.trim() == &v2[7..19]), "{running:?}");
    b.run(json!({"op": "click", "selector": "#f-digest"})).await;
    b.run(json!({"op": "press", "key": "Control+A"})).await;
    b.run(json!({"op": "type", "text": &v1[7..19]})).await;
    b.run(json!({"op": "waitFor", "selector": "[data-test=page-info]", "text": "no tenant matches"})).await;

    // The fleet screenshots (light and dark, fresh pages), the README's.
    b.run(json!({"op": "open", "page": "light", "url": board.url})).await;
    b.run(json!({"op": "open", "page": "dark", "url": board.url, "colorScheme": "dark"})).await;
    for (page, file) in [("light", "fleet.png"), ("dark", "fleet-dark.png")] {
        b.run(json!({"op": "waitFor", "page": page, "selector": "[data-test=count-total]", "text": "6 tenants"})).await;
        b.run(json!({"op": "waitFor", "page": page, "selector": "[data-test=count-Ready]", "text": "6 Ready"})).await;
        let path = repo().join("tests/dashboard/screenshots").join(file);
        b.run(json!({"op": "screenshot", "page": page, "path": path, "fullPage": true})).await;
    }

    // A user who may read but not patch: the page shows the API server's 403, nothing changes.
    grant_read_only(&bed, "viewer").await;
    let viewer = User::new(&bed, dir.path(), "viewer");
    let vboard = dashboard(&viewer, &ns, &[]).await;
    b.run(json!({"op": "open", "page": "viewer", "url": format!("{}#/policy/default", vboard.url)})).await;
    b.run(json!({"op": "waitFor", "page": "viewer", "selector": "[data-test=rollout]"})).await;
    let before: RolloutPolicy = get_policy(&bed, "default").await;
    b.run(json!({"op": "click", "page": "viewer", "selector": "[data-action=pause]"})).await;
    let shown = b.run(json!({"op": "waitFor", "page": "viewer", "selector": "#notice", "text": "403"})).await;
    let shown = shown.as_str().unwrap();
    assert!(shown.contains("Forbidden (403)") && shown.contains("viewer"), "{shown}");
    let after: RolloutPolicy = get_policy(&bed, "default").await;
    assert_eq!(
        before.metadata.resource_version, after.metadata.resource_version,
        "the refused pause changed the policy"
    );

    // The page's own defences, at the HTTP level (as a hostile page elsewhere would try).
    let (token, headers) = csrf(&board.url).await;
    let csp = headers.get("content-security-policy").unwrap().to_str().unwrap();
    assert!(csp.contains("default-src 'none'") && csp.contains("script-src 'self'"), "{csp}");
    let origin = board.url.trim_end_matches('/').to_string();
    let pause = json!({"action": {"verb": "pause", "policy": "default"}});
    assert_eq!(post_action(&board.url, None, Some(&origin), pause.clone()).await.0, 403, "no CSRF token");
    assert_eq!(post_action(&board.url, Some(&token), Some("http://evil.example"), pause.clone()).await.0, 403);
    assert_eq!(post_action(&board.url, Some(&token), None, pause.clone()).await.0, 403, "no Origin");
    let abort = json!({"action": {"verb": "abort", "policy": "default"}});
    let (code, body) = post_action(&board.url, Some(&token), Some(&origin), abort).await;
    assert_eq!(code, 400, "abort without confirm: {body}");
    let rebound = reqwest::Client::new().get(&board.url).header("host", "rebound.example:80").send().await.unwrap();
    assert_eq!(rebound.status().as_u16(), 421, "a DNS-rebinding Host is refused");
    assert_eq!(get_policy(&bed, "default").await.metadata.resource_version, after.metadata.resource_version);
    // --read-only: no buttons, and a write is refused even with the token.
    let ro = dashboard(&admin, &ns, &["--read-only"]).await;
    b.run(json!({"op": "open", "page": "ro", "url": format!("{}#/policy/default", ro.url)})).await;
    b.run(json!({"op": "waitFor", "page": "ro", "selector": "[data-test=rollout]"})).await;
    assert_eq!(b.run(json!({"op": "count", "page": "ro", "selector": "[data-action]"})).await, 0);
    let (rtoken, _) = csrf(&ro.url).await;
    let (code, body) = post_action(&ro.url, Some(&rtoken), Some(ro.url.trim_end_matches('/')), pause).await;
    assert_eq!(code, 403, "{body}");
    assert_eq!(get_policy(&bed, "default").await.metadata.resource_version, after.metadata.resource_version);

    // No env value anywhere the page can read, nor in what it rendered.
    let mut everything = String::new();
    for path in ["", "api/summary", "api/tenants?limit=500", "api/policies/default", "api/channels/staging"] {
        everything += &reqwest::get(format!("{}{path}", board.url)).await.unwrap().text().await.unwrap();
    }
    for name in &names {
        everything += &reqwest::get(format!("{}api/tenants/{name}", board.url)).await.unwrap().text().await.unwrap();
    }
    assert!(everything.contains("API_TOKEN"), "the env names are shown");
    for page in ["main", "light", "dark", "viewer", "ro"] {
        everything += b.state(page).await["html"].as_str().unwrap();
    }
    for name in &names {
        assert!(!everything.contains(&secret_of(name)), "{name}'s env value reached the page");
    }

    // Every request the browser made went to 127.0.0.1 (the dashboards' own ports), and the page
    // raised no error of its own.
    let requests = b.run(json!({"op": "requests"})).await;
    let requests = requests.as_array().unwrap();
    assert!(requests.len() > 10, "{requests:?}");
    for r in requests {
        let url = r["url"].as_str().unwrap();
        assert!(url.starts_with("http://127.0.0.1:"), "a request left 127.0.0.1: {url}");
    }
    let problems = b.run(json!({"op": "problems"})).await;
    let problems: Vec<String> = serde_json::from_value(problems).unwrap();
    // The 403 answer of the viewer's pause is logged by the browser as a failed resource; nothing else.
    let unexpected: Vec<&String> = problems.iter().filter(|p| !p.contains("403")).collect();
    assert!(unexpected.is_empty(), "{unexpected:?}");
    b.run(json!({"op": "close"})).await;
}
