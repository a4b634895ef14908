//! The rollout engine's decisions: which tenants move next, is the soak over, did the error budget
//! run out. Pure, over plain data, on a clock given by the caller.
//!
//! A rollout is (policy, channel, revision). One call of [`step`] looks at the tenants of one
//! (policy, channel) pair as they are now and at the rollout's record (kept in the policy's
//! status) and says which tenants get which target, what the record becomes, and what is worth an
//! event. Calling it again with the same inputs decides nothing new: it is level-triggered.
//!
//! Order: the canary tier first, in batches of at most `maxConcurrency`; then the canary gate (at
//! least `minCanaries` canaries verified, and healthy at every sample through the soak); then the
//! production tier in batches of at most `maxConcurrency`, `stagger` after the previous batch
//! finished. A tenant whose apply fails is sent back to what it ran before and counts against
//! `maxErrors`; over budget the rollout halts and nothing else moves. A newer digest in the channel
//! supersedes the rollout, halted or not.

use crate::crd::{FirstPlacement, RolloutPolicySpec, RolloutStatus, Tier, TierProgress};
use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use std::time::Duration;

/// Phases of a rollout.
pub mod phase {
    /// Canaries are moving.
    pub const CANARY: &str = "Canary";
    /// Fewer canary tenants than the gate needs.
    pub const WAITING_FOR_CANARIES: &str = "WaitingForCanaries";
    /// The canaries run the revision; health is sampled until the soak ends.
    pub const SOAKING: &str = "Soaking";
    /// The gate passed; production moves in batches.
    pub const PRODUCTION: &str = "Production";
    /// Too many failures: nothing moves until a retry or a newer digest.
    pub const HALTED: &str = "Halted";
    /// Aborted by request: moved tenants went back, the digest is rejected.
    pub const ABORTED: &str = "Aborted";
    /// Every tenant runs the revision.
    pub const COMPLETE: &str = "Complete";
    /// An emergency rollout: every tier at once.
    pub const EMERGENCY: &str = "Emergency";
}

/// Where a tenant stands relative to its own target.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum State {
    /// The host is on its way to the target (or not yet verified).
    Moving,
    /// The host runs the target, healthy and verified.
    Verified,
    /// The apply of the target failed (the host went back to what it ran).
    Failed(String),
}

/// One tenant of the (policy, channel) pair, as the coordinator sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TenantView {
    /// Tenant name.
    pub name: String,
    /// Tier.
    pub tier: Tier,
    /// Digest of `status.target`, if any.
    pub target: Option<String>,
    /// Where it stands relative to that target.
    pub state: State,
    /// Its serving slot runs the target and the latest report says it is healthy.
    pub healthy: bool,
}

/// An emergency request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Emergency {
    /// The digest to apply everywhere.
    pub digest: String,
    /// Only this channel (all channels of the policy when absent).
    pub channel: Option<String>,
    /// Without it the request is refused.
    pub force: bool,
}

/// The one-shot requests not yet handled.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Requests {
    /// End the soak now.
    pub promote: bool,
    /// Stop admitting new batches.
    pub pause: bool,
    /// Admit batches again.
    pub resume: bool,
    /// Roll moved tenants back and reject the digest.
    pub abort: bool,
    /// Give a halted rollout another go (failed tenants are admitted again).
    pub retry: bool,
    /// Apply a digest to every tier at once.
    pub emergency: Option<Emergency>,
}

/// The inputs of one step.
#[derive(Clone, Debug)]
pub struct Input<'a> {
    /// The policy's name (for messages).
    pub policy: &'a str,
    /// The policy.
    pub spec: &'a RolloutPolicySpec,
    /// The channel's name.
    pub channel: &'a str,
    /// The digest the channel has in force.
    pub channel_digest: Option<&'a str>,
    /// The channel is fed by promotion: its digests passed a canary gate upstream, so a rollout of
    /// it starts with production.
    pub promoted: bool,
    /// The rollout's record from the policy's status.
    pub record: Option<&'a RolloutStatus>,
    /// The tenants of this (policy, channel) pair that take part (not pinned, not suspended).
    pub tenants: &'a [TenantView],
    /// Requests not yet handled.
    pub requests: &'a Requests,
    /// Now.
    pub now: Timestamp,
}

/// Something worth a Kubernetes event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Note {
    /// A warning (otherwise normal).
    pub warning: bool,
    /// CamelCase reason.
    pub reason: &'static str,
    /// Message.
    pub message: String,
}

/// What one step decided.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Output {
    /// The rollout's new record (`None`: no rollout for this channel yet).
    pub record: Option<RolloutStatus>,
    /// New targets: (tenant, digest).
    pub admit: Vec<(String, String)>,
    /// Events.
    pub notes: Vec<Note>,
    /// The canary gate passed in this step (the evidence is in the record).
    pub gate_passed: bool,
    /// A digest to mark rejected in the channel.
    pub reject: Option<String>,
    /// An emergency request was refused (it lacked `force`).
    pub emergency_refused: Option<String>,
    /// An emergency request was carried out.
    pub emergency_applied: Option<String>,
    /// When to look again at the latest, even if nothing changes.
    pub requeue: Option<Duration>,
}

impl Output {
    fn note(&mut self, warning: bool, reason: &'static str, message: impl Into<String>) {
        self.notes.push(Note { warning, reason, message: message.into() });
    }
}

/// The most tenants of a tier of `total` that may move at once: a count or a percentage (rounded
/// up), at least one.
pub fn batch_size(max: &IntOrString, total: usize) -> usize {
    let n = match max {
        IntOrString::Int(n) => usize::try_from(*n).unwrap_or(1),
        IntOrString::String(s) => match s.strip_suffix('%') {
            Some(p) => {
                let p: usize = p.trim().parse().unwrap_or(100);
                (total * p.min(100)).div_ceil(100)
            }
            None => s.trim().parse().unwrap_or(1),
        },
    };
    n.max(1)
}

fn ts(s: Option<&str>) -> Option<Timestamp> {
    s.and_then(|s| s.parse::<Timestamp>().ok())
}

fn add(t: Timestamp, d: Duration) -> Timestamp {
    let span = jiff::SignedDuration::try_from(d).unwrap_or(jiff::SignedDuration::ZERO);
    t.checked_add(span).unwrap_or(t)
}

