"""The lease watchdog: kills a stateful pod whose lease ran out while beemeshd was not there to.

beemeshd stops an ordinal's pod before its lease can expire; but its pods outlive it (they must:
a daemon restart re-adopts them), so a daemon killed with SIGKILL, or hung, would leave the pod
running while the group grants the ordinal to another peer. This process closes that hole. beemeshd
starts it (one per state directory, in its own session, so it survives the daemon) and keeps one
file per running stateful pod in stateful/leases/ with the pod's deadline on CLOCK_BOOTTIME —
some time before the lease's end, after the point where beemeshd itself would have stopped it.
Every WATCH_INTERVAL the watchdog kills (Podman API, `kill`; else the podman CLI) every pod past
its deadline, logs a `lease history` stop line and removes the file. It exits once it has had
nothing to watch for IDLE_EXIT seconds and its daemon is gone. Standard library only: small.

    python -m beemeshd.lease_watchdog STATE_DIR PODMAN_ENDPOINT DAEMON_PID [PODMAN_ARG ...]
"""

from __future__ import annotations

import fcntl
import http.client
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

WATCH_INTERVAL = 0.25
IDLE_EXIT = 60.0
BOOTTIME = getattr(time, "CLOCK_BOOTTIME", time.CLOCK_MONOTONIC)


class _UnixHTTP(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float):
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        self.sock.connect(self._path)


def kill_pod(pod: str, endpoint: str, podman_args: list[str]) -> str:
    """SIGKILL every container of the pod; how it was done, or raise."""
    if endpoint.startswith("unix://"):
        try:
            conn = _UnixHTTP(endpoint[len("unix://"):], 5.0)
            conn.request("POST", f"/v4.0.0/libpod/pods/{pod}/kill?signal=SIGKILL")
            status = conn.getresponse().status
            conn.close()
            if status in (200, 404, 409):  # killed; gone; nothing running
                return f"api {status}"
        except OSError:
            pass
    r = subprocess.run(["podman", *podman_args, "pod", "kill", "--signal", "KILL", pod],
                       capture_output=True, text=True, timeout=30)
    if r.returncode != 0 and "no pod with name" not in r.stderr and "no such pod" not in r.stderr.lower():
        raise RuntimeError(r.stderr.strip() or f"podman pod kill exited {r.returncode}")
    return "cli"


def history(kind: str, doc: dict) -> None:
    line = {"t": time.monotonic(), "ordinal": doc.get("ordinal"), "peer": doc.get("peer"),
            "token": doc.get("token"), "kind": kind, "by": "watchdog"}
    print(f"lease history {json.dumps(line)}", file=sys.stderr, flush=True)


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def main(argv: list[str]) -> int:
    state_dir, endpoint, daemon_pid, podman_args = Path(argv[0]), argv[1], int(argv[2]), argv[3:]
    leases = state_dir / "stateful" / "leases"
    leases.mkdir(parents=True, exist_ok=True, mode=0o700)
    lock = open(leases / ".watchdog.lock", "w")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return 0  # one watchdog per state directory is enough: an earlier one still runs
    idle_since = time.monotonic()
    while True:
        now = time.clock_gettime(BOOTTIME)
        files = [p for p in leases.glob("*.json")]
        for path in files:
            try:
                doc = json.loads(path.read_text())
                deadline, pod = float(doc["deadline"]), str(doc["pod"])
            except (OSError, ValueError, KeyError, TypeError):
                continue
            if now < deadline:
                continue
            try:
                how = kill_pod(pod, endpoint, podman_args)
            except Exception as exc:  # keep the file: try again next round
                print(f"lease watchdog: could not kill {pod}: {exc}", file=sys.stderr, flush=True)
                continue
            history("stop", doc)
            print(f"lease watchdog: killed {pod} ({how}): its lease ran out without beemeshd stopping it",
                  file=sys.stderr, flush=True)
            try:
                path.unlink()
            except FileNotFoundError:
                pass
        if files:
            idle_since = time.monotonic()
        elif time.monotonic() - idle_since > IDLE_EXIT and not alive(daemon_pid):
            return 0
        time.sleep(WATCH_INTERVAL)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
