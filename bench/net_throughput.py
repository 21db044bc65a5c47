"""Throughput of a published port on loopback: BeeMesh's pod vs raw Podman in each rootless network
mode, measured with iperf3 (client on the host, server in the container).

Run as root (make bench). One beemeshd (test user) with its own Podman store; an image holding
only the host's iperf3 and the libraries it links (the busybox image has no iperf3) is imported
into that store. Every case publishes the server's port 5201 on 127.0.0.1 and runs
`iperf3 -c` twice: host -> container ("up") and container -> host ("down", -R). Samples are the
per-0.5 s intervals after a 1 s warm-up; prints p50/p99 and n per case, in Gbit/s.

Cases:
- BeeMesh Deploy (a pod with a hostPort: slirp4netns, Podman's default port handler rootlessport);
- raw `podman run -p`, slirp4netns with rootlessport (the same data path, without BeeMesh);
- raw `podman run -p`, slirp4netns with port_handler=slirp4netns (bytes cross slirp's TCP stack);
- pasta: `--network pasta` where Podman has it (≥ 4.4); on older Podman, a `--network none`
  container whose namespace is handed to pasta by hand (`pasta --config-net -t ... PID`), which is
  what Podman ≥ 4.4 does for it;
- `--network host` (no namespace: the loopback ceiling).
bypass4netns is not measured where it is not installed (it is not packaged for Debian 12).
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import summary  # noqa: E402
from beemeshd.runtime.network import PASTA_MIN_PODMAN, parse_version  # noqa: E402
from tests.conftest import TEST_USER, User  # noqa: E402
from tests.integration.daemons import PodmanNode, free_port, wait_for  # noqa: E402

IMAGE = "localhost/beemesh-iperf3:bench"
SERVER_PORT = 5201


def build_image(node: PodmanNode) -> None:
    """Import an image of /iperf3 plus the shared libraries `ldd` names, as they are on the host."""
    iperf3 = shutil.which("iperf3")
    root = Path(tempfile.mkdtemp(prefix="beemesh-iperf3-"))
    try:
        (root / "tmp").mkdir(mode=0o1777)
        os.chmod(root / "tmp", 0o1777)  # iperf3 keeps its buffer in a temporary file
        shutil.copy(iperf3, root / "iperf3")
        ldd = subprocess.run(["ldd", iperf3], capture_output=True, text=True, check=True).stdout
        for word in ldd.split():
            if word.startswith("/"):
                dest = root / word.lstrip("/")
                dest.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy(word, dest)  # follows symlinks: the real file under the link's name
        tar = root.with_suffix(".tar")
        subprocess.run(["tar", "-C", str(root), "--numeric-owner", "--owner=0", "--group=0", "-cf", str(tar), "."],
                       check=True)
        os.chmod(tar, 0o644)
        p = node.podman("import", "-q", "--change", 'ENTRYPOINT ["/iperf3"]', str(tar), IMAGE)
        assert p.returncode == 0, p.stderr
        tar.unlink()
    finally:
        shutil.rmtree(root, ignore_errors=True)


def iperf(port: int, reverse: bool, seconds: float) -> list[float]:
    """Gbit/s of each 0.5 s interval of one iperf3 run to 127.0.0.1:port (1 s warm-up omitted).
    iperf3 3.12 reads -t as whole seconds (and 0 as "forever")."""
    argv = ["iperf3", "-c", "127.0.0.1", "-p", str(port), "-t", str(max(1, round(seconds))), "-O", "1", "-i", "0.5", "-J"]
    p = subprocess.run(argv + (["-R"] if reverse else []), capture_output=True, text=True, timeout=seconds + 30)
    out = json.loads(p.stdout or "{}")
    if p.returncode or "error" in out:
        raise RuntimeError(f"iperf3 to port {port}: {out.get('error') or p.stderr}")
    return [iv["sum"]["bits_per_second"] / 1e9 for iv in out["intervals"] if not iv["sum"].get("omitted")]


def serving(port: int) -> bool:
    """iperf3 answers its control protocol on the port (a bare TCP accept is not enough: a port
    forwarder accepts before the server inside listens)."""
    try:
        p = subprocess.run(["iperf3", "-c", "127.0.0.1", "-p", str(port), "-n", "64K", "-J"],
                           capture_output=True, text=True, timeout=3)
    except subprocess.TimeoutExpired:
        return False
    return p.returncode == 0


def measure(port: int, seconds: float) -> dict:
    wait_for(lambda: serving(port), 30, f"iperf3 on port {port}", interval=0.2)
    return {"up": summary(iperf(port, False, seconds)), "down": summary(iperf(port, True, seconds))}


def main(seconds: float = 4.0) -> dict:
    """{case: {"up": summary, "down": summary} | {"unavailable": why}}."""
    if shutil.which("iperf3") is None:
        return {"unavailable": "iperf3 is not installed (make setup installs it)"}
    pw = pwd.getpwnam(TEST_USER)
    user = User(pw.pw_name, pw.pw_uid, pw.pw_gid, Path(pw.pw_dir))
    home = Path(tempfile.mkdtemp(prefix="beemesh-bench-"))
    os.chown(home, user.uid, user.gid)
    node = PodmanNode(user, home, {"log_level": "warning", "mesh_enabled": False}).prepare()
    build_image(node)
    results: dict = {}
    version = node.podman("version", "--format", "{{.Client.Version}}").stdout.strip()
    try:
        node.start(timeout=60)
        wait_for(lambda: node.call("GetInfo").json["info"]["runtime"]["available"], 60, "Podman")
        network = node.call("GetInfo").json["info"]["runtime"]["network"]

        port = free_port()
        manifest = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "iperf"}, "spec": {"containers": [{
            "name": "iperf3", "image": IMAGE, "command": ["/iperf3", "-s"],
            "ports": [{"containerPort": SERVER_PORT, "hostPort": port}]}]}}
        r = node.call("Deploy", {"manifest": manifest, "wait": True, "timeoutSeconds": 60}, timeout=90)
        assert r.rc == 0, r.err
        results[f"BeeMesh Deploy ({network})"] = measure(port, seconds)
        node.call("Delete", {"name": "iperf", "wait": True, "timeoutSeconds": 60}, timeout=90)

        def raw(case: str, *args: str, publish: bool = True) -> None:
            port = free_port()
            pub = ["-p", f"127.0.0.1:{port}:{SERVER_PORT}"] if publish else []
            server = ["-s"] if publish else ["-s", "-p", str(port)]
            p = node.podman("run", "-d", "--name", "bench-iperf3", *args, *pub, IMAGE, *server)
            if p.returncode:
                results[case] = {"unavailable": p.stderr.strip().splitlines()[-1]}
                return
            try:
                results[case] = measure(port, seconds)
            finally:
                node.podman("rm", "-f", "-t", "0", "bench-iperf3")

        raw("podman run, slirp4netns + rootlessport (Podman's default)", "--network", "slirp4netns")
        raw("podman run, slirp4netns with port_handler=slirp4netns", "--network",
            "slirp4netns:port_handler=slirp4netns")
        if parse_version(version) >= PASTA_MIN_PODMAN:
            raw("podman run, pasta", "--network", "pasta")
        elif shutil.which("pasta") is None:
            results["pasta"] = {"unavailable": f"Podman {version} has no `--network pasta` (needs ≥ 4.4) "
                                               "and the passt package is not installed"}
        else:
            results[f"pasta by hand (Podman {version} has no --network pasta)"] = pasta_by_hand(node, seconds)
        raw("podman run --network host (no namespace)", "--network", "host", publish=False)
        if shutil.which("bypass4netns") is None:
            results["bypass4netns"] = {"unavailable": "not installed: not packaged for Debian 12"}
    finally:
        node.stop()
        node.cleanup()
        shutil.rmtree(home, ignore_errors=True)
    for case, r in results.items():
        if "unavailable" in r:
            print(f"throughput, {case}: unavailable — {r['unavailable']}")
            continue
        for way in ("up", "down"):
            s = r[way]
            print(f"throughput, {case}, {'host -> container' if way == 'up' else 'container -> host'}: "
                  f"p50 {s['p50']:.2f} Gbit/s, p99 {s['p99']:.2f} Gbit/s (n={s['n']} × 0.5 s)")
    return results


def pasta_by_hand(node: PodmanNode, seconds: float) -> dict:
    """A `--network none` container given a pasta-backed interface and port forward by hand."""
    port = free_port()
    p = node.podman("run", "-d", "--name", "bench-iperf3", "--network", "none", IMAGE, "-s")
    if p.returncode:
        return {"unavailable": p.stderr.strip()}
    pidfile = node.home / "pasta.pid"
    try:
        pid = node.podman("inspect", "-f", "{{.State.Pid}}", "bench-iperf3").stdout.strip()
        # pasta joins the container's user and network namespaces (owned by this user) and
        # forwards 127.0.0.1:port on the host to port 5201 in there; no UDP or outbound forwards.
        p = node.user.run(["pasta", "--quiet", "--config-net", "-P", str(pidfile),
                           "-t", f"127.0.0.1/{port}:{SERVER_PORT}", "-u", "none", "-T", "none", "-U", "none", pid])
        if p.returncode:
            return {"unavailable": f"pasta failed: {p.stderr.strip()}"}
        return measure(port, seconds)
    finally:
        node.podman("rm", "-f", "-t", "0", "bench-iperf3")
        try:  # pasta exits with the namespace; make sure
            os.kill(int(pidfile.read_text()), 15)
        except (OSError, ValueError):
            pass


if __name__ == "__main__":
    main(float(sys.argv[1]) if len(sys.argv) > 1 else 4.0)
