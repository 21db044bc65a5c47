"""Rego policies with three real beemeshd peers (rootless Podman stores, libp2p on loopback), driven
through the real varlinkctl and beemeshctl: a mesh-wide deny answers PolicyDenied and creates
nothing anywhere; a node-local deny keeps its peer out of the auction; policies survive restarts and
reach a peer that was down."""

from __future__ import annotations

import json
import shutil
import signal
from pathlib import Path

import pytest

from tests.integration.daemons import PodmanNode, ctl, free_port, labelled_pods, peer_ids, podman_mesh, wait_for
from tests.integration.test_runtime_daemon import web

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "policies"
NO_WEB_HERE = ('package beemesh.bid\n\nimport rego.v1\n\n'
               'deny contains sprintf("%s: no web servers on this peer", [input.manifest.metadata.name]) if {\n'
               '\tstartswith(input.manifest.metadata.name, "web")\n}\n')


@pytest.fixture
def policy_mesh(user, varlinkctl):
    """Three peers of one mesh: the first holds the mesh key, the others only its public half."""
    with podman_mesh(user, 3, key_holders=(0,)) as nodes:
        yield nodes


def policies(node, scope=None) -> dict:
    r = node.call("ListPolicies", {"scope": scope} if scope else {})
    assert r.rc == 0, r.err
    return {p["name"]: p for p in r.json["policies"]}


def restart(node) -> None:
    again = PodmanNode(node.user, node.home, node.extra_config).start()
    node.proc = again.proc


def test_mesh_wide_deny_creates_nothing_anywhere_and_reaches_a_returning_peer(policy_mesh):
    a, b, c = policy_mesh
    allowlist = (EXAMPLES / "image-allowlist.rego").read_text()
    r = a.call("SetPolicy", {"name": "image-allowlist", "scope": "mesh", "text": allowlist})
    assert r.rc == 0, r.err
    assert (r.json["policy"]["version"], r.json["policy"]["inForce"]) == (1, True)
    # only the holder of the mesh key may set one
    r = b.call("SetPolicy", {"name": "other", "scope": "mesh", "text": allowlist})
    assert r.error == "io.beemesh.Mesh.MeshKeyRequired", r.err
    for n in (b, c):  # gossip brings it to the others
        wait_for(lambda n=n: policies(n).get("image-allowlist", {}).get("inForce"), timeout=15,
                 what="the policy on every peer")

    evil = web("miner", replicas=3)
    evil["spec"]["template"]["spec"]["containers"][0]["image"] = "docker.io/evil/miner:1"
    for n in (a, c):
        r = n.call("Deploy", {"manifest": evil, "wait": True, "timeoutSeconds": 30})
        assert r.error == "io.beemesh.Mesh.PolicyDenied", (r.rc, r.err)
        assert r.json["policy"] == "image-allowlist"
        assert r.json["messages"] == ["container httpd: image docker.io/evil/miner:1 is not allowed "
                                      '(allowed prefixes: ["localhost/", "docker.io/library/", "quay.io/beemesh/"])']
    # beemeshctl says the same in one line
    manifest = a.home / "miner.json"
    manifest.write_text(json.dumps(evil))
    shutil.chown(manifest, a.user.uid, a.user.gid)
    p = ctl(b, "apply", "-f", str(manifest))
    assert p.returncode == 1 and p.stderr.startswith("beemeshctl: PolicyDenied: image-allowlist: container httpd")
    for n in policy_mesh:  # nothing decided, nothing created, on any peer
        assert n.call("Get", {"name": "miner"}).error == "io.beemesh.Mesh.WorkloadNotFound"
        assert labelled_pods(n) == []

    # bad text: an error naming the line; version 1 stays in force everywhere
    r = a.call("SetPolicy", {"name": "image-allowlist", "scope": "mesh",
                             "text": allowlist.replace("startswith(image, prefix)", "startswith(image, prefix")})
    assert r.error == "io.beemesh.Mesh.InvalidPolicy", r.err
    assert r.json["name"] == "image-allowlist" and r.json["line"] == 23, r.json
    assert policies(a)["image-allowlist"]["version"] == 1
    assert c.call("Deploy", {"manifest": evil}).error == "io.beemesh.Mesh.PolicyDenied"

    # a peer that is down when a policy changes catches up when it returns
    c.stop(signal.SIGKILL)
    r = a.call("SetPolicy", {"name": "max-replicas", "scope": "mesh",
                             "text": (EXAMPLES / "max-replicas.rego").read_text()})
    assert r.rc == 0, r.err
    r = a.call("RemovePolicy", {"name": "image-allowlist", "scope": "mesh"})
    assert r.rc == 0, r.err
    wait_for(lambda: set(policies(b)) == {"max-replicas"}, timeout=15, what="the change at b")
    restart(c)
    wait_for(lambda: set(policies(c)) == {"max-replicas"}, timeout=30, what="c caught up")
    r = c.call("Deploy", {"manifest": web("many", replicas=11)})
    assert r.error == "io.beemesh.Mesh.PolicyDenied" and r.json["policy"] == "max-replicas", r.err
    # ... and the allow-list is gone there too: an image it refused is admitted (dry run: no pull)
    assert c.call("Deploy", {"manifest": evil, "dryRun": True}).rc == 0
    info = c.call("GetInfo").json["info"]["counters"]
    assert info["forgedPolicies"] == 0

    # kept on disk: b, restarted alone (no peer to catch up from), still enforces it
    for n in (a, c):
        n.stop(signal.SIGKILL)
    b.stop()
    restart(b)
    assert set(policies(b)) == {"max-replicas"} and b.call("GetInfo").json["info"]["peersAlive"] == 0
    r = b.call("Deploy", {"manifest": web("many", replicas=11)})
    assert r.error == "io.beemesh.Mesh.PolicyDenied" and r.json["policy"] == "max-replicas", r.err


