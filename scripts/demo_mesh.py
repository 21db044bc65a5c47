"""The main job: a small local mesh deploying a real workload, and healing it.

Three beemeshd peers on this machine (as the test user), each with its own rootless Podman store
and API socket and its own loopback addresses. Peer 1 creates a mesh (`beemeshctl mesh init`),
invites the others with one-time join tokens (`mesh invite`), and they join (`mesh join`): they
meet over libp2p on loopback, each checking the others' credentials. A 3-replica web
Deployment is applied on one peer, served from all three; then that peer is killed (kill -9) and
its replica comes back on a survivor — printed as it happens. Run as root: `make demo`.
"""

from __future__ import annotations

import pwd
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.conftest import TEST_USER, VENV, User  # noqa: E402
from tests.integration.daemons import PodmanNode  # noqa: E402

PORT = 18080
T0 = time.monotonic()


def say(text: str) -> None:
    print(f"[{time.monotonic() - T0:6.2f}s] {text}", flush=True)


def ctl(node: PodmanNode, *args: str) -> str:
    p = node.user.run([str(VENV / "bin" / "beemeshctl"), *args], env=node.user.env(BEEMESH_ADDRESS=node.address))
    if p.returncode:
        raise SystemExit(f"beemeshctl {' '.join(args)} failed: {p.stderr.strip()}")
    return p.stdout


def wait(pred, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = pred()
        if v:
            return v
        time.sleep(0.1)
    raise SystemExit(f"demo: timed out waiting for {what}")


def main() -> None:
    pw = pwd.getpwnam(TEST_USER)
    user = User(pw.pw_name, pw.pw_uid, pw.pw_gid, Path(pw.pw_dir))
    nodes: list[PodmanNode] = []
    watcher = None
    try:
        for i in range(3):
            # a member listens on every address; the demo keeps its mesh on loopback
            cfg = {"publish_host_ip": f"127.0.{i + 1}.1", "mesh_mdns": False, "log_level": "info",
                   "mesh_listen": ["/ip4/127.0.0.1/tcp/0"]}
            node = PodmanNode(user, user.tempdir(), cfg).prepare()
            node.start()
            nodes.append(node)
            info = node.call("GetInfo").json["info"]
            say(f"peer {i + 1} up: {info['peerId']} (pods publish on 127.0.{i + 1}.x, own Podman store)")
            if i == 0:
                say("beemeshctl mesh init --name demo   (on peer 1: a new mesh key and its own credential)")
                print(ctl(node, "mesh", "init", "--name", "demo"), end="", flush=True)
            else:
                token = ctl(nodes[0], "mesh", "invite").strip()
                say(f"beemeshctl mesh invite   (on peer 1) -> one-time join token {token[:24]}…")
                say(f"beemeshctl mesh join TOKEN   (on peer {i + 1}: redeemed at peer 1 for its own credential)")
                print(ctl(node, "mesh", "join", token), end="", flush=True)
        ids = [n.call("GetInfo").json["info"]["peerId"] for n in nodes]
        for n in nodes:
            wait(lambda n=n: n.call("GetInfo").json["info"]["peersAlive"] == 2, 20, "the mesh to form")
            wait(lambda n=n: n.call("GetInfo").json["info"]["runtime"]["available"], 30, "Podman")
        say("every peer sees the other two:")
        print(ctl(nodes[1], "peers"), flush=True)
        say("beemeshctl mesh status   (on peer 2)")
        print(ctl(nodes[1], "mesh", "status"), flush=True)

        manifest = nodes[0].home / "web.yaml"
        text = (ROOT / "examples" / "web.yaml").read_text().replace("replicas: 2", "replicas: 3")
        manifest.write_text(text)
        say("beemeshctl apply -f web.yaml --wait   (on peer 1; 3 replicas)")
        print(ctl(nodes[0], "apply", "-f", str(manifest), "--wait", "--timeout", "90"), end="", flush=True)
        say("beemeshctl get web -o wide   (asked on peer 2)")
        print(ctl(nodes[1], "get", "web", "-o", "wide"), flush=True)
        w = nodes[2].call("Get", {"name": "web"}).json["workload"]
        for p in w["ports"]:
            body = nodes[0].http(p["hostIP"], p["hostPort"])
            say(f"curl http://{p['hostIP']}:{p['hostPort']}/  ({p['replica']}) -> {body.strip() if body else 'no answer'}")

        watcher = subprocess.Popen(nodes[1].user.argv([str(VENV / "bin" / "beemeshctl"), "watch", "--no-peers"]),
                                   env=nodes[1].user.env(BEEMESH_ADDRESS=nodes[1].address),
                                   stdout=subprocess.PIPE, text=True, cwd=str(nodes[1].home))
        threading.Thread(target=lambda: [say(f"watch on peer 2: {line.rstrip()}") for line in watcher.stdout],
                         daemon=True).start()
        time.sleep(0.5)
        victim = next(i for i in range(3) if any(r["peer"] == ids[i] for r in w["replicaStatus"]))
        lost = [r["name"] for r in w["replicaStatus"] if r["peer"] == ids[victim]]
        say(f"kill -9 peer {victim + 1} (it runs {', '.join(lost)})")
        nodes[victim].stop(signal.SIGKILL)
        killed = time.monotonic()
        alive = [n for i, n in enumerate(nodes) if i != victim]

        def healed():
            x = alive[0].call("Get", {"name": "web"}).json["workload"]
            rows = {r["name"]: r for r in x["replicaStatus"]}
            ok = x["readyReplicas"] == 3 and all(rows[r]["peer"] != ids[victim] for r in lost)
            return ok and x

        x = wait(healed, 60, "the lost replica to come back")
        say(f"healed {time.monotonic() - killed:.2f} s after the kill: 3/3 ready without peer {victim + 1}")
        print(ctl(alive[0], "get", "web", "-o", "wide"), flush=True)
        for p in x["ports"]:
            if p["replica"] in lost:
                body = alive[0].http(p["hostIP"], p["hostPort"])
                say(f"curl http://{p['hostIP']}:{p['hostPort']}/  ({p['replica']}, moved) -> "
                    f"{body.strip() if body else 'no answer'}")
        say("beemeshctl delete web --wait   (on the last peer)")
        print(ctl(alive[-1], "delete", "web", "--wait"), end="", flush=True)
    finally:
        if watcher is not None:
            watcher.terminate()
        for n in nodes:
            if n.proc is not None and n.proc.poll() is None:
                n.stop()
            n.cleanup()
            shutil.rmtree(n.home, ignore_errors=True)
    say("demo done")


if __name__ == "__main__":
    main()
