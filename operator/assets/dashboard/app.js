// The fleet dashboard's page: hash routes (#/ fleet, #/policy/NAME, #/tenant/NAME,
// #/channel/NAME), data read from this page's own server (which reads its shared watches), and a
// re-read on every change notice of /api/stream. The DOM is built with textContent only: nothing
// from the cluster is ever parsed as HTML.
"use strict";

const meta = (name) => document.querySelector(`meta[name="${name}"]`).content;
const CSRF = meta("csrf-token");
const READ_ONLY = meta("fleet-read-only") === "true";
const PAGE = 100;

// ---- small DOM helpers ---------------------------------------------------------------------
function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k === "class") e.className = v;
    else if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
    else e.setAttribute(k, v === true ? "" : String(v));
  }
  for (const c of children.flat(Infinity)) {
    if (c === undefined || c === null || c === false) continue;
    e.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return e;
}
const short = (d) => (d ? d.replace(/^sha256:/, "").slice(0, 12) : "—");
const link = (href, text, attrs) => el("a", { href, ...(attrs || {}) }, text);
function ago(iso) {
  if (!iso) return "—";
  const s = Math.round((Date.now() - Date.parse(iso)) / 1000);
  if (!Number.isFinite(s)) return iso;
  if (s < 60) return `${Math.max(s, 0)}s ago`;
  if (s < 3600) return `${Math.floor(s / 60)}m ago`;
  if (s < 86400) return `${Math.floor(s / 3600)}h ago`;
  return `${Math.floor(s / 86400)}d ago`;
}
const time = (iso) => (iso ? el("time", { datetime: iso, title: iso }, ago(iso)) : "—");
function duration(s) {
  if (s === null || s === undefined) return "—";
  if (s < 60) return `${s}s`;
  if (s < 3600) return `${Math.floor(s / 60)}m ${s % 60}s`;
  return `${Math.floor(s / 3600)}h ${Math.floor((s % 3600) / 60)}m`;
}
function table(caption, head, rows, attrs) {
  return el("table", attrs || {},
    el("caption", {}, caption),
    el("thead", {}, el("tr", {}, head.map((h) => el("th", { scope: "col" }, h)))),
    el("tbody", {}, rows.length ? rows : el("tr", {}, el("td", { colspan: head.length, class: "empty" }, "none"))));
}
const tr = (cells, attrs) => el("tr", attrs || {}, cells.map((c) => el("td", {}, c)));
const badge = (text, kind) => el("span", { class: `badge ${kind || String(text).toLowerCase()}` }, text);
function bar(label, p, testid) {
  const total = Math.max(p.total, 0);
  return el("div", { class: "bar", "data-test": testid },
    el("span", { class: "bar-label" }, label),
    el("progress", { max: total || 1, value: Math.min(p.moved, total), "aria-label": `${label} progress` }),
    el("span", { class: "bar-count", "data-test": `${testid}-count` }, `${p.moved}/${p.total}`),
    p.failed > 0 ? badge(`${p.failed} failed`, "failed") : null);
}
function conditions(cs) {
  return table("Conditions", ["Type", "Status", "Reason", "Message", "Since"],
    cs.map((c) => tr([c.type, badge(c.status, c.status === "True" ? "true" : "false"), c.reason, c.message, time(c.since)])));
}
function events(evs, caption) {
  return table(caption || "Recent events", ["Type", "Reason", "Message", "Count", "Last"],
    evs.map((e) => tr([badge(e.type, e.type === "Warning" ? "failed" : "neutral"), e.reason, e.message, e.count, time(e.last)])));
}

// ---- the server ----------------------------------------------------------------------------
async function read(path) {
  const res = await fetch(path, { headers: { accept: "application/json" }, cache: "no-store" });
  const body = await res.json().catch(() => ({}));
  if (!res.ok) throw Object.assign(new Error(body.error || res.statusText), { status: res.status });
  return body;
}

