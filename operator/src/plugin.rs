//! `kubectl fleet`: what the plugin shows, as pure functions over the three kinds (rendered text
//! and tables, tested without an API server), and the writes it makes (the same requests as
//! `tenant-operator rollout`, pins, suspends).

use crate::core::conditions;
use crate::core::report::short_digest;
use crate::core::rollout::{batch_size, phase};
use crate::crd::{ImageChannel, RolloutPolicy, RolloutStatus, Tenant, TierProgress};
use jiff::Timestamp;
use kube::ResourceExt;
use std::collections::BTreeMap;
use std::fmt::Write as _;

/// Colours for a terminal; [`Style::plain`] writes none.
#[derive(Clone, Copy, Debug)]
pub struct Style {
    colour: bool,
}

impl Style {
    /// ANSI colours.
    pub fn colour() -> Style {
        Style { colour: true }
    }
    /// No escape codes at all.
    pub fn plain() -> Style {
        Style { colour: false }
    }
    fn paint(&self, code: &str, s: &str) -> String {
        if self.colour { format!("\u{1b}[{code}m{s}\u{1b}[0m") } else { s.to_string() }
    }
    fn good(&self, s: &str) -> String {
        self.paint("32", s)
    }
    fn bad(&self, s: &str) -> String {
        self.paint("31", s)
    }
    fn busy(&self, s: &str) -> String {
        self.paint("33", s)
    }
    fn dim(&self, s: &str) -> String {
        self.paint("2", s)
    }
}

/// The Ready condition as (status, reason, message).
fn ready(conds: &[k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition]) -> Option<(&str, &str, &str)> {
    conditions::find(conds, "Ready").map(|c| (c.status.as_str(), c.reason.as_str(), c.message.as_str()))
}

fn tenant_ready(t: &Tenant) -> Option<(&str, &str, &str)> {
    t.status.as_ref().and_then(|s| ready(&s.conditions))
}

/// `[#####.....]` for moved of total.
fn bar(p: &TierProgress, width: usize) -> String {
    let total = p.total.max(0) as usize;
    let moved = (p.moved.max(0) as usize).min(total);
    let filled = (moved * width).checked_div(total).unwrap_or(0);
    format!("[{}{}]", "#".repeat(filled), ".".repeat(width - filled))
}

fn seconds_until(at: Option<&str>, now: Timestamp) -> Option<i64> {
    let at: Timestamp = at?.parse().ok()?;
    Some(now.duration_until(at).as_secs().max(0))
}

/// A lower bound of the time until the rollout completes, from the policy alone: what is left of
/// the soak, then one `stagger` before each production batch still to start (apply times come on
/// top). `None` for a rollout that is not moving (complete, aborted, halted, paused).
pub fn eta_lower_bound(policy: &RolloutPolicy, r: &RolloutStatus, now: Timestamp) -> Option<i64> {
    if r.paused || [phase::COMPLETE, phase::ABORTED, phase::HALTED].contains(&r.phase.as_str()) {
        return None;
    }
    let soak = match r.phase.as_str() {
        phase::SOAKING => seconds_until(r.soak_ends_at.as_deref(), now).unwrap_or(0),
        phase::CANARY | phase::WAITING_FOR_CANARIES => policy.spec.canary.soak.as_std().as_secs() as i64,
        _ => 0,
    };
    let left = (r.production.total - r.production.moved - r.production.failed).max(0) as usize;
    let batch = batch_size(&policy.spec.max_concurrency, r.production.total.max(0) as usize).max(1);
    let batches = left.div_ceil(batch) as i64;
    Some(soak + batches * policy.spec.stagger.as_std().as_secs() as i64)
}

