"""Consensus numbers over the real libp2p mesh: election and failover times of StatefulSet groups,
CPU, memory and messages of idle groups (prints p50/p99 and n).

Three peer processes (this file with --node) on 127.0.0.1, each a LibP2PMesh (open: no
credentials) with the consensus Driver over MeshWire (signed direct requests, frames batched per
peer per tick) and GROUPS lease groups with all three peers as members and the daemon's default
timings. Measured:
- election: groups created (on every peer, once the mesh view is full) -> every group has a leader;
- idle: CPU (user+sys) per peer process, frames and Raft messages per second, RSS per group
  (RSS with the groups minus before), over IDLE seconds;
- failover: kill -9 of the peer that leads the most groups -> each of its groups has a new leader
  at both survivors.

    python bench/consensus_bench.py [--groups 100] [--idle 30]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from bench.common import machine, summary  # noqa: E402

# tick,pulse,suspect,heartbeat,shortest election[,longest]: the daemon's defaults (raft_*_seconds)
DEFAULT_TIMING = "0.05,0.15,0.4,0.5,2.0"
BEFORE_TIMING = "0.05,0.2,0,0.2,0.65"  # stop 13's defaults: no hurrying, 0.2 s heartbeats


def rss_kib() -> int:
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def node(index: int, seeds: list[str], groups: int, boot: str | None, idle: float, timing: str) -> None:
    import logging

    import trio

    from beemeshd.consensus import Driver, RaftGroup, RaftTiming
    from beemeshd.consensus.leases import LeaseMachine
    from beemeshd.consensus.wire import MeshWire
    from beemeshd.core import lease as L
    from beemeshd.core.protocol import Signer
    from beemeshd.mesh.host import LibP2PMesh

    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("libp2p").setLevel(logging.CRITICAL)
    ids = [Signer(bytes.fromhex(s)).peer_id for s in seeds]

    def say(**event):
        print(json.dumps({**event, "node": index, "t": time.monotonic()}), flush=True)

    async def main():
        mesh = LibP2PMesh(bytes.fromhex(seeds[index]), listen=["/ip4/127.0.0.1/tcp/0"],
                          bootstrap=[boot] if boot else [])
        async with trio.open_nursery() as nursery:
            await nursery.start(mesh.run)
            say(event="up", address=mesh.addresses()[0])
            while sum(p.state == "alive" for p in mesh.peers()) < len(ids) - 1:
                await trio.sleep(0.05)
            tick, pulse, suspect, heartbeat, election, *longest = (float(x) for x in timing.split(","))
            longest = longest[0] if longest else 2 * election  # the daemon: twice the shortest
            timing_ = RaftTiming(tick=tick, heartbeat=heartbeat, election_min=election, election_max=longest,
                                 leader_fallback=longest, pulse=pulse, suspect=suspect)
            alive = lambda: {p.peer_id for p in mesh.peers() if p.state in ("self", "alive", "suspect")}  # noqa
            driver = Driver(MeshWire(mesh), **timing_.driver_args(), reachable=alive, incarnation="0")
            await nursery.start(driver.run)
            before = rss_kib()
            members = [f"{p}/0" for p in ids]
            gs = []
            for g in range(groups):
                m = LeaseMachine(ids[index], L.Timing(), time.monotonic, time.monotonic)
                grp = RaftGroup(f"bench/g{g}@0", driver.node_id, members, m, driver, timing=timing_)
                m.group = grp
                gs.append(grp)
            say(event="created", rss_before=before)
            known: dict[int, str | None] = {}
            next_report = time.monotonic() + 0.0
            while True:
                for i, grp in enumerate(gs):
                    leader = grp.leader
                    if leader != known.get(i):
                        known[i] = leader
                        say(event="leader", group=i, leader=leader.split("/")[0] if leader else None)
                if time.monotonic() >= next_report:
                    ru = resource.getrusage(resource.RUSAGE_SELF)
                    say(event="stats", cpu=ru.ru_utime + ru.ru_stime, rss=rss_kib(), **driver.stats,
                        leaders=sum(g.is_leader for g in gs))
                    next_report = time.monotonic() + 1.0
                await trio.sleep(0.05)

    trio.run(main)


class Peer:
    def __init__(self, index, seeds, groups, boot, idle, timing):
        argv = [sys.executable, __file__, "--node", str(index), "--seeds", ",".join(seeds), "--groups", str(groups),
                "--idle", str(idle), "--timing", timing] + (["--boot", boot] if boot else [])
        self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True, bufsize=1)
        self.events: list[dict] = []
        self.lock = threading.Lock()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for line in self.proc.stdout:
            try:
                e = json.loads(line)
            except ValueError:
                continue
            with self.lock:
                self.events.append(e)

    def find(self, **match) -> list[dict]:
        with self.lock:
            return [e for e in self.events if all(e.get(k) == v for k, v in match.items())]


def wait(pred, timeout, what):
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        v = pred()
        if v:
            return v
        time.sleep(0.02)
    raise SystemExit(f"timed out: {what}")


def main(groups: int = 100, idle: float = 30.0, timing: str = DEFAULT_TIMING) -> dict:
    from beemeshd.core.protocol import Signer

    seeds = [os.urandom(32).hex() for _ in range(3)]
    ids = [Signer(bytes.fromhex(s)).peer_id for s in seeds]
    peers = [Peer(0, seeds, groups, None, idle, timing)]
    try:
        up = wait(lambda: peers[0].find(event="up"), 30, "first peer up")
        boot = up[0]["address"]
        peers += [Peer(i, seeds, groups, boot, idle, timing) for i in (1, 2)]
        created = [wait(lambda p=p: p.find(event="created"), 60, "groups created")[0] for p in peers]
        t_created = max(c["t"] for c in created)

        def leaders_at(p):
            last = {}
            for e in p.find(event="leader"):
                last[e["group"]] = e
            return last

        def elected():
            views = [leaders_at(p) for p in peers]
            return all(len(v) == groups and all(e["leader"] for e in v.values()) for v in views) and views

        views = wait(elected, 120, "every group elected")
        election = [max(v[g]["t"] for v in views) - t_created for g in range(groups)]
        # idle window
        time.sleep(2.0)
        start = [p.find(event="stats")[-1] for p in peers]
        time.sleep(idle)
        end = [p.find(event="stats")[-1] for p in peers]
        span = [e["t"] - s["t"] for s, e in zip(start, end)]
        cpu = [(e["cpu"] - s["cpu"]) / d for s, e, d in zip(start, end, span)]
        frames = [(e["framesSent"] - s["framesSent"]) / d for s, e, d in zip(start, end, span)]
        msgs = [(e["messagesSent"] - s["messagesSent"]) / d for s, e, d in zip(start, end, span)]
        rss_group = [(e["rss"] - c["rss_before"]) / max(groups, 1) for e, c in zip(end, created)]
        leads = [e["leaders"] for e in end]
        # failover: kill the peer leading the most groups
        victim = max(range(3), key=lambda i: leads[i])
        led = [g for g, e in leaders_at(peers[(victim + 1) % 3]).items() if e["leader"] == ids[victim]]
        t_kill = time.monotonic()
        peers[victim].proc.send_signal(signal.SIGKILL)
        survivors = [p for i, p in enumerate(peers) if i != victim]

        def moved():
            views = [leaders_at(p) for p in survivors]
            return all(v[g]["leader"] not in (None, ids[victim]) for v in views for g in led) and views

        views = wait(moved, 60, "failover")
        failover = [max(v[g]["t"] for v in views) - t_kill for g in led]
        return {
            "machine": machine(), "groups": groups, "idle_seconds": idle, "timing (tick,pulse,suspect,heartbeat,election)": timing,
            "election_s": summary(election), "failover_s": summary(failover),
            "cpu_per_peer_cores": [round(c, 4) for c in cpu],
            "frames_per_s_per_peer": [round(f, 1) for f in frames],
            "raft_messages_per_s_per_peer": [round(m, 1) for m in msgs],
            "rss_kib_per_group": [round(r, 1) for r in rss_group],
            "groups_led": leads,
        }
    finally:
        for p in peers:
            if p.proc.poll() is None:
                p.proc.kill()
                p.proc.wait()


def rows() -> list[tuple]:
    """Rows for bench/RESULTS.md (bench/run_all.py)."""
    base = main(0, 15.0)
    r = main(100, 30.0)
    fast = main(100, 20.0, BEFORE_TIMING)
    cpu = max(r["cpu_per_peer_cores"])
    mesh = max(base["cpu_per_peer_cores"])

    def s(x):
        return f"{x['p50']:.2f} / {x['p99']:.2f} s (n={x['n']})"

    return [
        ("StatefulSet groups over libp2p (3 peers): election of 100 new groups, p50 / p99", s(r["election_s"]),
         f"the old timings (no hurrying; heartbeat 0.2 s, election 0.65 s): {s(fast['election_s'])}", "—", "—"),
        ("… Raft failover: kill -9 of the peer leading most groups → new leader at both survivors",
         s(r["failover_s"]), f"the old timings: {s(fast['failover_s'])}", "—",
         "≤ 0.5 s: " + ("met" if r["failover_s"]["p99"] <= 0.5 else
                        "met at p50, **missed** at p99" if r["failover_s"]["p50"] <= 0.5 else "**missed**")),
        ("… 100 idle groups on one peer: CPU (user+sys, one core = 100 %), busiest peer",
         f"{cpu * 100:.1f} % ({(cpu - mesh) * 100:.1f} % above the mesh alone)",
         f"the old timings: {max(fast['cpu_per_peer_cores']) * 100:.1f} %; mesh alone: {mesh * 100:.1f} %", "—",
         "≤ 5 %: " + ("met" if cpu - mesh <= 0.05 else "**missed**") + " (counted above the mesh alone)"),
        ("… idle traffic per peer: mesh requests (frames) / Raft messages per second, busiest peer",
         f"{max(r['frames_per_s_per_peer']):.0f} / {max(r['raft_messages_per_s_per_peer']):.0f}",
         f"the old timings: {max(fast['frames_per_s_per_peer']):.0f} / "
         f"{max(fast['raft_messages_per_s_per_peer']):.0f}", "—", "—"),
        ("… memory per idle group (RSS growth / groups)", f"{max(r['rss_kib_per_group']):.0f} KiB", "—", "—", "—"),
    ]


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--node", type=int)
    ap.add_argument("--seeds")
    ap.add_argument("--boot")
    ap.add_argument("--groups", type=int, default=100)
    ap.add_argument("--idle", type=float, default=30.0)
    ap.add_argument("--timing", default=DEFAULT_TIMING,
                    help="tick,pulse,suspect,heartbeat,shortest election timeout"
                         "[,longest (default: twice the shortest)] (s)")
    a = ap.parse_args()
    if a.node is not None:
        node(a.node, a.seeds.split(","), a.groups, a.boot, a.idle, a.timing)
    else:
        print(json.dumps(main(a.groups, a.idle, a.timing), indent=1))