function notice(text, kind) {
  const n = document.getElementById("notice");
  n.hidden = false;
  n.className = `notice ${kind}`;
  n.setAttribute("role", kind === "error" ? "alert" : "status");
  n.textContent = text;
}

async function act(action, confirm) {
  if (READ_ONLY) return;
  const res = await fetch("/api/actions", {
    method: "POST",
    headers: { "content-type": "application/json", "x-csrf-token": CSRF },
    body: JSON.stringify({ action, confirm: !!confirm }),
  });
  const body = await res.json().catch(() => ({}));
  if (res.ok) {
    notice(body.message, "ok");
  } else if (res.status === 403) {
    notice(`Forbidden (403): ${body.error || "refused"}. Nothing was changed.`, "error");
  } else {
    notice(`Refused (${res.status}): ${body.error || res.statusText}`, "error");
  }
  refresh();
}

function confirmThen(text, emergency) {
  const d = document.getElementById("confirm");
  document.getElementById("confirm-text").textContent = text;
  document.getElementById("confirm-emergency").hidden = !emergency;
  return new Promise((resolve) => {
    const done = (ok) => {
      d.close();
      resolve(ok === true ? {
        digest: document.getElementById("confirm-digest").value.trim(),
        force: document.getElementById("confirm-force").checked,
      } : null);
    };
    document.getElementById("confirm-ok").onclick = () => done(true);
    document.getElementById("confirm-cancel").onclick = () => done(false);
    d.oncancel = () => resolve(null);
    d.showModal();
  });
}

function button(text, onclick, attrs) {
  if (READ_ONLY) return null;
  return el("button", { type: "button", onclick, ...(attrs || {}) }, text);
}
function policyActions(name, r) {
  const verb = (v) => () => act({ verb: v, policy: name });
  return el("div", { class: "actions", role: "group", "aria-label": `Actions on ${name}` },
    button("Promote", verb("promote"), { "data-action": "promote", title: "End the canary soak now" }),
    r && r.paused
      ? button("Resume", verb("resume"), { "data-action": "resume" })
      : button("Pause", verb("pause"), { "data-action": "pause", title: "No new batch starts" }),
    button("Retry", verb("retry"), { "data-action": "retry", title: "Admit the failed tenants again" }),
    button("Abort…", async () => {
      if (await confirmThen(`Abort the rollout of ${name}? Moved tenants go back and the digest is rejected.`, false)) {
        act({ verb: "abort", policy: name }, true);
      }
    }, { "data-action": "abort", class: "danger" }),
    button("Emergency…", async () => {
      const c = await confirmThen(`Emergency rollout on ${name}: every tier at once.`, true);
      if (c) act({ verb: "emergency", policy: name, digest: c.digest, force: c.force }, true);
    }, { "data-action": "emergency", class: "danger" }));
}

// ---- views ---------------------------------------------------------------------------------
let summaryCache = null;

function renderNav(s) {
  const nav = document.getElementById("nav");
  nav.replaceChildren(
    el("ul", {},
      el("li", {}, link("#/", "Fleet")),
      s.policies.map((p) => el("li", {}, link(`#/policy/${encodeURIComponent(p.name)}`, `policy ${p.name}`))),
      s.channels.map((c) => el("li", {}, link(`#/channel/${encodeURIComponent(c.name)}`, `channel ${c.name}`)))));
  const probs = document.getElementById("problems");
  probs.hidden = s.problems.length === 0;
  probs.replaceChildren(...s.problems.map((p) => el("p", {}, `Cannot watch ${p}`)));
}

function rolloutLine(p, r) {
  return el("div", { class: "rollout-brief", "data-test": "rollout-brief" },
    el("div", {}, link(`#/policy/${encodeURIComponent(p.name)}`, `${r.channel}@${r.short}`), " ",
      badge(r.phase), r.paused ? badge("paused", "paused") : null,
      r.etaSeconds !== null ? el("span", { class: "eta" }, ` ETA ≥ ${duration(r.etaSeconds)}`) : null),
    bar("canary", r.canary, "canary-progress"), bar("production", r.production, "production-progress"));
}

