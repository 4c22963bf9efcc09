// The demo page's client: three WebSockets to the sample controllers
// (/chat/, /rooms/{room}, /admin/), each reconnecting with back-off when
// the server goes away, and saying why a socket closed in words.
//
// `?name=ann&room=lounge` in the page's address fills the form and
// connects at once (handy for two tabs).
"use strict";

const $ = (selector) => document.querySelector(selector);

/// What a close code means, for people (RFC 6455 §7.4 and ours).
function closeReason(code, reason) {
  const words = {
    1000: "closed normally",
    1001: "server going away (restart, shutdown, or the route was removed)",
    1002: "protocol error",
    1003: "data the server does not accept",
    1006: "connection lost or refused (no close frame)",
    1007: "invalid data (not UTF-8)",
    1008: "policy violation (a slow consumer, or an expired token)",
    1009: "message too big",
    1011: "the controller failed handling an event",
    1012: "server restarting",
    1013: "try again later",
  }[code] || (code >= 4000 ? "closed by the controller" : "closed");
  return `${code} ${words}${reason ? `: “${reason}”` : ""}`;
}

/// One WebSocket to `path()` that comes back after it goes: the first retry
/// after 0.5 s, doubling up to 10 s, reset once a connection opens.
/// `showOwn`: the route does not send a message back to its sender, so
/// the page shows it itself.
class Channel {
  constructor(prefix, path, onMessage, { showOwn = false } = {}) {
    this.path = path;
    this.showOwn = showOwn;
    this.onMessage = onMessage;
    this.status = $(`#${prefix}-status`);
    this.log = $(`#${prefix}-log`);
    this.form = $(`#${prefix}-say`);
    this.input = $(`#${prefix}-input`);
    this.delay = 500;
    this.opens = 0;
    this.form.addEventListener("submit", (event) => {
      event.preventDefault();
      const text = this.input.value;
      if (text && this.ws?.readyState === WebSocket.OPEN) {
        this.ws.send(text);
        this.input.value = "";
        if (this.showOwn) this.note(text, "message", `${name()} (you)`);
      }
    });
  }

  connect() {
    clearTimeout(this.timer);
    this.ws?.close(1000, "reconnecting");
    const scheme = location.protocol === "https:" ? "wss:" : "ws:";
    const ws = new WebSocket(`${scheme}//${location.host}${this.path()}`);
    this.ws = ws;
    this.setStatus("connecting…", "waiting");
    ws.onopen = () => {
      this.opens += 1;
      this.status.dataset.opens = this.opens;
      this.delay = 500;
      this.setStatus("connected", "open");
      this.setEnabled(true);
    };
    ws.onmessage = (event) => {
      let message;
      try {
        message = JSON.parse(event.data);
      } catch {
        message = { type: "message", data: String(event.data) };
      }
      this.onMessage(message, this);
    };
    ws.onclose = (event) => {
      if (this.ws !== ws) return; // replaced by a newer connection
      this.setEnabled(false);
      const seconds = (this.delay / 1000).toFixed(1);
      this.note(`disconnected: ${closeReason(event.code, event.reason)}`, "error");
      this.setStatus(`${closeReason(event.code, event.reason)}; reconnecting in ${seconds} s`, "closed");
      this.timer = setTimeout(() => this.connect(), this.delay);
      this.delay = Math.min(this.delay * 2, 10000);
    };
  }

  setStatus(text, kind) {
    this.status.textContent = text;
    this.status.className = `status ${kind}`;
  }

  setEnabled(enabled) {
    for (const control of this.form.elements) control.disabled = !enabled;
  }

  /// Adds a line to the log: `who` in bold, if given, then `text`.
  note(text, kind = "system", who = null) {
    const li = document.createElement("li");
    li.className = kind;
    if (who) {
      const name = document.createElement("span");
      name.className = "who";
      name.textContent = `${who}: `;
      li.append(name);
    }
    li.append(document.createTextNode(text));
    this.log.append(li);
    this.log.scrollTop = this.log.scrollHeight;
  }
}

const form = $("#who");
const name = () => $("#name").value.trim();
const room = () => $("#room").value.trim();

// /chat/: the greeting, join and leave notices, everyone else's messages.
const chat = new Channel("chat", () => `/chat/?name=${encodeURIComponent(name())}`, (m, ch) => {
  switch (m.type) {
    case "system": return ch.note(m.data);
    case "join": return ch.note(`${m.user} joined`);
    case "leave": return ch.note(`${m.user} left`);
    case "message": return ch.note(m.data, "message", m.user);
    default: return ch.note(JSON.stringify(m));
  }
}, { showOwn: true });

// /rooms/{room}: presence from the welcome, then join and leave; history.
const present = new Set();
function drawPresence() {
  const names = [...present].sort();
  $("#room-present").textContent = names.length ? names.join(", ") : "only you";
  $("#room-present").dataset.names = names.join(",");
}
const rooms = new Channel("room", () =>
  `/rooms/${encodeURIComponent(room())}?name=${encodeURIComponent(name())}`, (m, ch) => {
  switch (m.type) {
    case "welcome":
      present.clear();
      (m.present || []).forEach((who) => present.add(who));
      drawPresence();
      ch.note(`you are ${m.you} in ${m.room}; ${m.others} other(s) here`);
      for (const old of m.history || []) ch.note(old.data, "message history", old.user);
      return;
    case "join":
      present.add(m.user);
      drawPresence();
      return ch.note(`${m.user} joined`);
    case "leave":
      present.delete(m.user);
      drawPresence();
      return ch.note(`${m.user} left`);
    case "message": return ch.note(m.data, "message", m.user);
    case "announcement": return ch.note(`[to all rooms from ${m.room}] ${m.data}`, "message", m.user);
    case "error": return ch.note(m.data, "error");
    default: return ch.note(JSON.stringify(m));
  }
});

// /admin/: protected by ROLE_ADMIN. A browser cannot set headers on a
// WebSocket, so the token goes in the `access_token` query parameter.
const admin = new Channel("admin", () =>
  `/admin/?access_token=${encodeURIComponent($("#admin-token").value.trim())}`, (m, ch) => {
  switch (m.type) {
    case "welcome": return ch.note(`welcome ${m.user} (${m.roles.join(", ")}); here: ${m.present.join(", ")}`);
    case "join": return ch.note(`${m.user} joined`);
    case "leave": return ch.note(`${m.user} left`);
    case "message": return ch.note(m.data, "message", m.user);
    default: return ch.note(JSON.stringify(m));
  }
});
$("#admin-login").addEventListener("submit", (event) => {
  event.preventDefault();
  admin.note("connecting; without a valid token the server refuses the upgrade (401), " +
    "which a browser reports as 1006");
  admin.connect();
});

form.addEventListener("submit", (event) => {
  event.preventDefault();
  localStorage.setItem("switchyard-demo-name", name());
  $("#room-path").textContent = `/rooms/${room()}`;
  present.clear();
  drawPresence();
  chat.connect();
  rooms.connect();
});

// Fill the form from the address or the last visit; connect if named.
const params = new URLSearchParams(location.search);
$("#name").value = params.get("name") || localStorage.getItem("switchyard-demo-name") || "";
if (params.get("room")) $("#room").value = params.get("room");
if (params.get("name")) form.requestSubmit();
