"""Where the time of a Deploy goes, on the daemon side, on real Podman.

Run as root (make bench). The daemon runs in-process as the test user (this file re-executes
itself with --inside), from the checkout, with the default settings (mesh on, alone); a thread
of the same process plays the client: Deploy(wait) of a 1-container pod with a hostPort over the
Varlink socket, then waits for the first HTTP 200, then deletes it. Measured across N deploys:
- every Podman REST request (podman-py's requests session is wrapped): which, when, how long;
- the rest of the Deploy's wall time, outside any Podman request;
- pyinstrument samples of the daemon's trio thread (worker threads only wait on sockets), split
  into idle (waiting in epoll) and busy, with the functions that use the most CPU.
Prints p50/p99 and n; returns the top items for RESULTS.md. With BENCH_PROFILE_TEXT=FILE (a
path the test user can write) pyinstrument's whole call tree goes there too.
"""

from __future__ import annotations

import json
import os
import pwd
import re
import shutil
import signal
import socket
import sys
import tempfile
import threading
import time
import urllib.request
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.common import summary  # noqa: E402

IDLE = ("poll", "get_events", "_epoll_wait")  # trio's event loop waiting for I/O


def normalize(method: str, url: str) -> str:
    """'POST /v5.0.0/libpod/pods/<id>/start' -> 'POST /pods/{}/start'."""
    path = re.sub(r"^https?://[^/]+", "", url).split("?")[0]
    path = re.sub(r"^/v[\d.]+(/libpod)?", "", path)
    path = re.sub(r"/(pods|containers|volumes|exec)/(?!json$|create$)[^/]+", r"/\1/{}", path)
    return f"{method} {path}"


# --- inside: the daemon and the client, as the test user ---------------------------------------

def inside(config_path: str, n: int) -> None:
    import requests
    import trio
    from pyinstrument import Profiler

    from beemeshd import systemd
    from beemeshd.config import Config
    from beemeshd.daemon import Daemon

    config = Config.default().with_file(Path(config_path))
    systemd.setup_logging("warning")
    requests_log: list[tuple[float, float, str]] = []
    plain = requests.Session.request

    def timed(self, method, url, *args, **kwargs):
        t0 = time.perf_counter()
        try:
            return plain(self, method, url, *args, **kwargs)
        finally:
            requests_log.append((t0, time.perf_counter(), normalize(method, url)))

    requests.Session.request = timed
    profiler = Profiler(interval=0.0005, async_mode="disabled")
    deploys: list[dict] = []

    def client(token) -> None:
        sock = socket.socket(socket.AF_UNIX)
        deadline = time.monotonic() + 30
        while True:
            try:
                sock.connect(str(config.socket_path))
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        buf = b""

        def call(method, params):
            nonlocal buf
            sock.sendall(json.dumps({"method": f"io.beemesh.Mesh.{method}", "parameters": params}).encode() + b"\0")
            while b"\0" not in buf:
                buf += sock.recv(1 << 20)
            msg, _, buf = buf.partition(b"\0")
            reply = json.loads(msg)
            if "error" in reply:
                raise RuntimeError(f"{method}: {reply}")
            return reply["parameters"]

        while not call("GetInfo", {})["info"]["runtime"]["available"]:
            time.sleep(0.1)
        try:
            for i in range(n + 2):  # two warm-ups, not profiled
                if i == 2:
                    trio.from_thread.run_sync(profiler.start, trio_token=token)
                port = _free_port()
                manifest = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "prof"}, "spec": {"containers": [{
                    "name": "httpd", "image": "localhost/beemesh-busybox:latest",
                    "command": ["httpd", "-f", "-p", "8080", "-h", "/var/www"],
                    "ports": [{"containerPort": 8080, "hostPort": port}]}]}}
                t0 = time.perf_counter()
                call("Deploy", {"manifest": manifest, "wait": True, "timeoutSeconds": 60})
                t_reply = time.perf_counter()
                _first_200(port, t0 + 30)
                t_200 = time.perf_counter()
                call("Delete", {"name": "prof", "wait": True, "timeoutSeconds": 60})
                if i >= 2:
                    deploys.append({"t0": t0, "reply": t_reply, "http200": t_200})
        finally:
            if profiler.is_running:
                trio.from_thread.run_sync(profiler.stop, trio_token=token)
            os.kill(os.getpid(), signal.SIGTERM)

    async def main():
        threading.Thread(target=client, args=(trio.lowlevel.current_trio_token(),), daemon=True).start()
        await Daemon(config).run()

    trio.run(main)
    session = profiler.last_session
    if os.environ.get("BENCH_PROFILE_TEXT"):  # the whole call tree, for a closer look
        Path(os.environ["BENCH_PROFILE_TEXT"]).write_text(profiler.output_text(show_all=True, color=False))
    json.dump({"deploys": deploys, "requests": requests_log, "profile": profile_summary(session)}, sys.stdout)


def profile_summary(session) -> dict:
    """Idle vs busy sampled time of the trio thread, and the top functions by own (self) time."""
    own: dict[str, float] = defaultdict(float)
    total = idle = 0.0

    def walk(frame, parent=None):
        nonlocal total, idle
        for child in frame.children:
            walk(child, frame)
        t = frame.total_self_time
        if t <= 0:
            return
        if frame.is_synthetic and parent is not None:  # "[self]": time in the parent's own code
            frame = parent
        total += t
        if frame.function in IDLE or "epoll" in (frame.function or ""):
            idle += t
        else:
            own[f"{frame.function} ({frame.file_path_short}:{frame.line_no})"] += t

    if session is not None:
        walk(session.root_frame())
    top = sorted(own.items(), key=lambda kv: -kv[1])[:15]
    return {"sampled_s": total, "idle_s": idle, "top": top}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _first_200(port: int, deadline: float) -> None:
    while time.perf_counter() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=1) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.002)
    raise TimeoutError(port)


