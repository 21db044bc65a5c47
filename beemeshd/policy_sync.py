"""Mesh-wide policies over the mesh: gossip for news, a direct request for catch-up.

- A document this peer signs is published on beemesh/events as {"type": "policy", "document": …}
  (any peer may relay one: the mesh key's signature, not the sender, makes it valid).
- Catch-up, for peers that were down or partitioned when it was gossiped: PROTO_POLICIES carries
  the asker's digest {name: [version, signature]} and answers the documents it lacks. A peer asks
  every peer that joins (it may hold what we missed, or lack what we have: then it asks us in turn,
  as it sees us join), and a random live peer every SYNC_INTERVAL.
"""

from __future__ import annotations

import logging
import random

import trio

from beemeshd.core.policy_doc import PolicyDoc
from beemeshd.core.protocol import TOPIC_EVENTS
from beemeshd.policy_store import PolicyStore

log = logging.getLogger("beemeshd.policy")

PROTO_POLICIES = "/beemesh/policies/1"
SYNC_INTERVAL = 15.0
REQUEST_TIMEOUT = 5.0
MAX_DOCUMENTS = 256


class PolicySync:
    def __init__(self, mesh, store: PolicyStore, *, rng: random.Random | None = None):
        self.mesh = mesh
        self.store = store
        self.rng = rng or random.Random()
        self._ask, self._asks = trio.open_memory_channel(256)
        store.publish = self.publish

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        self.mesh.handle(PROTO_POLICIES, self._handle)
        events = self.mesh.subscribe(TOPIC_EVENTS)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._consume, events)
            nursery.start_soon(self._ask_loop, nursery)
            nursery.start_soon(self._sync_loop)
            task_status.started()

    async def publish(self, doc: PolicyDoc) -> None:
        await self.mesh.publish(TOPIC_EVENTS, {"type": "policy", "document": doc.to_wire()})

    def peer_event(self, kind: str, peer: str) -> None:
        """The failure detector's news: a peer that joins is asked for what it holds."""
        if kind == "PeerJoined":
            try:
                self._ask.send_nowait(peer)
            except trio.WouldBlock:
                pass  # the periodic sync covers it

    async def sync_with(self, peer: str) -> int:
        """Ask one peer for the documents we lack; how many changed what we enforce."""
        reply = await self.mesh.request(peer, PROTO_POLICIES, {"have": self.store.digest()}, REQUEST_TIMEOUT)
        docs = reply.get("documents", [])
        if not isinstance(docs, list):
            raise ValueError("documents is not a list")
        return sum(self.store.receive(d) for d in docs[:MAX_DOCUMENTS])

    async def _consume(self, events) -> None:
        async for env in events:
            p = env.payload
            if p.get("type") == "policy" and env.sender != self.mesh.peer_id:
                self.store.receive(p.get("document"))

    async def _handle(self, env) -> dict:
        return {"documents": self.store.newer_than(env.payload.get("have", {}), MAX_DOCUMENTS)}

    async def _ask_loop(self, nursery) -> None:
        async for peer in self._asks:
            nursery.start_soon(self._ask_joined, peer)

    async def _ask_joined(self, peer: str) -> None:
        # A peer that just joined may not serve requests yet: a few tries, then the periodic sync.
        for delay in (0.0, 1.0, 3.0):
            await trio.sleep(delay)
            if await self._try(peer):
                return

    async def _sync_loop(self) -> None:
        while True:
            await trio.sleep(SYNC_INTERVAL * (0.5 + self.rng.random()))
            others = [p.peer_id for p in self.mesh.peers() if p.state == "alive"]
            if others:
                await self._try(self.rng.choice(others))

    async def _try(self, peer: str) -> bool:
        try:
            changed = await self.sync_with(peer)
        except Exception as exc:  # noqa: BLE001 - unreachable, old peer without the protocol: next time
            log.debug("policy catch-up with %s failed: %s", peer, exc)
            return False
        if changed:
            log.info("caught up on %d mesh policy document(s) from %s", changed, peer)
        return True
