// Echo, in JavaScript: every message goes back to its sender unchanged (the
// `languages` bench compares it with the Rust and Python echoes).

import { controller } from "switchyard";

export default controller({
  route: "/echo",
  name: "echo",

  onMessage(conn, msg) {
    return msg;
  },
});