fn until(now: Timestamp, then: Timestamp) -> Duration {
    Duration::try_from(now.duration_until(then)).unwrap_or_default()
}

fn min_requeue(a: Option<Duration>, b: Duration) -> Option<Duration> {
    Some(a.map_or(b, |a| a.min(b)))
}

/// Decides one step of the rollout of `input.channel` under `input.policy`.
pub fn step(input: &Input<'_>) -> Output {
    let mut out = Output::default();
    let now = input.now;
    let now_s = now.to_string();
    let spec = input.spec;
    let mut rec = input.record.cloned();

    // An emergency: the named digest, every tier at once, only with `force`.
    if let Some(e) = &input.requests.emergency
        && e.channel.as_deref().is_none_or(|c| c == input.channel)
    {
        if !e.force {
            let msg = format!(
                "emergency rollout of {} to channel {} refused: it moves every tier at once and needs force",
                e.digest, input.channel
            );
            out.note(true, "EmergencyRefused", msg.clone());
            out.emergency_refused = Some(msg);
        } else {
            let (stable, rejected) =
                rec.as_ref().map(|r| (r.stable_digest.clone(), r.rejected.clone())).unwrap_or_default();
            let mut r = RolloutStatus {
                channel: input.channel.to_string(),
                digest: e.digest.clone(),
                channel_digest: input.channel_digest.map(str::to_string),
                source: Some("emergency".into()),
                phase: phase::EMERGENCY.into(),
                started_at: Some(now_s.clone()),
                stable_digest: stable,
                rejected,
                ..Default::default()
            };
            let mut moved = 0;
            for t in input.tenants {
                if t.target.as_deref() != Some(e.digest.as_str()) {
                    if let Some(prev) = &t.target {
                        r.previous.insert(t.name.clone(), prev.clone());
                    }
                    out.admit.push((t.name.clone(), e.digest.clone()));
                    moved += 1;
                }
            }
            let msg = format!(
                "emergency rollout (force) of {} to every tier of channel {}: {moved} of {} tenants move at once",
                e.digest,
                input.channel,
                input.tenants.len()
            );
            out.note(true, "EmergencyRollout", msg.clone());
            out.emergency_applied = Some(msg);
            rec = Some(r);
        }
    }

    // A new digest in the channel starts a new rollout; it supersedes the one under way.
    if let Some(cd) = input.channel_digest {
        let follows = rec.as_ref().is_some_and(|r| r.channel_digest.as_deref().unwrap_or(r.digest.as_str()) == cd);
        let rejected = rec.as_ref().is_some_and(|r| r.rejected.iter().any(|x| x == cd));
        if !follows && !rejected {
            let (stable, rejected, superseded) = match &rec {
                Some(r) => (
                    r.stable_digest.clone(),
                    r.rejected.clone(),
                    (r.phase != phase::COMPLETE && r.phase != phase::ABORTED)
                        .then(|| (r.digest.clone(), r.phase.clone())),
                ),
                None => (None, Vec::new(), None),
            };
            let mut msg = format!("rolling out {cd} of channel {} under policy {}", input.channel, input.policy);
            if let Some((d, p)) = superseded {
                msg.push_str(&format!("; supersedes the rollout of {d} ({p})"));
            }
            // Every tenant already runs it (a restarted coordinator, a channel set back): done.
            let nothing_to_move = input.tenants.iter().all(|t| t.target.as_deref() == Some(cd));
            if !nothing_to_move {
                out.note(false, "RolloutStarted", msg);
            }
            rec = Some(RolloutStatus {
                channel: input.channel.to_string(),
                digest: cd.to_string(),
                channel_digest: Some(cd.to_string()),
                source: Some("channel".into()),
                phase: match (nothing_to_move, input.promoted) {
                    (true, _) => phase::COMPLETE.into(),
                    (false, true) => phase::PRODUCTION.into(),
                    (false, false) => phase::CANARY.into(),
                },
                gate_passed_at: input.promoted.then(|| now_s.clone()),
                started_at: Some(now_s.clone()),
                stable_digest: if nothing_to_move { Some(cd.to_string()) } else { stable },
                rejected,
                ..Default::default()
            });
        }
    }
    let Some(mut r) = rec else {
        return out;
    };
    let d = r.digest.clone();
    let before = r.phase.clone();

    // Requests.
    let req = input.requests;
    if req.pause && !r.paused {
        r.paused = true;
        out.note(false, "RolloutPaused", format!("rollout of {d} paused: no new batch starts"));
    }
    if req.resume && r.paused {
        r.paused = false;
        out.note(false, "RolloutResumed", format!("rollout of {d} resumed"));
    }
    // An abort is for a rollout under way; a completed one (another channel of the same policy
    // gets the same request) keeps its digest and its tenants.
    if req.abort && r.phase != phase::ABORTED && r.phase != phase::COMPLETE {
        r.phase = phase::ABORTED.into();
        r.paused = false;
        if r.source.as_deref() != Some("emergency") && !r.rejected.contains(&d) {
            r.rejected.push(d.clone());
            out.reject = Some(d.clone());
        }
        out.note(true, "RolloutAborted", format!("rollout of {d} aborted: moved tenants go back; {d} is rejected"));
    }
    if req.retry && r.phase == phase::HALTED {
        let failed = std::mem::take(&mut r.failed_tenants);
        r.phase = if r.gate_passed_at.is_some() { phase::PRODUCTION.into() } else { phase::CANARY.into() };
        r.soak_started_at = None;
        r.soak_ends_at = None;
        for name in &failed {
            // Admitted again: the tenant controller tries once more.
            out.admit.push((name.clone(), d.clone()));
        }
        out.note(false, "RolloutRetried", format!("rollout of {d} retried; admitted again: {}", failed.join(", ")));
    }

    let on_d = |t: &TenantView| t.target.as_deref() == Some(d.as_str());
    let admit = |out: &mut Output, r: &mut RolloutStatus, t: &TenantView, digest: &str| {
        if let Some(prev) = &t.target
            && prev != digest
        {
            r.previous.insert(t.name.clone(), prev.clone());
        }
        out.admit.push((t.name.clone(), digest.to_string()));
    };

    if r.phase == phase::ABORTED {
        let mut left = Vec::new();
        for t in input.tenants.iter().filter(|t| on_d(t)) {
            match r.previous.get(&t.name).cloned() {
                Some(prev) => out.admit.push((t.name.clone(), prev)),
                None => left.push(t.name.clone()),
            }
        }
        r.message = Some(if left.is_empty() {
            format!("aborted: {d} is rejected for channel {}", input.channel)
        } else {
            format!("aborted: {d} is rejected; nothing to go back to for {}", left.join(", "))
        });
        finish(&mut r, input, &before, &mut out);
        return out;
    }

    // Failed applies: back to what the tenant ran before; each counts against the budget.
    for t in input.tenants.iter().filter(|t| on_d(t)) {
        if let State::Failed(why) = &t.state {
            fail(&mut r, &mut out, t, why, &d);
        }
    }

    // Tenants new to the channel run what completed last (or this digest, if nothing did yet),
    // per tier at most `maxConcurrency` placing at once (unless the policy places all at once).
    let first = match (&r.stable_digest, r.phase.as_str()) {
        (Some(s), p) if p != phase::COMPLETE && p != phase::EMERGENCY => s.clone(),
        _ => d.clone(),
    };
    for name in first_placements(spec, input.tenants) {
        out.admit.push((name, first.clone()));
    }
    // Tenants still waiting for their first image (after this step's placements).
    let unplaced = |tier: Tier| {
        let placed: std::collections::BTreeSet<&str> = out.admit.iter().map(|(n, _)| n.as_str()).collect();
        input
            .tenants
            .iter()
            .filter(|t| t.tier == tier && t.target.is_none() && !placed.contains(t.name.as_str()))
            .count()
    };
    let (unplaced_canaries, unplaced_prods) = (unplaced(Tier::Canary), unplaced(Tier::Production));

    if r.phase == phase::EMERGENCY {
        // Every tier, at once (again after a restart that lost the first writes).
        if out.emergency_applied.is_none() {
            for t in input.tenants.iter().filter(|t| t.target.is_some() && !on_d(t)) {
                admit(&mut out, &mut r, t, &d);
            }
        }
        let all = input.tenants.iter().all(|t| on_d(t) && t.state == State::Verified);
        if all {
            r.phase = phase::COMPLETE.into();
            r.stable_digest = Some(d.clone());
        }
        finish(&mut r, input, &before, &mut out);
        return out;
    }

    let budget = usize::try_from(spec.max_errors).unwrap_or(0);
    if r.phase != phase::HALTED && r.failed_tenants.len() > budget {
        halt(&mut r, &mut out, budget);
    }
    if r.phase == phase::HALTED {
        finish(&mut r, input, &before, &mut out);
        return out;
    }

    let failed_names = r.failed_tenants.clone();
    let failed = |t: &TenantView| failed_names.contains(&t.name);
    let canaries: Vec<&TenantView> =
        input.tenants.iter().filter(|t| t.tier == Tier::Canary && t.target.is_some() && !failed(t)).collect();
    let prods: Vec<&TenantView> =
        input.tenants.iter().filter(|t| t.tier == Tier::Production && t.target.is_some() && !failed(t)).collect();
    let min = usize::try_from(spec.canary.min_canaries).unwrap_or(0);

    if r.phase == phase::CANARY || r.phase == phase::WAITING_FOR_CANARIES {
        let moving = canaries.iter().filter(|t| on_d(t) && t.state == State::Moving).count();
        let waiting: Vec<&&TenantView> = canaries.iter().filter(|t| !on_d(t)).collect();
        let size = batch_size(&spec.max_concurrency, canaries.len());
        if !r.paused && moving < size {
            for t in waiting.iter().take(size - moving) {
                admit(&mut out, &mut r, t, &d);
            }
        }
        let verified: Vec<String> =
            canaries.iter().filter(|t| on_d(t) && t.state == State::Verified).map(|t| t.name.clone()).collect();
        let all_done = waiting.is_empty() && moving == 0 && unplaced_canaries == 0;
        // Canaries placed for the first time are canaries too (they get this digest, or the
        // stable one and then this one).
        let first_placed = input.tenants.iter().filter(|t| t.tier == Tier::Canary && t.target.is_none()).count();
        if canaries.len() + first_placed < min {
            if spec.canary.allow_skip {
                if all_done {
                    r.phase = phase::PRODUCTION.into();
                    out.note(
                        false,
                        "CanaryGateSkipped",
                        format!(
                            "{} canary tenants, the gate needs {min}; the policy allows skipping it",
                            canaries.len()
                        ),
                    );
                }
            } else if input.tenants.iter().all(|t| on_d(t) || failed(t) || (t.target.is_none() && first == d)) {
                // Nobody is held back (a new fleet, placed on this digest): nothing to gate.
                if all_done && unplaced_prods == 0 && prods.iter().all(|t| t.state != State::Moving) {
                    r.phase = phase::COMPLETE.into();
                    r.stable_digest = Some(d.clone());
                } else {
                    r.phase = phase::CANARY.into();
                    r.message = Some(format!("placing a new fleet on {d}"));
                }
            } else {
                r.phase = phase::WAITING_FOR_CANARIES.into();
                r.message = Some(format!(
                    "NoCanaries: {} canary tenants of channel {}, the gate needs {min}",
                    canaries.len(),
                    input.channel
                ));
            }
        } else if all_done && verified.len() >= min {
            r.phase = phase::SOAKING.into();
            r.soak_started_at = Some(now_s.clone());
            r.soak_ends_at = Some(add(now, spec.canary.soak.as_std()).to_string());
            r.gate_tenants = verified;
        } else {
            r.phase = phase::CANARY.into();
        }
    }

    if r.phase == phase::SOAKING {
        // Health is re-sampled: a canary that turns unhealthy fails the gate.
        for t in canaries.iter().filter(|t| on_d(t)) {
            // Unhealthy in the latest report; a tenant still moving (re-applied after drift) is
            // judged when its apply finishes.
            if !t.healthy && t.state != State::Moving {
                fail(&mut r, &mut out, t, "unhealthy during the soak", &d);
            }
        }
        if r.failed_tenants.len() > budget {
            halt(&mut r, &mut out, budget);
            finish(&mut r, input, &before, &mut out);
            return out;
        }
        let healthy: Vec<String> = canaries
            .iter()
            .filter(|t| on_d(t) && t.healthy && t.state == State::Verified && !r.failed_tenants.contains(&t.name))
            .map(|t| t.name.clone())
            .collect();
        let ends = ts(r.soak_ends_at.as_deref()).unwrap_or(now);
        if min > 0 && healthy.len() < min {
            // Too few healthy canaries left: the soak starts again once enough run it.
            r.phase = phase::CANARY.into();
            r.soak_started_at = None;
            r.soak_ends_at = None;
        } else if req.promote || now >= ends {
            r.phase = phase::PRODUCTION.into();
            r.gate_passed_at = Some(now_s.clone());
            r.gate_tenants = healthy.clone();
            out.gate_passed = true;
            let how = if req.promote && now < ends { "ended early by a promote request" } else { "soak complete" };
            out.note(
                false,
                "CanaryGatePassed",
                format!(
                    "{d} passed the canary gate on {} ({how})",
                    if healthy.is_empty() { "no canaries".into() } else { healthy.join(", ") }
                ),
            );
        } else {
            out.requeue = min_requeue(out.requeue, until(now, ends).min(spec.canary.sample_interval.as_std()));
        }
    }

    if r.phase == phase::PRODUCTION {
        let moving: Vec<&&TenantView> = prods.iter().filter(|t| on_d(t) && t.state == State::Moving).collect();
        let mut waiting: Vec<&&TenantView> = prods.iter().filter(|t| !on_d(t)).collect();
        waiting.sort_by(|a, b| a.name.cmp(&b.name));
        if moving.is_empty() {
            if waiting.is_empty() && unplaced_prods == 0 {
                r.phase = phase::COMPLETE.into();
                r.stable_digest = Some(d.clone());
            } else if !waiting.is_empty() {
                if r.last_batch_at.is_some() && r.batch_done_at.is_none() {
                    r.batch_done_at = Some(now_s.clone());
                }
                let ready_at = ts(r.batch_done_at.as_deref()).map(|t| add(t, spec.stagger.as_std())).unwrap_or(now);
                if r.paused {
                    // Nothing new while paused.
                } else if now >= ready_at {
                    let size = batch_size(&spec.max_concurrency, prods.len());
                    for t in waiting.iter().take(size) {
                        admit(&mut out, &mut r, t, &d);
                    }
                    r.last_batch_at = Some(now_s.clone());
                    r.batch_done_at = None;
                } else {
                    out.requeue = min_requeue(out.requeue, until(now, ready_at));
                }
            }
        }
    }

    if r.phase == phase::COMPLETE {
        // Tenants that joined later (a pin removed, a tier changed) follow at once.
        for t in input.tenants.iter().filter(|t| t.target.is_some() && !on_d(t) && !failed(t)) {
            admit(&mut out, &mut r, t, &d);
        }
    }

    finish(&mut r, input, &before, &mut out);
    out
}