/// The tree of `kubectl fleet status`: policy → rollouts (channel@digest, phase, per-tier
/// progress, soak, last batch, ETA) → its tenants by state, with the reason of each one not Ready.
pub fn status_tree(policies: &[RolloutPolicy], tenants: &[Tenant], now: Timestamp, style: Style) -> String {
    let mut out = String::new();
    for p in policies {
        let name = p.name_any();
        let st = p.status.clone().unwrap_or_default();
        let head = match ready(&st.conditions) {
            Some(("True", reason, _)) => style.good(&format!("Ready ({reason})")),
            Some((_, reason, msg)) if reason == "RolloutHalted" || reason == "NoCanaries" => {
                style.bad(&format!("NotReady ({reason}: {msg})"))
            }
            Some((_, reason, _)) => style.busy(&format!("NotReady ({reason})")),
            None => style.dim("no status yet"),
        };
        let _ = writeln!(out, "rolloutpolicy/{name}  {head}");
        let mine: Vec<&Tenant> = tenants.iter().filter(|t| t.spec.rollout_policy.as_deref() == Some(&name)).collect();
        for r in &st.rollouts {
            let ph = match r.phase.as_str() {
                phase::COMPLETE => style.good(&r.phase),
                phase::HALTED | phase::ABORTED => style.bad(&r.phase),
                _ => style.busy(&r.phase),
            };
            let paused = if r.paused { format!(" {}", style.busy("(paused)")) } else { String::new() };
            let _ = writeln!(out, "├── {}@{}  {ph}{paused}", r.channel, short_digest(&r.digest));
            for (tier, p) in [("canary", &r.canary), ("production", &r.production)] {
                let failed = if p.failed > 0 { style.bad(&format!(" failed {}", p.failed)) } else { String::new() };
                let _ = writeln!(out, "│   {tier:<11} {} {}/{}{failed}", bar(p, 20), p.moved, p.total);
            }
            if r.phase == phase::SOAKING
                && let Some(left) = seconds_until(r.soak_ends_at.as_deref(), now)
            {
                let _ = writeln!(out, "│   soak        {left}s left");
            }
            if let Some(at) = &r.last_batch_at {
                let _ = writeln!(out, "│   last batch  {at} (peak {} at once)", r.peak_concurrency);
            }
            if !r.failed_tenants.is_empty() {
                let _ = writeln!(out, "│   failed      {}", style.bad(&r.failed_tenants.join(", ")));
            }
            if let Some(eta) = eta_lower_bound(p, r, now) {
                let _ =
                    writeln!(out, "│   eta         ≥ {eta}s (soak left + a stagger per batch to go; applies on top)");
            }
        }
        let mut by_state: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for t in &mine {
            let state = match tenant_ready(t) {
                Some(("True", reason, _)) => style.good(&format!("Ready ({reason})")),
                Some((_, reason, _)) => style.busy(&format!("NotReady ({reason})")),
                None => style.dim("no status yet"),
            };
            by_state.entry(state).or_default().push(t.name_any());
        }
        for (state, names) in &by_state {
            let _ = writeln!(out, "└── {state}: {}", names.join(", "));
        }
        for t in &mine {
            if let Some((status, reason, msg)) = tenant_ready(t)
                && status != "True"
            {
                let _ = writeln!(out, "    {}: {reason}: {msg}", t.name_any());
            }
        }
    }
    out
}

/// One row of `kubectl fleet get tenants`.
pub fn tenant_row(t: &Tenant, wide: bool) -> Vec<String> {
    let st = t.status.clone().unwrap_or_default();
    let short = |d: Option<&str>| d.map(short_digest).unwrap_or_else(|| "-".into());
    let desired = short(t.spec.pinned_digest.as_deref().or(st.target.as_ref().map(|x| x.digest.as_str())));
    let serving = st.observed.as_ref().and_then(crate::core::tenant::serving);
    let running = short(serving.and_then(|(_, s)| s.digest.as_deref()));
    let slot = serving.map(|(s, _)| s.as_str().to_string()).unwrap_or_else(|| "-".into());
    let drift = if desired != "-" && running != desired { "yes" } else { "" };
    let (ready, reason) =
        tenant_ready(t).map(|(s, r, _)| (s.to_string(), r.to_string())).unwrap_or(("-".into(), "-".into()));
    let mut row = vec![
        t.name_any(),
        format!("{:?}", t.spec.tier).to_lowercase(),
        t.spec.channel.clone(),
        desired,
        running,
        drift.into(),
        slot,
        ready,
        reason,
    ];
    if wide {
        row.push(st.instance_id.unwrap_or_else(|| "-".into()));
        row.push(t.spec.rollout_policy.clone().unwrap_or_else(|| "-".into()));
        row.push(if t.spec.pinned_digest.is_some() { "held".into() } else { String::new() });
        row.push(if t.spec.suspend { "suspended".into() } else { String::new() });
    }
    row
}

/// The header of [`tenant_row`].
pub fn tenant_header(wide: bool) -> Vec<String> {
    let mut h: Vec<String> =
        ["NAME", "TIER", "CHANNEL", "DESIRED", "RUNNING", "DRIFT", "SLOT", "READY", "REASON"].map(String::from).into();
    if wide {
        h.extend(["INSTANCE", "POLICY", "HOLD", "SUSPEND"].map(String::from));
    }
    h
}

