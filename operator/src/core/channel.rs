//! What an ImageChannel's status becomes after one resolve: pure, on a fixed clock.
//!
//! Rules:
//! - `spec.pinnedDigest` wins: the digest in force is the pin, nothing is resolved.
//! - A channel fed by promotion (`spec.promoteFrom`) is not resolved here; its digest is left as
//!   it is (the rollout coordinator writes it) and it is `Ready=False AwaitingPromotion` until it
//!   has one.
//! - A resolve error keeps the last good digest in force; the reason is the error's.
//! - A digest a rollout rejected stays rejected (sticky); resolved again from the registry it is
//!   not put back in force: the last good non-rejected digest stays and `DigestRejected` says so.
//! - `history` holds the digests most recently in force first, bounded by `historyLimit`; when it
//!   must shrink, rejected entries are the last to go, so a rejection is not forgotten early.

use super::conditions::{self, Cond};
use super::report::short_digest;
use crate::crd::{ChannelHistoryEntry, DigestSource, ImageChannelSpec, ImageChannelStatus, condition as ct};
use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

/// Condition type: the tag resolves to a digest a rollout rejected.
pub const DIGEST_REJECTED: &str = "DigestRejected";

/// What the controller did about the registry this time.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Resolution {
    /// The tag resolves to this digest.
    Resolved(String),
    /// Resolving failed (reason: a CamelCase condition reason).
    Failed {
        /// Condition reason (`RegistryUnreachable`, `TagNotFound`, ...).
        reason: &'static str,
        /// Message (never a secret).
        message: String,
    },
    /// Nothing was asked: the channel is pinned or fed by promotion.
    NotAttempted,
}

/// Reasons that need a change of spec, Secret or operator setting: `Stalled=True`.
pub fn is_stalling(reason: &str) -> bool {
    matches!(reason, "Unauthorized" | "RegistryNotAllowed" | "InvalidReference" | "PullSecretInvalid")
}