/// The tenants without a target that get their first image now, by name: per tier, as many as
/// `maxConcurrency` (of the whole tier) leaves room for beside the tier's tenants still moving;
/// with `firstPlacement: AllAtOnce`, all.
pub fn first_placements(spec: &RolloutPolicySpec, tenants: &[TenantView]) -> Vec<String> {
    let mut out = Vec::new();
    for tier in [Tier::Canary, Tier::Production] {
        let of_tier: Vec<&TenantView> = tenants.iter().filter(|t| t.tier == tier).collect();
        let mut new: Vec<&str> = of_tier.iter().filter(|t| t.target.is_none()).map(|t| t.name.as_str()).collect();
        new.sort_unstable();
        let room = match spec.first_placement {
            FirstPlacement::AllAtOnce => new.len(),
            FirstPlacement::Batched => {
                let moving = of_tier.iter().filter(|t| t.target.is_some() && t.state == State::Moving).count();
                batch_size(&spec.max_concurrency, of_tier.len()).saturating_sub(moving)
            }
        };
        out.extend(new.into_iter().take(room).map(str::to_string));
    }
    out
}

fn fail(r: &mut RolloutStatus, out: &mut Output, t: &TenantView, why: &str, d: &str) {
    let prev = r.previous.get(&t.name).cloned();
    if !r.failed_tenants.contains(&t.name) {
        r.failed_tenants.push(t.name.clone());
        let back = match &prev {
            Some(p) => format!("rolled back to {p}"),
            None => "nothing to roll back to".into(),
        };
        out.note(true, "TenantFailed", format!("{} failed verification of {d} ({why}); {back}", t.name));
    }
    if let Some(p) = prev {
        out.admit.push((t.name.clone(), p));
    }
}

