//! What the dashboard shows, as pure functions over the three kinds and the events: the fleet's
//! counts, a page of tenants by filter, one rollout (gate, batches, failures, ETA), one tenant,
//! one channel. Everything the page receives is built here from named fields, so nothing that is
//! not listed (env values, annotations, Secret data) can reach it.

use crate::controller::coordinator;
use crate::core::conditions;
use crate::core::report::short_digest;
use crate::core::rollout::State;
use crate::core::rollout::phase;
use crate::crd::{ImageChannel, RolloutPolicy, RolloutStatus, Tenant, Tier, TierProgress};
use jiff::Timestamp;
use k8s_openapi::api::core::v1::Event;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::ResourceExt;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, VecDeque};

/// A tenant's health, as the fleet view groups it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Health {
    /// `Ready=True`.
    Ready,
    /// Moving towards its target, or waiting.
    Progressing,
    /// Its last apply of the target failed, or it is stalled.
    Failed,
    /// No status yet.
    Unknown,
}

/// The health of one tenant.
pub fn health(t: &Tenant) -> Health {
    let Some(st) = &t.status else { return Health::Unknown };
    let stalled = conditions::find(&st.conditions, "Stalled").is_some_and(|c| c.status == "True");
    if stalled || matches!(coordinator::view(t).state, State::Failed(_)) {
        return Health::Failed;
    }
    match conditions::find(&st.conditions, "Ready") {
        Some(c) if c.status == "True" => Health::Ready,
        Some(_) => Health::Progressing,
        None => Health::Unknown,
    }
}

/// A condition as the page shows it.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Cond {
    pub type_: String,
    pub status: String,
    pub reason: String,
    pub message: String,
    pub since: String,
}

fn cond(c: &Condition) -> Cond {
    Cond {
        type_: c.type_.clone(),
        status: c.status.clone(),
        reason: c.reason.clone(),
        message: c.message.clone(),
        since: c.last_transition_time.0.to_string(),
    }
}

fn ready_of(cs: &[Condition]) -> Option<Cond> {
    conditions::find(cs, "Ready").map(cond)
}

/// One line of the tenant list.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TenantRow {
    pub name: String,
    pub slug: String,
    pub tier: Tier,
    pub channel: String,
    pub policy: Option<String>,
    pub desired: Option<String>,
    pub running: Option<String>,
    pub slot: Option<String>,
    pub health: Health,
    pub reason: Option<String>,
    pub message: Option<String>,
    pub pinned: Option<String>,
    pub suspended: bool,
}

/// The digest the host serves now (the serving slot's), if it reported one.
fn running(t: &Tenant) -> Option<String> {
    let obs = t.status.as_ref()?.observed.as_ref()?;
    crate::core::tenant::serving(obs).and_then(|(_, s)| s.digest.clone())
}

/// One tenant as a row.
pub fn row(t: &Tenant) -> TenantRow {
    let st = t.status.as_ref();
    let ready = st.and_then(|s| conditions::find(&s.conditions, "Ready"));
    TenantRow {
        name: t.name_any(),
        slug: t.spec.slug.clone(),
        tier: t.spec.tier,
        channel: t.spec.channel.clone(),
        policy: t.spec.rollout_policy.clone(),
        desired: st.and_then(|s| s.target.as_ref()).map(|x| x.digest.clone()),
        running: running(t),
        slot: st.and_then(|s| s.observed.as_ref()).and_then(|o| o.active_slot).map(|s| s.as_str().to_string()),
        health: health(t),
        reason: ready.map(|c| c.reason.clone()),
        message: ready.filter(|c| c.status != "True").map(|c| c.message.clone()),
        pinned: t.spec.pinned_digest.clone(),
        suspended: t.spec.suspend,
    }
}

/// What the tenant list is filtered by (all optional; all given must hold).
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Filter {
    /// A part of the name or the slug, any case.
    #[serde(default)]
    pub q: Option<String>,
    #[serde(default)]
    pub channel: Option<String>,
    /// A digest, or its first characters (`sha256:` optional): the tenants whose host runs it.
    #[serde(default)]
    pub digest: Option<String>,
    #[serde(default)]
    pub tier: Option<Tier>,
    #[serde(default)]
    pub health: Option<Health>,
    #[serde(default)]
    pub offset: Option<usize>,
    #[serde(default)]
    pub limit: Option<usize>,
}

/// The longest page the server sends.
pub const MAX_PAGE: usize = 500;
/// A page's length when the page asks for none.
pub const DEFAULT_PAGE: usize = 100;

fn digest_matches(running: Option<&str>, want: &str) -> bool {
    let want = want.trim().to_ascii_lowercase();
    let want = want.strip_prefix("sha256:").unwrap_or(&want);
    running.and_then(|r| r.strip_prefix("sha256:")).is_some_and(|r| !want.is_empty() && r.starts_with(want))
}

