"""Whole-mesh simulator: the production core of 1,000 and 10,000 peers in one process.

Every simulated peer is what the daemon wires (beemeshd/daemon.py): a FakeMesh (MeshBase: real
signed envelopes, the real failure detector), Placement (bids, decisions, healing, trust), an
Agent reconciling a FakeRuntime, and the Workloads service reporting replica status. They share
one FakeNetwork with a GossipSub-like overlay (each peer forwards to `degree` random neighbours,
one latency per hop) and run under trio.testing.MockClock(autojump_threshold=0): simulated time
jumps whenever every task waits, so wall time is what the whole mesh's CPU work costs.

Deterministic from the seed (trio's scheduler too): the same seed gives the same numbers, except
those measured in wall time or memory. Simulated time is free, CPU is not: every peer's work runs
on one core, so "placements/s (wall)" is 1 / (the CPU the whole mesh spends per placement).

Phases (per mesh size, each size in a fresh forked process):
1. join   — peers join through a random earlier peer until every view is complete (partial
            views: until 99 % of every peer's `near` nearest peers are alive in its table);
2. place  — `workloads` Deployments of `replicas` replicas, Deploy on random peers in bursts;
            placements/s (wall), simulated latency (Deploy → decision; → every replica running),
            messages per placement, gossip hops to reach 99 % of the peers;
3. churn  — `minutes` simulated minutes; every minute 10 % of the peers leave (killed) and as
            many new ones join, spread over the minute; then a settling period and a census:
            replicas wanted vs running, workloads lost, duplicates;
4. overlay — gossip hops to 99 % on the overlay alone (real peers that have met, no full views).

Views hold every peer up to the membership's view_max (1,024, the daemon's default): a 1,000-peer
run has full views. Beyond it every view is a Kademlia table (core/routing.py: ~16 nearest,
8 per bucket, pinned runners), which is what lets 10,000 peers fit one process: full views would
be 10⁸ entries (tens of GB) and O(n²) work to join. Above FULL_UP_TO peers sizes are still
projected from two whole runs, every projected figure marked as such.

    python bench/simulate.py --peers 1000 10000 --seed 1 --minutes 3 --plot-dir bench
"""

from __future__ import annotations

import argparse
import bisect
import gc
import json
import math
import random
import statistics
import sys
import time
import tracemalloc
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import trio  # noqa: E402
import trio.testing  # noqa: E402

from bench.common import machine, summary  # noqa: E402
from beemeshd import placement as placement_mod  # noqa: E402
from beemeshd.agent import Agent  # noqa: E402
from beemeshd.core import protocol as proto  # noqa: E402
from beemeshd.core import render  # noqa: E402
from beemeshd.core.catalog import Catalog, holders  # noqa: E402
from beemeshd.core.membership import Timings  # noqa: E402
from beemeshd.core.routing import closest, point  # noqa: E402
from beemeshd.events import EventBus  # noqa: E402
from beemeshd.mesh.fake import FakeMesh, FakeNetwork  # noqa: E402
from beemeshd.mesh_workloads import Workloads  # noqa: E402
from beemeshd.placement import Placement, local_state  # noqa: E402
from beemeshd.runtime.fake import FakeRuntime  # noqa: E402

GI = 1 << 30
IMAGE = "localhost/beemesh-busybox:latest"
EPOCH = 1_700_000_000.0


@dataclass
class Settings:
    peers: int = 1000
    seed: int = 1
    workloads: int = 300  # Deployments placed in the place phase
    replicas: int = 3
    burst: int = 50  # Deploys issued at the same simulated instant
    rate: float | None = None  # instead of bursts: Deploys per simulated second, each on its own
    broadcast_max: int = 64  # placement's: beyond it, news goes to holders and runners only
    minutes: float = 3.0  # of churn
    churn: float = 0.10  # share of the peers replaced per simulated minute
    settle: float = 30.0  # simulated seconds after churn before the census
    idle: float = 10.0  # simulated seconds of an idle mesh, for its background cost
    trace_memory: bool = False  # tracemalloc during the join too (a breakdown; slows it ~2×)
    verbose: bool = False  # progress on stderr
    degree: int | None = 8  # overlay degree (None: flood to every peer)
    latency: float = 0.002
    jitter: float = 0.002
    progress: str | None = None  # write the results so far here after each phase
    timings: Timings = field(default_factory=Timings)  # production defaults (bounded probing above 16)


def manifest(i: int, replicas: int) -> dict:
    c = {"name": "app", "image": IMAGE, "resources": {"requests": {"cpu": "100m", "memory": "64Mi"}}}
    return {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": f"w{i}"},
            "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": f"w{i}"}},
                     "template": {"metadata": {"labels": {"app": f"w{i}"}}, "spec": {"containers": [c]}}}}


class SimPeer:
    """One peer, wired as beemeshd/daemon.py wires the mesh-backed node (production classes)."""

    def __init__(self, net: FakeNetwork, rng: random.Random, bootstrap: list[str], s: Settings):
        self.mesh = FakeMesh(net, seed=rng.randbytes(32), bootstrap=bootstrap, timings=s.timings,
                             rng=random.Random(rng.getrandbits(64)))
        self.id = self.mesh.peer_id
        self.runtime = FakeRuntime(now=lambda: EPOCH + trio.current_time())
        self.events = EventBus()
        self.placement = Placement(self.mesh, Catalog(self.id), self.events, self_state=self.state,
                                   on_change=self.poke, rng=random.Random(rng.getrandbits(64)),
                                   broadcast_max=s.broadcast_max)
        self.mesh.on_peer_event = self.placement.peer_event
        self.agent = Agent(self.runtime, None, self.events, peer_id=self.id, wanted=self.placement.wanted)
        self.agent.remote_ready = self.placement.remote_ready
        self.workloads = Workloads(self.placement, self.agent, self.runtime, self.events, self.id)
        self.scope: trio.CancelScope | None = None

    def poke(self) -> None:
        self.agent.poke()

    def state(self):
        return local_state(self.placement, cpu_total=4000, memory_total=8 * GI, max_pods=110,
                           uptime=self.mesh._uptime())

    async def run(self, task_status=trio.TASK_STATUS_IGNORED) -> None:
        PeerCPU.roots[trio.lowlevel.current_task()] = self.id
        with trio.CancelScope() as self.scope:
            async with trio.open_nursery() as n:
                await n.start(self.mesh.run)
                await n.start(self.agent.run)
                await n.start(self.placement.run)
                n.start_soon(self.workloads.status_loop)
                task_status.started()

    def kill(self) -> None:
        self.mesh.kill()
        if self.scope is not None:
            self.scope.cancel()

    def running_pods(self) -> set[str]:
        return set(self.runtime.pod_names())


