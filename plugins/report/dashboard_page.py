"""The dashboard's page: one HTML document with its script (charts, tables and the
control buttons); the server fills in the title and the poll interval."""

from __future__ import annotations

__all__ = ["PAGE"]

PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<title>quoteforge · __TITLE__</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>
 body{font:14px/1.4 system-ui,sans-serif;margin:0;background:#f6f7f9;color:#1d2330}
 header{background:#1d2330;color:#fff;padding:10px 18px;display:flex;gap:18px;
  align-items:baseline;flex-wrap:wrap}
 header h1{font-size:18px;margin:0} header .meta{opacity:.8}
 main{padding:12px 18px}
 section.market{background:#fff;border:1px solid #dde1e8;border-radius:6px;margin:0 0 14px;
  padding:10px 12px}
 section.market h2{font-size:16px;margin:0 0 6px;display:flex;gap:10px;align-items:center}
 table.stats{border-collapse:collapse;margin-bottom:4px} .stats th,.stats td{padding:2px 10px;
  text-align:right;white-space:nowrap} .stats th{font-weight:600;color:#5a6272;font-size:12px}
 .badge{font-size:12px;padding:1px 8px;border-radius:10px;color:#fff;background:#7a8190}
 .badge.LIVE,.badge.ok{background:#2f9e44} .badge.STALE,.badge.tripped,.badge.halted{
  background:#e03131} .badge.RESYNCING,.badge.SYNCING{background:#f08c00}
 .chart{height:430px} #events{width:100%;border-collapse:collapse;background:#fff}
 #events td,#events th{border-bottom:1px solid #eceef2;padding:3px 8px;text-align:left;
  font-size:13px} #events tr.alert td{color:#c92a2a;font-weight:600}
 .empty{color:#7a8190}
</style>
<script src="/plotly.min.js"></script>
</head><body>
<header><h1 id="run-id">__TITLE__</h1><span class="meta" id="run-meta">loading…</span>
<span class="meta" id="run-clock"></span></header>
<main><div id="markets"><p class="empty">Waiting for the first samples…</p></div>
<h2>Alerts and events <span class="meta" id="event-count"></span></h2>
<table id="events"><thead><tr><th>time</th><th>market</th><th>event</th><th>detail</th></tr>
</thead><tbody></tbody></table></main>
<script>
"use strict";
const POLL_MS = __POLL_MS__;
const COLUMNS = [["pnl","PnL"],["realized","realized"],["fees","fees"],
  ["inventory","inventory"],["mid","mid"],["fills","fills"],["volume","volume"],
  ["notional","notional"],["open_orders","open orders"],["orders","orders"],
  ["resyncs","resyncs"]];
const iso = t => new Date(t / 1e6).toISOString();
function el(tag, attrs, text) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
  if (text !== undefined) e.textContent = text;
  return e;
}
function section(m) {
  const s = el("section", {class: "market", id: "market-" + m.slug});
  const h = el("h2", {}, m.market);
  h.append(el("span", {class: "badge", id: "state-" + m.slug}),
           el("span", {class: "badge", id: "breaker-" + m.slug}), el("small", {id: "fn-"+m.slug}));
  const table = el("table", {class: "stats"});
  const head = el("tr"), row = el("tr");
  for (const [key, label] of COLUMNS) {
    head.append(el("th", {}, label));
    row.append(el("td", {id: key + "-" + m.slug, class: "value-" + key}));
  }
  table.append(head, row);
  s.append(h, table, el("div", {class: "chart", id: "chart-" + m.slug}));
  return s;
}
function figure(m) {
  const x = m.series.t.map(iso), s = m.series;
  const line = (y, name, color, axis, dash) => ({x, y, name, type: "scatter",
    mode: "lines", yaxis: axis, line: {color, width: 1.5, dash: dash || "solid",
    shape: "hv"}, connectgaps: false});
  const traces = [];
  if (s.bid) traces.push(line(s.bid, "book bid", "#74c0fc", "y"),
    line(s.ask, "book ask", "#ffa8a8", "y"), line(s.our_bid, "our bid", "#1864ab", "y",
    "dot"), line(s.our_ask, "our ask", "#c92a2a", "y", "dot"));
  for (const [side, color, symbol] of [["buy", "#2f9e44", "triangle-up"],
                                       ["sell", "#e8590c", "triangle-down"]]) {
    const f = m.fills.filter(r => r[1] === side);
    traces.push({x: f.map(r => iso(r[0])), y: f.map(r => r[2]), name: side + " fills",
      type: "scatter", mode: "markers", yaxis: "y",
      marker: {color, symbol, size: 6, opacity: 0.75}});
  }
  traces.push(line(s.inventory, "inventory", "#5f3dc4", "y2"));
  if (s.pnl) traces.push(line(s.pnl, "PnL", "#2b8a3e", "y3"));
  const shapes = m.stale.map(([a, b]) => ({type: "rect", xref: "x", yref: "paper",
    x0: iso(a), x1: iso(b), y0: 0, y1: 1, fillcolor: "#e03131", opacity: 0.12,
    line: {width: 0}}));
  const layout = {margin: {l: 60, r: 20, t: 10, b: 45}, showlegend: true,
    legend: {orientation: "h", y: -0.08}, shapes, hovermode: "x",
    xaxis: {type: "date", anchor: "y3"},
    yaxis: {domain: [0.46, 1], title: {text: "price"}},
    yaxis2: {domain: [0.24, 0.42], title: {text: "inventory"}},
    yaxis3: {domain: [0, 0.2], title: {text: "PnL"}}};
  return {traces, layout};
}
function render(state) {
  document.getElementById("run-id").textContent = state.run_id;
  const meta = [state.mode || "", state.status,
                state.stop_reason ? "(" + state.stop_reason + ")" : "",
                "source: " + state.source, "units: " + state.units];
  document.getElementById("run-meta").textContent = meta.filter(Boolean).join(" · ");
  if (state.latest_t) document.getElementById("run-clock").textContent =
    "run clock " + iso(state.latest_t).replace("T", " ").replace("Z", " UTC");
  const box = document.getElementById("markets");
  if (state.markets.length && box.querySelector(".empty")) box.textContent = "";
  for (const m of state.markets) {
    let s = document.getElementById("market-" + m.slug);
    if (!s) { s = section(m); box.append(s); }
    for (const [key] of COLUMNS)
      document.getElementById(key + "-" + m.slug).textContent = m.display[key];
    const st = document.getElementById("state-" + m.slug);
    st.textContent = m.book_state; st.className = "badge " + m.book_state;
    const br = document.getElementById("breaker-" + m.slug);
    const halted = m.halted ? "strategy halted" : "";
    br.textContent = halted || ("breaker " + m.breaker);
    br.className = "badge " + (m.halted ? "halted" : (m.breaker === "ok" ? "ok" : "tripped"));
    const f = figure(m);
    Plotly.react("chart-" + m.slug, f.traces, f.layout, {displaylogo: false,
      responsive: true});
    document.getElementById("fn-" + m.slug).textContent = m.fills.length < m.values.fills
      ? `fills thinned over the whole run: ${m.fills.length} of ${m.values.fills} shown` : "";
  }
  const body = document.querySelector("#events tbody");
  body.textContent = "";
  for (const e of state.events) {
    const tr = el("tr", {class: e.event === "alert" ? "alert" : ""});
    tr.append(el("td", {}, iso(e.t).slice(11, 23)), el("td", {}, e.market || "(run)"),
              el("td", {}, e.event), el("td", {}, e.detail));
    body.append(tr);
  }
  document.getElementById("event-count").textContent =
    state.event_count + " events, " + state.alert_count + " alerts";
  document.body.dataset.updated = String(state.latest_t);
}
async function poll() {
  try {
    const resp = await fetch("/api/state");
    if (resp.ok) render(await resp.json());
  } catch (err) {
    document.getElementById("run-meta").textContent = "dashboard unreachable: " + err;
  }
  setTimeout(poll, POLL_MS);
}
poll();
</script></body></html>
"""