impl Filter {
    fn keeps(&self, r: &TenantRow) -> bool {
        let q = self.q.as_deref().map(str::trim).filter(|q| !q.is_empty()).map(str::to_lowercase);
        q.is_none_or(|q| r.name.to_lowercase().contains(&q) || r.slug.to_lowercase().contains(&q))
            && self.channel.as_deref().filter(|c| !c.is_empty()).is_none_or(|c| r.channel == c)
            && self
                .digest
                .as_deref()
                .filter(|d| !d.trim().is_empty())
                .is_none_or(|d| digest_matches(r.running.as_deref(), d))
            && self.tier.is_none_or(|t| r.tier == t)
            && self.health.is_none_or(|h| r.health == h)
    }
}

/// A page of tenant rows.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Page {
    /// How many tenants match the filter.
    pub total: usize,
    pub offset: usize,
    pub limit: usize,
    pub items: Vec<TenantRow>,
}

/// The tenants that match, by name, `limit` (at most [`MAX_PAGE`]) from `offset`.
pub fn tenants_page<'a>(tenants: impl IntoIterator<Item = &'a Tenant>, f: &Filter) -> Page {
    let mut rows: Vec<TenantRow> = tenants.into_iter().map(row).filter(|r| f.keeps(r)).collect();
    rows.sort_by(|a, b| a.name.cmp(&b.name));
    let limit = f.limit.unwrap_or(DEFAULT_PAGE).clamp(1, MAX_PAGE);
    let offset = f.offset.unwrap_or(0).min(rows.len());
    let total = rows.len();
    let items = rows.into_iter().skip(offset).take(limit).collect();
    Page { total, offset, limit, items }
}

/// How many tenants of a channel run which digest.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DigestCount {
    pub channel: String,
    pub digest: Option<String>,
    pub short: Option<String>,
    /// Whether it is the channel's current digest.
    pub current: bool,
    pub tenants: usize,
}

/// One rollout, in brief.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RolloutBrief {
    pub index: usize,
    pub channel: String,
    pub digest: String,
    pub short: String,
    pub phase: String,
    pub paused: bool,
    pub canary: TierProgress,
    pub production: TierProgress,
    /// Seconds until it completes at the earliest (`None` when not moving).
    pub eta_seconds: Option<i64>,
}

/// One policy, in brief.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PolicyBrief {
    pub name: String,
    pub ready: Option<Cond>,
    pub tenants: usize,
    pub rollouts: Vec<RolloutBrief>,
}

/// One channel, in brief.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ChannelBrief {
    pub name: String,
    pub image: String,
    pub digest: Option<String>,
    pub short: Option<String>,
    pub ready: Option<Cond>,
    pub tenants: usize,
}

/// The fleet at a glance: what the page shows on every view.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Summary {
    pub namespace: String,
    pub read_only: bool,
    pub total: usize,
    pub by_health: BTreeMap<Health, usize>,
    pub by_tier: BTreeMap<Tier, usize>,
    pub by_digest: Vec<DigestCount>,
    pub policies: Vec<PolicyBrief>,
    pub channels: Vec<ChannelBrief>,
    /// A watch that is failing (`kind: message`), e.g. one the user's RBAC refuses.
    pub problems: Vec<String>,
}

fn brief(p: &RolloutPolicy, i: usize, r: &RolloutStatus, now: Timestamp) -> RolloutBrief {
    RolloutBrief {
        index: i,
        channel: r.channel.clone(),
        digest: r.digest.clone(),
        short: short_digest(&r.digest).to_string(),
        phase: r.phase.clone(),
        paused: r.paused,
        canary: r.canary.clone(),
        production: r.production.clone(),
        eta_seconds: crate::plugin::eta_lower_bound(p, r, now),
    }
}

