// recsvc dashboard: plain JavaScript, no build step. Every data call goes to this server's JSON
// API with the key in the X-API-Key header; the key lives in sessionStorage, never in a URL.
// The DOM is built with textContent only (h()), so titles and ids from the data are never HTML.

import { hourlyChart, versionsChart } from "./charts.js";

const KEY = "recsvc.apiKey";
const REFRESH_MS = 5000;
const JOB_POLL_MS = 1000;

// --- small helpers --------------------------------------------------------------------------

function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (name.startsWith("on")) el.addEventListener(name.slice(2), value);
    else if (name === "class") el.className = value;
    // CSSOM, not the style attribute: the Content-Security-Policy allows no inline styles.
    else if (name === "style") el.style.cssText = value;
    else el.setAttribute(name, value === true ? "" : String(value));
  }
  return add(el, ...children);
}

// Append children (nodes, text, nested arrays); null, undefined and false add nothing.
function add(el, ...children) {
  for (const child of children.flat(Infinity)) {
    if (child === undefined || child === null || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return el;
}

const fmt = new Intl.NumberFormat("en-US");
const num = (n) => (n === null || n === undefined ? "–" : fmt.format(n));
const dec = (n, digits = 4) => (n === null || n === undefined ? "–" : Number(n).toFixed(digits));
const when = (iso) => (iso ? new Date(iso).toISOString().replace("T", " ").slice(0, 19) + " UTC" : "–");

function age(seconds) {
  if (seconds === null || seconds === undefined) return "–";
  if (seconds < 90) return `${Math.round(seconds)} s`;
  if (seconds < 5400) return `${Math.round(seconds / 60)} min`;
  if (seconds < 172800) return `${(seconds / 3600).toFixed(1)} h`;
  return `${(seconds / 86400).toFixed(1)} days`;
}

const courseLink = (id, title) =>
  h("a", { href: `#course/${encodeURIComponent(id)}` }, title ? `${title} (${id})` : id);
const learnerLink = (id) => h("a", { href: `#learner/${encodeURIComponent(id)}` }, id);

function stat(label, value, sub, id) {
  return h("div", { class: "card stat", id },
    h("div", { class: "label" }, label),
    h("div", { class: "value" }, value),
    sub ? h("div", { class: "sub" }, sub) : null);
}

function table(caption, headers, rows, attrs = {}) {
  return h("div", { class: "scroll" },
    h("table", attrs,
      caption ? h("caption", {}, caption) : null,
      h("thead", {}, h("tr", {}, headers.map((x) =>
        h("th", { scope: "col", class: x.startsWith("#") ? "num" : null }, x.replace(/^#/, ""))))),
      h("tbody", {}, rows.length ? rows : h("tr", {}, h("td", { colspan: headers.length, class: "muted" }, "none")))));
}

function problemText(err) {
  if (!(err instanceof ApiError)) return String(err && err.message ? err.message : err);
  const doc = err.body || {};
  return `${err.status} ${doc.title || ""}: ${doc.detail || ""}`.trim();
}

function errorBox(err) {
  return h("p", { class: "error", role: "alert" }, problemText(err));
}

// --- the API ----------------------------------------------------------------------------------

class ApiError extends Error {
  constructor(status, body) {
    super(`HTTP ${status}`);
    this.status = status;
    this.body = body;
  }
}

async function api(path, { method = "GET", body } = {}) {
  const headers = { Accept: "application/json", "X-API-Key": sessionStorage.getItem(KEY) || "" };
  const init = { method, headers, cache: "no-store", credentials: "omit", referrerPolicy: "no-referrer" };
  if (body !== undefined) {
    headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  const response = await fetch(path, init);
  let data = null;
  try {
    data = await response.json();
  } catch {
    data = null;
  }
  if (!response.ok) {
    if (response.status === 401) signOut("The key was refused (401): sign in again.");
    throw new ApiError(response.status, data);
  }
  return data;
}

// --- session ----------------------------------------------------------------------------------

const state = { scopes: [], timers: [], page: null, overview: null };

function isAdmin() {
  return state.scopes.includes("admin");
}

function signOut(message = "") {
  sessionStorage.removeItem(KEY);
  state.scopes = [];
  stopTimers();
  document.getElementById("page").replaceChildren();
  document.getElementById("nav").hidden = true;
  document.getElementById("who").hidden = true;
  document.getElementById("sign-in").hidden = false;
  document.getElementById("sign-in-error").textContent = message;
  document.getElementById("api-key").focus();
}

async function signIn(key) {
  sessionStorage.setItem(KEY, key);
  try {
    const overview = await api("/v1/stats/overview");
    state.scopes = overview.key_scopes;
    state.overview = overview;
  } catch (err) {
    sessionStorage.removeItem(KEY);
    throw err;
  }
  document.getElementById("sign-in").hidden = true;
  document.getElementById("nav").hidden = false;
  document.getElementById("who").hidden = false;
  document.getElementById("role").textContent = `Signed in: ${state.scopes.join(", ")} key`;
}

function stopTimers() {
  for (const timer of state.timers) clearTimeout(timer);
  state.timers = [];
}

function confirmAction(text) {
  return window.confirm(text);
}

// --- pages ------------------------------------------------------------------------------------

async function overviewPage(root) {
  const status = h("p", { class: "status-line", id: "overview-updated" }, "Loading…");
  const cards = h("div", { class: "grid", id: "overview-cards" });
  const day = h("div", { class: "chart", id: "chart-24h", role: "img", "aria-label": "Events per hour by type, last 24 hours" });
  const week = h("div", { class: "chart", id: "chart-7d", role: "img", "aria-label": "Events per hour by type, last 7 days" });
  const strategies = h("div", { id: "strategies" });
  const error = h("div");
  add(root, 
    h("h1", {}, "Overview"), status, error, cards,
    h("div", { class: "cols" },
      h("section", { class: "card", "aria-labelledby": "h24" }, h("h2", { id: "h24" }, "Events per hour, last 24 hours"), day),
      h("section", { class: "card", "aria-labelledby": "h7d" }, h("h2", { id: "h7d" }, "Events per hour, last 7 days"), week)),
    h("section", { class: "card", "aria-labelledby": "hstrat", style: "margin-top:1rem" },
      h("h2", { id: "hstrat" }, "Recommendations served by strategy (since the server started)"), strategies));

  let drawnOnce = false;
  const refresh = async () => {
    if (state.page !== "overview") return;
    try {
      // The first draw uses the answer the sign-in just fetched, when it is fresh.
      const o = state.overview || (await api("/v1/stats/overview"));
      state.overview = null;
      error.replaceChildren();
      const ready = o.readiness.status === "ready";
      const model = o.active_model;
      const lift = model && model.ndcg_at_10 !== null && model.baseline_ndcg_at_10
        ? ` (${model.ndcg_at_10 >= model.baseline_ndcg_at_10 ? "+" : ""}${((model.ndcg_at_10 / model.baseline_ndcg_at_10 - 1) * 100).toFixed(0)} %)` : "";
      cards.replaceChildren(
        stat("Readiness", h("span", { class: ready ? "ok" : "bad" }, o.readiness.status),
          `database ${o.readiness.database}, schema ${o.readiness.schema_revision || "–"}, serving ${o.readiness.model}`, "card-readiness"),
        stat("Learners", num(o.learners_total),
          o.learners_counted_at ? `counted ${when(o.learners_counted_at)}` : "counting…", "card-learners"),
        stat("Courses", num(o.courses_total), "in the catalog", "card-courses"),
        stat("Events", num(o.events_total), "stored", "card-events"),
        stat("Active model", model ? model.version : "none yet",
          model ? `trained ${age(model.age_seconds)} ago; ndcg@10 ${dec(model.ndcg_at_10)} vs popularity ${dec(model.baseline_ndcg_at_10)}${lift}` : "train one on the Models page",
          "card-model"),
        stat("Fresh users", num(o.fresh_users), "events newer than the model (this worker)", "card-fresh"));
      const served = Object.entries(o.recommendations_by_strategy);
      const top = Math.max(1, ...served.map(([, n]) => n));
      strategies.replaceChildren(table(null, ["Strategy", "#Lists", ""],
        served.map(([name, n]) => h("tr", {}, h("td", {}, name), h("td", { class: "num" }, num(n)),
          h("td", {}, h("div", { class: "bar", style: `width:${(100 * n) / top}%` })))), { class: "bars" }));
      hourlyChart(day, o.events_per_hour, 24);
      hourlyChart(week, o.events_per_hour, 24 * 7);
      status.textContent = `Updated ${when(o.generated_at)}; refreshes every ${REFRESH_MS / 1000} s.`;
      if (!drawnOnce) {
        drawnOnce = true;
        window.recsvcOverviewDrawnAt = performance.now();
        document.body.dataset.overview = "drawn";
      }
    } catch (err) {
      error.replaceChildren(errorBox(err));
    }
    if (state.page === "overview") state.timers.push(setTimeout(refresh, REFRESH_MS));
  };
  await refresh();
}

async function modelsPage(root) {
  const admin = isAdmin();
  const jobLine = h("p", { id: "job-status", class: "status-line", role: "status" });
  const actionError = h("div", { id: "models-error" });
  const tableBox = h("div", { id: "versions" });
  const chart = h("div", { class: "chart", id: "chart-ndcg", role: "img", "aria-label": "ndcg@10 and the popularity baseline by version" });
  const trainButton = h("button", { type: "button", id: "train", onclick: () => train() }, "Train a new model");
  add(root, 
    h("h1", {}, "Models"),
    h("div", { class: "row" }, trainButton,
      h("span", { class: "muted" }, admin ? "Training, activation and rollback ask for confirmation." : "Training, activation and rollback need an admin key.")),
    jobLine, actionError,
    h("section", { class: "card", "aria-labelledby": "hchart" }, h("h2", { id: "hchart" }, "ndcg@10 and the popularity baseline across versions"), chart),
    h("section", { class: "card", "aria-labelledby": "hversions", style: "margin-top:1rem" }, h("h2", { id: "hversions" }, "Versions"), tableBox));

  async function activate(version, verb) {
    if (!confirmAction(`${verb} model ${version}? It will serve every recommendation from now on.`)) return;
    actionError.replaceChildren();
    try {
      await api(`/v1/models/${encodeURIComponent(version)}/activate`, { method: "POST" });
      jobLine.textContent = `${version} is active.`;
    } catch (err) {
      actionError.replaceChildren(errorBox(err));
    }
    await load();
  }

  async function watch(job) {
    jobLine.textContent = `Training job ${job.job_id}: ${job.state}${job.version ? ` (${job.version})` : ""}${job.error ? `: ${job.error}` : ""}`;
    jobLine.dataset.state = job.state;
    if (job.state === "succeeded" || job.state === "failed") {
      trainButton.disabled = false;
      await load();
      return;
    }
    if (state.page !== "models") return;
    state.timers.push(setTimeout(async () => {
      try {
        await watch(await api(`/v1/models/jobs/${encodeURIComponent(job.job_id)}`));
      } catch (err) {
        actionError.replaceChildren(errorBox(err));
        trainButton.disabled = false;
      }
    }, JOB_POLL_MS));
  }

  async function train() {
    if (!confirmAction("Start training a new model? It is activated if it beats the active one.")) return;
    actionError.replaceChildren();
    trainButton.disabled = true;
    try {
      await watch(await api("/v1/models/train", { method: "POST", body: {} }));
    } catch (err) {
      trainButton.disabled = false;
      actionError.replaceChildren(errorBox(err));
    }
  }

  async function load() {
    let versions;
    try {
      versions = (await api("/v1/models")).versions;
    } catch (err) {
      tableBox.replaceChildren(errorBox(err));
      return;
    }
    const active = versions.find((v) => v.status === "active");
    // Rolling back: the newest version older than the active one that was not rejected.
    const previous = active && versions.find((v) => v.created_at < active.created_at && v.status !== "rejected");
    const m = (v, name) => (v.metrics || {})[name];
    const rows = versions.map((v) => h("tr", { "data-version": v.version, "data-status": v.status },
      h("td", {}, h("code", {}, v.version)),
      h("td", {}, h("span", { class: `badge ${v.status === "active" ? "ok" : v.status === "rejected" ? "bad" : "muted"}` }, v.status)),
      h("td", {}, when(v.created_at)),
      h("td", { class: "num" }, dec(m(v, "ndcg@10"))),
      h("td", { class: "num" }, dec((v.baseline_metrics || {})["ndcg@10"])),
      h("td", { class: "num" }, dec(m(v, "precision@10"))),
      h("td", { class: "num" }, dec(m(v, "recall@10"))),
      h("td", { class: "num" }, dec(m(v, "coverage"), 3)),
      h("td", { class: "num" }, `${num(v.n_users)} / ${num(v.n_items)} / ${num(v.n_events)}`),
      h("td", {}, h("code", { class: "params" }, Object.entries(v.params || {}).filter(([, x]) => typeof x !== "object").map(([k, x]) => `${k}=${x}`).join(" "))),
      h("td", {}, v.status === "active" ? "serving" : h("button", {
        type: "button", class: v === previous ? "danger" : "secondary",
        "aria-label": `${v === previous ? "Roll back to" : "Activate"} ${v.version}`,
        onclick: () => activate(v.version, v === previous ? "Roll back to" : "Activate"),
      }, v === previous ? "Roll back" : "Activate"))));
    tableBox.replaceChildren(table(null,
      ["Version", "Status", "Trained", "#ndcg@10", "#baseline", "#precision@10", "#recall@10", "#coverage", "#users / items / events", "Parameters", "Action"], rows));
    versionsChart(chart, versions);
  }
  await load();
}

function lookupForm(id, labelText, value, onsubmit) {
  const input = h("input", { id, value: value || "", required: true, autocomplete: "off", spellcheck: "false" });
  return h("form", {
    class: "inline", role: "search", onsubmit: (e) => {
      e.preventDefault();
      onsubmit(input.value.trim());
    },
  }, h("div", {}, h("label", { for: id }, labelText), input), h("button", { type: "submit" }, "Look up"));
}

function recommendationList(rec, listId) {
  return h("div", { id: listId },
    h("p", { class: "status-line" }, `strategy `, h("strong", { class: "strategy" }, rec.strategy),
      `, model ${rec.model_version || "none"}${rec.degraded ? ", degraded" : ""}`),
    h("ol", {}, rec.items.map((item) => h("li", { class: "rec-item" },
      courseLink(item.item_id, item.title), ` — score ${dec(item.score, 3)}`,
      item.reasons && item.reasons.length
        ? h("div", { class: "reasons" }, "because of: ",
          item.reasons.map((r, i) => [i ? "; " : "", courseLink(r.item_id, r.title), ` (${dec(r.weight, 3)})`]))
        : null))));
}

async function learnerPage(root, userId) {
  add(root, h("h1", {}, "Learner"),
    lookupForm("learner-id", "Learner id", userId, (id) => { if (id) location.hash = `#learner/${encodeURIComponent(id)}`; }));
  if (!userId) return;
  const enc = encodeURIComponent(userId);
  const portraitBox = h("section", { class: "card", id: "portrait", "aria-labelledby": "hport" }, h("h2", { id: "hport" }, "Portrait"));
  const timelineBox = h("section", { class: "card", id: "timeline", "aria-labelledby": "htime" }, h("h2", { id: "htime" }, "Recent events"));
  const recBox = h("section", { class: "card", id: "recommendations", "aria-labelledby": "hrec" }, h("h2", { id: "hrec" }, "Recommendations"));
  add(root, h("div", { class: "cols", style: "margin-top:1rem" }, portraitBox, recBox), h("div", { style: "margin-top:1rem" }, timelineBox));
  add(root, chatbotForm(userId));

  const portrait = api(`/v1/users/${enc}/profile`).then((p) => {
    const interests = (list) => table(null, ["Name", "#Affinity", "#Events"],
      list.map((i) => h("tr", {}, h("td", {}, i.name), h("td", { class: "num" }, dec(i.affinity, 2)), h("td", { class: "num" }, num(i.evidence)))));
    const a = p.activity;
    add(portraitBox, 
      h("p", {}, "Segment: ", p.segment ? h("strong", {}, `${p.segment.label} (#${p.segment.segment_id})`) : "none",
        " · labels: ", p.labels.length ? p.labels.map((l) => h("span", { class: "badge", title: l.rule }, l.label)) : "none"),
      h("p", { class: "muted" }, `${num(p.n_events)} events; first seen ${when(a.first_seen)}, last seen ${when(a.last_seen)}`,
        a.usual_gap_days !== null ? `; usually every ${dec(a.usual_gap_days, 1)} days` : ""),
      h("p", { class: "muted" }, a.windows.map((w) => `${w.days} days: ${w.active_days} active days, ${Object.values(w.events).reduce((s, x) => s + x, 0)} events`).join(" · ")),
      h("p", { class: "muted" }, `Journey: ${p.journey.n_consumed} consumed, ${p.journey.n_completed} completed, ${p.journey.open_intents.length} open intents`),
      h("h3", {}, "Interests: categories"), interests(p.interests.categories),
      h("h3", {}, "Interests: tags"), interests(p.interests.tags));
  }).catch((err) => add(portraitBox, errorBox(err)));

  const timeline = api(`/v1/users/${enc}/events?limit=50`).then((t) => {
    add(timelineBox, h("p", { class: "status-line" }, `${t.events.length} newest events, newest first`), h("div", { class: "tall", tabindex: "0", role: "region", "aria-label": "Recent events (scrollable)" }, table(null, ["Occurred", "Type", "Course", "#Value"],
      t.events.map((e) => h("tr", {}, h("td", {}, when(e.occurred_at)), h("td", {}, e.type),
        h("td", {}, courseLink(e.item_id, e.title)), h("td", { class: "num" }, e.value === null ? "" : e.value))))));
  }).catch((err) => add(timelineBox, errorBox(err)));

  const recs = api(`/v1/users/${enc}/recommendations?n=10&explain=true`)
    .then((rec) => add(recBox, recommendationList(rec, "user-recs")))
    .catch((err) => add(recBox, errorBox(err)));
  await Promise.all([portrait, timeline, recs]);
}

function chatbotForm(userId) {
  const field = (id, label, attrs = {}) => h("div", {}, h("label", { for: id }, label), h("input", { id, ...attrs }));
  const out = h("div", { id: "chatbot-result" });
  const list = (id) => document.getElementById(id).value.split(",").map((x) => x.trim()).filter(Boolean);
  const form = h("form", {
    class: "stack", id: "chatbot-form", onsubmit: async (e) => {
      e.preventDefault();
      const body = {
        user_id: userId,
        session_items: list("cb-session"),
        n: Number(document.getElementById("cb-n").value) || 10,
        exclude: list("cb-exclude"),
        explain: true,
      };
      const query = document.getElementById("cb-query").value.trim();
      if (query) body.query = query;
      const categories = list("cb-categories");
      if (categories.length) body.categories = categories;
      out.replaceChildren(h("p", { class: "muted" }, "Asking…"));
      try {
        const rec = await api("/v1/recommendations", { method: "POST", body });
        out.replaceChildren(recommendationList(rec, "chatbot-recs"),
          h("h3", {}, "Request"), h("pre", { class: "json" }, JSON.stringify(body, null, 2)),
          h("h3", {}, "Raw response"), h("pre", { class: "json", id: "chatbot-json" }, JSON.stringify(rec, null, 2)));
      } catch (err) {
        add(out.replaceChildren() || out, errorBox(err), err.body ? h("pre", { class: "json" }, JSON.stringify(err.body, null, 2)) : null);
      }
    },
  },
  field("cb-session", "Session items (comma-separated course ids)", { autocomplete: "off" }),
  field("cb-query", "Query (what the learner typed)", { autocomplete: "off" }),
  field("cb-categories", "Categories (comma-separated)", { autocomplete: "off" }),
  field("cb-exclude", "Exclude (comma-separated course ids)", { autocomplete: "off" }),
  field("cb-n", "Number of items", { type: "number", min: "1", max: "100", value: "10" }),
  h("div", {}, h("button", { type: "submit" }, "Ask as the chatbot")));
  return h("section", { class: "card", style: "margin-top:1rem", "aria-labelledby": "hchat" },
    h("h2", { id: "hchat" }, "Chatbot request"),
    h("p", { class: "muted" }, "POST /v1/recommendations as the chatbot would send it, for this learner."),
    form, out);
}

async function coursePage(root, itemId) {
  add(root, h("h1", {}, "Course"),
    lookupForm("course-id", "Course id", itemId, (id) => { if (id) location.hash = `#course/${encodeURIComponent(id)}`; }));
  if (!itemId) return;
  const enc = encodeURIComponent(itemId);
  const details = h("section", { class: "card", id: "course-details", "aria-labelledby": "hdet" }, h("h2", { id: "hdet" }, "Details"));
  const similar = h("section", { class: "card", id: "similar", "aria-labelledby": "hsim" }, h("h2", { id: "hsim" }, "Similar courses"));
  const audience = h("section", { class: "card", id: "audience", "aria-labelledby": "haud" }, h("h2", { id: "haud" }, "Audience: the learners most likely to take it"));
  add(root, h("div", { class: "cols", style: "margin-top:1rem" }, details, similar), h("div", { style: "margin-top:1rem" }, audience));
  await Promise.all([
    api(`/v1/items/${enc}`).then((item) => add(details, 
      h("p", {}, h("strong", { id: "course-title" }, item.title || "(no title)"), " ", h("code", {}, item.item_id),
        item.available ? "" : h("span", { class: "badge bad" }, "unavailable")),
      item.description ? h("p", {}, item.description) : null,
      h("p", { class: "tags" }, "Categories: ", item.categories.map((c) => h("span", {}, c))),
      h("p", { class: "tags" }, "Tags: ", item.tags.map((c) => h("span", {}, c))),
      item.family ? h("p", {}, `Family ${item.family}; other editions: `, item.editions.map((e, i) => [i ? ", " : "", courseLink(e)])) : null,
      Object.keys(item.attributes).length ? h("pre", { class: "json" }, JSON.stringify(item.attributes, null, 2)) : null,
    )).catch((err) => add(details, errorBox(err))),
    api(`/v1/items/${enc}/similar?n=10`).then((rec) => add(similar, recommendationList(rec, "similar-list")))
      .catch((err) => add(similar, errorBox(err))),
    api(`/v1/items/${enc}/audience?n=20`).then((a) => add(audience, 
      h("p", { class: "status-line" }, `strategy ${a.strategy}, model ${a.model_version}, ${a.basis} model courses used`),
      table(null, ["Learner", "#Score"], a.users.map((u) => h("tr", {}, h("td", {}, learnerLink(u.user_id)), h("td", { class: "num" }, dec(u.score, 3)))))))
      .catch((err) => add(audience, errorBox(err))),
  ]);
}

async function segmentsPage(root) {
  add(root, h("h1", {}, "Segments"));
  let data;
  try {
    data = await api("/v1/segments");
  } catch (err) {
    add(root, errorBox(err));
    return;
  }
  if (!data.segments.length) {
    add(root, h("p", { class: "muted" }, "No segments yet: they come with the first trained model."));
    return;
  }
  const members = h("section", { class: "card", id: "segment-members", style: "margin-top:1rem", hidden: true });
  const show = async (segment) => {
    members.hidden = false;
    members.replaceChildren(h("h2", {}, `Learners of segment ${segment.segment_id} (${segment.label})`));
    try {
      const page = await api(`/v1/segments/${segment.segment_id}/users?limit=50`);
      add(members, h("p", {}, page.users.map((u, i) => [i ? ", " : "", learnerLink(u)])));
    } catch (err) {
      add(members, errorBox(err));
    }
  };
  const lifts = (list) => list.slice(0, 5).map((c, i) => [i ? ", " : "", `${c.name} ×${dec(c.lift, 1)}`]);
  add(root, h("p", { class: "muted" }, `From model ${data.model_version}.`),
    h("section", { class: "card" }, table(null, ["#", "Label", "#Size", "Top categories (lift)", "Top tags (lift)", "Top courses", "Learners"],
      data.segments.map((s) => h("tr", { "data-segment": s.segment_id },
        h("td", {}, s.segment_id), h("td", {}, s.label), h("td", { class: "num" }, num(s.size)),
        h("td", {}, lifts(s.categories)), h("td", {}, lifts(s.tags)),
        h("td", {}, s.top_courses.slice(0, 5).map((c, i) => [i ? ", " : "", courseLink(c.item_id, c.title)])),
        h("td", {}, h("button", { type: "button", class: "secondary", "aria-label": `Show learners of segment ${s.segment_id}`, onclick: () => show(s) }, "Show")))))),
    members);
}

// --- routing ----------------------------------------------------------------------------------

const PAGES = { overview: overviewPage, models: modelsPage, learner: learnerPage, course: coursePage, segments: segmentsPage };

async function route() {
  if (!sessionStorage.getItem(KEY)) return signOut();
  const [name, ...rest] = (location.hash.replace(/^#/, "") || "overview").split("/");
  const page = PAGES[name] ? name : "overview";
  const arg = rest.length ? decodeURIComponent(rest.join("/")) : "";
  stopTimers();
  state.page = page;
  if (page !== "overview") state.overview = null;
  for (const link of document.querySelectorAll("#nav a")) {
    if (link.dataset.page === page) link.setAttribute("aria-current", "page");
    else link.removeAttribute("aria-current");
  }
  const root = document.getElementById("page");
  const fresh = h("div", { "data-page": page });
  root.replaceChildren(fresh);
  document.title = `${page[0].toUpperCase()}${page.slice(1)} · recsvc dashboard`;
  try {
    await PAGES[page](fresh, arg);
  } catch (err) {
    add(fresh, errorBox(err));
  }
  fresh.dataset.loaded = "true";
}

async function start() {
  document.getElementById("sign-in-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    const input = document.getElementById("api-key");
    const error = document.getElementById("sign-in-error");
    error.textContent = "";
    try {
      await signIn(input.value.trim());
      input.value = "";
      await route();
      document.getElementById("main").focus();
    } catch (err) {
      error.textContent = err instanceof ApiError && err.status === 403
        ? "This key has no read scope: the dashboard needs a read or admin key."
        : problemText(err);
    }
  });
  document.getElementById("sign-out").addEventListener("click", () => signOut());
  // The skip link moves focus only: the URL's fragment is the page's route.
  document.querySelector(".skip").addEventListener("click", (event) => {
    event.preventDefault();
    document.getElementById("main").focus();
  });
  window.addEventListener("hashchange", () => { if (sessionStorage.getItem(KEY)) route(); });
  if (sessionStorage.getItem(KEY)) {
    try {
      await signIn(sessionStorage.getItem(KEY));
      await route();
    } catch (err) {
      signOut(problemText(err));
    }
  } else {
    signOut();
  }
}

start();
