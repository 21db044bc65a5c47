"""Policies across a mesh of fake peers (FakeMesh + FakeRuntime + real placement), virtual time:
mesh-wide documents spread by gossip and catch-up, deny at admission on any peer; a node-local
policy keeps its peer out of the auction."""

from __future__ import annotations

import pytest
import trio

from beemeshd import errors, mesh_keys
from beemeshd.agent import Agent
from beemeshd.core.catalog import Catalog
from beemeshd.core.membership import Timings
from beemeshd.core.policy_doc import sign
from beemeshd.core.protocol import TOPIC_EVENTS
from beemeshd.events import EventBus
from beemeshd.mesh.fake import FakeMesh, FakeNetwork
from beemeshd.mesh_workloads import Workloads
from beemeshd.placement import Placement, local_state
from beemeshd.policy_store import PolicyStore
from beemeshd.policy_sync import PolicySync
from beemeshd.runtime.fake import FakeRuntime

GI = 1 << 30
NO_LATEST = ('package beemesh.admission\n\nimport rego.v1\n\n'
             'deny contains sprintf("image %s: pin a version, not latest", [c.image]) if {\n'
             '\tsome c in input.manifest.spec.template.spec.containers\n'
             '\tendswith(c.image, ":latest")\n}\n')
MAX_3 = ('package beemesh.admission\n\nimport rego.v1\n\n'
         'deny contains sprintf("%d > 3 replicas (%s by %s)", [n, input.request.operation, input.request.user]) if {\n'
         '\tn := input.manifest.spec.replicas\n\tn > 3\n}\n')
NOT_HERE = ('package beemesh.bid\n\nimport rego.v1\n\n'
            'deny contains "this peer runs no web workloads" if startswith(input.manifest.metadata.name, "web")\n')


def deployment(name="web", replicas=2, image="localhost/beemesh-busybox:1"):
    c = {"name": "app", "image": image, "resources": {"requests": {"cpu": "100m", "memory": "64Mi"}}}
    spec = {"replicas": replicas, "selector": {"matchLabels": {"app": name}},
            "template": {"metadata": {"labels": {"app": name}}, "spec": {"containers": [c]}}}
    return {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name}, "spec": spec}


class Peer:
    """A daemon's policy wiring (beemeshd/daemon.py) around fake mesh and runtime."""

    def __init__(self, net, home, owner_keys, *, bootstrap=(), holds_key=False):
        config = home / "config"
        if holds_key:
            self.keys = owner_keys
        else:
            self.keys = mesh_keys.save_public(config, owner_keys.name, owner_keys.public)
        self.mesh = FakeMesh(net, bootstrap=list(bootstrap), timings=Timings(0.5, 1.0, 2.0))
        self.id = self.mesh.peer_id
        self.policies = PolicyStore(config, home / "state", self.id, keys=lambda: self.keys)
        self.policies.load()
        self.runtime = FakeRuntime(now=trio.current_time)
        self.events = EventBus()
        record = lambda: {"id": self.id, "labels": {}}  # noqa: E731
        self.placement = Placement(self.mesh, Catalog(self.id), self.events, self_state=self.state, window=0.3,
                                   on_change=lambda: self.agent.poke(), bid_gate=self.policies.bid_gate(record))
        self.sync = PolicySync(self.mesh, self.policies)

        def on_peer_event(kind, peer):
            self.placement.peer_event(kind, peer)
            self.sync.peer_event(kind, peer)

        self.mesh.on_peer_event = on_peer_event
        self.agent = Agent(self.runtime, None, self.events, interval=0.5, peer_id=self.id,
                           wanted=self.placement.wanted)
        self.agent.remote_ready = self.placement.remote_ready
        self.w = Workloads(self.placement, self.agent, self.runtime, self.events, self.id)
        self.w.admit = lambda manifests, user, op: self.policies.admit(manifests, user=user, peer=record(),
                                                                        operation=op)
        self.scope = None

    def state(self):
        return local_state(self.placement, cpu_total=2000, memory_total=4 * GI, max_pods=110,
                           uptime=self.mesh._uptime())

    async def run(self, task_status=trio.TASK_STATUS_IGNORED):
        with trio.CancelScope() as self.scope:
            async with trio.open_nursery() as n:
                await n.start(self.mesh.run)
                await n.start(self.agent.run)
                await n.start(self.placement.run)
                await n.start(self.sync.run)
                n.start_soon(self.w.status_loop)
                task_status.started()

    def kill(self):
        self.mesh.kill()
        self.scope.cancel()


@pytest.fixture
def net():
    return FakeNetwork(latency=0.002, seed=5)


@pytest.fixture
def owner(tmp_path):
    return mesh_keys.create(tmp_path / "owner", "policy-mesh")


async def mesh_of(nursery, net, tmp_path, owner, n):
    first = Peer(net, tmp_path / "p0", owner, holds_key=True)
    peers = [first] + [Peer(net, tmp_path / f"p{i}", owner, bootstrap=[first.id]) for i in range(1, n)]
    for p in peers:
        await nursery.start(p.run)
    await until(lambda: all(sum(v.state == "alive" for v in p.mesh.peers()) == n - 1 for p in peers))
    return peers


async def until(predicate, timeout=20):
    with trio.fail_after(timeout):
        while not predicate():
            await trio.sleep(0.05)


async def deploy(peer, manifest, **kw):
    return await peer.w.deploy(manifest=manifest, yaml=None, namespace=None, timeout=30, dry_run=False,
                               wait=kw.pop("wait", True), **kw)


