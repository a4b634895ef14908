//! The bench: the real `tenant-operator run` binary rolls one digest across a fleet on the real
//! control plane and the fleet simulator, and says what it cost. The rollout is started the way
//! production starts it, by the registry's webhook call, and judged from the API server and the
//! simulator's timeline; the costs are read from the process's own `/metrics` (AWS calls by
//! operation, Kubernetes requests by verb), the API server (events), moto's request recorder (the
//! hosts' own Parameter Store reads) and `/proc` (peak RSS).
//!
//! `scripts/bench --tenants N` runs it with those figures (BENCH_TENANTS, BENCH_MAX_CONCURRENCY,
//! BENCH_SOAK, BENCH_STAGGER) and prints its report, one JSON object, as its last line. The suite
//! runs it with 8 tenants. Every host here runs the real agent under bash in the simulator (a
//! thread and a process tree per host), which bounds N at a few hundred on one machine.

use crate::apply::tenant_json;
use crate::chaos::env_or;
use crate::failover::{Spec, spawn_with};
use crate::harness::Bed;
use crate::iam::{curl, moto_entry};
use crate::rollout::{all_on, record, wait_policy};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::api::{Api, ListParams, PostParams};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};
use tenant_operator::core::rollout::batch_size;
use tenant_operator::crd::{ImageChannel, RolloutPolicy, Tenant};
use testbed::demo::launch_managed;
use testbed::stack::HostState;

const TOKEN: &str = "bench-webhook-token-5d1c";

/// `name{labels} value` lines of a Prometheus text exposition: (name, labels, value).
fn samples(text: &str) -> Vec<(String, BTreeMap<String, String>, f64)> {
    let mut out = Vec::new();
    for line in text.lines().filter(|l| !l.starts_with('#') && !l.trim().is_empty()) {
        let Some((series, value)) = line.rsplit_once(' ') else { continue };
        let Ok(value) = value.parse::<f64>() else { continue };
        let (name, labels) = match series.split_once('{') {
            Some((n, rest)) => (n, rest.trim_end_matches('}')),
            None => (series, ""),
        };
        let labels = labels
            .split("\",")
            .filter_map(|kv| kv.split_once("=\""))
            .map(|(k, v)| (k.trim_start_matches(',').to_string(), v.trim_end_matches('"').to_string()))
            .collect();
        out.push((name.to_string(), labels, value));
    }
    out
}

/// The sum of `name` by the value of `label`.
fn by(text: &str, name: &str, label: &str) -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    for (n, labels, v) in samples(text) {
        if n == name {
            *out.entry(labels.get(label).cloned().unwrap_or_default()).or_default() += v;
        }
    }
    out
}

fn delta(after: &BTreeMap<String, f64>, before: &BTreeMap<String, f64>, per: f64) -> Value {
    let mut out = serde_json::Map::new();
    let mut total = 0.0;
    for (k, v) in after {
        let d = v - before.get(k).copied().unwrap_or(0.0);
        if d > 0.0 {
            out.insert(k.clone(), json!(round(d / per)));
            total += d;
        }
    }
    out.insert("total".into(), json!(round(total / per)));
    Value::Object(out)
}

