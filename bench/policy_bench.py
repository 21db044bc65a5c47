"""Policy evaluation per decision, in-process (regopy / rego-cpp), as the daemon does it:

- admission: PolicyStore.admit() on one Deployment — the input document built, converted once,
  each mesh-wide policy's compiled bundle queried — with 1 policy (image-allowlist) and with the
  five example admission policies (image allow-list, no hostPath, required requests, hostPort
  range, max replicas);
- bid: the bid gate with 1 node-local policy (bid-origin-allowlist), as Placement calls it;
- compiling one policy (SetPolicy, a document received from the mesh).
Prints p50/p99 and n for each; `rows()` gives them to bench/run_all.py.

    python bench/policy_bench.py [N]
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from bench.common import summary  # noqa: E402
from beemeshd import errors  # noqa: E402
from beemeshd.core import policy_doc as pd  # noqa: E402
from beemeshd.policy import compile_policy  # noqa: E402
from beemeshd.policy_store import PolicyStore  # noqa: E402

EXAMPLES = HERE.parent / "examples" / "policies"
ADMISSION = ["image-allowlist", "no-hostpath", "require-requests", "hostport-range", "max-replicas"]
PEER = {"id": "12D3KooWBenchPeer", "labels": {"zone": "a"}, "runtime": "podman 4.3.1", "network": "slirp4netns",
        "version": "0.1.0", "capacity": {"cpuMillis": 2000, "cpuFreeMillis": 1500, "memoryBytes": 4 << 30,
                                         "memoryFreeBytes": 3 << 30, "pods": 110, "podsFree": 100}}
MANIFEST = {
    "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web", "namespace": "default"},
    "spec": {"replicas": 3, "selector": {"matchLabels": {"app": "web"}},
             "template": {"metadata": {"labels": {"app": "web"}}, "spec": {"containers": [
                 {"name": "httpd", "image": "localhost/beemesh-busybox:latest",
                  "command": ["httpd", "-f", "-v", "-p", "8080", "-h", "/var/www"],
                  "ports": [{"containerPort": 8080, "hostPort": 30080}],
                  "resources": {"requests": {"cpu": "50m", "memory": "16Mi"}, "limits": {"memory": "64Mi"}},
                  "readinessProbe": {"httpGet": {"path": "/", "port": 8080}, "periodSeconds": 1}}]}}},
}


class _Keys:
    """Stands in for the mesh key: documents go in as if received and verified."""

    mesh_id = "bench"

    def verify(self, payload, signature) -> bool:
        return True


def _store(tmp: Path, names: list[str]) -> PolicyStore:
    s = PolicyStore(tmp / "config", tmp / "state", PEER["id"], keys=_Keys)
    for i, name in enumerate(names, 1):
        doc = pd.PolicyDoc(name, 1, (EXAMPLES / f"{name}.rego").read_text(), "bench", i, "0" * 128)
        assert s.receive(doc.to_wire()), name
    return s


def _time(fn, n: int) -> dict:
    """Wall-clock summary in ms, plus the CPU time of the same calls ("cpu"): on a shared, loaded
    machine the wall p99 is mostly time spent preempted."""
    for _ in range(min(50, n)):  # warm up
        fn()
    wall, cpu = [], []
    for _ in range(n):
        t0, c0 = time.perf_counter(), time.thread_time()
        fn()
        wall.append(time.perf_counter() - t0)
        cpu.append(time.thread_time() - c0)
    return {**summary(wall, 1000), "cpu": summary(cpu, 1000)}


def main(n: int = 2000) -> dict:
    out = {}
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        for label, names in (("admit_1", ADMISSION[:1]), ("admit_5", ADMISSION)):
            s = _store(tmp / label, names)
            out[label] = _time(lambda: s.admit([MANIFEST], user="alice", peer=PEER, operation="Deploy"), n)
        denied = dict(MANIFEST, spec=dict(MANIFEST["spec"], replicas=50))
        s = _store(tmp / "deny", ADMISSION)

        def admit_denied():
            try:
                s.admit([denied], user="alice", peer=PEER, operation="Deploy")
            except errors.PolicyDenied:
                return
            raise AssertionError("max-replicas did not deny")

        out["admit_5_deny"] = _time(admit_denied, n)
        node = PolicyStore(tmp / "node" / "config", tmp / "node" / "state", PEER["id"], keys=_Keys)
        (tmp / "node" / "config" / "policies").mkdir(parents=True)
        (tmp / "node" / "config" / "policies" / "bid-origin-allowlist.rego").write_text(
            (EXAMPLES / "bid-origin-allowlist.rego").read_text())
        node.load()
        gate = node.bid_gate(lambda: PEER)
        assert gate(MANIFEST, "12D3KooWStranger") and gate(MANIFEST, PEER["id"]) is None
        out["bid_1"] = _time(lambda: gate(MANIFEST, "12D3KooWStranger"), n)
    text = (EXAMPLES / "image-allowlist.rego").read_text()
    out["compile"] = _time(lambda: compile_policy("image-allowlist", "mesh", text), max(50, n // 20))
    for key, what in (("admit_1", "admission, 1 mesh policy (allows)"),
                      ("admit_5", "admission, the 5 example policies (all allow)"),
                      ("admit_5_deny", "admission, the 5 example policies (max-replicas denies)"),
                      ("bid_1", "bid gate, 1 node policy (denies)"),
                      ("compile", "compiling one policy (image-allowlist)")):
        s = out[key]
        print(f"policy {what}: p50 {s['p50']:.3f} ms, p99 {s['p99']:.3f} ms (n={s['n']}); "
              f"CPU time p50 {s['cpu']['p50']:.3f} ms, p99 {s['cpu']['p99']:.3f} ms")
    with open("/proc/loadavg") as f:
        print(f"(load average during the run: {f.read().split()[0]})")
    return out


def rows() -> list[tuple]:
    r = main()

    def fig(s):
        return (f"{s['p50']:.3f} / {s['p99']:.3f} ms (n={s['n']}; CPU time {s['cpu']['p50']:.3f} / "
                f"{s['cpu']['p99']:.3f} ms)")

    return [
        ("Policy evaluation per admission decision (Deploy of one Deployment), 1 mesh policy, p50 / p99",
         fig(r["admit_1"]), "—", "—", "≈ 1 ms (issue 10)"),
        ("  … with the 5 example policies (all allow / max-replicas denies)", fig(r["admit_5"]),
         f"denied: {fig(r['admit_5_deny'])}", "—", "—"),
        ("Policy evaluation per bid (node-local gate, 1 policy), p50 / p99", fig(r["bid_1"]), "—", "—", "—"),
        ("Compiling one policy (SetPolicy / a received document), p50 / p99", fig(r["compile"]), "—", "—", "—"),
    ]


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 2000)
