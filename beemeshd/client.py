"""A small synchronous Varlink client for beemeshd (unix sockets only, no python-varlink).

Messages are JSON objects terminated by NUL. One `Client` keeps one connection and reuses it for
successive calls; it is not thread-safe (use one per thread).
"""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Iterator

INTERFACE = "io.beemesh.Mesh"
HINT = "is it running? (systemctl --user start beemeshd.socket)"


def default_address() -> str:
    """$BEEMESH_ADDRESS, else the per-user socket under $XDG_RUNTIME_DIR."""
    if os.environ.get("BEEMESH_ADDRESS"):
        return os.environ["BEEMESH_ADDRESS"]
    run = os.environ.get("XDG_RUNTIME_DIR") or f"/run/user/{os.getuid()}"
    return f"unix:{run}/beemesh/{INTERFACE}"


class ConnectError(Exception):
    """beemeshd cannot be reached, or the connection broke."""


class VarlinkCallError(Exception):
    """An error reply: `name` is the full error name, `parameters` its parameters."""

    def __init__(self, name: str, parameters: dict | None = None):
        self.name = name
        self.parameters = parameters or {}
        super().__init__(name, self.parameters)

    @property
    def short_name(self) -> str:
        return self.name.rpartition(".")[2]

    @property
    def message(self) -> str:
        return describe_error(self.short_name, self.parameters)

    def __str__(self) -> str:
        msg = self.message
        return f"{self.short_name}: {msg}" if msg else self.short_name


def describe_error(short: str, p: dict) -> str:
    """A one-line human message for the parameters of a documented error."""
    if short == "InvalidManifest":
        where = f"document {p['document']}: " if p.get("document") is not None else ""
        field = f"{p['field']}: " if p.get("field") else ""
        return f"{where}{field}{p.get('reason', '')}"
    if short == "WorkloadNotFound":
        return f"{p.get('namespace', 'default')}/{p.get('name', '')}"
    if short == "NoCapacity":
        why = "; ".join(f"{r.get('peer', '?')[-8:]}: {r.get('reason', '')}" for r in p.get("reasons") or [])
        return f"no peer can run {p.get('name', '')}" + (f": {why}" if why else "")
    if short == "PolicyDenied":
        return f"{p.get('policy', '')}: " + "; ".join(p.get("messages") or [])
    if short == "RuntimeUnavailable":
        return p.get("reason", "") + (f" (endpoint {p['endpoint']})" if p.get("endpoint") else "")
    if short == "PeerUnreachable":
        return f"{p.get('peer', '')}: {p.get('reason', '')}"
    if short == "Timeout":
        detail = f" ({p['detail']})" if p.get("detail") else ""
        return f"{p.get('operation', '')} did not finish in {p.get('seconds', 0):g} s{detail}"
    if short == "NotImplemented":
        return f"{p.get('method', '')}: {p.get('reason', '')}"
    if short == "InvalidPolicy":
        where = f":{p['line']}:{p.get('column', 1)}" if p.get("line") is not None else ""
        return f"{p.get('name', '')}{where}: {p.get('message', '')}"
    if short == "PolicyNotFound":
        return f"no {p.get('scope', '')} policy {p.get('name', '')}"
    if short == "MeshKeyRequired":
        return f"{p.get('operation', '')}: {p.get('reason', '')}"
    if short == "MeshExists":
        return f"this peer already belongs to mesh {p.get('meshName', '')} ({p.get('meshId', '')})"
    if short == "InvalidCredential":
        return f"{p.get('reason', '')}: {p.get('detail', '')}"
    if len(p) == 1:  # InternalError(reason), InvalidParameter(parameter), MethodNotFound(method), ...
        return str(next(iter(p.values())))
    return ", ".join(f"{k}={json.dumps(v)}" for k, v in p.items())