fn round(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

/// Peak resident memory of a process (`VmHWM`), MiB.
fn rss_peak_mib(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kb: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM in /proc/<pid>/status");
    round(kb / 1024.0)
}

/// The slowest apply of each batch, a tier's applies taken in the order they started, `size` at a
/// time (the engine admits a batch when the previous one finished).
fn batches(applies: &mut [(f64, f64)], size: usize) -> Vec<f64> {
    applies.sort_by(|a, b| a.0.total_cmp(&b.0));
    applies.chunks(size.max(1)).map(|c| c.iter().map(|a| a.1 - a.0).fold(0.0, f64::max)).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fleet_rolls_one_digest_and_the_bench_reports_what_it_cost() {
    let n: usize = env_or("BENCH_TENANTS", 8);
    assert!(n >= 2, "BENCH_TENANTS: at least 2 (a canary and a production tenant)");
    let max = std::env::var("BENCH_MAX_CONCURRENCY").unwrap_or_else(|_| "25%".into());
    let soak_s: u64 = env_or("BENCH_SOAK", 5);
    let stagger_s: u64 = env_or("BENCH_STAGGER", 2);
    let max_concurrency = match max.parse::<i32>() {
        Ok(k) => IntOrString::Int(k),
        Err(_) => IntOrString::String(max.clone()),
    };
    let bed = Bed::start_without_controllers().await.unwrap();
    let api = |bed: &Bed| Api::<k8s_openapi::api::core::v1::Secret>::namespaced(bed.client.clone(), &bed.ns);
    api(&bed)
        .create(
            &PostParams::default(),
            &serde_json::from_value(
                json!({"metadata": {"name": "hook", "namespace": bed.ns}, "stringData": {"token": TOKEN}}),
            )
            .unwrap(),
        )
        .await
        .unwrap();
    let v1 = bed.stack.push_image("platform-tenant", "staging", &[("sim.version", "1")], false).await.unwrap();
    bed.create::<ImageChannel>(json!({
        "apiVersion": "fleet.molecule.ai/v1alpha1", "kind": "ImageChannel",
        "metadata": {"name": "staging", "namespace": bed.ns},
        "spec": {"image": format!("{}/platform-tenant", bed.stack.registry), "tag": "staging", "interval": "1h",
                 "webhook": {"tokenSecretRef": {"name": "hook", "key": "token"}}}
    }))
    .await
    .unwrap();
    bed.create::<RolloutPolicy>(json!({
        "apiVersion": "fleet.molecule.ai/v1alpha1", "kind": "RolloutPolicy",
        "metadata": {"name": "bench", "namespace": bed.ns},
        "spec": {"strategy": "BlueGreen", "maxConcurrency": max_concurrency, "stagger": format!("{stagger_s}s"),
                 "maxErrors": 0, "canary": {"minCanaries": 1, "soak": format!("{soak_s}s"), "sampleInterval": "1s"}}
    }))
    .await
    .unwrap();
    let canaries = n.div_ceil(10);
    let names: Vec<String> = (0..n).map(|i| format!("b-{i:05}")).collect();
    let mut ids = BTreeMap::new();
    for (i, name) in names.iter().enumerate() {
        let tier = if i < canaries { "canary" } else { "production" };
        let id = launch_managed(&bed.stack, name, &[], HostState::Fresh).await.unwrap();
        bed.create::<Tenant>(tenant_json(name, &id, json!({"rolloutPolicy": "bench", "tier": tier}))).await.unwrap();
        ids.insert(id, tier);
    }
    let dir = bed.stack.workdir.join("bench");
    std::fs::create_dir_all(&dir).unwrap();
    let op = spawn_with(
        &Spec::of(&bed),
        &dir,
        "bench",
        &["--leader-elect=false", "--poll-interval", "500ms", "--observe-interval", "60s"],
    )
    .await;
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let scale = Duration::from_secs(10 * n as u64);
    all_on(&bed, &refs, &v1, Duration::from_secs(300) + scale).await;

    // The rollout, from the registry's webhook call on.
    let http = reqwest::Client::new();
    let metrics = || async {
        http.get(format!("http://{}/metrics", op.metrics_addr)).send().await.unwrap().text().await.unwrap()
    };
    let before = metrics().await;
    let moto = bed.stack.moto_url.clone();
    curl(&["-X", "POST", &format!("{moto}/moto-api/recorder/reset-recording")]);
    curl(&["-X", "POST", &format!("{moto}/moto-api/recorder/start-recording")]);
    let v2 = bed.stack.push_image("platform-tenant", "staging", &[("sim.version", "2")], false).await.unwrap();
    let called_at = jiff::Timestamp::now().as_millisecond() as f64 / 1000.0;
    let t0 = Instant::now();
    let hook = http
        .post(format!("http://{}/webhook/{}/staging", op.webhook_addr, bed.ns))
        .bearer_auth(TOKEN)
        .body(r#"{"events":[{"action":"push"}]}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(hook.status().as_u16(), 202, "the webhook call was refused");
    wait_policy(&bed, "bench", "the rollout of v2 complete", Duration::from_secs(600) + 2 * scale, |p| {
        record(p, "staging").is_some_and(|r| r.digest == v2 && r.phase == "Complete")
    })
    .await;
    all_on(&bed, &refs, &v2, Duration::from_secs(300)).await;
    let wall_s = t0.elapsed().as_secs_f64();
    let after = metrics().await;
    let rss = rss_peak_mib(op.child.id().expect("the operator runs"));
    let recording = curl(&[&format!("{moto}/moto-api/recorder/download-recording")]);
    curl(&["-X", "POST", &format!("{moto}/moto-api/recorder/stop-recording")]);
    let host_calls = recording
        .lines()
        .filter(|l| !l.trim().is_empty())
        .filter_map(|l| moto_entry(&serde_json::from_str(l).ok()?))
        .filter(|(who, _, _)| who == "host")
        .count();

    // The theoretical minimum: each tier's batches back to back at their slowest apply, the soak,
    // and the staggers between production batches.
    let timeline = bed.stack.timeline().await.unwrap();
    let mut tiers: BTreeMap<&str, Vec<(f64, f64)>> = BTreeMap::new();
    let mut first_send = f64::MAX;
    for r in timeline.as_array().unwrap() {
        let action = r["parameters"]["action"][0].as_str().or(r["parameters"]["action"].as_str()).unwrap_or("");
        let requested = r["requested"].as_f64().unwrap_or(0.0);
        if action != "apply" || requested < called_at {
            continue;
        }
        first_send = first_send.min(requested);
        let tier = ids[r["instance_id"].as_str().unwrap()];
        let (start, end) = (r["start"].as_f64().unwrap_or(requested), r["end"].as_f64().unwrap_or(requested));
        tiers.entry(tier).or_default().push((start, end));
    }
    let applied: usize = tiers.values().map(Vec::len).sum();
    assert_eq!(applied, n, "one apply of v2 per tenant: {tiers:?}");
    let canary = batches(tiers.get_mut("canary").unwrap(), batch_size(&max_concurrency, canaries));
    let production =
        tiers.get_mut("production").map(|p| batches(p, batch_size(&max_concurrency, n - canaries))).unwrap_or_default();
    let staggers = production.len().saturating_sub(1) as f64 * stagger_s as f64;
    let theoretical = canary.iter().sum::<f64>() + soak_s as f64 + production.iter().sum::<f64>() + staggers;

    let events: Api<k8s_openapi::api::events::v1::Event> = Api::namespaced(bed.client.clone(), &bed.ns);
    let tenant_events: i64 = events
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .iter()
        .filter(|e| e.regarding.as_ref().and_then(|r| r.kind.as_deref()) == Some("Tenant"))
        .filter(|e| e.event_time.as_ref().is_some_and(|t| t.0.as_millisecond() as f64 / 1000.0 >= called_at))
        .map(|e| i64::from(e.series.as_ref().map_or(1, |s| s.count)))
        .sum();

    let per = n as f64;
    let report = json!({
        "tenants": n,
        "converged": true,
        "max_concurrency": max,
        "wall_s": round(wall_s),
        "theoretical_min_s": round(theoretical),
        "theoretical_terms_s": {"canary_batches": canary.iter().map(|x| round(*x)).collect::<Vec<_>>(),
                                "soak": soak_s, "production_batches": production.iter().map(|x| round(*x)).collect::<Vec<_>>(),
                                "staggers": staggers},
        "ratio": round(wall_s / theoretical),
        "aws_calls_per_tenant": delta(&by(&after, "tenant_operator_aws_calls_total", "operation"),
                                      &by(&before, "tenant_operator_aws_calls_total", "operation"), per),
        "host_aws_calls_per_tenant": round(host_calls as f64 / per),
        "kube_requests_per_tenant": delta(&by(&after, "tenant_operator_kube_requests_total", "verb"),
                                          &by(&before, "tenant_operator_kube_requests_total", "verb"), per),
        "events_per_tenant": round(tenant_events as f64 / per),
        "rss_peak_mib": rss,
        "webhook_to_first_send_ms": round((first_send - called_at) * 1000.0),
        "real_bash_hosts": n,
    });
    eprintln!("bench: {report}");
    if let Ok(path) = std::env::var("BENCH_REPORT") {
        std::fs::write(path, format!("{report}\n")).unwrap();
    }
    // What the run must show whatever its size (figures are reported, never asserted as timings).
    assert!(report["aws_calls_per_tenant"]["SendCommand"].as_f64().is_some(), "no SendCommand counted: {report}");
    assert!(report["kube_requests_per_tenant"]["patch"].as_f64().is_some(), "no status write counted: {report}");
    assert!(host_calls > 0, "the hosts' Parameter Store reads were not recorded");
}