fn halt(r: &mut RolloutStatus, out: &mut Output, budget: usize) {
    r.phase = phase::HALTED.into();
    let msg = format!(
        "rollout of {} halted: {} failed ({}), more than maxErrors={budget}; nothing else moves",
        r.digest,
        r.failed_tenants.len(),
        r.failed_tenants.join(", ")
    );
    r.message = Some(msg.clone());
    out.note(true, "RolloutHalted", msg);
}

/// Counts, peak concurrency, message and the phase-change event.
fn finish(r: &mut RolloutStatus, input: &Input<'_>, before: &str, out: &mut Output) {
    let d = r.digest.clone();
    // One admission per tenant: the last decided wins.
    let mut seen = std::collections::BTreeSet::new();
    let mut admit: Vec<(String, String)> =
        out.admit.iter().rev().filter(|(n, _)| seen.insert(n.clone())).cloned().collect();
    admit.reverse();
    out.admit = admit;
    let admitted: std::collections::BTreeMap<&str, &str> =
        out.admit.iter().map(|(n, dg)| (n.as_str(), dg.as_str())).collect();
    let mut moving = 0;
    for (tier, progress) in [(Tier::Canary, &mut r.canary), (Tier::Production, &mut r.production)] {
        let mut p = TierProgress::default();
        for t in input.tenants.iter().filter(|t| t.tier == tier) {
            p.total += 1;
            let on_d = t.target.as_deref() == Some(d.as_str());
            if r.failed_tenants.contains(&t.name) {
                p.failed += 1;
            } else if on_d && t.state == State::Verified {
                p.moved += 1;
            }
            let target = admitted.get(t.name.as_str()).copied().or(t.target.as_deref());
            let goes = target == Some(d.as_str()) && !(on_d && t.state == State::Verified);
            if goes && !r.failed_tenants.contains(&t.name) {
                moving += 1;
            }
        }
        *progress = p;
    }
    r.peak_concurrency = r.peak_concurrency.max(moving);
    if r.phase != before {
        let warning = r.phase == phase::HALTED || r.phase == phase::WAITING_FOR_CANARIES;
        let reason = match r.phase.as_str() {
            phase::WAITING_FOR_CANARIES => "NoCanaries",
            phase::SOAKING => "SoakStarted",
            phase::PRODUCTION => "ProductionStarted",
            phase::COMPLETE => "RolloutComplete",
            phase::CANARY => "CanaryStarted",
            _ => "",
        };
        if !reason.is_empty() {
            let msg = match r.phase.as_str() {
                phase::WAITING_FOR_CANARIES => r.message.clone().unwrap_or_default(),
                phase::SOAKING => {
                    format!(
                        "{d} runs on {}; soak until {}",
                        r.gate_tenants.join(", "),
                        r.soak_ends_at.clone().unwrap_or_default()
                    )
                }
                other => format!("rollout of {d} of channel {}: {other}", input.channel),
            };
            out.note(warning, reason, msg);
        }
    }
    if r.phase != phase::HALTED && r.phase != phase::ABORTED && r.phase != phase::WAITING_FOR_CANARIES {
        r.message = Some(format!(
            "{}: canary {}/{} ({} failed), production {}/{} ({} failed){}",
            r.phase,
            r.canary.moved,
            r.canary.total,
            r.canary.failed,
            r.production.moved,
            r.production.total,
            r.production.failed,
            if r.paused { ", paused" } else { "" }
        ));
    }
    if r.phase != phase::COMPLETE && r.phase != phase::ABORTED && r.phase != phase::HALTED {
        out.requeue = min_requeue(out.requeue, Duration::from_secs(30));
    }
    out.record = Some(r.clone());
}

