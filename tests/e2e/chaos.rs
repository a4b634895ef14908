//! The real `tenant-operator run` SIGKILLed at seeded random instants while a fleet rolls: first
//! placement with adoption of hand-run legacy hosts, then rounds of a halt and a retry, an abort and
//! a clean rollout, on a BlueGreen policy and an in-place one (BlueGreen switches, and many
//! revisions through each tenant's one revision parameter). The process is started again after
//! each kill, the way the kubelet restarts a crashed pod.
//!
//! Judged from ground truth, the simulator's timeline (what each host ran, when) and what the API
//! server holds, never from what the operator says it did:
//! - every tenant converges to the last digest, and its routing port answers with it;
//! - no host applies (or switches to, or adopts) the same revision twice in a row after it worked;
//! - no production batch exceeds maxConcurrency (hosts busy with the rolled-forward digest at once);
//! - no history entry is lost: every command a host finished is in its tenant's history;
//! - a kill never spends the error budget: no failure but the one the test planted.
//!
//! `scripts/chaos --kills K --tenants N [--seed S]` runs this test with those figures (CHAOS_KILLS,
//! CHAOS_TENANTS, CHAOS_SEED) and prints its report, one JSON object, as its last line. The suite
//! runs it with the defaults below.

use crate::apply::tenant_json;
use crate::failover::{Operator, Spec, spawn_with};
use crate::harness::Bed;
use crate::rollout::{all_on, follow_tag, get_policy, policy, record, wait_policy};
use kube::api::ListParams;
use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use tenant_operator::controller::coordinator;
use tenant_operator::core::rollout::phase;
use tenant_operator::crd::Tenant;
use testbed::demo::launch_managed;
use testbed::stack::HostState;

const REPO: &str = "platform-tenant";
/// Kills when CHAOS_KILLS is not set (the suite's run; `scripts/chaos` asks for more).
const DEFAULT_KILLS: usize = 30;
const DEFAULT_TENANTS: usize = 30;
/// The process lives this long (milliseconds, uniform) before each kill.
const LIFETIME_MS: std::ops::Range<u64> = 500..10_000;
/// Production batch bounds of the two policies.
const BG_MAX: usize = 3;
const IP_MAX: usize = 2;
/// How long any one step may take under kills before the test says where it stuck.
const STEP: Duration = Duration::from_secs(420);

pub(crate) fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    match std::env::var(name) {
        Ok(v) => v.parse().unwrap_or_else(|_| panic!("{name}={v:?} is not a number")),
        Err(_) => default,
    }
}

/// The fleet: tenant name, policy, tier, and whether its host is a hand-run legacy host to adopt.
struct Member {
    name: String,
    policy: &'static str,
    canary: bool,
    legacy: bool,
}

fn members(n: usize) -> Vec<Member> {
    (0..n)
        .map(|i| Member {
            name: format!("cx-{i:03}"),
            policy: if i % 2 == 0 { "bg" } else { "ip" },
            canary: i < 2,
            // Three legacy hosts, adopted into the in-place policy's production tier.
            legacy: matches!(i, 3 | 5 | 7),
        })
        .collect()
}

/// The operator, killed and started again until `wanted` kills are done; then left running.
struct Killer {
    kills: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<Operator>,
}

impl Killer {
    fn start(spec: Spec, dir: PathBuf, wanted: usize, seed: u64) -> Killer {
        let kills = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (k, s) = (kills.clone(), stop.clone());
        let task = tokio::spawn(async move {
            let mut rng = fastrand::Rng::with_seed(seed);
            let mut n = 0usize;
            loop {
                let mut op = spawn_with(
                    &spec,
                    &dir,
                    &format!("chaos-{n}"),
                    &["--leader-elect=false", "--poll-interval", "500ms", "--observe-interval", "60s"],
                )
                .await;
                n += 1;
                if k.load(Ordering::SeqCst) >= wanted {
                    return op;
                }
                let life = Duration::from_millis(rng.u64(LIFETIME_MS));
                tokio::select! {
                    _ = tokio::time::sleep(life) => {}
                    exit = op.child.wait() => panic!("the operator exited by itself ({exit:?}):\n{}", op.log()),
                }
                if s.load(Ordering::SeqCst) {
                    return op;
                }
                op.child.start_kill().unwrap();
                op.child.wait().await.unwrap();
                k.fetch_add(1, Ordering::SeqCst);
            }
        });
        Killer { kills, stop, task }
    }