// The fleet view keeps its filter form across updates (typing is never interrupted).
const fleetState = { q: "", channel: "", digest: "", tier: "", health: "", offset: 0 };

function fleetForm() {
  const upd = (k) => (e) => { fleetState[k] = e.target.value; fleetState.offset = 0; refresh(); };
  const select = (k, label, options) => el("label", {}, label,
    el("select", { id: `f-${k}`, onchange: upd(k) }, el("option", { value: "" }, "any"),
      options.map((o) => el("option", { value: o }, o))));
  return el("form", { class: "filters", role: "search", onsubmit: (e) => e.preventDefault() },
    el("label", {}, "Search ", el("input", { id: "f-q", type: "search", placeholder: "name or slug  (press /)", oninput: upd("q"), autocomplete: "off" })),
    el("label", {}, "Runs digest ", el("input", { id: "f-digest", type: "search", placeholder: "sha256:… or its start", oninput: upd("digest"), autocomplete: "off", spellcheck: "false" })),
    select("channel", "Channel ", (summaryCache?.channels || []).map((c) => c.name)),
    select("tier", "Tier ", ["canary", "production"]),
    select("health", "Health ", ["Ready", "Progressing", "Failed", "Unknown"]));
}

async function fleetView(view, fresh) {
  if (fresh) {
    view.replaceChildren(el("h2", {}, "Fleet"), el("section", { id: "counts" }), el("section", { id: "rollouts" }),
      el("section", { id: "digests" }), fleetForm(), el("section", { id: "list" }));
    for (const k of ["q", "digest", "channel", "tier", "health"]) document.getElementById(`f-${k}`).value = fleetState[k];
  }
  const s = summaryCache;
  const counts = el("ul", { class: "counts" },
    el("li", { "data-test": "count-total" }, el("strong", {}, s.total), " tenants"),
    Object.entries(s.byHealth).map(([h, n]) => el("li", { class: `count ${h.toLowerCase()}`, "data-test": `count-${h}` },
      el("button", { type: "button", class: "linkish", onclick: () => { fleetState.health = h; document.getElementById("f-health").value = h; refresh(); } },
        el("strong", {}, n), ` ${h}`))),
    Object.entries(s.byTier).map(([t, n]) => el("li", {}, el("strong", {}, n), ` ${t}`)));
  document.getElementById("counts").replaceChildren(counts);
  document.getElementById("rollouts").replaceChildren(el("h3", {}, "Rollouts"),
    ...(s.policies.length ? s.policies.flatMap((p) => p.rollouts.length
      ? p.rollouts.map((r) => rolloutLine(p, r)) : [el("p", {}, `policy ${p.name}: no rollout yet`)]) : [el("p", {}, "no RolloutPolicy")]));
  document.getElementById("digests").replaceChildren(table("Running digests by channel", ["Channel", "Digest", "Tenants", ""],
    s.byDigest.map((d) => tr([link(`#/channel/${encodeURIComponent(d.channel)}`, d.channel),
      [el("code", { title: d.digest || "" }, short(d.digest)), d.current ? [" ", badge("current", "true")] : null], d.tenants,
      d.digest ? el("button", { type: "button", class: "linkish", onclick: () => {
        fleetState.digest = d.digest; fleetState.offset = 0; document.getElementById("f-digest").value = d.digest; refresh();
      } }, "which tenants?") : "not reported"])), { "data-test": "digests" }));
  const q = new URLSearchParams({ offset: fleetState.offset, limit: PAGE });
  for (const k of ["q", "digest", "channel", "tier", "health"]) if (fleetState[k]) q.set(k, fleetState[k]);
  const page = await read(`/api/tenants?${q}`);
  const rows = page.items.map((t) => tr([
    link(`#/tenant/${encodeURIComponent(t.name)}`, t.name), t.slug, t.tier, t.channel,
    el("code", { title: t.desired || "" }, short(t.desired)), el("code", { title: t.running || "" }, short(t.running)),
    t.slot || "—", badge(t.health), t.reason || "—",
    [t.pinned ? badge("held", "paused") : null, t.suspended ? badge("suspended", "paused") : null],
  ], { "data-test": "tenant-row", "data-name": t.name }));
  const last = Math.min(page.offset + page.limit, page.total);
  const pager = el("nav", { class: "pager", "aria-label": "Pages of tenants" },
    el("button", { type: "button", disabled: page.offset === 0, onclick: () => { fleetState.offset = Math.max(0, page.offset - PAGE); refresh(); } }, "← previous"),
    el("span", { "data-test": "page-info" }, page.total ? ` ${page.offset + 1}–${last} of ${page.total} ` : " no tenant matches "),
    el("button", { type: "button", disabled: last >= page.total, onclick: () => { fleetState.offset = page.offset + PAGE; refresh(); } }, "next →"));
  document.getElementById("list").replaceChildren(
    table("Tenants", ["Name", "Slug", "Tier", "Channel", "Desired", "Running", "Slot", "Health", "Reason", ""], rows, { "data-test": "tenants" }), pager);
}