def test_node_local_deny_keeps_its_peer_out_and_survives_a_restart(policy_mesh):
    a, b, c = policy_mesh
    ids = peer_ids(policy_mesh)
    rego = b.home / "no-web.rego"
    rego.write_text(NO_WEB_HERE)
    shutil.chown(rego, b.user.uid, b.user.gid)
    p = ctl(b, "policy", "set", "no-web", str(rego))
    assert p.returncode == 0 and p.stdout == "policy/no-web set (node)\n", p.stderr
    assert (b.home / "config" / "policies" / "no-web.rego").read_text() == NO_WEB_HERE

    r = a.call("Deploy", {"manifest": web(replicas=4, port=free_port()), "wait": True, "timeoutSeconds": 90})
    assert r.rc == 0, r.err
    w = r.json["workloads"][0]
    assert w["readyReplicas"] == 4
    assert sorted({x["peer"] for x in w["replicaStatus"]}) == sorted([ids[0], ids[2]])
    assert labelled_pods(b) == [] and len(labelled_pods(a)) + len(labelled_pods(c)) == 4
    ex = c.call("Explain", {"name": "web"}).json["explanation"]
    for d in ex["decisions"]:
        declined = {x["peer"]: x["reason"] for x in d["declined"]}
        assert declined[ids[1]] == "policy no-web denied: web: no web servers on this peer"
        assert ids[1] not in {bid["peer"] for bid in d["bids"]}
    # b still bids on other work (where it lands is the auction's business: trust, spread)
    r = a.call("Deploy", {"manifest": web("api", replicas=3, port=free_port()), "wait": True,
                          "timeoutSeconds": 90})
    assert r.rc == 0, r.err
    ex = c.call("Explain", {"name": "api"}).json["explanation"]
    everything = ex["decisions"] + ex["history"]  # (a re-placement may avoid a peer for other reasons)
    assert any(ids[1] in bidders(d) for d in everything)
    assert not any(x["peer"] == ids[1] and "policy" in x["reason"] for d in everything for x in d["declined"])

    # the policy survives b's restart (a file in its config dir); scaling up still skips b
    b.stop()
    restart(b)
    wait_for(lambda: b.call("GetInfo").json["info"]["peersAlive"] == 2, what="b rejoined")
    wait_for(lambda: b.call("GetInfo").json["info"]["runtime"]["available"], what="b's runtime")
    assert policies(b, "node")["no-web"]["inForce"]
    r = a.call("Scale", {"name": "web", "replicas": 6, "wait": True, "timeoutSeconds": 90})
    assert r.rc == 0, r.err
    assert ids[1] not in {x["peer"] for x in r.json["workload"]["replicaStatus"]}
    assert not any(p["Labels"]["io.beemesh.workload"] == "web" for p in labelled_pods(b))
    new = [d for d in a.call("Explain", {"name": "web"}).json["explanation"]["decisions"]
           if d["replica"] in ("web-4", "web-5")]
    assert len(new) == 2 and all({x["peer"]: x["reason"] for x in d["declined"]}.get(ids[1], "").startswith(
        "policy no-web denied") for d in new), new

    # removed: b bids on web servers again
    p = ctl(b, "policy", "rm", "no-web")
    assert p.returncode == 0 and p.stdout == "policy/no-web removed (node)\n", p.stderr
    r = a.call("Deploy", {"manifest": web("web-two", replicas=3, port=free_port()), "wait": True,
                          "timeoutSeconds": 90})
    assert r.rc == 0, r.err
    ex = a.call("Explain", {"name": "web-two"}).json["explanation"]
    everything = ex["decisions"] + ex["history"]
    assert any(ids[1] in bidders(d) for d in everything)
    assert not any("policy" in x["reason"] for d in everything for x in d["declined"])


