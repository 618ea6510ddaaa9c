// labd monitor page: polls api/state every second and redraws; read-only, no dependencies.
"use strict";

const POLL_MS = 1000;
const SVG_NS = "http://www.w3.org/2000/svg";
const $ = (id) => document.getElementById(id);
let plotSystem = decodeURIComponent((location.hash.match(/plot=([^&]+)/) || [])[1] || "");

// ---------------------------------------------------------------- formatting

function rate(x) {
  if (x >= 100) return x.toFixed(0);
  if (x >= 10) return x.toFixed(1);
  return x.toFixed(2);
}

function count(n) {
  return n === null || n === undefined ? "–" : Number(n).toLocaleString("en");
}

function bytes(b) {
  if (b === null || b === undefined) return "–";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (b >= 1024 && i < units.length - 1) { b /= 1024; i += 1; }
  return `${b.toFixed(i ? 1 : 0)} ${units[i]}`;
}

function duration(s) {
  if (s < 60) return `${Math.round(s)} s`;
  if (s < 3600) return `${Math.floor(s / 60)} min ${Math.round(s % 60)} s`;
  if (s < 86400) return `${Math.floor(s / 3600)} h ${Math.floor((s % 3600) / 60)} min`;
  return `${Math.floor(s / 86400)} d ${Math.floor((s % 86400) / 3600)} h`;
}

function ago(t, now) {
  return t ? `${duration(Math.max(0, now - t))} ago` : "–";
}

function when(t) {
  return t ? new Date(t * 1000).toLocaleString() : "–";
}

function clientName(c) {
  // A client without a CURVE key is known by its routing identity (hex); labd's own clients'
  // identities start with "labd-" (6c6162642d).
  if (/^[0-9a-f]{20,}$/.test(c)) {
    return c.startsWith("6c6162642d") ? `client ${c.slice(10, 18)}` : `id ${c.slice(0, 8)}`;
  }
  return c;
}

function el(tag, attrs, text) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
  if (text !== undefined) e.textContent = text;
  return e;
}

function svgEl(tag, attrs, text) {
  const e = document.createElementNS(SVG_NS, tag);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
  if (text !== undefined) e.textContent = text;
  return e;
}

// ---------------------------------------------------------------- plots

function tick(v) {
  const a = Math.abs(v);
  if (a !== 0 && (a < 1e-3 || a >= 1e4)) return v.toExponential(1);
  return Number(v.toPrecision(3)).toString();
}