async def test_a_mesh_policy_spreads_and_denies_on_every_peer(net, nursery, autojump_clock, tmp_path, owner):
    a, b, c = await mesh_of(nursery, net, tmp_path, owner, 3)
    with pytest.raises(errors.MeshKeyRequired):
        await b.policies.set("no-latest", "mesh", NO_LATEST)
    await a.policies.set("no-latest", "mesh", NO_LATEST)
    await until(lambda: all("no-latest" in p.policies.mesh.policies for p in (b, c)))
    for p in (a, b, c):
        with pytest.raises(errors.PolicyDenied) as exc:
            await deploy(p, deployment(image="localhost/beemesh-busybox:latest"), user="alice")
        assert exc.value.policy == "no-latest"
        assert exc.value.messages == ["image localhost/beemesh-busybox:latest: pin a version, not latest"]
    await trio.sleep(1)
    assert all(p.placement.catalog.live() == [] and p.runtime.pod_names() == [] for p in (a, b, c))
    [w] = await deploy(c, deployment())  # a pinned image passes
    assert w["readyReplicas"] == 2
    # Scale is admitted too, with the new count
    await a.policies.set("max-3", "mesh", MAX_3)
    await until(lambda: "max-3" in b.policies.mesh.policies)
    with pytest.raises(errors.PolicyDenied) as exc:
        await b.w.scale("web", None, 4, False, 10, user="bob")
    assert exc.value.messages == ["4 > 3 replicas (Scale by bob)"]
    assert b.w.get("web", None, None)["replicas"] == 2
    assert (await b.w.scale("web", None, 3, True, 30))["readyReplicas"] == 3
    # removal spreads as a tombstone
    await a.policies.remove("no-latest", "mesh")
    await until(lambda: all("no-latest" not in p.policies.mesh.policies for p in (b, c)))
    [w] = await deploy(b, deployment(name="other", image="x/y:latest"))
    assert w["name"] == "other"


async def test_a_peer_that_was_down_catches_up_when_it_returns(net, nursery, autojump_clock, tmp_path, owner):
    a, b, c = await mesh_of(nursery, net, tmp_path, owner, 3)
    c.kill()
    await trio.sleep(3)
    await a.policies.set("no-latest", "mesh", NO_LATEST)
    await a.policies.set("gone", "mesh", NO_LATEST)
    await a.policies.remove("gone", "mesh")
    await until(lambda: "no-latest" in b.policies.mesh.policies)
    assert c.policies.docs == {}
    await nursery.start(c.run)  # back, same identity; it missed the gossip
    await until(lambda: "no-latest" in c.policies.mesh.policies and "gone" in c.policies.docs)
    assert c.policies.docs["gone"].removed and c.policies.docs["gone"].version == 2
    with pytest.raises(errors.PolicyDenied):
        await deploy(c, deployment(image="a/b:latest"))


async def test_forged_gossip_is_dropped_and_counted(net, nursery, autojump_clock, tmp_path, owner):
    a, b = await mesh_of(nursery, net, tmp_path, owner, 2)
    impostor = mesh_keys.create(tmp_path / "impostor", "policy-mesh")  # same name, another key
    doc = sign(impostor, "no-latest", 7, NO_LATEST, b.id, 1)
    await b.mesh.publish(TOPIC_EVENTS, {"type": "policy", "document": doc.to_wire()})
    await until(lambda: a.policies.counters["forgedPolicies"] == 1)
    assert a.policies.docs == {}
    [w] = await deploy(a, deployment(image="x/y:latest"), wait=False)
    assert w["name"] == "web"


async def test_a_node_policy_keeps_its_peer_out_of_the_auction(net, nursery, autojump_clock, tmp_path, owner):
    a, b, c = await mesh_of(nursery, net, tmp_path, owner, 3)
    await b.policies.set("no-web", "node", NOT_HERE)
    [w] = await deploy(a, deployment(replicas=4))
    assert w["readyReplicas"] == 4
    assert {r["peer"] for r in w["replicaStatus"]} == {a.id, c.id}
    assert b.runtime.pod_names() == []
    ex = c.w.explain("web", None)
    declined = {d["peer"]: d["reason"] for d in ex["decisions"][0]["declined"]}
    assert declined == {b.id: "policy no-web denied: this peer runs no web workloads"}
    # other work still reaches b
    [w] = await deploy(a, deployment(name="db", replicas=3))
    assert b.id in {r["peer"] for r in w["replicaStatus"]}
    # when every peer denies, the call says so: NoCapacity with each peer's policy reason
    for p in (a, c):
        await p.policies.set("no-web", "node", NOT_HERE)
    with pytest.raises(errors.NoCapacity) as exc:
        await deploy(a, deployment(name="web2", replicas=2))
    assert all(r["reason"].startswith("policy no-web denied") for r in exc.value.reasons)


NOT_FOR_BOB = """package beemesh.bid
import rego.v1
deny contains "bob's work does not run here" if input.request.user == "bob"
"""


async def test_a_node_policy_sees_the_user_who_asked_on_another_peer(net, nursery, autojump_clock, tmp_path, owner):
    a, b, c = await mesh_of(nursery, net, tmp_path, owner, 3)
    await c.policies.set("not-for-bob", "node", NOT_FOR_BOB)
    [w] = await deploy(a, deployment(name="bobs", replicas=3), user="bob")
    assert c.id not in {r["peer"] for r in w["replicaStatus"]}
    declined = {d["peer"]: d["reason"] for d in a.w.explain("bobs", None)["decisions"][0]["declined"]}
    assert declined[c.id] == "policy not-for-bob denied: bob's work does not run here"
    [w] = await deploy(a, deployment(name="alices", replicas=3), user="alice")
    assert c.id in {r["peer"] for r in w["replicaStatus"]}