async function policyView(view, name) {
  const p = await read(`/api/policies/${encodeURIComponent(name)}`);
  const sections = p.rollouts.slice().reverse().map((r) => {
    const gate = el("section", { class: "gate" }, el("h4", {}, "Canary gate"),
      el("p", {}, `${r.canaries.filter((c) => c.inGate).length} of at least ${r.minCanaries} canaries counted; `,
        r.soakLeftSeconds !== null
          ? el("span", { "data-ends": r.soakEndsAt, "data-test": "soak-left" }, `soak ${duration(r.soakLeftSeconds)} left`)
          : r.gatePassedAt ? ["passed ", time(r.gatePassedAt)] : "soak not started"),
      table("Canaries", ["Canary", "Health", "Runs", "Samples in the soak"], r.canaries.map((c) => tr([
        link(`#/tenant/${encodeURIComponent(c.name)}`, c.name), badge(c.health), el("code", {}, short(c.running)),
        el("ol", { class: "samples", "aria-label": `${c.samples.length} samples` },
          c.samples.map((s) => el("li", { class: `sample ${s.health}`, title: `${s.at}: ${s.health}` }, s.health === "healthy" ? "●" : "✕"))),
      ]))));
    const batches = el("section", {}, el("h4", {}, "Batches"),
      el("ol", { class: "timeline", "data-test": "batches" }, r.batches.map((b) => el("li", {},
        el("span", { class: "when" }, time(b.admittedAt)), " ", badge(b.tier, "neutral"), ` ${b.tenants.length} tenant(s): `,
        b.tenants.map((t, i) => [i ? ", " : "", link(`#/tenant/${encodeURIComponent(t)}`, t)]),
        ` — ${b.done} done`, b.failed ? `, ${b.failed} failed` : "",
        b.finishedAt ? [", finished ", time(b.finishedAt)] : ", in progress"))));
    const failed = table("Failed tenants", ["Tenant", "Reason", "Message"],
      r.failed.map((f) => tr([link(`#/tenant/${encodeURIComponent(f.name)}`, f.name), f.reason, f.message])), { "data-test": "failed" });
    return el("article", { class: "rollout", "data-test": "rollout", "data-digest": r.digest },
      el("h3", {}, `${r.channel}@${r.short} `, badge(r.phase), r.paused ? badge("paused", "paused") : null),
      el("p", { class: "meta" }, `digest ${r.digest} · started `, time(r.startedAt),
        ` · max concurrency ${r.maxConcurrency}, peak ${r.peakConcurrency}${r.etaSeconds !== null ? ` · ETA ≥ ${duration(r.etaSeconds)}` : ""}`,
        r.message ? ` · ${r.message}` : ""),
      bar("canary", r.canary, "canary-progress"), bar("production", r.production, "production-progress"),
      gate, batches, failed);
  });
  const current = p.rollouts[p.rollouts.length - 1];
  view.replaceChildren(
    el("h2", {}, `RolloutPolicy ${p.name}`),
    el("p", { class: "meta" }, `${p.strategy} · soak ${duration(p.soakSeconds)} · stagger ${duration(p.staggerSeconds)} · maxErrors ${p.maxErrors}`),
    policyActions(p.name, current), conditions(p.conditions),
    ...(sections.length ? sections : [el("p", {}, "no rollout yet")]),
    table("Rollout events", ["Event", "Channel", "Digest", "At", "Message"],
      p.events.map((e) => tr([e.type, e.channel, el("code", {}, short(e.digest)), time(e.at), e.message]))));
}