class Client:
    def __init__(self, address: str | None = None, *, connect_timeout: float = 5.0):
        self.address = address or default_address()
        if not self.address.startswith("unix:"):
            raise ValueError(f"unsupported address {self.address!r} (expected unix:PATH)")
        path = self.address[5:].split(";", 1)[0]  # drop varlink options such as ";mode=0600"
        self.path = "\0" + path[1:] if path.startswith("@") else path  # @name: abstract socket
        self.connect_timeout = connect_timeout
        self._sock: socket.socket | None = None
        self._buf = bytearray()
        self._streaming = False

    # -- connection --------------------------------------------------------------------------
    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        sock, self._sock = self._sock, None
        self._buf.clear()
        self._streaming = False
        if sock is not None:
            sock.close()

    def hangup(self) -> None:
        """Tell the server we are done (ends a stream); safe to call from another thread. Replies
        already sent can still be read."""
        sock = self._sock
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_WR)
            except OSError:
                pass

    def _connect(self) -> socket.socket:
        if self._sock is not None:
            return self._sock
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.connect_timeout)
        try:
            sock.connect(self.path)
        except OSError as exc:
            sock.close()
            why = exc.strerror or str(exc) or type(exc).__name__
            raise ConnectError(f"cannot reach beemeshd at {self.address}: {why} — {HINT}") from None
        sock.settimeout(None)
        self._sock = sock
        return sock

    def _lost(self, why: str) -> ConnectError:
        self.close()
        return ConnectError(f"lost the connection to beemeshd at {self.address}: {why}")

    # -- messages ----------------------------------------------------------------------------
    def _send(self, method: str, params: dict | None, more: bool) -> socket.socket:
        if self._streaming:  # an unfinished stream owns the connection: start afresh
            self.close()
        sock = self._connect()
        if "." not in method:
            method = f"{INTERFACE}.{method}"
        msg = {"method": method, "parameters": {k: v for k, v in (params or {}).items() if v is not None}}
        if more:
            msg["more"] = True
        try:
            sock.sendall(json.dumps(msg).encode() + b"\0")
        except OSError as exc:
            raise self._lost(exc.strerror or str(exc)) from None
        return sock

    def _receive(self, sock: socket.socket, timeout: float | None) -> dict:
        sock.settimeout(timeout)
        try:
            while (end := self._buf.find(b"\0")) < 0:
                data = sock.recv(65536)
                if not data:
                    raise self._lost("closed by the daemon")
                self._buf += data
        except TimeoutError:
            raise self._lost(f"no reply within {timeout:g} s") from None
        except OSError as exc:
            raise self._lost(exc.strerror or str(exc)) from None
        raw = bytes(self._buf[:end])
        del self._buf[: end + 1]
        try:
            reply = json.loads(raw)
        except ValueError:
            reply = None
        if not isinstance(reply, dict):
            raise self._lost("malformed reply")
        return reply

    @staticmethod
    def _result(reply: dict) -> dict:
        if "error" in reply:
            raise VarlinkCallError(str(reply["error"]), reply.get("parameters"))
        return reply.get("parameters") or {}

    # -- API ---------------------------------------------------------------------------------
    def call(self, method: str, params: dict | None = None, *, timeout: float | None = None) -> dict:
        """Call `method` (short or fully qualified); parameters that are None are left out."""
        sock = self._send(method, params, more=False)
        return self._result(self._receive(sock, timeout))

    def stream(self, method: str, params: dict | None = None, *,
               timeout: float | None = None) -> Iterator[dict]:
        """Call with 'more' (the request is sent now) and iterate over the replies' parameters."""
        sock = self._send(method, params, more=True)
        self._streaming = True
        return self._replies(sock, timeout)

    def _replies(self, sock: socket.socket, timeout: float | None) -> Iterator[dict]:
        done = False
        try:
            while self._sock is sock:
                reply = self._receive(sock, timeout)
                done = reply.get("continues") is not True
                yield self._result(reply)
                if done:
                    return
        finally:
            if self._sock is sock:
                self._streaming = False
                if not done:  # abandoned mid-stream: its remaining replies would confuse the next call
                    self.close()