// One panel at (x0, y0), size w x h: a title, a frame, min/max labels, each series as a line
// (with dots when short). series: [{values, xs (optional), cls, label (optional)}]; labelled
// series are named after the title, in their colour.
function panel(svg, x0, y0, w, h, title, series, xLabel) {
  const g = svgEl("g", { class: "panel", transform: `translate(${x0},${y0})` });
  svg.appendChild(g);
  const head = svgEl("text", { x: 0, y: 12, class: "title" }, title);
  for (const s of series.filter((s) => s.label)) {
    head.appendChild(svgEl("tspan", { class: s.cls }, ` ${s.label}`));
  }
  g.appendChild(head);
  const left = 44, top = 22, bottom = 18;
  const pw = w - left - 4, ph = h - top - bottom;
  g.appendChild(svgEl("rect", { x: left, y: top, width: pw, height: ph, class: "frame" }));
  const all = series.flatMap((s) => s.values.filter((v) => v !== null && isFinite(v)));
  if (!all.length) return g;
  let lo = Math.min(...all), hi = Math.max(...all);
  if (hi === lo) { hi += Math.abs(hi) * 0.1 || 1; lo -= Math.abs(lo) * 0.1 || 1; }
  const pad = (hi - lo) * 0.06;
  lo -= pad; hi += pad;
  const n = Math.max(...series.map((s) => s.values.length));
  const xsOf = (s) => s.xs || s.values.map((_, i) => i);
  const xmin = Math.min(...series.map((s) => xsOf(s)[0]));
  const xmax = Math.max(...series.map((s) => xsOf(s)[s.values.length - 1]));
  const sx = (x) => left + (xmax === xmin ? pw / 2 : ((x - xmin) / (xmax - xmin)) * pw);
  const sy = (v) => top + ph - ((v - lo) / (hi - lo)) * ph;
  if (lo < 0 && hi > 0) {
    g.appendChild(svgEl("line", { x1: left, x2: left + pw, y1: sy(0), y2: sy(0), class: "zero" }));
  }
  g.appendChild(svgEl("text", { x: left - 4, y: top + 9, "text-anchor": "end" }, tick(hi - pad)));
  g.appendChild(svgEl("text", { x: left - 4, y: top + ph, "text-anchor": "end" }, tick(lo + pad)));
  g.appendChild(svgEl("text", { x: left, y: h - 4 }, String(xmin)));
  g.appendChild(svgEl("text", { x: left + pw, y: h - 4, "text-anchor": "end" },
                      `${xmax} ${xLabel || ""}`));
  for (const s of series) {
    const xs = xsOf(s);
    const pts = s.values.map((v, i) => (v === null ? null : [sx(xs[i]), sy(v)]))
      .filter((p) => p !== null);
    g.appendChild(svgEl("polyline", {
      class: `trace ${s.cls}`, "data-points": pts.length,
      points: pts.map(([x, y]) => `${x.toFixed(1)},${y.toFixed(1)}`).join(" "),
    }));
    if (n <= 64) {
      for (const [x, y] of pts) g.appendChild(svgEl("circle", { cx: x, cy: y, r: 2.2, class: s.cls }));
    }
  }
  return g;
}

// Text is only written when it changed, and elements are kept from one poll to the next, so
// that a selection or a hovered row survives the page's updates.
function setText(e, text) {
  if (e.textContent !== text) e.textContent = text;
}

let drawnPlot = "";

function drawLast(state) {
  const systems = state.daemon ? state.daemon.systems : {};
  const s = systems[plotSystem];
  const last = s && s.last;
  $("plot").classList.toggle("stale", !state.daemon);
  if (!state.daemon) return;  // the last drawing stays, greyed
  if (!last || !last.x) {
    setText($("last-caption"), s ? `${plotSystem}: no measurement yet` : "no system chosen");
    if (drawnPlot) $("plot").replaceChildren();
    drawnPlot = "";
    return;
  }
  setText($("last-caption"),
          `seq ${count(last.seq)}, ${ago(last.time, state.now)} (${when(last.time)}), from ` +
          `${clientName(last.client)}; row 1 of ${count(last.rows)}`);
  const key = `${plotSystem} ${last.seq}`;
  if (key === drawnPlot) return;
  drawnPlot = key;
  const svg = $("plot");
  svg.replaceChildren();
  const parts = [["x (input)", last.x, "s-x"], ["θ (parameters)", last.theta, "s-theta"],
                 ["y (output)", last.y, "s-y"]];
  parts.forEach(([title, values, cls], i) => {
    panel(svg, i * 320, 0, 310, 240, `${title}, ${values.length} values`,
          [{ values, cls }], "");
  });
}

// ---------------------------------------------------------------- sections

function drawHeader(state) {
  const link = state.link, d = state.daemon;
  const badge = $("link");
  if (link.connected) {
    setText(badge, "connected");
    badge.className = "badge link-up";
    badge.title = "";
  } else {
    setText(badge, `daemon unreachable for ${duration(state.now - link.since)}`);
    badge.className = "badge link-down";
    badge.title = link.error;
  }
  if (d) {
    setText($("daemon"),
            `${d.version} on ${d.host} · ${link.endpoint} · up ${duration(d.uptime_s)} · ` +
            `next seq ${count(d.next_seq)}` +
            (link.restarts ? ` · restarted ${link.restarts}× while watched` : ""));
  } else {
    setText($("daemon"), `${link.endpoint} · ${link.error}`);
  }
}

