"""StatefulSet failover on three real peers (rootless Podman each, loopback, default settings:
15 s leases): how long an ordinal is down when its holder's daemon
- is killed with SIGKILL (its pod is killed by the lease watchdog, the group re-grants the
  ordinal after the lease wait W ≈ 15.5 s, the new holder renews and starts the pod), and
- is stopped with SIGTERM (it stops the pod and releases the lease: the ordinal moves at once).
Time from the signal to the ordinal's pod running on another peer. The stopped peer is started
again (same identity, a new group member id) before the next run. Prints p50/p99 and n.
Run as root (make bench): `python bench/stateful_failover_bench.py [--runs 3]`.
"""

from __future__ import annotations

import argparse
import json
import pwd
import shutil
import signal
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import summary  # noqa: E402
from tests.conftest import IMAGE, TEST_USER, User  # noqa: E402
from tests.integration.daemons import PodmanNode, TestMesh, wait_for  # noqa: E402
from tests.integration.test_stateful import kill_watchdogs, running_pods  # noqa: E402


def statefulset(name: str) -> dict:
    c = {"name": "app", "image": IMAGE, "command": ["sleep", "100000"]}
    spec = {"replicas": 1, "serviceName": name, "selector": {"matchLabels": {"app": name}},
            "template": {"metadata": {"labels": {"app": name}},
                         "spec": {"containers": [c], "terminationGracePeriodSeconds": 1}}}
    return {"apiVersion": "apps/v1", "kind": "StatefulSet", "metadata": {"name": name}, "spec": spec}


def main(runs: int = 3) -> dict:
    pw = pwd.getpwnam(TEST_USER)
    user = User(pw.pw_name, pw.pw_uid, pw.pw_gid, Path(pw.pw_dir))
    mesh = TestMesh()
    nodes: list[PodmanNode] = []
    out: dict[str, list[float]] = {"sigkill": [], "sigterm": []}
    try:
        for i in range(3):
            cfg = {"mesh_mdns": False, "mesh_listen": ["/ip4/127.0.0.1/tcp/0"], "log_level": "info"}
            if nodes:
                cfg["mesh_bootstrap"] = nodes[0].call("GetInfo").json["info"]["meshAddresses"]
            n = PodmanNode(user, user.tempdir(), cfg).prepare()
            mesh.admit(n)
            n.start(timeout=60)
            nodes.append(n)
        ids = []
        for n in nodes:
            wait_for(lambda n=n: n.call("GetInfo").json["info"]["peersAlive"] == 2, 60, "full mesh view")
            wait_for(lambda n=n: n.call("GetInfo").json["info"]["runtime"]["available"], 60, "runtime")
            ids.append(n.call("GetInfo").json["info"]["peerId"])
        r = nodes[0].call("Deploy", {"manifest": statefulset("db"), "wait": True, "timeoutSeconds": 120}, timeout=150)
        assert r.rc == 0, r.err
        for run in range(runs):
            for how, sig in (("sigkill", signal.SIGKILL), ("sigterm", signal.SIGTERM)):
                holder = wait_for(lambda: [i for i, n in enumerate(nodes) if running_pods(n, "db")], 120,
                                  "one holder")[0]
                others = [i for i in range(3) if i != holder]
                t0 = time.monotonic()
                nodes[holder].proc.send_signal(sig)
                wait_for(lambda: any(running_pods(nodes[i], "db") for i in others), 120, "the ordinal elsewhere",
                         interval=0.05)
                took = time.monotonic() - t0
                out[how].append(took)
                print(f"run {run + 1} {how}: ordinal running on another peer after {took:.2f} s", flush=True)
                nodes[holder].proc.wait(30)
                wait_for(lambda: not running_pods(nodes[holder], "db"), 60, "the old pod gone")
                other = nodes[others[0]].call("GetInfo").json["info"]["meshAddresses"]
                nodes[holder].extra_config["mesh_bootstrap"] = other  # its port changed: it dials in
                nodes[holder].start(timeout=60)  # same identity, back in the mesh and (re)joins the group
                wait_for(lambda: nodes[holder].call("GetInfo").json["info"]["peersAlive"] == 2, 60, "rejoined")
                time.sleep(5)  # let it rejoin the group
        return {k: summary(v) for k, v in out.items()}
    finally:
        for n in nodes:
            if n.proc and n.proc.poll() is None:
                n.stop(signal.SIGKILL)
            kill_watchdogs(n)
            n.cleanup()
            shutil.rmtree(n.home, ignore_errors=True)


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=3)
    print(json.dumps(main(ap.parse_args().runs), indent=1))