/// The status after `outcome`, from `prev` (`None` for a new channel).
pub fn next_status(
    spec: &ImageChannelSpec,
    prev: Option<&ImageChannelStatus>,
    outcome: &Resolution,
    generation: Option<i64>,
    now: Timestamp,
) -> ImageChannelStatus {
    let prev = prev.cloned().unwrap_or_default();
    let mut st = ImageChannelStatus { observed_generation: generation, ..prev.clone() };
    let now_s = now.to_string();
    let mut conds: Vec<Cond> = Vec::new();

    if let Some(pin) = &spec.pinned_digest {
        st.digest = Some(pin.clone());
        bring_to_front(&mut st.history, pin, DigestSource::Pin, &now_s);
        let rejected = is_rejected(&st.history, pin);
        let mut msg = format!("pinned to {pin} by spec.pinnedDigest");
        if rejected {
            msg.push_str(" (a rollout rejected this digest; the pin keeps it anyway)");
        }
        conds.push(Cond::yes(ct::READY, "Pinned", msg.clone()));
        conds.push(Cond::no(ct::RECONCILING, "Pinned", "pinned: nothing to resolve"));
        conds.push(Cond::no(ct::STALLED, "Pinned", "pinned"));
    } else if let Some(from) = &spec.promote_from {
        // The digest is the coordinator's to write; it is left alone here.
        match &st.digest {
            Some(d) => {
                conds.push(Cond::yes(ct::READY, "Promoted", format!("{d} promoted from channel {from}")));
                conds.push(Cond::no(ct::RECONCILING, "Promoted", "waiting for the next promotion"));
            }
            None => {
                conds.push(Cond::no(
                    ct::READY,
                    "AwaitingPromotion",
                    format!("no digest yet: waiting for one of channel {from} to pass a canary gate"),
                ));
                conds.push(Cond::no(ct::RECONCILING, "AwaitingPromotion", "waiting for a promotion"));
            }
        }
        conds.push(Cond::no(ct::STALLED, "AwaitingPromotion", "not stalled"));
    } else {
        let tag = spec.tag.as_deref().unwrap_or_default();
        match outcome {
            Resolution::Resolved(d) => {
                st.last_resolved_at = Some(now_s.clone());
                if is_rejected(&st.history, d) {
                    // Not re-admitted: the newest good digest stays in force.
                    let good = last_good(&st);
                    st.digest = good.clone();
                    let msg = match &good {
                        Some(g) => format!(
                            "{}:{tag} resolves to {d}, which a rollout rejected; {g} stays in force",
                            spec.image
                        ),
                        None => format!(
                            "{}:{tag} resolves to {d}, which a rollout rejected; no other digest to run",
                            spec.image
                        ),
                    };
                    conds.push(Cond::yes(DIGEST_REJECTED, "DigestRejected", msg.clone()));
                    match good {
                        Some(_) => {
                            conds.push(Cond::yes(ct::READY, "Resolved", msg));
                            conds.push(Cond::no(ct::RECONCILING, "DigestRejected", "waiting for the tag to move"));
                            conds.push(Cond::no(ct::STALLED, "DigestRejected", "a good digest is in force"));
                        }
                        None => {
                            conds.push(Cond::no(ct::READY, "DigestRejected", msg.clone()));
                            conds.push(Cond::no(ct::RECONCILING, "DigestRejected", "waiting for the tag to move"));
                            conds.push(Cond::yes(ct::STALLED, "DigestRejected", msg));
                        }
                    }
                } else {
                    st.digest = Some(d.clone());
                    bring_to_front(&mut st.history, d, DigestSource::Registry, &now_s);
                    let msg = format!("{}:{tag} resolves to {d}", spec.image);
                    conds.push(Cond::yes(ct::READY, "Resolved", msg));
                    conds.push(Cond::no(ct::RECONCILING, "Resolved", "resolved"));
                    conds.push(Cond::no(ct::STALLED, "Resolved", "resolved"));
                    if conditions::find(&prev.conditions, DIGEST_REJECTED).is_some() {
                        conds.push(Cond::no(
                            DIGEST_REJECTED,
                            "NotRejected",
                            "the tag resolves to a digest not rejected",
                        ));
                    }
                }
            }
            Resolution::Failed { reason, message } => {
                // The last good digest stays in force; if none is, nothing runs from this channel.
                let kept = match &st.digest {
                    Some(d) => format!("; {d} stays in force"),
                    None => String::new(),
                };
                let msg = format!("{message}{kept}");
                conds.push(Cond::no(ct::READY, reason, msg.clone()));
                if is_stalling(reason) {
                    conds.push(Cond::no(
                        ct::RECONCILING,
                        reason,
                        "waiting for a change of spec, Secret or operator settings",
                    ));
                    conds.push(Cond::yes(ct::STALLED, reason, msg));
                } else {
                    conds.push(Cond::yes(ct::RECONCILING, reason, "retrying at the next interval"));
                    conds.push(Cond::no(ct::STALLED, reason, "transient: retrying"));
                }
            }
            Resolution::NotAttempted => {
                conds.push(Cond::no(ct::READY, "Resolving", "the tag has not been resolved yet"));
                conds.push(Cond::yes(ct::RECONCILING, "Resolving", "resolving"));
                conds.push(Cond::no(ct::STALLED, "Resolving", "not stalled"));
            }
        }
    }

    st.short = st.digest.as_deref().map(short_digest);
    bound(&mut st.history, spec.history_limit, st.digest.as_deref());
    st.conditions = conditions::merge(&prev.conditions, &conds, generation, &Time(now));
    st
}

/// A promoted channel's digest, short digest and history after `digest` passed the source's gate.
/// `None` when there is nothing to change (already in force, or rejected for this channel).
pub fn promoted(
    spec: &ImageChannelSpec,
    prev: Option<&ImageChannelStatus>,
    digest: &str,
    evidence: crate::crd::PromotionEvidence,
    now: Timestamp,
) -> Option<ImageChannelStatus> {
    let mut st = prev.cloned().unwrap_or_default();
    if st.digest.as_deref() == Some(digest) || is_rejected(&st.history, digest) {
        return None;
    }
    st.digest = Some(digest.to_string());
    bring_to_front(&mut st.history, digest, DigestSource::Promotion, &now.to_string());
    if let Some(first) = st.history.first_mut() {
        first.evidence = Some(evidence);
    }
    st.short = st.digest.as_deref().map(short_digest);
    bound(&mut st.history, spec.history_limit, st.digest.as_deref());
    Some(st)
}

