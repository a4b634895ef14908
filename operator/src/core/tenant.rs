//! What the Tenant controller does next, decided from plain data.

use crate::crd::{HostObservation, InFlightCommand, Revision, Slot};
use jiff::Timestamp;
use std::time::Duration;

/// Inputs of the decision.
#[derive(Clone, Debug)]
pub struct PlanInput<'a> {
    /// Now.
    pub now: Timestamp,
    /// The command in flight, if any.
    pub in_flight: Option<&'a InFlightCommand>,
    /// The last host report.
    pub observation: Option<&'a HostObservation>,
    /// How long a report stays fresh.
    pub observe_interval: Duration,
    /// The admitted revision, if any.
    pub target: Option<&'a Revision>,
    /// The revision the host should run (target digest + current env), if it could be built.
    pub desired: Option<Desired<'a>>,
    /// The revision whose last apply failed (not retried until the revision changes).
    pub failed_revision: Option<&'a str>,
    /// No apply before this time: the last command never reached the host ([`NOT_DELIVERED_RETRY`]
    /// after it ended, it is sent again, never in a tight loop).
    pub apply_not_before: Option<Timestamp>,
}

/// How long after a command that never reached the host the apply is sent again.
pub const NOT_DELIVERED_RETRY: Duration = Duration::from_secs(15);

/// The revision the host should run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Desired<'a> {
    /// Revision id.
    pub id: &'a str,
    /// Image digest.
    pub digest: &'a str,
    /// Env revision.
    pub env_revision: &'a str,
}

/// The next step.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Next {
    /// A command is in flight: poll it.
    Poll,
    /// Ask the host what it runs.
    Observe,
    /// Move the host to the desired revision.
    Apply,
    /// Nothing to do until the report goes stale (after this long).
    Wait(Duration),
}

/// When the last report was taken.
pub fn observed_at(obs: Option<&HostObservation>) -> Option<Timestamp> {
    obs.and_then(|o| o.observed_at.as_deref()).and_then(|t| t.parse::<Timestamp>().ok())
}

/// Decides the next step.
pub fn next(input: &PlanInput<'_>) -> Next {
    if input.in_flight.is_some() {
        return Next::Poll;
    }
    let Some(at) = observed_at(input.observation) else {
        return Next::Observe;
    };
    let age = input.now.duration_since(at);
    let age = Duration::try_from(age).unwrap_or_default();
    if let (Some(d), Some(obs)) = (input.desired, input.observation)
        && !runs_desired(obs, &d)
        && input.failed_revision != Some(d.id)
    {
        match input.apply_not_before.filter(|t| input.now < *t) {
            None => return Next::Apply,
            Some(t) if age < input.observe_interval => {
                let pause = Duration::try_from(input.now.duration_until(t)).unwrap_or_default();
                return Next::Wait(pause.min(input.observe_interval - age));
            }
            Some(_) => return Next::Observe,
        }
    }
    if age >= input.observe_interval { Next::Observe } else { Next::Wait(input.observe_interval - age) }
}

/// Whether the host runs `target` in its serving slot, healthy.
pub fn runs_target(obs: &HostObservation, target: &Revision) -> bool {
    serving(obs).is_some_and(|(_, s)| {
        s.running
            && s.health.as_deref() == Some("healthy")
            && s.digest.as_deref() == Some(target.digest.as_str())
            && (target.env_revision.is_none() || s.env_revision == target.env_revision)
    })
}

/// Whether the serving slot runs exactly this digest and env, healthy.
pub fn runs_desired(obs: &HostObservation, d: &Desired<'_>) -> bool {
    serving(obs).is_some_and(|(_, s)| {
        s.running
            && s.health.as_deref() == Some("healthy")
            && s.digest.as_deref() == Some(d.digest)
            && s.env_revision.as_deref() == Some(d.env_revision)
    })
}

/// The serving slot and its report.
pub fn serving(obs: &HostObservation) -> Option<(Slot, &crate::crd::SlotObservation)> {
    let slot = obs.active_slot?;
    let s = match slot {
        Slot::Blue => obs.blue.as_ref(),
        Slot::Green => obs.green.as_ref(),
    }?;
    Some((slot, s))
}

