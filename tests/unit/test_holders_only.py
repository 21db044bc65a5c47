"""Placement in a large mesh (more peers than `broadcast_max`): a Deployment's decisions and status
go to its holders and runners only; everyone else asks the holders (FakeMesh, virtual time)."""

from __future__ import annotations

import random

import pytest
import trio

from beemeshd import errors
from beemeshd.core.catalog import holders
from beemeshd.mesh.fake import FakeNetwork
from beemeshd.placement import SYNC_INTERVAL

from test_placement import deployment, mesh_of

KEY = ("default", "Deployment", "web")


@pytest.fixture
def net():
    return FakeNetwork(latency=0.002, seed=5)


def outsiders(peers, key):
    """Peers that neither hold nor run the workload (by every peer's own view: they agree here)."""
    hs = set(holders(key, [p.id for p in peers], 3))
    d = next(p.placement.catalog.entries[key] for p in peers if p.id in hs)
    runners = {p for _, p in d.assignments}
    return [p for p in peers if p.id not in hs and p.id not in runners and p.id != d.origin]


async def get(peer, name):
    await peer.w.prepare(name, None, None)
    return peer.w.get(name, None, None)


async def wait_ready(peer, name, n, limit=30):
    with trio.fail_after(limit):
        while True:
            v = await get(peer, name)
            if v["readyReplicas"] == n:
                return v
            await trio.sleep(0.25)


async def test_news_reaches_holders_and_runners_only_and_others_ask(net, nursery, autojump_clock):
    peers = await mesh_of(nursery, net, 10, broadcast_max=4)
    gossip0 = net.counts["gossip beemesh/events"]
    [w] = await peers[0].w.deploy(manifest=deployment(replicas=3, cpu="100m"), yaml=None, namespace=None,
                                  wait=True, timeout=30, dry_run=False)
    assert w["readyReplicas"] == 3  # the origin heard every runner's status
    await trio.sleep(1)
    assert net.counts["gossip beemesh/events"] == gossip0  # nothing went to every peer
    hs = set(holders(KEY, [p.id for p in peers], 3))
    d = peers[0].placement.catalog.entries[KEY]
    runners = {p for _, p in d.assignments}
    for p in peers:
        has = KEY in p.placement.catalog.entries
        assert has == (p.id in hs or p.id in runners or p.id == d.origin), p.id
    others = outsiders(peers, KEY)
    assert len(others) >= 3
    # an outsider answers Get by asking the holders: the decision and its replicas' status
    view = await get(others[0], "web")
    assert view["readyReplicas"] == 3 and view["generation"] == 1
    assert sorted(r["peer"] for r in view["replicaStatus"]) == sorted(runners)
    assert not others[0].placement.knows(KEY)  # it keeps no promise and acts on nothing
    with pytest.raises(errors.WorkloadNotFound):
        await get(others[1], "nothing-like-this")


async def test_list_from_any_peer_gathers_what_every_holder_keeps(net, nursery, autojump_clock):
    peers = await mesh_of(nursery, net, 10, broadcast_max=4)
    rng = random.Random(3)
    names = [f"w{i}" for i in range(6)]
    for i, name in enumerate(names):
        await rng.choice(peers).w.deploy(manifest=deployment(name, replicas=1, cpu="100m", port=18100 + i),
                                         yaml=None, namespace=None, wait=False, timeout=None, dry_run=False)
    await trio.sleep(2)
    for p in rng.sample(peers, 3):
        await p.w.prepare()
        assert sorted(v["name"] for v in p.w.list(None, None)) == names


async def test_scale_and_delete_from_a_peer_that_kept_nothing(net, nursery, autojump_clock):
    peers = await mesh_of(nursery, net, 10, broadcast_max=4)
    await peers[0].w.deploy(manifest=deployment(replicas=2, cpu="100m"), yaml=None, namespace=None, wait=True,
                            timeout=30, dry_run=False)
    x = outsiders(peers, KEY)[0]
    assert KEY not in x.placement.catalog.entries
    view = await x.w.scale("web", None, 4, True, 30)
    assert view["generation"] == 2 and view["readyReplicas"] == 4  # it built on generation 1
    assert sum(len(p.runtime.pod_names()) for p in peers) == 4
    # a re-apply of the same manifest from another outsider changes nothing (it saw generation 2)
    y = outsiders(peers, KEY)[0]
    [again] = await y.w.deploy(manifest=deployment(replicas=4, cpu="100m"), yaml=None, namespace=None,
                               wait=False, timeout=None, dry_run=False)
    assert again["generation"] == 2
    await y.w.delete("web", None, None, True, 30)
    await trio.sleep(2)
    assert sum(len(p.runtime.pod_names()) for p in peers) == 0
    with pytest.raises(errors.WorkloadNotFound):
        await get(peers[-1], "web")