function clientsText(clients, now) {
  const list = Object.entries(clients || {}).sort((a, b) => b[1].last_seen - a[1].last_seen);
  if (!list.length) return "–";
  const shown = list.slice(0, 3).map(([name, c]) =>
    `${clientName(name)} (${count(c.requests)}, ${ago(c.last_seen, now)})`);
  return shown.join(", ") + (list.length > 3 ? `, +${list.length - 3} more` : "");
}

const COLUMNS = ["name", "state", "num queue", "num req-rate", "num shot-rate", "busy",
                 "num served", "num faults", "num reconnects", "clients"];

function systemRow(name) {
  const tr = el("tr", { "data-system": name });
  for (const cls of COLUMNS) tr.appendChild(el("td", { class: cls }));
  const [first, state, , , , busy] = tr.cells;
  first.append(el("span", { class: "sysname" }, name), el("span", { class: "kind" }));
  state.appendChild(el("span", { class: "badge" }));
  const bar = el("span", { class: "bar" });
  bar.appendChild(el("span"));
  busy.append(bar, el("span", { class: "pct" }));
  tr.addEventListener("click", () => choose(name));
  return tr;
}

function fillRow(tr, s, now) {
  const c = tr.cells;
  setText(c[0].lastChild, s.kind);
  const badge = c[1].firstChild;
  setText(badge, s.state);
  badge.className = `badge state-${s.state}`;
  setText(c[2], s.queue_depth ? `${s.queued} / ${s.queue_depth}` : "inline");
  setText(c[3], rate(s.rates.requests_per_s));
  setText(c[4], rate(s.rates.shots_per_s));
  const pct = `${(100 * s.busy_1min).toFixed(1)}%`;
  c[5].querySelector(".bar > span").style.width = pct;
  setText(c[5].querySelector(".pct"), pct);
  setText(c[6], count(s.served));
  setText(c[7], count(s.faults));
  setText(c[8], count(s.reconnects));
  setText(c[9], clientsText(s.clients, now));
}

function drawSystems(state) {
  const body = $("systems").tBodies[0];
  $("systems").classList.toggle("stale", !state.daemon);
  if (!state.daemon) return;
  const systems = state.daemon.systems;
  const names = Object.keys(systems);
  if (!plotSystem || !systems[plotSystem]) {
    plotSystem = names.find((n) => systems[n].last) || names[0] || "";
  }
  if ([...body.rows].map((r) => r.dataset.system).join() !== names.join()) {
    body.replaceChildren(...names.map(systemRow));
  }
  for (const tr of body.rows) {
    tr.classList.toggle("chosen", tr.dataset.system === plotSystem);
    fillRow(tr, systems[tr.dataset.system], state.now);
  }
  const select = $("plot-system");
  if ([...select.options].map((o) => o.value).join() !== names.join()) {
    select.replaceChildren(...names.map((n) => el("option", { value: n }, n)));
  }
  if (select.value !== plotSystem) select.value = plotSystem;
}

function storeRows(state) {
  const s = state.store;
  if (!state.daemon && !s) return [["store", "waiting for the daemon"]];
  if (!s) return [["store", "none: this daemon records nothing (--store '')"]];
  const rows = [["path", s.path]];
  if (s.readable) {
    rows.push(["size", bytes(s.bytes)], ["measurements", count(s.measurements)],
              ["rows (shots)", count(s.rows)],
              ["oldest", `${when(s.oldest)} (${ago(s.oldest, state.now)})`],
              ["newest", `${when(s.newest)} (${ago(s.newest, state.now)})`]);
  } else {
    rows.push(["contents", s.error]);
  }
  if (s.backlog_bytes !== null && s.backlog_bytes !== undefined) {
    rows.push(["backlog", `${bytes(s.backlog_bytes)} recorded, not yet in the database`]);
  }
  return rows;
}

function drawStore(state) {
  const dl = $("store");
  const rows = storeRows(state);
  if ([...dl.querySelectorAll("dt")].map((e) => e.textContent).join() !==
      rows.map((r) => r[0]).join()) {
    dl.replaceChildren(...rows.flatMap(([k]) => [el("dt", {}, k), el("dd")]));
  }
  dl.querySelectorAll("dd").forEach((dd, i) => setText(dd, rows[i][1]));
}

