"""An ordinal with a claim moves to a fresh volume: three real beemeshd peers, each with its own
rootless Podman store (tests/integration/daemons.py `podman_mesh`, loopback). The ordinal's pod
runs on one peer with its claim volume `data-mover-0.default`; data is written into it; the
holder's daemon is killed with SIGKILL. Then the ordinal runs on another peer under a higher
token, in a volume of the same name there that starts empty (nothing is copied: README,
"Moving"), and the old volume on the dead daemon's peer is untouched (its own Podman says so).
The start/stop history the daemons and lease watchdogs logged passes the checker. Four peers and
groups of three: the peer outside the group shows the lease in Get and the group in Explain too
(it asks the members).
Leases are 6 s here (15 s by default), so the move takes W ≈ 6.5 s plus an election and a start.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from beemeshd.core.history_check import check
from tests.conftest import IMAGE
from tests.integration.daemons import peer_ids, podman_mesh, wait_for
from tests.integration.test_stateful import history, kill_watchdogs, running_pods

NAME = "mover"
VOLUME = f"data-{NAME}-0.default"  # CLAIM-NAME-ORDINAL.NAMESPACE
CONFIG = {"lease_seconds": 6.0, "lease_stop_margin_seconds": 2.0, "log_level": "info"}
WAIT = 6.0 * 1.001 / 0.999 + 0.5  # W: what the group waits after the holder's last renewal


def statefulset() -> dict:
    # every start of the container appends a line to a file in its claim volume
    c = {"name": "app", "image": IMAGE, "command": ["sh", "-c", "echo start >> /data/starts; exec sleep 100000"],
         "volumeMounts": [{"name": "data", "mountPath": "/data"}]}
    spec = {"replicas": 1, "serviceName": NAME, "selector": {"matchLabels": {"app": NAME}},
            "template": {"metadata": {"labels": {"app": NAME}},
                         "spec": {"containers": [c], "terminationGracePeriodSeconds": 1}},
            "volumeClaimTemplates": [{"metadata": {"name": "data"}, "spec": {
                "accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "100Mi"}}}}]}
    return {"apiVersion": "apps/v1", "kind": "StatefulSet", "metadata": {"name": NAME}, "spec": spec}


def volume_files(node) -> dict[str, bytes] | None:
    """The claim volume's files on `node` (read through its mount point), None without the volume."""
    p = node.podman("volume", "inspect", VOLUME)
    if p.returncode != 0:
        return None
    top = Path(json.loads(p.stdout)[0]["Mountpoint"])
    return {str(f.relative_to(top)): f.read_bytes() for f in sorted(top.rglob("*")) if f.is_file()}


def row0(node) -> dict | None:
    r = node.call("Get", {"name": NAME})
    return r.json["workload"]["replicaStatus"][0] if r.rc == 0 else None


def test_a_killed_holders_ordinal_runs_elsewhere_on_a_fresh_volume_and_the_old_one_stays(user, varlinkctl):
    with podman_mesh(user, 4, config=lambda i: CONFIG) as nodes:
        try:
            ids = peer_ids(nodes)
            r = nodes[0].call("Deploy", {"manifest": statefulset(), "wait": True, "timeoutSeconds": 120},
                              timeout=150)
            assert r.rc == 0, r.err
            row = wait_for(lambda: (x := row0(nodes[0])) and x.get("lease") and x["ready"] and x, 60,
                           "the ordinal ready under a lease")
            old = ids.index(row["peer"])
            token = row["lease"]["token"]
            holder = nodes[old]
            assert [i for i, n in enumerate(nodes) if volume_files(n) is not None] == [old]  # only there

            def outsider_sees_it():
                ex = holder.call("Explain", {"name": NAME}).json["explanation"]["group"]
                out = [n for i, n in enumerate(nodes) if ids[i] not in ex["members"]]
                lease = (row0(out[0]) or {}).get("lease") if len(ex["members"]) == 3 and len(out) == 1 else None
                return lease and lease["holder"] == ids[old] and lease["token"] == token and lease

            lease = wait_for(outsider_sees_it, 30, "the lease in Get on the peer outside the group")
            assert lease["expiresUSec"] > time.time() * 1e6
            # and the group in Explain there (it asks the members too)
            # (a peer the leader added for a moment and removed again keeps its own stale view until
            # it notices, ORPHAN_AFTER without a leader: wait for the views to agree)
            def explained_outside():
                ex = holder.call("Explain", {"name": NAME}).json["explanation"]["group"]
                [out] = [n for i, n in enumerate(nodes) if ids[i] not in ex["members"]]
                seen = out.call("Explain", {"name": NAME}).json["explanation"]["group"]
                return seen and sorted(seen["members"]) == sorted(ex["members"]) and (seen, ex)

            seen, ex = wait_for(explained_outside, 30, "the group in Explain on the peer outside it")
            assert sorted(seen["members"]) == sorted(ex["members"]) and seen["leader"] in ex["members"]
            assert seen["term"] >= 1

            # the ordinal writes its data into the volume
            marker = f"written on {ids[old]} at {time.time()}\n"
            p = holder.podman("exec", f"{NAME}-0.default-app", "sh", "-c", f"printf '{marker}' > /data/marker")
            assert p.returncode == 0, p.stderr
            before = wait_for(lambda: (f := volume_files(holder)) and f.get("starts") == b"start\n"
                              and "marker" in f and f, 30, "the data in the old volume")
            assert before["marker"] == marker.encode() and int(before[".beemesh-fence"]) == token

            t_kill = time.monotonic()
            holder.proc.kill()  # SIGKILL: its pod runs on until the lease watchdog kills it
            holder.proc.wait()
            survivors = [i for i in range(4) if i != old]
            # (a member's table, or a non-member's answer from one, can trail the new holder's by a
            # heartbeat: wait until the row and its lease agree)
            try:
                back = wait_for(lambda: (x := row0(nodes[survivors[0]])) and x["peer"] != ids[old]
                                and x["state"] in ("running", "ready") and x.get("lease")
                                and x["lease"]["holder"] == x["peer"] and x, 90, "the ordinal running on another peer")
            except AssertionError:
                for i in survivors:
                    print(i, ids[i], row0(nodes[i]), nodes[i].call("Explain", {"name": NAME}).out[-3000:])
                raise
            took = time.monotonic() - t_kill
            new = ids.index(back["peer"])
            print(f"\nmoved from peer {old} to {new} {took:.1f} s after kill -9 (lease 6 s, W {WAIT:.1f} s)")
            assert back["lease"]["token"] > token, (back, token)
            assert not running_pods(holder, NAME)  # the watchdog killed the orphaned pod

            # the new peer's volume has the documented name, and started empty: only its own start
            fresh = wait_for(lambda: (f := volume_files(nodes[new])) and "starts" in f and f, 30,
                             "the fresh volume on the new peer")
            assert fresh["starts"] == b"start\n" and "marker" not in fresh
            assert int(fresh[".beemesh-fence"]) == back["lease"]["token"]
            # the old one, on the dead daemon's peer, is exactly as it was
            assert volume_files(holder) == before
            assert check(history(nodes, NAME), eps=0.05) == []
        finally:
            for n in nodes:
                kill_watchdogs(n)