async def test_holders_move_with_the_mesh_and_nothing_is_lost(net, nursery, autojump_clock):
    peers = await mesh_of(nursery, net, 10, broadcast_max=4)
    await peers[0].w.deploy(manifest=deployment(replicas=2, cpu="100m"), yaml=None, namespace=None, wait=True,
                            timeout=30, dry_run=False)
    hs = holders(KEY, [p.id for p in peers], 3)
    d = peers[0].placement.catalog.entries[KEY]
    runners = {p for _, p in d.assignments}
    # kill two holders that run nothing and did not deploy it: the third hands it to the new ones
    victims = [p for p in peers if p.id in hs and p.id not in runners and p is not peers[0]][:2]
    for v in victims:
        v.kill()
    alive = [p for p in peers if p not in victims]
    new = holders(KEY, [p.id for p in alive], 3)
    assert set(new) - set(hs)  # the holder set moved
    with trio.fail_after(4 * SYNC_INTERVAL + 10):
        while not all(KEY in p.placement.catalog.entries for p in alive if p.id in new):
            await trio.sleep(0.5)
    assert all(p.placement.knows(KEY) for p in alive if p.id in new)
    # the old holders gone, an outsider still finds it and its replicas (stateless work kept running)
    view = await wait_ready(outsiders(alive, KEY)[0], "web", 2)
    assert sorted(r["peer"] for r in view["replicaStatus"]) == sorted(runners)


@pytest.mark.parametrize("seed", [9, 21, 33])
async def test_random_loss_in_a_large_mesh_heals_and_loses_nothing(seed, nursery, autojump_clock):
    rng = random.Random(seed)
    net = FakeNetwork(latency=0.002, jitter=0.003, seed=seed + 4)
    peers = await mesh_of(nursery, net, 12, broadcast_max=4)
    sizes = {"a": 3, "b": 2, "c": 4}
    for i, (name, n) in enumerate(sizes.items()):
        await rng.choice(peers).w.deploy(manifest=deployment(name, replicas=n, cpu="100m", port=18080 + i),
                                         yaml=None, namespace=None, wait=True, timeout=30, dry_run=False)
    victims = rng.sample(peers, 3)
    for v in victims:
        v.kill()
    alive = [p for p in peers if p not in victims]
    dead = {v.id for v in victims}

    async def settled():
        for name, n in sizes.items():
            v = await get(rng.choice(alive), name)
            if v["readyReplicas"] != n or any(r["peer"] in dead for r in v["replicaStatus"]):
                return False
        return True

    with trio.fail_after(60):
        while not await settled():
            await trio.sleep(0.5)
    # exactly one pod per replica on the survivors, spread over distinct peers
    assert sum(len(p.runtime.pod_names()) for p in alive) == sum(sizes.values())
    for name, n in sizes.items():
        assert len({r["peer"] for r in (await get(alive[0], name))["replicaStatus"]}) == n


async def test_a_new_holder_gets_the_current_decision_not_a_stale_copy(net, nursery, autojump_clock):
    """The peer that took the Deploy keeps its copy, which goes stale when a holder re-places a
    replica; when the holder set moves, only holders and runners — whose copies are kept current —
    hand the workload on (a peer made holder with a stale copy first asks the others): a new holder
    that took the old assignments would wait for reports from peers that no longer run it, judge
    them undelivered, or heal from stale assignments."""
    peers = await mesh_of(nursery, net, 10, broadcast_max=4)
    hs = holders(KEY, [p.id for p in peers], 3)
    origin = next(p for p in peers if p.id not in hs)
    pool = [p for p in peers if p.id not in hs and p is not origin][:4]
    for p in pool:  # replicas run on these only: never on a holder or the origin
        p.labels = (("role", "run"),)
    m = deployment(replicas=2, cpu="100m")
    m["spec"]["template"]["spec"]["nodeSelector"] = {"role": "run"}
    await origin.w.deploy(manifest=m, yaml=None, namespace=None, wait=True, timeout=30, dry_run=False)
    first = origin.placement.catalog.entries[KEY]
    runner = next(p for p in pool if p.id == first.assignments[0][1])
    runner.kill()
    alive = [p for p in peers if p is not runner]
    keeper = next(p for p in alive if p.id == hs[0])
    with trio.fail_after(20):
        while (await get(keeper, "web"))["readyReplicas"] != 2 or any(
                r["peer"] == runner.id for r in (await get(keeper, "web"))["replicaStatus"]):
            await trio.sleep(0.5)
    assert not origin.placement.knows(KEY)
    origin.placement.catalog.entries[KEY] = first  # its copy, stale (anti-entropy may have refreshed it)
    # a holder dies: whoever becomes holder must get the current decision, never the stale one
    victim = next(p for p in alive if p.id == hs[1])
    alive = [p for p in alive if p is not victim]
    new = next(p for p in alive if p.id in holders(KEY, [q.id for q in alive], 3) and p.id not in hs)
    offered = []
    merge = new.placement.catalog.merge
    new.placement.catalog.merge = lambda d: offered.append(d) or merge(d)
    victim.kill()
    await trio.sleep(4 * SYNC_INTERVAL)
    current = keeper.placement.catalog.entries[KEY]
    assert current.revision == 1 and new.placement.catalog.entries[KEY] == current
    assert first not in offered
    await trio.sleep(70)  # past deliver_within: the promises the new holder keeps were all kept
    assert all(new.placement.trust.receipts(p.id).get("undelivered", 0) == 0 for p in alive)
    assert sum(len(p.runtime.pod_names()) for p in alive) == 2


