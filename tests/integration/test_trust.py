"""Trust with real daemons: a peer that bids for work it cannot run — its Podman store lacks the
image and no registry is reachable, yet it claims the image is pullable — has each replica it wins
moved away, loses trust in every other peer's ledger, and then gets no work at all."""

from __future__ import annotations

from tests.integration.daemons import free_port, labelled_pods, peer_ids, podman_mesh, wait_for
from tests.integration.test_runtime_daemon import web


def test_a_peer_that_cannot_deliver_loses_trust_and_then_all_work(user, varlinkctl):
    with podman_mesh(user, 3, image=lambda i: i < 2) as nodes:
        a, b, c = nodes
        ids = peer_ids(nodes)

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
