"""The whole-mesh simulator (bench/simulate.py) at small scale, and the GossipSub-like overlay of
the in-memory network it runs on: same seed → same numbers; churn healed with nothing lost;
gossip hops grow like log n."""

from __future__ import annotations

import math
import random

import trio

from bench.simulate import Settings, simulate
from beemeshd.core import protocol as proto
from beemeshd.mesh.fake import FakeMesh, FakeNetwork

# Figures that measure this machine, not the simulated mesh.
MACHINE = {"wall_s", "wall_all_s", "cpu_s", "replicas_per_s", "replicas_per_cpu_s", "decisions_per_s",
           "wall_per_sim_s", "cpu_per_sim_s", "memory_per_peer_kb", "rss_per_peer_kb"}


def simulated(result):
    if isinstance(result, dict):
        return {k: simulated(v) for k, v in result.items() if k not in MACHINE}
    return result


def test_same_seed_same_run_and_churn_is_healed_with_nothing_lost():
    s = Settings(peers=40, workloads=12, burst=6, minutes=2, settle=20)
    first, again = simulate(s), simulate(s)
    assert simulated(first) == simulated(again)
    place, churn = first["place"], first["churn"]
    assert place["replicas"] == 36 and place["hops99_max"] is not None and place["short_of_99pct"] == 0
    assert place["decision_ms_p99"] < 250  # every bid in before the window closes
    assert churn["left"] == churn["joined"] == 8  # 10 % of 40, each simulated minute
    assert churn["replicas_running"] == churn["replicas_wanted"] == 36
    assert churn["workloads_not_whole"] == 0 and churn["duplicates"] == 0
    assert churn["catalogs_disagreeing"] == 0
    other = simulate(Settings(peers=40, seed=2, workloads=12, burst=6, minutes=0))
    assert simulated(other["place"]) != simulated(place)  # the seed matters


async def overlay_hops(n: int, messages: int = 12, degree: int = 8) -> list[int]:
    net = FakeNetwork(latency=0.002, jitter=0.002, seed=n, degree=degree)
    peers = [FakeMesh(net, rng=random.Random(i)) for i in range(n)]
    async with trio.open_nursery() as nursery:
        for p in peers:
            await nursery.start(p.run)
        # as if each had met one peer (a mesh's join, without waiting for n² view syncs)
        net.joined.update(p.peer_id for p in peers)
        rng = random.Random(1)
        for i in range(messages):
            await rng.choice(peers).publish(proto.TOPIC_TASKS, {"n": i})
            await trio.sleep(0.1)
        assert all(degree <= len(net.neighbours(p.peer_id)) <= 2 * degree for p in peers)
        nursery.cancel_scope.cancel()
    log = [(h, share) for topic, h, share in net.hop_log if topic == proto.TOPIC_TASKS]
    assert len(log) == messages and all(share == 1.0 for _, share in log)
    return sorted(h for h, _ in log)


async def test_overlay_hops_grow_like_log_n(autojump_clock):
    small, large = await overlay_hops(50), await overlay_hops(400)
    mid_small, mid_large = small[len(small) // 2], large[len(large) // 2]
    # eight times the peers: about one more hop (log₇ 8 ≈ 1.07), not eight times as many
    assert mid_small < mid_large <= mid_small + 2
    assert mid_large <= math.ceil(math.log(400) / math.log(7)) + 1


async def test_overlay_keeps_to_its_side_of_a_partition_and_replaces_dead_neighbours(autojump_clock):
    net = FakeNetwork(latency=0.002, seed=4, degree=4)
    peers = [FakeMesh(net, rng=random.Random(i)) for i in range(30)]
    got = {p.peer_id: 0 for p in peers}

    async def listen(p, stream):
        async for _ in stream:
            got[p.peer_id] += 1

    async with trio.open_nursery() as nursery:
        for p in peers:
            await nursery.start(p.run)
            nursery.start_soon(listen, p, p.subscribe(proto.TOPIC_TASKS))
        net.joined.update(p.peer_id for p in peers)
        left, right = peers[:10], peers[10:]
        net.partition({p.peer_id for p in left}, {p.peer_id for p in right})
        await left[0].publish(proto.TOPIC_TASKS, {"side": "left"})
        await trio.sleep(0.5)
        assert all(got[p.peer_id] == 1 for p in left) and all(got[p.peer_id] == 0 for p in right)
        net.heal()
        for p in right[:5]:
            p.kill()
        await trio.sleep(FakeNetwork.HEARTBEAT)  # the overlay notices, as GossipSub's heartbeat would
        await right[5].publish(proto.TOPIC_TASKS, {"after": "heal"})
        await trio.sleep(0.5)
        alive = left + right[5:]
        assert all(got[p.peer_id] >= 1 for p in alive)  # every live peer, around the dead ones
        assert not any(q in {p.peer_id for p in right[:5]} for p in alive for q in net.neighbours(p.peer_id))
        nursery.cancel_scope.cancel()