    fn kills(&self) -> usize {
        self.kills.load(Ordering::SeqCst)
    }
}

/// What the tenants' status said, sampled through the run: revision → digest (from intents and
/// history), so host commands (which name only a revision) can be tied to a rollout.
#[derive(Default)]
struct Seen {
    digest_of: BTreeMap<String, String>,
}

impl Seen {
    /// Revision → digest from a tenant's intent in flight and its history.
    fn learn(&mut self, st: &tenant_operator::crd::TenantStatus) {
        let intent = st.in_flight.iter().map(|f| (f.revision.clone(), f.digest.clone()));
        let history = st.history.iter().map(|h| (Some(h.revision.clone()), h.digest.clone()));
        for (r, d) in intent.chain(history) {
            if let (Some(r), Some(d)) = (r, d)
                && !r.is_empty()
            {
                self.digest_of.insert(r, d);
            }
        }
    }
}

/// One host command from the simulator's timeline.
#[derive(Clone, Debug)]
pub(crate) struct Cmd {
    pub(crate) instance: String,
    pub(crate) id: String,
    pub(crate) action: String,
    pub(crate) revision: String,
    pub(crate) start: f64,
    pub(crate) end: f64,
    pub(crate) status: String,
}

fn param(p: &Value, name: &str) -> String {
    p[name][0].as_str().or(p[name].as_str()).unwrap_or("").to_string()
}

pub(crate) async fn commands(bed: &Bed) -> Vec<Cmd> {
    let t = bed.stack.timeline().await.unwrap();
    let mut out: Vec<Cmd> = t
        .as_array()
        .unwrap()
        .iter()
        .map(|r| Cmd {
            instance: r["instance_id"].as_str().unwrap_or("").into(),
            id: r["command_id"].as_str().unwrap_or("").into(),
            action: param(&r["parameters"], "action"),
            // The command names the digest; the host's report names the revision it applied.
            revision: r["revision"].as_str().unwrap_or("").into(),
            start: r["start"].as_f64().or(r["requested"].as_f64()).unwrap_or(0.0),
            end: r["end"].as_f64().unwrap_or(f64::MAX),
            status: r["status"].as_str().unwrap_or("").into(),
        })
        .collect();
    out.sort_by(|a, b| a.start.total_cmp(&b.start));
    out
}

/// Commands that change what a host runs.
pub(crate) fn changes_the_host(c: &Cmd) -> bool {
    matches!(c.action.as_str(), "apply" | "switch" | "adopt" | "unadopt")
}

/// A host ran the same change again right after it had worked: the operator lost track of a
/// command it sent. (A retry after a failed apply, or a return to an earlier revision after
/// another one, are not doubles.)
pub(crate) fn double_applies(cmds: &[Cmd]) -> Vec<String> {
    let mut last: BTreeMap<&str, &Cmd> = BTreeMap::new();
    let mut out = Vec::new();
    for c in cmds.iter().filter(|c| changes_the_host(c)) {
        if let Some(prev) = last.get(c.instance.as_str())
            && prev.action == c.action
            && prev.revision == c.revision
            && prev.status == "Success"
        {
            out.push(format!("{} {} {} ({} then {})", c.instance, c.action, c.revision, prev.id, c.id));
        }
        last.insert(&c.instance, c);
    }
    out
}

/// A rollout forward in time: its digest, the window it ran in (epoch seconds).
struct Forward {
    digest: String,
    from: f64,
    to: f64,
}