/// Everything in a namespace, counted.
pub fn summary(
    namespace: &str,
    read_only: bool,
    tenants: &[&Tenant],
    policies: &[&RolloutPolicy],
    channels: &[&ImageChannel],
    problems: Vec<String>,
    now: Timestamp,
) -> Summary {
    let mut by_health = BTreeMap::new();
    let mut by_tier = BTreeMap::new();
    let mut by_digest: BTreeMap<(String, Option<String>), usize> = BTreeMap::new();
    let mut per_policy: BTreeMap<&str, usize> = BTreeMap::new();
    let mut per_channel: BTreeMap<&str, usize> = BTreeMap::new();
    for h in [Health::Ready, Health::Progressing, Health::Failed, Health::Unknown] {
        by_health.insert(h, 0);
    }
    for tier in [Tier::Canary, Tier::Production] {
        by_tier.insert(tier, 0);
    }
    for t in tenants {
        *by_health.entry(health(t)).or_default() += 1;
        *by_tier.entry(t.spec.tier).or_default() += 1;
        *by_digest.entry((t.spec.channel.clone(), running(t))).or_default() += 1;
        if let Some(p) = t.spec.rollout_policy.as_deref() {
            *per_policy.entry(p).or_default() += 1;
        }
        *per_channel.entry(t.spec.channel.as_str()).or_default() += 1;
    }
    let current: BTreeMap<String, String> =
        channels.iter().filter_map(|c| Some((c.name_any(), c.status.as_ref()?.digest.clone()?))).collect();
    let mut policies: Vec<PolicyBrief> = policies
        .iter()
        .map(|p| {
            let st = p.status.clone().unwrap_or_default();
            let name = p.name_any();
            PolicyBrief {
                tenants: per_policy.get(name.as_str()).copied().unwrap_or(0),
                name,
                ready: ready_of(&st.conditions),
                rollouts: st.rollouts.iter().enumerate().map(|(i, r)| brief(p, i, r, now)).collect(),
            }
        })
        .collect();
    policies.sort_by(|a, b| a.name.cmp(&b.name));
    let mut channels: Vec<ChannelBrief> = channels
        .iter()
        .map(|c| {
            let st = c.status.clone().unwrap_or_default();
            let name = c.name_any();
            ChannelBrief {
                tenants: per_channel.get(name.as_str()).copied().unwrap_or(0),
                name,
                image: c.spec.image.clone(),
                short: st.digest.as_deref().map(|d| short_digest(d).to_string()),
                digest: st.digest,
                ready: ready_of(&st.conditions),
            }
        })
        .collect();
    channels.sort_by(|a, b| a.name.cmp(&b.name));
    Summary {
        namespace: namespace.to_string(),
        read_only,
        total: tenants.len(),
        by_health,
        by_tier,
        by_digest: by_digest
            .into_iter()
            .map(|((channel, digest), n)| DigestCount {
                current: digest.is_some() && current.get(&channel) == digest.as_ref(),
                short: digest.as_deref().map(|d| short_digest(d).to_string()),
                channel,
                digest,
                tenants: n,
            })
            .collect(),
        policies,
        channels,
        problems,
    }
}

/// One health report of a canary's host, as the dashboard saw it arrive.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Sample {
    /// When the host reported it (`status.observed.observedAt`).
    pub at: String,
    pub digest: Option<String>,
    /// The serving slot's health (`healthy`, `unhealthy`, ...), or `none`.
    pub health: String,
}

/// Per tenant, the health reports seen since the dashboard started (newest last, bounded).
#[derive(Debug, Default)]
pub struct Samples {
    by_tenant: BTreeMap<String, VecDeque<Sample>>,
}

/// The reports kept per tenant.
pub const SAMPLES_KEPT: usize = 120;

impl Samples {
    /// Records the tenant's latest report if it is new (a canary's only: the gate's evidence).
    pub fn record(&mut self, t: &Tenant) {
        if t.spec.tier != Tier::Canary {
            return;
        }
        let Some(obs) = t.status.as_ref().and_then(|s| s.observed.as_ref()) else { return };
        let Some(at) = obs.observed_at.clone() else { return };
        let serving = crate::core::tenant::serving(obs);
        let sample = Sample {
            at,
            digest: serving.and_then(|(_, s)| s.digest.clone()),
            health: serving.and_then(|(_, s)| s.health.clone()).unwrap_or_else(|| "none".into()),
        };
        let q = self.by_tenant.entry(t.name_any()).or_default();
        if q.back().is_some_and(|last| last.at == sample.at) {
            return;
        }
        q.push_back(sample);
        while q.len() > SAMPLES_KEPT {
            q.pop_front();
        }
    }

    /// The reports of `tenant` at or after `since` of `digest`.
    pub fn of(&self, tenant: &str, digest: &str, since: Option<Timestamp>) -> Vec<Sample> {
        self.by_tenant
            .get(tenant)
            .into_iter()
            .flatten()
            .filter(|s| s.digest.as_deref() == Some(digest))
            .filter(|s| since.is_none_or(|t| s.at.parse::<Timestamp>().is_ok_and(|at| at >= t)))
            .cloned()
            .collect()
    }
}

/// A canary of the gate.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Canary {
    pub name: String,
    pub health: Health,
    pub running: Option<String>,
    /// Whether the gate counted it (`status.rollouts[].gateTenants`).
    pub in_gate: bool,
    pub samples: Vec<Sample>,
}

/// Tenants admitted together: one batch of the rollout.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Batch {
    pub tier: Tier,
    pub admitted_at: String,
    pub tenants: Vec<String>,
    pub done: usize,
    pub failed: usize,
    /// When the last of them finished its apply (all done or failed).
    pub finished_at: Option<String>,
}

/// A tenant that failed the rollout, with why.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Failure {
    pub name: String,
    pub reason: String,
    pub message: String,
}

/// A rollout in full: what the rollout view shows.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RolloutDetail {
    #[serde(flatten)]
    pub brief: RolloutBrief,
    pub soak_started_at: Option<String>,
    pub soak_ends_at: Option<String>,
    pub soak_left_seconds: Option<i64>,
    pub gate_passed_at: Option<String>,
    pub min_canaries: i32,
    pub canaries: Vec<Canary>,
    pub batches: Vec<Batch>,
    pub failed: Vec<Failure>,
    pub peak_concurrency: i32,
    pub max_concurrency: String,
    pub started_at: Option<String>,
    pub message: Option<String>,
}