/// Left-aligned columns, two spaces apart (as kubectl prints).
pub fn table(header: &[String], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            if let Some(w) = widths.get_mut(i) {
                *w = (*w).max(c.chars().count());
            }
        }
    }
    let mut out = String::new();
    for r in std::iter::once(header).chain(rows.iter().map(Vec::as_slice)) {
        let cells: Vec<String> = r.iter().enumerate().map(|(i, c)| format!("{c:<w$}", w = widths[i])).collect();
        let _ = writeln!(out, "{}", cells.join("  ").trim_end());
    }
    out
}

/// `kubectl fleet history tenant/NAME`: its applies, newest first (as the Tenant controller keeps them).
pub fn tenant_history(t: &Tenant) -> String {
    let st = t.status.clone().unwrap_or_default();
    let rows: Vec<Vec<String>> = st
        .history
        .iter()
        .map(|h| {
            vec![
                h.started_at.clone(),
                h.action.clone(),
                h.digest.as_deref().map(short_digest).unwrap_or_else(|| "-".into()),
                h.revision.chars().take(12).collect(),
                h.result.clone(),
                h.message.clone().unwrap_or_default(),
            ]
        })
        .collect();
    table(&["STARTED", "ACTION", "DIGEST", "REVISION", "RESULT", "MESSAGE"].map(String::from), &rows)
}

/// `kubectl fleet history channel/NAME`: its digests, newest first, numbered as `undo --to` takes
/// them (1 is the current one).
pub fn channel_history(c: &ImageChannel) -> String {
    let rows: Vec<Vec<String>> = channel_entries(c)
        .into_iter()
        .enumerate()
        .map(|(i, h)| {
            let evidence = h
                .evidence
                .as_ref()
                .map(|e| format!("passed {} in {} ({}, {})", e.passed_at, e.channel, e.how, e.tenants.join(" ")))
                .unwrap_or_default();
            let rejected = if h.rejected {
                format!("rejected: {}", h.rejected_reason.clone().unwrap_or_default())
            } else {
                String::new()
            };
            vec![
                (i + 1).to_string(),
                h.digest.clone(),
                h.first_seen.clone(),
                serde_json::to_value(h.source).ok().and_then(|v| v.as_str().map(str::to_string)).unwrap_or_default(),
                rejected,
                evidence,
            ]
        })
        .collect();
    table(&["#", "DIGEST", "FIRST SEEN", "SOURCE", "REJECTED", "EVIDENCE"].map(String::from), &rows)
}

/// The channel's history, newest first (as the channel controller keeps it).
pub fn channel_entries(c: &ImageChannel) -> Vec<crate::crd::ChannelHistoryEntry> {
    c.status.clone().unwrap_or_default().history
}

/// What `undo CHANNEL --to N` would do: the digest it pins and the tenants that would move.
#[derive(Debug, PartialEq, Eq)]
pub struct UndoPlan {
    /// The digest the channel gets pinned to.
    pub digest: String,
    /// Tenants following the channel (not held) whose target is another digest.
    pub moves: Vec<String>,
}