class PeerCPU(trio.abc.Instrument):
    """CPU time per simulated peer: every trio task step is charged to the peer whose task tree
    it belongs to, and gossip handed to a peer by the network's spreading task to that peer
    (FakeNetwork.meter). The network verifies each signature once for all receivers; every other
    receiver is charged what that verification cost, as a real peer would pay it. So a peer's
    figure is what it would spend on a core of its own."""

    roots: dict = {}  # SimPeer.run's task -> peer id (class level: tasks are registered as they start)

    def __init__(self):
        self.cpu: dict[str, float] = {}
        self.owner: dict = {}
        self.current: str | None = None
        self._t = 0.0

    def _owner(self, task) -> str | None:
        pid = self.owner.get(task, False)
        if pid is False:
            t, pid = task, None
            while t is not None:
                if t in self.roots:
                    pid = self.roots[t]
                    break
                t = t.parent_nursery.parent_task if t.parent_nursery is not None else None
            self.owner[task] = pid
        return pid

    def before_task_step(self, task) -> None:
        self.current = self._owner(task)
        self._t = time.process_time()

    def after_task_step(self, task) -> None:
        if self.current is not None:
            self.cpu[self.current] = self.cpu.get(self.current, 0.0) + time.process_time() - self._t
        self.current = None

    def task_exited(self, task) -> None:
        self.owner.pop(task, None)

    def hand(self, pid: str, fn, *args):
        """Run fn (the network delivering to pid) on pid's account, not the running task's."""
        outer, t0 = self.current, time.process_time()
        self.current = pid
        try:
            return fn(*args)
        finally:
            dt = time.process_time() - t0
            self.cpu[pid] = self.cpu.get(pid, 0.0) + dt
            self._t += dt  # not the running task's
            self.current = outer

    def extra(self, seconds: float) -> None:
        """Charge the current peer work the network did once for everyone (a verification)."""
        if self.current is not None:
            self.cpu[self.current] = self.cpu.get(self.current, 0.0) + seconds


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096


