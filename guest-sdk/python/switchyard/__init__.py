"""Switchyard's Python SDK: WebSocket controllers as WebAssembly components.

A controller is a class with a route and the event methods it needs::

    import switchyard
    from switchyard import Connection, Message

    @switchyard.route("/py/echo", name="py-echo")
    class Echo(switchyard.Controller):
        def on_message(self, conn: Connection, msg: Message):
            return msg  # back to the sender

Put it in ``app.py`` beside a ``pyproject.toml`` in a folder under
``controllers/``; ``switchyard build`` (or ``up``) turns it into
``controllers/<project name>.wasm`` with componentize-py. The host calls one
event at a time per instance, in order, and the object keeps its
attributes between events. What must outlive a hot reload or a crash of
the instance goes in the host: ``state`` (a key-value store per instance),
attachments (a small value per connection) and groups.

An event may return a ``Message``, a ``str`` (a text message), ``bytes``
(a binary message), a ``dict`` or ``list`` (JSON text), or ``None``; what it
returns goes to the connection whose event it was. An exception in an event
closes that connection with 1011 and replaces the instance; every other
connection stays open.
"""

from __future__ import annotations

import json as _json
from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterable, List, Optional, Union

from componentize_py_types import Err
from wit_world.imports import host as _host
from wit_world.imports import types as _types

__all__ = [
    "CloseInfo",
    "Connection",
    "Controller",
    "ErrorInfo",
    "HostError",
    "Message",
    "attachment",
    "attachment_json",
    "broadcast",
    "close",
    "connections",
    "groups",
    "limits",
    "log",
    "route",
    "send",
    "state",
]


class HostError(Exception):
    """A host call was refused; ``kind`` says why: ``"unknown-connection"``,
    ``"closed"``, ``"too-large"``, ``"slow-consumer"`` or
    ``"invalid-close-code"``."""

    def __init__(self, kind: str):
        super().__init__(kind)
        self.kind = kind


def _call(function: Callable[..., Any], *args: Any) -> Any:
    try:
        return function(*args)
    except Err as err:
        raise HostError(err.value.name.lower().replace("_", "-")) from None


class Message:
    """One complete WebSocket message: text or binary."""

    __slots__ = ("_value",)

    def __init__(self, value: Union[str, bytes]):
        if not isinstance(value, (str, bytes, bytearray)):
            raise TypeError(f"a message is str or bytes, not {type(value).__name__}")
        self._value = bytes(value) if isinstance(value, bytearray) else value

    @staticmethod
    def text(text: str) -> "Message":
        return Message(str(text))

    @staticmethod
    def binary(data: bytes) -> "Message":
        return Message(bytes(data))

    @staticmethod
    def json(value: Any) -> "Message":
        """``value`` as compact JSON text."""
        return Message(_json.dumps(value, separators=(",", ":"), ensure_ascii=False))

    @property
    def is_text(self) -> bool:
        return isinstance(self._value, str)

    @property
    def as_text(self) -> Optional[str]:
        """The text of a text message, else ``None``."""
        return self._value if isinstance(self._value, str) else None

    @property
    def data(self) -> bytes:
        """The payload as bytes (text in UTF-8)."""
        return self._value.encode() if isinstance(self._value, str) else self._value

    def json_value(self) -> Any:
        """The payload parsed as JSON (raises ``ValueError`` if it is not)."""
        return _json.loads(self._value)

    def __len__(self) -> int:
        return len(self.data)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Message) and other._value == self._value

    def __repr__(self) -> str:
        return f"Message({self._value!r})"

    def _to_wit(self) -> _types.Message:
        if isinstance(self._value, str):
            return _types.Message_Text(self._value)
        return _types.Message_Binary(self._value)

    @staticmethod
    def _from_wit(msg: _types.Message) -> "Message":
        return Message(msg.value)


Reply = Union[Message, str, bytes, dict, list, None]


def _message(value: Reply) -> Optional[Message]:
    if value is None or isinstance(value, Message):
        return value
    if isinstance(value, (str, bytes, bytearray)):
        return Message(value)
    if isinstance(value, (dict, list)):
        return Message.json(value)
    raise TypeError(
        f"an event returns a Message, str, bytes, dict, list or None, not {type(value).__name__}"
    )


@dataclass(frozen=True)
class CloseInfo:
    """Why a connection ended: the close code and reason."""

    code: int
    reason: str


@dataclass(frozen=True)
class ErrorInfo:
    """A problem the host found on a connection (1007, 1009, …)."""

    code: int
    message: str


class Connection:
    """A client connection, as the host saw it at the upgrade."""

    __slots__ = ("id", "route", "path", "params", "query", "user", "roles")

    def __init__(self, record: _types.Connection):
        self.id: int = record.id
        self.route: str = record.route
        self.path: str = record.path
        self.params: Dict[str, str] = dict(record.params)
        self.query: Dict[str, str] = dict(record.query)
        self.user: Optional[str] = record.user
        self.roles: List[str] = list(record.roles)

    def param(self, name: str) -> Optional[str]:
        """A ``{name}`` capture of the route."""
        return self.params.get(name)

    def query_param(self, name: str) -> Optional[str]:
        return self.query.get(name)

    def has_role(self, role: str) -> bool:
        return role in self.roles

    def send(self, msg: Reply) -> bool:
        return send(self.id, msg)

    def broadcast_others(self, msg: Reply) -> int:
        """Sends ``msg`` to every other connection of this instance."""
        return broadcast(msg, except_=self.id)

    def close(self, code: int = 1000, reason: str = "") -> None:
        close(self.id, code, reason)

    def join(self, group: str) -> None:
        _call(_host.join, self.id, group)

    def leave(self, group: str) -> bool:
        return _call(_host.leave, self.id, group)

    @property
    def attachment(self) -> Optional[bytes]:
        """A small value the host keeps for this connection (a nickname):
        it survives reloads and crashes of the instance."""
        return attachment(self.id)

    @attachment.setter
    def attachment(self, value: bytes) -> None:
        _call(_host.set_attachment, self.id, bytes(value))

    def attachment_json(self) -> Any:
        return attachment_json(self.id)

    def set_attachment_json(self, value: Any) -> None:
        self.attachment = _json.dumps(value, separators=(",", ":")).encode()

    def __repr__(self) -> str:
        return f"Connection(id={self.id}, path={self.path!r})"


