"""A StatefulSet group's events on every peer's Watch, not only on its members'.

LeaseGranted, LeaseLost and LeaderChanged come from a group's replicated state, which only its
members hold. They are rare (a grant, a loss, an election), so the one member each event is
about gossips it on beemesh/events, signed by the mesh as every message is: the holder its
LeaseGranted and LeaseLost, the new leader its LeaderChanged. Every other peer turns that into
the same Watch event. A peer speaks only for itself (the event's peer must be the sender), and
only about a StatefulSet its catalog holds, under that workload's group.

Each member also sees the event itself (every member applies a grant; every member learns the
new leader), and gossip can arrive before or after that, or twice: one identity per event —
(group, type, ordinal, peer, token, or the term for LeaderChanged) — is published once, whichever
copy comes first. Best effort: an event lost in gossip, or older than the mesh's 30 s freshness
window when a partition heals, is not shown elsewhere; Get and Explain still tell the state.
"""

from __future__ import annotations

import logging
from collections import OrderedDict

import trio

from beemeshd.core import lease as L
from beemeshd.core.groups import base_of, group_id, peer_of
from beemeshd.core.protocol import TOPIC_EVENTS
from beemeshd.events import make_event, now_usec

log = logging.getLogger("beemeshd.stateful")

KINDS = ("LeaseGranted", "LeaseLost", "LeaderChanged")
WIRE_TYPE = "lease-event"
REMEMBER = 4096  # event identities kept for deduplication (events are rare)
OUTBOX = 64  # events waiting to be gossiped; more are dropped (and logged)
MAX_TEXT = 256


class GroupEvents:
    def __init__(self, stateful):
        self.st = stateful  # beemeshd.stateful.Stateful
        self.seen: OrderedDict[tuple, None] = OrderedDict()
        self._out, self._outbox = trio.open_memory_channel(OUTBOX)

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        gossip = self.st.mesh.subscribe(TOPIC_EVENTS)
        async with trio.open_nursery() as n:
            n.start_soon(self._receive_loop, gossip)
            n.start_soon(self._send_loop)
            task_status.started()

    def local(self, key, gid: str, kind: str, ordinal, peer, token, message) -> None:
        """An event this member's group produced: to this peer's Watch, and to the mesh when it is
        about this peer."""
        if kind == "LeaderChanged" and peer is not None:
            peer = peer_of(peer)  # the leader's member id: its peer
        ev = make_event(kind, namespace=key[0], name=key[2],
                        replica=f"{key[2]}-{ordinal}" if ordinal is not None else None, peer=peer, message=message)
        if not self._first(gid, ev, ordinal, token):
            return
        self.st.events.publish(ev)
        if peer == self.st.peer_id:
            wire = {"type": WIRE_TYPE, "group": gid, "kind": kind, "namespace": key[0], "name": key[2],
                    "ordinal": ordinal, "token": token, "message": message, "timestampUSec": ev["timestampUSec"]}
            try:
                self._out.send_nowait(wire)
            except trio.WouldBlock:
                log.warning("dropped a %s event for the mesh: too many waiting", kind)

    def _first(self, gid: str, ev: dict, ordinal, token) -> bool:
        """Whether this event is new (and remember it)."""
        ident = (gid, ev["type"], ordinal, ev.get("peer"),
                 ev.get("message") if ev["type"] == "LeaderChanged" else token)
        if ident in self.seen:
            return False
        self.seen[ident] = None
        while len(self.seen) > REMEMBER:
            self.seen.popitem(last=False)
        return True

    async def _send_loop(self) -> None:
        async for wire in self._outbox:
            try:
                await self.st.mesh.publish(TOPIC_EVENTS, wire)
            except Exception as exc:  # best effort: the mesh may be down
                log.debug("could not gossip a %s event: %s", wire["kind"], exc)

    async def _receive_loop(self, gossip) -> None:
        async for env in gossip:
            p = env.payload
            if p.get("type") != WIRE_TYPE or env.sender == self.st.peer_id:
                continue
            try:
                self.receive(env.sender, p)
            except (ValueError, KeyError, TypeError) as exc:
                self.st.mesh.counters["malformedMessages"] = self.st.mesh.counters.get("malformedMessages", 0) + 1
                log.debug("dropped a lease event from %s: %s", env.sender, exc)

    def receive(self, sender: str, p: dict) -> bool:
        """A member's gossiped event: checked, then on this peer's Watch unless seen already.
        True if published; ValueError if malformed or not the sender's to tell."""
        gid, kind, ns, name = p["group"], p["kind"], p["namespace"], p["name"]
        ordinal, token, message, when = p.get("ordinal"), p.get("token"), p.get("message"), p["timestampUSec"]
        if kind not in KINDS or not all(type(x) is str and 0 < len(x) <= MAX_TEXT for x in (gid, ns, name)):
            raise ValueError("expected {group, kind, namespace, name}")
        if (kind == "LeaderChanged") != (ordinal is None) or (ordinal is not None and (
                type(ordinal) is not int or not 0 <= ordinal < L.MAX_ORDINAL)):
            raise ValueError("a lease event names its ordinal, a leader change none")
        if token is not None and (type(token) is not int or not 0 <= token < L.MAX_TOKEN):
            raise ValueError("bad token")
        if message is not None and (type(message) is not str or len(message) > MAX_TEXT):
            raise ValueError("bad message")
        if type(when) is not int or not 0 <= when <= now_usec() + 60_000_000:
            raise ValueError("bad timestamp")
        d = self.st.placement.catalog.entries.get((ns, "StatefulSet", name))
        if d is None or d.deleted or base_of(gid) != group_id(d):
            return False  # not a workload this peer knows (yet): nothing to show
        ev = make_event(kind, namespace=ns, name=name, replica=f"{name}-{ordinal}" if ordinal is not None else None,
                        peer=sender, message=message, timestamp_usec=when)
        if not self._first(gid, ev, ordinal, token):
            return False
        self.st.events.publish(ev)
        return True