async def test_an_outsider_sees_the_status_of_a_replica_its_holder_runs(net, nursery, autojump_clock):
    """The holder that runs a replica itself shares its own rows too (not only what others
    reported to it) — found by the real-daemon test, where placement often picks the holder."""
    peers = await mesh_of(nursery, net, 10, broadcast_max=4)
    for p in peers:  # one holder: nobody else has its report
        p.placement.catalog.k = 1
    [h] = [p for p in peers if p.id == holders(KEY, [q.id for q in peers], 1)[0]]
    h.labels = (("role", "run"),)
    m = deployment(replicas=1, cpu="100m")
    m["spec"]["template"]["spec"]["nodeSelector"] = {"role": "run"}
    origin = next(p for p in peers if p is not h)
    await origin.w.deploy(manifest=m, yaml=None, namespace=None, wait=True, timeout=30, dry_run=False)
    await trio.sleep(1)
    x = next(p for p in peers if p is not h and p is not origin)
    view = await get(x, "web")
    assert view["readyReplicas"] == 1 and view["replicaStatus"][0]["peer"] == h.id
    assert view["replicaStatus"][0]["state"] in ("running", "ready")


async def test_a_decision_passed_on_must_carry_its_origins_signature(net, nursery, autojump_clock):
    """Anyone may pass a decision on (anti-entropy, hand-over, a holder's answer), so each carries
    its origin's signature: a tampered or forged one is dropped, counted and held against the peer
    that passed it on; the catalog is unchanged and nothing runs elsewhere."""
    from dataclasses import replace

    from beemeshd.core.catalog import DECISION_DOMAIN
    from beemeshd.placement import PROTO_PUSH

    peers = await mesh_of(nursery, net, 10, broadcast_max=4)
    await peers[0].w.deploy(manifest=deployment(replicas=1, cpu="100m"), yaml=None, namespace=None, wait=True,
                            timeout=30, dry_run=False)
    real = peers[0].placement.catalog.entries[KEY]
    real.verify()  # the origin signed it
    keeper = next(p for p in peers if p.id in holders(KEY, [q.id for q in peers], 3) and p is not peers[0])
    liar = next(p for p in peers if p is not keeper and p is not peers[0])
    pods = sum(len(p.runtime.pod_names()) for p in peers)
    # the same decision moved to the liar and "re-placed" (revision 1), under the origin's old signature
    tampered = replace(real, assignments=((real.assignments[0][0], liar.id),), revision=1)
    # and one that claims the origin made it, signed by the liar
    forged = replace(tampered, revision=2)
    forged = replace(forged, signature=liar.mesh.signer.sign_detached(DECISION_DOMAIN, forged.signed_part()))
    before = keeper.mesh.counters.get("malformedMessages", 0)
    for d in (tampered, forged):
        await liar.mesh.request(keeper.id, PROTO_PUSH, {"type": "handover", "decision": d.to_wire()}, 2.0)
    await trio.sleep(1)
    assert keeper.placement.catalog.entries[KEY] == real
    assert keeper.mesh.counters["malformedMessages"] == before + 2
    assert keeper.placement.trust.receipts(liar.id)["invalid"] == 2
    assert sum(len(p.runtime.pod_names()) for p in peers) == pods and not liar.runtime.pod_names()
