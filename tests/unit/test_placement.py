"""Placement across a mesh of fake peers (FakeMesh + FakeRuntime + the real core), virtual time."""

from __future__ import annotations

import pytest
import trio

from beemeshd import errors
from beemeshd.agent import Agent
from beemeshd.core.catalog import Catalog
from beemeshd.core.membership import Timings
from beemeshd.events import EventBus
from beemeshd.mesh.fake import FakeMesh, FakeNetwork
from beemeshd.mesh_workloads import Workloads
from beemeshd.placement import Placement, local_state
from beemeshd.runtime.fake import FakeRuntime

IMAGE = "localhost/beemesh-busybox:latest"
GI = 1 << 30


def deployment(name="web", replicas=3, cpu="500m", kind="Deployment", port=18080):
    c = {"name": "app", "image": IMAGE, "ports": [{"containerPort": 8080, "hostPort": port}],
         "resources": {"requests": {"cpu": cpu, "memory": "64Mi"}}}
    spec = {"replicas": replicas, "selector": {"matchLabels": {"app": name}},
            "template": {"metadata": {"labels": {"app": name}}, "spec": {"containers": [c]}}}
    return {"apiVersion": "apps/v1", "kind": kind, "metadata": {"name": name}, "spec": spec}


class Peer:
    def __init__(self, net, bootstrap=(), cpu=2000, labels=(), liar=False, **placement_kw):
        self.mesh = FakeMesh(net, bootstrap=list(bootstrap), timings=Timings(0.5, 1.0, 2.0))
        self.id = self.mesh.peer_id
        self.runtime = FakeRuntime(now=trio.current_time)
        self.events = EventBus()
        self.cpu = cpu
        self.labels = tuple(labels)
        self.placement = Placement(self.mesh, Catalog(self.id), self.events, self_state=self.state, window=0.3,
                                   on_change=lambda: self.agent.poke(), **placement_kw)
        self.mesh.on_peer_event = self.placement.peer_event  # as the daemon wires it
        self.agent = Agent(self.runtime, None, self.events, interval=0.5, peer_id=self.id,
                           wanted=self.placement.wanted)
        self.agent.remote_ready = self.placement.remote_ready
        self.w = Workloads(self.placement, self.agent, self.runtime, self.events, self.id)
        self.liar = liar  # bids (with lots of capacity) but never runs what it wins
        self.scope = None

    def state(self):
        return local_state(self.placement, cpu_total=self.cpu, memory_total=4 * GI, max_pods=110,
                           uptime=self.mesh._uptime(), labels=self.labels)

    async def run(self, task_status=trio.TASK_STATUS_IGNORED):
        with trio.CancelScope() as self.scope:
            async with trio.open_nursery() as n:
                await n.start(self.mesh.run)
                if not self.liar:
                    await n.start(self.agent.run)
                await n.start(self.placement.run)
                if not self.liar:
                    n.start_soon(self.w.status_loop)
                task_status.started()

    def kill(self):
        self.mesh.kill()
        self.scope.cancel()


async def mesh_of(nursery, net, n, **kw):
    first = Peer(net, **kw)
    peers = [first] + [Peer(net, bootstrap=[first.id], **kw) for _ in range(n - 1)]
    for p in peers:
        await nursery.start(p.run)
    with trio.fail_after(10):
        while not all(sum(v.state == "alive" for v in p.mesh.peers()) == n - 1 for p in peers):
            await trio.sleep(0.05)
    return peers


@pytest.fixture
def net():
    return FakeNetwork(latency=0.002, seed=3)


async def deploy(peer, manifest, **kw):
    kw.setdefault("wait", True)
    return await peer.w.deploy(manifest=manifest, yaml=None, namespace=None, timeout=kw.pop("timeout", 30),
                               dry_run=False, **kw)


async def healed(peer, victim, replicas: int, limit: float) -> None:
    """Until `peer` sees every replica of "web" ready and none on the victim."""
    with trio.fail_after(limit):
        while True:
            view = peer.w.get("web", None, None)
            if view["readyReplicas"] == replicas and all(r["peer"] != victim.id for r in view["replicaStatus"]):
                return
            await trio.sleep(0.1)


