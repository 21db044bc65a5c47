"""A StatefulSet's claim on one real beemeshd + rootless Podman: each ordinal's named volume is
created on its holder, keeps its data across a killed container, Scale 0 -> 1 and Delete +
Deploy, and carries the fencing token its pod was last started under."""

from __future__ import annotations

import json
import time
from pathlib import Path

from tests.conftest import IMAGE
from tests.integration.daemons import wait_for

VOLUME = "data-store-0.default"


def statefulset() -> dict:
    # every start of the container appends a line to a file in the claim volume
    c = {"name": "app", "image": IMAGE, "command": ["sh", "-c", "echo start >> /data/starts; exec sleep 100000"],
         "volumeMounts": [{"name": "data", "mountPath": "/data"}]}
    spec = {"replicas": 1, "serviceName": "store", "selector": {"matchLabels": {"app": "store"}},
            "template": {"metadata": {"labels": {"app": "store"}},
                         "spec": {"containers": [c], "terminationGracePeriodSeconds": 1}},
            "volumeClaimTemplates": [{"metadata": {"name": "data"}, "spec": {
                "accessModes": ["ReadWriteOnce"], "storageClassName": "ignored",
                "resources": {"requests": {"storage": "100Mi"}}}}]}
    return {"apiVersion": "apps/v1", "kind": "StatefulSet", "metadata": {"name": "store"}, "spec": spec}


def volume(node) -> dict | None:
    p = node.podman("volume", "inspect", VOLUME)
    return json.loads(p.stdout)[0] if p.returncode == 0 else None


def starts(node) -> int:
    path = Path(volume(node)["Mountpoint"]) / "starts"
    return len(path.read_text().splitlines()) if path.exists() else 0


def wait_starts(node, n, what):
    """At least n lines (every start of the container appends one)."""
    try:
        wait_for(lambda: starts(node) >= n, 30, what)
    except AssertionError:
        print(node.log_text()[-5000:])
        raise


def fence(node) -> int:
    return int((Path(volume(node)["Mountpoint"]) / ".beemesh-fence").read_text())


def fenced(node) -> int:
    """The token the pod now runs under, once the volume's fence file holds it."""
    return wait_for(lambda: (t := token(node)) == fence(node) and t, 30, "the token in the volume")


def token(node) -> int:
    row = wait_for(lambda: (r := node.call("Get", {"name": "store"})).rc == 0
                   and (x := r.json["workload"]["replicaStatus"][0]).get("lease") and x, 30, "the lease")
    return row["lease"]["token"]


def ready(node, replicas: int = 1) -> None:
    wait_for(lambda: (r := node.call("Get", {"name": "store"})).rc == 0
             and r.json["workload"]["readyReplicas"] == replicas, 60, f"{replicas} ready")


def test_a_claim_volume_keeps_its_data_and_carries_the_fence_token(node):
    r = node.call("Deploy", {"manifest": statefulset(), "wait": True, "timeoutSeconds": 60})
    assert r.rc == 0, r.err
    v = volume(node)
    assert v is not None
    labels = v["Labels"]
    assert labels["io.beemesh.managed"] == "true" and labels["io.beemesh.claim"] == "data"
    assert (labels["io.beemesh.workload"], labels["io.beemesh.ordinal"]) == ("store", "0")
    assert "io.beemesh.pod" not in labels
    wait_starts(node, 1, "the first start's line")
    first = fenced(node)

    # the container dies: restarted in the same pod, the same volume
    node.podman("kill", "store-0.default-app")
    wait_starts(node, 2, "the restarted container's line")

    # scale 0 -> 1: the pod is removed and created again; the volume stays
    r = node.call("Scale", {"name": "store", "replicas": 0, "wait": True, "timeoutSeconds": 60})
    assert r.rc == 0, r.err
    wait_for(lambda: node.podman("pod", "exists", "store-0.default").returncode != 0, 30, "the pod is gone")
    assert volume(node) is not None and starts(node) == 2  # kept, with its data
    r = node.call("Scale", {"name": "store", "replicas": 1, "wait": True, "timeoutSeconds": 60})
    assert r.rc == 0, r.err
    ready(node)
    wait_starts(node, 3, "the new pod's line")
    second = fenced(node)
    # one start for the scale up: never under the lease being given back, then again (README)
    time.sleep(2)
    assert starts(node) == 3
    assert second >= first

    # Delete keeps it (Retain); a new Deploy finds the data
    r = node.call("Delete", {"name": "store", "wait": True, "timeoutSeconds": 60})
    assert r.rc == 0, r.err
    wait_for(lambda: node.podman("pod", "exists", "store-0.default").returncode != 0, 30, "the pod is gone")
    count = starts(node)
    assert volume(node) is not None and count >= 3
    r = node.call("Deploy", {"manifest": statefulset(), "wait": True, "timeoutSeconds": 60})
    assert r.rc == 0, r.err
    wait_starts(node, count + 1, "the redeployed pod's line")
    third = fenced(node)  # not lower: the new group's floor comes from the fence files
    assert third >= second
