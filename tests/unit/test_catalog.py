"""The catalog: deterministic merge order, k-way holders, orphans and the healer."""

from __future__ import annotations

import itertools

import pytest

from beemeshd.core.catalog import Catalog, Decision, holders

KEY = ("default", "Deployment", "web")


def dec(gen, assignments, t=0, origin="o", manifest=None, reason="apply"):
    return Decision(KEY, gen, manifest if manifest is not None else {"kind": "Deployment"},
                    tuple(assignments), origin=origin, decided_usec=t, reason=reason)


def test_merge_keeps_the_newest_whatever_the_order():
    a = dec(1, [("web-0", "p1")], t=10)
    b = dec(2, [("web-0", "p2")], t=5)
    c = dec(2, [("web-0", "p3")], t=7, origin="x")  # same generation: later decision wins
    for order in itertools.permutations([a, b, c]):
        cat = Catalog("me")
        for d in order:
            cat.merge(d)
        assert cat.entries[KEY] is c
    cat = Catalog("me")
    assert cat.merge(c) and not cat.merge(b) and not cat.merge(c)


def test_partition_duplicates_settle_on_one_winner():
    left = dec(3, [("web-0", "a1"), ("web-1", "a2")], t=100, origin="a1", reason="heal")
    right = dec(3, [("web-0", "b1"), ("web-1", "b1")], t=100, origin="b1", reason="heal")
    x, y = Catalog("a1"), Catalog("b1")
    x.merge(left), x.merge(right)
    y.merge(right), y.merge(left)
    assert x.entries[KEY] == y.entries[KEY]  # both sides keep the same placement
    assert x.entries[KEY] == max(left, right, key=Decision.order)


def test_holders_are_k_closest_and_stable():
    peers = [f"peer{i}" for i in range(10)]
    h = holders(KEY, peers, 3)
    assert len(h) == 3 and h == holders(KEY, list(reversed(peers)), 3)
    assert holders(KEY, [p for p in peers if p != h[0]], 3)[:2] == h[1:]  # losing one keeps the rest


def test_orphans_and_healer():
    cat = Catalog("p0", k=3)
    cat.merge(dec(1, [("web-0", "p1"), ("web-1", "p2"), ("web-2", None)]))
    assert cat.orphaned({"p0", "p1", "p2"}) == {KEY: ["web-2"]}
    assert cat.orphaned({"p0", "p1"}) == {KEY: ["web-1", "web-2"]}
    alive = ["p0", "p1"]
    assert cat.healer(KEY, alive) == holders(KEY, alive, 3)[0]


def test_mine_keeps_and_tombstones():
    cat = Catalog("p1", k=1)
    cat.merge(dec(1, [("web-0", "p1"), ("web-1", "p2")]))
    assert [(d.key, r) for d, r in cat.mine()] == [(KEY, ["web-0"])]
    assert cat.keeps(KEY, ["p2", "p3"])  # runs a replica
    cat.merge(Decision(KEY, 2, None, (), decided_usec=1))
    assert cat.mine() == [] and cat.live() == []


@pytest.mark.parametrize("wire", [
    {}, {"key": ["a", "b"], "generation": 1, "manifest": {}, "assignments": []},
    {"key": ["a", "b", "c"], "generation": "x", "manifest": {}, "assignments": []},
    {"key": ["a", "b", "c"], "generation": 1, "manifest": "text", "assignments": []},
    {"key": ["a", "b", "c"], "generation": 1, "manifest": {}, "assignments": [["r"]]},
])
def test_malformed_wire_decisions_are_refused(wire):
    with pytest.raises(ValueError):
        Decision.from_wire(wire)


def test_wire_roundtrip():
    d = Decision(KEY, 4, {"kind": "Deployment"}, (("web-0", "p1"), ("web-1", None)), (("web-0", "best"),),
                 ({"peer": "p1", "score": 0.5},), (("p9", "full"),), "o", 12, 3, "scale")
    assert Decision.from_wire(d.to_wire()) == d


def test_a_decision_proves_its_origin_and_any_change_breaks_the_proof():
    from dataclasses import replace

    from beemeshd.core.catalog import DECISION_DOMAIN
    from beemeshd.core.protocol import Forged, Signer

    a, b = Signer(b"\x01" * 32), Signer(b"\x02" * 32)
    d = Decision(("ns", "Deployment", "w"), 1, {"kind": "Deployment"}, (("w-0", b.peer_id),), origin=a.peer_id)
    d = replace(d, signature=a.sign_detached(DECISION_DOMAIN, d.signed_part()))
    d.verify()
    Decision.from_wire(d.to_wire()).verify()  # survives the wire
    for bad in (replace(d, assignments=(("w-0", a.peer_id),)),  # tampered
                replace(d, generation=2),
                replace(d, signature=b.sign_detached(DECISION_DOMAIN, d.signed_part())),  # someone else signed
                replace(d, signature=a.sign_detached(b"another-domain\0", d.signed_part())),  # not as a decision
                replace(d, signature="")):  # none
        with pytest.raises(Forged):
            bad.verify()
