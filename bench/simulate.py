"""Whole-mesh simulator: 1,000 and 10,000 peers on the production core, in one process.

Every simulated peer is what the daemon wires (beemeshd/daemon.py): a FakeMesh (MeshBase: real
signed envelopes, the real failure detector), Placement (bids, decisions, healing, trust), an
Agent reconciling a FakeRuntime, and the Workloads service reporting replica status. They share
one FakeNetwork with a GossipSub-like overlay (each peer forwards to `degree` random neighbours,
one latency per hop) and run under trio.testing.MockClock(autojump_threshold=0): simulated time
jumps whenever every task waits, so wall time is what the whole mesh's CPU work costs.

Deterministic from the seed (trio's scheduler too): the same seed gives the same numbers, except
those measured in wall time or memory.

Phases (per mesh size):
1. join   — peers join through a random earlier peer until every view is complete;
2. place  — `workloads` Deployments of `replicas` replicas, Deploy on random peers in bursts;
            placements/s (wall), simulated latency (Deploy → decision; → every replica running),
            messages per placement, gossip hops to reach 99 % of the peers;
3. churn  — `minutes` simulated minutes; every minute 10 % of the peers leave (killed) and as
            many new ones join, spread over the minute; then a settling period and a census:
            replicas wanted vs running, workloads lost, duplicates.

    python bench/simulate.py --peers 1000 --seed 1 --minutes 3 --plot-dir bench
"""

from __future__ import annotations