#[cfg(test)]
mod tests {
    use super::*;

    const D1: &str = "sha256:1111111111111111111111111111111111111111111111111111111111111111";
    const D2: &str = "sha256:2222222222222222222222222222222222222222222222222222222222222222";
    const D3: &str = "sha256:3333333333333333333333333333333333333333333333333333333333333333";

    fn at(secs: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + secs).unwrap()
    }

    fn policy(json: serde_json::Value) -> RolloutPolicySpec {
        serde_json::from_value(json).unwrap()
    }

    fn t(name: &str, tier: Tier, target: Option<&str>, state: State) -> TenantView {
        let healthy = state == State::Verified;
        TenantView { name: name.into(), tier, target: target.map(str::to_string), state, healthy }
    }

    /// A small fleet simulated on top of `step`: admitted tenants become verified one step later
    /// (or fail, when listed).
    struct Fleet {
        spec: RolloutPolicySpec,
        tenants: Vec<TenantView>,
        record: Option<RolloutStatus>,
        failing: Vec<String>,
        now: i64,
        log: Vec<Output>,
    }

    impl Fleet {
        fn new(spec: serde_json::Value, canaries: usize, prods: usize, on: &str) -> Fleet {
            let mut tenants = Vec::new();
            for i in 0..canaries {
                tenants.push(t(&format!("c{i}"), Tier::Canary, Some(on), State::Verified));
            }
            for i in 0..prods {
                tenants.push(t(&format!("p{i:02}"), Tier::Production, Some(on), State::Verified));
            }
            let mut f = Fleet { spec: policy(spec), tenants, record: None, failing: vec![], now: 0, log: vec![] };
            // The fleet already completed a rollout of `on`.
            f.step(Some(on), &Requests::default());
            f.settle();
            f.step(Some(on), &Requests::default());
            assert_eq!(f.phase(), phase::COMPLETE);
            f.log.clear();
            f
        }

        fn step(&mut self, channel: Option<&str>, req: &Requests) -> Output {
            let out = step(&Input {
                policy: "p",
                spec: &self.spec,
                channel: "staging",
                channel_digest: channel,
                promoted: false,
                record: self.record.as_ref(),
                tenants: &self.tenants,
                requests: req,
                now: at(self.now),
            });
            for (name, digest) in &out.admit {
                let x = self.tenants.iter_mut().find(|t| &t.name == name).unwrap();
                x.target = Some(digest.clone());
                x.state = State::Moving;
                x.healthy = false;
            }
            self.record = out.record.clone();
            self.log.push(out.clone());
            out
        }

        /// Every moving tenant finishes: verified, or failed (and the host went back).
        fn settle(&mut self) {
            for x in &mut self.tenants {
                if x.state == State::Moving {
                    if self.failing.contains(&x.name) && x.target.as_deref() != Some(D1) {
                        x.state = State::Failed("health-failed".into());
                    } else {
                        x.state = State::Verified;
                        x.healthy = true;
                    }
                }
            }
        }

        fn moving(&self) -> usize {
            self.tenants.iter().filter(|t| t.state == State::Moving).count()
        }

        fn phase(&self) -> String {
            self.record.as_ref().unwrap().phase.clone()
        }

        fn on(&self, digest: &str) -> Vec<String> {
            self.tenants.iter().filter(|t| t.target.as_deref() == Some(digest)).map(|t| t.name.clone()).collect()
        }

        fn reasons(&self) -> Vec<&'static str> {
            self.log.iter().flat_map(|o| o.notes.iter().map(|n| n.reason)).collect()
        }
    }

    #[test]
    fn batch_sizes() {
        assert_eq!(batch_size(&IntOrString::Int(3), 10), 3);
        assert_eq!(batch_size(&IntOrString::Int(0), 10), 1);
        assert_eq!(batch_size(&IntOrString::String("25%".into()), 10), 3);
        assert_eq!(batch_size(&IntOrString::String("100%".into()), 7), 7);
        assert_eq!(batch_size(&IntOrString::String("1%".into()), 0), 1);
        assert_eq!(batch_size(&IntOrString::String("4".into()), 10), 4);
    }

    #[test]
    fn canaries_first_then_soak_then_production_in_bounded_staggered_batches() {
        let spec = serde_json::json!({"maxConcurrency": 2, "stagger": "60s",
            "canary": {"minCanaries": 2, "soak": "600s", "sampleInterval": "30s"}});
        let mut f = Fleet::new(spec, 2, 5, D1);
        f.step(Some(D2), &Requests::default());
        assert_eq!(f.on(D2), vec!["c0", "c1"], "canaries first");
        assert_eq!(f.phase(), phase::CANARY);
        f.settle();
        f.now = 10;
        f.step(Some(D2), &Requests::default());
        assert_eq!(f.phase(), phase::SOAKING);
        assert_eq!(f.record.as_ref().unwrap().soak_ends_at.as_deref(), Some(at(610).to_string().as_str()));
        // The soak is not a bare timer: every step re-samples; production does not move meanwhile.
        for s in [40, 300, 609] {
            f.now = s;
            let out = f.step(Some(D2), &Requests::default());
            assert_eq!(f.phase(), phase::SOAKING);
            assert!(out.admit.is_empty());
            assert!(out.requeue.unwrap() <= Duration::from_secs(30));
        }
        f.now = 610;
        let out = f.step(Some(D2), &Requests::default());
        assert!(out.gate_passed);
        assert_eq!(f.phase(), phase::PRODUCTION);
        assert_eq!(f.record.as_ref().unwrap().gate_tenants, vec!["c0", "c1"]);
        assert_eq!(f.moving(), 2, "first batch at once, at most maxConcurrency");
        // The next batch waits for the stagger after the batch finished.
        f.settle();
        f.now = 620;
        let out = f.step(Some(D2), &Requests::default());
        assert!(out.admit.is_empty());
        assert!(out.requeue.is_some_and(|d| d <= Duration::from_secs(60)));
        f.now = 679;
        assert!(f.step(Some(D2), &Requests::default()).admit.is_empty());
        f.now = 680;
        f.step(Some(D2), &Requests::default());
        assert_eq!(f.moving(), 2);
        f.settle();
        f.now = 700;
        f.step(Some(D2), &Requests::default());
        f.now = 760;
        f.step(Some(D2), &Requests::default());
        assert_eq!(f.moving(), 1);
        f.settle();
        f.now = 761;
        f.step(Some(D2), &Requests::default());
        assert_eq!(f.phase(), phase::COMPLETE);
        let r = f.record.as_ref().unwrap();
        assert_eq!(r.peak_concurrency, 2);
        assert_eq!((r.production.moved, r.production.total), (5, 5));
        assert_eq!(r.stable_digest.as_deref(), Some(D2));
        assert!(f.reasons().contains(&"CanaryGatePassed") && f.reasons().contains(&"RolloutComplete"));
    }

    #[test]
    fn percentages_are_of_the_tier() {
        let spec = serde_json::json!({"maxConcurrency": "50%", "stagger": "0s",
            "canary": {"minCanaries": 1, "soak": "0s"}});
        let mut f = Fleet::new(spec, 1, 4, D1);
        f.step(Some(D2), &Requests::default());
        f.settle();
        f.step(Some(D2), &Requests::default()); // soaking
        f.step(Some(D2), &Requests::default()); // gate passes (soak 0s), first batch
        assert_eq!(f.moving(), 2);
    }

    #[test]
    fn too_few_canaries_wait_with_no_canaries_unless_the_policy_allows_skipping() {
        let mut f = Fleet::new(serde_json::json!({"canary": {"minCanaries": 2, "soak": "60s"}}), 1, 3, D1);
        let out = f.step(Some(D2), &Requests::default());
        assert_eq!(f.phase(), phase::WAITING_FOR_CANARIES);
        assert!(out.notes.iter().any(|n| n.reason == "NoCanaries" && n.warning));
        f.settle();
        f.now = 1000;
        f.step(Some(D2), &Requests::default());
        assert_eq!(f.phase(), phase::WAITING_FOR_CANARIES);
        assert!(f.tenants.iter().filter(|t| t.tier == Tier::Production).all(|t| t.target.as_deref() == Some(D1)));

        let mut f =
            Fleet::new(serde_json::json!({"canary": {"minCanaries": 1, "allowSkip": true}, "stagger": "0s"}), 0, 2, D1);
        f.step(Some(D2), &Requests::default());
        f.step(Some(D2), &Requests::default());
        assert_eq!(f.phase(), phase::PRODUCTION);
        assert_eq!(f.moving(), 1);
    }

    #[test]
    fn a_canary_unhealthy_mid_soak_fails_the_gate_and_production_never_moves() {
        let mut f = Fleet::new(serde_json::json!({"canary": {"minCanaries": 1, "soak": "600s"}}), 1, 3, D1);
        f.step(Some(D2), &Requests::default());
        f.settle();
        f.step(Some(D2), &Requests::default());
        assert_eq!(f.phase(), phase::SOAKING);
        f.tenants[0].healthy = false;
        f.now = 30;
        let out = f.step(Some(D2), &Requests::default());
        assert_eq!(f.phase(), phase::HALTED);
        assert_eq!(out.admit, vec![("c0".to_string(), D1.to_string())], "the canary goes back");
        assert_eq!(f.record.as_ref().unwrap().failed_tenants, vec!["c0"]);
        f.now = 10_000;
        assert!(f.step(Some(D2), &Requests::default()).admit.is_empty());
        assert_eq!(f.on(D2), Vec::<String>::new());
    }

    #[test]
    fn over_budget_halts_and_a_newer_digest_supersedes() {
        let spec = serde_json::json!({"maxConcurrency": 2, "stagger": "0s", "maxErrors": 1,
            "canary": {"minCanaries": 1, "soak": "0s"}});
        let mut f = Fleet::new(spec, 1, 6, D1);
        f.failing = vec!["p00".into(), "p01".into()];
        for _ in 0..4 {
            f.step(Some(D2), &Requests::default());
            f.settle();
        }
        f.step(Some(D2), &Requests::default());
        assert_eq!(f.phase(), phase::HALTED);
        let r = f.record.clone().unwrap();
        assert_eq!(r.failed_tenants, vec!["p00", "p01"]);
        assert!(f.reasons().contains(&"RolloutHalted"));
        // Failed ones went back; nobody else moved.
        assert_eq!(f.on(D2), vec!["c0"]);
        // A newer digest supersedes the halted rollout.
        f.failing.clear();
        let out = f.step(Some(D3), &Requests::default());
        assert_eq!(f.phase(), phase::CANARY);
        assert!(out.notes.iter().any(|n| n.message.contains("supersedes")));
    }

    #[test]
    fn retry_admits_the_failed_again_and_resumes() {
        let spec = serde_json::json!({"stagger": "0s", "canary": {"minCanaries": 1, "soak": "0s"}});
        let mut f = Fleet::new(spec, 1, 2, D1);
        f.failing = vec!["c0".into()];
        f.step(Some(D2), &Requests::default());
        f.settle();
        f.step(Some(D2), &Requests::default());
        assert_eq!(f.phase(), phase::HALTED);
        f.settle();
        f.failing.clear();
        let out = f.step(Some(D2), &Requests { retry: true, ..Default::default() });
        assert_eq!(out.admit, vec![("c0".to_string(), D2.to_string())]);
        for _ in 0..6 {
            f.settle();
            f.step(Some(D2), &Requests::default());
        }
        assert_eq!(f.phase(), phase::COMPLETE);
    }

    #[test]
    fn abort_sends_moved_tenants_back_and_rejects_the_digest() {
        let spec = serde_json::json!({"stagger": "0s", "canary": {"minCanaries": 1, "soak": "0s"}});
        let mut f = Fleet::new(spec, 1, 2, D1);
        f.step(Some(D2), &Requests::default());
        f.settle();
        f.step(Some(D2), &Requests::default());
        f.step(Some(D2), &Requests::default());
        assert_eq!(f.on(D2).len(), 2);
        let out = f.step(Some(D2), &Requests { abort: true, ..Default::default() });
        assert_eq!(out.reject.as_deref(), Some(D2));
        assert_eq!(f.phase(), phase::ABORTED);
        assert!(f.on(D2).is_empty());
        // The channel falls back to D1: that is a rollout of its own (everyone runs it already).
        f.settle();
        f.step(Some(D1), &Requests::default());
        f.step(Some(D1), &Requests::default());
        // D2 coming back from the registry is never admitted again.
        let out = f.step(Some(D2), &Requests::default());
        assert!(out.admit.is_empty());
        assert_eq!(f.record.as_ref().unwrap().digest, D1);
        assert!(f.record.as_ref().unwrap().rejected.contains(&D2.to_string()));
    }

    /// An abort is for the rollout under way: one that completed (in a channel of the same policy
    /// that is not the one being aborted) keeps its digest and its tenants.
    #[test]
    fn abort_leaves_a_completed_rollout_alone() {
        let spec = serde_json::json!({"stagger": "0s", "canary": {"minCanaries": 1, "soak": "0s"}});
        let mut f = Fleet::new(spec, 1, 2, D1);
        for _ in 0..6 {
            f.step(Some(D2), &Requests::default());
            f.settle();
        }
        assert_eq!(f.phase(), phase::COMPLETE);
        assert_eq!(f.on(D2).len(), 3);
        let out = f.step(Some(D2), &Requests { abort: true, ..Default::default() });
        assert_eq!(out.reject, None, "a completed digest is not rejected");
        assert!(out.admit.is_empty(), "nobody is sent back: {:?}", out.admit);
        assert_eq!(f.phase(), phase::COMPLETE);
        assert_eq!(f.on(D2).len(), 3);
    }

    #[test]
    fn pause_stops_new_batches_and_promote_ends_the_soak() {
        let spec = serde_json::json!({"stagger": "0s", "canary": {"minCanaries": 1, "soak": "3600s"}});
        let mut f = Fleet::new(spec, 1, 3, D1);
        f.step(Some(D2), &Requests::default());
        f.settle();
        f.step(Some(D2), &Requests::default());
        assert_eq!(f.phase(), phase::SOAKING);
        f.now = 60;
        let out = f.step(Some(D2), &Requests { promote: true, pause: true, ..Default::default() });
        assert!(out.gate_passed, "promote ends the soak");
        assert!(out.admit.is_empty(), "paused: no batch");
        f.now = 120;
        assert!(f.step(Some(D2), &Requests::default()).admit.is_empty());
        let out = f.step(Some(D2), &Requests { resume: true, ..Default::default() });
        assert_eq!(out.admit.len(), 1);
    }

    #[test]
    fn emergency_needs_force_and_moves_every_tier_at_once() {
        let mut f = Fleet::new(serde_json::json!({}), 2, 3, D1);
        let refused = Requests {
            emergency: Some(Emergency { digest: D3.into(), channel: None, force: false }),
            ..Default::default()
        };
        let out = f.step(Some(D1), &refused);
        assert!(out.emergency_refused.is_some() && out.admit.is_empty());
        let forced = Requests {
            emergency: Some(Emergency { digest: D3.into(), channel: None, force: true }),
            ..Default::default()
        };
        let out = f.step(Some(D1), &forced);
        assert_eq!(out.admit.len(), 5);
        assert_eq!(f.phase(), phase::EMERGENCY);
        // The same digest again is a no-op.
        let out = f.step(Some(D1), &forced);
        assert!(out.admit.is_empty());
        f.settle();
        f.step(Some(D1), &Requests::default());
        assert_eq!(f.phase(), phase::COMPLETE);
        // The channel's digest did not change: the emergency digest stays.
        assert!(f.step(Some(D1), &Requests::default()).admit.is_empty());
    }

    /// The event types the engine's notes stand for, step by step (what the notifier sends).
    fn event_types(f: &Fleet) -> Vec<crate::crd::RolloutEventType> {
        f.log.iter().flat_map(|o| o.notes.iter().filter_map(|n| crate::core::notify::event_type(n.reason))).collect()
    }

    #[test]
    fn every_rollout_event_users_are_told_about_comes_from_a_note_of_the_engine() {
        use crate::crd::RolloutEventType as E;
        let spec = serde_json::json!({"maxConcurrency": 5, "stagger": "0s",
            "canary": {"minCanaries": 1, "soak": "0s", "sampleInterval": "1s"}});
        let mut f = Fleet::new(spec.clone(), 1, 2, D1);
        for _ in 0..6 {
            f.step(Some(D2), &Requests::default());
            f.settle();
            f.now += 1;
        }
        assert_eq!(f.phase(), phase::COMPLETE);
        assert_eq!(event_types(&f), vec![E::Started, E::GatePassed, E::Complete]);

        let mut f = Fleet::new(spec.clone(), 1, 2, D1);
        f.failing = vec!["c0".into()];
        for _ in 0..3 {
            f.step(Some(D2), &Requests::default());
            f.settle();
            f.now += 1;
        }
        assert_eq!(f.phase(), phase::HALTED);
        f.step(Some(D2), &Requests { abort: true, ..Default::default() });
        assert_eq!(event_types(&f), vec![E::Started, E::Halted, E::Aborted]);

        let mut f = Fleet::new(spec, 1, 2, D1);
        let forced = Requests {
            emergency: Some(Emergency { digest: D3.into(), channel: None, force: true }),
            ..Default::default()
        };
        f.step(Some(D1), &forced);
        f.settle();
        f.step(Some(D1), &Requests::default());
        assert_eq!(event_types(&f), vec![E::Emergency, E::Complete]);
    }

    #[test]
    fn new_tenants_get_the_stable_digest_while_a_rollout_is_under_way() {
        let mut f = Fleet::new(serde_json::json!({"canary": {"soak": "3600s"}}), 1, 1, D1);
        f.step(Some(D2), &Requests::default());
        f.tenants.push(t("p99", Tier::Production, None, State::Moving));
        let out = f.step(Some(D2), &Requests::default());
        assert!(out.admit.contains(&("p99".to_string(), D1.to_string())));
    }

    #[test]
    fn a_promoted_channel_starts_with_production() {
        let spec = policy(serde_json::json!({"maxConcurrency": 1}));
        let tenants = vec![
            t("p0", Tier::Production, Some(D1), State::Verified),
            t("p1", Tier::Production, Some(D1), State::Verified),
        ];
        let out = step(&Input {
            policy: "p",
            spec: &spec,
            channel: "stable",
            channel_digest: Some(D2),
            promoted: true,
            record: None,
            tenants: &tenants,
            requests: &Requests::default(),
            now: at(0),
        });
        assert_eq!(out.record.unwrap().phase, phase::PRODUCTION);
        assert_eq!(out.admit, vec![("p0".to_string(), D2.to_string())]);
    }

    /// A fleet whose tenants have no target yet (just created).
    fn new_fleet(spec: serde_json::Value, canaries: usize, prods: usize) -> Fleet {
        let mut tenants = Vec::new();
        for i in 0..canaries {
            tenants.push(t(&format!("c{i}"), Tier::Canary, None, State::Moving));
        }
        for i in 0..prods {
            tenants.push(t(&format!("p{i:02}"), Tier::Production, None, State::Moving));
        }
        Fleet { spec: policy(spec), tenants, record: None, failing: vec![], now: 0, log: vec![] }
    }

    /// Steps a new fleet until every tenant runs `digest` verified; returns the most canaries and
    /// production tenants placing at once.
    fn place(f: &mut Fleet, digest: &str) -> (usize, usize) {
        let mut widest = (0, 0);
        for _ in 0..100 {
            f.step(Some(digest), &Requests::default());
            let placing = |tier: Tier| {
                f.tenants.iter().filter(|t| t.tier == tier && t.target.is_some() && t.state == State::Moving).count()
            };
            widest = (widest.0.max(placing(Tier::Canary)), widest.1.max(placing(Tier::Production)));
            let all = f.tenants.iter().all(|t| t.target.as_deref() == Some(digest) && t.state == State::Verified);
            if all && f.phase() == phase::COMPLETE {
                return widest;
            }
            f.settle();
            f.now += 1;
        }
        panic!("never placed: {:?} {:?}", f.record, f.tenants);
    }

    #[test]
    fn a_new_fleet_is_placed_at_most_max_concurrency_of_a_tier_at_a_time() {
        let mut f =
            new_fleet(serde_json::json!({"maxConcurrency": "25%", "canary": {"minCanaries": 1, "soak": "0s"}}), 2, 8);
        // 25% of 2 canaries rounds up to 1; of 8 production tenants, 2.
        assert_eq!(place(&mut f, D1), (1, 2));
        assert!(!f.reasons().contains(&"NoCanaries"), "{:?}", f.reasons());
        assert_eq!(f.record.as_ref().unwrap().stable_digest.as_deref(), Some(D1));

        // No canaries at all: nothing to gate, placed in batches all the same, no warning.
        let mut f = new_fleet(serde_json::json!({"maxConcurrency": 3}), 0, 7);
        assert_eq!(place(&mut f, D1), (0, 3));
        assert!(!f.reasons().contains(&"NoCanaries"), "{:?}", f.reasons());
    }

    #[test]
    fn all_at_once_places_a_new_fleet_in_one_step() {
        let mut f = new_fleet(
            serde_json::json!({"maxConcurrency": 1, "firstPlacement": "AllAtOnce", "canary": {"soak": "0s"}}),
            1,
            6,
        );
        let out = f.step(Some(D1), &Requests::default());
        assert_eq!(out.admit.len(), 7);
        assert_eq!(place(&mut f, D1), (1, 6));
    }

    #[test]
    fn a_tenant_created_during_a_rollout_waits_for_room_in_its_tier() {
        let spec =
            serde_json::json!({"maxConcurrency": 2, "stagger": "0s", "canary": {"minCanaries": 0, "soak": "0s"}});
        let mut f = Fleet::new(spec, 0, 4, D1);
        f.step(Some(D2), &Requests::default());
        f.step(Some(D2), &Requests::default());
        assert_eq!(f.moving(), 2, "a production batch is moving");
        f.tenants.push(t("p-new", Tier::Production, None, State::Moving));
        let out = f.step(Some(D2), &Requests::default());
        assert!(!out.admit.iter().any(|(n, _)| n == "p-new"), "placed beside a full batch: {:?}", out.admit);
        f.settle();
        let out = f.step(Some(D2), &Requests::default());
        // Room again: it gets what completed last, and then the rollout's digest like the rest.
        assert!(out.admit.contains(&("p-new".to_string(), D1.to_string())), "{:?}", out.admit);
        for _ in 0..10 {
            f.settle();
            f.step(Some(D2), &Requests::default());
        }
        assert_eq!(f.phase(), phase::COMPLETE);
        assert!(f.on(D2).contains(&"p-new".to_string()));
    }
}
