"""The admin dashboard: one self-contained HTML page (inline CSS and JS, no external assets) polling /status."""

PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>edge admin</title>
<style>
  body { font: 14px/1.4 system-ui, sans-serif; margin: 1.5em; color: #222; background: #fafafa; }
  h1 { font-size: 1.3em; margin: 0 0 .3em; }
  h2 { font-size: 1.05em; margin: 1.2em 0 .4em; }
  #summary { color: #555; }
  table { border-collapse: collapse; background: #fff; }
  th, td { border: 1px solid #ddd; padding: .25em .6em; text-align: right; }
  th { background: #f0f0f0; } td.l, th.l { text-align: left; }
  .charts { display: flex; flex-wrap: wrap; gap: 1em; }
  .chart { background: #fff; border: 1px solid #ddd; padding: .5em; }
  .chart canvas { display: block; }
  .up { color: #17803d; } .down { color: #b3261e; font-weight: bold; }
  #error { color: #b3261e; }
</style>
</head>
<body>
<h1>edge admin</h1>
<div id="summary">loading...</div>
<div id="error"></div>
<form id="login" hidden>admin token: <input id="token" type="password" autocomplete="off"> <button>use</button></form>
<div class="charts">
  <div class="chart"><div>requests/s per worker</div><canvas id="rps" width="420" height="160"></canvas></div>
  <div class="chart"><div>bytes/s per worker</div><canvas id="bps" width="420" height="160"></canvas></div>
  <div class="chart"><div>cache hit ratio</div><canvas id="hit" width="420" height="160"></canvas></div>
</div>
<h2>Workers</h2>
<table id="workers"><thead><tr><th>pid</th><th>cpu</th><th>node</th><th>gen</th><th class="l">state</th>
<th>requests</th><th>req/s</th><th>bytes/s</th><th>open conns</th><th>uptime s</th></tr></thead><tbody></tbody></table>
<h2>Origins</h2>
<table id="origins"><thead><tr><th class="l">url</th><th>weight</th><th class="l">health</th><th class="l">circuit</th>
<th>latency ms</th><th>checks ok / failed</th></tr></thead><tbody></tbody></table>
<script>
"use strict";
const POINTS = 60;
const series = { rps: {}, bps: {}, hit: { all: [] } };
let last = null;
let token = sessionStorage.getItem("edgeToken") || new URLSearchParams(location.hash.slice(1)).get("token") || "";
let polls = 0;

function text(tag, value, cls) {
  const cell = document.createElement(tag);
  cell.textContent = value;
  if (cls) cell.className = cls;
  return cell;
}

function push(store, key, value) {
  (store[key] = store[key] || []).push(value);
  if (store[key].length > POINTS) store[key].shift();
}

function draw(id, store, ratio) {
  const canvas = document.getElementById(id), ctx = canvas.getContext("2d");
  const w = canvas.width, h = canvas.height;
  ctx.clearRect(0, 0, w, h);
  const keys = Object.keys(store);
  let max = ratio ? 1 : 1;
  for (const k of keys) for (const v of store[k]) if (v > max) max = v;
  const colours = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#17becf", "#8c564b", "#e377c2"];
  keys.forEach((k, i) => {
    const data = store[k];
    ctx.strokeStyle = colours[i % colours.length];
    ctx.beginPath();
    data.forEach((v, j) => {
      const x = (j / (POINTS - 1)) * (w - 40) + 35, y = h - 15 - (v / max) * (h - 25);
      if (j === 0) ctx.moveTo(x, y); else ctx.lineTo(x, y);
    });
    ctx.stroke();
  });
  ctx.fillStyle = "#555";
  ctx.fillText(ratio ? "100%" : Math.round(max).toString(), 2, 12);
  ctx.fillText("0", 2, h - 12);
  canvas.dataset.points = String(keys.reduce((n, k) => n + store[k].length, 0));
}

function render(doc, now) {
  const t = doc.totals || {};
  document.getElementById("summary").textContent =
    `edge ${doc.version} · up ${Math.round(doc.uptime)} s · ${doc.workers.length} workers · ` +
    `${t.requests || 0} requests · ${doc.draining ? "DRAINING" : "serving"}`;
  const body = document.querySelector("#workers tbody");
  body.replaceChildren();
  for (const w of doc.workers) {
    let rps = 0, bps = 0;
    if (last && last.byPid[w.pid]) {
      const dt = (now - last.at) / 1000, before = last.byPid[w.pid];
      rps = Math.max(0, (w.requests - before.requests) / dt);
      bps = Math.max(0, (w.bytes_out - before.bytes_out) / dt);
    }
    push(series.rps, "pid " + w.pid, rps);
    push(series.bps, "pid " + w.pid, bps);
    const row = document.createElement("tr");
    row.dataset.pid = w.pid;
    for (const v of [w.pid, w.cpu, w.numa_node, w.generation]) row.append(text("td", v));
    row.append(text("td", w.state, "l"));
    for (const v of [w.requests, rps.toFixed(1), Math.round(bps), w.connections_active, Math.round(w.uptime)])
      row.append(text("td", v));
    body.append(row);
  }
  const ratio = doc.cache && doc.cache.hit_ratio;
  push(series.hit, "all", ratio == null ? 0 : ratio);
  const origins = document.querySelector("#origins tbody");
  origins.replaceChildren();
  for (const o of doc.origins) {
    const row = document.createElement("tr");
    row.append(text("td", o.url, "l"), text("td", o.weight),
               text("td", o.healthy ? "up" : "DOWN", "l " + (o.healthy ? "up" : "down")),
               text("td", o.circuit, "l"),
               text("td", o.latency == null ? "-" : (o.latency * 1000).toFixed(1)),
               text("td", `${o.checks_ok} / ${o.checks_failed}`));
    origins.append(row);
  }
  draw("rps", series.rps, false);
  draw("bps", series.bps, false);
  draw("hit", series.hit, true);
  last = { at: now, byPid: Object.fromEntries(doc.workers.map(w => [w.pid, w])) };
  document.body.dataset.polls = String(++polls);
}

async function poll() {
  try {
    const response = await fetch("status", { headers: token ? { Authorization: "Bearer " + token } : {} });
    if (response.status === 401) {
      document.getElementById("error").textContent = "a token is needed";
      document.getElementById("login").hidden = false;
      return;  // polling resumes once a token is given
    } else if (!response.ok) {
      document.getElementById("error").textContent = "status: " + response.status;
    } else {
      document.getElementById("error").textContent = "";
      render(await response.json(), Date.now());
    }
  } catch (e) {
    document.getElementById("error").textContent = "cannot reach the node: " + e;
  }
  setTimeout(poll, 1000);
}
document.getElementById("login").addEventListener("submit", event => {
  event.preventDefault();
  token = document.getElementById("token").value;
  sessionStorage.setItem("edgeToken", token);
  document.getElementById("login").hidden = true;
  poll();
});
poll();
</script>
</body>
</html>
"""
