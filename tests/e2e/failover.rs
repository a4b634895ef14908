//! Leader failover of the real binary, judged by what the API server recorded: two
//! `tenant-operator run` processes (the chart's ServiceAccount, a token each, leader election on)
//! roll a fleet; the leader is SIGKILLed, or cut off from the API server by a partition while it
//! keeps running. The standby takes over within the lease duration plus one renew, the rollout
//! ends, no host applies a revision twice, and the kube-apiserver's audit log shows no write from
//! the old leader's credential after the new leader's first write.

use crate::apply::{channel_at, tenant_json};
use crate::harness::Bed;
use crate::rollout::{all_on, policy, record, wait_policy};
use base64::Engine;
use kube::api::Api;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};
use tenant_operator::core::rollout::phase;
use tenant_operator::crd::Tenant;
use testbed::controlplane::{OPERATOR_NAMESPACE, RELEASE, kubectl};
use testbed::demo::launch_managed;
use testbed::partition::Partition;
use testbed::stack::HostState;

const LEASE_SECS: u64 = 6;
/// `run` renews `duration / 3` seconds before expiry: every `duration - duration / 3` seconds.
const RENEW_SECS: u64 = LEASE_SECS - LEASE_SECS / 3;

/// One `tenant-operator run` process.
pub(crate) struct Operator {
    pub(crate) child: tokio::process::Child,
    log: PathBuf,
    /// The token's id, as the audit log names the credential (`JTI=<id>`).
    credential: String,
    /// The lease identity prefix (`--pod-name`).
    pod: String,
    link: Partition,
    /// Where its `/metrics` answers (`127.0.0.1:PORT`).
    pub(crate) metrics_addr: String,
    /// Where its registry webhook listens (`127.0.0.1:PORT`).
    pub(crate) webhook_addr: String,
}

impl Operator {
    pub(crate) fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Operator {
    /// A failing test shows what each process said last.
    fn drop(&mut self) {
        if std::thread::panicking() {
            let log = self.log();
            let tail: Vec<&str> = log.lines().rev().take(40).collect();
            eprintln!("--- the last lines of {}:", self.pod);
            for l in tail.iter().rev() {
                eprintln!("{l}");
            }
        }
    }
}

/// `<target>/debug/tenant-operator`, next to this test binary (`scripts/test` builds it).
fn binary() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let bin = exe.ancestors().nth(2).unwrap().join("tenant-operator");
    assert!(bin.is_file(), "no {} (cargo build -p tenant-operator --bins)", bin.display());
    bin
}

fn jwt_id(token: &str) -> String {
    let payload = token.split('.').nth(1).unwrap();
    let claims: Value =
        serde_json::from_slice(&base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(payload).unwrap()).unwrap();
    claims["jti"].as_str().expect("a jti claim").to_string()
}

/// What a process needs of the bed (owned, so the standbys' keeper can start more).
#[derive(Clone)]
pub(crate) struct Spec {
    cp: &'static testbed::controlplane::ControlPlane,
    ns: String,
    registry: String,
    aws_env: Vec<(String, String)>,
}

impl Spec {
    pub(crate) fn of(bed: &Bed) -> Spec {
        Spec { cp: bed.cp, ns: bed.ns.clone(), registry: bed.stack.registry.clone(), aws_env: bed.stack.aws_env() }
    }
}

async fn spawn(bed: &Spec, dir: &Path, pod: &str) -> Operator {
    spawn_with(bed, dir, pod, &[]).await
}

