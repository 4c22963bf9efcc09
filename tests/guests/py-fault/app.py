"""A Python controller that misbehaves on command. Text commands (anything
else is echoed back):

- ``raise``: raises an exception out of the event;
- ``loop``: spins forever (the CPU budget must stop it);
- ``count``: adds one to ``count`` in the host's key-value store and
  answers the new value (it outlives crashes and reloads);
- ``who``: answers the connection as JSON;
- ``all <text>``: broadcasts ``<text>`` to every connection and answers how
  many got it;
- ``close``: closes its own connection with 4000 "asked".
"""

import switchyard
from switchyard import Connection, Message, state


@switchyard.route("/py/fault", name="py-fault")
class Fault(switchyard.Controller):
    def on_open(self, conn: Connection):
        switchyard.log(f"open {conn.id}")
        return None

    def on_message(self, conn: Connection, msg: Message):
        text = msg.as_text
        if text == "raise":
            raise RuntimeError(f"asked to fail by {conn.id}")
        if text == "loop":
            while True:
                pass
        if text == "count":
            count = state.get_json("count", 0) + 1
            state.set_json("count", count)
            return str(count)
        if text == "who":
            return {
                "id": conn.id,
                "path": conn.path,
                "query": conn.query,
                "user": conn.user,
                "roles": conn.roles,
            }
        if text is not None and text.startswith("all "):
            return str(switchyard.broadcast(text[4:]))
        if text == "close":
            conn.close(4000, "asked")
            return None
        return msg