/// A policy in full.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PolicyDetail {
    pub name: String,
    pub strategy: String,
    pub stagger_seconds: u64,
    pub soak_seconds: u64,
    pub max_errors: i32,
    pub conditions: Vec<Cond>,
    pub rollouts: Vec<RolloutDetail>,
    pub events: Vec<crate::crd::RolloutEvent>,
}

fn finished_on(t: &Tenant, digest: &str) -> Option<(bool, String)> {
    use crate::core::report::CommandResult;
    let h = t.status.as_ref()?.history.iter().find(|h| h.digest.as_deref() == Some(digest) && h.action == "apply")?;
    // A command that never reached the host finished nothing: it is sent again.
    match CommandResult::parse(&h.result) {
        Some(CommandResult::NotDelivered) => None,
        result => Some((result == Some(CommandResult::Succeeded), h.finished_at.clone()?)),
    }
}

fn rollout_detail(
    p: &RolloutPolicy,
    i: usize,
    r: &RolloutStatus,
    mine: &[&Tenant],
    samples: &Samples,
    now: Timestamp,
) -> RolloutDetail {
    let on_channel: Vec<&&Tenant> = mine.iter().filter(|t| t.spec.channel == r.channel).collect();
    let soak_from = r.soak_started_at.as_deref().and_then(|s| s.parse().ok());
    let canaries = on_channel
        .iter()
        .filter(|t| t.spec.tier == Tier::Canary)
        .map(|t| Canary {
            name: t.name_any(),
            health: health(t),
            running: running(t),
            in_gate: r.gate_tenants.contains(&t.name_any()),
            samples: samples.of(&t.name_any(), &r.digest, soak_from),
        })
        .collect();
    let mut groups: BTreeMap<(String, Tier), Vec<&Tenant>> = BTreeMap::new();
    for t in &on_channel {
        let Some(x) = t.status.as_ref().and_then(|s| s.target.as_ref()) else { continue };
        if x.digest != r.digest {
            continue;
        }
        let Some(at) = x.admitted_at.clone() else { continue };
        groups.entry((at, t.spec.tier)).or_default().push(t);
    }
    let mut batches: Vec<Batch> = groups
        .into_iter()
        .map(|((admitted_at, tier), ts)| {
            let ends: Vec<(bool, String)> = ts.iter().filter_map(|t| finished_on(t, &r.digest)).collect();
            let mut names: Vec<String> = ts.iter().map(|t| t.name_any()).collect();
            names.sort();
            let done = ends.iter().filter(|(ok, _)| *ok).count();
            let finished_at = (ends.len() == ts.len()).then(|| ends.iter().map(|(_, at)| at.clone()).max()).flatten();
            Batch { tier, admitted_at, done, failed: ends.len() - done, tenants: names, finished_at }
        })
        .collect();
    batches.sort_by(|a, b| (a.tier, &a.admitted_at).cmp(&(b.tier, &b.admitted_at)));
    let failed = r
        .failed_tenants
        .iter()
        .map(|name| {
            let t = mine.iter().find(|t| t.name_any() == *name);
            let ready = t.and_then(|t| t.status.as_ref()).and_then(|s| conditions::find(&s.conditions, "Ready"));
            Failure {
                name: name.clone(),
                reason: ready.map(|c| c.reason.clone()).unwrap_or_default(),
                message: ready.map(|c| c.message.clone()).unwrap_or_default(),
            }
        })
        .collect();
    let soak_left = (r.phase == phase::SOAKING)
        .then(|| r.soak_ends_at.as_deref()?.parse::<Timestamp>().ok())
        .flatten()
        .map(|end| now.duration_until(end).as_secs().max(0));
    RolloutDetail {
        brief: brief(p, i, r, now),
        soak_started_at: r.soak_started_at.clone(),
        soak_ends_at: r.soak_ends_at.clone(),
        soak_left_seconds: soak_left,
        gate_passed_at: r.gate_passed_at.clone(),
        min_canaries: p.spec.canary.min_canaries,
        canaries,
        batches,
        failed,
        peak_concurrency: r.peak_concurrency,
        max_concurrency: match &p.spec.max_concurrency {
            k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(n) => n.to_string(),
            k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::String(s) => s.clone(),
        },
        started_at: r.started_at.clone(),
        message: r.message.clone(),
    }
}

