// The Switchyard dashboard: one WebSocket, /_switchyard/live, on which the
// server sends a snapshot of itself as JSON every second and after every
// hot reload. This script only draws what it receives.
"use strict";

const $ = (selector) => document.querySelector(selector);
let retry = 500;
let timer;

/// The token, from the page's fragment (#token=...) or an earlier visit.
function token() {
  const fragment = new URLSearchParams(location.hash.slice(1)).get("token");
  if (fragment) sessionStorage.setItem("switchyard-token", fragment);
  return sessionStorage.getItem("switchyard-token") || "";
}

function feedUrl() {
  const scheme = location.protocol === "https:" ? "wss:" : "ws:";
  const url = new URL(`${scheme}//${location.host}/_switchyard/live`);
  const t = token();
  if (t) url.searchParams.set("access_token", t);
  return url;
}

function setStatus(text, kind) {
  const status = $("#status");
  status.textContent = text;
  status.className = `status ${kind}`;
}

function cell(row, text, className) {
  const td = row.insertCell();
  td.textContent = text;
  if (className) td.className = className;
  return td;
}

const time = (ms) => new Date(ms).toLocaleTimeString();
const rate = (n) => (n < 10 ? n.toFixed(1) : Math.round(n).toString());

function drawRoutes(routes) {
  const body = $("#routes tbody");
  body.replaceChildren();
  for (const route of routes) {
    const row = body.insertRow();
    row.dataset.route = route.name;
    cell(row, route.name);
    cell(row, route.pattern, "hash");
    cell(row, route.is_granted.length ? route.is_granted.join(", ") : "public");
    cell(row, route.instance);
    const module = cell(row, `${route.file} `);
    const hash = document.createElement("span");
    hash.className = "hash";
    hash.dataset.field = "hash";
    hash.textContent = route.hash.slice(0, 8);
    hash.title = route.hash;
    module.append(hash);
    cell(row, route.connections, "n").dataset.field = "connections";
    cell(row, route.instances, "n").dataset.field = "instances";
    cell(row, rate(route.in_per_s), "n");
    cell(row, rate(route.out_per_s), "n");
    const traps = Object.entries(route.traps).filter(([, n]) => n > 0);
    cell(row, traps.length ? traps.map(([k, n]) => `${k} ${n}`).join(", ") : "0", "n");
  }
}

function drawList(list, entries, line) {
  const ol = $(list);
  ol.replaceChildren();
  for (const entry of [...entries].reverse()) {
    const li = document.createElement("li");
    const when = document.createElement("span");
    when.className = "time";
    when.textContent = `${time(entry.at_ms)} `;
    li.append(when, line(entry, li));
    ol.append(li);
  }
}

function draw(snapshot) {
  const t = snapshot.totals;
  $("#summary").textContent =
    `v${snapshot.version} · up ${snapshot.uptime_s} s · ${t.routes} routes · ` +
    `${t.connections} connections · ${t.instances} instances · ` +
    `${rate(t.in_per_s)} msgs/s in · ${rate(t.out_per_s)} out` +
    (snapshot.cluster ? ` · node ${snapshot.cluster.node}, broker ${snapshot.cluster.broker}, ${snapshot.cluster.peers} peers` : "");
  drawRoutes(snapshot.routes);
  drawList("#reloads", snapshot.reloads, (r, li) => {
    li.dataset.result = r.result;
    li.dataset.file = r.file;
    if (r.result === "rejected") li.className = "rejected";
    const what = `${r.file}: ${r.result}` +
      (r.hash ? ` (${r.hash.slice(0, 8)}, ${r.took_ms} ms)` : "") +
      (r.error ? ` — ${r.error}` : "");
    return document.createTextNode(what);
  });
  drawList("#traps", snapshot.traps, (trap, li) => {
    li.className = "trap";
    return document.createTextNode(`${trap.route}: ${trap.kind} — ${trap.message}`);
  });
}

/// Whether the feed has opened since the page loaded: then a close is the
/// server going away, and the page retries with back-off; before, it is a
/// refusal (no token, or one without the role), and the page waits for a
/// token instead of asking again and again.
let everOpened = false;

function connect() {
  const ws = new WebSocket(feedUrl());
  let opened = false;
  ws.onopen = () => {
    opened = everOpened = true;
    retry = 500;
    $("#login").hidden = true;
    setStatus("live", "live");
  };
  ws.onmessage = (event) => draw(JSON.parse(event.data));
  ws.onclose = (event) => {
    if (!opened && !everOpened) {
      // The browser does not tell us the HTTP status of a refused upgrade.
      $("#login").hidden = false;
      setStatus("not connected: the feed refused this page (a token is needed on this port)", "down");
      return;
    }
    const why = event.code === 1001 ? "server went away" : `closed (${event.code})`;
    setStatus(`${why}: reconnecting in ${Math.round(retry / 1000)} s`, "down");
    timer = setTimeout(connect, retry);
    retry = Math.min(retry * 2, 10000);
  };
}

$("#login").addEventListener("submit", (event) => {
  event.preventDefault();
  sessionStorage.setItem("switchyard-token", $("#token").value.trim());
  retry = 500;
  clearTimeout(timer);
  connect();
});

connect();
