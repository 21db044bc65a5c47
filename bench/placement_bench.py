"""Placement decision time on real libp2p: Deploy accepted -> every replica's winner known.

N peers (default 10) run in one process, each a LibP2PMesh on 127.0.0.1 with the production
Placement (auction over GossipSub, decision gossiped back); no containers are started (the
runtime is not part of this number). A random peer places a 3-replica Deployment, R times.
Prints p50/p99 and n, and the same on the in-memory mesh (FakeMesh, real core) for comparison.
`--processes [N [R]]`: the libp2p figure with every peer in a process of its own instead.
"""

from __future__ import annotations

import os
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import trio  # noqa: E402
import trio.testing  # noqa: E402

from bench.common import summary  # noqa: E402
from beemeshd.core.catalog import Catalog  # noqa: E402
from beemeshd.core.manifest import parse_manifest  # noqa: E402
from beemeshd.events import EventBus  # noqa: E402
from beemeshd.placement import Placement, local_state  # noqa: E402

GI = 1 << 30


def manifest(i: int) -> dict:
    return {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": f"w{i}"},
            "spec": {"replicas": 3, "selector": {"matchLabels": {"app": "w"}},
                     "template": {"metadata": {"labels": {"app": "w"}}, "spec": {"containers": [
                         {"name": "c", "image": "localhost/beemesh-busybox:latest",
                          "resources": {"requests": {"cpu": "10m", "memory": "16Mi"}}}]}}}}


def make_placement(mesh) -> Placement:
    box = {}

    def state():
        return local_state(box["p"], cpu_total=2000, memory_total=8 * GI, max_pods=500, uptime=3600)

    box["p"] = Placement(mesh, Catalog(mesh.peer_id), EventBus(), self_state=state, window=0.25)
    return box["p"]


async def measure(meshes, rounds: int, rng: random.Random) -> list[float]:
    samples = []
    async with trio.open_nursery() as nursery:
        for m in meshes:
            await nursery.start(m.run)
        with trio.fail_after(30):
            while not all(sum(p.state == "alive" for p in m.peers()) == len(meshes) - 1 for m in meshes):
                await trio.sleep(0.05)
        places = [make_placement(m) for m in meshes]
        for p in places:
            await nursery.start(p.run)
        await trio.sleep(2)  # GossipSub meshes settle
        for i in range(rounds + 3):
            p = rng.choice(places)
            w = parse_manifest(manifest(i))
            t0 = trio.current_time()  # virtual under MockClock: link delays, not this machine's speed
            d, _ = await p.apply(w)
            took = trio.current_time() - t0
            assert all(peer for _, peer in d.assignments), d
            if i >= 3:
                samples.append(took)
            await trio.sleep(0.05)
        nursery.cancel_scope.cancel()
    return samples


def main(n: int = 10, rounds: int = 50) -> dict:
    from beemeshd.mesh.host import LibP2PMesh
    from beemeshd.mesh.fake import FakeMesh, FakeNetwork

    rng = random.Random(1)

    async def real_all():
        seeds = [os.urandom(32) for _ in range(n)]
        first = LibP2PMesh(seeds[0], listen=["/ip4/127.0.0.1/tcp/0"])
        async with trio.open_nursery() as nursery:
            await nursery.start(first.run)
            boot = first.addresses()[0]
            rest = [LibP2PMesh(s, listen=["/ip4/127.0.0.1/tcp/0"], bootstrap=[boot]) for s in seeds[1:]]
            samples = await measure_with_started(first, rest, rounds, rng)
            nursery.cancel_scope.cancel()
        return samples

    async def fake_all():
        net = FakeNetwork(latency=0.002, jitter=0.002, seed=1)
        first = FakeMesh(net)
        meshes = [first] + [FakeMesh(net, bootstrap=[first.peer_id]) for _ in range(n - 1)]
        return await measure(meshes, rounds, rng)

    LAST_RUN.update(late_rounds=0, cpu_share=float("nan"))
    real_samples = trio.run(real_all)
    real_extra = dict(LAST_RUN)
    fake_samples = trio.run(fake_all, clock=trio.testing.MockClock(autojump_threshold=0))
    r, f = summary(real_samples, 1000), summary(fake_samples, 1000)
    print(f"placement decision, {n} peers, libp2p on loopback: p50 {r['p50']:.1f} ms, p99 {r['p99']:.1f} ms "
          f"(n={r['n']}); "
          f"{real_extra['late_rounds']} rounds with a bid past the window; the one process holding all {n} "
          f"peers was busy {real_extra['cpu_share']:.0%} of one core")
    print(f"placement decision, {n} peers, in-memory mesh (virtual time, 2±2 ms links): "
          f"p50 {f['p50']:.1f} ms, p99 {f['p99']:.1f} ms (n={f['n']})")
    return {"real": r, "fake": f, "peers": n, **real_extra}


