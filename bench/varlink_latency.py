"""GetInfo round trip over the daemon's Varlink socket, and the idle daemon's RSS.

Run as root (make bench): starts beemeshd as the test user, warms up with 50 calls, then times
N sequential calls on one connection from a raw-socket client: io.beemesh.Mesh.GetInfo (runtime,
mesh and counters), and org.varlink.service.GetInfo, which the same client also times against
python-varlink's own ThreadingServer in a process of its own (the comparison, same run).
Prints p50/p99 and sample count.
"""

from __future__ import annotations

import json
import socket
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import summary  # noqa: E402
from tests.conftest import TEST_USER  # noqa: E402
from tests.integration.daemons import Daemon  # noqa: E402


def rss_mb(pid: int) -> float:
    # setpriv execs in place, so the Popen pid is beemeshd's own
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


PYTHON_VARLINK_SERVER = """
import sys, varlink
class Handler(varlink.RequestHandler):
    service = varlink.Service(vendor="bench", product="python-varlink", version="31", url="")
with varlink.ThreadingServer("unix:" + sys.argv[1], Handler) as server:
    server.serve_forever()
"""


def round_trips(path, method: str, n: int) -> list[float]:
    """n sequential calls of `method` on one connection (after 50 unmeasured ones), in seconds."""
    msg = json.dumps({"method": method, "parameters": {}}).encode() + b"\0"
    samples = []
    with socket.socket(socket.AF_UNIX) as s:
        s.connect(str(path))
        buf = b""
        for i in range(n + 50):
            t0 = time.perf_counter()
            s.sendall(msg)
            while b"\0" not in buf:
                buf += s.recv(65536)
            _, _, buf = buf.partition(b"\0")
            if i >= 50:
                samples.append(time.perf_counter() - t0)
    return samples


def python_varlink(n: int) -> list[float]:
    import subprocess
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "sock"
        server = subprocess.Popen([sys.executable, "-c", PYTHON_VARLINK_SERVER, str(path)])
        try:
            deadline = time.monotonic() + 10
            while not path.exists() and time.monotonic() < deadline:
                time.sleep(0.02)
            return round_trips(path, "org.varlink.service.GetInfo", n)
        finally:
            server.terminate()
            server.wait()


def main(n: int = 1000) -> dict:
    import pwd
    import shutil
    import tempfile

    from tests.conftest import User

    pw = pwd.getpwnam(TEST_USER)
    user = User(pw.pw_name, pw.pw_uid, pw.pw_gid, Path(pw.pw_dir))
    home = Path(tempfile.mkdtemp(prefix="beemesh-bench-"))
    import os
    os.chown(home, user.uid, user.gid)
    d = Daemon(user, home, {"log_level": "warning"})
    try:
        d.start(timeout=60)
        samples = round_trips(d.socket_path, "io.beemesh.Mesh.GetInfo", n)
        service = round_trips(d.socket_path, "org.varlink.service.GetInfo", n)
        time.sleep(1.0)
        result = {"getinfo_ms": summary(samples, 1000), "service_getinfo_ms": summary(service, 1000),
                  "idle_rss_mb": rss_mb(d.proc.pid)}
    finally:
        d.stop()
        shutil.rmtree(home, ignore_errors=True)
    home = Path(tempfile.mkdtemp(prefix="beemesh-bench-"))
    os.chown(home, user.uid, user.gid)
    alone = Daemon(user, home, {"log_level": "warning", "mesh_enabled": False})
    try:
        alone.start(timeout=60)
        time.sleep(2.0)
        result["idle_rss_mesh_off_mb"] = rss_mb(alone.proc.pid)
    finally:
        alone.stop()
        shutil.rmtree(home, ignore_errors=True)
    result["python_varlink_ms"] = summary(python_varlink(n), 1000)
    for key, what in (("getinfo_ms", "io.beemesh.Mesh.GetInfo, beemeshd"),
                      ("service_getinfo_ms", "org.varlink.service.GetInfo, beemeshd"),
                      ("python_varlink_ms", "org.varlink.service.GetInfo, python-varlink ThreadingServer")):
        g = result[key]
        print(f"{what} round trip: p50 {g['p50']:.3f} ms, p99 {g['p99']:.3f} ms, mean {g['mean']:.3f} ms "
              f"(n={g['n']})")
    print(f"idle beemeshd RSS: {result['idle_rss_mb']:.1f} MB with the mesh (default), "
          f"{result['idle_rss_mesh_off_mb']:.1f} MB with mesh_enabled = false")
    return result


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 1000)
