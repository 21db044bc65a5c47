"""No control plane: three real beemeshd peers, each with its own rootless Podman store, on loopback."""

from __future__ import annotations

import signal
import time

import pytest

from tests.integration.daemons import PodmanNode, free_port
from tests.integration.test_runtime_daemon import labelled_pods, wait_for, web


@pytest.fixture
def trio_of_nodes(user, varlinkctl):
    nodes = []
    try:
        for i in range(3):
            home = user.tempdir()
            cfg = {"publish_host_ip": f"127.0.{i + 1}.1", "mesh_mdns": False}
            if nodes:
                cfg["mesh_bootstrap"] = nodes[0].call("GetInfo").json["info"]["meshAddresses"]
            n = PodmanNode(user, home, cfg).prepare()
            n.start()
            nodes.append(n)
        for n in nodes:
            wait_for(lambda n=n: n.call("GetInfo").json["info"]["peersAlive"] == 2, what="full mesh view")
            wait_for(lambda n=n: n.call("GetInfo").json["info"]["runtime"]["available"], what="runtime")
        yield nodes
    finally:
        for n in nodes:
            n.stop(signal.SIGKILL) if n.proc and n.proc.poll() is None else None
            n.cleanup()
        import shutil
        for n in nodes:
            shutil.rmtree(n.home, ignore_errors=True)


def peer_ids(nodes):
    return [n.call("GetInfo").json["info"]["peerId"] for n in nodes]


def test_spread_any_peer_answers_and_a_dead_peer_is_healed(trio_of_nodes):
    a, b, c = trio_of_nodes
    ids = peer_ids(trio_of_nodes)
    port = free_port()
    r = a.call("Deploy", {"manifest": web(replicas=3, port=port), "wait": True, "timeoutSeconds": 60})
    assert r.rc == 0, r.err
    w = r.json["workloads"][0]
    assert sorted(x["peer"] for x in w["replicaStatus"]) == sorted(ids)  # one replica per peer
    for node in trio_of_nodes:
        assert len(labelled_pods(node)) == 1
    for p in w["ports"]:
        assert a.http(p["hostIP"], port) == "hello from beemesh busybox\n"
    # any peer answers Get, List, Explain
    seen = wait_for(lambda: (x := b.call("Get", {"name": "web"}).json["workload"])["readyReplicas"] == 3 and x,
                    what="status at b")
    assert seen["origin"] == ids[0]
    assert [x["workload"]["name"] for x in c.call("List", {}, "--more").lines] == ["web"]
    ex = c.call("Explain", {"name": "web"}).json["explanation"]
    assert len(ex["decisions"]) == 3 and all(len(d["bids"]) == 3 for d in ex["decisions"])

    # kill -9 the peer that took the Deploy: its replica comes back elsewhere, the manifest survives
    lost = next(x["name"] for x in w["replicaStatus"] if x["peer"] == ids[0])
    a.stop(signal.SIGKILL)
    t0 = time.monotonic()

    def healed():
        x = b.call("Get", {"name": "web"}).json["workload"]
        rows = {r["name"]: r for r in x["replicaStatus"]}
        return x["readyReplicas"] == 3 and rows[lost]["peer"] in ids[1:] and x

    x = wait_for(healed, timeout=30, what="re-placement")
    took = time.monotonic() - t0
    assert took < 15, took
    new_peer = {r["name"]: r["peer"] for r in x["replicaStatus"]}[lost]
    moved = next(n for n, pid in zip(trio_of_nodes, ids) if pid == new_peer)
    assert len(labelled_pods(moved)) == 2
    ex = c.call("Explain", {"name": "web"}).json["explanation"]
    assert any(d["replica"] == lost and d["rule"].startswith("re-placed") for d in ex["decisions"])

    # delete from yet another peer: every pod on every live peer goes
    r = c.call("Delete", {"name": "web", "wait": True, "timeoutSeconds": 60})
    assert r.rc == 0, r.err
    assert labelled_pods(b) == [] and labelled_pods(c) == []


def test_no_capacity_reports_every_peers_reason(trio_of_nodes):
    a, b, c = trio_of_nodes
    too_big = web("huge", probe=False)
    too_big["spec"]["template"]["spec"]["containers"][0]["resources"] = {"requests": {"cpu": "64"}}
    r = b.call("Deploy", {"manifest": too_big})
    assert r.error == "io.beemesh.Mesh.NoCapacity", r.err
    reasons = {x["peer"]: x["reason"] for x in r.json["reasons"]}
    assert set(reasons) == set(peer_ids(trio_of_nodes))
    assert all("needs 64000m CPU" in why for why in reasons.values())
    assert c.call("Get", {"name": "huge"}).error == "io.beemesh.Mesh.WorkloadNotFound"
