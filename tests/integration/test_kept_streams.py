"""Request streams kept open between two real libp2p hosts (TCP + Noise + Yamux on 127.0.0.1):
a protocol served with keep_streams reuses one stream for many requests, survives a stream that
broke, and the others still open a stream per request (beemeshd/mesh/host.py)."""

from __future__ import annotations

import os

import trio

from beemeshd.mesh.host import LibP2PMesh

KEEP, ONCE = "/beemesh-test/keep/1", "/beemesh-test/once/1"


async def start_pair(nursery, a: LibP2PMesh, b: LibP2PMesh) -> None:
    """Run both, b bootstrapped from a, until a sees b alive."""
    await nursery.start(a.run)
    b.bootstrap = [(a.peer_id, a.addresses())]
    await nursery.start(b.run)
    with trio.fail_after(20):
        while not any(p.state == "alive" for p in a.peers()):
            await trio.sleep(0.05)


async def test_kept_streams_are_reused_and_a_broken_one_is_replaced(nursery):
    a = LibP2PMesh(os.urandom(32), listen=["/ip4/127.0.0.1/tcp/0"])
    b = LibP2PMesh(os.urandom(32), listen=["/ip4/127.0.0.1/tcp/0"])
    seen: list[tuple[str, int]] = []
    streams = {KEEP: 0, ONCE: 0}
    serve = b._serve

    async def counting_serve(stream):  # one call per stream b accepts
        protocol = str(stream.get_protocol())
        streams[protocol] = streams.get(protocol, 0) + 1
        await serve(stream)

    b._serve = counting_serve
    for mesh in (a, b):
        for protocol, keep in ((KEEP, True), (ONCE, False)):
            async def handler(env, protocol=protocol):
                seen.append((protocol, env.payload["n"]))
                return {"n": env.payload["n"] * 2}
            mesh.handle(protocol, handler, keep_streams=keep)
    await start_pair(nursery, a, b)

    for n in range(5):
        assert await a.request(b.peer_id, KEEP, {"n": n}, 5) == {"n": 2 * n}
        assert await a.request(b.peer_id, ONCE, {"n": n}, 5) == {"n": 2 * n}
    assert (streams[KEEP], streams[ONCE]) == (1, 5)
    assert seen == [(p, n) for n in range(5) for p in (KEEP, ONCE)]  # each delivered once

    # the kept stream breaks (reset from our side): the next request goes out on a new one
    await a._kept[(b.peer_id, KEEP)].reset()
    assert await a.request(b.peer_id, KEEP, {"n": 7}, 5) == {"n": 14}
    assert streams[KEEP] == 2 and seen[-1] == (KEEP, 7)
    assert await a.request(b.peer_id, KEEP, {"n": 8}, 5) == {"n": 16}
    assert streams[KEEP] == 2
    nursery.cancel_scope.cancel()


async def test_a_peer_keeps_at_most_two_streams_of_a_protocol_open_here(nursery):
    """More kept streams than KEPT_PER_PEER from one peer are served once and closed: a member
    cannot hold many tasks here by opening streams."""
    from libp2p.io.utils import read_exactly
    from libp2p.peer.id import ID

    from beemeshd.mesh.host import KEPT_PER_PEER

    a = LibP2PMesh(os.urandom(32), listen=["/ip4/127.0.0.1/tcp/0"])
    b = LibP2PMesh(os.urandom(32), listen=["/ip4/127.0.0.1/tcp/0"])

    async def handler(env):
        return {"n": env.payload["n"]}

    for mesh in (a, b):
        mesh.handle(KEEP, handler, keep_streams=True)
    await start_pair(nursery, a, b)
    streams = [await a.host.new_stream(ID.from_base58(b.peer_id), [KEEP]) for _ in range(KEPT_PER_PEER + 2)]
    for i, s in enumerate(streams):  # one request on each, by hand
        raw = a.signer.seal(KEEP, "req", {"n": i}, a._wall())
        await s.write(len(raw).to_bytes(4, "big") + raw)
        size = int.from_bytes(await read_exactly(s, 4), "big")
        await read_exactly(s, size)
    await trio.sleep(0.2)
    assert b._kept_in[(a.peer_id, KEEP)] == KEPT_PER_PEER  # the others were answered and closed
    for s in streams:
        await s.reset()
    await trio.sleep(0.2)
    assert (a.peer_id, KEEP) not in b._kept_in  # and every kept one is let go once it breaks
    nursery.cancel_scope.cancel()