async def test_replicas_spread_and_any_peer_answers(net, nursery, autojump_clock):
    a, b, c = await mesh_of(nursery, net, 3)
    [w] = await deploy(a, deployment(replicas=3))
    assert w["readyReplicas"] == 3
    assert sorted(r["peer"] for r in w["replicaStatus"]) == sorted([a.id, b.id, c.id])
    assert sum(len(p.runtime.pod_names()) for p in (a, b, c)) == 3
    await trio.sleep(1)
    seen_from_c = c.w.get("web", None, None)
    assert seen_from_c["readyReplicas"] == 3 and seen_from_c["origin"] == a.id
    ex = b.w.explain("web", None)
    assert len(ex["decisions"]) == 3 and len(ex["decisions"][0]["bids"]) == 3
    assert all(d["rule"].startswith("highest score") for d in ex["decisions"])


async def test_no_capacity_names_every_peers_reason_and_stores_nothing(net, nursery, autojump_clock):
    a, b, c = await mesh_of(nursery, net, 3)
    with pytest.raises(errors.NoCapacity) as exc:
        await deploy(a, deployment(cpu="3"))
    reasons = {r["peer"]: r["reason"] for r in exc.value.reasons}
    assert set(reasons) == {a.id, b.id, c.id}
    assert all("needs 3000m CPU" in r for r in reasons.values())
    assert a.placement.catalog.live() == []


async def test_dead_peer_replicas_are_placed_again(net, nursery, autojump_clock):
    peers = await mesh_of(nursery, net, 4)
    a = peers[0]
    [w] = await deploy(a, deployment(replicas=3, cpu="100m"))
    victim = next(p for p in peers[1:] if p.runtime.pod_names())
    lost = [r["name"] for r in w["replicaStatus"] if r["peer"] == victim.id]
    victim.kill()
    survivors = [p for p in peers if p is not victim]
    t0 = trio.current_time()
    await healed(a, victim, 3, limit=20)
    assert trio.current_time() - t0 < 5  # dead within ~2 s, placed and running right after
    assert sum(len(p.runtime.pod_names()) for p in survivors) == 3
    history = a.w.explain("web", None)["decisions"]
    assert any(d["rule"].startswith("re-placed") for d in history if d["replica"] in lost)


async def test_a_heal_that_found_no_taker_is_tried_again(net, nursery, autojump_clock):
    """Every survivor turns re-placements down for a while (bids can miss their window, peers
    busy starting pods), until after the dead peer's last state change: the same re-placement is
    tried again after a back-off, not only when a peer joins."""
    peers = await mesh_of(nursery, net, 4)
    a = peers[0]
    await deploy(a, deployment(replicas=2, cpu="100m"))
    victim = next(p for p in peers[1:] if p.runtime.pod_names())
    busy_until = trio.current_time() + 10  # the victim is dead (and no longer news) well before
    turned_down = []

    def busy(manifest, origin, user):
        if trio.current_time() < busy_until:
            turned_down.append(trio.current_time())
            return "busy for a moment"
        return None

    for p in peers:
        if p is not victim:
            p.placement.bid_gate = busy
    victim.kill()
    await healed(a, victim, 2, limit=60)
    assert turned_down and trio.current_time() - busy_until < 15


async def test_manifest_survives_its_origin(net, nursery, autojump_clock):
    a, b, c = await mesh_of(nursery, net, 3)
    await deploy(a, deployment(replicas=2, cpu="100m"))
    a.kill()
    await trio.sleep(3)
    w = b.w.get("web", None, None)
    assert w["replicas"] == 2
    await b.w.scale("web", None, 1, True, 20)
    await c.w.delete("web", None, None, True, 20)
    assert b.runtime.pod_names() == [] and c.runtime.pod_names() == []


async def test_partition_duplicates_are_reconciled_away(net, nursery, autojump_clock):
    peers = await mesh_of(nursery, net, 4)
    [w] = await deploy(peers[0], deployment(replicas=2, cpu="100m"))
    left, right = peers[:2], peers[2:]
    net.partition({p.id for p in left}, {p.id for p in right})
    await trio.sleep(8)  # each side declares the other dead and heals on its own
    net.heal()
    with trio.fail_after(30):
        while True:
            await trio.sleep(0.5)
            pods = sum(len(p.runtime.pod_names()) for p in peers)
            decisions = {p.placement.catalog.entries[("default", "Deployment", "web")].order() for p in peers}
            if pods == 2 and len(decisions) == 1 and peers[3].w.get("web", None, None)["readyReplicas"] == 2:
                break
    # one copy of each replica, where the agreed decision says
    d = peers[0].placement.catalog.entries[("default", "Deployment", "web")]
    running = sorted((r, p.id) for p in peers for r in (n.split(".")[0] for n in p.runtime.pod_names()))
    assert running == sorted(d.assignments)


