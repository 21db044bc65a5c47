"""Trust with real daemons: a peer that bids for work it cannot run — its Podman store lacks the
image and no registry is reachable, yet it claims the image is pullable — has each replica it wins
moved away, loses trust in every other peer's ledger, and then gets no work at all."""

from __future__ import annotations

import shutil
import signal

from tests.integration.daemons import PodmanNode, free_port, labelled_pods, wait_for
from tests.integration.test_runtime_daemon import web


def test_a_peer_that_cannot_deliver_loses_trust_and_then_all_work(user, varlinkctl):
    nodes = []
    try:
        for i in range(3):
            cfg = {"publish_host_ip": f"127.0.{i + 1}.1", "mesh_mdns": False, "mesh_open": True}
            if nodes:
                cfg["mesh_bootstrap"] = nodes[0].call("GetInfo").json["info"]["meshAddresses"]
            n = PodmanNode(user, user.tempdir(), cfg).prepare(image=i < 2)
            n.start()
            nodes.append(n)
        for n in nodes:
            wait_for(lambda n=n: n.call("GetInfo").json["info"]["peersAlive"] == 2, what="full mesh view")
            wait_for(lambda n=n: n.call("GetInfo").json["info"]["runtime"]["available"], what="runtime")
        a, b, c = nodes
        ids = [n.call("GetInfo").json["info"]["peerId"] for n in nodes]

        def moved_off_c(name):
            w = a.call("Get", {"name": name}).json["workload"]
            return w["readyReplicas"] == 3 and ids[2] not in {r["peer"] for r in w["replicaStatus"]}

        for name in ("w0", "w1"):
            r = a.call("Deploy", {"manifest": web(name, replicas=3, port=free_port()), "timeoutSeconds": 60})
            assert r.rc == 0, r.err
            placed = {x["peer"] for x in r.json["workloads"][0]["replicaStatus"]}
            why = a.call("Explain", {"name": name}).json["explanation"]["decisions"]
            assert ids[2] in placed, why  # spread: C bid (claiming the image pullable) and won one
            wait_for(lambda name=name: moved_off_c(name), 60, f"{name}'s replica moved off the peer that failed it")
            rules = [d["rule"] for d in a.call("Explain", {"name": name}).json["explanation"]["decisions"]]
            assert any(f"peer {ids[2]} did not deliver it" in rule for rule in rules)

        # both honest peers learned it from what they saw, each on its own
        for n in (a, b):
            peers = {p["peerId"]: p for p in n.call("ListPeers", {}).json["peers"]}
            assert peers[ids[2]]["receipts"]["contradicted"] == 2
            assert peers[ids[2]]["trust"] < 0.25
            honest = ids[1] if n is a else ids[0]
            assert peers[honest]["trust"] > 0.5 and peers[honest]["receipts"]["delivered"] >= 1

        # so it gets no more work, and Explain says why
        r = b.call("Deploy", {"manifest": web("w2", replicas=3, port=free_port()), "wait": True,
                              "timeoutSeconds": 60})
        assert r.rc == 0, r.err
        assert ids[2] not in {x["peer"] for x in r.json["workloads"][0]["replicaStatus"]}
        declined = a.call("Explain", {"name": "w2"}).json["explanation"]["decisions"][0]["declined"]
        assert any(d["peer"] == ids[2] and d["reason"].startswith("untrusted: trust") for d in declined)
        assert labelled_pods(c) == []
    finally:
        for n in nodes:
            n.stop(signal.SIGKILL) if n.proc and n.proc.poll() is None else None
            n.cleanup()
        for n in nodes:
            shutil.rmtree(n.home, ignore_errors=True)
