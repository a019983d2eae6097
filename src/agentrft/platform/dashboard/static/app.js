// agentrft dashboard: runs list, live charts (two runs overlaid), trajectories, one trajectory's tokens.
//
// No framework and no build step. Every value from the server reaches the DOM through textContent or
// setAttribute (el() below): tool results and model output are untrusted text, never HTML.
// Views poll: the runs list every 2 s, a run's metrics every 2 s (only the steps it does not have yet).
// Tests read window.dashboard.charts[id] (the uPlot instances) and the data-* attributes of each chart.
"use strict";

(() => {
  const API = "/dashboard/api";
  const KEY_STORAGE = "agentrft.dashboard.key";
  const POLL_MS = 2000;
  const PAGE = 50;
  const COLORS = ["#2563eb", "#dc2626", "#16a34a", "#9333ea", "#ea580c", "#0891b2", "#ca8a04", "#db2777"];

  // Which metrics each chart shows: [split, metric name, label]; `prefix` charts every name under it.
  const CHARTS = [
    { id: "reward", title: "Reward", series: [["train", "reward_mean", "train"], ["validation", "reward_mean", "validation"]] },
    { id: "sub_rewards", title: "Reward per sub-grader (train)", prefix: ["train", "reward/"] },
    { id: "accuracy", title: "Accuracy", series: [["train", "accuracy", "train"], ["validation", "accuracy", "validation"]] },
    { id: "tool_calls", title: "Tool calls per rollout", series: [["train", "tool_calls_per_rollout", "train"], ["validation", "tool_calls_per_rollout", "validation"]] },
    { id: "tool_errors", title: "Tool errors", series: [["train", "tool_errors_per_rollout", "per rollout (train)"], ["validation", "tool_error_rate", "rate (validation)"]] },
    { id: "tokens", title: "Tokens per rollout", series: [["train", "tokens_mean", "all (train)"], ["train", "sampled_tokens_mean", "sampled (train)"], ["validation", "tokens_mean", "all (validation)"], ["train", "tokens_trained", "trained (SFT)"]] },
    { id: "latency", title: "Rollout latency (s)", series: [["train", "rollout_span_s_mean", "span (train)"], ["validation", "rollout_span_s_mean", "span (validation)"], ["validation", "seconds_per_rollout", "per rollout (validation)"]] },
    { id: "step_time", title: "Step time (s)", series: [["train", "sampling_s", "sampling"], ["train", "grading_s", "grading"], ["train", "training_s", "training"], ["train", "step_time_s", "whole step"]] },
    { id: "kl", title: "KL", series: [["train", "approx_kl", "to the sampler (approx)"], ["train", "kl_ref", "to the reference"]] },
    { id: "entropy", title: "Entropy of sampled positions", series: [["train", "entropy", "entropy"]] },
    { id: "clip_fraction", title: "Clip fraction", series: [["train", "clip_fraction", "clip fraction"]] },
    { id: "loss", title: "Loss", series: [["train", "loss", "loss"]] },
    { id: "grad_norm", title: "Gradient norm", series: [["train", "grad_norm", "grad norm"]] },
    { id: "signal", title: "Learning signal", series: [["train", "trained_rollouts", "trained rollouts"], ["train", "zero_variance_groups", "zero-variance groups"], ["train", "infra_failures", "infra failures"], ["train", "grader_errors", "grader errors"]] },
    { id: "preference", title: "Preference (DPO)", series: [["train", "reward_accuracy", "reward accuracy"], ["train", "reward_margin", "reward margin"]] },
    { id: "lr", title: "Learning rate", series: [["train", "lr", "lr"]] },
  ];

  const STEP_INCRS = [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000, 20000, 50000]; // whole steps only

  const state = { token: 0, timers: [], charts: {}, resizers: [] };
  window.dashboard = { charts: state.charts, CHARTS };

  // -- helpers --------------------------------------------------------------------------------------
  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === null || v === undefined || v === false) continue;
      if (k === "class") node.className = v;
      else if (k === "text") node.textContent = String(v);
      else if (k === "dataset") Object.assign(node.dataset, v);
      else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
      else node.setAttribute(k, v === true ? "" : String(v));
    }
    for (const c of children.flat()) {
      if (c === null || c === undefined || c === false) continue;
      node.append(c instanceof Node ? c : document.createTextNode(String(c)));
    }
    return node;
  }
  const $ = (sel) => document.querySelector(sel);
  const fmt = (v, digits = 3) => (v === null || v === undefined ? "–" : typeof v === "number" ? (Number.isInteger(v) ? String(v) : v.toFixed(digits)) : String(v));
  const when = (t) => (t ? new Date(t * 1000).toLocaleString() : "–");
  const runHref = (id) => "#/runs/" + encodeURIComponent(id);
  const trajHref = (id, tid) => runHref(id) + "/trajectories/" + encodeURIComponent(tid);
  const badge = (status) => el("span", { class: "badge " + (status || ""), text: status || "?" });
  const stat = (label, value) => el("div", { class: "stat" }, el("b", { text: value }), el("span", { text: label }));

  class ApiError extends Error {
    constructor(status, message) { super(message); this.status = status; }
  }

  async function api(path, params) {
    const url = new URL(API + path, location.origin);
    for (const [k, v] of Object.entries(params || {})) if (v !== "" && v !== null && v !== undefined) url.searchParams.set(k, v);
    const headers = { Accept: "application/json" };
    const key = localStorage.getItem(KEY_STORAGE);
    if (key) headers.Authorization = "Bearer " + key;
    const res = await fetch(url, { headers });
    if (res.status === 401) {
      $("#key-prompt").hidden = false;
      $("#api-key").focus();
      throw new ApiError(401, "this server needs an API key");
    }
    const body = await res.json().catch(() => null);
    if (!res.ok) throw new ApiError(res.status, (body && body.error && body.error.message) || res.statusText);
    $("#key-prompt").hidden = true;
    return body;
  }

  function showError(e) {
    const box = $("#error");
    if (!e) { box.hidden = true; return; }
    if (e.status === 401) return; // the key prompt says it
    box.textContent = String(e.message || e);
    box.hidden = false;
  }

  function every(ms, fn, token) {
    const tick = async () => {
      if (token !== state.token) return;
      try { await fn(); showError(null); } catch (e) { showError(e); }
      if (token === state.token) state.timers.push(setTimeout(tick, ms));
    };
    state.timers.push(setTimeout(tick, ms));
  }

  function crumbs(...parts) {
    const nav = $("#crumbs");
    nav.replaceChildren();
    parts.forEach(([label, href], i) => {
      if (i) nav.append(el("span", { text: "/" }));
      nav.append(href ? el("a", { href, text: label }) : el("span", { text: label }));
    });
  }

  // -- routing --------------------------------------------------------------------------------------
  function route() {
    state.token += 1;
    state.timers.forEach(clearTimeout);
    state.timers = [];
    for (const id of Object.keys(state.charts)) { state.charts[id].destroy(); delete state.charts[id]; }
    state.resizers.forEach((f) => window.removeEventListener("resize", f));
    state.resizers = [];
    showError(null);
    const parts = location.hash.replace(/^#\/?/, "").split("/").filter(Boolean).map(decodeURIComponent);
    const view = $("#view");
    view.replaceChildren();
    const token = state.token;
    const done = (p) => p.catch((e) => { if (token === state.token) showError(e); });
    if (parts[0] === "runs" && parts.length === 4 && parts[2] === "trajectories") done(trajectoryView(view, parts[1], parts[3], token));
    else if (parts[0] === "runs" && parts.length === 2) done(runView(view, parts[1], token));
    else done(runsView(view, token));
  }

  // -- runs list ------------------------------------------------------------------------------------
  async function runsView(view, token) {
    crumbs(["Runs", null]);
    const tbody = el("tbody");
    const table = el("table", { id: "runs-table" },
      el("thead", {}, el("tr", {}, ["Run", "Status", "Method", "Model", "Created", "Step", "Train reward", "Val reward"].map(
        (h, i) => el("th", { class: i >= 5 ? "num" : null, text: h })))), tbody);
    view.append(el("div", { class: "panel" }, el("h2", { text: "Runs" }), table));
    const refresh = async () => {
      const { data } = await api("/runs");
      if (token !== state.token) return;
      tbody.replaceChildren(...data.map((r) => el("tr", { dataset: { run: r.id } },
        el("td", {}, el("a", { href: runHref(r.id), text: r.name })),
        el("td", {}, badge(r.status), r.error ? el("div", { class: "err", text: r.error }) : null),
        el("td", { text: r.method || "–" }), el("td", { class: "mono", text: r.model || "–" }),
        el("td", { text: when(r.created_at) }),
        el("td", { class: "num", text: r.latest_step === null ? "–" : `${r.latest_step}${r.total_steps ? " / " + r.total_steps : ""}` }),
        el("td", { class: "num", text: fmt(r.latest_reward) }), el("td", { class: "num", text: fmt(r.latest_val_reward) }))));
      if (!data.length) tbody.append(el("tr", {}, el("td", { colspan: 8, class: "muted", text: "No runs yet." })));
      table.dataset.count = String(data.length);
      table.dataset.loaded = "1";
    };
    await refresh();
    every(POLL_MS, refresh, token);
  }

  // -- one run --------------------------------------------------------------------------------------
  // A run's metrics on the client: {split: Map(step -> {name: value})}, merged from incremental polls.
  function mergeMetrics(store, body) {
    let last = store.lastStep || 0;
    for (const [split, { steps, series }] of Object.entries(body.splits)) {
      const frame = store[split] || (store[split] = new Map());
      steps.forEach((step, i) => {
        const row = frame.get(step) || {};
        for (const [name, values] of Object.entries(series)) if (values[i] !== null) row[name] = values[i];
        frame.set(step, row);
        if (split === "train") last = Math.max(last, step);
      });
    }
    store.lastStep = last;
  }

  async function pollMetrics(runId, store) {
    mergeMetrics(store, await api(`/runs/${encodeURIComponent(runId)}/metrics`, { since_step: store.lastStep || 0 }));
  }

  function seriesOf(chart, stores) {
    // [{split, name, label, run}] for every series that has data in one of the runs shown
    const specs = [];
    for (const [r, store] of stores.entries()) {
      let list = chart.series || [];
      if (chart.prefix) {
        const [split, prefix] = chart.prefix;
        const names = new Set();
        for (const row of (store[split] || new Map()).values()) for (const n of Object.keys(row)) if (n.startsWith(prefix)) names.add(n);
        list = [...names].sort().map((n) => [split, n, n.slice(prefix.length)]);
      }
      for (const [split, name, label] of list) {
        const frame = store[split];
        if (frame && [...frame.values()].some((row) => row[name] !== undefined)) specs.push({ split, name, label, run: r });
      }
    }
    return specs;
  }

  function chartData(specs, stores) {
    const steps = new Set();
    for (const s of specs) for (const [step, row] of stores[s.run][s.split]) if (row[s.name] !== undefined) steps.add(step);
    const xs = [...steps].sort((a, b) => a - b);
    return [xs, ...specs.map((s) => xs.map((x) => { const row = stores[s.run][s.split].get(x); return row && row[s.name] !== undefined ? row[s.name] : null; }))];
  }

  function drawChart(card, chart, stores, names, method) {
    const specs = seriesOf(chart, stores);
    const box = card.querySelector(".chart-box");
    const empty = card.querySelector(".chart-empty");
    if (!specs.length) {
      if (state.charts[chart.id]) { state.charts[chart.id].destroy(); delete state.charts[chart.id]; }
      box.replaceChildren();
      const wanted = chart.prefix ? `${chart.prefix[1]}<name>` : chart.series.map((s) => s[1]).join(", ");
      empty.textContent = stores[0].lastStep ? `No data: this ${method || ""} run logs none of ${wanted}.` : "No data yet: waiting for the first step.";
      empty.hidden = false;
      card.dataset.points = "0";
      return;
    }
    empty.hidden = true;
    const data = chartData(specs, stores);
    const signature = specs.map((s) => `${s.run}:${s.split}:${s.name}`).join("|");
    let u = state.charts[chart.id];
    if (u && u._signature !== signature) { u.destroy(); u = null; }
    if (!u) {
      const colorOf = new Map();
      const series = [{ label: "step" }, ...specs.map((s) => {
        const key = `${s.split}:${s.name}`;
        if (!colorOf.has(key)) colorOf.set(key, COLORS[colorOf.size % COLORS.length]);
        return { label: s.label + (stores.length > 1 ? ` · ${names[s.run]}` : ""), stroke: colorOf.get(key), width: 1.5,
          dash: s.run ? [6, 4] : undefined, spanGaps: true, points: { show: data[0].length < 40 } };
      })];
      box.replaceChildren();
      u = new uPlot({ width: Math.max(280, box.clientWidth || card.clientWidth - 20), height: 190, series,
        scales: { x: { time: false } }, axes: [{ label: "step", incrs: STEP_INCRS }, { size: 56 }], legend: { live: true } }, data, box);
      u._signature = signature;
      state.charts[chart.id] = u;
    } else {
      u.setData(data);
    }
    const first = data[1].filter((v) => v !== null);
    card.dataset.points = String(data[0].length);
    card.dataset.series = String(specs.length);
    card.dataset.runs = String(new Set(specs.map((s) => s.run)).size);
    card.dataset.last = first.length ? String(first[first.length - 1]) : "";
  }

  async function runView(view, runId, token) {
    const path = `/runs/${encodeURIComponent(runId)}`;
    let run = await api(path);
    if (token !== state.token) return;
    crumbs(["Runs", "#/"], [run.name, null]);
    const header = el("div", { class: "panel", id: "run-header" });
    const overlaySelect = el("select", { id: "overlay" }, el("option", { value: "", text: "none" }));
    const chartsBox = el("div", { class: "charts", id: "charts" });
    const cards = new Map(CHARTS.map((c) => [c.id, el("div", { class: "chart-card", dataset: { chart: c.id } },
      el("h3", { text: c.title }), el("div", { class: "chart-box" }), el("div", { class: "chart-empty", hidden: true }))]));
    chartsBox.append(...cards.values());
    const trajPanel = el("div", { class: "panel", id: "trajectories" });
    const details = el("div", { class: "grid2" });
    view.append(header, el("div", { class: "overlay-bar" }, el("label", { for: "overlay", text: "Overlay a second run:" }), overlaySelect),
      chartsBox, trajPanel, details);

    const renderHeader = () => {
      header.replaceChildren(el("h1", {}, run.name, " ", badge(run.status)),
        el("p", { class: run.status === "failed" ? "err" : "muted", text: run.message || "", hidden: !run.message }),
        el("div", { class: "row" }, stat("method", run.method || "–"), stat("model", run.model || "–"),
          stat("step", `${run.latest_step}${run.total_steps ? " / " + run.total_steps : ""}`),
          stat("train reward", fmt(run.latest_reward)), stat("val reward", fmt(run.latest_val_reward)),
          stat("created", when(run.created_at))));
    };
    renderHeader();

    const stores = [{}];
    const names = [run.name];
    const redraw = () => { for (const c of CHARTS) drawChart(cards.get(c.id), c, stores, names, run.method); chartsBox.dataset.loaded = "1"; };
    trajectoriesPanel(trajPanel, runId, run, token); // their requests run while the metrics load
    detailsPanels(details, runId, run, token);
    await pollMetrics(runId, stores[0]);
    if (token !== state.token) return;
    redraw();
    const onResize = () => { for (const [id, u] of Object.entries(state.charts)) { const w = cards.get(id).querySelector(".chart-box").clientWidth; if (w) u.setSize({ width: w, height: 190 }); } };
    window.addEventListener("resize", onResize);
    state.resizers.push(onResize);

    // the overlay: another run's series, dashed, on the same charts
    let overlayId = "";
    api("/runs").then(({ data }) => {
      for (const r of data) if (r.id !== runId) overlaySelect.append(el("option", { value: r.id, text: `${r.name} (${r.method || "?"}, ${r.status})` }));
    }).catch(showError);
    overlaySelect.addEventListener("change", async () => {
      overlayId = overlaySelect.value;
      stores.length = 1; names.length = 1;
      if (overlayId) {
        const other = {};
        await pollMetrics(overlayId, other);
        stores.push(other);
        names.push(overlaySelect.selectedOptions[0].textContent.split(" (")[0]);
      }
      if (token === state.token) redraw();
    });

    every(POLL_MS, async () => {
      if (run.status === "running" || run.status === "queued") {
        await pollMetrics(runId, stores[0]);
        run = await api(path);
        renderHeader();
      }
      if (stores[1] && overlayId) await pollMetrics(overlayId, stores[1]);
      if (token === state.token) redraw();
    }, token);
  }

  function trajectoriesPanel(panel, runId, run, token) {
    const q = { split: "", step: "", reward_min: "", reward_max: "", error: "", sort: "id", order: "desc", offset: 0 };
    const input = (name, label, type = "text") => el("label", {}, label, el("input", { name, type, step: "any" }));
    const select = (name, label, options) => el("label", {}, label, el("select", { name }, options.map(([v, t]) => el("option", { value: v, text: t }))));
    const form = el("form", { class: "filters", id: "traj-filters" },
      select("split", "split", [["", "all"], ["train", "train"], ["validation", "validation"]]),
      input("step", "step", "number"), input("reward_min", "reward ≥", "number"), input("reward_max", "reward ≤", "number"),
      select("error", "error", [["", "any or none"], ...run.error_filters.map((f) => [f, f])]),
      select("sort", "sort by", [["id", "logged"], ["step", "step"], ["reward", "reward"]]),
      select("order", "order", [["desc", "descending"], ["asc", "ascending"]]),
      el("button", { type: "submit", text: "Apply" }));
    const tbody = el("tbody");
    const table = el("table", { id: "traj-table" }, el("thead", {}, el("tr", {},
      ["#", "Step", "Split", "Task", "Sample", "Reward", "Advantage", "Tool calls", "Tool errors", "Errors", "Tokens (sampled)", "Stop"].map(
        (h, i) => el("th", { class: [0, 1, 4, 5, 6, 7, 8, 10].includes(i) ? "num" : null, text: h })))), tbody);
    const info = el("span", { class: "muted" });
    const prev = el("button", { type: "button", text: "← Previous" });
    const next = el("button", { type: "button", text: "Next →" });
    panel.append(el("h2", { text: "Trajectories" }), form, table, el("div", { class: "pager" }, prev, next, info,
      el("button", { type: "button", text: "Refresh", onclick: () => load().catch(showError) })));

    const countButton = el("button", { type: "button", text: "Count all", hidden: true, onclick: () => load(true).catch(showError) });
    panel.querySelector(".pager").append(countButton);

    async function load(count) {
      const page = await api(`/runs/${encodeURIComponent(runId)}/trajectories`, { ...q, limit: PAGE, count: count ? "true" : "" });
      if (token !== state.token) return;
      tbody.replaceChildren(...page.data.map((t) => el("tr", { dataset: { id: t.id } },
        el("td", { class: "num" }, el("a", { href: trajHref(runId, t.id), text: t.id })),
        el("td", { class: "num", text: t.step }), el("td", { text: t.split }), el("td", { class: "mono", text: t.task_id || "–" }),
        el("td", { class: "num", text: fmt(t.group_index) }), el("td", { class: "num", text: fmt(t.reward) }),
        el("td", { class: "num", text: Array.isArray(t.advantage) ? t.advantage.map((a) => fmt(a, 2)).join(" ") : fmt(t.advantage) }),
        el("td", { class: "num", text: t.tool_calls }), el("td", { class: "num", text: t.tool_errors }),
        el("td", {}, t.errors.map((e) => el("span", { class: "chip", text: e }))),
        el("td", { class: "num", text: `${t.tokens} (${t.sampled_tokens})` }), el("td", { text: t.stop_reason || "–" }))));
      if (!page.data.length) tbody.append(el("tr", {}, el("td", { colspan: 12, class: "muted", text: "No trajectories match." })));
      const shown = page.data.length ? `${page.offset + 1}–${page.offset + page.data.length}` : "none";
      info.textContent = page.total !== null ? `${shown} of ${page.total}` : `${shown}${page.has_more ? " of more" : ""}`;
      countButton.hidden = page.total !== null;
      prev.disabled = page.offset === 0;
      next.disabled = !page.has_more;
      table.dataset.total = page.total === null ? "" : String(page.total);
      table.dataset.loaded = "1";
    }
    form.addEventListener("submit", (ev) => {
      ev.preventDefault();
      for (const k of ["split", "step", "reward_min", "reward_max", "error", "sort", "order"]) q[k] = form.elements[k].value;
      q.offset = 0;
      load().catch(showError);
    });
    prev.addEventListener("click", () => { q.offset = Math.max(0, q.offset - PAGE); load().catch(showError); });
    next.addEventListener("click", () => { q.offset += PAGE; load().catch(showError); });
    load().catch(showError);
  }

  function detailsPanels(box, runId, run, token) {
    const kv = (obj) => el("table", {}, el("tbody", {}, Object.entries(obj).map(([k, v]) =>
      el("tr", {}, el("th", { text: k }), el("td", { class: "mono", text: v === null ? "–" : typeof v === "object" ? JSON.stringify(v) : String(v) })))));
    const lineage = { dataset: run.lineage.dataset, grader: run.lineage.grader, "base model": run.lineage.base_model };
    for (const [k, v] of Object.entries(run.lineage.all || {})) if (!["dataset", "grader", "base_model"].includes(k)) lineage[k] = v;
    const ckpts = el("table", { id: "checkpoints" }, el("thead", {}, el("tr", {}, ["Step", "Metric", "Best", "On disk", "Path"].map((h) => el("th", { text: h })))),
      el("tbody", {}, run.checkpoints.map((c) => el("tr", {}, el("td", { text: c.step }), el("td", { text: fmt(c.metric) }),
        el("td", { text: c.is_best ? "best" : "" }), el("td", { text: c.exists ? "yes" : "deleted" }), el("td", { class: "mono", text: c.path })))));
    if (!run.checkpoints.length) ckpts.append(el("tr", {}, el("td", { colspan: 5, class: "muted", text: "No checkpoints yet." })));
    const events = el("tbody");
    let offset = 0;
    const more = el("button", { type: "button", text: "Older events" });
    const loadEvents = async () => {
      const page = await api(`/runs/${encodeURIComponent(runId)}/events`, { limit: 20, offset });
      if (token !== state.token) return;
      events.append(...page.data.map((e) => el("tr", {}, el("td", { text: when(e.time) }), el("td", { text: e.step === null ? "" : e.step }),
        el("td", { text: e.kind }), el("td", { text: e.message }))));
      offset += page.data.length;
      more.disabled = offset >= page.total;
    };
    more.addEventListener("click", () => loadEvents().catch(showError));
    box.append(
      el("div", {}, el("div", { class: "panel" }, el("h2", { text: "Config (resolved)" }), el("pre", { id: "config", text: JSON.stringify(run.config, null, 2) }))),
      el("div", {},
        el("div", { class: "panel" }, el("h2", { text: "Lineage" }), kv(lineage)),
        el("div", { class: "panel" }, el("h2", { text: "Checkpoints" }), ckpts),
        el("div", { class: "panel" }, el("h2", { text: "Events" }), el("table", { id: "events" },
          el("thead", {}, el("tr", {}, ["Time", "Step", "Kind", "Message"].map((h) => el("th", { text: h })))), events), el("div", { class: "pager" }, more))));
    loadEvents().catch(showError);
  }

  // -- one trajectory -------------------------------------------------------------------------------
  async function trajectoryView(view, runId, tid, token) {
    const [run, t] = await Promise.all([api(`/runs/${encodeURIComponent(runId)}`),
      api(`/runs/${encodeURIComponent(runId)}/trajectories/${encodeURIComponent(tid)}`)]);
    if (token !== state.token) return;
    crumbs(["Runs", "#/"], [run.name, runHref(runId)], [`trajectory ${t.id}`, null]);
    const grade = t.grade || {};
    const meta = grade.metadata || {};
    const flags = Object.entries(meta.errors || {}).filter(([, v]) => v).map(([k]) => k);
    const advText = Array.isArray(t.advantage) ? t.advantage.map((a) => fmt(a)).join(", ") : t.advantage === null ? "not trained on" : fmt(t.advantage);
    const header = el("div", { class: "panel", id: "trajectory" }, el("h1", { text: `Trajectory ${t.id}` }),
      el("div", { class: "row" }, stat("step", String(t.step)), stat("split", t.split), stat("task", t.task_id || "–"),
        stat("sample", fmt(t.group_index)), stat("reward", fmt(t.reward)), stat("advantage", advText),
        stat("stop", t.stop_reason || "–"), stat("turns", fmt(t.turns)),
        stat("total time", t.timings && t.timings.total_s !== undefined ? fmt(t.timings.total_s) + " s" : "–")),
      t.error_labels.length ? el("div", {}, t.error_labels.map((e) => el("span", { class: "chip", text: e }))) : null);

    const subRows = Object.entries(grade.sub_rewards || {}).map(([k, v]) => el("tr", { dataset: { name: k } }, el("th", { text: k }), el("td", { class: "num", text: fmt(v, 4) })));
    const gradePanel = el("div", { class: "panel", id: "grade" }, el("h2", { text: "Grade" }),
      el("div", { class: "row" }, stat("reward", fmt(grade.reward, 4)), stat("grader", meta.grader_version || "–"),
        stat("grading time", meta.execution_time !== undefined ? fmt(meta.execution_time, 4) + " s" : "–")),
      el("h3", { text: "Sub-rewards" }),
      subRows.length ? el("table", { id: "sub-rewards" }, el("tbody", {}, subRows)) : el("p", { class: "muted", text: "No sub-rewards." }),
      flags.length ? el("p", { class: "err" }, "Error flags: ", flags.join(", ")) : null,
      (meta.error_messages || []).map((m) => el("pre", { class: "err", text: m })),
      grade.turn_rewards ? el("p", {}, "Per-turn rewards: ", grade.turn_rewards.map((r) => fmt(r)).join(", ")) : null,
      (t.errors || []).length ? el("div", {}, el("h3", { text: "Rollout errors" }),
        t.errors.map((e) => el("pre", { class: "err", text: `${e.kind}${e.turn !== null && e.turn !== undefined ? " (turn " + e.turn + ")" : ""}: ${e.message}` }))) : null);

    const records = new Map((t.tool_calls || []).map((c) => [c.id, c]));
    const callView = (c) => el("div", { class: "call" },
      el("div", { class: "mono" }, el("b", { text: c.name }), `(${JSON.stringify(c.arguments)})`),
      el("div", { class: "result" }, c.error ? el("div", { class: "err", text: `${c.error.kind}: ${c.error.message}` }) : null,
        el("pre", { class: "tool-result", text: c.result === null ? "(no result)" : c.result }),
        el("div", { class: "muted", text: `turn ${c.turn} · ${fmt((c.latency_s || 0) * 1000, 1)} ms` })));
    const messages = (t.messages || []).map((m) => {
      const calls = (m.tool_calls || []).map((tc) => {
        const rec = records.get(tc.id);
        if (rec) return callView(rec);
        const fn = tc.function || tc;
        return el("div", { class: "call mono", text: `${fn.name}(${typeof fn.arguments === "string" ? fn.arguments : JSON.stringify(fn.arguments)})` });
      });
      const content = typeof m.content === "string" ? m.content : m.content === null || m.content === undefined ? "" : JSON.stringify(m.content);
      return el("div", { class: "msg role-" + m.role }, el("div", { class: "role", text: m.role + (m.tool_call_id ? ` · ${m.tool_call_id}` : "") }),
        content ? el("pre", { text: content }) : null, calls);
    });
    const convo = el("div", { class: "panel", id: "conversation" }, el("h2", { text: "Conversation" }), messages);

    const toolTable = el("div", { class: "panel" }, el("h2", { text: `Tool calls (${(t.tool_calls || []).length})` }),
      (t.tool_calls || []).length ? el("table", { id: "tool-calls" }, el("thead", {}, el("tr", {}, ["Turn", "Tool", "Arguments", "Result", "Latency", "Error"].map((h) => el("th", { text: h })))),
        el("tbody", {}, t.tool_calls.map((c) => el("tr", {}, el("td", { text: c.turn }), el("td", { class: "mono", text: c.name }),
          el("td", {}, el("pre", { text: JSON.stringify(c.arguments, null, 1) })), el("td", {}, el("pre", { class: "tool-result", text: c.result === null ? "" : c.result })),
          el("td", { class: "num", text: fmt((c.latency_s || 0) * 1000, 1) + " ms" }),
          el("td", { class: c.error ? "err" : "", text: c.error ? `${c.error.kind}: ${c.error.message}` : "" }))))) : el("p", { class: "muted", text: "No tool calls." }));

    view.append(header, el("div", { class: "grid2" }, el("div", {}, convo, toolTable), el("div", {}, gradePanel)), tokenPanel(t.tokens));
    Object.assign(header.dataset, { loaded: "1", id: String(t.id) }); // the marker tests and the benchmark wait for
  }

  function tokenPanel(tok) {
    const counts = { prompt: 0, sampled: 0, env: 0 };
    const frag = document.createDocumentFragment();
    tok.ids.forEach((id, i) => {
      const kind = tok.kinds[i];
      counts[kind] = (counts[kind] || 0) + 1;
      let title = `token ${id} · ${kind}`;
      let cls = "tok k-" + kind;
      if (kind === "sampled") {
        const lp = tok.logprobs[i];
        const adv = tok.advantages[i];
        if (lp !== null && lp !== undefined) title += ` · logprob ${lp.toFixed(4)} (p ${Math.exp(lp).toFixed(3)})`;
        title += adv === null || adv === undefined ? " · not trained on" : ` · advantage ${adv.toFixed(4)}`;
        if (adv > 0) cls += " adv-pos"; else if (adv < 0) cls += " adv-neg";
      }
      const text = tok.text ? tok.text[i] : `[${id}]`;
      frag.append(el("span", { class: cls, title, dataset: { i: String(i) }, text }));
    });
    const legend = el("div", { class: "legend" }, ["prompt", "sampled", "env"].map((k) =>
      el("span", {}, el("span", { class: "tok k-" + k, text: k }), ` ${counts[k] || 0}`)),
      el("span", { class: "muted", text: "hover a token for its id, logprob and advantage; underline: advantage > 0 green, < 0 red" }));
    const note = tok.withheld ? el("p", { class: "muted", id: "tokens-withheld", text: `No token ids: this run stored its trajectories with privacy.store: ${tok.withheld} (token ids decode to the text they stand for)` })
      : tok.decode_error ? el("p", { class: "muted", text: `Showing token ids: ${tok.decode_error}` }) : null;
    const box = el("div", { class: "tokens", id: "tokens" });
    box.append(frag);
    return el("div", { class: "panel" }, el("h2", { text: `Tokens (${tok.ids.length})` }), legend, note, box);
  }

  // -- start ----------------------------------------------------------------------------------------
  function start() {
    const keyInput = $("#api-key");
    keyInput.value = localStorage.getItem(KEY_STORAGE) || "";
    $("#key-form").addEventListener("submit", (ev) => {
      ev.preventDefault();
      const key = keyInput.value.trim();
      if (key) localStorage.setItem(KEY_STORAGE, key); else localStorage.removeItem(KEY_STORAGE);
      $("#key-prompt").hidden = true;
      route();
    });
    window.addEventListener("hashchange", route);
    route();
  }
  start();
})();