/// The policy view: its rollouts with gate, batches and failures.
pub fn policy(p: &RolloutPolicy, tenants: &[&Tenant], samples: &Samples, now: Timestamp) -> PolicyDetail {
    let name = p.name_any();
    let mine: Vec<&Tenant> =
        tenants.iter().copied().filter(|t| t.spec.rollout_policy.as_deref() == Some(name.as_str())).collect();
    let st = p.status.clone().unwrap_or_default();
    PolicyDetail {
        strategy: format!("{:?}", p.spec.strategy),
        stagger_seconds: p.spec.stagger.as_std().as_secs(),
        soak_seconds: p.spec.canary.soak.as_std().as_secs(),
        max_errors: p.spec.max_errors,
        conditions: st.conditions.iter().map(cond).collect(),
        rollouts: st.rollouts.iter().enumerate().map(|(i, r)| rollout_detail(p, i, r, &mine, samples, now)).collect(),
        events: st.events.iter().rev().cloned().collect(),
        name,
    }
}

/// What one slot of the host runs.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SlotView {
    pub slot: String,
    pub active: bool,
    pub container: Option<String>,
    pub digest: Option<String>,
    pub env_revision: Option<String>,
    pub running: bool,
    pub health: Option<String>,
}

/// A Kubernetes event about an object.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct EventView {
    pub type_: String,
    pub reason: String,
    pub message: String,
    pub count: i32,
    pub last: String,
}

/// The events about `kind/name`, newest first, at most `n`.
pub fn events_of<'a>(events: impl IntoIterator<Item = &'a Event>, kind: &str, name: &str, n: usize) -> Vec<EventView> {
    let mut out: Vec<EventView> = events
        .into_iter()
        .filter(|e| e.involved_object.kind.as_deref() == Some(kind) && e.involved_object.name.as_deref() == Some(name))
        .map(|e| EventView {
            type_: e.type_.clone().unwrap_or_default(),
            reason: e.reason.clone().unwrap_or_default(),
            message: e.message.clone().unwrap_or_default(),
            count: e.count.or(e.series.as_ref().and_then(|s| s.count)).unwrap_or(1),
            last: e
                .last_timestamp
                .as_ref()
                .map(|t| t.0.to_string())
                .or_else(|| e.event_time.as_ref().map(|t| t.0.to_string()))
                .or_else(|| e.metadata.creation_timestamp.as_ref().map(|t| t.0.to_string()))
                .unwrap_or_default(),
        })
        .collect();
    out.sort_by(|a, b| b.last.cmp(&a.last));
    out.truncate(n);
    out
}

/// One apply of the tenant's history.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ApplyView {
    pub action: String,
    pub result: String,
    pub digest: Option<String>,
    pub revision: String,
    pub message: Option<String>,
    pub started_at: String,
    pub finished_at: Option<String>,
}

/// The tenant view.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TenantDetail {
    #[serde(flatten)]
    pub row: TenantRow,
    pub instance_id: Option<String>,
    pub strategy_slots: Vec<SlotView>,
    pub observed_at: Option<String>,
    pub target_image: Option<String>,
    pub target_source: Option<String>,
    pub admitted_at: Option<String>,
    pub in_flight: Option<String>,
    pub conditions: Vec<Cond>,
    pub history: Vec<ApplyView>,
    pub events: Vec<EventView>,
    /// The names of the container's env entries (never their values).
    pub env_names: Vec<String>,
}

/// The events kept on the tenant view.
pub const EVENTS_SHOWN: usize = 20;

/// The tenant view.
pub fn tenant<'a>(t: &Tenant, events: impl IntoIterator<Item = &'a Event>) -> TenantDetail {
    let st = t.status.clone().unwrap_or_default();
    let obs = st.observed.clone().unwrap_or_default();
    let slot = |name: &str, s: Option<&crate::crd::SlotObservation>| SlotView {
        slot: name.to_string(),
        active: obs.active_slot.map(|a| a.as_str()) == Some(name),
        container: s.and_then(|s| s.container.clone()),
        digest: s.and_then(|s| s.digest.clone()),
        env_revision: s.and_then(|s| s.env_revision.clone()),
        running: s.is_some_and(|s| s.running),
        health: s.and_then(|s| s.health.clone()),
    };
    TenantDetail {
        row: row(t),
        instance_id: st.instance_id.clone(),
        strategy_slots: vec![slot("blue", obs.blue.as_ref()), slot("green", obs.green.as_ref())],
        observed_at: obs.observed_at.clone(),
        target_image: st.target.as_ref().map(|x| x.image.clone()),
        target_source: st.target.as_ref().and_then(|x| x.source.clone()),
        admitted_at: st.target.as_ref().and_then(|x| x.admitted_at.clone()),
        in_flight: st.in_flight.as_ref().map(|f| format!("{} since {}", f.action, f.started_at)),
        conditions: st.conditions.iter().map(cond).collect(),
        history: st
            .history
            .iter()
            .map(|h| ApplyView {
                action: h.action.clone(),
                result: h.result.clone(),
                digest: h.digest.clone(),
                revision: h.revision.clone(),
                message: h.message.clone(),
                started_at: h.started_at.clone(),
                finished_at: h.finished_at.clone(),
            })
            .collect(),
        events: events_of(events, "Tenant", &t.name_any(), EVENTS_SHOWN),
        env_names: t.spec.container.env.iter().map(|e| e.name.clone()).collect(),
    }
}

