//! Leader election: two operator instances against one API server; only the Lease holder
//! reconciles (statuses, commands), the standby takes over within a lease duration when the leader
//! stops, and a leader whose Lease is taken stops its controllers.

use crate::apply::{channel_at, tenant_json};
use crate::harness::{Bed, cond};
use k8s_openapi::api::coordination::v1::Lease;
use kube::api::{Api, Patch, PatchParams};
use serde_json::json;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tenant_operator::controller::leader::{LeaseSettings, run_while_leader};
use tenant_operator::controller::{self, Error};
use tenant_operator::crd::Tenant;
use tenant_operator::metrics::Metrics;
use tenant_operator::registry::{OciResolver, RegistrySettings, Resolve};
use testbed::controlplane::OPERATOR_NAMESPACE;
use testbed::demo::launch_managed;
use testbed::stack::HostState;

/// Leases live in the operator's namespace, the only one where the chart lets it hold one; each
/// test its own.
fn lease(bed: &Bed) -> String {
    format!("lease-{}", bed.ns)
}

fn leases(bed: &Bed) -> Api<Lease> {
    Api::namespaced(bed.client.clone(), OPERATOR_NAMESPACE)
}
const DURATION_SECS: u64 = 3;

struct Instance {
    stop: tokio::sync::watch::Sender<bool>,
    task: tokio::task::JoinHandle<Result<(), Error>>,
    metrics: Arc<Metrics>,
}

async fn start_instance(bed: &Bed, identity: &str) -> Instance {
    let aws = testbed::demo::sdk_for(&bed.stack).await;
    let metrics = Arc::new(Metrics::default());
    let ctx = Arc::new(bed.context(Arc::new(aws), bed.settings(), metrics.clone()));
    let reg = bed.stack.registry.clone();
    let resolver: Arc<dyn Resolve> =
        Arc::new(OciResolver::new(RegistrySettings::new(vec![reg.clone()], vec![reg], vec![])).unwrap());
    let mut lease_settings = LeaseSettings::new(lease(bed), OPERATOR_NAMESPACE, identity);
    lease_settings.duration_secs = DURATION_SECS;
    lease_settings.grace_secs = 1;
    lease_settings.drain = Duration::from_secs(5);
    let (stop, rx) = tokio::sync::watch::channel(false);
    let task = tokio::spawn(run_while_leader(bed.operator_client.clone(), lease_settings, rx, move |stop| {
        controller::run_all(ctx, resolver, stop)
    }));
    Instance { stop, task, metrics }
}