/// The channel after a rollout of `digest` was aborted: the digest is marked rejected (sticky) and
/// the newest good digest is in force again. `None` when it was rejected already.
pub fn rejected(
    spec: &ImageChannelSpec,
    prev: Option<&ImageChannelStatus>,
    digest: &str,
    reason: &str,
    now: Timestamp,
) -> Option<ImageChannelStatus> {
    let mut st = prev.cloned().unwrap_or_default();
    if is_rejected(&st.history, digest) {
        return None;
    }
    if !st.history.iter().any(|h| h.digest == digest) {
        st.history.insert(
            0,
            ChannelHistoryEntry {
                digest: digest.to_string(),
                first_seen: now.to_string(),
                source: DigestSource::Registry,
                rejected: false,
                rejected_reason: None,
                evidence: None,
            },
        );
    }
    for h in st.history.iter_mut().filter(|h| h.digest == digest) {
        h.rejected = true;
        h.rejected_reason = Some(reason.to_string());
    }
    if spec.pinned_digest.is_none() {
        st.digest = last_good(&st);
    }
    st.short = st.digest.as_deref().map(short_digest);
    bound(&mut st.history, spec.history_limit, st.digest.as_deref());
    Some(st)
}

fn is_rejected(history: &[ChannelHistoryEntry], digest: &str) -> bool {
    history.iter().any(|h| h.digest == digest && h.rejected)
}

/// The digest to keep in force when the resolved one is rejected: the current one if it is not
/// rejected, else the newest non-rejected one in the history.
fn last_good(st: &ImageChannelStatus) -> Option<String> {
    st.digest
        .clone()
        .filter(|d| !is_rejected(&st.history, d))
        .or_else(|| st.history.iter().find(|h| !h.rejected).map(|h| h.digest.clone()))
}

/// Puts `digest` first in the history (it is in force now), adding it if new; an entry keeps its
/// `firstSeen`, source and rejection.
fn bring_to_front(history: &mut Vec<ChannelHistoryEntry>, digest: &str, source: DigestSource, now: &str) {
    let entry = match history.iter().position(|h| h.digest == digest) {
        Some(i) => history.remove(i),
        None => ChannelHistoryEntry {
            digest: digest.to_string(),
            first_seen: now.to_string(),
            source,
            rejected: false,
            rejected_reason: None,
            evidence: None,
        },
    };
    history.insert(0, entry);
}