# --- outside: root sets up the store and reads the result ---------------------------------------

def breakdown(data: dict) -> dict:
    """Per Deploy: time in each kind of Podman request, and outside any request."""
    per_kind: dict[str, list[float]] = defaultdict(list)
    outside, reply, to_200, total, after_start = [], [], [], [], []
    for d in data["deploys"]:
        t0, t1 = d["t0"], d["reply"]
        spans = sorted((max(a, t0), min(b, t1), what) for a, b, what in data["requests"] if b > t0 and a < t1)
        kinds: dict[str, float] = defaultdict(float)
        covered, end = 0.0, t0
        for a, b, what in spans:
            kinds[what] += b - a
            if b > end:  # union of the (possibly overlapping) request intervals
                covered += b - max(a, end)
                end = b
        for k in set(per_kind) | set(kinds):
            per_kind[k].append(kinds.get(k, 0.0))
        outside.append((t1 - t0) - covered)
        started = [b for a, b, what in spans if what.endswith("/start")]
        if started:  # the pod is up: what is left is reading it back and answering
            after_start.append(t1 - started[-1])
        reply.append(t1 - t0)
        to_200.append(d["http200"] - t1)
        total.append(d["http200"] - t0)
    n = len(data["deploys"])
    mid = sorted(range(n), key=lambda i: reply[i])[n // 2]
    d = data["deploys"][mid]
    timeline = [(round((a - d["t0"]) * 1000, 1), round((b - a) * 1000, 1), what)
                for a, b, what in sorted(data["requests"]) if d["t0"] <= a < d["reply"]]
    for k, v in per_kind.items():  # kinds absent from the first deploys count as 0 there
        per_kind[k] = [0.0] * (n - len(v)) + v
    return {
        "n": n,
        "deploy_reply": summary(reply, 1000),
        "reply_to_200": summary(to_200, 1000),
        "total": summary(total, 1000),
        "outside_requests": summary(outside, 1000),
        "after_pod_start": summary(after_start, 1000),
        "requests": sorted(((k, summary(v, 1000)) for k, v in per_kind.items()), key=lambda kv: -kv[1]["p50"]),
        "timeline": {"reply_ms": round(reply[mid] * 1000, 1), "requests": timeline},
    }


def main(n: int = 20) -> dict:
    from tests.conftest import TEST_USER, VENV, User
    from tests.integration.daemons import PodmanNode

    pw = pwd.getpwnam(TEST_USER)
    user = User(pw.pw_name, pw.pw_uid, pw.pw_gid, Path(pw.pw_dir))
    home = Path(tempfile.mkdtemp(prefix="beemesh-bench-"))
    os.chown(home, user.uid, user.gid)
    node = PodmanNode(user, home, {"log_level": "warning"})
    try:
        node.prepare()
        conf = home / "beemeshd.toml"
        conf.write_text(node.config_text())
        os.chown(conf, user.uid, user.gid)
        p = user.run([str(VENV / "bin" / "python"), str(Path(__file__).resolve()), "--inside", str(conf), str(n)],
                     env=user.env(PYTHONPATH=str(ROOT), **{k: v for k, v in os.environ.items()
                                                           if k == "BENCH_PROFILE_TEXT"}), timeout=600)
        if p.returncode:
            raise RuntimeError(f"profiled daemon failed:\n{p.stderr[-3000:]}")
        data = json.loads(p.stdout)
    finally:
        node.cleanup()  # the daemon stopped the Podman service it started when it got SIGTERM
        shutil.rmtree(home, ignore_errors=True)
    b = breakdown(data)
    prof = data["profile"]
    b["profile"] = prof
    s = b["deploy_reply"]
    print(f"Deploy profile (n={b['n']}): Deploy(wait) reply p50 {s['p50']:.1f} ms, p99 {s['p99']:.1f} ms; "
          f"then first HTTP 200 after p50 {b['reply_to_200']['p50']:.1f} ms")
    print(f"  outside any Podman request: p50 {b['outside_requests']['p50']:.1f} ms, "
          f"p99 {b['outside_requests']['p99']:.1f} ms")
    print(f"  Podman's pod start done -> Deploy reply: p50 {b['after_pod_start']['p50']:.1f} ms, "
          f"p99 {b['after_pod_start']['p99']:.1f} ms")
    for kind, v in b["requests"]:
        print(f"  {kind:40s} p50 {v['p50']:6.1f} ms  p99 {v['p99']:6.1f} ms  (summed per Deploy, n={v['n']})")
    t = b["timeline"]
    print(f"  the median Deploy ({t['reply_ms']} ms), request by request: start ms (took ms) what:")
    for start, took, what in t["requests"]:
        print(f"    {start:7.1f} ({took:5.1f}) {what}")
    busy = prof["sampled_s"] - prof["idle_s"]
    print(f"  daemon's trio thread while profiled: {prof['sampled_s']:.2f} s sampled, {busy:.2f} s busy "
          f"({busy / max(prof['sampled_s'], 1e-9):.0%}); top own time:")
    for where, t in prof["top"][:10]:
        print(f"    {t * 1000:7.1f} ms  {where}")
    return b


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--inside":
        inside(sys.argv[2], int(sys.argv[3]))
    else:
        main(int(sys.argv[1]) if len(sys.argv) > 1 else 20)