/// Reconciles and command outcomes this instance counted.
fn work(m: &Metrics) -> u64 {
    m.encode()
        .lines()
        .filter(|l| {
            l.starts_with("tenant_operator_reconciles_total") || l.starts_with("tenant_operator_commands_total")
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .map(|v| v as u64)
        .sum()
}

async fn holder(bed: &Bed) -> Option<String> {
    let leases = leases(bed);
    leases.get_opt(&lease(bed)).await.unwrap()?.spec?.holder_identity
}

async fn wait_holder(bed: &Bed, who: &str, limit: Duration) -> Duration {
    let t0 = Instant::now();
    while holder(bed).await.as_deref() != Some(who) {
        assert!(t0.elapsed() < limit, "{who} did not get the lease in {limit:?}: holder {:?}", holder(bed).await);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    t0.elapsed()
}

fn converged_on(digest: String) -> impl Fn(&Tenant) -> bool {
    move |t: &Tenant| {
        cond(t, "Ready").is_some_and(|c| c.1 == "Converged")
            && t.status.as_ref().and_then(|s| s.target.as_ref()).is_some_and(|x| x.digest == digest)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_election_one_writer_and_a_takeover_within_the_lease_duration() {
    let bed = Bed::start_without_controllers().await.unwrap();
    let v1 = bed.stack.push_image("platform-tenant", "staging", &[("sim.health", "healthy")], false).await.unwrap();
    channel_at(&bed, "staging", &v1).await;

    let a = start_instance(&bed, "replica-a").await;
    wait_holder(&bed, "replica-a", Duration::from_secs(10)).await;
    let b = start_instance(&bed, "replica-b").await;

    let id = launch_managed(&bed.stack, "lead", &[], HostState::Fresh).await.unwrap();
    bed.create::<Tenant>(tenant_json("lead", &id, json!({}))).await.unwrap();
    bed.wait_tenant("lead", Duration::from_secs(90), "convergence on v1", converged_on(v1.clone())).await.unwrap();
    // Through two renewals by the leader (and more than a lease duration): the standby never
    // reconciles anything.
    let since = Instant::now();
    let mut renewals = Vec::new();
    while renewals.len() < 3 || since.elapsed() < Duration::from_secs(DURATION_SECS) {
        let l = leases(&bed).get(&lease(&bed)).await.unwrap();
        let renewed = l.spec.and_then(|s| s.renew_time).map(|t| t.0);
        if renewed.is_some() && renewals.last() != Some(&renewed) {
            renewals.push(renewed);
        }
        assert!(since.elapsed() < Duration::from_secs(30), "the leader did not renew twice: {renewals:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(holder(&bed).await.as_deref(), Some("replica-a"));
    assert!(work(&a.metrics) > 0, "the leader did nothing");
    assert_eq!(work(&b.metrics), 0, "the standby reconciled:\n{}", b.metrics.encode());
    assert!(!b.task.is_finished());

    // The leader stops (SIGTERM): it releases the lease, the standby takes over.
    let t0 = Instant::now();
    a.stop.send(true).unwrap();
    let stopped = tokio::time::timeout(Duration::from_secs(15), a.task).await.expect("the leader did not stop");
    assert!(matches!(stopped, Ok(Ok(()))), "{stopped:?}");
    wait_holder(&bed, "replica-b", Duration::from_secs(DURATION_SECS + 10)).await;
    let takeover = t0.elapsed();
    eprintln!("takeover after the leader stopped: {takeover:?} (lease duration {DURATION_SECS}s)");
    assert!(takeover <= Duration::from_secs(DURATION_SECS + 2), "takeover took {takeover:?}");
    let a_done = work(&a.metrics);

    // The new leader does the work now; the old one does nothing more.
    let v2 = bed
        .stack
        .push_image("platform-tenant", "staging", &[("sim.health", "healthy"), ("sim.version", "2")], false)
        .await
        .unwrap();
    channel_at(&bed, "staging", &v2).await;
    bed.wait_tenant("lead", Duration::from_secs(90), "convergence on v2", converged_on(v2.clone())).await.unwrap();
    assert!(work(&b.metrics) > 0, "the new leader did nothing");
    assert_eq!(work(&a.metrics), a_done, "the stopped replica kept reconciling");

    // Another candidate takes the lease (as after a partition): the leader stops its controllers.
    let leases = leases(&bed);
    // MicroTime: RFC 3339 with exactly six fractional digits (the real server refuses nine).
    let now = jiff::Timestamp::now().strftime("%Y-%m-%dT%H:%M:%S%.6fZ").to_string();
    let patch = json!({"spec": {"holderIdentity": "intruder", "renewTime": now, "acquireTime": now, "leaseDurationSeconds": 3600}});
    leases.patch(&lease(&bed), &PatchParams::default(), &Patch::Merge(&patch)).await.unwrap();
    let t0 = Instant::now();
    let lost =
        tokio::time::timeout(Duration::from_secs(DURATION_SECS + 10), b.task).await.expect("the leader kept running");
    eprintln!("the leader noticed the lost lease after {:?}", t0.elapsed());
    assert!(matches!(lost, Ok(Err(Error::LeadershipLost))), "{lost:?}");
    // `run_while_leader` returns only once its controllers have ended (stopped or aborted and
    // awaited): nothing of them can run after this.
    // (Read from the process, the failover test shows no write from the old leader's credential
    // after the new leader's first one, in the API server's audit log.)
    drop(b.stop);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crashed_leaders_lease_is_taken_over_once_it_expires() {
    let bed = Bed::start_without_controllers().await.unwrap();
    // A leader that crashed just after renewing: its Lease stays until it expires.
    let leases = leases(&bed);
    let renewed = jiff::Timestamp::now();
    let lease: Lease = serde_json::from_value(json!({
        "metadata": {"name": lease(&bed), "namespace": OPERATOR_NAMESPACE},
        "spec": {"holderIdentity": "crashed", "acquireTime": renewed.to_string(), "renewTime": renewed.to_string(),
                 "leaseDurationSeconds": DURATION_SECS, "leaseTransitions": 0}
    }))
    .unwrap();
    leases.create(&Default::default(), &lease).await.unwrap();
    let t0 = Instant::now();
    let b = start_instance(&bed, "replica-b").await;
    // Not before the lease expires...
    tokio::time::sleep(Duration::from_millis(DURATION_SECS * 1000 - 1000)).await;
    assert_eq!(holder(&bed).await.as_deref(), Some("crashed"), "the lease was taken before it expired");
    assert_eq!(work(&b.metrics), 0);
    // ...and soon after.
    wait_holder(&bed, "replica-b", Duration::from_secs(DURATION_SECS + 5)).await;
    let took = t0.elapsed();
    eprintln!("takeover of a crashed leader's lease after {took:?} (lease duration {DURATION_SECS}s)");
    assert!(took <= Duration::from_secs(DURATION_SECS + 2), "takeover took {took:?}");
    b.stop.send(true).unwrap();
    let stopped = tokio::time::timeout(Duration::from_secs(15), b.task).await.expect("did not stop");
    assert!(matches!(stopped, Ok(Ok(()))), "{stopped:?}");
    // Released on the way out.
    assert_eq!(holder(&bed).await, None);
}
