"""An in-memory mesh: many FakeMesh peers in one process, joined by a FakeNetwork.

Same Mesh API and the same core as the libp2p mesh (MeshBase + beemeshd.core: envelopes are
really signed and checked, the failure detector really runs); only the transport is simulated.
All waiting is trio.sleep, so a whole mesh runs under trio.testing.MockClock(autojump_threshold=0),
with each peer's wall clock = network.epoch + trio time + its own `clock_skew`.

The network models, per message, a latency (+ uniform jitter), and:
- partitions: `partition({a, b}, {c})` — peers not named form one more group together;
  across groups packets vanish (probes and requests hang until their caller's time-out);
  `heal()` joins everything again;
- death: `kill(peer)` (or `mesh.kill()`) cancels that peer's `run`; dialling it is refused at once;
  `nursery.start(mesh.run)` brings it back with the same id (and an empty view, like a restart).
Gossip goes, after its latency, to every peer reachable from the sender that has joined the mesh
(completed a probe or request with someone) — a flood over the reachable component. With
`degree=D` it travels a GossipSub-like overlay instead: every joined peer keeps about D random
neighbours (links both ways, at most 2·D; newcomers graft at once, dead or partitioned-off links
are replaced at a HEARTBEAT, and the overlay re-forms when a partition heals), and a peer that
accepts a message it had not seen forwards it to its neighbours after one hop's latency (one
latency draw per hop, not per link); the hop at which 99 % of the joined peers had each message
is logged (`hop_log`), so a simulator can show that hops grow as log n.

For 1,000+ peers: each signature is verified once per network (a shared cache of decoded
envelopes, keyed by the exact bytes — freshness and replay checks stay per receiver), and a
peer's view entries are slotted (beemeshd.core.membership.Member).
"""

from __future__ import annotations

import random
import time
from collections import Counter, OrderedDict
from contextlib import asynccontextmanager

import trio

from beemeshd.core import protocol as proto
from beemeshd.core.membership import Membership
from beemeshd.mesh.base import MeshBase