async def test_statefulset_replicas_are_not_moved(net, nursery, autojump_clock):
    peers = await mesh_of(nursery, net, 3)
    [w] = await deploy(peers[0], deployment("db", replicas=2, cpu="100m", kind="StatefulSet"))
    victim_id = next(r["peer"] for r in w["replicaStatus"] if r["peer"] != peers[0].id)
    victim = next(p for p in peers if p.id == victim_id)
    victim.kill()
    await trio.sleep(6)
    view = peers[0].w.get("db", None, None)
    row = next(r for r in view["replicaStatus"] if r["peer"] == victim_id)
    assert row["state"] == "pending" and "once its lease has run out" in row["message"]  # beemeshd/stateful.py moves it


async def test_twelve_peers_random_loss_nothing_lost_spread_kept(nursery, autojump_clock):
    import random

    rng = random.Random(7)
    net = FakeNetwork(latency=0.002, jitter=0.003, seed=11)
    peers = await mesh_of(nursery, net, 12)
    sizes = {"a": 3, "b": 5, "c": 2, "d": 4}
    for i, (name, n) in enumerate(sizes.items()):
        await deploy(rng.choice(peers), deployment(name, replicas=n, cpu="100m", port=18080 + i))
    victims = rng.sample(peers, 3)
    for v in victims:
        v.kill()
    alive = [p for p in peers if p not in victims]
    dead = {v.id for v in victims}

    def settled():
        for name, n in sizes.items():
            views = [p.w.get(name, None, None) for p in alive]
            if any(v["readyReplicas"] != n or any(r["peer"] in dead for r in v["replicaStatus"]) for v in views):
                return False
        return True

    with trio.move_on_after(60):
        while not settled():
            await trio.sleep(0.25)
    if not settled():  # say what is missing
        for name in sizes:
            v = alive[0].w.get(name, None, None)
            print(name, v["readyReplicas"], [(r["name"], r["peer"][-6:] if r["peer"] else None, r["state"],
                                              r["peer"] in dead) for r in v["replicaStatus"]])
        raise AssertionError("not healed")
    for name, n in sizes.items():
        # every survivor agrees on one placement, and it spreads: no peer holds two replicas
        orders = {p.placement.catalog.entries[("default", "Deployment", name)].order() for p in alive}
        assert len(orders) == 1
        placed = [r["peer"] for r in alive[0].w.get(name, None, None)["replicaStatus"]]
        assert len(set(placed)) == n
    # exactly one pod per replica runs on the survivors
    assert sum(len(p.runtime.pod_names()) for p in alive) == sum(sizes.values())


async def test_a_hostport_taken_by_another_workload_means_no_bid(net, nursery, autojump_clock):
    a, b = await mesh_of(nursery, net, 2)
    await deploy(a, deployment("first", replicas=2, cpu="100m"))
    with pytest.raises(errors.NoCapacity) as exc:
        await deploy(b, deployment("second", replicas=1, cpu="100m"))  # same hostPort 18080
    assert all("hostPort 18080/tcp already in use" in r["reason"] for r in exc.value.reasons)


async def test_logs_of_replicas_on_other_peers(net, nursery, autojump_clock):
    a, b, c = await mesh_of(nursery, net, 3)
    [w] = await deploy(a, deployment(replicas=3, cpu="100m"))
    for p in (a, b, c):
        for pod in p.runtime.pod_names():
            p.runtime.append_log(pod, "app", f"hello from {pod}")
    sources = c.w.log_sources("web", None, None, None)
    lines = [x async for x in c.w.logs(sources, None, False)]
    lines += [x async for x in c.w.remote_logs("web", None, None, None, None, False)]
    assert sorted(x["replica"] for x in lines) == ["web-0", "web-1", "web-2"]
    assert all(x["line"] == f"hello from {x['replica']}.default" for x in lines)