/// One digest of a channel's history.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ChannelEntry {
    pub digest: String,
    pub short: String,
    pub first_seen: String,
    pub source: String,
    pub current: bool,
    pub rejected: bool,
    pub rejected_reason: Option<String>,
    pub evidence: Option<crate::crd::PromotionEvidence>,
    /// How many of the channel's tenants run it now.
    pub running: usize,
}

/// The channel view.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ChannelDetail {
    pub name: String,
    pub image: String,
    pub tag: Option<String>,
    pub promote_from: Option<String>,
    pub pinned_digest: Option<String>,
    pub digest: Option<String>,
    pub last_resolved_at: Option<String>,
    pub conditions: Vec<Cond>,
    pub history: Vec<ChannelEntry>,
    pub events: Vec<EventView>,
}

/// The channel view: its digests, newest first, with evidence and rejections.
pub fn channel<'a>(
    c: &ImageChannel,
    tenants: &[&Tenant],
    events: impl IntoIterator<Item = &'a Event>,
) -> ChannelDetail {
    let st = c.status.clone().unwrap_or_default();
    let name = c.name_any();
    let mut runs: BTreeMap<String, usize> = BTreeMap::new();
    for t in tenants.iter().filter(|t| t.spec.channel == name) {
        if let Some(d) = running(t) {
            *runs.entry(d).or_default() += 1;
        }
    }
    ChannelDetail {
        image: c.spec.image.clone(),
        tag: c.spec.tag.clone(),
        promote_from: c.spec.promote_from.clone(),
        pinned_digest: c.spec.pinned_digest.clone(),
        last_resolved_at: st.last_resolved_at.clone(),
        conditions: st.conditions.iter().map(cond).collect(),
        history: crate::plugin::channel_entries(c)
            .into_iter()
            .map(|h| ChannelEntry {
                short: short_digest(&h.digest).to_string(),
                current: st.digest.as_deref() == Some(h.digest.as_str()),
                running: runs.get(&h.digest).copied().unwrap_or(0),
                digest: h.digest,
                first_seen: h.first_seen,
                source: format!("{:?}", h.source),
                rejected: h.rejected,
                rejected_reason: h.rejected_reason,
                evidence: h.evidence,
            })
            .collect(),
        events: events_of(events, "ImageChannel", &name, EVENTS_SHOWN),
        digest: st.digest,
        name,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const NOW: &str = "2026-06-01T12:00:00Z";
    /// `sha256:` and 64 times the hex digit `n`.
    fn d(n: u32) -> String {
        format!("sha256:{}", std::iter::repeat_n(char::from_digit(n, 16).unwrap(), 64).collect::<String>())
    }

    /// A tenant on `channel` whose host serves `running`, Ready or not.
    fn tenant(name: &str, tier: &str, running: Option<&str>, ready: &str, extra: serde_json::Value) -> Tenant {
        let mut v = json!({
            "apiVersion": "fleet.molecule.ai/v1alpha1", "kind": "Tenant", "metadata": {"name": name, "namespace": "fleet"},
            "spec": {"slug": name, "instance": {"id": "i-1"}, "channel": "stable", "tier": tier, "rolloutPolicy": "default",
                     "container": {"env": [{"name": "API_TOKEN", "value": format!("value-of-{name}")}]}},
            "status": {"conditions": [{"type": "Ready", "status": ready, "reason": if ready == "True" { "Converged" } else { "Progressing" },
                       "message": "m", "lastTransitionTime": NOW}],
                       "observed": {"activeSlot": "blue", "observedAt": NOW,
                                    "blue": {"digest": running, "running": true, "health": "healthy"}}}});
        if let (Some(st), Some(e)) = (v["status"].as_object_mut(), extra.as_object()) {
            st.extend(e.clone());
        }
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn ten_thousand_tenants_are_counted_whole_and_listed_a_bounded_page_at_a_time() {
        let ts: Vec<Tenant> = (0..10_000)
            .map(|i| {
                let tier = if i < 100 { "canary" } else { "production" };
                let (running, ready) = if i % 4 == 0 { (d(2), "False") } else { (d(1), "True") };
                tenant(&format!("org-{i:05}"), tier, Some(&running), ready, json!({}))
            })
            .collect();
        let refs: Vec<&Tenant> = ts.iter().collect();
        let s = summary("fleet", false, &refs, &[], &[], vec![], NOW.parse().unwrap());
        assert_eq!(s.total, 10_000);
        assert_eq!(s.by_health[&Health::Ready], 7_500);
        assert_eq!(s.by_health[&Health::Progressing], 2_500);
        assert_eq!(s.by_tier[&Tier::Canary], 100);
        let by: Vec<(Option<String>, usize)> = s.by_digest.iter().map(|c| (c.digest.clone(), c.tenants)).collect();
        assert_eq!(by, vec![(Some(d(1)), 7_500), (Some(d(2)), 2_500)]);

        let all = tenants_page(&ts, &Filter { limit: Some(100_000), ..Default::default() });
        assert_eq!((all.total, all.items.len(), all.limit), (10_000, MAX_PAGE, MAX_PAGE));
        let first = tenants_page(&ts, &Filter::default());
        assert_eq!(first.items.len(), DEFAULT_PAGE);
        assert_eq!(first.items[0].name, "org-00000");
        // Which tenants run digest 2, by the start of its hex, page 3 of 100 each.
        let hex = &d(2)[7..19];
        let f = Filter { digest: Some(hex.to_string()), offset: Some(200), ..Default::default() };
        let p = tenants_page(&ts, &f);
        assert_eq!(p.total, 2_500);
        assert_eq!(p.items[0].name, "org-00800");
        assert!(p.items.iter().all(|r| r.running.as_deref() == Some(d(2).as_str())));
        // Search by a part of the name, any case; tier and health combine.
        let f = Filter { q: Some("ORG-0009".into()), tier: Some(Tier::Canary), ..Default::default() };
        let names: Vec<String> = tenants_page(&ts, &f).items.into_iter().map(|r| r.name).collect();
        assert_eq!(names, (90..100).map(|i| format!("org-{i:05}")).collect::<Vec<_>>());
        let f = Filter { health: Some(Health::Progressing), tier: Some(Tier::Canary), ..Default::default() };
        assert_eq!(tenants_page(&ts, &f).total, 25);
        // An offset past the end is an empty page, not an error; an empty digest filters nothing.
        let f = Filter { offset: Some(20_000), digest: Some(" ".into()), ..Default::default() };
        let p = tenants_page(&ts, &f);
        assert_eq!((p.total, p.offset, p.items.len()), (10_000, 10_000, 0));
    }

    #[test]
    fn a_digest_filter_is_a_prefix_of_the_hex_and_never_matches_a_host_that_reported_none() {
        assert!(digest_matches(Some(&d(7)), &d(7)));
        assert!(digest_matches(Some(&d(7)), "SHA256:7777"));
        assert!(digest_matches(Some(&d(7)), "77"));
        assert!(!digest_matches(Some(&d(7)), "78"));
        assert!(!digest_matches(None, "0000"));
        assert!(!digest_matches(Some(&d(7)), "sha256:"));
    }

    #[test]
    fn no_env_value_is_in_what_the_page_receives() {
        let t = tenant("acme", "production", Some(&d(1)), "True", json!({}));
        let everything = [
            serde_json::to_string(&tenant_detail_of(&t)).unwrap(),
            serde_json::to_string(&tenants_page([&t], &Filter::default())).unwrap(),
            serde_json::to_string(&summary("fleet", false, &[&t], &[], &[], vec![], NOW.parse().unwrap())).unwrap(),
        ]
        .concat();
        assert!(everything.contains("API_TOKEN"));
        assert!(!everything.contains("value-of-acme"), "{everything}");
    }

    fn tenant_detail_of(t: &Tenant) -> TenantDetail {
        super::tenant(t, std::iter::empty())
    }

    fn policy_of(spec: serde_json::Value, status: serde_json::Value) -> RolloutPolicy {
        serde_json::from_value(json!({"apiVersion": "fleet.molecule.ai/v1alpha1", "kind": "RolloutPolicy",
            "metadata": {"name": "default", "namespace": "fleet"}, "spec": spec, "status": status}))
        .unwrap()
    }

    #[test]
    fn a_rollout_shows_its_batches_by_admission_its_failures_with_reasons_and_the_soak_left() {
        let v = d(9);
        let target = |at: &str| json!({"target": {"digest": v, "image": format!("r/app@{v}"), "admittedAt": at}});
        let done = |at: &str, result: &str| json!([{"revision": "r1", "digest": v, "action": "apply", "result": result, "startedAt": at, "finishedAt": at}]);
        let mut c1 = target("2026-06-01T11:00:00Z");
        c1["history"] = done("2026-06-01T11:01:00Z", "Succeeded");
        let mut p1 = target("2026-06-01T11:10:00Z");
        p1["history"] = done("2026-06-01T11:11:00Z", "Succeeded");
        let mut p2 = target("2026-06-01T11:10:00Z");
        p2["history"] = done("2026-06-01T11:12:00Z", "Failed");
        let ts = [
            tenant("can-1", "canary", Some(&v), "True", c1),
            tenant("prod-1", "production", Some(&v), "True", p1),
            tenant("prod-2", "production", Some(&d(1)), "False", p2),
            tenant("prod-3", "production", Some(&v), "False", target("2026-06-01T11:20:00Z")),
            tenant("prod-4", "production", Some(&d(1)), "True", json!({})),
        ];
        let refs: Vec<&Tenant> = ts.iter().collect();
        let p = policy_of(
            json!({"maxConcurrency": 2, "stagger": "60s", "canary": {"minCanaries": 1, "soak": "600s"}}),
            json!({"rollouts": [{"channel": "stable", "digest": v, "phase": "Production",
                "canary": {"moved": 1, "total": 1, "failed": 0}, "production": {"moved": 1, "total": 4, "failed": 1},
                "gateTenants": ["can-1"], "failedTenants": ["prod-2"], "soakStartedAt": "2026-06-01T11:01:00Z",
                "soakEndsAt": "2026-06-01T11:11:00Z"}]}),
        );
        let mut samples = Samples::default();
        for t in &ts {
            samples.record(t);
        }
        let detail = policy(&p, &refs, &samples, NOW.parse().unwrap());
        let r = &detail.rollouts[0];
        type Row<'a> = (Tier, &'a str, Vec<&'a str>, usize, usize, Option<&'a str>);
        let batches: Vec<Row> = r
            .batches
            .iter()
            .map(|b| {
                let names = b.tenants.iter().map(String::as_str).collect();
                (b.tier, b.admitted_at.as_str(), names, b.done, b.failed, b.finished_at.as_deref())
            })
            .collect();
        assert_eq!(
            batches,
            vec![
                (Tier::Canary, "2026-06-01T11:00:00Z", vec!["can-1"], 1, 0, Some("2026-06-01T11:01:00Z")),
                (
                    Tier::Production,
                    "2026-06-01T11:10:00Z",
                    vec!["prod-1", "prod-2"],
                    1,
                    1,
                    Some("2026-06-01T11:12:00Z")
                ),
                (Tier::Production, "2026-06-01T11:20:00Z", vec!["prod-3"], 0, 0, None),
            ]
        );
        assert_eq!(
            r.failed,
            vec![Failure { name: "prod-2".into(), reason: "Progressing".into(), message: "m".into() }]
        );
        assert_eq!(r.canaries.len(), 1);
        assert!(r.canaries[0].in_gate);
        // Not soaking: no soak countdown. The canary's one report (after the soak began) is its
        // sample; the production tenants' reports are none.
        assert_eq!(r.soak_left_seconds, None);
        let health: Vec<(&str, &str)> =
            r.canaries[0].samples.iter().map(|x| (x.at.as_str(), x.health.as_str())).collect();
        assert_eq!(health, vec![(NOW, "healthy")]);
        // ETA: two production tenants to go, batches of 2: one more stagger.
        assert_eq!(r.brief.eta_seconds, Some(60));
    }

    #[test]
    fn samples_are_each_new_report_of_a_canary_bounded_and_read_by_digest_and_time() {
        let mut s = Samples::default();
        let at = |i: usize| format!("2026-06-01T11:{:02}:{:02}Z", i / 60, i % 60);
        for i in 0..(SAMPLES_KEPT + 30) {
            let health = if i % 10 == 0 { "unhealthy" } else { "healthy" };
            let mut t = tenant("can-1", "canary", Some(&d(1)), "True", json!({}));
            let obs = t.status.as_mut().unwrap().observed.as_mut().unwrap();
            obs.observed_at = Some(at(i));
            obs.blue.as_mut().unwrap().health = Some(health.into());
            s.record(&t);
            s.record(&t); // the same report twice is one sample
        }
        s.record(&tenant("prod-1", "production", Some(&d(1)), "True", json!({})));
        let all = s.of("can-1", &d(1), None);
        assert_eq!(all.len(), SAMPLES_KEPT);
        assert_eq!(all.last().unwrap().at, at(SAMPLES_KEPT + 29));
        let since = s.of("can-1", &d(1), Some(at(140).parse().unwrap()));
        assert_eq!(since.iter().map(|x| x.health.as_str()).collect::<Vec<_>>(), {
            let mut v = vec!["unhealthy"];
            v.extend(["healthy"; 9]);
            v
        });
        assert!(s.of("can-1", &d(2), None).is_empty());
        assert!(s.of("prod-1", &d(1), None).is_empty(), "only canaries are sampled");
    }

    #[test]
    fn events_are_the_objects_own_newest_first() {
        let ev = |name: &str, kind: &str, reason: &str, at: &str| -> Event {
            serde_json::from_value(json!({"metadata": {"name": format!("{name}.{reason}"), "namespace": "fleet"},
                "involvedObject": {"kind": kind, "name": name}, "reason": reason, "message": reason,
                "type": "Normal", "lastTimestamp": at, "count": 2}))
            .unwrap()
        };
        let evs = [
            ev("acme", "Tenant", "Applied", "2026-06-01T11:00:00Z"),
            ev("acme", "Tenant", "Switched", "2026-06-01T11:05:00Z"),
            ev("acme", "ImageChannel", "Resolved", "2026-06-01T11:06:00Z"),
            ev("other", "Tenant", "Applied", "2026-06-01T11:07:00Z"),
        ];
        let got: Vec<String> = events_of(&evs, "Tenant", "acme", 10).into_iter().map(|e| e.reason).collect();
        assert_eq!(got, vec!["Switched", "Applied"]);
        assert_eq!(events_of(&evs, "Tenant", "acme", 1).len(), 1);
    }
}
