// Switchyard's JavaScript SDK: WebSocket controllers as WebAssembly
// components, built with ComponentizeJS.
//
// A controller is an object (or a class instance) with a route and the
// event methods it needs, exported as the default of `app.js`:
//
//     import { controller } from "switchyard";
//
//     export default controller({
//       route: "/js/echo", name: "js-echo",
//       onMessage(conn, msg) { return msg; },   // back to the sender
//     });
//
// `switchyard build` (or `up`) builds it into `controllers/<name>.wasm`,
// where `<name>` is `package.json`'s name; the `switchyard` import is this
// file. The host calls one event at a time per instance, in order, and the
// object keeps its properties between events. What must outlive a hot
// reload or a crash of the instance goes in the host: `state` (a key-value
// store per instance), attachments (a small value per connection) and
// groups.
//
// An event may return a `Message`, a string (a text message), a
// `Uint8Array` (binary), any other object (JSON text), or nothing; what it
// returns goes to the connection whose event it was. An exception in an
// event closes that connection with 1011 and replaces the instance; every
// other connection stays open.
//
// Connection ids are BigInts (the host's ids are 64-bit): compare them
// with ===, and turn them into strings (String(id)) before JSON.

import * as host from "switchyard:controller/host@0.3.1";

const encoder = new TextEncoder();
const decoder = new TextDecoder();

/// A host call was refused; `kind` says why: "unknown-connection",
/// "closed", "too-large", "slow-consumer" or "invalid-close-code".
export class HostError extends Error {
  constructor(kind) {
    super(`host call refused: ${kind}`);
    this.kind = kind;
  }
}

function call(fn, ...args) {
  try {
    return fn(...args);
  } catch (err) {
    if (err && err.payload !== undefined) throw new HostError(err.payload);
    throw err;
  }
}

/// One complete WebSocket message: text or binary.
export class Message {
  constructor(value) {
    if (typeof value !== "string" && !(value instanceof Uint8Array)) {
      throw new TypeError("a message is a string or a Uint8Array");
    }
    this.value = value;
  }
  static text(text) { return new Message(String(text)); }
  /// `bytes`: a Uint8Array, an ArrayBuffer or an array of byte values.
  static binary(bytes) { return new Message(new Uint8Array(bytes)); }
  /// `value` as JSON text.
  static json(value) { return new Message(JSON.stringify(value)); }
  get isText() { return typeof this.value === "string"; }
  /// The text of a text message, else undefined.
  get text() { return this.isText ? this.value : undefined; }
  /// The payload as bytes (text in UTF-8).
  get bytes() { return this.isText ? encoder.encode(this.value) : this.value; }
  /// The payload parsed as JSON.
  json() { return JSON.parse(this.isText ? this.value : decoder.decode(this.value)); }
  toWit() {
    return this.isText ? { tag: "text", val: this.value } : { tag: "binary", val: this.value };
  }
  static fromWit(msg) {
    return new Message(msg.tag === "text" ? msg.val : new Uint8Array(msg.val));
  }
}

/// What an event returns, as a message (or undefined).
export function toMessage(value) {
  if (value === undefined || value === null) return undefined;
  if (value instanceof Message) return value;
  if (typeof value === "string" || value instanceof Uint8Array) return new Message(value);
  return Message.json(value);
}

/// A client connection, as the host saw it at the upgrade.
export class Connection {
  constructor(record) {
    this.id = record.id;
    this.route = record.route;
    this.path = record.path;
    this.params = Object.fromEntries(record.params);
    this.query = Object.fromEntries(record.query);
    this.user = record.user;
    this.roles = record.roles;
  }
  hasRole(role) { return this.roles.includes(role); }
  send(msg) { return send(this.id, msg); }
  /// Sends `msg` to every other connection of this instance.
  broadcastOthers(msg) { return broadcast(msg, this.id); }
  close(code = 1000, reason = "") { close(this.id, code, reason); }
  join(group) { call(host.join, this.id, group); }
  leave(group) { return call(host.leave, this.id, group); }
  /// A small value the host keeps for this connection (a nickname): it
  /// survives reloads and crashes of the instance.
  get attachment() { return attachment(this.id); }
  set attachment(bytes) { call(host.setAttachment, this.id, bytes); }
  attachmentJson() { return attachmentJson(this.id); }
  setAttachmentJson(value) { this.attachment = encoder.encode(JSON.stringify(value)); }
}

// Host calls.

