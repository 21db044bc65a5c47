"""A runner checks its node-local policies on every decision that hands it a replica, not only
when it is asked to bid: a replica kept on a peer across a new generation, or a decision a member
made up without an auction, is refused there ("refused" status, no trust held against it) and
placed again elsewhere (FakeMesh + FakeRuntime + placement + agent, virtual time)."""

from __future__ import annotations

import json

import trio

from beemeshd.core.catalog import Decision
from beemeshd.placement import now_usec

from test_placement import Peer, deploy, deployment, net  # noqa: F401 (a fixture)

KEY = ("default", "Deployment", "web")


def no_forbidden(manifest, origin, user):
    return "policy no-forbidden: not here" if "forbidden" in json.dumps(manifest) else None


async def three(net, nursery):
    first = Peer(net)
    strict = Peer(net, bootstrap=[first.id], bid_gate=no_forbidden)
    third = Peer(net, bootstrap=[first.id])
    peers = (first, strict, third)
    for p in peers:
        await nursery.start(p.run)
    with trio.fail_after(10):
        while not all(sum(v.state == "alive" for v in p.mesh.peers()) == 2 for p in peers):
            await trio.sleep(0.05)
    return peers


async def until_placed_off(peer, key, avoid, limit=30):
    with trio.fail_after(limit):
        while True:
            d = peer.placement.catalog.entries.get(key)
            if d is not None and all(p not in (None, avoid) for _, p in d.assignments):
                return d
            await trio.sleep(0.1)


async def test_a_replica_kept_across_an_update_is_checked_again_and_moves(net, nursery, autojump_clock):
    first, strict, third = await three(net, nursery)
    [w] = await deploy(first, deployment(replicas=3, cpu="100m"))
    assert sorted(r["peer"] for r in w["replicaStatus"]) == sorted(p.id for p in (first, strict, third))
    m = deployment(replicas=3, cpu="100m")
    m["spec"]["template"]["metadata"]["labels"]["tier"] = "forbidden"  # what strict's policy denies
    await first.w.deploy(manifest=m, yaml=None, namespace=None, wait=False, timeout=None, dry_run=False)
    d = await until_placed_off(first, KEY, strict.id)
    assert d.generation == 2 and d.revision >= 1 and d.reason == "heal"
    with trio.fail_after(30):
        while strict.runtime.pod_names() or first.w.get("web", None, None)["readyReplicas"] != 3:
            await trio.sleep(0.2)
    refused = [r for r, p in strict.placement.catalog.entries[KEY].assignments if p == strict.id]
    assert refused == []
    assert strict.placement.refusal(d) is None  # no longer placed there: nothing to refuse
    assert first.placement.trust.receipts(strict.id)["undelivered"] == 0  # refusing is no broken promise
    assert "refused it: policy no-forbidden: not here" in " ".join(w for _, w in d.rules)


async def test_a_decision_made_without_an_auction_does_not_bypass_node_policy(net, nursery, autojump_clock):
    first, strict, third = await three(net, nursery)
    m = deployment(replicas=1, cpu="100m")
    m["spec"]["template"]["metadata"]["labels"]["tier"] = "forbidden"
    # first is a member that skips the auction and hands the replica to strict directly: the
    # decision is validly signed by its origin, so only strict's own check can stop it
    made_up = Decision(KEY, 1, m, (("web-0", strict.id),), (("web-0", "I said so"),), (), (), first.id,
                       now_usec(), now_usec(), "apply", user="mallory")
    heard = []
    receipt = third.placement._receipt

    def record(key, replica, peer, state):  # (the row is in third's status table by now)
        if peer == strict.id:
            row = third.placement.status.get(key, {}).get(replica, (None, {}, 0))[1]
            heard.append((replica, state, row.get("message") or ""))
        receipt(key, replica, peer, state)

    third.placement._receipt = record
    await first.placement.commit(made_up)
    d = await until_placed_off(third, KEY, strict.id)
    assert ("web-0", "refused", "policy no-forbidden: not here") in heard  # strict's status report
    assert dict(d.rules)["web-0"].startswith(f"re-placed (peer {strict.id} refused it: policy no-forbidden")
    assert d.user == "mallory"  # the healer asked for bids as the same user
    await trio.sleep(2)
    assert strict.runtime.pod_names() == []
    assert sum(len(p.runtime.pod_names()) for p in (first, third)) == 1
    assert third.placement.trust.receipts(strict.id)["undelivered"] == 0


def test_a_decision_carries_its_user_signed():
    """The user a node-local policy sees travels in the decision, under its origin's signature."""
    from beemeshd.core.protocol import Signer, Forged
    import os
    from dataclasses import replace

    import pytest

    from beemeshd.core.catalog import DECISION_DOMAIN

    signer = Signer(os.urandom(32))
    d = Decision(KEY, 1, deployment(replicas=1), (("web-0", "p"),), origin=signer.peer_id, user="alice")
    d = replace(d, signature=signer.sign_detached(DECISION_DOMAIN, d.signed_part()))
    again = Decision.from_wire(d.to_wire())
    assert again == d and again.user == "alice"
    again.verify()
    with pytest.raises(Forged):
        replace(again, user="root").verify()  # the user cannot be changed on the way
    legacy = {k: v for k, v in d.to_wire().items() if k != "user"}
    assert Decision.from_wire(legacy).user is None
    with pytest.raises(ValueError):
        Decision.from_wire({**d.to_wire(), "user": 7})
