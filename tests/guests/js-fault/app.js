// A JavaScript controller that misbehaves on command, the twin of
// tests/guests/py-fault (see its app.py for the commands).

import { broadcast, controller, log, state } from "switchyard";

export default controller({
  route: "/js/fault",
  name: "js-fault",

  onOpen(conn) {
    log(`open ${conn.id}`);
  },

  onMessage(conn, msg) {
    const text = msg.text;
    if (text === "raise") throw new Error(`asked to fail by ${conn.id}`);
    if (text === "loop") for (;;) {}
    if (text === "count") {
      const count = state.getJson("count", 0) + 1;
      state.setJson("count", count);
      return String(count);
    }
    if (text === "who") {
      return { id: Number(conn.id), path: conn.path, query: conn.query, user: conn.user ?? null, roles: conn.roles };
    }
    if (text?.startsWith("all ")) return String(broadcast(text.slice(4)));
    if (text === "close") {
      conn.close(4000, "asked");
      return undefined;
    }
    return msg;
  },
});