async function tenantView(view, name) {
  const t = await read(`/api/tenants/${encodeURIComponent(name)}`);
  const actions = el("div", { class: "actions", role: "group", "aria-label": `Actions on ${name}` },
    t.pinned ? button("Release", () => act({ verb: "release", tenant: name }), { "data-action": "release" })
      : button("Hold", () => act({ verb: "hold", tenant: name }), { "data-action": "hold", title: "Pin to what the host serves now" }),
    t.suspended ? button("Unsuspend", () => act({ verb: "unsuspend", tenant: name }), { "data-action": "unsuspend" })
      : button("Suspend", () => act({ verb: "suspend", tenant: name }), { "data-action": "suspend" }));
  view.replaceChildren(
    el("h2", {}, `Tenant ${t.name} `, badge(t.health)),
    el("p", { class: "meta" }, `slug ${t.slug} · ${t.tier} · channel `, link(`#/channel/${encodeURIComponent(t.channel)}`, t.channel),
      t.policy ? [" · policy ", link(`#/policy/${encodeURIComponent(t.policy)}`, t.policy)] : "",
      ` · instance ${t.instanceId || "—"} · observed `, time(t.observedAt),
      t.pinned ? ` · held at ${short(t.pinned)}` : "", t.suspended ? " · suspended" : "",
      t.inFlight ? ` · in flight: ${t.inFlight}` : ""),
    actions, conditions(t.conditions),
    table("What the host runs", ["Slot", "Serving", "Container", "Digest", "Env revision", "Running", "Health"],
      t.strategySlots.map((s) => tr([s.slot, s.active ? badge("serving", "true") : "", s.container || "—",
        el("code", { title: s.digest || "" }, short(s.digest)), s.envRevision || "—", s.running ? "yes" : "no", s.health || "—"])), { "data-test": "slots" }),
    el("p", { class: "meta" }, `target ${t.targetImage || "—"} (${t.targetSource || "no source"}), admitted `, time(t.admittedAt),
      ` · env: ${t.envNames.length ? t.envNames.join(", ") : "none"} (values are never shown)`),
    table("Applies", ["Action", "Result", "Digest", "Revision", "Message", "Started", "Finished"],
      t.history.map((h) => tr([h.action, badge(h.result, h.result === "Succeeded" ? "true" : "false"), el("code", {}, short(h.digest)),
        el("code", {}, h.revision.slice(0, 12)), h.message || "", time(h.startedAt), time(h.finishedAt)])), { "data-test": "history" }),
    events(t.events));
}

