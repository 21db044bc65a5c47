"""StatefulSets on three real beemeshd peers, each with its own rootless Podman store and its own
network namespace (joined by a bridge in a fourth namespace, so that any one peer can be cut
off): a partitioned holder stops its pod before the majority starts the ordinal elsewhere; a
holder killed with SIGKILL has its pod killed by the lease watchdog and the ordinal runs
elsewhere after the lease wait under a higher token; the start/stop history every daemon (and
watchdog) logged passes beemeshd.core.history_check. Leases are 6 s here (15 s by default).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

from beemeshd.core.history_check import check
from tests.conftest import IMAGE
from tests.integration.daemons import PodmanNode, TestMesh, labelled_pods, wait_for
from tests.integration.test_mesh import NetnsUser, sh

LEASE = {"lease_seconds": 6.0, "lease_stop_margin_seconds": 2.0, "log_level": "info", "mesh_mdns": False}
WAIT = 6.0 * 1.001 / 0.999 + 0.5  # W: what the group waits after a holder's last renewal


def statefulset(name: str) -> dict:
    c = {"name": "app", "image": IMAGE, "command": ["sleep", "100000"]}
    spec = {"replicas": 1, "serviceName": name, "selector": {"matchLabels": {"app": name}},
            "template": {"metadata": {"labels": {"app": name}},
                         "spec": {"containers": [c], "terminationGracePeriodSeconds": 1}}}
    return {"apiVersion": "apps/v1", "kind": "StatefulSet", "metadata": {"name": name}, "spec": spec}


class Bridge:
    """Namespaces n0..n2, each joined by a veth to a bridge in a hub namespace."""

    def __init__(self, user, n: int = 3):
        tag = os.getpid() % 10000
        self.hub = f"bm9h{tag}"
        self.ns = [f"bm9n{tag}x{i}" for i in range(n)]
        self.ips = [f"10.233.{tag % 250}.{i + 1}" for i in range(n)]
        self.ports = [f"bm9v{tag}x{i}" for i in range(n)]
        self.users = [NetnsUser(user.name, user.uid, user.gid, user.home, netns=x) for x in self.ns]
        self.delete()
        sh("ip", "netns", "add", self.hub)
        sh("ip", "-n", self.hub, "link", "add", "br0", "type", "bridge")
        sh("ip", "-n", self.hub, "link", "set", "br0", "up")
        for ns, ip, port in zip(self.ns, self.ips, self.ports):
            sh("ip", "netns", "add", ns)
            sh("ip", "link", "add", port, "type", "veth", "peer", "name", "eth0", "netns", ns)
            sh("ip", "link", "set", port, "netns", self.hub)
            sh("ip", "-n", self.hub, "link", "set", port, "master", "br0", "up")
            sh("ip", "-n", ns, "addr", "add", f"{ip}/24", "dev", "eth0")
            sh("ip", "-n", ns, "link", "set", "eth0", "up")
            sh("ip", "-n", ns, "link", "set", "lo", "up")

    def cut(self, i: int) -> None:
        sh("ip", "-n", self.hub, "link", "set", self.ports[i], "down")

    def mend(self, i: int) -> None:
        sh("ip", "-n", self.hub, "link", "set", self.ports[i], "up")

    def delete(self) -> None:
        for ns in [*self.ns, self.hub]:
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)


def watchdogs(node: PodmanNode) -> list[int]:
    """Pids of lease watchdogs this node's daemons started (found by their state directory)."""
    out = []
    state = str(node.home / "state")
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                argv = (d / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if b"beemeshd.lease_watchdog" in argv and state.encode() in argv:
                out.append(int(d.name))
    return out


def kill_watchdogs(node: PodmanNode) -> None:
    """kill -9 the node's lease watchdogs (as a machine's death would, or at teardown)."""
    for pid in watchdogs(node):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


@pytest.fixture(scope="module")
def cluster(user, varlinkctl):
    net = Bridge(user)
    mesh = TestMesh()
    nodes: list[PodmanNode] = []
    try:
        for i, (u, ip) in enumerate(zip(net.users, net.ips)):
            cfg = {**LEASE, "mesh_listen": [f"/ip4/{ip}/tcp/0"]}
            if nodes:
                cfg["mesh_bootstrap"] = nodes[0].call("GetInfo").json["info"]["meshAddresses"]
            n = PodmanNode(u, user.tempdir(), cfg).prepare()
            mesh.admit(n)
            n.start(timeout=60)
            nodes.append(n)
        for n in nodes:
            wait_for(lambda n=n: n.call("GetInfo").json["info"]["peersAlive"] == 2, 60, "full mesh view")
            wait_for(lambda n=n: n.call("GetInfo").json["info"]["runtime"]["available"], 60, "runtime")
        yield net, nodes
    finally:
        for n in nodes:
            if n.proc and n.proc.poll() is None:
                n.stop(signal.SIGKILL)
            kill_watchdogs(n)
            n.cleanup()
        net.delete()
        for n in nodes:
            shutil.rmtree(n.home, ignore_errors=True)


def ids(nodes) -> list[str]:
    return [n.call("GetInfo").json["info"]["peerId"] for n in nodes]


def row0(node: PodmanNode, name: str) -> dict | None:
    r = node.call("Get", {"name": name})
    return r.json["workload"]["replicaStatus"][0] if r.rc == 0 else None


def history(nodes, name: str) -> list[tuple]:
    """Every `lease history` line the daemons and their watchdogs logged about `name`."""
    out = []
    for n in nodes:
        for line in n.log_text().splitlines():
            m = re.search(r"lease history (\{.*\})", line)
            if m:
                e = json.loads(m.group(1))
                if e["ordinal"] == f"default/{name}-0":
                    out.append((e["t"], e["ordinal"], e["peer"], e["token"], e["kind"]))
    return sorted(out)


def running_pods(node: PodmanNode, name: str) -> list[dict]:
    return [p for p in labelled_pods(node)
            if p["Name"].startswith(f"{name}-0.") and p["Status"].lower() in ("running", "degraded")
            and any(c.get("Status", "").lower() == "running" for c in p.get("Containers", []))]


def runs_on(nodes, name: str) -> list[int]:
    return [i for i, n in enumerate(nodes) if running_pods(n, name)]


def test_partitioned_holder_stops_before_the_majority_starts_it_and_heal_leaves_one(cluster):
    net, nodes = cluster
    peer_ids = ids(nodes)
    r = nodes[0].call("Deploy", {"manifest": statefulset("part"), "wait": True, "timeoutSeconds": 120}, timeout=150)
    assert r.rc == 0, r.err
    row = wait_for(lambda: (x := row0(nodes[0], "part")) and x.get("lease") and x, 30, "the lease shows in Get")
    holder = peer_ids.index(row["peer"])
    assert row["lease"]["holder"] == row["peer"] and row["lease"]["token"] > 0
    ex = nodes[0].call("Explain", {"name": "part"}).json["explanation"]
    assert sorted(ex["group"]["members"]) == sorted(peer_ids) and ex["group"]["leader"] in peer_ids
    others = [i for i in range(3) if i != holder]
    t_cut = time.monotonic()
    net.cut(holder)
    # the cut-off holder stops its pod on its own; the majority starts the ordinal after W
    wait_for(lambda: not running_pods(nodes[holder], "part"), 30, "the cut-off holder stops its pod")
    wait_for(lambda: any(running_pods(nodes[i], "part") for i in others), 90, "the ordinal runs on the majority side")
    took = time.monotonic() - t_cut
    h = history(nodes, "part")
    stop = max(t for t, _, p, _, k in h if p == peer_ids[holder] and k == "stop")
    start = max(t for t, _, p, _, k in h if p != peer_ids[holder] and k == "start")
    print(f"\npartition: holder stopped {stop - t_cut:.2f} s after the cut, the ordinal started elsewhere "
          f"{start - t_cut:.2f} s after it ({start - stop:.2f} s later); running again after {took:.2f} s")
    assert stop < start
    new = next(i for i in others if running_pods(nodes[i], "part"))
    net.mend(holder)
    wait_for(lambda: nodes[holder].call("GetInfo").json["info"]["peersAlive"] == 2, 60, "the holder is back")
    time.sleep(10)  # catalogs, groups and agents settle
    assert runs_on(nodes, "part") == [new]
    row = row0(nodes[holder], "part")
    assert row["peer"] == peer_ids[new] and row["lease"]["holder"] == peer_ids[new]
    assert check(history(nodes, "part"), eps=0.05) == []


def test_a_holder_killed_with_sigkill_loses_the_ordinal_to_another_peer_with_a_higher_token(cluster):
    net, nodes = cluster
    peer_ids = ids(nodes)
    r = nodes[0].call("Deploy", {"manifest": statefulset("kill"), "wait": True, "timeoutSeconds": 120}, timeout=150)
    assert r.rc == 0, r.err
    row = wait_for(lambda: (x := row0(nodes[0], "kill")) and x.get("lease") and x, 30, "the lease shows in Get")
    holder = peer_ids.index(row["peer"])
    token = row["lease"]["token"]
    survivor = nodes[(holder + 1) % 3]
    t_kill = time.monotonic()
    nodes[holder].proc.kill()  # SIGKILL: its pod keeps running until the lease watchdog kills it
    nodes[holder].proc.wait()
    wait_for(lambda: not running_pods(nodes[holder], "kill"), 30, "the watchdog kills the dead daemon's pod")
    t_pod_gone = time.monotonic()
    back = wait_for(lambda: (x := row0(survivor, "kill")) and x["peer"] != peer_ids[holder]
                    and x["state"] in ("running", "ready") and x, 90, "the ordinal runs elsewhere")
    took = time.monotonic() - t_kill
    print(f"\nkill -9: watchdog stopped the pod {t_pod_gone - t_kill:.2f} s after the kill; ordinal serving "
          f"on another peer {took:.2f} s after it (lease 6 s, wait W {WAIT:.2f} s)")
    assert back["lease"]["token"] > token and back["lease"]["holder"] == back["peer"]
    assert took <= WAIT + 5 + 10  # lease + 5 s goal, plus slack for a loaded machine
    h = history(nodes, "kill")
    assert any(k == "stop" for _, _, p, _, k in h if p == peer_ids[holder])  # the watchdog's line
    assert check(h, eps=0.05) == []