/// Which condition changes of a Tenant are worth a Kubernetes event: people read them in
/// `kubectl describe`, and at 10,000 tenants each one is an API write. A rollout that goes well
/// is two events per tenant (`Ready` turns False as the apply starts, True when it is verified); a
/// failure adds `Stalled=True`. Reasons that change under the same status (progress) and the
/// conditions that mirror `Ready` (`Reconciling`, `ImageUpToDate`, `SecretsSynced`) stay in the
/// status only.
///
/// `before` is the condition's status before the change (`None`: it is new), `after` after it.
pub fn worth_an_event(type_: &str, before: Option<&str>, after: &str) -> bool {
    use crate::crd::condition as ct;
    match type_ {
        ct::READY => before != Some(after),
        // New: only in the state that needs someone (a stall, an unreachable instance); afterwards
        // every flip, the way back included.
        ct::STALLED | ct::ADOPTED => before.map_or(after == "True", |b| b != after),
        ct::INSTANCE_REACHABLE => before.map_or(after == "False", |b| b != after),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::SlotObservation;

    fn ts(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    fn obs(at: &str) -> HostObservation {
        HostObservation {
            active_slot: Some(Slot::Blue),
            blue: Some(SlotObservation {
                container: Some("app-blue".into()),
                digest: Some("sha256:aa".into()),
                env_revision: Some("e1".into()),
                running: true,
                health: Some("healthy".into()),
            }),
            observed_at: Some(at.into()),
            ..Default::default()
        }
    }

    /// A minute after the report `o`, which stays fresh for five.
    fn at_one_minute<'a>(o: &'a HostObservation, desired: Option<Desired<'a>>) -> PlanInput<'a> {
        PlanInput {
            now: ts("2026-01-01T00:01:00Z"),
            in_flight: None,
            observation: Some(o),
            observe_interval: Duration::from_secs(300),
            target: None,
            desired,
            failed_revision: None,
            apply_not_before: None,
        }
    }

    #[test]
    fn observes_when_stale_waits_when_fresh_polls_when_in_flight() {
        let o = obs("2026-01-01T00:00:00Z");
        let mut input = at_one_minute(&o, None);
        assert_eq!(next(&input), Next::Wait(Duration::from_secs(240)));
        input.now = ts("2026-01-01T00:05:00Z");
        assert_eq!(next(&input), Next::Observe);
        input.observation = None;
        assert_eq!(next(&input), Next::Observe);
        let f = InFlightCommand {
            intent_token: "t".into(),
            command_id: None,
            action: "observe".into(),
            revision: None,
            digest: None,
            started_at: "2026-01-01T00:00:00Z".into(),
        };
        input.in_flight = Some(&f);
        assert_eq!(next(&input), Next::Poll);
    }

    #[test]
    fn applies_when_the_host_differs_unless_that_revision_failed() {
        let o = obs("2026-01-01T00:00:00Z");
        let same = Desired { id: "r1", digest: "sha256:aa", env_revision: "e1" };
        let other = Desired { id: "r2", digest: "sha256:bb", env_revision: "e1" };
        let mut input = at_one_minute(&o, Some(same));
        assert_eq!(next(&input), Next::Wait(Duration::from_secs(240)));
        input.desired = Some(other);
        assert_eq!(next(&input), Next::Apply);
        input.failed_revision = Some("r2");
        assert_eq!(next(&input), Next::Wait(Duration::from_secs(240)));
        input.now = ts("2026-01-01T00:06:00Z");
        assert_eq!(next(&input), Next::Observe);
    }

    #[test]
    fn a_command_that_never_reached_the_host_is_sent_again_after_a_pause() {
        let o = obs("2026-01-01T00:00:00Z");
        let mut input = at_one_minute(&o, Some(Desired { id: "r2", digest: "sha256:bb", env_revision: "e1" }));
        input.apply_not_before = Some(ts("2026-01-01T00:01:10Z"));
        assert_eq!(next(&input), Next::Wait(Duration::from_secs(10)));
        input.now = ts("2026-01-01T00:01:10Z");
        assert_eq!(next(&input), Next::Apply);
        // A stale report is refreshed first, pause or not.
        input.now = ts("2026-01-01T00:05:05Z");
        input.apply_not_before = Some(ts("2026-01-01T00:05:10Z"));
        assert_eq!(next(&input), Next::Observe);
    }

    #[test]
    fn runs_target_needs_digest_env_and_health() {
        let o = obs("2026-01-01T00:00:00Z");
        let mut t = Revision {
            digest: "sha256:aa".into(),
            image: "r@sha256:aa".into(),
            env_revision: Some("e1".into()),
            source: None,
            admitted_at: None,
        };
        assert!(runs_target(&o, &t));
        t.env_revision = Some("e2".into());
        assert!(!runs_target(&o, &t));
        t.env_revision = Some("e1".into());
        t.digest = "sha256:bb".into();
        assert!(!runs_target(&o, &t));
    }

    #[test]
    fn a_rollout_that_goes_well_is_two_events_and_progress_is_none() {
        // (type, before, after) over one apply, as the tenant controller writes them.
        let rollout = [
            ("Ready", Some("True"), "False"),         // Converged -> Progressing
            ("Reconciling", Some("False"), "True"),   // mirror
            ("ImageUpToDate", Some("True"), "False"), // mirror
            ("Stalled", Some("False"), "False"),      // Converged -> Applying: a reason change
            ("Ready", Some("False"), "False"),        // Progressing -> Applying: a reason change
            ("Ready", Some("False"), "True"),         // Converged
            ("Reconciling", Some("True"), "False"),
            ("ImageUpToDate", Some("False"), "True"),
            ("Stalled", Some("False"), "False"),
        ];
        let events = rollout.iter().filter(|(t, b, a)| worth_an_event(t, *b, a)).count();
        assert_eq!(events, 2);
        // A failure says so; a new tenant gets one event, and more only for what needs someone.
        assert!(worth_an_event("Stalled", Some("False"), "True"));
        assert!(worth_an_event("Stalled", Some("True"), "False"));
        assert!(worth_an_event("Ready", None, "False"));
        assert!(!worth_an_event("Stalled", None, "False"));
        assert!(worth_an_event("Stalled", None, "True"));
        assert!(!worth_an_event("InstanceReachable", None, "True"));
        assert!(worth_an_event("InstanceReachable", None, "False"));
        assert!(worth_an_event("InstanceReachable", Some("False"), "True"));
        assert!(!worth_an_event("SecretsSynced", Some("True"), "False"));
    }
}
