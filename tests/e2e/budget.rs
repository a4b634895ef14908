//! AWS calls per tenant: one first apply, then idle observe cycles, counted per operation through
//! `aws::counting::Counting` (which also feeds `tenant_operator_aws_calls`). Prints the figures
//! (`--nocapture`) and holds upper bounds on counts, never on timings.
//!
//!     cargo test -p tenant-operator-e2e --test e2e budget:: -- --nocapture

use crate::apply::{channel_at, tenant_json};
use crate::harness::{Bed, cond};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use tenant_operator::aws::Aws;
use tenant_operator::aws::counting::{Counting, delta};
use tenant_operator::aws::sdk::SdkAws;
use tenant_operator::controller::{self, Settings};
use tenant_operator::crd::Tenant;
use testbed::demo::launch_managed;
use testbed::stack::HostState;

/// Observe interval of the idle phase (the default is 5 minutes).
const OBSERVE: Duration = Duration::from_secs(2);
/// Idle window, in observe intervals.
const IDLE_INTERVALS: u32 = 8;

/// Bounds (calls, all operations together). Measured (2 s poll): first apply 13 calls; an idle
/// observe cycle 5.3 = SendCommand + DescribeInstances + DescribeInstanceInformation + 2.3
/// ListCommandInvocations (the command's result, listed at most once per poll interval however
/// many reconciles ask; one tenant follows one command at a time, so its scope is not swept).
/// Before results were collected per command and a reconcile read its Tenant from the watch: 28
/// and 11. Headroom for one more poll or reconcile per cycle.
const MAX_FIRST_APPLY: u64 = 30;
const MAX_PER_IDLE_CYCLE: f64 = 8.0;
const MAX_SEND_PER_IDLE_CYCLE: f64 = 1.0;

fn show(title: &str, calls: &BTreeMap<String, u64>) {
    let total: u64 = calls.values().sum();
    println!("{title}: {total} calls");
    for (op, n) in calls {
        println!("    {op:<30} {n}");
    }
}

struct Controllers(tokio::task::JoinHandle<()>);

