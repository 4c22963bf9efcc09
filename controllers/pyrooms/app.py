"""Rooms, in Python: chat per room with presence and history, one instance
per room (the behaviour of the Rust `rooms` sample, on another route).

- A newcomer gets ``{"type":"welcome","room":..,"you":..,"present":[..],
  "history":[..]}``; the others get ``{"type":"join","user":..}``.
- A text message goes to everyone in the room, the sender included, as
  ``{"type":"message","user":..,"data":..}``, and joins the room's
  history (the last 20, in the host's key-value store, so a hot reload or
  a crash of the instance forgets nothing).
- ``{"type":"leave","user":..}`` when someone leaves.

The nickname is the ``name`` query parameter (else the token's subject,
else ``guest-<id>``), kept as the connection's attachment.

Try it: ``switchyard up`` at the repository root (it builds this with
componentize-py on first use), then connect to
``ws://127.0.0.1:8080/py/rooms/lounge?name=alice`` and ``...?name=bob``.
"""

import switchyard
from switchyard import CloseInfo, Connection, Message, state

HISTORY = 20
NAME_CHARS = 32
MESSAGE_BYTES = 2000


def nickname(conn: Connection) -> str:
    kept = conn.attachment_json()
    if kept:
        return kept
    name = conn.query_param("name") or conn.user or f"guest-{conn.id}"
    return name[:NAME_CHARS]


@switchyard.route("/py/rooms/{room}", name="pyrooms", instance="keyed:room")
class Rooms(switchyard.Controller):
    def on_open(self, conn: Connection):
        me = nickname(conn)
        conn.set_attachment_json(me)
        present = [
            name
            for other in switchyard.connections()
            if other != conn.id and (name := switchyard.attachment_json(other))
        ]
        conn.broadcast_others({"type": "join", "user": me})
        return {
            "type": "welcome",
            "room": conn.param("room"),
            "you": me,
            "present": present,
            "history": state.get_json("history", []),
        }

    def on_message(self, conn: Connection, msg: Message):
        text = msg.as_text
        if text is None:
            return None
        if len(text.encode()) > MESSAGE_BYTES:
            return {"type": "error", "data": f"message too long: at most {MESSAGE_BYTES} bytes"}
        out = {"type": "message", "user": nickname(conn), "data": text}
        history = state.get_json("history", [])
        history.append(out)
        state.set_json("history", history[-HISTORY:])
        switchyard.broadcast(out)
        return None

    def on_close(self, conn: Connection, info: CloseInfo):
        conn.broadcast_others({"type": "leave", "user": nickname(conn)})