/// [`UndoPlan`] for entry `to` (1-based, newest first, as in [`channel_history`]).
pub fn undo_plan(c: &ImageChannel, tenants: &[Tenant], to: usize) -> Result<UndoPlan, String> {
    let entries = channel_entries(c);
    let entry = entries
        .get(to.checked_sub(1).ok_or("--to counts from 1")?)
        .ok_or_else(|| format!("channel {} has {} history entries, not {to}", c.name_any(), entries.len()))?;
    if entry.rejected {
        return Err(format!(
            "{} was rejected for this channel; pin it with spec.pinnedDigest if you mean it",
            entry.digest
        ));
    }
    let name = c.name_any();
    let moves = tenants
        .iter()
        .filter(|t| t.spec.channel == name && t.spec.pinned_digest.is_none())
        .filter(|t| {
            t.status.as_ref().and_then(|s| s.target.as_ref()).map(|x| x.digest.as_str()) != Some(entry.digest.as_str())
        })
        .map(ResourceExt::name_any)
        .collect();
    Ok(UndoPlan { digest: entry.digest.clone(), moves })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn policy(status: serde_json::Value) -> RolloutPolicy {
        serde_json::from_value(json!({
            "apiVersion": "fleet.molecule.ai/v1alpha1", "kind": "RolloutPolicy",
            "metadata": {"name": "default", "namespace": "fleet"},
            "spec": {"maxConcurrency": "25%", "stagger": "10s", "canary": {"soak": "60s"}},
            "status": status
        }))
        .unwrap_or_else(|e| panic!("policy: {e}"))
    }

    fn tenant(name: &str, ready: &str, reason: &str, target: &str) -> Tenant {
        serde_json::from_value(json!({
            "apiVersion": "fleet.molecule.ai/v1alpha1", "kind": "Tenant",
            "metadata": {"name": name, "namespace": "fleet"},
            "spec": {"slug": name, "instance": {"id": "i-0123456789abcdef0"}, "channel": "stable", "rolloutPolicy": "default"},
            "status": {"conditions": [{"type": "Ready", "status": ready, "reason": reason, "message": format!("{reason} says so"),
                                       "lastTransitionTime": "2026-12-03T10:00:00Z"}],
                       "target": {"digest": target, "image": "r/x@".to_string() + target}}
        }))
        .unwrap_or_else(|e| panic!("tenant: {e}"))
    }

    const NOW: &str = "2026-12-03T10:00:00Z";
    const D1: &str = "sha256:1111111111111111111111111111111111111111111111111111111111111111";
    const D2: &str = "sha256:2222222222222222222222222222222222222222222222222222222222222222";

    #[test]
    fn the_tree_shows_progress_soak_eta_and_why_a_tenant_is_not_ready() {
        let p = policy(json!({"rollouts": [{"channel": "stable", "digest": D2, "phase": "Soaking",
            "canary": {"moved": 1, "total": 1, "failed": 0}, "production": {"moved": 0, "total": 8, "failed": 0},
            "soakEndsAt": "2026-12-03T10:00:30Z"}]}));
        let tenants = [tenant("a", "True", "Converged", D2), tenant("b", "False", "Progressing", D1)];
        let now: Timestamp = NOW.parse().unwrap_or_else(|e| panic!("{e}"));
        let out = status_tree(std::slice::from_ref(&p), &tenants, now, Style::plain());
        assert!(out.contains("stable@222222222222  Soaking"), "{out}");
        assert!(out.contains("canary      [####################] 1/1"), "{out}");
        assert!(out.contains("production  [....................] 0/8"), "{out}");
        assert!(out.contains("soak        30s left"), "{out}");
        // 30 s of soak, then 8 tenants at 25% = 2 a batch = 4 batches, 10 s stagger each.
        assert!(out.contains("eta         ≥ 70s"), "{out}");
        assert!(out.contains("b: Progressing: Progressing says so"), "{out}");
        assert!(!out.contains('\u{1b}'), "plain style writes no escape codes");
        assert!(status_tree(&[p], &tenants, now, Style::colour()).contains('\u{1b}'));
    }

    #[test]
    fn no_eta_for_a_rollout_that_is_not_moving() {
        let now: Timestamp = NOW.parse().unwrap_or_else(|e| panic!("{e}"));
        for (phase, paused) in [("Complete", false), ("Halted", false), ("Production", true)] {
            let p = policy(json!({"rollouts": [{"channel": "stable", "digest": D2, "phase": phase, "paused": paused,
                "canary": {"moved": 0, "total": 0, "failed": 0}, "production": {"moved": 1, "total": 4, "failed": 0}}]}));
            let r = &p.status.as_ref().map(|s| s.rollouts.clone()).unwrap_or_default()[0];
            assert_eq!(eta_lower_bound(&p, r, now), None, "{phase} paused={paused}");
        }
    }

    #[test]
    fn undo_pins_an_earlier_digest_and_names_who_moves() {
        let c: ImageChannel = serde_json::from_value(json!({
            "apiVersion": "fleet.molecule.ai/v1alpha1", "kind": "ImageChannel",
            "metadata": {"name": "stable", "namespace": "fleet"},
            "spec": {"image": "r/x", "promoteFrom": "staging"},
            "status": {"digest": D2, "history": [
                {"digest": D2, "firstSeen": "2026-12-02T00:00:00Z", "source": "promotion"},
                {"digest": D1, "firstSeen": "2026-12-01T00:00:00Z", "source": "promotion"}]}
        }))
        .unwrap_or_else(|e| panic!("{e}"));
        let tenants = [tenant("a", "True", "Converged", D2), tenant("b", "True", "Converged", D1)];
        let plan = undo_plan(&c, &tenants, 2).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(plan, UndoPlan { digest: D1.into(), moves: vec!["a".into()] });
        assert!(undo_plan(&c, &tenants, 3).is_err());
        assert!(undo_plan(&c, &tenants, 0).is_err());
        assert!(channel_history(&c).lines().nth(1).is_some_and(|l| l.starts_with("1  ") && l.contains(D2)));
    }
}

