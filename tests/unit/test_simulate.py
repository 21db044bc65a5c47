"""The whole-mesh simulator (bench/simulate.py) at small scale, and the GossipSub-like overlay of
the in-memory network it runs on: same seed → same numbers; churn healed with nothing lost;
gossip hops grow like log n."""

from __future__ import annotations

import math
import random
import statistics

import trio

from bench.simulate import Settings, overlay_hops, simulate
from beemeshd.core import protocol as proto
from beemeshd.mesh.fake import FakeMesh, FakeNetwork

# Figures that measure this machine, not the simulated mesh.
MACHINE = {"wall_s", "wall_all_s", "cpu_s", "replicas_per_s", "replicas_per_cpu_s", "decisions_per_s",
           "wall_per_sim_s", "cpu_per_sim_s", "memory_per_peer_kb", "rss_per_peer_kb", "peer_cpu_ms_p50",
           "peer_cpu_ms_p99", "peer_cpu_ms_max", "busiest_peer_core_share", "capacity_per_s", "cpu_attributed_share"}


def simulated(result):
    if isinstance(result, dict):
        return {k: simulated(v) for k, v in result.items() if k not in MACHINE}
    return result


def test_same_seed_same_run_and_churn_is_healed_with_nothing_lost():
    s = Settings(peers=30, workloads=10, burst=5, minutes=2, settle=15, idle=1, trace_memory=False)
    first, again = simulate(s), simulate(s)
    assert simulated(first) == simulated(again)
    place, churn = first["place"], first["churn"]
    assert place["replicas"] == 30 and place["hops99_max"] is not None and place["short_of_99pct"] == 0
    assert place["decision_ms_p99"] < 250  # every bid in before the window closes
    assert churn["left"] == churn["joined"] == 6  # 10 % of 30, each simulated minute
    assert churn["replicas_running"] == churn["replicas_wanted"] == 30
    assert churn["workloads_not_whole"] == 0 and churn["duplicates"] == 0
    assert churn["catalogs_disagreeing"] == 0
    assert churn["replicas_lost_with_a_peer"] > 0 and churn["never_rerun"] == 0  # healing was needed
    assert churn["workloads_re_placed"] > 0 and churn["rerun_s_p99"] < 10
    other = simulate(Settings(peers=30, seed=2, workloads=10, burst=5, minutes=0, idle=1, trace_memory=False))
    assert simulated(other["place"]) != simulated(place)  # the seed matters


def test_gossip_hops_to_reach_99_percent_grow_like_log_n():
    small, large = overlay_hops(50), overlay_hops(400)
    for r in (small, large):
        assert r["messages"] == 12 and r["coverage_min"] == 1.0  # every message reached every peer
        assert 8 <= r["degree_mean"] <= 16  # GossipSub-like: D = 8, links both ways, at most 2·D
    mid_small, mid_large = statistics.median(small["hops99"]), statistics.median(large["hops99"])
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


async def test_only_the_peers_concerned_reconcile_when_a_decision_arrives(autojump_clock):
    """In a large mesh nearly every decision and status report is about other peers: waking every
    agent for each (what placement did) made a placement cost O(n) reconcile passes."""
    from bench.simulate import SimPeer, manifest

    s = Settings(peers=12)
    net, rng = FakeNetwork(latency=0.002, seed=9), random.Random(9)
    async with trio.open_nursery() as nursery:
        peers = []
        for _ in range(s.peers):
            peers.append(SimPeer(net, rng, [peers[0].id] if peers else [], s))
            await nursery.start(peers[-1].run)
        while not all(p.mesh.membership.counts()["alive"] == s.peers - 1 for p in peers):
            await trio.sleep(0.1)
        await trio.sleep(1.05)  # just past everyone's periodic pass
        before = {p.id: p.agent.passes for p in peers}
        [view] = await peers[0].workloads.deploy(manifest=manifest(0, 2), yaml=None, namespace=None, wait=True,
                                                 timeout=5, dry_run=False)
        runners = {r["peer"] for r in view["replicaStatus"]}
        extra = {p.id: p.agent.passes - before[p.id] for p in peers}
        assert len(runners) == 2 and view["readyReplicas"] == 2
        assert all(extra[pid] >= 2 for pid in runners)  # woken: create, then see it run
        assert all(extra[p.id] == 0 for p in peers if p.id not in runners and p is not peers[0])
        nursery.cancel_scope.cancel()


def test_a_large_mesh_places_and_heals_through_holders_only():
    """The same run with news kept to holders and runners (broadcast_max below the mesh size):
    no decision or status is gossiped, every peer's CPU is metered, churn still loses nothing."""
    s = Settings(peers=30, workloads=10, rate=50, broadcast_max=8, minutes=2, settle=15, idle=1)
    out = simulate(s)
    place, churn = out["place"], out["churn"]
    assert place["gossip_deliveries_per_workload"] == 0  # nothing went to every peer
    assert place["messages_by_kind_per_workload"]["request /beemesh/event/1"] > 0
    assert place["replicas"] == 30 and place["peer_cpu_ms_max"] > 0 and place["capacity_per_s"] > 0
    assert 0 < place["busiest_peer_core_share"] < 1
    assert churn["replicas_running"] == churn["replicas_wanted"] == 30
    assert churn["workloads_not_whole"] == 0 and churn["duplicates"] == 0 and churn["never_rerun"] == 0
    assert churn["catalogs_disagreeing"] == 0 and churn["replicas_lost_with_a_peer"] > 0