import argparse
import gc
import random
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
from beemeshd.core import render  # noqa: E402
from beemeshd.core.catalog import Catalog  # noqa: E402
from beemeshd.core.membership import Timings  # noqa: E402
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
    minutes: float = 3.0  # of churn
    churn: float = 0.10  # share of the peers replaced per simulated minute
    settle: float = 30.0  # simulated seconds after churn before the census
    degree: int | None = 8  # overlay degree (None: flood to every peer)
    latency: float = 0.002
    jitter: float = 0.002
    timings: Timings = field(default_factory=Timings)  # production defaults (probe_fanout 16)


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
                                   on_change=self.poke, rng=random.Random(rng.getrandbits(64)))
        self.mesh.on_peer_event = self.placement.peer_event
        self.agent = Agent(self.runtime, None, self.events, peer_id=self.id, wanted=self.placement.wanted)
        self.agent.remote_ready = self.placement.remote_ready
        self.workloads = Workloads(self.placement, self.agent, self.runtime, self.events, self.id)
        self.scope: trio.CancelScope | None = None
        self.born = 0.0

    def poke(self) -> None:
        self.agent.poke()

    def state(self):
        return local_state(self.placement, cpu_total=4000, memory_total=8 * GI, max_pods=110,
                           uptime=self.mesh._uptime())

    async def run(self, task_status=trio.TASK_STATUS_IGNORED) -> None:
        with trio.CancelScope() as self.scope:
            async with trio.open_nursery() as n:
                await n.start(self.mesh.run)
                await n.start(self.agent.run)
                await n.start(self.placement.run)
                n.start_soon(self.workloads.status_loop)
                self.born = trio.current_time()
                task_status.started()

    def kill(self) -> None:
        self.mesh.kill()
        if self.scope is not None:
            self.scope.cancel()

    def running_pods(self) -> set[str]:
        return set(self.runtime.pod_names())


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
        return all(self.peers[pid].mesh.membership.counts()["alive"] >= n - 1 for pid in self.up)

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
        only), and the process's RSS growth, each over n. Simulated peers share what the fake
        network shares (decoded envelopes in its verify cache), so real peers hold a little more."""
        gc.collect()
        tracemalloc.start()
        w0, c0, r0, m0 = time.perf_counter(), time.process_time(), rss_bytes(), tracemalloc.get_traced_memory()[0]
        for _ in range(self.s.peers):  # one every 5 ms on average: their probe ticks fall out of step
            await self.add_peer()
            await trio.sleep(self.rng.uniform(0, 0.01))
        took = await self.wait(self.converged, 120 + self.s.peers / 10)
        await trio.sleep(5)  # records and syncs settle
        gc.collect()
        traced = tracemalloc.get_traced_memory()[0] - m0
        tracemalloc.stop()
        n = self.s.peers
        self.out["join"] = {"sim_s": round(took, 2), "wall_s": round(time.perf_counter() - w0, 1),
                            "cpu_s": round(time.process_time() - c0, 1),
                            "memory_per_peer_kb": round(traced / n / 1024, 1),
                            "rss_per_peer_kb": round((rss_bytes() - r0) / n / 1024, 1)}

    async def idle(self, seconds: float = 10.0) -> None:
        """Wall cost of one simulated second of an idle mesh (probes, records, syncs, agents)."""
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

        i = 0
        while i < s.workloads:
            async with trio.open_nursery() as n:
                for _ in range(min(s.burst, s.workloads - i)):
                    n.start_soon(deploy, i)
                    i += 1
            # every replica running where its decision put it: take the times as they come
            while pending:
                now = trio.current_time()
                for key in [k for k in pending if self.key_running(k)]:
                    lat_running.append(now - pending.pop(key))
                if pending:
                    await trio.sleep(0.005)
                if now - t0 > 600:
                    raise RuntimeError(f"{len(pending)} workloads not running after 600 simulated s")
        wall = time.perf_counter() - w0
        await self.wait(self.decisions_everywhere, 60)
        wall_all, cpu = time.perf_counter() - w0, time.process_time() - p0
        sim = trio.current_time() - t0
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
            "messages_per_workload": round(sum(counts.values()) / s.workloads, 1),
            "messages_by_kind_per_workload": {k: round(v / s.workloads, 1) for k, v in sorted(counts.items())},
            "hops99_p50": _pct(hops, 50), "hops99_p99": _pct(hops, 99), "hops99_max": max(hops, default=None),
            "gossip_messages": len(log), "short_of_99pct": len(log) - len(hops),
        }

    def key_running(self, key: tuple) -> bool:
        d = self.peers[self.up[0]].placement.catalog.entries.get(key)
        if d is None:
            return False
        for replica, peer in d.assignments:
            p = self.peers.get(peer) if peer else None
            if p is None or peer not in self.up or render.pod_name(key[0], replica) not in p.running_pods():
                return False
        return True

    def decisions_everywhere(self) -> bool:
        n = len(self.peers[self.up[0]].placement.catalog.entries)
        return all(len(self.peers[pid].placement.catalog.entries) == n for pid in self.up)

    async def churn(self) -> None:
        s = self.s
        per_minute = max(1, round(s.churn * s.peers))
        w0, p0, t0 = time.perf_counter(), time.process_time(), trio.current_time()
        killed = joined = 0
        for _ in range(int(s.minutes)):
            gap = 60.0 / per_minute
            for _ in range(per_minute):
                self.kill(self.rng.choice(self.up))
                killed += 1
                await self.add_peer()
                joined += 1
                await trio.sleep(gap)
        await trio.sleep(s.settle)
        census = self.census()
        self.out["churn"] = {"minutes": s.minutes, "left": killed, "joined": joined,
                             "wall_s": round(time.perf_counter() - w0, 1), "cpu_s": round(time.process_time() - p0, 1),
                             "sim_s": round(trio.current_time() - t0, 1), **census}

    def census(self) -> dict:
        """Replicas wanted (by the catalog of every live peer, which must agree) vs running."""
        ref = self.peers[self.up[0]].placement.catalog
        disagree = sum(1 for pid in self.up if self.peers[pid].placement.catalog.entries.keys() != ref.entries.keys())
        wanted = running = 0
        lost = []
        assigned: set[tuple[str, str]] = set()
        for i in range(self.s.workloads):
            key = ("default", "Deployment", f"w{i}")
            d = ref.entries.get(key)
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
                "duplicates": extra, "catalogs_disagreeing": disagree}

    # -- the whole run -----------------------------------------------------------------------------
    async def run(self) -> dict:
        async with trio.open_nursery() as nursery:
            self.nursery = nursery
            await self.join()
            await self.idle()
            await self.place()
            if self.s.minutes:
                await self.churn()
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


def main(sizes=(1000, 10000), seed: int = 1, minutes: float = 3.0, plot_dir: str | None = None, **kw) -> dict:
    results = {}
    for n in sizes:
        s = Settings(peers=n, seed=seed, minutes=minutes, **kw)
        r = simulate(s)
        results[n] = r
        report(r)
    if plot_dir:
        plot(results, Path(plot_dir))
    return results


def report(r: dict) -> None:
    print(f"== {r['peers']} peers (seed {r['seed']})")
    for phase in ("join", "idle", "place", "churn"):
        if phase in r:
            print(f"  {phase}: {r[phase]}")


def plot(results: dict, where: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sizes = sorted(results)
    place = [results[n]["place"] for n in sizes]
    fig, ax = plt.subplots(figsize=(6, 4))
    for key, label in (("decision_ms_p50", "Deploy → decision p50"), ("decision_ms_p99", "Deploy → decision p99"),
                       ("running_ms_p50", "Deploy → all replicas running p50"),
                       ("running_ms_p99", "Deploy → all replicas running p99")):
        ax.plot(sizes, [p[key] for p in place], marker="o", label=label)
    ax.set_xscale("log")
    ax.set_xlabel("simulated peers")
    ax.set_ylabel("simulated ms")
    ax.set_title("Placement latency against mesh size")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(where / "sim_latency.png", dpi=100)
    plt.close(fig)
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(sizes, [p["hops99_p50"] for p in place], marker="o", label="hops to reach 99 % (median message)")
    ax.plot(sizes, [p["hops99_max"] for p in place], marker="o", label="hops to reach 99 % (worst message)")
    ax.set_xscale("log")
    ax.set_xlabel("simulated peers")
    ax.set_ylabel("gossip hops")
    ax.set_title("Gossip hops against mesh size")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(where / "sim_hops.png", dpi=100)
    plt.close(fig)


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--peers", type=int, nargs="+", default=[1000, 10000], help="mesh sizes")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--minutes", type=float, default=3.0, help="simulated minutes of churn")
    ap.add_argument("--workloads", type=int, default=300)
    ap.add_argument("--plot-dir", default=None, help="write sim_latency.png and sim_hops.png here")
    a = ap.parse_args()
    main(tuple(a.peers), a.seed, a.minutes, a.plot_dir, workloads=a.workloads)