class Sim:
    def __init__(self, s: Settings):
        self.s = s
        self.rng = random.Random(s.seed)
        # The verify cache only has to outlive a message's spread (a few hops): a small one keeps
        # it out of the memory per peer.
        self.net = FakeNetwork(latency=s.latency, jitter=s.jitter, seed=self.rng.getrandbits(32), epoch=EPOCH,
                               degree=s.degree, verify_cache=max(5000, 20 * s.peers))
        self.peers: dict[str, SimPeer] = {}  # every peer ever started, by id
        self.up: list[str] = []  # ids of running peers, in start order
        self.nursery: trio.Nursery | None = None
        self.out: dict = {"peers": s.peers, "seed": s.seed}
        self._holders: dict = {}  # key -> (len(up), last of up, its holders): the census asks often

    # -- membership of the simulation --------------------------------------------------------------
    async def add_peer(self) -> SimPeer:
        boot = [self.rng.choice(self.up)] if self.up else []
        p = SimPeer(self.net, self.rng, boot, self.s)
        self.peers[p.id] = p
        await self.nursery.start(p.run)
        self.up.append(p.id)
        return p

    def kill(self, pid: str) -> None:
        self.peers[pid].kill()
        self.up.remove(pid)

    def converged(self) -> bool:
        n = len(self.up)
        if not any(self.peers[pid].mesh.membership.partial for pid in self.up):
            return all(self.peers[pid].mesh.membership.counts()["alive"] >= n - 1 for pid in self.up)
        return self.neighbourhoods() >= 0.99

    def neighbourhoods(self) -> float:
        """Partial views: the share of (peer, one of its `near` truly nearest live peers) pairs
        that the peer's view holds alive — what holders need to agree on who holds what."""
        t = self.s.timings
        pts = sorted((point(pid), pid) for pid in self.up)
        keys = [x for x, _ in pts]
        have = total = 0
        for pid in self.up:
            me = point(pid)
            i = bisect.bisect_left(keys, me)
            window = [q for _, q in pts[max(0, i - 4 * t.near):i + 4 * t.near + 1] if q != pid]
            members = self.peers[pid].mesh.membership.members
            for q in closest(me, window, min(t.near, len(self.up) - 1)):
                total += 1
                m = members.get(q)
                have += m is not None and m.state == "alive"
        return have / max(1, total)

    async def wait(self, cond, limit: float, step: float = 0.5) -> float:
        t0 = trio.current_time()
        while not cond():
            if trio.current_time() - t0 > limit:
                raise RuntimeError(f"not reached within {limit} simulated s")
            await trio.sleep(step)
        return trio.current_time() - t0

    # -- phases ------------------------------------------------------------------------------------
    async def join(self) -> None:
        """Memory per peer: what Python allocated for the mesh (tracemalloc, on during this phase
        only), and the process's RSS growth (meaningful in a fresh process: main() forks one per
        size), each over n. Simulated peers share what the fake network shares (decoded envelopes
        in its verify cache), so real peers hold a little more."""
        gc.collect()
        if self.s.trace_memory:
            tracemalloc.start()
        w0, c0, r0, m0 = time.perf_counter(), time.process_time(), rss_bytes(), tracemalloc.get_traced_memory()[0]
        self.rss0 = r0
        for _ in range(self.s.peers):  # one every 5 ms on average: their probe ticks fall out of step
            await self.add_peer()
            await trio.sleep(self.rng.uniform(0, 0.01))
        took = await self.wait(self.converged, 120 + self.s.peers / 10, step=0.5 if self.s.peers <= 2000 else 2.0)
        await trio.sleep(5)  # records and syncs settle
        gc.collect()
        traced = tracemalloc.get_traced_memory()[0] - m0
        if self.s.trace_memory:
            tracemalloc.stop()
        n = self.s.peers
        views = [len(self.peers[pid].mesh.membership.members) for pid in self.up]
        self.out["join"] = {"sim_s": round(took, 2), "wall_s": round(time.perf_counter() - w0, 1),
                            "cpu_s": round(time.process_time() - c0, 1),
                            "rss_per_peer_kb": round((rss_bytes() - r0) / n / 1024, 1),
                            "partial_views": sum(self.peers[pid].mesh.membership.partial for pid in self.up),
                            "view_p50": sorted(views)[len(views) // 2], "view_max": max(views),
                            "neighbourhoods_held": round(self.neighbourhoods(), 4)}
        if self.s.trace_memory:
            self.out["join"]["memory_per_peer_kb"] = round(traced / n / 1024, 1)

    async def idle(self) -> None:
        """Wall cost of one simulated second of an idle mesh (probes, records, syncs, agents)."""
        seconds = self.s.idle
        c0, w0, p0 = self.net.counts.copy(), time.perf_counter(), time.process_time()
        await trio.sleep(seconds)
        wall, cpu = time.perf_counter() - w0, time.process_time() - p0
        msgs = sum((self.net.counts - c0).values())
        self.out["idle"] = {"wall_per_sim_s": round(wall / seconds, 3), "cpu_per_sim_s": round(cpu / seconds, 3),
                            "messages_per_sim_s": round(msgs / seconds)}

    async def place(self) -> None:
        s = self.s
        lat_decision, lat_running = [], []
        hops0 = len(self.net.hop_log)
        c0 = self.net.counts.copy()
        w0, p0, t0 = time.perf_counter(), time.process_time(), trio.current_time()
        pending: dict[tuple, float] = {}

        async def deploy(i: int) -> None:
            origin = self.peers[self.rng.choice(self.up)]
            start = trio.current_time()
            [view] = await origin.workloads.deploy(manifest=manifest(i, s.replicas), yaml=None, namespace=None,
                                                   wait=False, timeout=None, dry_run=False)
            lat_decision.append(trio.current_time() - start)
            pending[("default", "Deployment", f"w{i}")] = start

        async def drain() -> None:  # every replica running where its decision put it, timed as they come
            while pending:
                now = trio.current_time()
                for key in [k for k in pending if self.key_running(k)]:
                    lat_running.append(now - pending.pop(key))
                if pending:
                    await trio.sleep(0.005)
                if now - t0 > 600:
                    raise RuntimeError(f"{len(pending)} workloads not running after 600 simulated s")

        meter = PeerCPU()
        self.net.meter = meter
        trio.lowlevel.add_instrument(meter)
        # No cyclic GC while placing: a full collection walks every simulated peer's objects (a
        # 700 MB heap at 1,000 peers: ~0.8 s) and would land on whichever peer's step set it
        # off; a real peer's heap is a thousandth of that. Collected right after.
        gc.collect()
        gc.freeze()
        gc.disable()
        try:
            i = 0
            if s.rate:  # an open stream of Deploys, each from a random peer, none waiting for another
                async def watch() -> None:
                    while len(lat_decision) < s.workloads or pending:
                        await drain()
                        await trio.sleep(0.005)

                async with trio.open_nursery() as n:
                    n.start_soon(watch)
                    for i in range(s.workloads):
                        n.start_soon(deploy, i)
                        await trio.sleep(1 / s.rate)
            while i < s.workloads and not s.rate:
                async with trio.open_nursery() as n:
                    for _ in range(min(s.burst, s.workloads - i)):
                        n.start_soon(deploy, i)
                        i += 1
                await drain()
            placing = trio.current_time() - t0
            wall = time.perf_counter() - w0
            await self.wait(self.decisions_everywhere, 60)
        finally:
            trio.lowlevel.remove_instrument(meter)
            self.net.meter = None
            gc.enable()
            gc.unfreeze()
        wall_all, cpu = time.perf_counter() - w0, time.process_time() - p0
        sim = trio.current_time() - t0
        per_peer = sorted(meter.cpu.get(pid, 0.0) for pid in self.up)
        busiest = per_peer[-1]
        counts = self.net.counts - c0
        placed = s.workloads * s.replicas
        log = self.net.hop_log[hops0:]
        hops = [h for _, h, _ in log if h is not None]
        d, r = summary(lat_decision, 1000), summary(lat_running, 1000)
        self.out["place"] = {
            "workloads": s.workloads, "replicas": placed, "sim_s": round(sim, 2),
            "wall_s": round(wall, 2), "wall_all_s": round(wall_all, 2),
            "cpu_s": round(cpu, 2), "replicas_per_s": round(placed / wall_all, 1),
            "replicas_per_cpu_s": round(placed / cpu, 1), "decisions_per_s": round(s.workloads / wall_all, 1),
            "decision_ms_p50": round(d["p50"], 1), "decision_ms_p99": round(d["p99"], 1),
            "running_ms_p50": round(r["p50"], 1), "running_ms_p99": round(r["p99"], 1),
            # sent: overlay transmissions (duplicates included), requests, replies, probes; of
            # which gossip deliveries (first copies) are counted apart
            "messages_per_workload": round(sum(v for k, v in counts.items() if not k.startswith("gossip "))
                                           / s.workloads, 1),
            "gossip_deliveries_per_workload": round(sum(v for k, v in counts.items() if k.startswith("gossip "))
                                                    / s.workloads, 1),
            "messages_by_kind_per_workload": {k: round(v / s.workloads, 1) for k, v in sorted(counts.items())},
            "hops99_p50": _pct(hops, 50), "hops99_p99": _pct(hops, 99), "hops99_max": max(hops, default=None),
            "gossip_messages": len(log), "short_of_99pct": len(log) - len(hops),
            "rss_per_peer_kb": round((rss_bytes() - self.rss0) / s.peers / 1024, 1),  # + catalogs, status, caches
            # Simulated time, each peer on a core of its own (PeerCPU): the placement rate the
            # mesh reached, and what the busiest peer spent on it
            "offered_per_s": s.rate * s.replicas if s.rate else None,
            "placing_sim_s": round(placing, 3),
            "replicas_per_sim_s": round(placed / placing, 1),
            "peer_cpu_ms_p50": round(1000 * per_peer[len(per_peer) // 2], 2),
            "peer_cpu_ms_p99": round(1000 * per_peer[min(len(per_peer) - 1, int(0.99 * len(per_peer)))], 2),
            "peer_cpu_ms_max": round(1000 * busiest, 2),
            "busiest_peer_core_share": round(busiest / placing, 3),
            # the rate at which the busiest peer's core would be full (its work grows with the rate)
            "capacity_per_s": round(placed / busiest) if busiest else None,
            "cpu_attributed_share": round(sum(meter.cpu.values()) / cpu, 3),
        }

    def truth(self, key: tuple):
        """A workload's current decision: the newest among its live holders (in a small mesh every
        peer has it; in a large one only they, its runners and its deciders do)."""
        cached = self._holders.get(key)
        if cached is None or cached[0] != len(self.up) or cached[1] != self.up[-1]:  # (peers only join at the end)
            cached = self._holders[key] = (len(self.up), self.up[-1], holders(key, self.up, 3))
        ds = [self.peers[h].placement.catalog.entries.get(key) for h in cached[2]]
        ds = [d for d in ds if d is not None]
        return max(ds, key=lambda d: d.order()) if ds else None

    def key_running(self, key: tuple) -> bool:
        d = self.truth(key)
        if d is None:
            return False
        for replica, peer in d.assignments:
            p = self.peers.get(peer) if peer else None
            if p is None or peer not in self.up or render.pod_name(key[0], replica) not in p.running_pods():
                return False
        return True

    def decisions_everywhere(self) -> bool:
        """Every peer that should keep each workload has its current decision."""
        for i in range(self.s.workloads):
            key = ("default", "Deployment", f"w{i}")
            d = self.truth(key)
            if d is None:
                return False
            keepers = set(self.up) if self.peers[self.up[0]].placement.size() <= self.s.broadcast_max else set(
                holders(key, self.up, 3)) | {p for _, p in d.assignments}
            if any(self.peers[p].placement.catalog.entries.get(key) != d for p in keepers if p in self.peers):
                return False
        return True

    async def churn(self) -> None:
        s = self.s
        per_minute = max(1, round(s.churn * s.peers))
        w0, p0, t0, c0 = time.perf_counter(), time.process_time(), trio.current_time(), self.net.counts.copy()
        killed = joined = 0
        lost: dict[tuple, float] = {}  # (key, replica) on a killed peer -> when
        healed: list[float] = []

        async def watch() -> None:  # how long until each lost replica runs again elsewhere
            while True:
                await trio.sleep(0.1)
                now = trio.current_time()
                for key, replica in [k for k in lost if self.replica_running(*k)]:
                    healed.append(now - lost.pop((key, replica)))

        async with trio.open_nursery() as n:
            n.start_soon(watch)
            for _ in range(int(s.minutes)):
                gap = 60.0 / per_minute
                for _ in range(per_minute):
                    victim = self.rng.choice(self.up)
                    for d in filter(None, (self.truth(("default", "Deployment", f"w{i}")) for i in range(s.workloads))):
                        lost.update(((d.key, r), trio.current_time()) for r, p in d.assignments if p == victim)
                    self.kill(victim)
                    killed += 1
                    await self.add_peer()
                    joined += 1
                    await trio.sleep(gap)
            await trio.sleep(s.settle)
            n.cancel_scope.cancel()
        census = self.census()
        h = summary(healed)
        sim = trio.current_time() - t0
        traffic = {k: round(v / sim, 1) for k, v in sorted((self.net.counts - c0).items())}
        self.out["churn"] = {"minutes": s.minutes, "left": killed, "joined": joined,
                             "wall_s": round(time.perf_counter() - w0, 1), "cpu_s": round(time.process_time() - p0, 1),
                             "sim_s": round(trio.current_time() - t0, 1),
                             "replicas_lost_with_a_peer": len(healed) + len(lost),
                             "rerun_s_p50": round(h["p50"], 2), "rerun_s_p99": round(h["p99"], 2),
                             "never_rerun": len(lost), **census, "messages_per_sim_s_by_kind": traffic}

    def replica_running(self, key: tuple, replica: str) -> bool:
        """Assigned (in the catalog of a live peer) to a live peer that runs its pod."""
        d = self.truth(key)
        peer = d.peer_of(replica) if d is not None and not d.deleted else None
        return (peer is not None and peer in self.peers and self.peers[peer].mesh.running
                and render.pod_name(key[0], replica) in self.peers[peer].running_pods())

    def census(self) -> dict:
        """Replicas wanted (by each workload's holders, who must agree — every peer in a small
        mesh) vs running."""
        small = self.peers[self.up[0]].placement.size() <= self.s.broadcast_max
        wanted = running = disagree = 0
        lost, re_placed = [], 0
        assigned: set[tuple[str, str]] = set()
        for i in range(self.s.workloads):
            key = ("default", "Deployment", f"w{i}")
            d = self.truth(key)
            keepers = self.up if small else holders(key, self.up, 3)
            if any(self.peers[p].placement.catalog.entries.get(key) != d for p in keepers):
                disagree += 1
            re_placed += d is not None and d.revision > 0
            if d is None or d.deleted:
                lost.append(key)
                continue
            ok = True
            for replica, peer in d.assignments:
                wanted += 1
                pod = render.pod_name(key[0], replica)
                assigned.add((peer, pod))
                if peer in self.peers and peer in self.up and pod in self.peers[peer].running_pods():
                    running += 1
                else:
                    ok = False
            if not ok:
                lost.append(key)
        extra = sum(1 for pid in self.up for pod in self.peers[pid].running_pods() if (pid, pod) not in assigned)
        return {"replicas_wanted": wanted, "replicas_running": running, "workloads_not_whole": len(lost),
                "duplicates": extra, "catalogs_disagreeing": disagree, "workloads_re_placed": re_placed}

    # -- the whole run -----------------------------------------------------------------------------
    async def run(self) -> dict:
        async with trio.open_nursery() as nursery:
            self.nursery = nursery
            for phase in (self.join, self.idle, self.place, self.churn):
                if phase == self.churn and not self.s.minutes:
                    continue
                if self.s.verbose:
                    print(f"[{self.s.peers} peers] {phase.__name__} at {trio.current_time():.1f} simulated s, "
                          f"{time.process_time():.0f} CPU s, RSS {rss_bytes() >> 20} MB", file=sys.stderr, flush=True)
                await phase()
                if self.s.progress:  # what is done so far, should a long run be stopped later
                    Path(f"{self.s.progress}.{self.s.peers}").write_text(json.dumps(self.out, indent=1, default=str) + "\n")
            nursery.cancel_scope.cancel()
        return self.out


def _pct(xs: list, p: float):
    if not xs:
        return None
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round((len(xs) - 1) * p / 100)))]


