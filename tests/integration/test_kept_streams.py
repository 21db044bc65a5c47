"""Request streams kept open between two real libp2p hosts (TCP + Noise + Yamux on 127.0.0.1):
a protocol served with keep_streams reuses one stream for many requests, survives a stream that
broke, and the others still open a stream per request (beemeshd/mesh/host.py)."""

from __future__ import annotations

import os

import trio

from beemeshd.mesh.host import LibP2PMesh

KEEP, ONCE = "/beemesh-test/keep/1", "/beemesh-test/once/1"


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
    await nursery.start(a.run)
    b.bootstrap = [(a.peer_id, a.addresses())]
    await nursery.start(b.run)
    with trio.fail_after(20):
        while not any(p.state == "alive" for p in a.peers()):
            await trio.sleep(0.05)

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
