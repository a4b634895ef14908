//! Blue/green: the new revision starts in the idle slot, the router switches, the old slot stays
//! warm, and a switch-back needs no pull; no request through the routing port fails meanwhile.

use crate::apply::{channel_at, tenant_json};
use crate::harness::{Bed, cond};
use kube::api::{Api, PostParams};
use serde_json::json;
use std::collections::HashMap;
use std::io::{Read, Write};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tenant_operator::crd::{RolloutPolicy, Slot, Tenant};
use testbed::demo::launch_managed;
use testbed::stack::HostState;

/// Requests through the routing port until stopped: how many each digest answered, and the failures.
pub struct Load {
    stop: Arc<AtomicBool>,
    served: Arc<Mutex<HashMap<String, usize>>>,
    failed: Arc<AtomicUsize>,
    handle: Option<std::thread::JoinHandle<Vec<String>>>,
}

impl Load {
    pub fn start(addr: String, port: u16) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let served = Arc::new(Mutex::new(HashMap::new()));
        let failed = Arc::new(AtomicUsize::new(0));
        let (s, o, f) = (stop.clone(), served.clone(), failed.clone());
        let handle = std::thread::spawn(move || {
            let mut errors = Vec::new();
            // Bounded: at most 20,000 requests or until stopped.
            for _ in 0..20_000 {
                if s.load(Ordering::SeqCst) {
                    break;
                }
                match get(&addr, port) {
                    Ok(digest) => *o.lock().unwrap().entry(digest).or_insert(0) += 1,
                    Err(e) => {
                        f.fetch_add(1, Ordering::SeqCst);
                        errors.push(e);
                    }
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            errors
        });
        Load { stop, served, failed, handle: Some(handle) }
    }

    pub fn served_by(&self, digest: &str) -> usize {
        self.served.lock().unwrap().get(digest).copied().unwrap_or(0)
    }

    /// Waits (bounded) until `digest` answered `n` requests, so the traffic spans the switch however
    /// slow the machine is.
    pub async fn until_served(&self, digest: &str, n: usize) {
        let until = tokio::time::Instant::now() + Duration::from_secs(60);
        while self.served_by(digest) < n && tokio::time::Instant::now() < until {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn finish(mut self) -> (HashMap<String, usize>, usize, Vec<String>) {
        self.stop.store(true, Ordering::SeqCst);
        let errors = self.handle.take().map(|h| h.join().unwrap_or_default()).unwrap_or_default();
        let served = self.served.lock().unwrap().clone();
        (served, self.failed.load(Ordering::SeqCst), errors)
    }
}

/// One request through the router: the digest of the slot that answered it (from its /health body).
pub(crate) fn get(addr: &str, port: u16) -> Result<String, String> {
    let mut s = std::net::TcpStream::connect((addr, port)).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(Duration::from_secs(5))).map_err(|e| e.to_string())?;
    s.write_all(b"GET /health HTTP/1.0\r\nHost: tenant\r\n\r\n").map_err(|e| e.to_string())?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).map_err(|e| e.to_string())?;
    let text = String::from_utf8_lossy(&buf);
    let code: u16 = text.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body = text.split("\r\n\r\n").nth(1).unwrap_or_default();
    match (code, serde_json::from_str::<serde_json::Value>(body)) {
        (200, Ok(v)) => v["digest"].as_str().map(str::to_string).ok_or_else(|| format!("no digest: {body}")),
        _ => Err(format!("{code}: {text:?}")),
    }
}

pub(crate) fn serving(t: &Tenant) -> Option<(Slot, String)> {
    let o = t.status.as_ref()?.observed.as_ref()?;
    let slot = o.active_slot?;
    let s = match slot {
        Slot::Blue => o.blue.as_ref(),
        Slot::Green => o.green.as_ref(),
    }?;
    Some((slot, s.digest.clone()?))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blue_green_switches_with_zero_failed_requests_and_switches_back_warm() {
    let bed = Bed::start().await.unwrap();
    let v1 = bed.stack.push_image("platform-tenant", "v1", &[("sim.health", "healthy")], false).await.unwrap();
    let v2 = bed
        .stack
        .push_image("platform-tenant", "v2", &[("sim.health", "healthy"), ("sim.version", "2")], false)
        .await
        .unwrap();
    let policy: RolloutPolicy = serde_json::from_value(json!({
        "apiVersion": "fleet.molecule.ai/v1alpha1", "kind": "RolloutPolicy",
        "metadata": {"name": "bg", "namespace": bed.ns},
        "spec": {"strategy": "BlueGreen", "keepPreviousSlotSeconds": 300, "healthCheck": {"timeout": "20s"},
                 "canary": {"minCanaries": 0, "soak": "0s"}}
    }))
    .unwrap();
    Api::<RolloutPolicy>::namespaced(bed.client.clone(), &bed.ns)
        .create(&PostParams::default(), &policy)
        .await
        .unwrap();
    channel_at(&bed, "staging", &v1).await;
    let id = launch_managed(&bed.stack, "echo", &[], HostState::Fresh).await.unwrap();
    bed.create::<Tenant>(tenant_json("echo", &id, json!({"rolloutPolicy": "bg"}))).await.unwrap();
    let on = |digest: String| {
        move |t: &Tenant| {
            cond(t, "Ready").is_some_and(|c| c.1 == "Converged")
                && t.status.as_ref().is_some_and(|s| s.in_flight.is_none())
                && serving(t).is_some_and(|(_, d)| d == digest)
        }
    };
    let t = bed.wait_tenant("echo", Duration::from_secs(90), "v1 serving", on(v1.clone())).await.unwrap();
    let (first, _) = serving(&t).unwrap();
    let addr = bed.stack.host_addr(&id);

    // Traffic through the router during the switch.
    let load = Load::start(addr.clone(), 8000);
    load.until_served(&v1, 5).await;
    channel_at(&bed, "staging", &v2).await;
    let t = bed.wait_tenant("echo", Duration::from_secs(90), "v2 serving", on(v2.clone())).await.unwrap();
    load.until_served(&v2, 5).await;
    let (served, failed, errors) = load.finish();
    assert_eq!(failed, 0, "failed requests through the routing port: {errors:?}");
    // The traffic spans the switch: both revisions answered through the same port.
    assert!(served.get(&v1).copied().unwrap_or(0) >= 5 && served.get(&v2).copied().unwrap_or(0) >= 5, "{served:?}");
    let (second, _) = serving(&t).unwrap();
    assert_eq!(second, first.other(), "the new revision runs in the other slot");
    // The old slot stays warm with the old digest.
    let obs = t.status.clone().unwrap().observed.unwrap();
    let old = if first == Slot::Blue { obs.blue.clone() } else { obs.green.clone() }.unwrap();
    assert!(old.running);
    assert_eq!(old.digest.as_deref(), Some(v1.as_str()));

    // Switch back: the warm slot is used, no pull, no start.
    let docker_log = bed.stack.host_dir(&id).join("var/lib/docker-sim/commands.log");
    let before = std::fs::read_to_string(bed.stack.host_dir(&id).join("var/log/tenant-operator/agent.log")).unwrap();
    let docker_before = std::fs::read_to_string(&docker_log).unwrap();
    let load = Load::start(addr.clone(), 8000);
    load.until_served(&v2, 3).await;
    channel_at(&bed, "staging", &v1).await;
    let t = bed.wait_tenant("echo", Duration::from_secs(60), "v1 serving again", on(v1.clone())).await.unwrap();
    load.until_served(&v1, 3).await;
    let (served, failed, errors) = load.finish();
    assert_eq!(failed, 0, "failed requests during the switch-back: {errors:?}");
    assert!(served.get(&v1).copied().unwrap_or(0) >= 3 && served.get(&v2).copied().unwrap_or(0) >= 3, "{served:?}");
    assert_eq!(serving(&t).unwrap().0, first);
    let after = std::fs::read_to_string(bed.stack.host_dir(&id).join("var/log/tenant-operator/agent.log")).unwrap();
    let new_lines = &after[before.len()..];
    assert!(new_lines.contains("switch-back"), "host log: {new_lines}");
    // What docker was asked to do during the switch-back: no pull, no run.
    let docker_after = std::fs::read_to_string(&docker_log).unwrap();
    let docker_new = &docker_after[docker_before.len()..];
    let verbs: Vec<&str> = docker_new
        .lines()
        .filter_map(|l| l.split_whitespace().find(|w| ["pull", "run", "start"].contains(w)))
        .collect();
    assert!(verbs.is_empty(), "docker did {verbs:?} on switch-back: {docker_new}");
}