def simulate(s: Settings) -> dict:
    """One mesh size; deterministic from s.seed (except wall-time and memory figures)."""
    import trio._core._run as trio_run

    rng_saved = trio_run._r.getstate()
    trio_run._ALLOW_DETERMINISTIC_SCHEDULING = True  # same seed, same task order (as under Hypothesis)
    trio_run._r.seed(s.seed)
    # Decisions carry a decision time (µs since the epoch) that orders concurrent ones: take it
    # from the simulated world's clock, not the host's, or the outcome would depend on CPU speed.
    now_usec = placement_mod.now_usec
    placement_mod.now_usec = lambda: int((EPOCH + trio.current_time()) * 1_000_000)
    try:
        sim = Sim(s)
        return trio.run(sim.run, clock=trio.testing.MockClock(autojump_threshold=0))
    finally:
        placement_mod.now_usec = now_usec
        trio_run._ALLOW_DETERMINISTIC_SCHEDULING = False
        trio_run._r.setstate(rng_saved)


async def _overlay(n: int, seed: int, degree: int, messages: int) -> dict:
    net = FakeNetwork(latency=0.002, jitter=0.002, seed=seed, degree=degree, verify_cache=max(5000, 2 * n))
    rng = random.Random(seed)
    peers = [FakeMesh(net, seed=rng.randbytes(32), rng=random.Random(rng.getrandbits(64))) for _ in range(n)]
    async with trio.open_nursery() as nursery:
        for p in peers:
            await nursery.start(p.run)
        # As if each had met one peer: the overlay only needs joined peers, and a real join
        # (every view complete: n² records) would not fit in one process at 10,000.
        net.joined.update(p.peer_id for p in peers)
        now = trio.current_time()
        for p in peers:  # and no full view syncs on first contact: they measure nothing here
            p._last_full_sync = now
        sources = rng.sample(peers, min(4, n))
        for i in range(messages):  # all at once, over before first contacts make peers announce
            await sources[i % len(sources)].publish(proto.TOPIC_TASKS, {"n": i})
        await trio.sleep(0.5)
        degrees = [len(net.neighbours(p.peer_id)) for p in peers]
        nursery.cancel_scope.cancel()
    log = [(h, share) for topic, h, share in net.hop_log if topic == proto.TOPIC_TASKS]
    hops = sorted(h for h, _ in log if h is not None)
    return {"peers": n, "messages": len(log), "hops99": hops, "coverage_min": min(share for _, share in log),
            "degree_mean": round(sum(degrees) / n, 1), "forwards_per_message": round(net.counts["forward"] / len(log))}


