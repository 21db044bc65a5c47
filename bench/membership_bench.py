"""What mesh membership costs, and how much abuse it shrugs off (issue 10).

1. Checks, in process, no network: verifying a credential the first time (parse + Ed25519), the
   same credential again (a record refresh: cached), the per-message member lookup, and the whole
   drop path of MeshBase for a non-member's direct request and forwarded gossip.
2. Per connection, two libp2p hosts in this process on loopback: a fresh dial (TCP + Noise +
   Yamux) and then the hello that exchanges and verifies both credentials.
3. One real beemeshd (as the test user; a member of its own one-peer mesh, on loopback) answers
   GetInfo calls (raw Varlink socket, sequential) while a separate process floods it from a valid
   libp2p identity without a credential — gossip, then direct requests — reconnecting whenever
   the daemon drops it. Prints GetInfo p50/p99 with and without each flood, what the flooder
   sent, and what the daemon counted as dropped (nonMemberMessages) and refused (refusedPeers).

Run as root: python bench/membership_bench.py [SECONDS] (default 10 s per flood).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import summary  # noqa: E402


def _per_call(fn, n: int) -> float:
    """Median seconds per call of fn() over 5 batches of n."""
    runs = []
    for _ in range(5):
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        runs.append((time.perf_counter() - t0) / n)
    return sorted(runs)[2]


def check_costs() -> dict:
    from nacl.signing import SigningKey

    from beemeshd.core import credentials as cr
    from beemeshd.core import protocol as proto
    from beemeshd.core.admission import Admission
    from beemeshd.mesh.base import MeshBase
    from beemeshd.mesh_keys import MeshKeys

    seed = os.urandom(32)
    keys = MeshKeys("bench", bytes(SigningKey(seed).verify_key), seed)
    me = proto.Signer(os.urandom(32)).peer_id
    others = [proto.Signer(os.urandom(32)).peer_id for _ in range(200)]
    wires = [cr.issue(keys, p, time.time()).wire() for p in others]
    now = time.time()

    def first():  # a new Admission each time: nothing cached
        adm = Admission(me, keys.mesh_id, None)
        for p, w in zip(others, wires):
            adm.admit(p, w, now)

    first_s = _per_call(first, 3) / len(others)
    adm = Admission(me, keys.mesh_id, None)
    for p, w in zip(others, wires):
        adm.admit(p, w, now)
    cached_s = _per_call(lambda: adm.admit(others[7], wires[7], now), 20000)
    member_s = _per_call(lambda: adm.member(others[7], now), 200000)

    # MeshBase's drop path (the code the libp2p transport calls), without a transport
    mesh = MeshBase(os.urandom(32), admission=Admission(me, keys.mesh_id, cr.issue(keys, me, now)))
    stranger = proto.Signer(os.urandom(32))
    req = stranger.seal("/beemesh/bid/1", "req", {"task": {}}, now)
    pub = stranger.seal(proto.TOPIC_TASKS, "pub", {"task": {}}, now)

    def drop_request():  # a non-member's request never awaits: run the coroutine by hand
        coro = mesh._request_in(stranger.peer_id, "/beemesh/bid/1", req)
        try:
            coro.send(None)
        except StopIteration as done:
            assert done.value is None
        else:
            raise AssertionError("a non-member's request was served")

    request_s = _per_call(drop_request, 20000)
    gossip_s = _per_call(lambda: mesh._admit(proto.TOPIC_TASKS, pub, forwarder=stranger.peer_id), 50000)
    decode_s = _per_call(lambda: proto.decode(pub), 5000)  # what a member's message costs anyway
    return {"verify_first_us": first_s * 1e6, "verify_cached_us": cached_s * 1e6,
            "member_lookup_ns": member_s * 1e9, "drop_request_us": request_s * 1e6,
            "drop_gossip_us": gossip_s * 1e6, "envelope_decode_us": decode_s * 1e6}


async def _connection_costs(n: int) -> dict:
    import trio
    from libp2p.peer.id import ID
    from nacl.signing import SigningKey

    from beemeshd.core import credentials as cr
    from beemeshd.core import protocol as proto
    from beemeshd.core.admission import Admission
    from beemeshd.mesh.host import LibP2PMesh
    from beemeshd.mesh_keys import MeshKeys

    seed = os.urandom(32)
    keys = MeshKeys("bench", bytes(SigningKey(seed).verify_key), seed)

    def member(boot=()):
        s = os.urandom(32)
        pid = proto.Signer(s).peer_id
        adm = Admission(pid, keys.mesh_id, cr.issue(keys, pid, time.time()))
        return LibP2PMesh(s, listen=["/ip4/127.0.0.1/tcp/0"], bootstrap=boot, admission=adm)

    dial, hello, plain = [], [], []
    async with trio.open_nursery() as nursery:
        a = member()
        await nursery.start(a.run)
        addrs = a.addresses()
        for _ in range(n + 3):  # a new peer each time (no bootstrap: we dial by hand), as a newcomer
            b = member()
            async with trio.open_nursery() as inner:
                await inner.start(b.run)
                t0 = time.perf_counter()
                await b._connect(a.peer_id, addrs)
                t1 = time.perf_counter()
                assert await b._hello(a.peer_id)
                t2 = time.perf_counter()
                await b.request(a.peer_id, proto.PROTO_SYNC, proto.sync_payload([]), 5)
                t3 = time.perf_counter()
                dial.append(t1 - t0)
                hello.append(t2 - t1)
                plain.append(t3 - t2)
                with trio.move_on_after(1):
                    await b.host.disconnect(ID.from_base58(a.peer_id))
                inner.cancel_scope.cancel()
        nursery.cancel_scope.cancel()
    return {"dial": summary(dial[3:], 1e3), "hello": summary(hello[3:], 1e3),
            "request": summary(plain[3:], 1e3)}


def connection_costs(n: int = 30) -> dict:
    import trio

    return trio.run(_connection_costs, n)


# --- drop capacity: a member that never disconnects the flooder ---------------------------------

async def _capacity(seconds: float) -> dict:
    """A libp2p member in this process with vetting off (it never refuses the connection), flooded
    by a separate process: how many non-member messages per second it drops, and at what CPU."""
    import trio
    from nacl.signing import SigningKey

    from beemeshd.core import credentials as cr
    from beemeshd.core import protocol as proto
    from beemeshd.core.admission import Admission
    from beemeshd.mesh.host import LibP2PMesh
    from beemeshd.mesh_keys import MeshKeys

    seed = os.urandom(32)
    keys = MeshKeys("bench", bytes(SigningKey(seed).verify_key), seed)
    s = os.urandom(32)
    pid = proto.Signer(s).peer_id
    mesh = LibP2PMesh(s, listen=["/ip4/127.0.0.1/tcp/0"],
                      admission=Admission(pid, keys.mesh_id, cr.issue(keys, pid, time.time())))
    mesh.VET_DELAY = 1e9  # keep the flooder connected: measure the drop path alone

    async def bid(env):  # placement's protocol, as in a daemon (never reached by a non-member)
        return {}

    mesh.handle("/beemesh/bid/1", bid)
    out = {}
    async with trio.open_nursery() as nursery:
        await nursery.start(mesh.run)
        addr = mesh.addresses()[0]
        for mode in ("gossip", "requests"):
            before = mesh.counters["nonMemberMessages"]
            proc = await trio.lowlevel.open_process([sys.executable, __file__, "--flood", addr, mode, str(seconds)],
                                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            t0 = time.monotonic()
            await trio.sleep(1.5)  # the flooder's import and connection
            c1, p1, w1 = mesh.counters["nonMemberMessages"], time.process_time(), time.monotonic()
            await proc.wait()
            c2, p2, w2 = mesh.counters["nonMemberMessages"], time.process_time(), time.monotonic()
            out[mode] = {"dropped": c2 - before, "rate": (c2 - c1) / (w2 - w1), "cpu": (p2 - p1) / (w2 - w1),
                         "seconds": w2 - t0, "cpu_per_drop_us": (p2 - p1) / max(1, c2 - c1) * 1e6}
        nursery.cancel_scope.cancel()
    return out


def drop_capacity(seconds: float) -> dict:
    import trio

    return trio.run(_capacity, seconds)


# --- the flood ----------------------------------------------------------------------------------

async def _flood(addr: str, mode: str, seconds: float) -> dict:
    """A valid libp2p identity without a credential sends `mode` messages to addr as fast as it can."""
    import multiaddr
    import trio
    from libp2p.peer.id import ID
    from libp2p.peer.peerinfo import info_from_p2p_addr

    from beemeshd.core import protocol as proto
    from tests.integration.test_mesh import _bare_host

    seed = os.urandom(32)
    signer = proto.Signer(seed)
    target = info_from_p2p_addr(multiaddr.Multiaddr(addr))
    pid = ID.from_base58(target.peer_id.to_base58())
    sent = connects = 0
    deadline = trio.current_time() + seconds
    async with trio.open_nursery() as nursery:
        inj = await _bare_host(nursery, seed, rate=1e9)  # its own limiter off
        net = inj.host.get_network()

        lock = trio.Lock()

        async def connected() -> bool:
            nonlocal connects
            async with lock:
                if net.connections.get(pid):
                    return True
                try:
                    with trio.fail_after(2):
                        await inj.host.connect(target)
                    connects += 1
                except Exception:
                    await trio.sleep(0.01)
                return bool(net.connections.get(pid))

        async def redial() -> None:
            """The daemon dropped us (libp2p may not notice for a while): start afresh."""
            with trio.move_on_after(1):
                await inj.host.disconnect(pid)

        await inj.pubsub.subscribe(proto.TOPIC_TASKS)

        async def gossiper():
            nonlocal sent
            waited = 0.0
            while trio.current_time() < deadline:
                if not await connected():
                    continue
                if pid not in inj.pubsub.peer_topics.get(proto.TOPIC_TASKS, ()) or pid not in inj.pubsub.peers:
                    await trio.sleep(0.002)  # its subscriptions have not reached us (yet, or any more)
                    waited += 0.002
                    if waited > 0.5:
                        waited = 0.0
                        await redial()
                    continue
                waited = 0.0
                try:
                    await inj.pubsub.publish(proto.TOPIC_TASKS,
                                             signer.seal(proto.TOPIC_TASKS, "pub", {"n": sent}, time.time()))
                    sent += 1
                except Exception:
                    await trio.sleep(0.01)

        failures = 0

        async def requester():
            nonlocal sent, failures
            while trio.current_time() < deadline:
                if not await connected():
                    continue
                raw = signer.seal("/beemesh/bid/1", "req", {"task": {"n": sent}}, time.time())
                try:
                    with trio.fail_after(1):
                        stream = await inj.host.new_stream(pid, ["/beemesh/bid/1"])
                        await stream.write(len(raw).to_bytes(4, "big") + raw)
                    sent += 1
                    failures = 0
                    nursery.start_soon(_reset_later, stream)
                except Exception:
                    failures += 1
                    if failures > 20:  # the daemon dropped us, though libp2p still says connected
                        failures = 0
                        await redial()
                    await trio.sleep(0.01)

        async with trio.open_nursery() as workers:
            for _ in range(1 if mode == "gossip" else 16):
                workers.start_soon(gossiper if mode == "gossip" else requester)
        nursery.cancel_scope.cancel()
    return {"sent": sent, "connects": connects, "seconds": seconds}


async def _reset_later(stream) -> None:
    import trio

    with trio.move_on_after(1):
        try:
            await stream.read(4)  # the daemon resets it: no answer for a non-member
        except Exception:
            pass
        try:
            await stream.reset()
        except Exception:
            pass


def getinfo_for(path, seconds: float) -> list[float]:
    """Sequential io.beemesh.Mesh.GetInfo round trips for `seconds`, 5 ms apart (a client polling,
    not a second flood)."""
    from bench.varlink_latency import round_trips

    out: list[float] = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        out += round_trips(path, "io.beemesh.Mesh.GetInfo", 20)[-20:]
        time.sleep(0.005)
    return out


def counters(d) -> dict:
    return d.call("GetInfo").json["info"]["counters"]


def flood_daemon(seconds: float) -> dict:
    import pwd
    import shutil
    import threading

    from tests.conftest import TEST_USER, User
    from tests.integration.daemons import Daemon, TestMesh

    pw = pwd.getpwnam(TEST_USER)
    user = User(pw.pw_name, pw.pw_uid, pw.pw_gid, Path(pw.pw_dir))
    d = Daemon(user, user.tempdir(), {"mesh_mdns": False, "podman_endpoint": "tcp://127.0.0.1:9",
                                      "log_level": "warning", "mesh_listen": ["/ip4/127.0.0.1/tcp/0"]})
    TestMesh().admit(d)
    results: dict = {}
    try:
        d.start(timeout=30)
        addr = d.call("GetInfo").json["info"]["meshAddresses"][0]
        time.sleep(1)
        results["quiet"] = summary(getinfo_for(d.socket_path, seconds), 1e3)
        for mode in ("gossip", "requests"):
            before = counters(d)
            box: dict = {}

            def run_flooder(mode=mode, box=box):
                p = subprocess.run([sys.executable, __file__, "--flood", addr, mode, str(seconds)],
                                   capture_output=True, text=True, timeout=seconds + 60)
                box["out"] = p.stdout.strip().splitlines()[-1] if p.stdout.strip() else p.stderr[-2000:]

            t = threading.Thread(target=run_flooder)
            t.start()
            time.sleep(1.5)  # the flooder's libp2p import and first connection
            lat = getinfo_for(d.socket_path, max(1.0, seconds - 2.5))
            t.join()
            after = counters(d)
            try:
                flood = json.loads(box["out"])
            except (KeyError, ValueError):
                raise RuntimeError(f"flooder failed: {box.get('out')}") from None
            dropped = after["nonMemberMessages"] - before["nonMemberMessages"]
            results[mode] = {"getinfo": summary(lat, 1e3), "sent": flood["sent"], "connects": flood["connects"],
                             "dropped": dropped, "drop_rate": dropped / seconds,
                             "refused": after["refusedPeers"] - before["refusedPeers"],
                             "forged": after["forgedMessages"] - before["forgedMessages"]}
            time.sleep(2)
        results["alive_after"] = d.proc.poll() is None
    finally:
        d.stop()
        shutil.rmtree(d.home, ignore_errors=True)
    return results


def main(seconds: float = 10.0) -> dict:
    import logging

    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("libp2p").setLevel(logging.CRITICAL)  # teardown chatter of the test hosts
    out = {"checks": check_costs(), "connection": connection_costs(), "capacity": drop_capacity(seconds),
           "flood": flood_daemon(seconds)}
    c, k, f, cap = out["checks"], out["connection"], out["flood"], out["capacity"]
    print(f"load average at the end: {' '.join(f'{x:.1f}' for x in os.getloadavg())} ({os.cpu_count()} CPUs)")
    print("membership checks (in process):")
    print(f"  first verification of a credential (parse + Ed25519): {c['verify_first_us']:.1f} µs; "
          f"the same credential again (record refresh): {c['verify_cached_us']:.2f} µs")
    print(f"  member lookup per message: {c['member_lookup_ns']:.0f} ns; drop of a non-member's direct request: "
          f"{c['drop_request_us']:.1f} µs, of its forwarded gossip: {c['drop_gossip_us']:.2f} µs "
          f"(decoding one envelope: {c['envelope_decode_us']:.1f} µs)")
    print("per connection (libp2p, loopback, in process), ms:")
    for name, what in (("dial", "TCP + Noise + Yamux"), ("hello", "credentials both ways, verified"),
                       ("request", "then one plain request/reply (view sync), for comparison")):
        s = k[name]
        print(f"  {name:7}: p50 {s['p50']:.2f}  p99 {s['p99']:.2f}  (n={s['n']})  {what}")
    print("drop capacity (libp2p member in process, never refusing the flooder's connection):")
    for mode in ("gossip", "requests"):
        r = cap[mode]
        print(f"  {mode:8}: {r['rate']:.0f} non-member messages dropped per second at {r['cpu'] * 100:.0f} % "
              f"of a core ({r['dropped']} in {r['seconds']:.1f} s): {r['cpu_per_drop_us']:.0f} µs of CPU each "
              f"(libp2p included), ≈ {1e6 / max(r['cpu_per_drop_us'], 1e-9):.0f}/s per core")
    print("one daemon, GetInfo round trip (ms) while a non-member floods it:")
    q = f["quiet"]
    print(f"  no flood        : p50 {q['p50']:.3f}  p99 {q['p99']:.3f}  (n={q['n']})")
    for mode in ("gossip", "requests"):
        r = f[mode]
        g = r["getinfo"]
        print(f"  {mode:8} flood : p50 {g['p50']:.3f}  p99 {g['p99']:.3f}  (n={g['n']}); flooder sent "
              f"{r['sent']} in {seconds:g} s over {r['connects']} connections; daemon dropped {r['dropped']} "
              f"({r['drop_rate']:.0f}/s), refused {r['refused']} connections, forged {r['forged']}")
    print(f"  daemon still running: {f['alive_after']}")
    return out


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--flood":
        import logging

        import trio

        logging.basicConfig(level=logging.CRITICAL)

        print(json.dumps(trio.run(_flood, sys.argv[2], sys.argv[3], float(sys.argv[4]))))
    else:
        main(float(sys.argv[1]) if len(sys.argv) > 1 else 10.0)
