"""The dashboard's HTML: the live page (plain HTML, a little CSS and a small script that polls the JSON endpoints and
inserts the server-rendered SVG), the login form, and the style the offline report shares.

The script builds every text node with ``textContent`` (names and ids come from callers); only SVG rendered and
escaped by the server goes in as markup. No build step, no external script, nothing fetched from another origin.
"""

from __future__ import annotations

from plait.server.dashboard.svg import esc

POLL_MS = 1000  # how often the page refreshes the list, the charts and the selected program

STYLE = """
body { font-family: system-ui, sans-serif; margin: 0; color: #202124; background: #fff; }
header { display: flex; align-items: baseline; gap: 16px; padding: 10px 16px; border-bottom: 1px solid #dadce0; }
header h1 { font-size: 18px; margin: 0; }
header .muted, .muted { color: #5f6368; font-size: 13px; }
main { padding: 12px 16px; }
section { margin-bottom: 18px; }
h2 { font-size: 15px; margin: 6px 0; }
.charts { display: flex; flex-wrap: wrap; gap: 12px; }
.scroll { overflow: auto; max-width: 100%; border: 1px solid #e8eaed; border-radius: 4px; }
.columns { display: grid; grid-template-columns: minmax(360px, 480px) 1fr; gap: 16px; align-items: start; }
table { border-collapse: collapse; font-size: 13px; width: 100%; }
th, td { text-align: left; padding: 3px 6px; border-bottom: 1px solid #f1f3f4; white-space: nowrap; }
td.num, th.num { text-align: right; }
tr.program { cursor: pointer; }
tr.program:hover { background: #f1f3f4; }
tr.selected { background: #e8f0fe; }
.state { display: inline-block; padding: 0 6px; border-radius: 8px; font-size: 12px; }
.state-running { background: #fde293; } .state-done { background: #ceead6; } .state-failed { background: #f6aea9; }
.state-cancelled { background: #e9d2fd; } .state-pending { background: #f1f3f4; }
.state-waiting_for_tool { background: #d2e3fc; } .state-skipped { background: #fad2cf; }
dl.facts { display: grid; grid-template-columns: max-content 1fr; gap: 2px 12px; font-size: 13px; margin: 0; }
dl.facts dt { color: #5f6368; } dl.facts dd { margin: 0; }
.pager { display: flex; gap: 8px; align-items: center; font-size: 13px; margin: 6px 0; }
button, select, input { font: inherit; font-size: 13px; }
#error { color: #d93025; font-size: 13px; }
details > summary { cursor: pointer; }
"""