async function channelView(view, name) {
  const c = await read(`/api/channels/${encodeURIComponent(name)}`);
  view.replaceChildren(
    el("h2", {}, `ImageChannel ${c.name}`),
    el("p", { class: "meta" }, `${c.image}`, c.tag ? `:${c.tag}` : "", c.promoteFrom ? ` · promoted from ${c.promoteFrom}` : "",
      c.pinnedDigest ? ` · pinned to ${short(c.pinnedDigest)}` : "", " · resolved ", time(c.lastResolvedAt)),
    conditions(c.conditions),
    table("Digest history", ["Digest", "First seen", "Source", "Running", "State", "Promotion evidence"],
      c.history.map((h) => tr([el("code", { title: h.digest }, h.short), time(h.firstSeen), h.source, h.running,
        [h.current ? badge("current", "true") : null, h.rejected ? [badge("rejected", "failed"), ` ${h.rejectedReason || ""}`] : null],
        h.evidence ? `${h.evidence.how} by policy ${h.evidence.policy} (${h.evidence.channel}): canaries ${h.evidence.tenants.join(", ")}; soak ${h.evidence.soakStartedAt} → ${h.evidence.passedAt}` : "—",
      ])), { "data-test": "channel-history" }),
    events(c.events));
}

// ---- routing and live updates --------------------------------------------------------------
let route = null;
let busy = null;
let again = false;

function parseRoute() {
  const m = location.hash.match(/^#\/(policy|tenant|channel)\/(.+)$/);
  return m ? { kind: m[1], name: decodeURIComponent(m[2]) } : { kind: "fleet" };
}

async function render() {
  const next = parseRoute();
  const fresh = !route || route.kind !== next.kind || route.name !== next.name;
  route = next;
  const view = document.getElementById("view");
  summaryCache = await read("/api/summary");
  renderNav(summaryCache);
  try {
    if (route.kind === "fleet") await fleetView(view, fresh);
    else if (route.kind === "policy") await policyView(view, route.name);
    else if (route.kind === "tenant") await tenantView(view, route.name);
    else await channelView(view, route.name);
  } catch (e) {
    view.replaceChildren(el("h2", {}, "Not shown"), el("p", { class: "error", role: "alert" }, e.message));
  }
  document.body.dataset.rendered = String(Number(document.body.dataset.rendered || 0) + 1);
}

// A render never replaces what the pointer is pressing: on a busy fleet the page re-renders
// several times a second, and a button replaced between mousedown and mouseup loses the click.
let pressing = false;
document.addEventListener("pointerdown", () => { pressing = true; }, true);
function released() {
  if (!pressing) return;
  pressing = false;
  // After the click that follows this pointerup has been dispatched.
  setTimeout(() => { if (again && !busy) { again = false; refresh(); } }, 0);
}
document.addEventListener("pointerup", released, true);
document.addEventListener("pointercancel", released, true);

// One render at a time; a change during a render (or while a button is pressed) causes one more
// after it.
function refresh() {
  if (busy || pressing) { again = true; return; }
  busy = render().catch((e) => notice(`Cannot read the dashboard's server: ${e.message}`, "error")).finally(() => {
    busy = null;
    if (again) { again = false; refresh(); }
  });
}

function live() {
  const status = document.getElementById("live");
  const source = new EventSource("/api/stream");
  source.addEventListener("open", () => { status.textContent = "live"; status.className = "live on"; });
  source.addEventListener("error", () => { status.textContent = "reconnecting…"; status.className = "live off"; });
  source.addEventListener("change", () => refresh());
}

// Countdowns move between notices.
setInterval(() => {
  for (const e of document.querySelectorAll("[data-ends]")) {
    const left = Math.max(0, Math.round((Date.parse(e.dataset.ends) - Date.now()) / 1000));
    e.textContent = `soak ${duration(left)} left`;
  }
}, 1000);

document.addEventListener("keydown", (e) => {
  const typing = /^(INPUT|SELECT|TEXTAREA)$/.test(document.activeElement?.tagName || "");
  if (e.key === "/" && !typing && route?.kind === "fleet") {
    e.preventDefault();
    document.getElementById("f-q")?.focus();
  }
});
window.addEventListener("hashchange", () => {
  document.getElementById("notice").hidden = true;
  refresh();
  document.getElementById("view").focus();
});
document.addEventListener("DOMContentLoaded", () => { refresh(); live(); });
