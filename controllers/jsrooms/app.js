// Rooms, in JavaScript: chat per room with presence and history, one
// instance per room (the behaviour of the Rust `rooms` sample and the
// Python `pyrooms`, on another route).
//
// - A newcomer gets {"type":"welcome","room":..,"you":..,"present":[..],
//   "history":[..]}; the others get {"type":"join","user":..}.
// - A text message goes to everyone in the room, the sender included, as
//   {"type":"message","user":..,"data":..}, and joins the room's history
//   (the last 20, in the host's key-value store, so a hot reload or a
//   crash of the instance forgets nothing).
// - {"type":"leave","user":..} when someone leaves.
//
// The nickname is the `name` query parameter (else the token's subject,
// else `guest-<id>`), kept as the connection's attachment.
//
// Try it: `switchyard up` at the repository root (it installs ComponentizeJS
// with npm on first use and builds this), then connect to
// ws://127.0.0.1:8080/js/rooms/lounge?name=alice and ...?name=bob.

import { attachmentJson, broadcast, connections, controller, state } from "switchyard";

const HISTORY = 20;
const NAME_CHARS = 32;
const MESSAGE_BYTES = 2000;

function nickname(conn) {
  const kept = conn.attachmentJson();
  if (kept) return kept;
  return (conn.query.name || conn.user || `guest-${conn.id}`).slice(0, NAME_CHARS);
}

export default controller({
  route: "/js/rooms/{room}",
  name: "jsrooms",
  instance: "keyed:room",

  onOpen(conn) {
    const me = nickname(conn);
    conn.setAttachmentJson(me);
    const present = connections()
      .filter((id) => id !== conn.id)
      .map((id) => attachmentJson(id))
      .filter(Boolean);
    conn.broadcastOthers({ type: "join", user: me });
    return {
      type: "welcome",
      room: conn.params.room,
      you: me,
      present,
      history: state.getJson("history", []),
    };
  },

  onMessage(conn, msg) {
    const text = msg.text;
    if (text === undefined) return undefined;
    if (new TextEncoder().encode(text).length > MESSAGE_BYTES) {
      return { type: "error", data: `message too long: at most ${MESSAGE_BYTES} bytes` };
    }
    const out = { type: "message", user: nickname(conn), data: text };
    const history = state.getJson("history", []);
    history.push(out);
    state.setJson("history", history.slice(-HISTORY));
    broadcast(out);
    return undefined;
  },

  onClose(conn) {
    conn.broadcastOthers({ type: "leave", user: nickname(conn) });
  },
});