class FakeNetwork:
    HEARTBEAT = 1.0  # overlay maintenance, as GossipSub's heartbeat (simulated seconds)

    def __init__(self, *, latency: float = 0.002, jitter: float = 0.0, seed: int = 0,
                 epoch: float = 1_700_000_000.0, verify_cache: int = 100_000, degree: int | None = None):
        self.latency, self.jitter = latency, jitter
        self.rng = random.Random(seed)
        self.epoch = epoch
        self.peers: dict[str, FakeMesh] = {}
        self.joined: set[str] = set()
        self._group: dict[str, int] | None = None
        self._cache: OrderedDict[bytes, tuple[proto.Envelope, float]] = OrderedDict()  # + its decode CPU
        self._cache_limit = verify_cache
        self.messages = 0  # gossip deliveries, for simulators
        # For simulators: messages by kind ("gossip <topic>" deliveries, "forward" overlay sends
        # including duplicates, "request <protocol>", "reply", "probe"), and per overlay message
        # (topic, hops until 99 % of the joined peers had it or None, share of them it reached).
        self.counts: Counter[str] = Counter()
        self.hop_log: list[tuple[str, int | None, float]] = []
        self.degree = degree
        self._neighbours: dict[str, list[str]] = {}
        self._heartbeat = -1e9
        self._ids: list[str] = []  # every peer ever added, to draw overlay neighbours from
        # A simulator's CPU meter (bench/simulate.py PeerCPU): charged per receiving peer.
        self.meter = None

    # --- topology -----------------------------------------------------------------------------

    def add(self, mesh: FakeMesh) -> None:
        if mesh.peer_id not in self.peers:
            self._ids.append(mesh.peer_id)
        self.peers[mesh.peer_id] = mesh

    def up(self, peer_id: str) -> bool:
        m = self.peers.get(peer_id)
        return m is not None and m.running

    def same_side(self, a: str, b: str) -> bool:
        return self._group is None or self._group.get(a, -1) == self._group.get(b, -1)

    def reachable(self, a: str, b: str) -> bool:
        return self.up(a) and self.up(b) and self.same_side(a, b)

    def partition(self, *groups) -> None:
        self._group = {pid: i for i, group in enumerate(groups) for pid in group}

    def heal(self) -> None:
        self._group = None
        self._neighbours.clear()  # each side's overlay is whole on its own: it re-forms across both

    def kill(self, peer_id: str) -> None:
        self.peers[peer_id].kill()

    def delay(self) -> float:
        return self.latency + (self.rng.uniform(0, self.jitter) if self.jitter else 0.0)

    def cached(self, raw: bytes) -> proto.Envelope | None:
        """A verified decode of these exact bytes, or None (let the receiver's gate decode)."""
        hit = self._cache.get(raw)
        if hit is None:
            t0 = time.process_time()
            try:
                env = proto.decode(raw)
            except proto.Rejected:
                return None
            self._cache[raw] = (env, time.process_time() - t0)
            if len(self._cache) > self._cache_limit:
                self._cache.popitem(last=False)
            return env
        if self.meter is not None:  # what this receiver would have spent verifying it
            self.meter.extra(hit[1])
        return hit[0]

    def _hand(self, pid: str, topic: str, raw: bytes) -> bool:
        """Give gossip to a peer (on its CPU account when a meter runs)."""
        if self.meter is None:
            return self.peers[pid]._gossip_in(topic, raw)
        return self.meter.hand(pid, self.peers[pid]._gossip_in, topic, raw)

    # --- traffic ------------------------------------------------------------------------------

    def gossip(self, sender: FakeMesh, topic: str, raw: bytes) -> None:
        sender._gossip_in(topic, raw)  # own subscribers hear it at once, as with libp2p
        if sender.peer_id not in self.joined:
            return
        if self.degree:
            sender._nursery.start_soon(self._spread, sender.peer_id, topic, raw)
            return
        targets = [(self.delay(), pid) for pid in self.joined
                   if pid != sender.peer_id and self.reachable(sender.peer_id, pid)]
        if targets:
            sender._nursery.start_soon(self._deliver, sender.peer_id, topic, raw, sorted(targets))

    async def _deliver(self, src: str, topic: str, raw: bytes, targets: list) -> None:
        elapsed = 0.0
        for delay, pid in targets:
            if delay > elapsed:
                await trio.sleep(delay - elapsed)
                elapsed = delay
            if self.same_side(src, pid) and self.up(pid):
                self.messages += 1
                self.counts["gossip " + topic] += 1
                self._hand(pid, topic, raw)

    # --- the overlay (degree=D) ---------------------------------------------------------------

    def neighbours(self, pid: str) -> list[str]:
        """pid's live overlay neighbours on its side of any partition, topped up to `degree`
        with random joined peers (GossipSub grafts at its heartbeat; here when asked)."""
        mine = self._neighbours.setdefault(pid, [])
        joined = self.joined
        if len(mine) >= self.degree and self._group is None and all(q in joined for q in mine):
            return mine  # the usual case, checked cheaply: it runs for every peer a message reaches
        live = [q for q in mine if q in joined and self.same_side(pid, q)]
        if len(live) < len(mine):
            mine[:] = live
        tries = 4 * self.degree
        while len(mine) < self.degree and tries and len(self.joined) > len(mine) + 1:
            tries -= 1
            q = self._ids[self.rng.randrange(len(self._ids))]
            if q == pid or q in mine or q not in self.joined or not self.same_side(pid, q):
                continue
            theirs = self._neighbours.setdefault(q, [])
            if len(theirs) >= 2 * self.degree:
                continue
            mine.append(q)
            theirs.append(pid)  # links go both ways, as GossipSub's GRAFT
        return mine

    async def _spread(self, src: str, topic: str, raw: bytes) -> None:
        """Hop by hop: every peer that accepted the message forwards it to its neighbours except
        the one it came from; the first copy is delivered, duplicates only counted."""
        now = trio.current_time()
        joined = self.joined  # (walked in the order peers were added: a set's order varies by process)
        if now - self._heartbeat >= self.HEARTBEAT:  # every mesh repairs itself (GossipSub's heartbeat)
            self._heartbeat = now
            for pid in [p for p in self._neighbours if p not in joined]:
                del self._neighbours[pid]  # left (their links go when their neighbours next look)
            for pid in [p for p in self._ids if p in joined]:
                self.neighbours(pid)
        elif len(self._neighbours) < len(joined):  # newcomers graft their own mesh at once
            for pid in [p for p in self._ids if p in joined and p not in self._neighbours]:
                self.neighbours(pid)
        target = sum(1 for pid in self.joined if self.same_side(src, pid))
        have, frontier = {src}, [(src, None)]
        reached, hops, hops99 = 1, 0, None
        while frontier:
            sends = []
            for pid, came_from in frontier:
                for q in self.neighbours(pid):
                    if q != came_from:
                        sends.append((pid, q))
            self.counts["forward"] += len(sends)
            await trio.sleep(self.delay())
            hops += 1
            frontier = []
            joined, whole = self.joined, self._group is None
            for pid, q in sends:
                if q in have or q not in joined or not (whole or self.same_side(pid, q)):
                    continue
                have.add(q)
                self.messages += 1
                self.counts["gossip " + topic] += 1
                if self._hand(q, topic, raw):  # only what it accepted travels on
                    frontier.append((q, pid))
                    reached += 1
            if hops99 is None and reached >= 0.99 * target:
                hops99 = hops
        self.hop_log.append((topic, hops99, reached / max(target, 1)))

    def inject(self, peer_id: str, topic: str, raw: bytes) -> None:
        """Test hook: hand `raw` to a peer as if gossip had brought it."""
        self.peers[peer_id]._gossip_in(topic, raw)

    async def _reach(self, src: str, dst: str) -> FakeMesh:
        """Wait one hop; refused at once if dst is down, silence if it is across a partition."""
        if not self.up(dst):
            await trio.sleep(self.latency)
            raise ConnectionRefusedError(f"{dst} is down")
        if not self.same_side(src, dst):
            await trio.sleep_forever()
        await trio.sleep(self.delay())
        if not self.reachable(src, dst):
            await trio.sleep_forever()
        return self.peers[dst]

    async def probe(self, src: str, dst: str) -> bool:
        self.counts["probe"] += 1
        await self._reach(src, dst)
        await self._reach(dst, src)
        self.joined.update((src, dst))
        return True

    async def exchange(self, src: str, dst: str, protocol: str, raw: bytes) -> bytes:
        self.counts["request " + protocol] += 1
        target = await self._reach(src, dst)
        result: list[bytes | None] = []
        done = trio.Event()

        async def serve():  # in the target's own nursery: the requester's time-out does not cancel it
            try:
                result.append(await target._request_in(src, protocol, raw))
            finally:
                done.set()

        target._nursery.start_soon(serve)
        await done.wait()
        if not result or result[0] is None:
            raise ConnectionResetError(f"{dst} reset the {protocol} stream")
        self.counts["reply"] += 1
        await self._reach(dst, src)
        self.joined.update((src, dst))
        return result[0]


