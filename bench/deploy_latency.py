"""Deploy(wait) -> first HTTP 200, side by side with `podman kube play` of the same manifest and
with a raw `podman run -d -p` of the same container (no pod, no infra container: the floor).

Run as root (make bench). One beemeshd (as the test user) with its own Podman store; kube play
and podman run use that same store, so all pay the same costs. Runs alternate (BeeMesh, kube play,
podman run, ...) so drift in the machine's load hits all equally. Prints p50/p99 and the sample
count of each.
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import socket
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import summary  # noqa: E402
from tests.conftest import IMAGE, TEST_USER, User  # noqa: E402
from tests.integration.daemons import PodmanNode, free_port  # noqa: E402


def manifest(name: str, port: int) -> dict:
    return {
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name},
        "spec": {"replicas": 1, "selector": {"matchLabels": {"app": name}},
                 "template": {"metadata": {"labels": {"app": name}}, "spec": {"containers": [{
                     "name": "httpd", "image": IMAGE, "command": ["httpd", "-f", "-p", "8080", "-h", "/var/www"],
                     "ports": [{"containerPort": 8080, "hostPort": port}]}]}}},
    }


def first_200(port: int, deadline: float) -> None:
    while time.perf_counter() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=1) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.005)
    raise TimeoutError(f"no HTTP 200 on port {port}")


class Varlink:
    def __init__(self, path: Path):
        self.s = socket.socket(socket.AF_UNIX)
        self.s.connect(str(path))
        self.buf = b""

    def call(self, method: str, params: dict) -> dict:
        self.s.sendall(json.dumps({"method": f"io.beemesh.Mesh.{method}", "parameters": params}).encode() + b"\0")
        while b"\0" not in self.buf:
            self.buf += self.s.recv(1 << 20)
        msg, _, self.buf = self.buf.partition(b"\0")
        reply = json.loads(msg)
        if "error" in reply:
            raise RuntimeError(f"{method}: {reply}")
        return reply["parameters"]


def main(n: int = 30) -> dict:
    pw = pwd.getpwnam(TEST_USER)
    user = User(pw.pw_name, pw.pw_uid, pw.pw_gid, Path(pw.pw_dir))
    home = Path(tempfile.mkdtemp(prefix="beemesh-bench-"))
    os.chown(home, user.uid, user.gid)
    node = PodmanNode(user, home, {"log_level": "warning"}).prepare()
    beemesh, kube, run = [], [], []
    try:
        node.start(timeout=60)
        while not node.call("GetInfo").json["info"]["runtime"]["available"]:
            time.sleep(0.1)
        v = Varlink(node.socket_path)
        kube_file = home / "kube.yaml"
        for i in range(n + 2):  # the first two rounds warm caches and are dropped
            port = free_port()
            t0 = time.perf_counter()
            v.call("Deploy", {"manifest": manifest("bm", port), "wait": True, "timeoutSeconds": 60})
            first_200(port, t0 + 60)
            t_bm = time.perf_counter() - t0
            v.call("Delete", {"name": "bm", "wait": True, "timeoutSeconds": 60})

            port = free_port()
            kube_file.write_text(json.dumps(manifest("kp", port)))
            os.chown(kube_file, user.uid, user.gid)
            t0 = time.perf_counter()
            p = node.podman("kube", "play", str(kube_file))
            assert p.returncode == 0, p.stderr
            first_200(port, t0 + 60)
            t_kp = time.perf_counter() - t0
            node.podman("pod", "kill", "kp-pod-0")
            node.podman("pod", "rm", "-f", "kp-pod-0")

            port = free_port()
            t0 = time.perf_counter()
            p = node.podman("run", "-d", "--name", "pr", "-p", f"127.0.0.1:{port}:8080", IMAGE,
                            "httpd", "-f", "-p", "8080", "-h", "/var/www")
            assert p.returncode == 0, p.stderr
            first_200(port, t0 + 60)
            t_run = time.perf_counter() - t0
            node.podman("rm", "-f", "-t", "0", "pr")
            if i >= 2:
                beemesh.append(t_bm)
                kube.append(t_kp)
                run.append(t_run)
        time.sleep(2)
        with open(f"/proc/{node.proc.pid}/status") as f:
            rss = next(int(line.split()[1]) / 1024 for line in f if line.startswith("VmRSS:"))
    finally:
        node.stop()
        node.cleanup()
        shutil.rmtree(home, ignore_errors=True)
    b, k, r = summary(beemesh), summary(kube), summary(run)
    print(f"Deploy(wait) -> first HTTP 200: p50 {b['p50']:.3f} s, p99 {b['p99']:.3f} s (n={b['n']})")
    print(f"podman kube play -> first HTTP 200: p50 {k['p50']:.3f} s, p99 {k['p99']:.3f} s (n={k['n']})")
    print(f"podman run -d -p -> first HTTP 200: p50 {r['p50']:.3f} s, p99 {r['p99']:.3f} s (n={r['n']})")
    print(f"ratio to kube play p50 {b['p50'] / k['p50']:.2f}, p99 {b['p99'] / k['p99']:.2f}; "
          f"to podman run p50 {b['p50'] / r['p50']:.2f}, p99 {b['p99'] / r['p99']:.2f}")
    print(f"beemeshd RSS after the runs (podman-py loaded, pods idle): {rss:.1f} MB")
    return {"beemesh": b, "kube": k, "run": r, "rss_after_mb": rss}


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 30)