impl Drop for Controllers {
    fn drop(&mut self) {
        self.0.abort();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aws_calls_per_tenant_first_apply_and_idle() {
    let bed = Bed::start_without_controllers().await.unwrap();
    // The harness's controllers, but with the AWS client wrapped in a counter.
    let counting = Arc::new(Counting::new(testbed::demo::sdk_for(&bed.stack).await, Some(bed.metrics.clone())));
    // The production poll interval (2 s), so result listings per observe (and the
    // reconciles they cause) are what a real deployment sees; only the observe interval is short.
    let settings =
        Settings { observe_interval: OBSERVE, poll_interval: Settings::default().poll_interval, ..bed.settings() };
    let poll = settings.poll_interval;
    let aws: Arc<dyn Aws> = counting.clone();
    let ctx = Arc::new(bed.context(aws, settings, bed.metrics.clone()));
    let resolver = bed.resolver();
    let (_stop, rx) = tokio::sync::watch::channel(false);
    let _controllers = Controllers(tokio::spawn(controller::run_all(ctx, resolver, rx)));

    let digest = bed.stack.push_image("platform-tenant", "staging", &[("sim.health", "healthy")], false).await.unwrap();
    channel_at(&bed, "staging", &digest).await;
    let id = launch_managed(&bed.stack, "budget", &[], HostState::Fresh).await.unwrap();
    // Nothing to do yet: whatever start-up costs is not the tenant's.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let before = counting.snapshot();
    bed.create::<Tenant>(tenant_json("budget", &id, serde_json::json!({}))).await.unwrap();
    bed.wait_tenant("budget", Duration::from_secs(90), "Ready=True Converged", |t| {
        cond(t, "Ready").is_some_and(|c| c.0 == "True" && c.1 == "Converged")
    })
    .await
    .unwrap();
    let converged = counting.snapshot();
    let first = delta(&before, &converged);
    println!();
    show("first apply (Tenant created -> Ready=True Converged)", &first);

    // Let the apply's tail (status write, its re-reconcile, the first observe) pass.
    tokio::time::sleep(OBSERVE * 2).await;
    let idle_start = counting.snapshot();
    let t0 = tokio::time::Instant::now();
    tokio::time::sleep(OBSERVE * IDLE_INTERVALS).await;
    let idle = delta(&idle_start, &counting.snapshot());
    let elapsed = t0.elapsed();
    // Each idle observe sends exactly one command; the jittered interval makes the count of
    // cycles in the window vary, so count them by what they send.
    let cycles = idle.get("SendCommand").copied().unwrap_or(0);
    let total: u64 = idle.values().sum();
    show(
        &format!(
            "idle, {:.1} s at observe interval {OBSERVE:?} (poll {poll:?}), {cycles} observe cycles",
            elapsed.as_secs_f64()
        ),
        &idle,
    );
    assert!(cycles >= 2, "expected a few idle observes in {elapsed:?}, saw {cycles}: {idle:?}");
    let per_cycle = total as f64 / cycles as f64;
    println!("per idle observe cycle: {per_cycle:.2} calls");
    for (op, n) in &idle {
        println!("    {op:<30} {:.2}", *n as f64 / cycles as f64);
    }
    let default_interval = Settings::default().observe_interval;
    let cycles_per_hour = 3600.0 / default_interval.as_secs_f64();
    println!(
        "extrapolated per idle tenant per hour at the default {default_interval:?} interval: {:.0} calls \
         ({cycles_per_hour:.0} cycles; result listings scale with the script's run time / poll interval)",
        per_cycle * cycles_per_hour
    );
    // The metrics saw the same calls.
    let exposition = bed.metrics.encode();
    assert!(exposition.contains("tenant_operator_aws_calls_total{operation=\"SendCommand\"}"), "{exposition}");

    let first_total: u64 = first.values().sum();
    assert!(first_total <= MAX_FIRST_APPLY, "first apply cost {first_total} AWS calls: {first:?}");
    assert!(first.get("SendCommand").copied().unwrap_or(0) <= 3, "first apply: {first:?}");
    assert!(first.get("PutParameter").copied().unwrap_or(0) <= 1, "first apply: {first:?}");
    assert!(per_cycle <= MAX_PER_IDLE_CYCLE, "an idle observe cycle costs {per_cycle:.2} calls: {idle:?}");
    for op in ["PutParameter", "DeleteParameters"] {
        assert_eq!(idle.get(op).copied().unwrap_or(0), 0, "idle tenant made {op}: {idle:?}");
    }
    // ListCommands is the scope's sweep of how far its commands have got; no command was searched
    // for by its token (that is for a restart, and would be counted as "adopted").
    assert!(!exposition.contains("outcome=\"adopted\""), "{exposition}");
    let send_per_cycle = cycles as f64 / (elapsed.as_secs_f64() / OBSERVE.as_secs_f64());
    assert!(send_per_cycle <= MAX_SEND_PER_IDLE_CYCLE + 0.01, "more than one observe per interval: {idle:?}");
}

// The counter itself, without the bed.
#[tokio::test]
async fn counting_counts_by_operation_and_feeds_the_metric() {
    use tenant_operator::aws::AwsScope;
    use tenant_operator::aws::sdk::AwsSettings;
    let metrics = Arc::new(tenant_operator::metrics::Metrics::default());
    // An endpoint that refuses connections: the calls fail fast, and are counted all the same.
    let sdk = SdkAws::new(AwsSettings {
        default_region: "us-east-1".into(),
        ec2_endpoint: Some("http://127.0.0.1:9".into()),
        ssm_endpoint: Some("http://127.0.0.1:9".into()),
        static_credentials: Some(("testing".into(), "testing".into())),
    })
    .await;
    let c = Counting::new(sdk, Some(metrics.clone()));
    let scope = AwsScope::default();
    let _ = c.list_parameters(&scope, "/tenant-operator/x").await;
    let _ = c.list_parameters(&scope, "/tenant-operator/y").await;
    let _ = c.invocation(&scope, "cmd", "i-1").await;
    let snap = c.snapshot();
    assert_eq!(snap.get("GetParametersByPath"), Some(&2));
    assert_eq!(snap.get("GetCommandInvocation"), Some(&1));
    assert_eq!(c.total(), 3);
    assert!(metrics.encode().contains("tenant_operator_aws_calls_total{operation=\"GetParametersByPath\"} 2"));
}
