//! kstatus conditions with the semantics we hold to: `lastTransitionTime` changes only when a
//! condition's status changes; reasons are CamelCase and stable.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

/// One desired condition, before it is merged into the stored list.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cond {
    /// Condition type (`Ready`, `Reconciling`, ...).
    pub type_: &'static str,
    /// `True` or `False` (`Unknown` is written as false with an explaining reason).
    pub status: bool,
    /// CamelCase reason.
    pub reason: &'static str,
    /// Human readable message (never a secret value).
    pub message: String,
}

impl Cond {
    /// A condition that holds.
    pub fn yes(type_: &'static str, reason: &'static str, message: impl Into<String>) -> Self {
        Cond { type_, status: true, reason, message: message.into() }
    }
    /// A condition that does not hold.
    pub fn no(type_: &'static str, reason: &'static str, message: impl Into<String>) -> Self {
        Cond { type_, status: false, reason, message: message.into() }
    }
}

fn status_str(b: bool) -> &'static str {
    if b { "True" } else { "False" }
}

/// Merges `desired` into `current`: conditions not named in `desired` are kept as they are; a named
/// one keeps its `lastTransitionTime` unless its status changed. Returns the new list, in a stable
/// order (the order of `desired`, then the untouched ones).
pub fn merge(current: &[Condition], desired: &[Cond], generation: Option<i64>, now: &Time) -> Vec<Condition> {
    let mut out = Vec::with_capacity(current.len().max(desired.len()));
    for d in desired {
        let prev = current.iter().find(|c| c.type_ == d.type_);
        let status = status_str(d.status).to_string();
        let last_transition_time = match prev {
            Some(p) if p.status == status => p.last_transition_time.clone(),
            _ => now.clone(),
        };
        out.push(Condition {
            type_: d.type_.to_string(),
            status,
            reason: d.reason.to_string(),
            message: d.message.clone(),
            observed_generation: generation,
            last_transition_time,
        });
    }
    for c in current {
        if !desired.iter().any(|d| d.type_ == c.type_) {
            out.push(c.clone());
        }
    }
    out
}

/// Finds a condition by type.
pub fn find<'a>(conditions: &'a [Condition], type_: &str) -> Option<&'a Condition> {
    conditions.iter().find(|c| c.type_ == type_)
}

/// Whether a condition is present and `True`.
pub fn is_true(conditions: &[Condition], type_: &str) -> bool {
    find(conditions, type_).is_some_and(|c| c.status == "True")
}

/// Whether two condition lists differ in anything but `lastTransitionTime` (used to emit events only
/// when the state changes).
pub fn changed(before: &[Condition], after: &[Condition]) -> Vec<(String, String, String)> {
    let mut out = Vec::new();
    for a in after {
        let b = before.iter().find(|b| b.type_ == a.type_);
        if b.is_none_or(|b| b.status != a.status || b.reason != a.reason) {
            out.push((a.type_.clone(), a.status.clone(), a.reason.clone()));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use jiff::Timestamp;

    fn t(s: &str) -> Time {
        Time(s.parse::<Timestamp>().unwrap())
    }

    #[test]
    fn transition_time_moves_only_when_status_changes() {
        let t0 = t("2026-01-01T00:00:00Z");
        let t1 = t("2026-01-01T00:05:00Z");
        let t2 = t("2026-01-01T00:10:00Z");
        let a = merge(&[], &[Cond::no("Ready", "Progressing", "starting")], Some(1), &t0);
        assert_eq!(a[0].last_transition_time, t0);
        // Same status, other reason and message: the time stays.
        let b = merge(&a, &[Cond::no("Ready", "HostUnhealthy", "health fails")], Some(2), &t1);
        assert_eq!(b[0].last_transition_time, t0);
        assert_eq!(b[0].reason, "HostUnhealthy");
        assert_eq!(b[0].observed_generation, Some(2));
        // Status flips: the time moves.
        let c = merge(&b, &[Cond::yes("Ready", "Converged", "ok")], Some(2), &t2);
        assert_eq!(c[0].last_transition_time, t2);
        assert_eq!(c[0].status, "True");
    }

    #[test]
    fn untouched_conditions_are_kept_and_changes_are_listed() {
        let t0 = t("2026-01-01T00:00:00Z");
        let a = merge(
            &[],
            &[Cond::yes("Ready", "Converged", ""), Cond::yes("InstanceReachable", "Online", "")],
            Some(1),
            &t0,
        );
        let b = merge(&a, &[Cond::no("Ready", "Applying", "")], Some(1), &t0);
        assert_eq!(b.len(), 2);
        assert!(is_true(&b, "InstanceReachable"));
        assert!(!is_true(&b, "Ready"));
        assert_eq!(changed(&a, &b), vec![("Ready".into(), "False".into(), "Applying".into())]);
        assert!(changed(&b, &b).is_empty());
    }
}
