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
            ev = json.loads(line)
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


def start_mesh(peers: int, together: bool, strict: bool = True) -> tuple[float, float, list[Node]]:
    """(last node up -> full view everywhere, first launch -> full view, nodes). `together`:
    all launched at once; else each as soon as the previous one's mesh is up. Not `strict`: a
    full view not reached within 120 s (an overloaded machine: the failure detector flaps) gives
    NaN times instead of an error, and the nodes are kept."""
    nodes = [Node()]
    try:
        nodes[0].up()
        t0 = time.time()
        for _ in range(peers - 1):
            nodes.append(Node(nodes[0].addr))
            if not together:
                nodes[-1].up()
        last_up = max(n.up() for n in nodes[1:])
        try:
            full = max(first_time(n, lambda e: e.get("alive", 0) >= peers - 1, 120) for n in nodes)
        except TimeoutError:
            if strict:
                raise
            full = float("nan")
    except BaseException:  # no node outlives a failed start
        for n in nodes:
            n.stop()
        raise
    return full - last_up, full - t0, nodes


def join(nodes: list[Node]) -> tuple[float, Node]:
    """One more peer into a running mesh: its mesh up -> every other peer has it alive."""
    new = Node(nodes[0].addr)
    try:
        t0 = new.up()
        deadline = time.monotonic() + 30
        t = max(first_time(n, lambda e: e["event"] == "PeerJoined" and e["peer"] == new.peer_id,
                           max(0.0, deadline - time.monotonic())) for n in nodes)
    except BaseException:
        new.stop()
        raise
    return t - t0, new


def gossip(nodes: list[Node], messages: int, rate: float) -> list[float]:
    samples = []
    for i in range(messages):
        random.choice(nodes).send(f"pub m{i}")
        time.sleep(1 / rate)
    time.sleep(2)
    sent = {e["id"]: e["t"] for n in nodes for e in n.log if e["event"] == "sent"}
    for n in nodes:
        for e in n.log:
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
    args = p.parse_args()
    if args.node:
        return node(args.boot)
    print(machine())
    return run(**{k: v for k, v in vars(args).items() if k not in ("node", "boot")})


def run(peers: int = 20, runs: int = 3, joins: int = 5, messages: int = 100, rate: float = 5.0,
        kills: int = 4, sim: int = 300, together: bool = True, rss_alone: bool = True,
        strict: bool = True) -> dict:
    """Every measurement above; `together=False` skips the all-at-once start (the slowest part),
    `rss_alone=False` the RSS of a daemon outside the mesh (bench/varlink_latency.py has it),
    `strict=False` goes on with the other measurements when a full view is not reached."""
    args = argparse.Namespace(peers=peers, runs=runs, joins=joins, messages=messages, rate=rate,
                              kills=kills, sim=sim)
    r: dict = {}
    join_times, nodes = [], []
    try:
        for together in (True, False) if together else (False,):
            after_up, after_launch = [], []
            for _ in range(args.runs):
                for n in nodes:
                    n.stop()
                up, launch, nodes = start_mesh(args.peers, together, strict)
                after_up.append(up)
                after_launch.append(launch)
            how = "launched together" if together else "launched one after another"
            r[how] = {"after_last_up": summary(after_up), "after_launch": summary(after_launch)}
            print(fmt(f"{args.peers} peers {how}: last one up -> full view everywhere", summary(after_up)))
            print(fmt(f"{args.peers} peers {how}: first launch -> full view", summary(after_launch)))
        base = nodes[:-1]
        nodes[-1].stop()
        time.sleep(5)  # its death is noticed; the joins below replace it
        r["joins_unseen"] = 0
        for _ in range(args.joins):
            try:
                took, new = join(base)
            except TimeoutError:  # not everyone saw it within 30 s (a starved machine)
                if strict:
                    raise
                r["joins_unseen"] += 1
                continue
            join_times.append(took)
            new.stop()
            time.sleep(4)
        nodes = [*base, Node(base[0].addr)]
        nodes[-1].up()
        r["join"] = summary(join_times)
        print(fmt(f"one peer joins {args.peers - 1}: its mesh up -> alive at all of them", r["join"]))
        time.sleep(10)  # let GossipSub drop the killed joiners from its meshes
        r["gossip_ms"] = summary(gossip(nodes, args.messages, args.rate), 1000)
        r["gossip_expected"] = args.messages * (len(nodes) - 1)
        print(fmt(f"gossip publish -> deliver, {args.peers} peers, {args.rate:g} msg/s", r["gossip_ms"], "ms")
              + f"; {r['gossip_ms']['n']} of {r['gossip_expected']} deliveries seen")
        r["rss_mb"] = daemon_rss(nodes[0].addr, args.peers, rss_alone)
        for k, v in r["rss_mb"].items():
            print(f"beemeshd idle RSS, {k}: {v:.1f} MB")
        left, suspect, r["detection_unseen"] = detection(nodes, args.kills)
        r["suspect"], r["dead"] = summary(suspect), summary(left)
        print(fmt("kill -9 -> PeerSuspect at each survivor", r["suspect"]))
        print(fmt("kill -9 -> PeerLeft (dead) at each survivor", r["dead"]))
    finally:
        for n in nodes:
            n.stop()
    virtual, wall = fake_convergence(args.sim)
    r["fake"] = {"peers": args.sim, "virtual_s": virtual, "wall_s": wall}
    print(f"in-memory mesh, {args.sim} peers started together: full view after {virtual:.2f} s virtual "
          f"({wall:.1f} s wall)")
    return r


if __name__ == "__main__":
    main()