/// The most production hosts of one policy busy at once with a forward digest (from the first
/// command of that digest on a host to the end of its last), per policy and rollout.
fn widest_batches(
    cmds: &[Cmd],
    seen: &Seen,
    forwards: &[Forward],
    production: &BTreeMap<String, &'static str>,
) -> BTreeMap<(&'static str, String), usize> {
    let mut out = BTreeMap::new();
    for f in forwards {
        let mut spans: BTreeMap<(&'static str, &str), (f64, f64)> = BTreeMap::new();
        for c in cmds.iter().filter(|c| changes_the_host(c) && c.start >= f.from && c.start <= f.to) {
            let Some(policy) = production.get(&c.instance) else { continue };
            if seen.digest_of.get(&c.revision) != Some(&f.digest) {
                continue;
            }
            let e = spans.entry((*policy, c.instance.as_str())).or_insert((c.start, c.end));
            e.0 = e.0.min(c.start);
            e.1 = e.1.max(c.end);
        }
        for policy in ["bg", "ip"] {
            let mut edges: Vec<(f64, i32)> =
                spans.iter().filter(|((p, _), _)| *p == policy).flat_map(|(_, (a, b))| [(*a, 1), (*b, -1)]).collect();
            // An end before a start at the same instant: back to back is not at once.
            edges.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
            let (mut now, mut most) = (0i32, 0i32);
            for (_, d) in edges {
                now += d;
                most = most.max(now);
            }
            out.insert((policy, short(&f.digest)), most as usize);
        }
    }
    out
}

fn short(digest: &str) -> String {
    digest.trim_start_matches("sha256:").chars().take(12).collect()
}

fn epoch() -> f64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs_f64()
}