/// A write a user makes: what `kubectl fleet`'s commands and its dashboard's buttons do, by one
/// code path ([`perform`]), always with the user's own client.
#[derive(Clone, Debug, PartialEq, Eq, serde::Deserialize, serde::Serialize, clap::Subcommand)]
#[serde(tag = "verb", rename_all = "camelCase", rename_all_fields = "camelCase", deny_unknown_fields)]
pub enum Action {
    /// End a policy's canary soak now.
    Promote { policy: String },
    /// No new batch starts.
    Pause { policy: String },
    /// Batches start again.
    Resume { policy: String },
    /// Moved tenants go back; the digest is rejected.
    Abort { policy: String },
    /// A halted rollout admits its failed tenants again.
    Retry { policy: String },
    /// Every tier at once (refused without --force).
    Emergency {
        policy: String,
        #[arg(long)]
        digest: String,
        #[serde(default)]
        #[arg(long)]
        channel: Option<String>,
        #[serde(default)]
        #[arg(long)]
        force: bool,
    },
    /// Pin a tenant (spec.pinnedDigest) to --digest or to what its host serves now.
    Hold {
        tenant: String,
        #[serde(default)]
        #[arg(long)]
        digest: Option<String>,
    },
    /// Remove a tenant's pin: it follows its channel again.
    Release { tenant: String },
    /// spec.suspend: the operator leaves the host alone.
    Suspend { tenant: String },
    /// spec.suspend off.
    Unsuspend { tenant: String },
}

impl Action {
    /// Abort and emergency undo or skip the gate: a user confirms them first.
    pub fn needs_confirmation(&self) -> bool {
        matches!(self, Action::Abort { .. } | Action::Emergency { .. })
    }
}

/// Carries out `action` in namespace `ns` as `client`'s user. Returns what to tell the user.
pub async fn perform(client: &kube::Client, ns: &str, action: &Action) -> Result<String, crate::controller::Error> {
    use crate::controller::coordinator;
    use kube::api::{Api, Patch, PatchParams};
    let tenants: Api<Tenant> = Api::namespaced(client.clone(), ns);
    let pin = async |tenant: &str, spec: serde_json::Value| {
        tenants.patch(tenant, &PatchParams::default(), &Patch::Merge(serde_json::json!({ "spec": spec }))).await
    };
    let request = async |policy: &str, verb: &str, emergency: Option<&crate::core::rollout::Emergency>| {
        let token = coordinator::request(client.clone(), ns, policy, verb, emergency).await?;
        Ok::<_, crate::controller::Error>(format!(
            "requested {verb} on rolloutpolicy/{policy} (token {token}); acknowledged in status.handledRequests"
        ))
    };
    match action {
        Action::Promote { policy } => request(policy, "promote", None).await,
        Action::Pause { policy } => request(policy, "pause", None).await,
        Action::Resume { policy } => request(policy, "resume", None).await,
        Action::Abort { policy } => request(policy, "abort", None).await,
        Action::Retry { policy } => request(policy, "retry", None).await,
        Action::Emergency { policy, digest, channel, force } => {
            let e = crate::core::rollout::Emergency { digest: digest.clone(), channel: channel.clone(), force: *force };
            request(policy, "emergency", Some(&e)).await
        }
        Action::Hold { tenant, digest } => {
            let digest = match digest {
                Some(d) => d.clone(),
                None => tenants
                    .get(tenant)
                    .await?
                    .status
                    .as_ref()
                    .and_then(|s| s.observed.as_ref())
                    .and_then(crate::core::tenant::serving)
                    .and_then(|(_, s)| s.digest.clone())
                    .ok_or_else(|| {
                        crate::controller::Error::InvalidRequest(format!(
                            "tenant {tenant}'s host has reported no digest yet: give a digest"
                        ))
                    })?,
            };
            pin(tenant, serde_json::json!({"pinnedDigest": digest})).await?;
            Ok(format!("tenant/{tenant} held at {digest}"))
        }
        Action::Release { tenant } => {
            pin(tenant, serde_json::json!({"pinnedDigest": null})).await?;
            Ok(format!("tenant/{tenant} released: it follows its channel"))
        }
        Action::Suspend { tenant } => {
            pin(tenant, serde_json::json!({"suspend": true})).await?;
            Ok(format!("tenant/{tenant} suspended"))
        }
        Action::Unsuspend { tenant } => {
            pin(tenant, serde_json::json!({"suspend": false})).await?;
            Ok(format!("tenant/{tenant} unsuspended"))
        }
    }
}