_SCRIPT = """
"use strict";
const POLL_MS = %(poll_ms)d;
const PAGE = 50;
const view = { offset: 0, filter: "all", selected: null, userSelected: false };
const $ = (id) => document.getElementById(id);

async function getJSON(path) {
  const response = await fetch(path, { credentials: "same-origin", headers: { Accept: "application/json" } });
  if (response.status === 401) { window.location.assign("/dashboard"); throw new Error("signed out"); }
  if (!response.ok) {
    const error = new Error(path + " answered " + response.status);
    error.status = response.status;
    throw error;
  }
  return response.json();
}

function every(ms, refresh) {
  const tick = async () => {
    if (!document.hidden) {
      try { await refresh(); $("error").textContent = ""; }
      catch (error) { $("error").textContent = String(error.message || error); }
    }
    window.setTimeout(tick, ms);
  };
  tick();
}

function cell(row, text, cls) {
  const td = document.createElement("td");
  td.textContent = text;
  if (cls) td.className = cls;
  row.appendChild(td);
  return td;
}

function badge(state) {
  const span = document.createElement("span");
  span.className = "state state-" + state;
  span.textContent = state;
  return span;
}

function seconds(value) {
  if (value === null || value === undefined) return "";
  return value < 1 ? (value * 1000).toFixed(0) + " ms" : value.toFixed(1) + " s";
}

function facts(target, pairs) {
  target.replaceChildren();
  for (const [key, value] of pairs) {
    const dt = document.createElement("dt"); dt.textContent = key;
    const dd = document.createElement("dd"); dd.textContent = value;
    target.append(dt, dd);
  }
}

async function refreshOverview() {
  const data = await getJSON("/dashboard/api/overview");
  $("kv").innerHTML = data.kv_svg;
  $("queue").innerHTML = data.queue_svg;
  $("throughput").innerHTML = data.throughput_svg;
  const s = data.latest;
  $("phase").textContent = data.phase;
  if (s) {
    facts($("now"), [
      ["KV running", s.running + " slots"], ["KV cached", s.cached + " slots"],
      ["KV pinned", s.pinned_idle + " slots"], ["KV reserved", s.reserved + " slots"],
      ["KV total", s.total + " slots"],
      ["host tier", s.host_total ? s.host_used + " / " + s.host_total + " slots" : "none"],
      ["requests", s.running_requests + " running, " + s.waiting_requests + " waiting"],
      ["throughput", s.decode_tokens_per_s.toFixed(1) + " decode tok/s, "
        + s.prefill_tokens_per_s.toFixed(1) + " prefill tok/s"],
    ]);
  }
}

async function refreshPrograms() {
  const query = "?offset=" + view.offset + "&limit=" + PAGE + "&state=" + encodeURIComponent(view.filter);
  const data = await getJSON("/dashboard/api/programs" + query);
  const body = $("programs").tBodies[0];
  body.replaceChildren();
  for (const p of data.programs) {
    const row = document.createElement("tr");
    row.className = "program" + (p.id === view.selected ? " selected" : "");
    row.dataset.programId = p.id;
    cell(row, p.name);
    cell(row, "").appendChild(badge(p.state));
    cell(row, p.nodes_done + "/" + p.nodes, "num");
    cell(row, seconds(p.elapsed_s), "num");
    cell(row, p.id.length > 15 ? p.id.slice(0, 14) + "\u2026" : p.id, "muted").title = p.id;
    row.addEventListener("click", () => { view.userSelected = true; select(p.id); });
    body.appendChild(row);
  }
  const pages = Math.max(1, Math.ceil(data.total / PAGE));
  $("page").textContent = "page " + (Math.floor(view.offset / PAGE) + 1) + " of " + pages
    + " (" + data.total + " programs, " + data.running + " running)";
  $("prev").disabled = view.offset === 0;
  $("next").disabled = view.offset + PAGE >= data.total;
  // Until the user picks one, follow the newest running program (on the first page), else show the first listed.
  const first = data.programs[0];
  if (!view.userSelected && first && view.selected !== first.id
      && (view.selected === null || (view.offset === 0 && first.state === "running"))) {
    await select(first.id, false);  // the same tick loads it next
  }
}

async function select(programId, load = true) {
  view.selected = programId;
  for (const row of $("programs").tBodies[0].rows) {
    row.classList.toggle("selected", row.dataset.programId === programId);
  }
  if (load) await refreshProgram();
}

async function refreshProgram() {
  if (view.selected === null) return;
  let data;
  try { data = await getJSON("/dashboard/api/programs/" + encodeURIComponent(view.selected)); }
  catch (error) {
    if (error.status === 404) { view.selected = null; view.userSelected = false; $("detail").hidden = true; return; }
    throw error;
  }
  const p = data.program;
  $("detail").hidden = false;
  $("detail-title").textContent = p.name + " (" + p.id + ")";
  $("detail-state").replaceChildren(badge(p.state));
  $("detail-elapsed").textContent = seconds(p.elapsed_s) + (p.error ? " - " + p.error : "");
  const link = $("trace-link");
  link.href = data.trace_url;
  link.setAttribute("download", "plait-trace-" + p.id + ".json");
  $("graph").innerHTML = data.graph_svg;
  $("timeline").innerHTML = data.timeline_svg;
  const body = $("nodes").tBodies[0];
  body.replaceChildren();
  for (const n of data.nodes) {
    const row = document.createElement("tr");
    row.dataset.node = n.node;
    cell(row, n.node);
    cell(row, n.kind);
    cell(row, "").appendChild(badge(n.state));
    cell(row, seconds(n.run_s), "num");
    cell(row, n.kind === "llm" ? n.prompt_tokens + "/" + n.completion_tokens : "", "num");
    cell(row, n.error || "", "muted");
    body.appendChild(row);
  }
}

async function loadServerInfo() {
  const info = await getJSON("/dashboard/api/server_info");
  const plan = info.plan || {};
  facts($("policy"), [
    ["model", info.model], ["device", info.device], ["plan", plan.name + (plan.enabled ? "" : " (off)")],
    ["summary", plan.summary || ""],
    ...Object.entries(plan.engine_policy || {}).map(([k, v]) => ["engine " + k, JSON.stringify(v)]),
    ...Object.entries(plan.features || {}).map(([k, v]) => ["planner " + k, JSON.stringify(v)]),
  ]);
}

$("prev").addEventListener("click", () => { view.offset = Math.max(0, view.offset - PAGE); refreshPrograms(); });
$("next").addEventListener("click", () => { view.offset += PAGE; refreshPrograms(); });
$("filter").addEventListener("change", (event) => { view.filter = event.target.value; view.offset = 0;
  refreshPrograms(); });
loadServerInfo().catch((error) => { $("error").textContent = String(error.message || error); });
every(POLL_MS, refreshOverview);
every(POLL_MS, async () => { await refreshPrograms(); await refreshProgram(); });  // the list and detail agree
"""


