"""Wires for the consensus driver: over the mesh (signed direct requests), or in memory.

MeshWire carries a frame (JSON) as one signed mesh request on /beemesh/raft/1, inside the
envelope's payload; the answer frame rides back in the signed reply. The mesh authenticates the sender
(its peer id is the key that signed), checks freshness and replays; the driver checks the rest.

MemoryWire joins the drivers of one process (unit tests, the simulator): a latency per hop,
partitions (`net.partition({a}, {b, c})`: across groups frames vanish and the exchange times
out), and dead peers (refused at once). All waiting is trio.sleep: it runs under MockClock.
"""

from __future__ import annotations

import random
import zlib

import trio

from beemeshd.consensus import codec
from beemeshd.consensus.driver import PROTO_RAFT


class MeshWire:
    def __init__(self, mesh):
        self.mesh = mesh
        self.peer_id = mesh.peer_id

    async def exchange(self, peer: str, frame: list, timeout: float) -> list | None:
        reply = await self.mesh.request(peer, PROTO_RAFT, {"f": frame}, timeout)
        return reply.get("f")

    def serve(self, handler) -> None:
        async def serve(env) -> dict:
            return {"f": await handler(env.sender, env.payload.get("f"))}

        self.mesh.handle(PROTO_RAFT, serve, keep_streams=True)  # frames are sequenced: a retry is harmless


class MemoryNet:
    def __init__(self, latency: float = 0.002, jitter: float = 0.0, rng: random.Random | None = None):
        self.latency, self.jitter = latency, jitter
        self.seed = (rng or random.Random(0)).random()
        self._links: dict[tuple[str, str], random.Random] = {}  # per-link jitter: draws do not depend
        self.wires: dict[str, MemoryWire] = {}
        self.down: set[str] = set()
        self._side: dict[str, int] | None = None
        self.frames = 0

    def partition(self, *groups) -> None:
        """Peers in different groups cannot reach each other; peers not named form one more group."""
        self._side = {p: i for i, g in enumerate(groups) for p in g}

    def heal(self) -> None:
        self._side = None

    def same_side(self, a: str, b: str) -> bool:
        return self._side is None or self._side.get(a, -1) == self._side.get(b, -1)

    def reachable(self, a: str, b: str) -> bool:
        return a not in self.down and b not in self.down and self.same_side(a, b)

    def _link(self, src: str, dst: str) -> random.Random:
        rng = self._links.get((src, dst))
        if rng is None:  # ... on the order in which tasks on other links happened to run
            rng = self._links[(src, dst)] = random.Random(self.seed + zlib.crc32(f"{src}>{dst}".encode()))
        return rng

    async def hop(self, src: str, dst: str) -> None:
        if dst in self.down or dst not in self.wires:
            await trio.sleep(self.latency)
            raise ConnectionRefusedError(f"{dst} is down")
        if not self.same_side(src, dst):
            await trio.sleep_forever()
        await trio.sleep(self.latency + (self._link(src, dst).uniform(0, self.jitter) if self.jitter else 0.0))
        if not self.reachable(src, dst):
            await trio.sleep_forever()


class MemoryWire:
    def __init__(self, net: MemoryNet, peer_id: str):
        self.net = net
        self.peer_id = peer_id
        self.handler = None
        net.wires[peer_id] = self

    async def exchange(self, peer: str, frame: list, timeout: float) -> list | None:
        with trio.fail_after(timeout):
            await self.net.hop(self.peer_id, peer)
            self.net.frames += 1
            # through the bytes, as over the mesh: the receiver gets a fresh decode, never our objects
            answer = await self.net.wires[peer].handler(self.peer_id, codec.decode(codec.encode(frame)))
            await self.net.hop(peer, self.peer_id)
            if answer is None:
                return None
            self.net.frames += 1
            return codec.decode(codec.encode(answer))

    def serve(self, handler) -> None:
        self.handler = handler