class Controller:
    """The base of a controller: override the events you need. One object
    serves one instance (every connection of a shared route, one key of a
    keyed route, or one connection), one event at a time."""

    def on_open(self, conn: Connection) -> Reply:
        return None

    def on_message(self, conn: Connection, msg: Message) -> Reply:
        return None

    def on_close(self, conn: Connection, info: CloseInfo) -> None:
        return None

    def on_error(self, conn: Connection, err: ErrorInfo) -> Reply:
        return None


_route: Optional[_types.RouteInfo] = None
_controller_class: Optional[type] = None


def route(
    pattern: str,
    *,
    name: str,
    is_granted: Iterable[str] = (),
    instance: str = "shared",
) -> Callable[[type], type]:
    """Declares the controller class and its route (as ``#[SocketRoute]``):
    ``pattern`` (``/chat/``, ``/rooms/{room}``, a trailing ``{*rest}``),
    ``name`` (unique among the server's routes), ``is_granted`` (roles of
    which a client needs one; the host checks the token at the upgrade) and
    ``instance`` (``"shared"``, ``"per-connection"`` or ``"keyed:<param>"``)."""
    if instance == "shared":
        mode: _types.InstanceMode = _types.InstanceMode_Shared()
    elif instance == "per-connection":
        mode = _types.InstanceMode_PerConnection()
    elif instance.startswith("keyed:") and len(instance) > len("keyed:"):
        mode = _types.InstanceMode_Keyed(instance[len("keyed:"):])
    else:
        raise ValueError(
            f'instance must be "shared", "per-connection" or "keyed:<param>", not {instance!r}'
        )

    def register(cls: type) -> type:
        global _route, _controller_class
        if _controller_class is not None:
            raise RuntimeError(
                f"one controller per module: {_controller_class.__name__} is already declared"
            )
        _route = _types.RouteInfo(pattern, name, list(is_granted), mode)
        _controller_class = cls
        return cls

    return register


# Host calls.


def send(to: int, msg: Reply) -> bool:
    """Queues ``msg`` for connection ``to``; ``False`` if it has gone."""
    message = _message(msg)
    if message is None:
        return False
    try:
        _call(_host.send, to, message._to_wit())
        return True
    except HostError as err:
        if err.kind != "unknown-connection":
            log(f"send to {to} failed: {err.kind}", "warn")
        return False


def broadcast(msg: Reply, except_: Optional[int] = None) -> int:
    """Sends ``msg`` to every connection of this instance (but ``except_``);
    returns how many got it."""
    message = _message(msg)
    if message is None:
        return 0
    return _call(_host.broadcast, message._to_wit(), except_)


def connections() -> List[int]:
    """The ids of this instance's open connections."""
    return list(_host.connections())


def close(conn: int, code: int = 1000, reason: str = "") -> None:
    """Closes connection ``conn`` with ``code`` and ``reason``."""
    _call(_host.close, conn, code, reason)


_LEVELS = {
    "trace": _types.LogLevel.TRACE,
    "debug": _types.LogLevel.DEBUG,
    "info": _types.LogLevel.INFO,
    "warn": _types.LogLevel.WARN,
    "error": _types.LogLevel.ERROR,
}


def log(message: str, level: str = "info") -> None:
    """A line in the host's log, tagged with the route."""
    _host.log(_LEVELS[level], str(message))


def limits() -> _types.Limits:
    """The host's limits: ``max_message_bytes``, ``attachment_bytes``, …"""
    return _host.get_limits()


def attachment(conn: int) -> Optional[bytes]:
    """Connection ``conn``'s attachment."""
    return _host.attachment(conn)


def attachment_json(conn: int) -> Any:
    value = attachment(conn)
    return None if value is None else _json.loads(value)


class _State:
    """The instance's key-value store in the host: kept across hot reloads
    and crashes of the instance (and, for a keyed route, a while after its
    last connection leaves)."""

    def get(self, key: str) -> Optional[bytes]:
        return _host.state_get(key)

    def set(self, key: str, value: bytes) -> None:
        _call(_host.state_set, key, bytes(value))

    def delete(self, key: str) -> bool:
        return _host.state_delete(key)

    def keys(self) -> List[str]:
        return list(_host.state_keys())

    def get_json(self, key: str, default: Any = None) -> Any:
        value = self.get(key)
        return default if value is None else _json.loads(value)

    def set_json(self, key: str, value: Any) -> None:
        self.set(key, _json.dumps(value, separators=(",", ":")).encode())


state = _State()


class _Groups:
    """Named groups of connections across the route's instances."""

    def join(self, conn: int, group: str) -> None:
        _call(_host.join, conn, group)

    def leave(self, conn: int, group: str) -> bool:
        return _call(_host.leave, conn, group)

    def publish(self, group: str, msg: Reply, except_: Optional[int] = None) -> int:
        message = _message(msg)
        if message is None:
            return 0
        return _call(_host.publish, group, message._to_wit(), except_)

    def members(self, group: str) -> List[int]:
        return list(_host.members(group))


groups = _Groups()