/// Queues `msg` for connection `to`; false if it has gone.
export function send(to, msg) {
  const message = toMessage(msg);
  if (!message) return false;
  try {
    call(host.send, to, message.toWit());
    return true;
  } catch (err) {
    if (!(err instanceof HostError)) throw err;
    if (err.kind !== "unknown-connection") log(`send to ${to} failed: ${err.kind}`, "warn");
    return false;
  }
}

/// Sends `msg` to every connection of this instance (but `except`);
/// returns how many got it.
export function broadcast(msg, except = undefined) {
  const message = toMessage(msg);
  if (!message) return 0;
  return call(host.broadcast, message.toWit(), except);
}

/// The ids of this instance's open connections.
export function connections() { return Array.from(host.connections()); }

export function close(conn, code = 1000, reason = "") { call(host.close, conn, code, reason); }

/// A line in the host's log, tagged with the route.
export function log(message, level = "info") { host.log(level, String(message)); }

/// The host's limits: maxMessageBytes, attachmentBytes, …
export function limits() { return host.getLimits(); }

export function attachment(conn) { return host.attachment(conn); }

export function attachmentJson(conn) {
  const bytes = host.attachment(conn);
  return bytes === undefined ? undefined : JSON.parse(decoder.decode(bytes));
}

/// The instance's key-value store in the host: kept across hot reloads
/// and crashes of the instance.
export const state = {
  get(key) { return host.stateGet(key); },
  set(key, bytes) { call(host.stateSet, key, bytes); },
  delete(key) { return host.stateDelete(key); },
  keys() { return host.stateKeys(); },
  getJson(key, fallback = undefined) {
    const bytes = host.stateGet(key);
    return bytes === undefined ? fallback : JSON.parse(decoder.decode(bytes));
  },
  setJson(key, value) { call(host.stateSet, key, encoder.encode(JSON.stringify(value))); },
};

/// Named groups of connections across the route's instances.
export const groups = {
  join(conn, group) { call(host.join, conn, group); },
  leave(conn, group) { return call(host.leave, conn, group); },
  publish(group, msg, except = undefined) {
    const message = toMessage(msg);
    return message ? call(host.publish, group, message.toWit(), except) : 0;
  },
  members(group) { return Array.from(host.members(group)); },
};

/// Declares the controller: `spec` has `route` (`/chat/`, `/rooms/{room}`),
/// `name` (unique among the server's routes), optionally `isGranted`
/// (roles of which a client needs one) and `instance` ("shared",
/// "per-connection" or "keyed:<param>"), and the events it needs:
/// `onOpen(conn)`, `onMessage(conn, msg)`, `onClose(conn, info)`,
/// `onError(conn, err)`. A class works too: `controller(new Rooms())`.
export function controller(spec) {
  const instance = spec.instance ?? "shared";
  let mode;
  if (instance === "shared") mode = { tag: "shared" };
  else if (instance === "per-connection") mode = { tag: "per-connection" };
  else if (instance.startsWith("keyed:") && instance.length > 6) mode = { tag: "keyed", val: instance.slice(6) };
  else throw new Error(`instance must be "shared", "per-connection" or "keyed:<param>", not ${instance}`);
  if (typeof spec.route !== "string" || typeof spec.name !== "string") {
    throw new Error("a controller needs a route and a name");
  }
  spec.routeInfo = { route: spec.route, name: spec.name, isGranted: spec.isGranted ?? [], instance: mode };
  return spec;
}

/// The world's exports for `app` (what `controller` returned): the entry
/// module the builder writes exports these.
export function world(app) {
  if (!app || !app.routeInfo) {
    throw new Error("app.js must `export default controller({...})`");
  }
  // Only on-open carries the connection record; later events carry its
  // id. Records are kept from on-open to on-close; an instance that took
  // over from another asks the host for the ones it never saw.
  const known = new Map();
  const connection = (id) => {
    let conn = known.get(id);
    if (!conn) {
      const record = host.connectionInfo(id) ?? { id, route: "", path: "", params: [], query: [], user: undefined, roles: [] };
      conn = new Connection(record);
      known.set(id, conn);
    }
    return conn;
  };
  const reply = (value) => toMessage(value)?.toWit();
  return {
    describe: () => app.routeInfo,
    onOpen(record) {
      const conn = new Connection(record);
      known.set(record.id, conn);
      return reply(app.onOpen?.(conn));
    },
    onMessage(id, msg) {
      return reply(app.onMessage?.(connection(id), Message.fromWit(msg)));
    },
    onClose(id, info) {
      try {
        app.onClose?.(connection(id), { code: info.code, reason: info.reason });
      } finally {
        known.delete(id);
      }
    },
    onError(id, err) {
      return reply(app.onError?.(connection(id), { code: err.code, message: err.message }));
    },
  };
}
