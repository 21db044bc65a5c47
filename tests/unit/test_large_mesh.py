"""Limits that only show in a large mesh (found by bench/simulate.py): replies must fit one
envelope however many workloads the catalog holds."""

from __future__ import annotations

from bench.simulate import manifest
from beemeshd.core import protocol as proto
from beemeshd.core.catalog import Catalog, Decision
from beemeshd.events import EventBus
from beemeshd.mesh.fake import FakeMesh, FakeNetwork
from beemeshd.placement import Placement


def big_decision(i: int, origin: str) -> Decision:
    bids = tuple({"peer": f"peer{j:02d}", "score": 0.5, "fit": 0.5, "locality": 0.0, "reliability": 0.5,
                  "trust": 0.5, "verified": True} for j in range(16))
    replicas = [f"w{i}-{r}" for r in range(3)]
    return Decision(("default", "Deployment", f"w{i}"), 1, manifest(i, 3),
                    tuple((r, f"peer{j:02d}") for j, r in enumerate(replicas)),
                    tuple((r, "highest score " + "x" * 80) for r in replicas), bids, (), origin, 1_000_000 + i)


async def test_an_anti_entropy_reply_fits_one_envelope_and_the_rest_comes_next_round():
    mesh = FakeMesh(FakeNetwork(seed=2))
    placement = Placement(mesh, Catalog(mesh.peer_id), EventBus(), self_state=lambda: None)
    for i in range(400):
        placement.catalog.merge(big_decision(i, mesh.peer_id))
    have: dict = {}
    rounds = 0
    while len(have) < 400:
        ask = proto.Envelope("/beemesh/catalog/1", "req", "asker", 0.0, "0" * 32, {"have": have})
        reply = await placement._handle_catalog(ask)
        assert len(proto.canonical({"ok": reply})) < proto.MAX_ENVELOPE and reply["decisions"]
        for wire in reply["decisions"]:
            d = Decision.from_wire(wire)
            have["/".join(d.key)] = list(d.order()[:3])
        rounds += 1
    assert 1 < rounds <= 4  # all of it did not fit in one reply; a few rounds bring the rest
