"""GetInfo round trip over the daemon's Varlink socket, and the idle daemon's RSS.

Run as root (make bench): starts beemeshd as the test user, warms up with 50 calls, then times
N sequential calls on one connection from a raw-socket client. Prints p50/p99 and sample count.
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
    d = Daemon(user, home, {"log_level": "warning"}).start()
    try:
        msg = json.dumps({"method": "io.beemesh.Mesh.GetInfo", "parameters": {}}).encode() + b"\0"
        with socket.socket(socket.AF_UNIX) as s:
            s.connect(str(d.socket_path))
            buf = b""

            def call():
                nonlocal buf
                s.sendall(msg)
                while b"\0" not in buf:
                    buf += s.recv(65536)
                _, _, buf = buf.partition(b"\0")

            for _ in range(50):
                call()
            samples = []
            for _ in range(n):
                t0 = time.perf_counter()
                call()
                samples.append(time.perf_counter() - t0)
        time.sleep(1.0)
        result = {"getinfo_ms": summary(samples, 1000), "idle_rss_mb": rss_mb(d.proc.pid)}
    finally:
        d.stop()
        shutil.rmtree(home, ignore_errors=True)
    home = Path(tempfile.mkdtemp(prefix="beemesh-bench-"))
    os.chown(home, user.uid, user.gid)
    alone = Daemon(user, home, {"log_level": "warning", "mesh_enabled": False}).start()
    try:
        time.sleep(2.0)
        result["idle_rss_mesh_off_mb"] = rss_mb(alone.proc.pid)
    finally:
        alone.stop()
        shutil.rmtree(home, ignore_errors=True)
    g = result["getinfo_ms"]
    print(f"GetInfo round trip: p50 {g['p50']:.3f} ms, p99 {g['p99']:.3f} ms, mean {g['mean']:.3f} ms (n={g['n']})")
    print(f"idle beemeshd RSS: {result['idle_rss_mb']:.1f} MB with the mesh (default), "
          f"{result['idle_rss_mesh_off_mb']:.1f} MB with mesh_enabled = false")
    return result


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 1000)