async def measure_with_started(first, rest, rounds, rng):
    """Like measure(), for a first mesh that is already running (its address is the bootstrap)."""
    samples = []
    meshes = [first] + rest
    async with trio.open_nursery() as nursery:
        for m in rest:
            await nursery.start(m.run)
        with trio.fail_after(60):
            while not all(sum(p.state == "alive" for p in m.peers()) == len(meshes) - 1 for m in meshes):
                await trio.sleep(0.05)
        places = [make_placement(m) for m in meshes]
        for p in places:
            await nursery.start(p.run)
        await trio.sleep(3)
        cpu0, wall0 = time.process_time(), time.perf_counter()
        for i in range(rounds + 3):
            p = rng.choice(places)
            t0 = time.perf_counter()
            d, _ = await p.apply(parse_manifest(manifest(i)))
            took = time.perf_counter() - t0
            late = [x for x in d.declined if x[1] == "did not answer in time"]
            if late and os.environ.get("BENCH_DEBUG"):
                print(f"round {i}: {len(late)} late, {len(d.bids)} bids, {took*1000:.0f} ms")
            if i >= 3:
                samples.append(took)
                LAST_RUN["late_rounds"] += bool(late)
            await trio.sleep(0.05)
        # All peers share this one process (one thread, one core at most): how busy it was.
        LAST_RUN["cpu_share"] = (time.process_time() - cpu0) / (time.perf_counter() - wall0)
        nursery.cancel_scope.cancel()
    return samples


# What the last libp2p run saw besides its samples (set by measure_with_started).
LAST_RUN = {"late_rounds": 0, "cpu_share": float("nan")}


def bidder(boot: str) -> None:
    """A peer in a process of its own (--bidder): mesh + placement, bidding until killed."""
    import logging

    from beemeshd.mesh.host import LibP2PMesh

    logging.getLogger("libp2p").setLevel(logging.CRITICAL)

    async def run():
        m = LibP2PMesh(os.urandom(32), listen=["/ip4/127.0.0.1/tcp/0"], bootstrap=[boot])
        async with trio.open_nursery() as nursery:
            await nursery.start(m.run)
            await nursery.start(make_placement(m).run)
            await trio.sleep_forever()

    trio.run(run)


def main_processes(n: int = 10, rounds: int = 50) -> dict:
    """The same decision with each of the other n-1 peers in a process of its own (as on separate
    machines, but sharing this machine's cores); this process is the one peer taking the Deploys.
    Not run by make bench: it answers whether one process holding every peer is the bottleneck."""
    import subprocess

    from beemeshd.mesh.host import LibP2PMesh

    out = {}

    async def run():
        first = LibP2PMesh(os.urandom(32), listen=["/ip4/127.0.0.1/tcp/0"])
        procs = []
        try:
            async with trio.open_nursery() as nursery:
                await nursery.start(first.run)
                procs += [subprocess.Popen([sys.executable, __file__, "--bidder", first.addresses()[0]])
                          for _ in range(n - 1)]
                with trio.fail_after(120):
                    while sum(p.state == "alive" for p in first.peers()) < n - 1:
                        await trio.sleep(0.1)
                place = make_placement(first)
                await nursery.start(place.run)
                await trio.sleep(5)
                samples, late = [], 0
                cpu0, wall0 = time.process_time(), time.perf_counter()
                for i in range(rounds + 3):
                    t0 = time.perf_counter()
                    d, _ = await place.apply(parse_manifest(manifest(i)))
                    if i >= 3:
                        samples.append(time.perf_counter() - t0)
                        late += any(x[1] == "did not answer in time" for x in d.declined)
                    await trio.sleep(0.05)
                out.update(real=summary(samples, 1000), late_rounds=late,
                           cpu_share=(time.process_time() - cpu0) / (time.perf_counter() - wall0))
                nursery.cancel_scope.cancel()
        finally:
            for p in procs:
                p.kill()
                p.wait()

    trio.run(run)
    r = out["real"]
    print(f"placement decision, {n} peers in {n} processes, libp2p on loopback: p50 {r['p50']:.1f} ms, "
          f"p99 {r['p99']:.1f} ms (n={r['n']}); {out['late_rounds']} rounds with a bid past the window; "
          f"load average {os.getloadavg()[0]:.2f}")
    return out


if __name__ == "__main__":
    if sys.argv[1:2] == ["--bidder"]:
        bidder(sys.argv[2])
    elif sys.argv[1:2] == ["--processes"]:
        main_processes(*(int(a) for a in sys.argv[2:4]))
    else:
        main(int(sys.argv[1]) if len(sys.argv) > 1 else 10, int(sys.argv[2]) if len(sys.argv) > 2 else 50)