@pytest.mark.parametrize("move_here", [False, True])
async def test_follow_merges_local_and_remote_lines_and_follows_a_moved_replica(move_here, net, nursery,
                                                                                 autojump_clock):
    peers = await mesh_of(nursery, net, 4)
    a = peers[0]
    [w] = await deploy(a, deployment(replicas=2, cpu="100m"))
    far_row = next(r for r in w["replicaStatus"] if r["peer"] != a.id)
    far = next(p for p in peers if p.id == far_row["peer"])
    if move_here:  # the dead peer's replica must land on the follower's own peer
        for p in peers:
            if p not in (a, far):
                p.cpu = 0
    got = []

    async def follow():
        sources = a.w.log_sources("web", None, None, None)
        async for line in a.w.all_logs(sources, "web", None, None, None, 0, True):
            got.append((line["replica"], line["line"]))

    async with trio.open_nursery() as n:
        n.start_soon(follow)
        await trio.sleep(0.2)
        for p in (a, far):
            for pod in p.runtime.pod_names():
                p.runtime.append_log(pod, "app", f"first from {pod}")
        await trio.sleep(2)
        assert sorted(got) == sorted((pod.split(".")[0], f"first from {pod}")
                                     for p in (a, far) for pod in p.runtime.pod_names())
        # the far replica's peer dies: the replica is re-placed, and its new peer's lines follow
        far.kill()
        with trio.fail_after(20):
            while True:
                moved = next(r for r in a.w.get("web", None, None)["replicaStatus"] if r["name"] == far_row["name"])
                if moved["peer"] not in (far.id, None) and moved["state"] in ("running", "ready"):
                    break
                await trio.sleep(0.2)
        new = next(p for p in peers if p.id == moved["peer"])
        assert (new is a) == move_here
        pod = next(x for x in new.runtime.pod_names() if x.startswith(far_row["name"] + "."))
        new.runtime.append_log(pod, "app", "hello from the new home")
        with trio.fail_after(5):
            while (far_row["name"], "hello from the new home") not in got:
                await trio.sleep(0.1)
        n.cancel_scope.cancel()
    assert len(got) == len(set(got))  # nothing twice


def answered(peer, name):
    """Peers that answered (bid or declined) in the latest decision about `name`."""
    d = peer.placement.find(name, "default")
    return {b["peer"] for b in d.bids} | {p for p, _ in d.declined}


async def test_a_large_mesh_asks_only_a_sample_to_bid(nursery, autojump_clock):
    net = FakeNetwork(latency=0.002, seed=5)
    peers = await mesh_of(nursery, net, 24, fanout=5)
    await deploy(peers[3], deployment(replicas=2, cpu="100m"))
    asked = answered(peers[3], "web")
    assert len(asked) == 1 + 5  # itself and a sample of 5 others (≥ 2 × replicas), not 23
    placed = {r["peer"] for r in peers[0].w.get("web", None, None)["replicaStatus"]}
    assert len(placed) == 2 and placed <= asked


class AvoidSampling:
    """An rng whose sample leaves one peer out (as bad luck would)."""

    def __init__(self, avoid):
        import random
        self.avoid, self.rng = avoid, random.Random(1)

    def getrandbits(self, k):
        return self.rng.getrandbits(k)

    def sample(self, population, k):
        return [p for p in population if p != self.avoid][:k]


async def test_a_sample_that_cannot_place_asks_everyone_else(nursery, autojump_clock):
    net = FakeNetwork(latency=0.002, seed=6)
    first = Peer(net, fanout=4)
    peers = [first] + [Peer(net, bootstrap=[first.id], fanout=4) for _ in range(10)]
    gpu = Peer(net, bootstrap=[first.id], fanout=4, labels=[("gpu", "yes")])
    peers.append(gpu)
    for p in peers:
        await nursery.start(p.run)
    with trio.fail_after(10):
        while not all(sum(v.state == "alive" for v in p.mesh.peers()) == len(peers) - 1 for p in peers):
            await trio.sleep(0.05)
    first.placement.rng = AvoidSampling(gpu.id)
    m = deployment("train", replicas=1, cpu="100m")
    m["spec"]["template"]["spec"]["nodeSelector"] = {"gpu": "yes"}
    [w] = await deploy(first, m)
    assert [r["peer"] for r in w["replicaStatus"]] == [gpu.id]
    assert len(answered(first, "train")) == len(peers)  # the sample (all declined), then the rest


async def test_a_node_policy_deny_means_no_bid_and_the_reason_is_explained(net, nursery, autojump_clock):
    first = Peer(net)
    refuse = Peer(net, bootstrap=[first.id],
                  bid_gate=lambda manifest, origin, user: f"policy no-web: {manifest['metadata']['name']} is not welcome")
    third = Peer(net, bootstrap=[first.id])
    for p in (first, refuse, third):
        await nursery.start(p.run)
    with trio.fail_after(10):
        while not all(sum(v.state == "alive" for v in p.mesh.peers()) == 2 for p in (first, refuse, third)):
            await trio.sleep(0.05)
    [w] = await deploy(first, deployment(replicas=2, cpu="100m"))
    assert sorted(r["peer"] for r in w["replicaStatus"]) == sorted([first.id, third.id])
    assert refuse.runtime.pod_names() == []
    d = first.placement.find("web", "default")
    assert dict(d.declined)[refuse.id] == "policy no-web: web is not welcome"