def bidders(decision) -> set:
    return {b["peer"] for b in decision["bids"]}


NOT_FORBIDDEN = ('package beemesh.bid\n\nimport rego.v1\n\n'
                 'deny contains "no forbidden tier here" if {\n'
                 '\tinput.manifest.spec.template.metadata.labels.tier == "forbidden"\n}\n')


def test_an_update_a_runners_policy_denies_moves_off_that_runner(policy_mesh):
    """A replica kept where it runs across an update was never bid for again: its runner asks its
    node-local policies itself, refuses, and the healer places it elsewhere."""
    a, b, c = policy_mesh
    ids = peer_ids(policy_mesh)
    port = free_port()
    r = a.call("Deploy", {"manifest": web("tiered", replicas=3, port=port), "wait": True, "timeoutSeconds": 90})
    assert r.rc == 0, r.err
    assert sorted(x["peer"] for x in r.json["workloads"][0]["replicaStatus"]) == sorted(ids)
    rego = b.home / "not-forbidden.rego"
    rego.write_text(NOT_FORBIDDEN)
    shutil.chown(rego, b.user.uid, b.user.gid)
    p = ctl(b, "policy", "set", "not-forbidden", str(rego))
    assert p.returncode == 0, p.stderr

    m = web("tiered", replicas=3, port=port)
    m["spec"]["template"]["metadata"]["labels"]["tier"] = "forbidden"
    r = a.call("Deploy", {"manifest": m})
    assert r.rc == 0, r.err

    def moved():
        w = c.call("Get", {"name": "tiered"}).json["workload"]
        return (w["generation"] == 2 and w["readyReplicas"] == 3
                and ids[1] not in {x["peer"] for x in w["replicaStatus"]})

    try:
        wait_for(moved, timeout=60, what="the refused replica runs elsewhere")
    except AssertionError:
        print(json.dumps(c.call("Get", {"name": "tiered"}).json, indent=1))
        print(json.dumps(c.call("Explain", {"name": "tiered"}).json, indent=1))
        for n in (a, b, c):
            print("=====", n.home, "\n", "\n".join(line for line in n.log_text().splitlines()
                                                  if "tiered" in line or "heal" in line or "placing" in line))
        raise
    wait_for(lambda: not any(p["Labels"]["io.beemesh.workload"] == "tiered" for p in labelled_pods(b)),
             timeout=30, what="b removed its old pod")
    ex = c.call("Explain", {"name": "tiered"}).json["explanation"]
    rules = [d["rule"] for d in ex["decisions"] + ex["history"]]
    assert any(f"re-placed (peer {ids[1]} refused it: policy not-forbidden denied: no forbidden tier here"
               in rule for rule in rules), rules
    for n in (a, c):  # refusing is no broken promise
        r = n.call("ListPeers", {}, "--more")
        seen = {x["peer"]["peerId"]: x["peer"] for x in r.lines}[ids[1]]
        assert seen["receipts"]["undelivered"] == 0 and seen["receipts"]["contradicted"] == 0, seen
