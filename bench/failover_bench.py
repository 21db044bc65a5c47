"""Node loss -> replacement serving: three real peers on rootless Podman, kill -9 the peer that
runs a replica, time until that replica answers HTTP on a survivor. The killed peer is restarted
(same identity) before the next run. Prints p50/p99 and n. Run as root (make bench)."""

from __future__ import annotations

import pwd
import shutil
import signal
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import open_mesh, summary  # noqa: E402
from tests.conftest import TEST_USER, User  # noqa: E402
from tests.integration.daemons import PodmanNode, free_port, wait_for  # noqa: E402
from tests.integration.test_runtime_daemon import web  # noqa: E402


def main(runs: int = 5) -> dict:
    pw = pwd.getpwnam(TEST_USER)
    user = User(pw.pw_name, pw.pw_uid, pw.pw_gid, Path(pw.pw_dir))
    nodes = []
    samples = []
    try:
        for i in range(3):
            cfg = {"publish_host_ip": f"127.0.{i + 1}.1", "mesh_mdns": False, "log_level": "warning", **open_mesh()}
            if nodes:
                cfg["mesh_bootstrap"] = nodes[0].call("GetInfo").json["info"]["meshAddresses"]
            n = PodmanNode(user, user.tempdir(), cfg).prepare()
            nodes.append(n)  # first: a node that fails to start is still stopped and cleaned up
            n.start(timeout=60)
        ids = [n.call("GetInfo").json["info"]["peerId"] for n in nodes]
        for n in nodes:
            wait_for(lambda n=n: n.call("GetInfo").json["info"]["peersAlive"] == 2
                 and n.call("GetInfo").json["info"]["runtime"]["available"], 60, "the mesh and Podman")
        port = free_port()
        r = nodes[0].call("Deploy", {"manifest": web(replicas=3, port=port), "wait": True, "timeoutSeconds": 60})
        assert r.rc == 0, r.err
        for run in range(runs):
            w = nodes[0].call("Get", {"name": "web"}).json["workload"]
            victim = 1 + run % 2  # alternate between peers 2 and 3 (peer 1 asks)
            lost = [x["name"] for x in w["replicaStatus"] if x["peer"] == ids[victim]]
            if not lost:
                continue
            nodes[victim].stop(signal.SIGKILL)
            t0 = time.monotonic()

            def serving():
                x = nodes[0].call("Get", {"name": "web"}).json["workload"]
                rows = {r["name"]: r for r in x["replicaStatus"]}
                for name in lost:
                    if rows[name]["peer"] == ids[victim]:
                        return False
                    p = next((p for p in x["ports"] if p["replica"] == name), None)
                    if p is None or not nodes[0].http(p["hostIP"], p["hostPort"], timeout=0.3):
                        return False
                return True

            wait_for(serving, 60, f"{lost} serving again")
            samples.append(time.monotonic() - t0)
            nodes[victim].cleanup()  # its old pods: the "machine" is gone
            nodes[victim] = PodmanNode(user, nodes[victim].home, nodes[victim].extra_config)  # same identity
            nodes[victim].start(timeout=60)
            wait_for(lambda: nodes[0].call("GetInfo").json["info"]["peersAlive"] == 2, 60, "the killed peer to rejoin")
            # let the rejoined peer take work again: scale down and up
            nodes[0].call("Scale", {"name": "web", "replicas": 1, "wait": True, "timeoutSeconds": 60})
            nodes[0].call("Scale", {"name": "web", "replicas": 3, "wait": True, "timeoutSeconds": 60})
    finally:
        for n in nodes:
            if n.proc is not None and n.proc.poll() is None:
                n.stop()
            n.cleanup()
            shutil.rmtree(n.home, ignore_errors=True)
    s = summary(samples)
    print(f"node loss -> replacement serving (3 peers, real Podman): p50 {s['p50']:.2f} s, p99 {s['p99']:.2f} s "
          f"(n={s['n']})")
    return s


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 5)
