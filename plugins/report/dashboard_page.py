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
 section.panel{background:#fff;border:1px solid #dde1e8;border-radius:6px;margin:0 0 14px;
  padding:10px 12px} section.panel h2{font-size:16px;margin:0 0 6px}
 table.list{border-collapse:collapse;margin:4px 0} .list th,.list td{padding:2px 10px;
  text-align:left;white-space:nowrap;font-size:13px;border-bottom:1px solid #eceef2}
 .list th{font-weight:600;color:#5a6272;font-size:12px} td.num{text-align:right}
 button{font:inherit;padding:2px 10px;border-radius:4px;border:1px solid #aab1bf;
  background:#f1f3f6;cursor:pointer} button:disabled{opacity:.45;cursor:not-allowed}
 button.danger{background:#e03131;border-color:#c92a2a;color:#fff;font-weight:600}
 .controls{display:flex;gap:10px;flex-wrap:wrap;align-items:center;margin:4px 0}
 #control-status.refused{color:#c92a2a;font-weight:600} #action-result.error{color:#c92a2a}
 input.params{width:22em;font-family:ui-monospace,monospace}
</style>
<script src="/plotly.min.js"></script>
</head><body>
<header><h1 id="run-id">__TITLE__</h1><span class="meta" id="run-meta">loading…</span>
<span class="meta" id="run-clock"></span></header>
<main>
<section class="panel" id="control"><h2>Control</h2>
<form class="controls" id="token-form" autocomplete="off">
 <label>control token <input type="password" id="token" autocomplete="off"
  placeholder="QUOTEFORGE_CONTROL_TOKEN"></label>
 <button type="submit" id="token-use">use token</button>
 <button type="button" id="token-forget">forget token</button>
 <span id="control-status" class="refused">no token: every action is refused; enter the
 run's control token (QUOTEFORGE_CONTROL_TOKEN)</span></form>
<div class="controls">
 <button type="button" id="pull-all" class="action">pull all quotes</button>
 <button type="button" id="reset-breakers" class="action">reset breakers</button>
 <button type="button" id="kill" class="action danger">kill switch</button>
 <span id="action-result"></span></div>
<table class="list" id="strategies"><thead><tr><th>strategy</th><th>type</th><th>markets</th>
<th>state</th><th></th><th>params (JSON, applied like a manifest edit)</th></tr></thead>
<tbody></tbody></table></section>
<section class="panel"><h2>Venues</h2><table class="list" id="venues"><thead><tr>
<th>venue</th><th>connection</th><th>books</th><th>resyncs</th><th>open orders</th></tr>
</thead><tbody></tbody></table>
<h2>Totals across markets</h2><table class="list" id="totals"><thead><tr><th>quote</th>
<th>markets</th><th>PnL</th><th>fees</th><th>fills</th><th>notional</th><th>open orders</th>
</tr></thead><tbody></tbody></table></section>
<div id="markets"><p class="empty">Waiting for the first samples…</p></div>
<section class="panel"><h2>Recent fills</h2><table class="list" id="fills"><thead><tr>
<th>time</th><th>market</th><th>strategy</th><th>side</th><th>price</th><th>qty</th>
<th>fee</th><th>liquidity</th><th>client id</th></tr></thead><tbody></tbody></table>
</section>
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
  const orders = el("table", {class: "list orders", id: "open-orders-" + m.slug});
  const oh = el("tr");
  for (const label of ["open order", "strategy", "side", "price", "qty", "filled", "status",
                       ""]) oh.append(el("th", {}, label));
  orders.append(el("thead"), el("tbody"));
  orders.tHead.append(oh);
  s.append(h, table, orders, el("div", {class: "chart", id: "chart-" + m.slug}));
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
  renderTables(state);
  document.body.dataset.updated = String(state.latest_t);
}
const slug = text => String(text).replace(/[^A-Za-z0-9]/g, "-");
function td(text, cls) {
  return el("td", cls ? {class: cls} : {}, text === null || text === undefined ? "-"
    : String(text));
}
function fillRows(tbody, items, cells) {
  tbody.textContent = "";
  for (const item of items) { const tr = el("tr"); tr.append(...cells(item)); tbody.append(tr); }
}
function actionButton(label, action, attrs) {
  const b = el("button", {type: "button", class: "action", "data-action": action,
    ...(attrs || {})}, label);
  return b;
}
// The trace is written in blocks; with the token, the run's own book states are fresher.
function liveBooks(v) {
  if (!controlState) return v;
  const books = {...v.books};
  for (const s of Object.keys(books)) {
    const m = controlState.markets[v.venue + ":" + s];
    if (m) books[s] = m.book_state;
  }
  const bad = Object.entries(books).filter(([, b]) => b !== "LIVE");
  return {...v, books, state: bad.length ? "degraded: " + bad.map(([s, b]) => s + " " + b)
    .join(", ") : "live"};
}
function renderTables(state) {
  for (const m of state.markets) {
    const table = document.getElementById("open-orders-" + m.slug);
    fillRows(table.tBodies[0], m.orders, o => [td(o.client_id), td(o.strategy), td(o.side),
      td(o.price, "num"), td(o.qty, "num"), td(o.filled, "num"), td(o.status),
      (() => { const c = el("td"); c.append(actionButton("cancel", "cancel",
        {id: "cancel-" + o.client_id, "data-id": o.client_id})); return c; })()]);
    table.style.display = m.orders.length ? "" : "none";
  }
  fillRows(document.querySelector("#venues tbody"), state.venues.map(liveBooks), v => [
    td(v.venue), td(v.state), td(Object.entries(v.books).map(([s, b]) => s + " " + b)
    .join(", ")), td(v.resyncs, "num"), td(v.open_orders, "num")]);
  fillRows(document.querySelector("#totals tbody"), state.totals, t => [td(t.quote),
    td(t.markets, "num"), td(t.display.pnl, "num"), td(t.display.fees, "num"),
    td(t.display.fills, "num"), td(t.display.notional, "num"),
    td(t.display.open_orders, "num")]);
  fillRows(document.querySelector("#fills tbody"), state.recent_fills, f => [
    td(iso(f.t).slice(11, 23)), td(f.market), td(f.strategy), td(f.side), td(f.price, "num"),
    td(f.qty, "num"), td(f.fee, "num"), td(f.liquidity), td(f.client_id)]);
}

// -- control: the token stays in this tab (sessionStorage), sent only as a header ----------
const TOKEN_KEY = "quoteforge-control-token";
const NO_TOKEN = "no token: every action is refused; enter the run's control token " +
  "(QUOTEFORGE_CONTROL_TOKEN)";
let token = sessionStorage.getItem(TOKEN_KEY) || "";
let controlState = null;
function controlStatus(text, refused) {
  const s = document.getElementById("control-status");
  s.textContent = text; s.className = refused ? "refused" : "";
}
function showResult(text, error, where) {
  for (const id of ["action-result", where].filter(Boolean)) {
    const r = document.getElementById(id);
    if (r) { r.textContent = text; r.className = error ? "error" : ""; }
  }
}
async function control(method, path, body) {
  if (!token) {
    controlStatus(NO_TOKEN, true);
    return {ok: false, error: "refused: no token entered; nothing was sent"};
  }
  const init = {method, headers: {"Authorization": "Bearer " + token}};
  if (body !== undefined) {
    init.headers["Content-Type"] = "application/json"; init.body = JSON.stringify(body);
  }
  try {
    const resp = await fetch("/api/control/" + path, init);
    const data = await resp.json();
    if (resp.status === 401) controlStatus("token refused: " + data.error, true);
    return resp.ok ? {ok: true, ...data} : {ok: false, error: data.error || resp.statusText};
  } catch (err) {
    return {ok: false, error: "dashboard unreachable: " + err};
  }
}
function strategyRow(name) {
  const id = slug(name);
  const tr = el("tr", {id: "strategy-" + id});
  const input = el("input", {class: "params", id: "params-" + id,
    placeholder: '{"spread_bps": 8}', "aria-label": "params of " + name});
  const form = el("td");
  form.append(input, " ", actionButton("apply", "params", {id: "apply-" + id,
    "data-id": name}), " ", el("span", {id: "params-msg-" + id}));
  const pause = el("td");
  pause.append(actionButton("pause", "pause", {id: "pause-" + id, "data-id": name}), " ",
               actionButton("resume", "resume", {id: "resume-" + id, "data-id": name}));
  tr.append(td(name), el("td", {id: "stype-" + id}), el("td", {id: "smarkets-" + id}),
            el("td", {id: "sstate-" + id}), pause, form);
  return tr;
}
async function refreshControl() {
  if (!token) { controlStatus(NO_TOKEN, true); return; }
  const answer = await control("GET", "state");
  if (!answer.ok) { controlState = null; controlStatus(answer.error, true); return; }
  controlState = answer;
  controlStatus("control API: token accepted" + (answer.killed ? " · run KILLED" : "") +
                (answer.stopping ? " · stopping (" + answer.stop_reason + ")" : ""), false);
  const body = document.querySelector("#strategies tbody");
  for (const [name, st] of Object.entries(answer.strategies)) {
    const id = slug(name);
    if (!document.getElementById("strategy-" + id)) body.append(strategyRow(name));
    document.getElementById("stype-" + id).textContent = st.type;
    document.getElementById("smarkets-" + id).textContent = st.markets.join(", ");
    document.getElementById("sstate-" + id).textContent = st.halted ? "paused" : "quoting";
  }
}
const ACTIONS = {
  kill: () => confirm("Pull the kill switch? Every order is cancelled and the run stops.")
    ? ["kill"] : null,
  "pull-all": () => ["pull-quotes"],
  "reset-breakers": () => ["breakers/reset", {target: "all"}],
  pause: name => ["strategies/" + encodeURIComponent(name) + "/pause"],
  resume: name => ["strategies/" + encodeURIComponent(name) + "/resume"],
  cancel: cid => ["orders/" + encodeURIComponent(cid) + "/cancel"],
  params: name => {
    const text = document.getElementById("params-" + slug(name)).value.trim();
    let body;
    try { body = JSON.parse(text || "null"); } catch (err) { body = undefined; }
    if (!body || typeof body !== "object" || Array.isArray(body)) {
      showResult('params: write a JSON object, e.g. {"spread_bps": 8}', true,
                 "params-msg-" + slug(name));
      return null;
    }
    return ["strategies/" + encodeURIComponent(name) + "/params", body];
  },
};
document.addEventListener("click", async event => {
  const button = event.target.closest("button.action");
  if (!button) return;
  const kind = button.dataset.action || button.id;
  const ask = ACTIONS[kind](button.dataset.id);
  if (!ask) return;
  const where = kind === "params" ? "params-msg-" + slug(button.dataset.id) : null;
  const answer = await control("POST", ask[0], ask[1]);
  showResult(answer.ok ? answer.result : answer.error, !answer.ok, where);
  refreshControl();
});
document.getElementById("token-form").addEventListener("submit", event => {
  event.preventDefault();
  const input = document.getElementById("token");
  token = input.value.trim(); input.value = "";
  if (token) sessionStorage.setItem(TOKEN_KEY, token); else sessionStorage.removeItem(TOKEN_KEY);
  refreshControl();
});
document.getElementById("token-forget").addEventListener("click", () => {
  token = ""; controlState = null; sessionStorage.removeItem(TOKEN_KEY);
  document.querySelector("#strategies tbody").textContent = "";
  controlStatus(NO_TOKEN, true);
});
async function poll() {
  try {
    const resp = await fetch("/api/state");
    if (resp.ok) render(await resp.json());
    if (token) await refreshControl();
  } catch (err) {
    document.getElementById("run-meta").textContent = "dashboard unreachable: " + err;
  }
  setTimeout(poll, POLL_MS);
}
poll();
</script></body></html>
"""
