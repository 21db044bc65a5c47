"""A Varlink server owned by trio.

Transport → protocol → handlers: this module frames NUL-terminated JSON messages, answers
`org.varlink.service`, checks every call against the interface file, runs the handler (a plain
async method, or an async iterator for `more` streams) and checks every reply before it goes out.
A connection that breaks the protocol (garbage, over-size message) is closed and counted; other
connections never notice. On shutdown it stops accepting, lets calls in flight finish within a
grace period, and ends streams at once.
"""

from __future__ import annotations

import errno
import json
import logging
import math
import pwd
import socket
import struct
from collections.abc import AsyncIterator
from contextlib import aclosing
from dataclasses import dataclass, field

import trio

from beemeshd import errors
from beemeshd.api import errors as verr
from beemeshd.api.idl import BadValue, Interface

log = logging.getLogger("beemeshd.varlink")

SERVICE = "org.varlink.service"
SERVICE_IDL = """\
# The Varlink service interface: introspection of this service.
interface org.varlink.service

# Get a list of all the interfaces a service provides and information about the implementation.
method GetInfo() -> (
  vendor: string,
  product: string,
  version: string,
  url: string,
  interfaces: []string
)

# Get the description of an interface that is implemented by this service.
method GetInterfaceDescription(interface: string) -> (description: string)

# The requested interface was not found.
error InterfaceNotFound (interface: string)

# The requested method was not found
error MethodNotFound (method: string)

# The interface defines the requested method, but the service does not implement it.
error MethodNotImplemented (method: string)

# One of the passed parameters is invalid.
error InvalidParameter (parameter: string)

# Client is denied access
error PermissionDenied ()

# Method is expected to be called with 'more' set to true, but wasn't
error ExpectedMore ()
"""


class ProtocolViolation(Exception):
    """The peer broke the Varlink framing or message format: close its connection."""


@dataclass
class Call:
    """What a handler learns about the call besides its parameters."""

    method: str
    more: bool
    oneway: bool
    # Unix user name of the caller (SO_PEERCRED), when the transport tells.
    user: str | None = None


@dataclass(frozen=True)
class Final:
    """Wraps the last reply of a `more` stream (sent with continues=false)."""

    parameters: dict


@dataclass(eq=False)  # identity semantics: kept in a set
class _Conn:
    scope: trio.CancelScope = field(default_factory=trio.CancelScope)
    idle_scope: trio.CancelScope | None = None
    streaming: bool = False
    user: str | None = None


class _Reader:
    """Splits a byte stream into NUL-terminated messages, refusing any over `limit` bytes."""

    def __init__(self, stream: trio.abc.ReceiveStream, limit: int):
        self.stream = stream
        self.limit = limit
        self.buf = bytearray()
        self.eof = False

    async def fill(self) -> None:
        data = await self.stream.receive_some(65536)
        if not data:
            self.eof = True
        self.buf += data

    async def next_message(self) -> bytes | None:
        while True:
            end = self.buf.find(b"\0")
            if end >= 0:
                if end > self.limit:
                    raise ProtocolViolation(f"message of {end} bytes exceeds {self.limit}")
                msg = bytes(self.buf[:end])
                del self.buf[: end + 1]
                return msg
            if len(self.buf) > self.limit:
                raise ProtocolViolation(f"message exceeds {self.limit} bytes")
            if self.eof:
                if self.buf.strip():
                    raise ProtocolViolation("connection closed inside a message")
                return None
            await self.fill()