/// Asks the coordinator of `policy` for `verb` and waits until it says it acted.
async fn ask(bed: &Bed, policy: &str, verb: &str) -> String {
    let token = coordinator::request(bed.client.clone(), &bed.ns, policy, verb, None).await.unwrap();
    wait_policy(bed, policy, &format!("{verb} acknowledged"), STEP, |p| {
        p.status.as_ref().is_some_and(|s| s.handled_requests.get(verb) == Some(&token))
    })
    .await;
    token
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkilled_at_random_instants_the_fleet_converges_and_nothing_is_applied_twice_or_lost() {
    let kills_wanted: usize = env_or("CHAOS_KILLS", DEFAULT_KILLS);
    let n: usize = env_or("CHAOS_TENANTS", DEFAULT_TENANTS);
    assert!(n >= 8, "CHAOS_TENANTS: at least 8 (two canaries, three legacy hosts, production)");
    let seed: u64 = env_or(
        "CHAOS_SEED",
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64 % 1_000_000,
    );
    eprintln!("chaos: {kills_wanted} kills, {n} tenants, seed {seed} (CHAOS_SEED={seed} replays the kill instants)");
    let t0 = Instant::now();
    let bed = Bed::start_without_controllers().await.unwrap();
    let dir = tempfile::tempdir().unwrap();

    // The fleet as it stands before the operator: legacy hosts on `:latest`, fresh ones.
    bed.stack.push_image(REPO, "latest", &[("sim.version", "legacy")], false).await.unwrap();
    let fleet = members(n);
    let mut ids: BTreeMap<String, String> = BTreeMap::new();
    for m in &fleet {
        let state = if m.legacy { HostState::Legacy } else { HostState::Fresh };
        ids.insert(m.name.clone(), launch_managed(&bed.stack, &m.name, &[], state).await.unwrap());
    }
    let canary = |p: &str| fleet.iter().find(|m| m.canary && m.policy == p).unwrap().name.clone();
    let production: BTreeMap<String, &'static str> =
        fleet.iter().filter(|m| !m.canary).map(|m| (ids[&m.name].clone(), m.policy)).collect();
    let names: Vec<&str> = fleet.iter().map(|m| m.name.as_str()).collect();

    let mut v = bed.stack.push_image(REPO, "staging", &[("sim.version", "1")], false).await.unwrap();
    follow_tag(&bed, "staging", "staging").await;
    let gate = json!({"minCanaries": 1, "soak": "2s", "sampleInterval": "1s"});
    policy(
        &bed,
        "bg",
        json!({"strategy": "BlueGreen", "keepPreviousSlotSeconds": 30, "stagger": "1s", "maxConcurrency": BG_MAX,
               "healthCheck": {"timeout": "8s"}, "canary": gate}),
    )
    .await;
    policy(
        &bed,
        "ip",
        json!({"stagger": "1s", "maxConcurrency": IP_MAX, "healthCheck": {"timeout": "8s"}, "canary": gate}),
    )
    .await;
    // A secret every container gets: it must reach the hosts and appear nowhere else.
    let token = format!("chaos-secret-{seed}-{}", crate::harness::uuid_like());
    crate::apply::secret(&bed, "chaos-env", &[("API_TOKEN", &token)]).await;
    for m in &fleet {
        let tier = if m.canary { "canary" } else { "production" };
        let mut extra = json!({"tier": tier, "rolloutPolicy": m.policy,
                               "container": {"env": [{"name": "BEARER", "value": "b"}],
                                             "envFrom": [{"secretRef": {"name": "chaos-env"}}]}});
        if m.legacy {
            extra["adoption"] = json!("Adopt");
        }
        bed.create::<Tenant>(tenant_json(&m.name, &ids[&m.name], extra)).await.unwrap();
    }

    let killer = Killer::start(Spec::of(&bed), dir.path().to_path_buf(), kills_wanted, seed);
    let seen = Arc::new(tokio::sync::Mutex::new(Seen::default()));
    let sampling = {
        let (seen, done) = (seen.clone(), killer.stop.clone());
        let client = bed.client.clone();
        let ns = bed.ns.clone();
        tokio::spawn(async move {
            let api: kube::Api<Tenant> = kube::Api::namespaced(client, &ns);
            while !done.load(Ordering::SeqCst) {
                if let Ok(list) = api.list(&ListParams::default()).await {
                    let mut s = seen.lock().await;
                    for t in list.items {
                        if let Some(st) = &t.status {
                            s.learn(st);
                        }
                    }
                }
                tokio::time::sleep(Duration::from_millis(400)).await;
            }
        })
    };

    // First placement (and adoption: the legacy hosts are taken over, then moved to v1).
    all_on(&bed, &names, &v, STEP).await;
    eprintln!("chaos: placed after {:?}, {} kills so far", t0.elapsed(), killer.kills());

    let mut forwards: Vec<Forward> = Vec::new();
    let mut planted: BTreeSet<(String, String)> = BTreeSet::new();
    let mut round = 0;
    let mut round_s: Vec<f64> = Vec::new();
    loop {
        round += 1;
        let began = Instant::now();
        // A halt and a retry: the BlueGreen canary's host turns unhealthy under the next digest.
        let from = epoch();
        let bad_canary = canary("bg");
        bed.stack.set_fault(&ids[&bad_canary], json!({"unhealthy": true})).await.unwrap();
        v = bed.stack.push_image(REPO, "staging", &[("sim.version", &format!("{round}.halt"))], false).await.unwrap();
        planted.insert((bad_canary.clone(), v.clone()));
        let digest = v.clone();
        wait_policy(&bed, "bg", "the halt", STEP, |p| {
            record(p, "staging").is_some_and(|r| r.digest == digest && r.phase == phase::HALTED)
        })
        .await;
        bed.stack.set_fault(&ids[&bad_canary], json!({"unhealthy": false})).await.unwrap();
        ask(&bed, "bg", "retry").await;
        all_on(&bed, &names, &v, STEP).await;
        forwards.push(Forward { digest: v.clone(), from, to: epoch() });
        eprintln!("chaos: round {round}: halted and retried to the end, {} kills so far", killer.kills());

        // An abort in the middle of the BlueGreen policy's production batches.
        let kept = v.clone();
        let from = epoch();
        v = bed.stack.push_image(REPO, "staging", &[("sim.version", &format!("{round}.abort"))], false).await.unwrap();
        let digest = v.clone();
        wait_policy(&bed, "bg", "production under way", STEP, |p| {
            record(p, "staging").is_some_and(|r| r.digest == digest && r.production.moved >= 1)
        })
        .await;
        ask(&bed, "bg", "abort").await;
        all_on(&bed, &names, &kept, STEP).await;
        forwards.push(Forward { digest: v.clone(), from, to: epoch() });
        eprintln!("chaos: round {round}: aborted and back, {} kills so far", killer.kills());

        // A clean rollout.
        let from = epoch();
        v = bed.stack.push_image(REPO, "staging", &[("sim.version", &format!("{round}.clean"))], false).await.unwrap();
        all_on(&bed, &names, &v, STEP).await;
        forwards.push(Forward { digest: v.clone(), from, to: epoch() });
        eprintln!("chaos: round {round}: clean, {} kills so far", killer.kills());
        round_s.push((began.elapsed().as_secs_f64() * 10.0).round() / 10.0);
        // Two rounds at least: several revisions per tenant through its one parameter.
        if killer.kills() >= kills_wanted && round >= 2 {
            break;
        }
    }
    let kills = killer.kills();
    killer.stop.store(true, Ordering::SeqCst);
    let operator = killer.task.await.unwrap();
    sampling.abort();
    let _ = sampling.await;
    // The last process, left running: the fleet stays where it is.
    all_on(&bed, &names, &v, STEP).await;

    // --- ground truth ------------------------------------------------------------------------
    let cmds = commands(&bed).await;
    let tenants = bed.tenants().list(&ListParams::default()).await.unwrap().items;
    {
        let mut s = seen.lock().await;
        for t in &tenants {
            if let Some(st) = &t.status {
                s.learn(st);
            }
        }
    }
    let seen = seen.lock().await;
    let doubles = double_applies(&cmds);
    let widest = widest_batches(&cmds, &seen, &forwards, &production);
    let over: Vec<String> = widest
        .iter()
        .filter(|((p, _), n)| **n > if *p == "bg" { BG_MAX } else { IP_MAX })
        .map(|((p, d), n)| format!("{p} {d}: {n} at once"))
        .collect();

    // Every command a host finished is in its tenant's history (the newest `history_limit` are
    // kept: commands older than the oldest one kept are out of reach).
    let mut lost: Vec<String> = Vec::new();
    let mut spent: Vec<String> = Vec::new();
    let mut not_serving: Vec<String> = Vec::new();
    for t in &tenants {
        let name = t.metadata.name.clone().unwrap_or_default();
        let id = &ids[&name];
        let st = t.status.clone().unwrap_or_default();
        let kept: BTreeSet<&str> = st.history.iter().filter_map(|h| h.command_id.as_deref()).collect();
        let mine: Vec<&Cmd> = cmds.iter().filter(|c| &c.instance == id && c.action != "observe").collect();
        let oldest = mine.iter().position(|c| kept.contains(c.id.as_str())).unwrap_or(mine.len());
        for c in &mine[oldest..] {
            if c.action != "inspect-legacy" && !kept.contains(c.id.as_str()) {
                lost.push(format!("{name}: {} {} ({}, {})", c.action, c.revision, c.id, c.status));
            }
        }
        for h in st.history.iter().filter(|h| h.result != "Succeeded") {
            if !planted.contains(&(name.clone(), h.digest.clone().unwrap_or_default())) {
                spent.push(format!("{name}: {} {} {}: {:?}", h.action, h.result, h.revision, h.message));
            }
        }
        let strategy_port = if fleet.iter().any(|m| m.name == name && m.policy == "bg") { 8000 } else { 8080 };
        match crate::bluegreen::get(&bed.stack.host_addr(id), strategy_port) {
            Ok(d) if d == v => {}
            other => not_serving.push(format!("{name}: port {strategy_port} answers {other:?}")),
        }
    }
    for p in ["bg", "ip"] {
        let r = record(&get_policy(&bed, p).await, "staging").unwrap();
        if !r.failed_tenants.is_empty() {
            spent.push(format!("policy {p}: failed {:?} at the end", r.failed_tenants));
        }
    }
    // One revision parameter per tenant, whatever was applied and however often the process died:
    // the tenant's `revision`, overwritten, and nothing else under its prefix but what a host wrote.
    let mut unpruned: Vec<String> = Vec::new();
    let mut stored_most = 0;
    let parameters = crate::hostile::parameters_under(&bed, "/tenant-operator");
    for m in &fleet {
        let dir = format!("/tenant-operator/{}/", m.name);
        let stored: Vec<&String> =
            parameters.iter().filter(|p| p.starts_with(&dir) && !p.ends_with("/imported-env")).collect();
        stored_most = stored_most.max(stored.len());
        if stored.iter().any(|p| **p != format!("{dir}revision")) || stored.len() > 1 {
            unpruned.push(format!("{}: {stored:?}", m.name));
        }
    }
    let converged = not_serving.is_empty();

    // The secret reached the containers, and nothing else written holds it: the operator's own
    // output (every process), events and status, the hosts' commands, the simulator's and the
    // stand-ins' logs, the API server's audit log.
    let delivered = fleet.iter().filter(|m| {
        ["blue", "green"].iter().any(|slot| {
            crate::apply::container_env(&bed, &ids[&m.name], slot)
                .is_some_and(|e| e.get("API_TOKEN").map(Vec::as_slice) == Some(token.as_bytes()))
        })
    });
    let delivered = delivered.count();
    let mut written: Vec<(String, String)> = Vec::new();
    for dir in [dir.path().to_path_buf(), bed.stack.workdir.clone()] {
        for e in std::fs::read_dir(&dir).unwrap().flatten().filter(|e| e.path().is_file()) {
            written.push((
                e.path().display().to_string(),
                String::from_utf8_lossy(&std::fs::read(e.path()).unwrap()).into(),
            ));
        }
    }
    written
        .push(("the API server's audit log".into(), std::fs::read_to_string(bed.cp.audit_log()).unwrap_or_default()));
    written.push(("the hosts' commands".into(), bed.stack.timeline().await.unwrap().to_string()));
    let events: kube::Api<k8s_openapi::api::events::v1::Event> = kube::Api::namespaced(bed.client.clone(), &bed.ns);
    written.push((
        "events".into(),
        serde_json::to_string(&events.list(&ListParams::default()).await.unwrap().items).unwrap(),
    ));
    written.push(("tenants".into(), serde_json::to_string(&tenants).unwrap()));
    let policies: kube::Api<tenant_operator::crd::RolloutPolicy> = kube::Api::namespaced(bed.client.clone(), &bed.ns);
    written.push((
        "policies".into(),
        serde_json::to_string(&policies.list(&ListParams::default()).await.unwrap().items).unwrap(),
    ));
    let encoded = {
        use base64::Engine;
        base64::engine::general_purpose::STANDARD.encode(token.as_bytes())
    };
    let leaks: Vec<String> = written
        .iter()
        .filter(|(_, text)| text.contains(&token) || text.contains(&encoded))
        .map(|(w, _)| w.clone())
        .collect();
    let scanned: usize = written.iter().map(|(_, t)| t.len()).sum();
    let spans: Vec<f64> =
        cmds.iter().filter(|c| c.action == "apply" && c.end < f64::MAX).map(|c| c.end - c.start).collect();
    let apply_s_mean = (spans.iter().sum::<f64>() / spans.len().max(1) as f64 * 10.0).round() / 10.0;
    let report = json!({
        "kills": kills, "tenants": n, "converged": converged, "double_applies": doubles.len(),
        "over_concurrency": over.len(), "lost_status": lost.len(), "budget_spent": spent.len(),
        "wall_s": (t0.elapsed().as_secs_f64() * 10.0).round() / 10.0, "seed": seed, "rounds": round,
        "host_commands": cmds.iter().filter(|c| c.action != "observe").count(),
        "apply_s_mean": apply_s_mean,
        "round_s": round_s,
        "widest_batch": widest.iter().map(|((p, d), n)| (format!("{p} {d}"), *n)).collect::<BTreeMap<_, _>>(),
        "revisions_seen": seen.digest_of.len(), "revision_parameters_most": stored_most,
        "secret_hits": leaks.len(), "secret_scanned_mib": (scanned as f64 / 1048576.0 * 10.0).round() / 10.0,
        "secret_delivered_to": delivered,
    });
    if let Ok(path) = std::env::var("CHAOS_REPORT") {
        std::fs::write(path, format!("{report}\n")).unwrap();
    }
    drop(operator);
    assert!(doubles.is_empty(), "applied twice: {doubles:#?}");
    assert!(over.is_empty(), "batches over maxConcurrency: {over:#?}");
    assert!(lost.is_empty(), "host commands missing from history: {lost:#?}");
    assert!(spent.is_empty(), "failures nobody planted: {spent:#?}");
    assert!(converged, "not serving the last digest: {not_serving:#?}");
    assert_eq!(delivered, n, "the planted secret did not reach every container");
    assert!(leaks.is_empty(), "the secret was written to {leaks:?}");
    assert!(unpruned.is_empty(), "more than the one revision parameter: {unpruned:#?}");
    assert!(kills >= kills_wanted, "{kills} kills of {kills_wanted}");
    println!("{report}");
}

#[cfg(test)]
mod judges {
    use super::*;

    fn cmd(instance: &str, action: &str, revision: &str, start: f64, end: f64, status: &str) -> Cmd {
        Cmd {
            instance: instance.into(),
            id: format!("c-{instance}-{start}"),
            action: action.into(),
            revision: revision.into(),
            start,
            end,
            status: status.into(),
        }
    }

    #[test]
    fn a_double_is_the_same_change_again_after_it_worked() {
        let cmds = [
            cmd("i-1", "apply", "r1", 0.0, 1.0, "Success"),
            cmd("i-1", "observe", "", 1.5, 1.6, "Success"),
            cmd("i-1", "apply", "r1", 2.0, 3.0, "Success"),
        ];
        assert_eq!(double_applies(&cmds).len(), 1, "an observe between does not make it a new change");
        let retried = [cmd("i-1", "apply", "r1", 0.0, 1.0, "Failed"), cmd("i-1", "apply", "r1", 2.0, 3.0, "Success")];
        assert!(double_applies(&retried).is_empty(), "a retry after a failure");
        let back = [
            cmd("i-1", "apply", "r1", 0.0, 1.0, "Success"),
            cmd("i-1", "apply", "r2", 2.0, 3.0, "Success"),
            cmd("i-1", "apply", "r1", 4.0, 5.0, "Success"),
        ];
        assert!(double_applies(&back).is_empty(), "a return to an earlier revision");
        let two_hosts =
            [cmd("i-1", "apply", "r1", 0.0, 1.0, "Success"), cmd("i-2", "apply", "r1", 0.5, 1.0, "Success")];
        assert!(double_applies(&two_hosts).is_empty());
    }

    #[test]
    fn the_widest_batch_counts_hosts_busy_with_the_forward_digest_at_once() {
        let mut seen = Seen::default();
        seen.digest_of.insert("r2".into(), "sha256:22".into());
        seen.digest_of.insert("r1".into(), "sha256:11".into());
        let production: BTreeMap<String, &'static str> =
            ["i-1", "i-2", "i-3", "i-4"].iter().map(|i| (i.to_string(), "bg")).collect();
        let cmds = [
            cmd("i-1", "apply", "r2", 10.0, 14.0, "Success"),
            cmd("i-2", "apply", "r2", 11.0, 15.0, "Success"),
            // Back to back with i-1: not at once.
            cmd("i-3", "apply", "r2", 14.0, 16.0, "Success"),
            // Another digest (a rollback) is not the forward rollout's.
            cmd("i-4", "apply", "r1", 12.0, 13.0, "Success"),
        ];
        let forwards = [Forward { digest: "sha256:22".into(), from: 9.0, to: 20.0 }];
        let widest = widest_batches(&cmds, &seen, &forwards, &production);
        assert_eq!(widest[&("bg", "22".to_string())], 2);
        assert_eq!(widest[&("ip", "22".to_string())], 0);
    }
}