/// Bounds the history to `limit` (at least 1): the oldest entries go first, but not the digest in
/// force, and rejected entries only when nothing else can go.
fn bound(history: &mut Vec<ChannelHistoryEntry>, limit: i32, current: Option<&str>) {
    let limit = usize::try_from(limit.max(1)).unwrap_or(1);
    for pass_rejected in [false, true] {
        while history.len() > limit {
            let victim =
                history.iter().rposition(|h| Some(h.digest.as_str()) != current && (pass_rejected || !h.rejected));
            match victim {
                Some(i) => {
                    history.remove(i);
                }
                None => break,
            }
        }
    }
    history.truncate(limit);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::Duration;

    fn d(n: u8) -> String {
        format!("sha256:{}", format!("{n:x}").repeat(64).chars().take(64).collect::<String>())
    }

    fn at(min: u32) -> Timestamp {
        format!("2026-01-01T00:{min:02}:00Z").parse().unwrap()
    }

    fn spec() -> ImageChannelSpec {
        ImageChannelSpec {
            image: "registry.example.com/org/platform-tenant".into(),
            tag: Some("latest".into()),
            promote_from: None,
            pinned_digest: None,
            interval: Duration::parse("5m").unwrap(),
            pull_secret: None,
            webhook: None,
            history_limit: 3,
        }
    }

    fn cond(st: &ImageChannelStatus, t: &str) -> (String, String) {
        let c = conditions::find(&st.conditions, t).unwrap_or_else(|| panic!("no {t} condition"));
        (c.status.clone(), c.reason.clone())
    }

    fn yes(r: &str) -> (String, String) {
        ("True".into(), r.into())
    }
    fn no(r: &str) -> (String, String) {
        ("False".into(), r.into())
    }

    fn reject(st: &mut ImageChannelStatus, digest: &str) {
        for h in st.history.iter_mut().filter(|h| h.digest == digest) {
            h.rejected = true;
            h.rejected_reason = Some("rollout aborted".into());
        }
    }

    #[test]
    fn a_resolved_tag_is_in_force_and_recorded() {
        let s = spec();
        let st = next_status(&s, None, &Resolution::Resolved(d(1)), Some(1), at(0));
        assert_eq!(st.digest, Some(d(1)));
        assert_eq!(st.short.as_deref(), Some("111111111111"));
        assert_eq!(st.observed_generation, Some(1));
        assert_eq!(st.last_resolved_at.as_deref(), Some("2026-01-01T00:00:00Z"));
        assert_eq!(st.history.len(), 1);
        assert_eq!(st.history[0].source, DigestSource::Registry);
        assert_eq!(st.history[0].first_seen, "2026-01-01T00:00:00Z");
        assert_eq!(cond(&st, ct::READY), yes("Resolved"));
        assert_eq!(cond(&st, ct::RECONCILING), no("Resolved"));
        assert_eq!(cond(&st, ct::STALLED), no("Resolved"));
        assert!(conditions::find(&st.conditions, DIGEST_REJECTED).is_none());

        // Same digest again: nothing new in the history, first_seen and transition time kept.
        let again = next_status(&s, Some(&st), &Resolution::Resolved(d(1)), Some(1), at(5));
        assert_eq!(again.history, st.history);
        assert_eq!(again.last_resolved_at.as_deref(), Some("2026-01-01T00:05:00Z"));
        assert_eq!(conditions::find(&again.conditions, ct::READY).unwrap().last_transition_time, Time(at(0)));
    }

    #[test]
    fn a_moved_tag_grows_the_history_newest_first_and_bounded() {
        let s = spec();
        let mut st = next_status(&s, None, &Resolution::Resolved(d(1)), Some(1), at(0));
        for (i, n) in [2u8, 3, 4].iter().enumerate() {
            st = next_status(&s, Some(&st), &Resolution::Resolved(d(*n)), Some(1), at(i as u32 + 1));
        }
        assert_eq!(st.digest, Some(d(4)));
        let digests: Vec<_> = st.history.iter().map(|h| h.digest.clone()).collect();
        assert_eq!(digests, vec![d(4), d(3), d(2)]);
        // Back to an older digest still in the history: it moves to the front, keeps first_seen.
        let back = next_status(&s, Some(&st), &Resolution::Resolved(d(2)), Some(1), at(9));
        assert_eq!(back.digest, Some(d(2)));
        assert_eq!(back.history[0].digest, d(2));
        assert_eq!(back.history[0].first_seen, "2026-01-01T00:01:00Z");
        assert_eq!(back.history.len(), 3);
    }

    #[test]
    fn errors_keep_the_last_good_digest() {
        let s = spec();
        let st = next_status(&s, None, &Resolution::Resolved(d(1)), Some(1), at(0));
        let failed = Resolution::Failed { reason: "TagNotFound", message: "x:latest does not exist".into() };
        let e = next_status(&s, Some(&st), &failed, Some(1), at(5));
        assert_eq!(e.digest, Some(d(1)));
        assert_eq!(e.short, st.short);
        assert_eq!(e.history, st.history);
        assert_eq!(e.last_resolved_at, st.last_resolved_at);
        assert_eq!(cond(&e, ct::READY), no("TagNotFound"));
        assert_eq!(cond(&e, ct::RECONCILING), yes("TagNotFound"));
        assert_eq!(cond(&e, ct::STALLED), no("TagNotFound"));
        assert!(conditions::find(&e.conditions, ct::READY).unwrap().message.contains(&d(1)));

        let down = Resolution::Failed { reason: "RegistryUnreachable", message: "timed out".into() };
        let e = next_status(&s, Some(&st), &down, Some(1), at(5));
        assert_eq!(cond(&e, ct::STALLED), no("RegistryUnreachable"));
        assert_eq!(e.digest, Some(d(1)));
    }

    #[test]
    fn configuration_errors_stall() {
        let s = spec();
        for reason in ["Unauthorized", "RegistryNotAllowed", "InvalidReference"] {
            let e = next_status(&s, None, &Resolution::Failed { reason, message: "m".into() }, Some(2), at(0));
            assert_eq!(e.digest, None);
            assert_eq!(e.short, None);
            assert_eq!(cond(&e, ct::READY), no(reason));
            assert_eq!(cond(&e, ct::STALLED), yes(reason));
            assert_eq!(cond(&e, ct::RECONCILING), no(reason));
        }
    }

    #[test]
    fn the_pin_wins() {
        let mut s = spec();
        let st = next_status(&s, None, &Resolution::Resolved(d(1)), Some(1), at(0));
        s.pinned_digest = Some(d(9));
        let p = next_status(&s, Some(&st), &Resolution::NotAttempted, Some(2), at(1));
        assert_eq!(p.digest, Some(d(9)));
        assert_eq!(p.short.as_deref(), Some("999999999999"));
        assert_eq!(p.history[0].digest, d(9));
        assert_eq!(p.history[0].source, DigestSource::Pin);
        assert_eq!(p.history[1].digest, d(1));
        assert_eq!(cond(&p, ct::READY), yes("Pinned"));
        assert_eq!(cond(&p, ct::STALLED), no("Pinned"));
        // Even a resolve outcome does not move a pinned channel.
        let p2 = next_status(&s, Some(&p), &Resolution::Resolved(d(3)), Some(2), at(2));
        assert_eq!(p2.digest, Some(d(9)));
        assert_eq!(p2.history.len(), 2);
        // Unpinned: the tag is back in force.
        s.pinned_digest = None;
        let u = next_status(&s, Some(&p2), &Resolution::Resolved(d(1)), Some(3), at(3));
        assert_eq!(u.digest, Some(d(1)));
        assert_eq!(cond(&u, ct::READY), yes("Resolved"));
    }

    #[test]
    fn a_rejected_digest_is_not_readmitted() {
        let s = spec();
        let a = next_status(&s, None, &Resolution::Resolved(d(1)), Some(1), at(0));
        let mut b = next_status(&s, Some(&a), &Resolution::Resolved(d(2)), Some(1), at(1));
        // A rollout aborted d(2) (the coordinator marks it, and may already have put d(1) back).
        reject(&mut b, &d(2));
        let c = next_status(&s, Some(&b), &Resolution::Resolved(d(2)), Some(1), at(2));
        assert_eq!(c.digest, Some(d(1)), "the last good digest stays in force");
        assert_eq!(c.short.as_deref(), Some("111111111111"));
        assert!(c.history.iter().any(|h| h.digest == d(2) && h.rejected), "rejection is sticky");
        assert_eq!(cond(&c, DIGEST_REJECTED), yes("DigestRejected"));
        assert_eq!(cond(&c, ct::READY), yes("Resolved"));
        assert_eq!(cond(&c, ct::STALLED), no("DigestRejected"));

        // The tag moves on: the new digest is in force, the condition clears, d(2) stays rejected.
        let e = next_status(&s, Some(&c), &Resolution::Resolved(d(3)), Some(1), at(3));
        assert_eq!(e.digest, Some(d(3)));
        assert_eq!(cond(&e, DIGEST_REJECTED), no("NotRejected"));
        // ... and back to d(2): still rejected.
        let f = next_status(&s, Some(&e), &Resolution::Resolved(d(2)), Some(1), at(4));
        assert_eq!(f.digest, Some(d(3)));
        assert_eq!(cond(&f, DIGEST_REJECTED), yes("DigestRejected"));
        assert!(f.history.iter().any(|h| h.digest == d(2) && h.rejected));
    }

    #[test]
    fn a_rejected_only_digest_leaves_nothing_in_force() {
        let s = spec();
        let mut a = next_status(&s, None, &Resolution::Resolved(d(1)), Some(1), at(0));
        reject(&mut a, &d(1));
        let b = next_status(&s, Some(&a), &Resolution::Resolved(d(1)), Some(1), at(1));
        assert_eq!(b.digest, None);
        assert_eq!(b.short, None);
        assert_eq!(cond(&b, ct::READY), no("DigestRejected"));
        assert_eq!(cond(&b, ct::STALLED), yes("DigestRejected"));
    }

    #[test]
    fn rejected_entries_are_the_last_to_leave_the_history() {
        let mut s = spec();
        s.history_limit = 2;
        let mut st = next_status(&s, None, &Resolution::Resolved(d(1)), Some(1), at(0));
        reject(&mut st, &d(1));
        st = next_status(&s, Some(&st), &Resolution::Resolved(d(2)), Some(1), at(1));
        st = next_status(&s, Some(&st), &Resolution::Resolved(d(3)), Some(1), at(2));
        let digests: Vec<_> = st.history.iter().map(|h| h.digest.clone()).collect();
        assert_eq!(digests, vec![d(3), d(1)], "d(2) went, rejected d(1) stayed");
        // A hard bound all the same.
        s.history_limit = 1;
        st = next_status(&s, Some(&st), &Resolution::Resolved(d(4)), Some(1), at(3));
        assert_eq!(st.history.len(), 1);
        assert_eq!(st.history[0].digest, d(4));
    }

    #[test]
    fn promotion_records_evidence_and_rejection_restores_the_last_good() {
        let mut s = spec();
        s.tag = None;
        s.promote_from = Some("staging".into());
        let ev = crate::crd::PromotionEvidence {
            channel: "staging".into(),
            policy: "bg".into(),
            tenants: vec!["c0".into()],
            soak_started_at: at(1).to_string(),
            passed_at: at(2).to_string(),
            how: "soak".into(),
        };
        let st = promoted(&s, None, &d(1), ev.clone(), at(2)).unwrap();
        assert_eq!(st.digest, Some(d(1)));
        assert_eq!(st.history[0].evidence.as_ref(), Some(&ev));
        assert_eq!(st.history[0].source, DigestSource::Promotion);
        assert!(promoted(&s, Some(&st), &d(1), ev.clone(), at(3)).is_none(), "already in force");
        let st2 = promoted(&s, Some(&st), &d(2), ev.clone(), at(3)).unwrap();
        let st3 = rejected(&s, Some(&st2), &d(2), "aborted", at(4)).unwrap();
        assert_eq!(st3.digest, Some(d(1)));
        assert!(st3.history.iter().any(|h| h.digest == d(2) && h.rejected));
        assert!(rejected(&s, Some(&st3), &d(2), "again", at(5)).is_none());
        assert!(promoted(&s, Some(&st3), &d(2), ev, at(6)).is_none(), "a rejected digest is not promoted");
    }

    #[test]
    fn promoted_channels_wait_for_a_digest_and_keep_it() {
        let mut s = spec();
        s.tag = None;
        s.promote_from = Some("staging".into());
        let w = next_status(&s, None, &Resolution::NotAttempted, Some(1), at(0));
        assert_eq!(w.digest, None);
        assert_eq!(cond(&w, ct::READY), no("AwaitingPromotion"));
        assert_eq!(cond(&w, ct::STALLED), no("AwaitingPromotion"));
        // The coordinator wrote a digest: it is left alone and the channel is ready.
        let mut promoted = w.clone();
        promoted.digest = Some(d(5));
        let p = next_status(&s, Some(&promoted), &Resolution::NotAttempted, Some(1), at(1));
        assert_eq!(p.digest, Some(d(5)));
        assert_eq!(p.short.as_deref(), Some("555555555555"));
        assert_eq!(cond(&p, ct::READY), yes("Promoted"));
        assert!(p.history.is_empty(), "history of promotions is the coordinator's");
    }
}