def overlay_hops(n: int, seed: int = 1, degree: int = 8, messages: int = 12) -> dict:
    """Gossip hops to reach 99 % of n peers on the overlay alone: real FakeMesh peers (gate,
    signatures) that have met, without complete views — what fits at 10,000 peers."""
    import trio._core._run as trio_run

    trio_run._ALLOW_DETERMINISTIC_SCHEDULING = True
    trio_run._r.seed(seed)
    try:
        return trio.run(_overlay, n, seed, degree, messages, clock=trio.testing.MockClock(autojump_threshold=0))
    finally:
        trio_run._ALLOW_DETERMINISTIC_SCHEDULING = False


FULL_UP_TO = 20_000  # larger meshes are projected (a whole run of 10,000 takes ~1 h on one core)


def main(sizes=(1000, 10000), seed: int = 1, minutes: float = 3.0, plot_dir: str | None = None,
         full_up_to: int = FULL_UP_TO, hop_sizes=(100, 3000), **kw) -> dict:
    """Simulate each size up to `full_up_to` peers whole (10,000 fit: their views are Kademlia
    tables). Larger ones get their gossip hops measured on the overlay alone and the rest
    projected from two whole runs (a smaller one is added if needed), marked so."""
    full = sorted(n for n in sizes if n <= full_up_to)
    big = sorted(n for n in sizes if n > full_up_to)
    refs = list(full)
    if big and len(refs) < 2:  # two sizes to draw each trend through
        refs = sorted(set(refs) | {max(100, (refs[0] if refs else full_up_to) // 4)})
    print(f"whole-mesh simulator on {machine()}", file=sys.stderr, flush=True)
    results = {}
    for n in refs:
        results[n] = _fresh(simulate, Settings(peers=n, seed=seed, minutes=minutes if n in full else 0,
                                               verbose=True, **kw))
        results[n]["overlay"] = _fresh(overlay_hops, n, seed)
        report(results[n])
    for n in big:
        print(f"[{n} peers] overlay only (real peers, no complete views), the rest projected", file=sys.stderr,
              flush=True)
        results[n] = project(n, [results[m] for m in refs[-2:]], _fresh(overlay_hops, n, seed))
        report(results[n])
    hops = {n: r["overlay"] for n, r in results.items()}
    for n in hop_sizes:  # more points for the hops plot: the overlay alone
        if n not in hops:
            hops[n] = _fresh(overlay_hops, n, seed)
            print(f"[{n} peers] overlay: {hops[n]}", file=sys.stderr, flush=True)
    if plot_dir:
        plot(results, Path(plot_dir), hops)
    return {**{n: results[n] for n in sorted(results)}, "overlay_only": {n: hops[n] for n in sorted(hops)}}


def _fresh(fn, *args):
    """fn(*args) in a forked child: each size starts from a clean heap (RSS figures mean
    something) and gives its memory back."""
    import concurrent.futures
    import multiprocessing

    with concurrent.futures.ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("fork")) as pool:
        return pool.submit(fn, *args).result()


def project(n: int, refs: list[dict], overlay: dict) -> dict:
    """What a whole run at n peers would show, by linear trends through two whole runs. Beyond
    catalog_broadcast_max a placement's messages do not grow with n (no gossip: latency and the
    simulated-time rate stay those of the larger run); memory and idle cost do (full views)."""
    (a, b) = refs

    def line(get) -> float:
        x0, x1, y0, y1 = a["peers"], b["peers"], get(a), get(b)
        return y1 + (y1 - y0) / (x1 - x0) * (n - x1)

    pb = b["place"]
    cpu_per_workload = line(lambda r: r["place"]["cpu_s"] / r["place"]["workloads"])
    per_workload = pb["replicas"] / pb["workloads"]
    gossip = pb["gossip_deliveries_per_workload"] / (b["peers"] - 1)  # messages each reaching everyone
    sent_per_delivery = (pb["messages_by_kind_per_workload"].get("forward", 0)
                         / max(1, pb["gossip_deliveries_per_workload"]))
    direct = sum(v for k, v in pb["messages_by_kind_per_workload"].items() if k.startswith(("request", "reply")))
    hop_ms = 1000 * 0.003  # one overlay hop: 2 ms latency + up to 2 ms jitter
    # only gossip travels hop by hop; a large mesh's placement sends none
    extra_hops = (statistics.median(overlay["hops99"]) - statistics.median(b["overlay"]["hops99"])) if gossip else 0
    return {
        "peers": n, "seed": b["seed"], "projected_from": [a["peers"], b["peers"]], "overlay": overlay,
        "join": {"rss_per_peer_kb": round(line(lambda r: r["join"]["rss_per_peer_kb"]), 1)},
        "idle": {"cpu_per_sim_s": round(line(lambda r: r["idle"]["cpu_per_sim_s"]), 3)},
        "place": {
            "workloads": pb["workloads"], "replicas": pb["replicas"],
            "replicas_per_cpu_s": round(per_workload / cpu_per_workload, 2),
            "decisions_per_cpu_s": round(1 / cpu_per_workload, 2),
            "cpu_ms_per_workload_per_peer": round(1000 * cpu_per_workload / n, 3),
            "decision_ms_p50": pb["decision_ms_p50"], "decision_ms_p99": pb["decision_ms_p99"],
            "running_ms_p50": round(pb["running_ms_p50"] + extra_hops * hop_ms, 1),
            "running_ms_p99": round(pb["running_ms_p99"] + extra_hops * hop_ms, 1),
            "messages_per_workload": round(gossip * (n - 1) * sent_per_delivery + direct),
            "gossip_deliveries_per_workload": round(gossip * (n - 1)),
            "hops99_p50": statistics.median(overlay["hops99"]), "hops99_max": max(overlay["hops99"]),
            # what placing added to a peer (measured at the larger size) on top of its projected view
            "rss_per_peer_kb": round(line(lambda r: r["join"]["rss_per_peer_kb"])
                                     + pb["rss_per_peer_kb"] - b["join"]["rss_per_peer_kb"], 1),
            **({"offered_per_s": pb.get("offered_per_s"), "replicas_per_sim_s": pb.get("replicas_per_sim_s")}
               if not gossip else {}),
        },
    }


def report(r: dict) -> None:
    what = f"projected from whole runs of {r['projected_from']} peers" if "projected_from" in r else "simulated"
    print(f"== {r['peers']} peers (seed {r['seed']}, {what})")
    for phase in ("join", "idle", "place", "churn", "overlay"):
        if phase in r:
            print(f"  {phase}: {r[phase]}")
    p = r["place"]
    if "replicas_per_s" in p:
        print(f"  -> {p['replicas_per_s']} replicas placed/s wall ({p['replicas_per_cpu_s']}/CPU-s), "
              f"decision p50/p99 {p['decision_ms_p50']}/{p['decision_ms_p99']} ms, all running "
              f"p50/p99 {p['running_ms_p50']}/{p['running_ms_p99']} ms (simulated), "
              f"hops to 99 % {p['hops99_p50']}, {p['messages_per_workload']} messages per workload")
    else:
        print(f"  -> projected: {p['replicas_per_cpu_s']} replicas placed per CPU-second in one process, "
              f"hops to 99 % {p['hops99_p50']} (measured), all running p50 {p['running_ms_p50']} ms")


def plot(results: dict, where: Path, hops: dict) -> None:
    """sim_latency.png (whole runs; projected sizes with open markers) and sim_hops.png."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sizes = sorted(results)
    whole = [n for n in sizes if "projected_from" not in results[n]]
    guess = [n for n in sizes if "projected_from" in results[n]]
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for i, (key, label) in enumerate((("decision_ms_p50", "Deploy → decision, p50"),
                                      ("decision_ms_p99", "Deploy → decision, p99"),
                                      ("running_ms_p50", "Deploy → every replica running, p50"),
                                      ("running_ms_p99", "Deploy → every replica running, p99"))):
        color = f"C{i}"
        ax.plot(whole, [results[n]["place"][key] for n in whole], marker="o", color=color, label=label)
        if guess and whole:
            ax.plot([whole[-1], *guess], [results[n]["place"][key] for n in [whole[-1], *guess]],
                    linestyle="--", color=color)
            ax.plot(guess, [results[n]["place"][key] for n in guess], linestyle="", marker="o",
                    markerfacecolor="white", color=color)
    ax.set_xscale("log")
    ax.set_ylim(bottom=0)
    tables = [f"{n:,}" for n in whole if results[n].get("join", {}).get("partial_views")]
    ax.set_xlabel("peers" + (f" (at {', '.join(tables)}: partial views, holders looked up)" if tables else "")
                  + (" (open markers: projected)" if guess else ""))
    ax.set_ylabel("simulated ms")
    ax.set_title("Placement latency against mesh size (virtual time)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(where / "sim_latency.png", dpi=100)
    plt.close(fig)
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    sizes = sorted(hops)
    ax.plot(sizes, [statistics.median(hops[n]["hops99"]) for n in sizes], marker="o",
            label="hops until 99 % of peers have a message (median of 12)")
    ax.plot(sizes, [max(hops[n]["hops99"]) for n in sizes], marker=".", linestyle="--",
            label="the same, worst of 12 messages")
    ax.plot(sizes, [math.log(n) / math.log(hops[n]["degree_mean"] - 1) for n in sizes],
            linestyle=":", color="grey", label="log(n) / log(mean degree − 1)")
    ax.set_xscale("log")
    ax.set_ylim(bottom=0)
    ax.set_xlabel("peers")
    ax.set_ylabel("gossip hops")
    ax.set_title("Gossip hops against mesh size (overlay degree 8)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(where / "sim_hops.png", dpi=100)
    plt.close(fig)


RESULTS = Path(__file__).resolve().parent / "sim_results.json"  # what the last CLI run found


def save(out: dict, path: Path = RESULTS, keep: bool = False, compare: str | None = None,
         plot_dir: str | None = None) -> None:
    """Write the results. keep: also those of the sizes (and comparisons) in the file already
    that this run did not simulate, with their dates; compare: file this run (one size) as a
    comparison under that label instead (e.g. the same size with another view_max)."""
    today = time.strftime("%Y-%m-%d")
    old = json.loads(path.read_text()) if (keep or compare) and path.exists() else {}
    dates = dict(old.get("meta", {}).get("dates", {}))
    for k in old:
        if k.isdigit():
            dates.setdefault(k, old.get("meta", {}).get("date", "?"))
    data = {k: v for k, v in old.items() if k != "meta"}
    if compare:
        [(n, r)] = [(n, r) for n, r in out.items() if isinstance(n, int)]
        data.setdefault("compare", {})[compare] = {**r, "date": today}
    else:
        for k, v in out.items():
            data[str(k)] = v
            if isinstance(k, int):
                dates[str(k)] = today
        data["overlay_only"] = {**old.get("overlay_only", {}), **{str(k): v for k, v in out.get("overlay_only", {}).items()}}
    meta = {"date": today, "machine": machine(), "dates": dates}
    path.write_text(json.dumps({"meta": meta, **data}, indent=1, default=str) + "\n")
    if plot_dir and not compare:
        runs = {int(k): v for k, v in data.items() if k.isdigit()}
        plot(runs, Path(plot_dir), {int(k): v for k, v in data["overlay_only"].items()})


def rows(path: Path = RESULTS) -> list[tuple[str, str, str, str, str]]:
    """Rows for bench/RESULTS.md (metric, BeeMesh, comparison, ratio, goal) from the last run's
    results: a whole run takes about an hour on two shared cores, too long for `make bench`."""
    if not path.exists():
        return [("Whole-mesh simulator (1,000 and 10,000 peers)",
                 "not run: `python bench/simulate.py --plot-dir bench` (≈ 1 h on 2 cores) writes its results")]
    raw = json.loads(path.read_text())
    meta, hops = raw.get("meta", {}), raw.get("overlay_only", {})
    runs = {int(k): v for k, v in raw.items() if k.isdigit()}
    whole = [n for n in sorted(runs) if "projected_from" not in runs[n]]
    big = [n for n in sorted(runs) if "projected_from" in runs[n]]
    if not whole:
        return [("Whole-mesh simulator", f"{path.name} holds no whole run")]
    if "replicas_per_sim_s" not in runs[max(whole)]["place"]:
        return [("Whole-mesh simulator", f"{path.name} is from an older simulator: run `python bench/simulate.py "
                 "--plot-dir bench` again")]
    when = f"`bench/simulate.py` run of {meta.get('date', '?')}"
    dates = meta.get("dates", {})
    out = []
    for n in whole:
        r, pl = runs[n], runs[n]["place"]
        if "replicas_per_sim_s" not in pl:
            continue
        per = pl["replicas"] // pl["workloads"]
        sent = sum(v for k, v in pl["messages_by_kind_per_workload"].items() if k.startswith("request "))
        run = f"`bench/simulate.py` run of {dates[str(n)]}" if str(n) in dates else when
        goal = (f"≥ 2,000/s: **met** in simulated time, each peer on a core of its own (the busiest at "
                f"{100 * pl['busiest_peer_core_share']:.0f} %); **missed** on the wall clock of one process, which "
                f"does every peer's work: a Deployment takes {sent:.0f} signed requests "
                f"({pl['messages_by_kind_per_workload'].get('request /beemesh/bid/1', 0):g} bids, decision and "
                "status pushes, holder look-ups) and their replies, ≈ 0.2 ms of Ed25519 each") if n == 1000 else "—"
        out.append((f"Whole-mesh simulator, {n:,} peers (production core, in-memory mesh, MockClock): placements/s",
                    f"{pl['replicas_per_sim_s']:,.0f} replicas/s of simulated time with {pl.get('offered_per_s') or 0:,.0f}/s "
                    f"offered ({per}-replica Deployments, each on a random peer; the last one's latency included); every "
                    f"peer's CPU metered: busiest peer {100 * pl['busiest_peer_core_share']:.1f} % of a core (p50 peer "
                    f"{pl['peer_cpu_ms_p50']:g} ms, max {pl['peer_cpu_ms_max']:g} ms in {pl['placing_sim_s']:g} s), so "
                    f"≈ {pl['capacity_per_s']:,}/s before any peer's core is full. Wall clock, all {n:,} peers on one "
                    f"core: {pl['replicas_per_s']:g}/s ({run})",
                    "Nomad C1M: 3,750/s on 5,000 real hosts (published, not this run)",
                    f"{pl['replicas_per_sim_s'] / 3750:.2f} (wall {pl['replicas_per_s'] / 3750:.3f})", goal))
    lat = "; ".join(f"{m:,} peers: decision {runs[m]['place']['decision_ms_p50']:g} / "
                    f"{runs[m]['place']['decision_ms_p99']:g}, every replica running {runs[m]['place']['running_ms_p50']:g} / "
                    f"{runs[m]['place']['running_ms_p99']:g}" + (" (projected)" if m in big else "")
                    for m in sorted(runs))
    out.append(("Simulated placement latency (virtual time), Deploy → decision; → every replica running, p50 / p99 ms",
                lat, "—", "—", "—"))
    h = {int(k): v for k, v in hops.items()}
    out.append(("Gossip hops until 99 % of peers have a message (overlay degree 8), median",
                ", ".join(f"{m:,}: {statistics.median(v['hops99']):g}" for m, v in sorted(h.items())),
                "log₇ n: " + ", ".join(f"{math.log(m) / math.log(7):.1f}" for m in sorted(h)), "—",
                "O(log n): met (one more hop per ~8× peers)"))
    for n in whole:
        pl = runs[n]["place"]
        per = pl["replicas"] // pl["workloads"]
        sent = sum(v for k, v in pl["messages_by_kind_per_workload"].items() if k.startswith("request "))
        kinds = ", ".join(f"{v:g} {k.split(' ', 1)[1]}" for k, v in sorted(pl["messages_by_kind_per_workload"].items())
                          if k.startswith("request ") and v >= 0.1)
        out.append((f"Messages per placement (a {per}-replica Deployment), {n:,} peers",
                    f"{sent:.0f} signed requests ({kinds}) and their replies; "
                    f"{pl['gossip_deliveries_per_workload']:g} gossip deliveries (beyond catalog_broadcast_max peers a "
                    "Deployment's news goes to its holders and runners only; in partial views the holders are "
                    "looked up: /beemesh/sync/1)", "—", "—",
                    "O(1) in the mesh size (O(log n) lookups in partial views): met"))
    mem = "; ".join(f"{m:,} peers: {runs[m]['join']['rss_per_peer_kb'] / 1024:.2f} MB after joining, "
                    f"{runs[m]['place']['rss_per_peer_kb'] / 1024:.1f} MB after {runs[m]['place']['workloads']} "
                    "Deployments" + (" (projected)" if m in big else "") for m in sorted(runs))
    out.append(("Memory per simulated peer (RSS growth / n, a fresh process per size)", mem, "—", "—", "—"))
    views = [m for m in whole if runs[m]["join"].get("partial_views")]
    if views:
        out.append(("Views: entries per peer after joining (p50 / max), and the share of each peer's 16 truly "
                    "nearest peers its view holds alive",
                    "; ".join(f"{m:,} peers: {runs[m]['join']['view_p50']} / {runs[m]['join']['view_max']} entries "
                              f"(Kademlia tables in {runs[m]['join']['partial_views']:,} of {m:,} peers), "
                              f"neighbourhoods {100 * runs[m]['join']['neighbourhoods_held']:.2f} % held "
                              + (f"{runs[m]['join']['sim_s']:g} simulated s after the last peer joined"
                                 if runs[m]['join']['sim_s'] else "as the last peer joined")
                              + f"; the join took {runs[m]['join']['cpu_s']:,.0f} CPU-s"
                              for m in views),
                    "full views at 1,000 peers: 999 entries each", "—",
                    "O(log n) entries per peer: met"))
    for n in whole:
        r = runs[n]
        if "churn" not in r:
            continue
        c = r["churn"]
        out.append((f"Churn, {n:,} peers: {c['left'] // max(1, int(c['minutes'])):,} leave and as many join "
                    f"every simulated minute, {c['minutes']:g} minute{'s' if c['minutes'] != 1 else ''}",
                    f"{c['replicas_lost_with_a_peer']} replicas lost with their peer ran again elsewhere after "
                    f"p50 {c['rerun_s_p50']:g} s / p99 {c['rerun_s_p99']:g} s; {c['replicas_running']} of "
                    f"{c['replicas_wanted']} replicas running, {c['workloads_not_whole']} workloads short, "
                    f"{c['duplicates']} duplicates, {c['catalogs_disagreeing']} workloads whose holders disagree; "
                    f"{c['cpu_s']:,.0f} CPU-s for {c['sim_s']:g} simulated s with the settling (whole mesh, one core)",
                    "—", "—",
                    "healed, none lost: met" if c["replicas_running"] == c["replicas_wanted"] and not c["duplicates"]
                    else "**missed**"))
    for n in whole:
        if "churn" not in runs[n] and runs[n].get("churn_not_run"):
            out.append((f"Churn, {n:,} peers", f"not run whole: {runs[n]['churn_not_run']}", "—", "—",
                        "healed, none lost: shown at 1,000 peers (full and partial views), not at this size"))
    for label, c in sorted(raw.get("compare", {}).items()):  # the same size, another view_max
        full = runs.get(c["peers"])
        if full is None or "churn" not in c:
            continue
        j, pl, ch = c["join"], c["place"], c["churn"]
        out.append((f"{c['peers']:,} peers with partial views ({label}) against full views (the {c['peers']:,}-peer "
                    "run above)",
                    f"view {j['view_p50']} entries (p50) instead of {c['peers'] - 1}; memory {j['rss_per_peer_kb']:g} "
                    f"instead of {full['join']['rss_per_peer_kb']:g} KB per peer after joining; idle "
                    f"{c['idle']['cpu_per_sim_s']:g} instead of {full['idle']['cpu_per_sim_s']:g} CPU-s per simulated s "
                    f"(whole mesh); Deploy → decision p50 {pl['decision_ms_p50']:g} instead of "
                    f"{full['place']['decision_ms_p50']:g} ms (holders looked up); busiest peer "
                    f"{100 * pl['busiest_peer_core_share']:.1f} instead of {100 * full['place']['busiest_peer_core_share']:.1f} % "
                    f"of a core; churn: {ch['replicas_running']} of {ch['replicas_wanted']} running, re-run p50 / p99 "
                    f"{ch['rerun_s_p50']:g} / {ch['rerun_s_p99']:g} s, {ch['cpu_s']:g} instead of "
                    f"{full['churn']['cpu_s']:g} CPU-s", "—", "—", "—"))
    for m in big:
        out.append((f"{m:,} peers", "not simulated whole: every view holds every peer (~10⁸ entries, tens of GB in "
                    f"one process); hops measured on the overlay with {m:,} real peers, the other figures projected "
                    f"from the {runs[m]['projected_from']}-peer runs", "—", "—", "—"))
    return out


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--peers", type=int, nargs="+", default=[1000, 10000], help="mesh sizes")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--minutes", type=float, default=3.0, help="simulated minutes of churn")
    ap.add_argument("--workloads", type=int, default=300)
    ap.add_argument("--rate", type=float, default=1000.0,
                    help="Deploys per simulated second, each on its own (0: bursts of 50, each waiting for the last)")
    ap.add_argument("--plot-dir", default=None, help="write sim_latency.png and sim_hops.png here")
    ap.add_argument("--full-up-to", type=int, default=FULL_UP_TO,
                    help="larger meshes: overlay measured, the rest projected")
    ap.add_argument("--trace-memory", action="store_true", help="tracemalloc during the join (slower)")
    ap.add_argument("--json", default=str(RESULTS), help="write the results here (rows() reads them)")
    ap.add_argument("--view-max", type=int, default=Timings().view_max,
                    help="views beyond this many peers become Kademlia tables (the daemon's default)")
    ap.add_argument("--keep", action="store_true",
                    help="keep the sizes already in --json that this run does not simulate")
    ap.add_argument("--compare", metavar="LABEL", default=None,
                    help="file this run (one size) in --json as a comparison, e.g. 'view_max 256'")
    ap.add_argument("--progress", metavar="FILE", default=None,
                    help="write each size's results so far to FILE.<peers> after each phase")
    ap.add_argument("--merge", metavar="FILE", default=None,
                    help="simulate nothing: merge the results FILE holds into --json (with --keep or --compare)")
    a = ap.parse_args()
    if a.merge:
        raw = json.loads(Path(a.merge).read_text())
        out = {int(k) if k.isdigit() else k: v for k, v in raw.items() if k != "meta"}
        out["overlay_only"] = {int(k): v for k, v in out.get("overlay_only", {}).items()}
        save(out, Path(a.json), keep=True, compare=a.compare, plot_dir=a.plot_dir)
        raise SystemExit(0)
    out = main(tuple(a.peers), a.seed, a.minutes, None, full_up_to=a.full_up_to, workloads=a.workloads,
               trace_memory=a.trace_memory, rate=a.rate or None, timings=Timings(view_max=a.view_max),
               progress=a.progress)
    save(out, Path(a.json), keep=a.keep, compare=a.compare, plot_dir=a.plot_dir)