@pytest.mark.parametrize("on_suspect", [True, False])
async def test_stateless_replicas_move_when_their_peer_is_suspect(on_suspect, net, nursery, autojump_clock):
    peers = await mesh_of(nursery, net, 4, heal_on_suspect=on_suspect)
    a = peers[0]
    [w] = await deploy(a, deployment(replicas=2, cpu="100m"))
    victim = next(p for p in peers[1:] if p.runtime.pod_names())
    net.partition({victim.id}, {p.id for p in peers if p is not victim})
    with trio.fail_after(20):
        while True:
            await trio.sleep(0.05)
            if all(r["peer"] != victim.id for r in a.w.get("web", None, None)["replicaStatus"]):
                break
    state = next(v.state for v in a.mesh.peers() if v.peer_id == victim.id)
    # moved while the victim was only suspect — or, without heal_on_suspect, only once dead
    assert state == ("suspect" if on_suspect else "dead")


async def test_a_peer_that_never_runs_what_it_wins_loses_trust_and_work(net, nursery, autojump_clock):
    from beemeshd.core.trust import TrustBook

    first = Peer(net, trust=TrustBook(deliver_within=5))
    honest = [first] + [Peer(net, bootstrap=[first.id], trust=TrustBook(deliver_within=5)) for _ in range(2)]
    liar = Peer(net, bootstrap=[first.id], liar=True, trust=TrustBook(deliver_within=5))
    peers = honest + [liar]
    for p in peers:
        await nursery.start(p.run)
    with trio.fail_after(10):
        while not all(sum(v.state == "alive" for v in p.mesh.peers()) == 3 for p in peers):
            await trio.sleep(0.05)
    # four replicas over four peers: spreading gives the liar one of each workload
    for i in range(2):
        await deploy(first, deployment(f"w{i}", replicas=4, cpu="100m", port=18080 + i), wait=False)
        assert liar.id in dict(first.placement.find(f"w{i}", "default").assignments).values()
    # promised, never delivered: moved to honest peers after deliver_within
    with trio.fail_after(30):
        while any(first.w.get(f"w{i}", None, None)["readyReplicas"] != 4 for i in range(2)):
            await trio.sleep(0.5)
    now = trio.current_time()
    for i in range(2):
        d = first.placement.find(f"w{i}", "default")
        assert liar.id not in dict(d.assignments).values()
        moved = [rule for r, rule in d.rules if "did not deliver it" in rule]
        assert len(moved) == 1
    assert first.placement.trust.receipts(liar.id)["undelivered"] == 2
    # every honest peer kept the same ledger from the gossip it saw, and no longer trusts it
    for p in honest:
        assert not p.placement.trust.trusted(liar.id, now)
        assert p.placement.trust.score(first.id, now) > 0.5  # delivered
    # so it gets no more work, and Explain says why
    await deploy(honest[1], deployment("later", replicas=3, cpu="100m", port=18090), wait=False)
    d = honest[1].placement.find("later", "default")
    assert liar.id not in dict(d.assignments).values()
    assert dict(d.declined)[liar.id].startswith("untrusted: trust")
    assert liar.runtime.pod_names() == []


async def test_a_replica_that_fails_where_others_run_is_moved_and_costs_trust(net, nursery, autojump_clock):
    peers = await mesh_of(nursery, net, 4)
    a = peers[0]
    broken = peers[2]
    for _ in range(50):
        broken.runtime.fail_next_create("storage is read-only")
    [w] = await deploy(a, deployment(replicas=4, cpu="100m"), wait=False)
    assert broken.id in {r["peer"] for r in w["replicaStatus"]}
    with trio.fail_after(30):
        while True:
            await trio.sleep(0.25)
            v = a.w.get("web", None, None)
            if v["readyReplicas"] == 4 and broken.id not in {r["peer"] for r in v["replicaStatus"]}:
                break
    rules = dict(a.placement.find("web", "default").rules)
    assert any(f"peer {broken.id} did not deliver it" in rule for rule in rules.values())
    assert a.placement.trust.receipts(broken.id)["contradicted"] == 1
    assert a.placement.trust.score(broken.id, trio.current_time()) < 0.5
