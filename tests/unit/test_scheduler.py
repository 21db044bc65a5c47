"""Placement by bids: evaluation, scoring, deterministic choice, spread, stability, duplicates."""

from __future__ import annotations

import random

import pytest

from beemeshd.core import scheduler as s

GI = 1 << 30


def task(replicas=3, cpu=100, mem=64 << 20, **kw):
    return s.Task("t1", "default/Deployment/web", 1, tuple(f"web-{i}" for i in range(replicas)), cpu, mem, **kw)


def peer(pid, cpu_free=2000, mem_free=4 * GI, pods_free=100, uptime=3600.0, **kw):
    return s.PeerState(pid, cpu_free, 2000, mem_free, 4 * GI, pods_free, 110, uptime, **kw)


@pytest.mark.parametrize("me, kw, reason", [
    (peer("a", cpu_free=50), {}, "needs 100m CPU, 50m free"),
    (peer("a", mem_free=1 << 20), {}, "needs 64Mi memory, 1Mi free"),
    (peer("a", pods_free=0), {}, "no pod slots left"),
    (peer("a", labels=(("disk", "hdd"),)), {"node_selector": (("disk", "ssd"),)}, "nodeSelector disk=ssd"),
    (peer("a", images=frozenset()), {"images": ("localhost/x:1",)}, "image localhost/x:1 is not available"),
    (peer("a", host_ports_in_use=frozenset({(8080, "tcp", "default/Deployment/other")})),
     {"host_ports": ((8080, "tcp"),)}, "hostPort 8080/tcp"),
])
def test_declines_say_why(me, kw, reason):
    d = s.evaluate(task(**kw), me)
    assert isinstance(d, s.Decline) and reason in d.reason


def test_own_replicas_may_share_a_hostport():
    me = peer("a", host_ports_in_use=frozenset({(8080, "tcp", "default/Deployment/web")}))
    assert isinstance(s.evaluate(task(host_ports=((8080, "tcp"),)), me), s.Bid)


def test_policy_denial_means_no_bid():
    d = s.evaluate(task(), peer("a"), policy_denial="image-allowlist: not allowed")
    assert isinstance(d, s.Decline) and d.reason.startswith("policy: image-allowlist")


def test_capacity_and_score_parts():
    b = s.evaluate(task(replicas=5, cpu=500), peer("a", cpu_free=1200))
    assert b.capacity == 2  # 1200m free, 500m each
    assert b.fit == pytest.approx(min(700 / 2000, (4 * GI - (64 << 20)) / (4 * GI), 99 / 110))
    near_empty = s.evaluate(task(cpu=500), peer("b", cpu_free=2000))
    assert near_empty.score > b.score  # an emptier peer fits better
    local = s.evaluate(task(origin="a"), peer("a"))
    assert local.locality == 1.0


def test_long_lived_and_reliable_peers_score_higher():
    young = s.reliability(60, 0, 0)
    old = s.reliability(86400 * 3, 0, 0)
    assert old > young and old == pytest.approx(1.0 * 0.5 + 0.5 * 0.5)
    assert s.reliability(3600, 10, 0) > s.reliability(3600, 0, 10)


def test_choice_is_deterministic_whatever_the_arrival_order():
    t = task(replicas=3)
    bids = [s.evaluate(t, peer(f"p{i}", uptime=3600)) for i in range(6)]  # all equal scores
    first = s.choose(t, bids).peers()
    for seed in range(20):
        shuffled = bids[:]
        random.Random(seed).shuffle(shuffled)
        assert s.choose(t, shuffled).peers() == first
    assert len(set(first.values())) == 3  # spread over distinct peers


def test_spread_then_double_up_on_best_with_room():
    t = task(replicas=3)
    bids = [s.evaluate(t, peer("big", uptime=86400)), s.evaluate(t, peer("small", uptime=10, cpu_free=100))]
    d = s.choose(t, bids)
    assert d.peers() == {"web-0": "big", "web-1": "small", "web-2": "big"}
    assert d.placements[2].rule.startswith("spread: replica 2")


def test_replicas_elsewhere_count_for_spreading():
    t = task(replicas=1)
    bids = [s.evaluate(t, peer("best", uptime=86400)), s.evaluate(t, peer("other", uptime=10))]
    assert s.choose(t, bids).peers() == {"web-0": "best"}
    assert s.choose(t, bids, elsewhere={"best": 1}).peers() == {"web-0": "other"}


def test_no_capacity_leaves_replicas_unplaced():
    t = task(replicas=2)
    d = s.choose(t, [s.evaluate(t, peer("one", cpu_free=100))])
    assert d.peers() == {"web-0": "one", "web-1": None}
    assert d.placements[1].rule.startswith("no capacity")


def test_kept_placements_are_stable():
    t = task(replicas=2)
    bids = [s.evaluate(t, peer(p, uptime=u)) for p, u in (("a", 10), ("b", 86400), ("c", 86400))]
    d = s.choose(t, bids, keep={"web-0": "a"})
    assert d.peers()["web-0"] == "a" and d.placements[0].rule.startswith("kept")
    # a kept peer that no longer bids (dead) is replaced
    d = s.choose(t, [b for b in bids if b.peer_id != "a"], keep={"web-0": "a"})
    assert d.peers()["web-0"] in {"b", "c"}


def test_duplicate_winner_is_agreed():
    peers = ["x", "y", "z"]
    w = s.duplicate_winner("web-0", 3, peers)
    assert all(s.duplicate_winner("web-0", 3, p) == w for p in (peers[::-1], ["z", "x", "y"]))
