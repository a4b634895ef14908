//! Leader election: of many replicas, only the holder of a `coordination.k8s.io` Lease runs the
//! controllers, so there is one writer of statuses and one sender of commands.
//!
//! The Lease is kept by `kube-lease-manager` (server-side apply on the Lease, so two candidates can
//! never both take it; renewed `grace` seconds before it expires). [`run_while_leader`] waits for
//! the Lease, runs the controllers, and stops them when the Lease is lost (then returns
//! [`Error::LeadershipLost`]: the process exits and is restarted as a candidate, the way client-go's
//! leader election ends) or when `shutdown` fires (then the Lease is released so a standby takes
//! over at its next look, within one lease duration).
//!
//! A leader cut off from the API server cannot renew and is replaced after `duration`. It must not
//! write once that can have happened: while leading it reads the Lease itself ([`renewal_overdue`])
//! and stops its controllers when the last renewal it saw is older than `duration` less a margin,
//! even if it cannot reach the server to find out whether another candidate took over (client-go's
//! renew deadline). Without that a partitioned leader kept its controllers and, once the link
//! healed, wrote beside the new leader (the failover e2e test read both in the audit log).

use super::Error;
use kube_lease_manager::LeaseManagerBuilder;
use std::time::Duration;
use tokio::sync::watch;
use tracing::{info, warn};

/// Where the Lease is and who we are.
#[derive(Clone, Debug)]
pub struct LeaseSettings {
    /// Lease name.
    pub name: String,
    /// Lease namespace (the operator's own).
    pub namespace: String,
    /// This candidate's identity (unique per process: see [`identity`]).
    pub identity: String,
    /// Lease validity after the last renewal, in seconds.
    pub duration_secs: u64,
    /// The holder renews this many seconds before the Lease expires.
    pub grace_secs: u64,
    /// How long the controllers may take to finish in-flight reconciles at shutdown.
    pub drain: Duration,
}

impl LeaseSettings {
    /// Defaults: 15 s leases renewed 5 s before they expire, 20 s to drain at shutdown.
    pub fn new(name: impl Into<String>, namespace: impl Into<String>, identity: impl Into<String>) -> Self {
        LeaseSettings {
            name: name.into(),
            namespace: namespace.into(),
            identity: identity.into(),
            duration_secs: 15,
            grace_secs: 5,
            drain: Duration::from_secs(20),
        }
    }
}

/// A candidate identity: `base` (the pod name, else the host name) and a random suffix, so two
/// processes on one host (or a restarted pod) never share an identity.
pub fn identity(base: Option<&str>) -> String {
    let base = base.filter(|b| !b.is_empty()).unwrap_or("tenant-operator");
    let suffix = uuid::Uuid::new_v4().simple().to_string();
    format!("{base}_{}", &suffix[..8])
}

/// Runs `controllers` while this process holds the Lease: waits for it, starts them with a stop
/// signal of their own, and stops them when the Lease is lost or `shutdown` fires.
///
/// Returns `Ok(())` after `shutdown` (the Lease released), [`Error::LeadershipLost`] when the Lease
/// went to another candidate (the controllers were stopped first).
pub async fn run_while_leader<F, Fut>(
    client: kube::Client,
    lease: LeaseSettings,
    mut shutdown: watch::Receiver<bool>,
    controllers: F,
) -> Result<(), Error>
where
    F: FnOnce(watch::Receiver<bool>) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let watchdog_client = client.clone();
    let manager = LeaseManagerBuilder::new(client, &lease.name)
        .with_namespace(&lease.namespace)
        .with_identity(&lease.identity)
        .with_duration(lease.duration_secs.max(2))
        .with_grace(lease.grace_secs.clamp(1, lease.duration_secs.max(2) - 1))
        .build()
        .await?;
    let (mut leading, keeper) = manager.watch().await;
    info!(lease = %lease.name, namespace = %lease.namespace, identity = %lease.identity, "waiting for the lease");
    loop {
        if *leading.borrow_and_update() {
            break;
        }
        tokio::select! {
            changed = leading.changed() => if changed.is_err() {
                return Err(Error::Lease("the lease keeper stopped".into()));
            },
            () = stopping(&mut shutdown) => {
                drop(leading);
                let _ = tokio::time::timeout(Duration::from_secs(5), keeper).await;
                return Ok(());
            }
        }
    }
    info!(identity = %lease.identity, "leading: starting the controllers");
    let (stop, stop_rx) = watch::channel(false);
    let mut running = tokio::spawn(controllers(stop_rx));
    let outcome = tokio::select! {
        () = stopping(&mut shutdown) => Ok(()),
        () = lost(&mut leading) => Err(Error::LeadershipLost),
        () = renewal_overdue(watchdog_client, &lease) => Err(Error::LeadershipLost),
        _ = &mut running => Ok(()),
    };
    // Lost: stop at once (a kill at any instant is safe); shutting down: let reconciles finish.
    let drain = if outcome.is_err() { Duration::from_secs(2) } else { lease.drain };
    let _ = stop.send(true);
    if tokio::time::timeout(drain, &mut running).await.is_err() {
        warn!("the controllers did not stop in time; aborted");
        running.abort();
        // Cancelled at its next await: once this returns, nothing of the controllers runs.
        let _ = running.await;
    }
    match &outcome {
        Ok(()) => info!(identity = %lease.identity, "controllers stopped; releasing the lease"),
        Err(_) => warn!(identity = %lease.identity, "lost the lease; controllers stopped"),
    }
    // Closing the channel makes the keeper release the Lease (if still ours) and end.
    drop(leading);
    let _ = tokio::time::timeout(Duration::from_secs(5), keeper).await;
    outcome
}