/// [`spawn`] with more arguments for `run` (the chaos driver's `--leader-elect=false`).
pub(crate) async fn spawn_with(bed: &Spec, dir: &Path, pod: &str, extra: &[&str]) -> Operator {
    let admin = dir.join("admin.kubeconfig");
    bed.cp.write_kubeconfig(&admin).unwrap();
    let token = kubectl(&admin, &["create", "token", RELEASE, "-n", OPERATOR_NAMESPACE], None, None).await.unwrap();
    let token = token.trim().to_string();
    let upstream: std::net::SocketAddr =
        bed.cp.url.trim_start_matches("https://").parse().expect("the API server listens on an address");
    let link = Partition::start(upstream).await.unwrap();
    let kubeconfig = bed.cp.kubeconfig_with(pod, &token).replace(&bed.cp.url, &format!("https://{}", link.addr));
    let kc = dir.join(format!("{pod}.kubeconfig"));
    std::fs::write(&kc, kubeconfig).unwrap();
    let key = dir.join("hmac.key");
    std::fs::write(&key, b"e2e-failover-key").unwrap();
    let log = dir.join(format!("{pod}.log"));
    let free = || format!("127.0.0.1:{}", testbed::stack::free_port().unwrap());
    let (metrics_addr, webhook_addr) = (free(), free());
    let (marker, run_id) = testbed::warden::env().unwrap();
    let child = tokio::process::Command::new(binary())
        .arg("run")
        .args(["--hmac-key-file", key.to_str().unwrap(), "--watch-namespace", &bed.ns])
        .args(["--lease-name", &format!("lease-{}", bed.ns), "--lease-namespace", OPERATOR_NAMESPACE])
        .args(["--lease-duration-seconds", &LEASE_SECS.to_string(), "--pod-name", pod])
        .args(["--metrics-addr", &metrics_addr, "--webhook-addr", &webhook_addr])
        .args(if extra.contains(&"--observe-interval") { &[][..] } else { &["--observe-interval", "3s"][..] })
        .args(["--insecure-registry", &bed.registry, "--log-format", "json"])
        .args(extra)
        .env_clear()
        .envs(bed.aws_env.clone())
        .env("KUBECONFIG", &kc)
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env(marker, run_id)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    Operator {
        child,
        log,
        credential: format!("JTI={}", jwt_id(&token)),
        pod: pod.into(),
        link,
        metrics_addr,
        webhook_addr,
    }
}

async fn holder(bed: &Bed) -> Option<String> {
    let leases: Api<k8s_openapi::api::coordination::v1::Lease> =
        Api::namespaced(bed.client.clone(), OPERATOR_NAMESPACE);
    leases.get_opt(&format!("lease-{}", bed.ns)).await.unwrap()?.spec?.holder_identity
}

async fn wait_holder(bed: &Bed, who: &str, limit: Duration) -> Duration {
    let t0 = Instant::now();
    let prefix = format!("{who}_");
    while !holder(bed).await.is_some_and(|h| h.starts_with(&prefix)) {
        assert!(t0.elapsed() < limit, "{who} did not get the lease in {limit:?}: {:?}", holder(bed).await);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    t0.elapsed()
}

/// The standbys, kept running the way the kubelet keeps a Deployment's pods: one that exits
/// (a replica that lost the lease exits on purpose) is replaced by a new process with a new token.
struct Standbys {
    replicas: std::sync::Arc<tokio::sync::Mutex<Vec<Operator>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Standbys {
    async fn start(bed: Spec, dir: PathBuf) -> Standbys {
        let first = spawn(&bed, &dir, "replica-b").await;
        let replicas = std::sync::Arc::new(tokio::sync::Mutex::new(vec![first]));
        let r = replicas.clone();
        let task = tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(200)).await;
                let mut all = r.lock().await;
                let n = all.len();
                let last = all.last_mut().expect("a replica");
                if let Ok(Some(status)) = last.child.try_wait() {
                    eprintln!("{} exited ({status}); starting replica-b{n}", last.pod);
                    let next = spawn(&bed, &dir, &format!("replica-b{n}")).await;
                    all.push(next);
                }
            }
        });
        Standbys { replicas, task }
    }

    /// The lease holder is one of the standbys.
    async fn took_over(&self, bed: &Bed) -> bool {
        let pods: Vec<String> = self.replicas.lock().await.iter().map(|o| format!("{}_", o.pod)).collect();
        holder(bed).await.is_some_and(|h| pods.iter().any(|p| h.starts_with(p)))
    }

    async fn credentials(&self) -> Vec<String> {
        self.replicas.lock().await.iter().map(|o| o.credential.clone()).collect()
    }
}

