"""In-process event fan-out for Watch.

Publishers never block: each subscriber has a bounded buffer, and a subscriber that falls that
far behind is ended (its Watch gets a final 'overflow' reply and can re-subscribe) instead of
slowing the daemon down.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator

import trio

log = logging.getLogger("beemeshd.events")

PEER_EVENTS = {"PeerJoined", "PeerSuspect", "PeerLeft"}


def now_usec() -> int:
    return time.time_ns() // 1000


def make_event(type_: str, *, namespace=None, name=None, replica=None, peer=None, generation=None,
               message=None, timestamp_usec: int | None = None) -> dict:
    ev = {"type": type_, "timestampUSec": timestamp_usec if timestamp_usec is not None else now_usec()}
    for key, value in (("namespace", namespace), ("name", name), ("replica", replica), ("peer", peer),
                       ("generation", generation), ("message", message)):
        if value is not None:
            ev[key] = value
    return ev


class EventBus:
    def __init__(self, buffer: int = 1024):
        self.buffer = buffer
        self._subscribers: set[trio.MemorySendChannel] = set()

    @property
    def subscribers(self) -> int:
        return len(self._subscribers)

    def publish(self, event: dict) -> None:
        for send in list(self._subscribers):
            try:
                send.send_nowait(event)
            except trio.WouldBlock:
                log.warning("a Watch subscriber fell %d events behind; ending its stream", self.buffer)
                self._subscribers.discard(send)
                send.close()
            except trio.ClosedResourceError:
                self._subscribers.discard(send)

    def subscribe(self, *, namespace=None, name=None, peers=True) -> AsyncIterator[dict]:
        """Register now (so no event after the call is missed) and return the stream."""
        send, receive = trio.open_memory_channel(self.buffer)
        self._subscribers.add(send)
        return self._stream(send, receive, namespace, name, peers)

    async def _stream(self, send, receive, namespace, name, peers):
        try:
            async with receive:
                async for ev in receive:
                    if ev["type"] in PEER_EVENTS:
                        if not peers:
                            continue
                    else:
                        if namespace is not None and ev.get("namespace") != namespace:
                            continue
                        if name is not None and ev.get("name") != name:
                            continue
                    yield {"event": ev}
        finally:
            self._subscribers.discard(send)
            send.close()
        # Dropped for falling behind: end the call with an error-free final reply is not possible
        # without an event, so raise a clear error instead.
        from beemeshd.errors import Timeout
        raise Timeout("Watch", 0, "subscriber fell behind; call Watch again")