def dashboard_page(tenant: str, signed_in: bool) -> str:
    """The live dashboard of ``tenant`` (``signed_in``: by a key the page can sign out of)."""
    sign_out = (
        "<form method='post' action='/dashboard/logout' style='margin-left:auto'><button>sign out</button></form>"
        if signed_in
        else ""
    )
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>plait dashboard</title>
<meta name="viewport" content="width=device-width, initial-scale=1"><style>{STYLE}</style></head>
<body>
<header><h1>plait</h1><span class="muted">tenant <b id="tenant">{esc(tenant)}</b></span>
<span class="muted">server <b id="phase">…</b></span><span id="error"></span>{sign_out}</header>
<main>
<section><h2>KV cache, queue and throughput</h2>
<div class="charts"><div id="kv"></div><div id="queue"></div><div id="throughput"></div>
<dl class="facts" id="now"></dl></div></section>
<div class="columns">
<section><h2>Programs</h2>
<div class="pager"><select id="filter"><option value="all">all</option><option value="running">running</option>
<option value="finished">finished</option></select>
<button id="prev">newer</button><button id="next">older</button><span id="page" class="muted"></span></div>
<div class="scroll"><table id="programs"><thead><tr><th>name</th><th>state</th><th class="num">nodes</th>
<th class="num">time</th><th>id</th></tr></thead><tbody></tbody></table></div></section>
<section id="detail" hidden><h2 id="detail-title"></h2>
<p><span id="detail-state"></span> <span id="detail-elapsed" class="muted"></span>
<a id="trace-link" href="#">download Chrome trace</a> <span class="muted">(open in ui.perfetto.dev)</span></p>
<h2>Graph</h2><div class="scroll" id="graph"></div>
<h2>Timeline</h2><div class="scroll" id="timeline"></div>
<h2>Nodes</h2><div class="scroll"><table id="nodes"><thead><tr><th>node</th><th>kind</th><th>state</th>
<th class="num">time</th><th class="num">tokens in/out</th><th>note</th></tr></thead><tbody></tbody></table></div>
</section></div>
<section><details><summary><h2 style="display:inline">Effective policy</h2></summary>
<dl class="facts" id="policy"></dl></details></section>
</main>
<script>{_SCRIPT % {"poll_ms": POLL_MS}}</script>
</body></html>"""


def login_page(error: str | None = None) -> str:
    """The form that exchanges an API key for the dashboard's cookie."""
    message = f"<p id='login-error' style='color:#d93025'>{esc(error)}</p>" if error else ""
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>plait dashboard: sign in</title><style>{STYLE}</style></head>
<body><main><h1>plait dashboard</h1>
<p>This server needs an API key. The dashboard keeps it in a cookie for this site only.</p>{message}
<form method="post" action="/dashboard/login"><label>API key <input type="password" name="key" id="key"
autocomplete="current-password" required></label> <button type="submit">sign in</button></form>
<p class="muted">Or open <code>/dashboard?key=YOUR_KEY</code> once.</p></main></body></html>"""