impl Drop for Standbys {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A write the API server recorded (the audit log: writes only, see the test bed's policy).
#[derive(Debug)]
struct Write {
    at: jiff::Timestamp,
    namespace: String,
    credential: String,
    /// `verb namespace/resource/name[/subresource] -> HTTP code` (shown when the test fails).
    #[allow(dead_code)]
    what: String,
}

fn writes(bed: &Bed) -> Vec<Write> {
    let text = std::fs::read_to_string(bed.cp.audit_log()).unwrap();
    let mut out: Vec<Write> = text
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|e| e["stage"] == "ResponseComplete")
        .filter_map(|e| {
            let credential = e["user"]["extra"]["authentication.kubernetes.io/credential-id"][0].as_str()?.to_string();
            let r = &e["objectRef"];
            Some(Write {
                at: e["requestReceivedTimestamp"].as_str()?.parse().ok()?,
                namespace: r["namespace"].as_str().unwrap_or("").to_string(),
                credential,
                what: format!(
                    "{} {}/{}/{}{} -> {}",
                    e["verb"].as_str()?,
                    r["namespace"].as_str().unwrap_or(""),
                    r["resource"].as_str().unwrap_or(""),
                    r["name"].as_str().unwrap_or(""),
                    r["subresource"].as_str().map(|s| format!("/{s}")).unwrap_or_default(),
                    e["responseStatus"]["code"].as_i64().unwrap_or(0)
                ),
            })
        })
        .collect();
    out.sort_by_key(|w| w.at);
    out
}

/// Applies per (instance, action, revision) on the hosts (the simulator's timeline), observes
/// aside: more than one is a revision applied twice.
async fn double_applies(bed: &Bed) -> Vec<(String, usize)> {
    let timeline = bed.stack.timeline().await.unwrap();
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    for r in timeline.as_array().unwrap() {
        let p = &r["parameters"];
        let action = p["action"][0].as_str().or(p["action"].as_str()).unwrap_or("");
        if action == "observe" || action.is_empty() {
            continue;
        }
        // The command names the digest; the host's report, the revision it applied.
        let revision = r["revision"].as_str().unwrap_or("");
        *seen.entry(format!("{} {action} {revision}", r["instance_id"].as_str().unwrap_or(""))).or_default() += 1;
    }
    seen.into_iter().filter(|(_, n)| *n > 1).collect()
}

const TENANTS: [&str; 5] = ["fo-a", "fo-b", "fo-c", "fo-d", "fo-e"];

/// The fleet on v1 under a slow policy, the leader `replica-a` and its standbys; returns v2's
/// digest once its rollout is under way (a tenant moved, others still to go).
async fn rollout_under_way(bed: &Bed, dir: &Path) -> (Operator, Standbys, String) {
    let v1 = bed.stack.push_image("platform-tenant", "staging", &[("sim.version", "1")], false).await.unwrap();
    channel_at(bed, "staging", &v1).await;
    policy(bed, "slow", json!({"stagger": "2s", "maxConcurrency": 1, "canary": {"minCanaries": 0, "soak": "0s"}}))
        .await;
    for name in TENANTS {
        let id = launch_managed(&bed.stack, name, &[], HostState::Fresh).await.unwrap();
        bed.create::<Tenant>(tenant_json(name, &id, json!({"tier": "production", "rolloutPolicy": "slow"})))
            .await
            .unwrap();
    }
    let a = spawn(&Spec::of(bed), dir, "replica-a").await;
    wait_holder(bed, "replica-a", Duration::from_secs(30)).await;
    let b = Standbys::start(Spec::of(bed), dir.to_path_buf()).await;
    all_on(bed, &TENANTS, &v1, Duration::from_secs(180)).await;
    assert!(holder(bed).await.is_some_and(|h| h.starts_with("replica-a_")), "the first leader is still leading");
    let v2 = bed.stack.push_image("platform-tenant", "staging", &[("sim.version", "2")], false).await.unwrap();
    channel_at(bed, "staging", &v2).await;
    wait_policy(bed, "slow", "v2's rollout under way", Duration::from_secs(90), |p| {
        record(p, "staging").is_some_and(|r| r.digest == v2 && r.production.moved >= 1 && r.production.moved < 4)
    })
    .await;
    (a, b, v2)
}

/// A standby holds the lease within the lease duration plus one renew of `t0`.
async fn takes_over(bed: &Bed, b: &Standbys, t0: Instant, after: &str) {
    let limit = Duration::from_secs(LEASE_SECS + RENEW_SECS + 10);
    while !b.took_over(bed).await {
        assert!(t0.elapsed() < limit, "no standby took the lease: {:?}", holder(bed).await);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let takeover = t0.elapsed();
    eprintln!("takeover after {after}: {takeover:?} (lease {LEASE_SECS}s, renew every {RENEW_SECS}s)");
    assert!(takeover <= Duration::from_secs(LEASE_SECS + RENEW_SECS + 1), "takeover took {takeover:?}");
}

/// The rollout ends, nothing was applied twice, and the API server never had two writers: among
/// the writes to the test's namespace, each process's (its token's) form one unbroken run, and
/// the old leader's all come before anyone else's.
async fn ends_with_one_writer(bed: &Bed, old: &Operator, b: &Standbys, v2: &str) -> jiff::Timestamp {
    all_on(bed, &TENANTS, v2, Duration::from_secs(180)).await;
    wait_policy(bed, "slow", "v2 complete", Duration::from_secs(60), |p| {
        record(p, "staging").is_some_and(|r| r.digest == v2 && r.phase == phase::COMPLETE)
    })
    .await;
    // A write by the leader after all that, so the audit log is known to be flushed past it.
    let mark = jiff::Timestamp::now();
    tenant_operator::controller::coordinator::request(bed.client.clone(), &bed.ns, "slow", "pause", None)
        .await
        .unwrap();
    let ours: Vec<String> = b.credentials().await.into_iter().chain([old.credential.clone()]).collect();
    let t0 = Instant::now();
    while !writes(bed).iter().any(|w| ours.contains(&w.credential) && w.namespace == bed.ns && w.at > mark) {
        assert!(t0.elapsed() < Duration::from_secs(30), "no write by the leader after {mark} in the audit log");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert_eq!(double_applies(bed).await, vec![], "a host applied a revision twice");

    let fleet: Vec<Write> =
        writes(bed).into_iter().filter(|w| w.namespace == bed.ns && ours.contains(&w.credential)).collect();
    let mut runs: Vec<(&str, usize)> = Vec::new();
    for w in &fleet {
        match runs.last_mut() {
            Some((c, n)) if *c == w.credential => *n += 1,
            _ => runs.push((&w.credential, 1)),
        }
    }
    eprintln!("audit: writes to the namespace by process, in order: {runs:?}");
    let mut seen = std::collections::BTreeSet::new();
    for (i, (c, _)) in runs.iter().enumerate() {
        assert!(
            seen.insert(*c),
            "two writers: {c} wrote again after another process; around it: {:#?}",
            fleet
                .iter()
                .filter(|w| runs[i.saturating_sub(1)].0 == w.credential || w.credential == *c)
                .collect::<Vec<_>>()
        );
    }
    assert_eq!(runs.first().map(|r| r.0), Some(old.credential.as_str()), "the first leader wrote first");
    assert!(runs.len() >= 2, "no other process wrote: {runs:?}");
    fleet.iter().find(|w| w.credential != old.credential).map(|w| w.at).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sigkilled_leader_is_replaced_within_the_lease_and_never_writes_again() {
    let bed = Bed::start_without_controllers().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (mut a, b, v2) = rollout_under_way(&bed, dir.path()).await;
    let t0 = Instant::now();
    a.child.start_kill().unwrap();
    a.child.wait().await.unwrap();
    takes_over(&bed, &b, t0, "SIGKILL").await;
    ends_with_one_writer(&bed, &a, &b, &v2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partitioned_leader_stops_writing_before_the_standby_takes_over() {
    let bed = Bed::start_without_controllers().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (mut a, b, v2) = rollout_under_way(&bed, dir.path()).await;
    let t0 = Instant::now();
    a.link.cut();
    takes_over(&bed, &b, t0, "the partition").await;
    // Cut off, the old leader cannot know who holds the lease: it stops its controllers when its
    // last renewal is about to run out, and exits (to be restarted as a candidate).
    let status = tokio::time::timeout(Duration::from_secs(30), a.child.wait())
        .await
        .unwrap_or_else(|_| panic!("the partitioned leader kept running:\n{}", a.log()))
        .unwrap();
    assert!(!status.success(), "losing the lease is an error exit: {status}");
    let fenced = a
        .log()
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find(|l| l["fields"]["message"] == "no renewal of the lease seen in time: stopping the controllers")
        .and_then(|l| l["timestamp"].as_str()?.parse::<jiff::Timestamp>().ok())
        .unwrap_or_else(|| panic!("no renew deadline in the old leader's log:\n{}", a.log()));
    a.link.heal();
    let first_new = ends_with_one_writer(&bed, &a, &b, &v2).await;
    eprintln!("the old leader stopped its controllers at {fenced}, the next leader's first write at {first_new}");
    assert!(fenced < first_new, "the old leader stopped at {fenced}, after the next one's first write at {first_new}");
}
