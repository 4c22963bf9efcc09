"""The controller world's exports, as componentize-py calls them: each
event finds the declared controller, hands it plain Python objects, and
turns its answer back into the world's types.

Only ``on-open`` carries the whole connection record; later events carry
its id. The records are kept here from ``on-open`` to ``on-close``; an
instance that took over from another (a hot reload, a crash) asks the host
for the ones it never saw.
"""

from typing import Dict, Optional

import switchyard as _sdk
from wit_world.imports import host as _host
from wit_world.imports import types as _types

_connections: Dict[int, "_sdk.Connection"] = {}
_controller: Optional["_sdk.Controller"] = None


def _instance() -> "_sdk.Controller":
    global _controller
    if _controller is None:
        if _sdk._controller_class is None:
            raise RuntimeError("no controller: decorate a class with @switchyard.route(...)")
        _controller = _sdk._controller_class()
    return _controller


def _connection(conn: int) -> "_sdk.Connection":
    known = _connections.get(conn)
    if known is not None:
        return known
    record = _host.connection_info(conn)
    if record is None:
        # Gone already (an on-close after the host forgot it): what is
        # known is the id.
        record = _types.Connection(conn, "", "", [], [], None, [])
    known = _sdk.Connection(record)
    _connections[conn] = known
    return known


def _reply(value: "_sdk.Reply") -> Optional[_types.Message]:
    message = _sdk._message(value)
    return None if message is None else message._to_wit()


class WitWorld:
    def describe(self) -> _types.RouteInfo:
        if _sdk._route is None:
            raise RuntimeError("no controller: decorate a class with @switchyard.route(...)")
        return _sdk._route

    def on_open(self, conn: _types.Connection) -> Optional[_types.Message]:
        connection = _sdk.Connection(conn)
        _connections[conn.id] = connection
        return _reply(_instance().on_open(connection))

    def on_message(self, conn: int, msg: _types.Message) -> Optional[_types.Message]:
        return _reply(_instance().on_message(_connection(conn), _sdk.Message._from_wit(msg)))

    def on_close(self, conn: int, info: _types.CloseInfo) -> None:
        try:
            _instance().on_close(_connection(conn), _sdk.CloseInfo(info.code, info.reason))
        finally:
            _connections.pop(conn, None)

    def on_error(self, conn: int, err: _types.ErrorInfo) -> Optional[_types.Message]:
        return _reply(_instance().on_error(_connection(conn), _sdk.ErrorInfo(err.code, err.message)))
