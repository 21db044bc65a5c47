"""Mesh numbers: full-view time, gossip latency, failure detection, RSS (prints p50/p99 and n).

Run as root from the checkout (`/var/lib/beemesh/venv/bin/python bench/mesh_bench.py`). It starts
PEERS mesh-only node processes on 127.0.0.1 (this file with --node: a LibP2PMesh with the
daemon's defaults, reporting events as JSON lines), joined through the first one, and
- full view: PEERS nodes launched all together, and one after another (each once the previous
  one's mesh is up) -> every node sees PEERS-1 alive (RUNS runs each), measured from the last
  node's mesh being up and from the first launch (Python start-ups included);
- join: one more node into a running mesh of PEERS-1 -> alive at every one of them (JOINS);
- gossip: a random node publishes on beemesh/tasks, RATE messages/s for the whole mesh;
  publish -> delivery at each of the other nodes (same machine, same clock);
- failure detection: kill -9 of a node -> PeerLeft at each survivor (KILLS kills);
- RSS: a real beemeshd (test user) alone with mesh off and on, then joined to the PEERS nodes;
- the in-memory mesh: virtual and wall time for SIM peers to converge under trio's MockClock.
With --lenient (make bench) every wait is bounded and a part that times out or fails reports how
far it got (N of M) instead of ending the run; --budget skips the parts left after that long.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from bench.common import machine, open_mesh, summary  # noqa: E402


# --- the node process ------------------------------------------------------------------------

def node(boot: str | None) -> None:
    import logging

    import trio

    from beemeshd.core import protocol as proto
    from beemeshd.mesh.host import LibP2PMesh

    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("libp2p").setLevel(logging.CRITICAL)  # every stream cut by a kill -9, at length

    def say(**event):
        print(json.dumps({**event, "t": time.time()}), flush=True)

    async def main():
        mesh = LibP2PMesh(os.urandom(32), listen=["/ip4/127.0.0.1/tcp/0"], bootstrap=[boot] if boot else [])

        def on_event(kind, peer):
            alive = sum(p.state == "alive" for p in mesh.peers())
            say(event=kind, peer=peer, alive=alive)

        mesh.on_peer_event = on_event
        async with trio.open_nursery() as nursery:
            await nursery.start(mesh.run)
            say(event="up", addr=mesh.addresses()[0], peer=mesh.peer_id)

            async def deliveries():
                async for env in mesh.subscribe(proto.TOPIC_TASKS):
                    say(event="recv", id=env.payload["id"], sender=env.sender)

            nursery.start_soon(deliveries)
            stdin = trio.lowlevel.FdStream(os.dup(0))
            buf = b""
            async for chunk in stdin:
                buf += chunk
                while b"\n" in buf:
                    line, buf = buf.split(b"\n", 1)
                    cmd = line.decode().split()
                    if cmd and cmd[0] == "pub":
                        say(event="sent", id=cmd[1])
                        await mesh.publish(proto.TOPIC_TASKS, {"id": cmd[1]})
            nursery.cancel_scope.cancel()

    trio.run(main)


class Node:
    def __init__(self, boot: str | None = None):
        argv = [sys.executable, str(Path(__file__).resolve()), "--node"] + (["--boot", boot] if boot else [])
        self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                     cwd=HERE.parent)
        self.log: list[dict] = []
        self.addr = self.peer_id = None
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for line in self.proc.stdout:
            try:
                ev = json.loads(line)
            except ValueError:  # not an event (a stray print): ignored, the reader goes on
                continue
            if ev["event"] == "up":
                self.addr, self.peer_id = ev["addr"], ev["peer"]
            self.log.append(ev)

    def up(self, timeout: float = 60) -> float:
        return first_time(self, lambda e: e["event"] == "up", timeout)

    def send(self, line: str) -> None:
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()


def first_time(n: Node, cond, timeout: float) -> float:
    """Timestamp of the first event of n matching cond (waiting for it)."""
    deadline = time.monotonic() + timeout
    while True:  # looks at least once, even with no time left
        for ev in list(n.log):
            if cond(ev):
                return ev["t"]
        if time.monotonic() >= deadline:
            raise TimeoutError
        time.sleep(0.02)


def best_alive(n: Node) -> int:
    """The most peers n has reported alive at once so far."""
    return max((e.get("alive", 0) for e in list(n.log)), default=0)


def view_progress(nodes: list[Node], peers: int) -> dict:
    """How far the full view got: nodes that saw every other peer alive at once, and the least
    any node saw (a flapping failure detector on a starved machine keeps some below peers-1)."""
    best = [best_alive(n) for n in nodes]
    return {"full": sum(b >= peers - 1 for b in best), "of": len(nodes), "least": min(best, default=0)}


def start_mesh(peers: int, together: bool, strict: bool = True,
               view_timeout: float = 120) -> tuple[float, float, list[Node], dict]:
    """(last node up -> full view everywhere, first launch -> full view, nodes, progress). `together`:
    all launched at once; else each as soon as the previous one's mesh is up. Not `strict`: a
    full view not reached within view_timeout (an overloaded machine: the failure detector flaps)
    gives NaN times instead of an error, progress says how far it got, and the nodes are kept."""
    nodes = [Node()]
    try:
        nodes[0].up()
        t0 = time.time()
        for _ in range(peers - 1):
            nodes.append(Node(nodes[0].addr))
            if not together:
                nodes[-1].up()
        last_up = max(n.up() for n in nodes[1:])
        deadline = time.monotonic() + view_timeout
        try:
            full = max(first_time(n, lambda e: e.get("alive", 0) >= peers - 1,
                                  max(0.0, deadline - time.monotonic())) for n in nodes)
        except TimeoutError:
            if strict:
                raise
            full = float("nan")
    except BaseException:  # no node outlives a failed start
        for n in nodes:
            n.stop()
        raise
    return full - last_up, full - t0, nodes, view_progress(nodes, peers)


def seen_joined(nodes: list[Node], peer_id: str) -> int:
    return sum(any(e["event"] == "PeerJoined" and e.get("peer") == peer_id for e in list(n.log)) for n in nodes)


def join(nodes: list[Node], timeout: float = 30) -> tuple[float | None, int, Node]:
    """One more peer into a running mesh: (its mesh up -> every other peer has it alive, or None
    if not all of them within `timeout`; how many saw it; the new node)."""
    new = Node(nodes[0].addr)
    try:
        t0 = new.up()
        deadline = time.monotonic() + timeout
        try:
            t = max(first_time(n, lambda e: e["event"] == "PeerJoined" and e["peer"] == new.peer_id,
                               max(0.0, deadline - time.monotonic())) for n in nodes)
        except TimeoutError:
            return None, seen_joined(nodes, new.peer_id), new
    except BaseException:
        new.stop()
        raise
    return t - t0, len(nodes), new


def gossip(nodes: list[Node], messages: int, rate: float, settle: float = 5) -> list[float]:
    samples = []
    for i in range(messages):
        live = [n for n in nodes if n.proc.poll() is None]
        try:
            random.choice(live).send(f"pub m{i}")
        except (IndexError, OSError):  # every node gone, or this one died under us: counted as unseen
            pass
        time.sleep(1 / rate)

    def received() -> int:
        return sum(e["event"] == "recv" for n in nodes for e in list(n.log))

    # late deliveries: wait while they still come in, at most `settle` seconds
    deadline, count = time.monotonic() + settle, -1
    while time.monotonic() < deadline and received() != count:
        count = received()
        time.sleep(1)
    sent = {e["id"]: e["t"] for n in nodes for e in list(n.log) if e["event"] == "sent"}
    for n in nodes:
        for e in list(n.log):
            if e["event"] == "recv" and e["sender"] != n.peer_id and e["id"] in sent:
                samples.append(e["t"] - sent[e["id"]])
    return samples


def detection(nodes: list[Node], kills: int) -> tuple[list[float], list[float], int]:
    """(kill -> PeerLeft, kill -> PeerSuspect, at each survivor; how many events were not seen
    within 15 s of the kill — e.g. a survivor that had already declared the victim dead, or one
    starved of CPU on a loaded machine)."""
    left, suspect, unseen = [], [], 0
    alive = nodes[1:]
    for _ in range(kills):
        victim = alive.pop(random.randrange(len(alive)))
        t0 = time.time()
        deadline = time.monotonic() + 15
        victim.stop()
        for n in [nodes[0], *alive]:
            for out, kind in ((left, "PeerLeft"), (suspect, "PeerSuspect")):
                try:
                    out.append(first_time(n, lambda e, kind=kind: e["event"] == kind and e["peer"] == victim.peer_id
                                          and e["t"] > t0, max(0.0, deadline - time.monotonic())) - t0)
                except TimeoutError:
                    unseen += 1
    return left, suspect, unseen


def daemon_rss(boot: str | None = None, peers: int = 0, alone: bool = True) -> dict:
    """A real beemeshd's idle RSS: with the mesh off and on alone (`alone`), and joined to the mesh
    at `boot` of `peers` nodes."""
    import pwd
    import shutil
    import tempfile

    from bench.varlink_latency import rss_mb
    from tests.conftest import TEST_USER, User
    from tests.integration.daemons import Daemon

    pw = pwd.getpwnam(TEST_USER)
    user = User(pw.pw_name, pw.pw_uid, pw.pw_gid, Path(pw.pw_dir))
    out = {}
    cases = [("mesh off", {"mesh_enabled": False}), ("mesh on, alone", {})] if alone else []
    cases.append((f"mesh on, {peers} peers", {"mesh_bootstrap": [boot]} if boot else None))
    for label, extra in cases:
        if extra is None:
            continue
        home = Path(tempfile.mkdtemp(prefix="beemesh-bench-"))
        os.chown(home, user.uid, user.gid)
        d = Daemon(user, home, {"log_level": "warning", "podman_endpoint": "tcp://127.0.0.1:9", "mesh_mdns": False,
                                **open_mesh(), **extra})
        try:
            d.start(timeout=60)  # a loaded machine (2 shared cores) can take a while
            if boot:
                deadline = time.monotonic() + 20
                while time.monotonic() < deadline and d.call("GetInfo").json["info"]["peersAlive"] < peers:
                    time.sleep(0.2)
            time.sleep(5)
            out[label] = rss_mb(d.proc.pid)
        finally:
            d.stop()
            shutil.rmtree(home, ignore_errors=True)
    return out


def fake_convergence(n: int) -> tuple[float, float]:
    import trio
    import trio.testing

    from beemeshd.mesh.fake import FakeMesh, FakeNetwork

    result = []

    async def main():
        net = FakeNetwork(latency=0.002, jitter=0.002, seed=1)
        async with trio.open_nursery() as nursery:
            first = FakeMesh(net)
            ms = [first] + [FakeMesh(net, bootstrap=[first.peer_id]) for _ in range(n - 1)]
            for m in ms:
                await nursery.start(m.run)
            t0, w0 = trio.current_time(), time.perf_counter()
            while not all(sum(p.state == "alive" for p in m.peers()) == n - 1 for m in ms):
                await trio.sleep(0.05)
            result.append((trio.current_time() - t0, time.perf_counter() - w0))
            nursery.cancel_scope.cancel()

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    return result[0]


def fmt(name: str, s: dict, unit: str = "s", scale: float = 1.0) -> str:
    return f"{name}: p50 {s['p50'] * scale:.3f} {unit}, p99 {s['p99'] * scale:.3f} {unit} (n={s['n']})"


def main() -> dict | None:
    p = argparse.ArgumentParser()
    p.add_argument("--node", action="store_true")
    p.add_argument("--boot")
    p.add_argument("--peers", type=int, default=20)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--joins", type=int, default=5)
    p.add_argument("--messages", type=int, default=100)
    p.add_argument("--rate", type=float, default=5.0, help="gossip messages per second, whole mesh")
    p.add_argument("--kills", type=int, default=4)
    p.add_argument("--sim", type=int, default=300)
    p.add_argument("--view-timeout", type=float, default=120, help="seconds to wait for the full view")
    p.add_argument("--join-timeout", type=float, default=30, help="seconds for a join to be seen by all")
    p.add_argument("--budget", type=float, help="skip the remaining parts after this many seconds")
    p.add_argument("--lenient", dest="strict", action="store_false",
                   help="report how far a part got instead of failing (as make bench does)")
    args = p.parse_args()
    if args.node:
        return node(args.boot)
    print(machine())
    return run(**{k: v for k, v in vars(args).items() if k not in ("node", "boot")})


def run(peers: int = 20, runs: int = 3, joins: int = 5, messages: int = 100, rate: float = 5.0,
        kills: int = 4, sim: int = 300, together: bool = True, rss_alone: bool = True,
        strict: bool = True, view_timeout: float = 120, join_timeout: float = 30,
        budget: float | None = None) -> dict:
    """Every measurement above; `together=False` skips the all-at-once start (the slowest part),
    `rss_alone=False` the RSS of a daemon outside the mesh (bench/varlink_latency.py has it).

    `strict=False` (make bench) degrades instead of failing: a full view or a join not seen by all
    within its timeout is reported with how far it got, a part that fails is recorded in
    r["errors"] and the next one runs, and once `budget` seconds have passed the remaining parts
    are skipped (r["skipped"]). Each part's result says how many samples it got of how many."""
    args = argparse.Namespace(peers=peers, runs=runs, joins=joins, messages=messages, rate=rate,
                              kills=kills, sim=sim)
    started = time.monotonic()
    r: dict = {"errors": {}, "skipped": []}
    nodes: list[Node] = []

    def over_budget() -> bool:
        return budget is not None and time.monotonic() - started > budget

    def part(name: str, fn, bounded: bool = True) -> None:
        if bounded and over_budget():
            r["skipped"].append(name)
            print(f"{name}: skipped, the {budget:.0f} s budget is spent")
            return
        try:
            fn()
        except Exception as exc:
            if strict:
                raise
            r["errors"][name] = f"{type(exc).__name__}: {exc}"[:200]
            print(f"{name}: failed: {r['errors'][name]}")

    def full_view():
        nonlocal nodes
        for how_together in (True, False) if together else (False,):
            after_up, after_launch, progress = [], [], []
            for _ in range(args.runs):
                for n in nodes:
                    n.stop()
                nodes = []
                up, launch, nodes, prog = start_mesh(args.peers, how_together, strict, view_timeout)
                after_up.append(up)
                after_launch.append(launch)
                progress.append(prog)
            how = "launched together" if how_together else "launched one after another"
            ok = [x for x in after_up if x == x]
            r[how] = {"after_last_up": summary(ok), "after_launch": summary([x for x in after_launch if x == x]),
                      "runs": len(after_up), "progress": progress[-1]}
            print(fmt(f"{args.peers} peers {how}: last one up -> full view everywhere", r[how]["after_last_up"]))
            print(fmt(f"{args.peers} peers {how}: first launch -> full view", r[how]["after_launch"]))
            if len(ok) < len(after_up):
                pr = progress[-1]
                print(f"  partial: full view in {len(ok)} of {len(after_up)} runs within {view_timeout:.0f} s; "
                      f"last run: {pr['full']} of {pr['of']} peers saw all {args.peers - 1} others alive, "
                      f"the least saw {pr['least']}")

    def gossip_part():
        samples = gossip(nodes, args.messages, args.rate)
        r["gossip_ms"] = summary(samples, 1000)
        r["gossip_expected"] = args.messages * (len(nodes) - 1)
        print(fmt(f"gossip publish -> deliver, {len(nodes)} peers, {args.rate:g} msg/s", r["gossip_ms"], "ms")
              + f"; {r['gossip_ms']['n']} of {r['gossip_expected']} deliveries seen")

    def rss_part():
        r["rss_mb"] = daemon_rss(nodes[0].addr, len(nodes), rss_alone)
        for k, v in r["rss_mb"].items():
            print(f"beemeshd idle RSS, {k}: {v:.1f} MB")

    def joins_part():
        nonlocal nodes
        base = nodes[:-1]
        nodes[-1].stop()
        nodes = base
        time.sleep(5)  # its death is noticed; the joins below replace it
        times, partial = [], []
        r["join"], r["joins_partial"], r["joins_tried"], r["joins_planned"] = summary(times), partial, 0, args.joins
        for _ in range(args.joins):
            if r["joins_tried"] and over_budget():
                print(f"joins: {args.joins - r['joins_tried']} skipped, the {budget:.0f} s budget is spent")
                break
            r["joins_tried"] += 1
            took, seen, new = join(base, join_timeout)
            new.stop()
            if took is None:  # not everyone saw it in time (a starved machine)
                partial.append(seen)
            else:
                times.append(took)
            r["join"] = summary(times)
            time.sleep(2)
        print(fmt(f"one peer joins {len(base)}: its mesh up -> alive at all of them", r["join"])
              + (f"; partial: {len(times)} of {args.joins} joins seen by all {len(base)} within "
                 f"{join_timeout:.0f} s (the others by {', '.join(map(str, partial))} of them)"
                 if len(times) < args.joins else ""))

    def detection_part():
        left, suspect, r["detection_unseen"] = detection(nodes, args.kills)
        r["suspect"], r["dead"] = summary(suspect), summary(left)
        # survivors of the k-th kill: every node but the k killed so far
        r["detection_expected"] = sum(len(nodes) - k for k in range(1, min(args.kills, len(nodes) - 1) + 1))
        print(fmt("kill -9 -> PeerSuspect at each survivor", r["suspect"]))
        print(fmt("kill -9 -> PeerLeft (dead) at each survivor", r["dead"])
              + f"; {r['dead']['n']} of {r['detection_expected']} seen within 15 s")

    def fake_part():
        virtual, wall = fake_convergence(args.sim)
        r["fake"] = {"peers": args.sim, "virtual_s": virtual, "wall_s": wall}
        print(f"in-memory mesh, {args.sim} peers started together: full view after {virtual:.2f} s virtual "
              f"({wall:.1f} s wall)")

    try:
        part("full view", full_view)
        if nodes:  # without a running mesh the rest has nothing to measure
            # gossip and RSS first, on the whole mesh; then joins and kills, which shrink it
            for name, fn in (("gossip", gossip_part), ("RSS", rss_part), ("joins", joins_part),
                             ("failure detection", detection_part)):
                part(name, fn)
    finally:
        for n in nodes:
            n.stop()
    part("in-memory mesh", fake_part, bounded=False)  # virtual time, a few seconds: always worth it
    r["took_s"] = time.monotonic() - started
    return r


if __name__ == "__main__":
    main()