function runFacts(run, now) {
  const sum = run.summary || {};
  const last = run.rows.length ? run.rows[run.rows.length - 1] : {};
  const facts = [`epoch ${run.epoch ?? "–"}${sum.epochs ? ` of ${sum.epochs}` : ""}`,
                 `${count(run.physical_queries)} physical queries`];
  const acc = sum.test_accuracy ?? last.test_acc;
  if (acc !== undefined && acc !== null) facts.push(`test accuracy ${(100 * acc).toFixed(1)}%`);
  if (sum.task) facts.push(`${sum.task} on ${sum.system}, ${sum.mode}`);
  facts.push(`updated ${ago(run.updated, now)}`);
  return facts.join(" · ");
}

function runCurves(run) {
  const svg = svgEl("svg", { viewBox: "0 0 440 150", class: "curves" });
  const xs = run.rows.map((r) => r.epoch);
  const col = (k) => run.rows.map((r) => (r[k] === undefined ? null : r[k]));
  panel(svg, 0, 0, 210, 150, "loss (train)", [{ values: col("train_loss"), xs, cls: "s-loss" }],
        "epoch");
  const accs = [{ values: col("train_acc"), xs, cls: "s-train", label: "train" },
                { values: col("test_acc"), xs, cls: "s-test", label: "test" }];
  if (run.rows.some((r) => r.test_acc_model !== null && r.test_acc_model !== undefined)) {
    accs.push({ values: col("test_acc_model"), xs, cls: "s-model", label: "model" });
  }
  panel(svg, 225, 0, 215, 150, "accuracy:", accs, "epoch");
  return svg;
}

function drawRuns(state) {
  const runs = state.runs || [];
  if (!runs.length) return;
  const box = $("runs");
  const cards = new Map([...box.querySelectorAll(".run")].map((c) => [c.dataset.run, c]));
  const order = runs.map((run) => {
    let card = cards.get(run.name);
    if (!card) {
      card = el("div", { class: "run", "data-run": run.name });
      const h = el("h3", {}, run.name);
      h.appendChild(el("span", { class: "badge" }));
      card.append(h, el("p"));
    }
    const badge = card.querySelector(".badge");
    setText(badge, run.status);
    badge.className = `badge run-${run.status}`;
    setText(card.querySelector("p"), runFacts(run, state.now));
    const key = JSON.stringify(run.rows);
    if (card.dataset.curves !== key) {
      card.dataset.curves = key;
      card.querySelector("svg")?.remove();
      if (run.rows.length) card.appendChild(runCurves(run));
    }
    return card;
  });
  if (order.some((c, i) => box.children[i] !== c) || box.children.length !== order.length) {
    box.replaceChildren(...order);
  }
}

// ---------------------------------------------------------------- polling

function choose(name) {
  plotSystem = name;
  drawnPlot = "";
  history.replaceState(null, "", `#plot=${encodeURIComponent(name)}`);
  poll();
}

let timer = null;

async function poll() {
  clearTimeout(timer);
  try {
    const r = await fetch(`api/state?plot=${encodeURIComponent(plotSystem)}`,
                          { cache: "no-store", credentials: "same-origin" });
    if (!r.ok) throw new Error(`${r.status} ${r.statusText}`);
    const state = await r.json();
    drawHeader(state);
    drawSystems(state);
    drawLast(state);
    drawStore(state);
    drawRuns(state);
    $("updated").textContent = new Date().toLocaleTimeString();
  } catch (e) {
    $("link").textContent = `monitor unreachable (${e.message})`;
    $("link").className = "badge link-down";
    $("systems").classList.add("stale");
  }
  timer = setTimeout(poll, POLL_MS);
}

document.addEventListener("DOMContentLoaded", () => {
  $("plot-system").addEventListener("change", (e) => choose(e.target.value));
  poll();
});