/// Resolves when `shutdown` fires (or its sender is gone).
async fn stopping(shutdown: &mut watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|stop| *stop).await;
}

/// How long a Lease renewed at `renewed` is still ours, less `margin`, at `now`. Pure.
pub fn still_ours(renewed: jiff::Timestamp, now: jiff::Timestamp, duration: Duration, margin: Duration) -> Duration {
    let age = Duration::try_from(now.duration_since(renewed)).unwrap_or_default();
    duration.saturating_sub(margin).saturating_sub(age)
}

/// Resolves when this leader can no longer be sure it holds the Lease: the newest renewal it read
/// (it polls the Lease) is about to expire, or the Lease names someone else. A read that fails or
/// hangs (a partition) confirms nothing, so the deadline runs on.
async fn renewal_overdue(client: kube::Client, lease: &LeaseSettings) {
    use k8s_openapi::api::coordination::v1::Lease;
    let api: kube::Api<Lease> = kube::Api::namespaced(client, &lease.namespace);
    let duration = Duration::from_secs(lease.duration_secs.max(2));
    let grace = Duration::from_secs(lease.grace_secs.max(1));
    // The leader stops `margin` before the Lease can expire: a standby takes it only after expiry.
    let margin = (grace / 4).clamp(Duration::from_millis(250), Duration::from_secs(2));
    let poll = (grace / 8).clamp(Duration::from_millis(100), Duration::from_secs(1));
    // Just taken or renewed by the keeper.
    let mut deadline = tokio::time::Instant::now() + duration.saturating_sub(margin);
    loop {
        let now = tokio::time::Instant::now();
        if now >= deadline {
            warn!(identity = %lease.identity, "no renewal of the lease seen in time: stopping the controllers");
            return;
        }
        tokio::time::sleep(poll.min(deadline - now)).await;
        // A read may take as long as the deadline leaves (a slow server is not a lost Lease).
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let Ok(Ok(found)) = tokio::time::timeout(left, api.get(&lease.name)).await else { continue };
        let Some(spec) = found.spec else { continue };
        if spec.holder_identity.as_deref() != Some(lease.identity.as_str()) {
            warn!(identity = %lease.identity, holder = ?spec.holder_identity, "the lease names another holder");
            return;
        }
        if let Some(renewed) = spec.renew_time {
            let left = still_ours(renewed.0, jiff::Timestamp::now(), duration, margin);
            deadline = deadline.max(tokio::time::Instant::now() + left);
        }
    }
}

/// Resolves when the keeper says the Lease is no longer ours (or stops keeping it).
async fn lost(leading: &mut watch::Receiver<bool>) {
    loop {
        if leading.changed().await.is_err() || !*leading.borrow_and_update() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lease_is_ours_until_its_duration_less_the_margin_after_the_last_renewal() {
        let renewed: jiff::Timestamp = "2026-12-03T10:00:00Z".parse().unwrap();
        let at = |s: &str| s.parse::<jiff::Timestamp>().unwrap();
        let (d, m) = (Duration::from_secs(15), Duration::from_millis(2500));
        assert_eq!(still_ours(renewed, at("2026-12-03T10:00:00Z"), d, m), Duration::from_millis(12500));
        assert_eq!(still_ours(renewed, at("2026-12-03T10:00:10Z"), d, m), Duration::from_millis(2500));
        assert_eq!(still_ours(renewed, at("2026-12-03T10:00:13Z"), d, m), Duration::ZERO);
        // A renewal stamped ahead of this clock counts from now.
        assert_eq!(still_ours(renewed, at("2026-12-03T09:59:59Z"), d, m), Duration::from_millis(12500));
    }

    #[test]
    fn identities_are_unique_per_process_and_keep_the_pod_name() {
        let a = identity(Some("tenant-operator-7d9f-abcde"));
        let b = identity(Some("tenant-operator-7d9f-abcde"));
        assert_ne!(a, b);
        assert!(a.starts_with("tenant-operator-7d9f-abcde_"));
        assert!(identity(None).starts_with("tenant-operator_"));
        assert!(identity(Some("")).starts_with("tenant-operator_"));
    }
}