class FakeMesh(MeshBase):
    def __init__(self, network: FakeNetwork, seed: bytes | None = None, *, bootstrap: list[str] = (),
                 clock_skew: float = 0.0, **kw):
        seed = seed if seed is not None else network.rng.randbytes(32)
        super().__init__(seed, bootstrap=[(pid, [f"/memory/{pid}"]) for pid in bootstrap], **kw)
        self.network = network
        self.clock_skew = clock_skew
        self._scope: trio.CancelScope | None = None
        network.add(self)

    def _wall(self) -> float:
        return self.network.epoch + trio.current_time() + self.clock_skew

    def addresses(self) -> list[str]:
        return [f"/memory/{self.peer_id}/p2p/{self.peer_id}"]

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        with trio.CancelScope() as self._scope:
            await super().run(task_status=task_status)

    def kill(self) -> None:
        """Die at once, as kill -9 would; a later run starts with an empty view."""
        if self._scope is not None:
            self._scope.cancel()
        self.network.joined.discard(self.peer_id)
        self._nursery = None
        self.membership = Membership(self.peer_id, self.timings, rng=self.rng)
        self._greeted.clear()  # a restarted peer has said hello to nobody

    @asynccontextmanager
    async def _open_transport(self):
        try:
            yield
        finally:
            self.network.joined.discard(self.peer_id)

    def _gossip_in(self, topic: str, raw: bytes) -> bool:
        """Take a gossip message; True when accepted (the overlay forwards only those)."""
        if self._nursery is None:
            return False
        env = self._admit(topic, raw, decoded=self.network.cached(raw))
        if env is None:
            return False
        self._dispatch(env)
        return True

    def _decode(self, raw: bytes) -> proto.Envelope:
        return self.network.cached(raw) or proto.decode(raw)

    async def _send_gossip(self, topic: str, raw: bytes) -> None:
        self.network.gossip(self, topic, raw)

    async def _probe(self, peer_id: str, addresses: list[str]) -> bool:
        return await self.network.probe(self.peer_id, peer_id)

    async def _probe_loop(self) -> None:
        """The same detector as MeshBase's, without a task per probe: one task per round hears
        back, after one round trip, from every target still reachable (what thousands of
        simulated peers can afford)."""
        while True:
            now = self._now()
            self._tick(now)
            targets = self.membership.probe_targets(now)
            if self.admission is not None:  # peers not greeted yet: a hello first (MeshBase._probe_one)
                for pid in [t for t in targets if self._needs_hello(t)]:
                    targets.remove(pid)
                    if pid not in self._probing:
                        self._probing.add(pid)
                        self._nursery.start_soon(self._probe_one, pid)
            if targets:
                self._nursery.start_soon(self._probe_round, targets)
            await trio.sleep(self.timings.ping_interval)

    async def _probe_round(self, targets: list[str]) -> None:
        net, me = self.network, self.peer_id
        net.counts["probe"] += len(targets)
        up = [pid for pid in targets if net.reachable(me, pid)]
        await trio.sleep(2 * net.delay())
        for pid in up:
            if net.reachable(me, pid):
                net.joined.update((me, pid))
                self._emit(self.membership.heard(pid, self._now()))

    async def _exchange(self, peer_id: str, addresses: list[str], protocol: str, raw: bytes) -> bytes:
        return await self.network.exchange(self.peer_id, peer_id, protocol, raw)
