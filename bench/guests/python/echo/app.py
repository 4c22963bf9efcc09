"""Echo, in Python: every message goes back to its sender unchanged (the
`languages` bench compares it with the Rust and JavaScript echoes)."""

import switchyard
from switchyard import Connection, Message


@switchyard.route("/echo", name="echo")
class Echo(switchyard.Controller):
    def on_message(self, conn: Connection, msg: Message):
        return msg
