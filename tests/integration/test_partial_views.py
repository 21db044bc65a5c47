"""Partial views over real libp2p (TCP + Noise + Yamux on 127.0.0.1): twelve hosts whose views
may hold six peers become Kademlia tables, find by lookup the peers nearest to any point that
their tables lack, and keep a pinned peer in view — noticing when it dies — while a pinned
peer that nobody knows is taken for dead (beemeshd/core/routing.py, mesh/base.py)."""

from __future__ import annotations

import os
import random

import trio

from beemeshd.core import routing
from beemeshd.core.membership import Timings
from beemeshd.mesh.host import LibP2PMesh

T = Timings(ping_interval=0.5, suspect_after=1.5, dead_after=3.0, view_max=6, near=2, bucket_size=1)
N = 12


async def test_tables_lookups_and_pins_over_real_libp2p(nursery):
    hosts = [LibP2PMesh(os.urandom(32), listen=["/ip4/127.0.0.1/tcp/0"], timings=T) for _ in range(N)]
    scopes: dict[str, trio.CancelScope] = {}

    async def run(h: LibP2PMesh, task_status=trio.TASK_STATUS_IGNORED) -> None:
        with trio.CancelScope() as scopes[h.peer_id]:
            await h.run(task_status=task_status)

    rng = random.Random(7)
    await nursery.start(run, hosts[0])
    for i, h in enumerate(hosts[1:], start=1):
        boot = hosts[rng.randrange(i)]
        h.bootstrap = [(boot.peer_id, boot.addresses())]
        await nursery.start(run, h)
    ids = [h.peer_id for h in hosts]
    with trio.fail_after(60):  # every view a table, and every peer's nearest neighbour in its view
        while not all(h.membership.partial and routing.closest(routing.point(h.peer_id),
                                                               [p for p in ids if p != h.peer_id], 1)[0]
                      in h.membership.members for h in hosts):
            await trio.sleep(0.25)
    assert max(len(h.membership.members) for h in hosts) < N - 1

    view_wrong = 0
    for _ in range(12):
        target = rng.getrandbits(256)
        asker = hosts[rng.randrange(N)]
        truth = routing.closest(target, ids, 3)
        view_wrong += routing.closest(target, [asker.peer_id, *asker.membership.closest(target, 3)], 3) != truth
        with trio.fail_after(10):
            assert await asker.lookup(target, 3) == truth
    assert view_wrong >= 2  # what the tables alone would have got wrong

    # a pinned peer outside the table: looked up, probed, alive; stopped: dead here
    a = hosts[0]
    outside = next(p for p in sorted(ids, key=lambda p: -(routing.point(a.peer_id) ^ routing.point(p)))
                   if p not in a.membership.members)
    a.pin({outside})
    with trio.fail_after(15):
        while a.peer_state(outside) != "alive":
            await trio.sleep(0.1)
    scopes[outside].cancel()
    with trio.fail_after(3 * T.dead_after + 5):
        while a.peer_state(outside) != "dead":
            await trio.sleep(0.1)
    # a pinned peer nobody knows (a key that never ran): dead once the lookup comes back empty
    ghost = LibP2PMesh(os.urandom(32), listen=["/ip4/127.0.0.1/tcp/0"]).peer_id
    a.pin({outside, ghost})
    with trio.fail_after(15):
        while a.peer_state(ghost) != "dead":
            await trio.sleep(0.1)
    nursery.cancel_scope.cancel()