def encode(message: dict) -> bytes:
    return json.dumps(message, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode() + b"\0"


class VarlinkServer:
    def __init__(
        self,
        interface: Interface,
        handlers: object,
        *,
        version: str,
        max_message: int = 4 << 20,
        max_connections: int = 512,
        grace: float = 5.0,
        on_bad_connection=lambda: None,
    ):
        self.interface = interface
        self.handlers = handlers
        self.version = version
        self.max_message = max_message
        self.max_connections = max_connections
        self.grace = grace
        self.on_bad_connection = on_bad_connection
        self._conns: set[_Conn] = set()
        self._closing = False
        self._shutdown = trio.Event()
        self._all_closed = trio.Event()
        self._accept_scope = trio.CancelScope()
        self.stopped = trio.Event()

    # -- lifecycle ---------------------------------------------------------------------------
    def shutdown(self) -> None:
        """Stop accepting; close idle connections and streams; let unary calls finish."""
        self._shutdown.set()

    async def run(self, sock: socket.socket, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        try:
            await self._run(sock, task_status)
        finally:
            self.stopped.set()

    async def _run(self, sock: socket.socket, task_status) -> None:
        sock.setblocking(False)
        listener = trio.SocketListener(trio.socket.from_stdlib_socket(sock))
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._accept_loop, listener, nursery)
            task_status.started()
            await self._shutdown.wait()
            self._closing = True
            self._accept_scope.cancel()
            for conn in list(self._conns):
                if conn.idle_scope is not None or conn.streaming:
                    conn.scope.cancel()
            if self._conns:
                with trio.move_on_after(self.grace):
                    await self._all_closed.wait()
                if self._conns:
                    log.warning("cancelling %d call(s) still running after %.1f s", len(self._conns), self.grace)
            nursery.cancel_scope.cancel()

    async def _accept_loop(self, listener: trio.SocketListener, nursery: trio.Nursery) -> None:
        with self._accept_scope:
            async with listener:
                while True:
                    try:
                        stream = await listener.accept()
                    except OSError as exc:  # EMFILE & co: back off instead of spinning
                        if exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                            log.error("accept failed: %s", exc)
                            await trio.sleep(0.1)
                            continue
                        raise
                    if len(self._conns) >= self.max_connections:
                        log.warning("refusing connection: %d already open", len(self._conns))
                        await stream.aclose()
                        continue
                    conn = _Conn()
                    self._conns.add(conn)
                    nursery.start_soon(self._serve_connection, stream, conn)

    async def serve_stream(self, stream: trio.abc.Stream) -> None:
        """Serve one already-connected stream (in-memory tests, varlinkctl exec mode)."""
        conn = _Conn()
        self._conns.add(conn)
        await self._serve_connection(stream, conn)

    async def _serve_connection(self, stream: trio.abc.Stream, conn: _Conn) -> None:
        conn.user = peer_user(stream)
        reader = _Reader(stream, self.max_message)
        try:
            with conn.scope:
                async with stream:
                    try:
                        await self._serve_messages(stream, reader, conn)
                    except ProtocolViolation as exc:  # counted before the client sees the close
                        log.warning("closing Varlink connection: %s", exc)
                        self.on_bad_connection()
        except (trio.BrokenResourceError, trio.ClosedResourceError, ConnectionError):
            pass  # the client went away; nothing to tell it
        except Exception:  # a bug must not take the server down with it
            log.exception("Varlink connection failed")
        finally:
            self._conns.discard(conn)
            if self._closing and not self._conns:
                self._all_closed.set()

    async def _serve_messages(self, stream: trio.abc.Stream, reader: _Reader, conn: _Conn) -> None:
        while not self._closing:
            with trio.CancelScope() as idle:
                conn.idle_scope = idle
                msg = await reader.next_message()
            conn.idle_scope = None
            if idle.cancelled_caught or msg is None:
                return
            await self._handle(msg, stream, reader, conn)
            if reader.eof and not reader.buf:
                return

    # -- one message -------------------------------------------------------------------------
    async def _handle(self, msg: bytes, stream: trio.abc.Stream, reader: _Reader, conn: _Conn) -> None:
        try:
            req = json.loads(msg)
        except ValueError as exc:
            raise ProtocolViolation(f"not JSON: {exc}") from None
        if not isinstance(req, dict) or not isinstance(req.get("method"), str):
            raise ProtocolViolation("not a Varlink call (no method)")
        method: str = req["method"]
        more = req.get("more") is True
        oneway = req.get("oneway") is True
        params = req.get("parameters", {})
        if params is None:
            params = {}

        async def send(message: dict) -> None:
            if not oneway:
                await stream.send_all(encode(message))

        try:
            if not isinstance(params, dict):
                raise verr.invalid_parameter("parameters")
            iface, _, name = method.rpartition(".")
            if iface == SERVICE:
                await send({"parameters": self._service_call(name, params)})
                return
            if iface != self.interface.name:
                raise verr.interface_not_found(iface)
            result = await self._call(name, params, Call(name, more, oneway, conn.user))
            if isinstance(result, dict):
                await send({"parameters": self._checked_reply(name, result)})
                return
            if not more:  # a handler streamed to a caller that cannot take it
                raise verr.expected_more()
            conn.streaming = True
            try:
                await self._stream(name, result, send, reader)
            finally:
                conn.streaming = False
        except verr.VarlinkError as exc:
            await send({"error": exc.name, "parameters": exc.parameters})

    async def _call(self, name: str, params: dict, call: Call):
        method = self.interface.methods.get(name)
        handler = getattr(self.handlers, name, None)
        if method is None or handler is None:
            raise verr.method_not_found(f"{self.interface.name}.{name}")
        try:
            self.interface.check_struct(method.in_type, params)
        except BadValue as exc:
            raise verr.invalid_parameter(exc.path) from None
        try:
            return await handler(call, **params)
        except errors.BeeMeshError as exc:
            raise verr.from_domain(exc) from None
        except verr.VarlinkError:
            raise
        except Exception as exc:
            log.exception("%s failed", name)
            raise verr.internal_error(f"{type(exc).__name__}: {exc}") from None

    async def _stream(self, name: str, items: AsyncIterator, send, reader: _Reader) -> None:
        async with trio.open_nursery() as nursery:
            # A client that hangs up ends its stream (a Watch would otherwise run forever).
            nursery.start_soon(self._cancel_on_hangup, reader, nursery.cancel_scope)
            try:
                async with aclosing(items):
                    async for item in items:
                        if isinstance(item, Final):
                            await send({"parameters": self._checked_reply(name, item.parameters)})
                            break
                        await send({"parameters": self._checked_reply(name, item), "continues": True})
                    else:
                        log.error("%s stream ended without a final reply", name)
                        raise verr.internal_error("stream ended without a final reply")
            except errors.BeeMeshError as exc:
                await send(_error_message(verr.from_domain(exc)))
            except verr.VarlinkError as exc:
                await send(_error_message(exc))
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                raise
            except Exception as exc:
                log.exception("%s stream failed", name)
                await send(_error_message(verr.internal_error(f"{type(exc).__name__}: {exc}")))
            nursery.cancel_scope.cancel()

    @staticmethod
    async def _cancel_on_hangup(reader: _Reader, scope: trio.CancelScope) -> None:
        while not reader.eof:
            if len(reader.buf) > reader.limit:
                break
            try:
                await reader.fill()
            except (trio.BrokenResourceError, trio.ClosedResourceError, ConnectionError):
                reader.eof = True
        scope.cancel()

    def _checked_reply(self, name: str, reply: dict) -> dict:
        try:
            self.interface.check_struct(self.interface.methods[name].out_type, reply, "reply")
        except BadValue as exc:
            log.error("%s produced a reply that does not match the interface: %s", name, exc)
            raise verr.internal_error(f"reply does not match the interface: {exc}") from None
        return reply

    def _service_call(self, name: str, params: dict) -> dict:
        if name == "GetInfo":
            return {
                "vendor": "BeeMesh",
                "product": "beemeshd",
                "version": self.version,
                "url": "https://github.com/beemesh",
                "interfaces": [SERVICE, self.interface.name],
            }
        if name == "GetInterfaceDescription":
            wanted = params.get("interface")
            if not isinstance(wanted, str):
                raise verr.invalid_parameter("interface")
            if wanted == self.interface.name:
                return {"description": self.interface.text}
            if wanted == SERVICE:
                return {"description": SERVICE_IDL}
            raise verr.interface_not_found(wanted)
        raise verr.method_not_found(f"{SERVICE}.{name}")


def peer_user(stream) -> str | None:
    """The unix user at the other end of a unix socket stream (policies see it), else None."""
    sock = getattr(stream, "socket", None)
    if sock is None or getattr(sock, "family", None) != socket.AF_UNIX:
        return None
    try:
        _pid, uid, _gid = struct.unpack("3i", sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED,
                                                              struct.calcsize("3i")))
        return pwd.getpwuid(uid).pw_name
    except (OSError, KeyError, struct.error):
        return None


def _error_message(exc: verr.VarlinkError) -> dict:
    return {"error": exc.name, "parameters": exc.parameters}


def finite(x: float) -> float:
    """JSON has no NaN/inf; replies carry finite floats only."""
    return x if math.isfinite(x) else 0.0
