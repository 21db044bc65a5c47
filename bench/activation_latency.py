"""Socket activation: `systemctl --user start beemeshd.socket` -> first answered call.

Run as root after `make setup`. A real `systemd --user` manager for the test user
(scripts/user-manager.sh) runs units/ with a drop-in pointing at the venv's beemeshd, as
tests/integration/test_systemd_user.py does. Each run starts the socket, calls GetInfo on it
(which starts beemeshd.service and waits for its answer), then stops both units. One warm-up run
is dropped. Prints p50/p99 and n.
"""

from __future__ import annotations

import json
import pwd
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.common import summary  # noqa: E402
from tests.conftest import TEST_USER, VENV, User  # noqa: E402

UNITS = ("beemeshd.socket", "beemeshd.service")


def get_info(path: Path, timeout: float = 30) -> dict:
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(timeout)
        s.connect(str(path))
        s.sendall(b'{"method":"io.beemesh.Mesh.GetInfo","parameters":{}}\0')
        buf = b""
        while not buf.endswith(b"\0"):
            chunk = s.recv(65536)
            if not chunk:
                raise ConnectionError("beemeshd closed the connection")
            buf += chunk
    return json.loads(buf[:-1])["parameters"]["info"]


def main(n: int = 20) -> dict:
    pw = pwd.getpwnam(TEST_USER)
    user = User(pw.pw_name, pw.pw_uid, pw.pw_gid, Path(pw.pw_dir))
    unit_dir = user.home / ".config" / "systemd" / "user"
    state = user.tempdir()

    def systemctl(*args: str) -> None:
        p = user.run(["systemctl", "--user", *args], timeout=60)
        if p.returncode:
            raise RuntimeError(f"systemctl --user {' '.join(args)}: {p.stderr.strip()}; {why()}")

    def why() -> str:
        """The units' own account of a failure (the manager logs to its stderr here, no journal)."""
        st = user.run(["systemctl", "--user", "status", "--no-pager", "-l", "-n", "0", *UNITS], timeout=30)
        try:
            log = (VENV.parent / "user-manager.log").read_text(errors="replace").splitlines()
        except OSError:
            log = []
        lines = [line.strip() for line in st.stdout.splitlines()]
        units = [line for line in lines if line.startswith(("Active:", "Main PID:", "Process:"))]
        return " / ".join(units + [line for line in log[-4:] if line.strip()])

    p = subprocess.run([str(ROOT / "scripts" / "user-manager.sh"), "start"], capture_output=True, text=True)
    if p.returncode:
        raise RuntimeError(p.stderr)
    samples = []
    try:
        for name in UNITS:
            shutil.copy(ROOT / "units" / name, unit_dir / name)
            (unit_dir / f"{name}.d").mkdir(parents=True, exist_ok=True)
            # n+1 starts in a row: systemd's start limit (5 per 10 s by default) would fail the
            # socket with start-limit-hit whenever the machine is quick enough.
            (unit_dir / f"{name}.d" / "bench.conf").write_text("[Unit]\nStartLimitIntervalSec=0\n")
        (unit_dir / "beemeshd.service.d" / "bench.conf").write_text(
            f"[Unit]\nStartLimitIntervalSec=0\n[Service]\nExecStart=\nExecStart={VENV}/bin/beemeshd\n"
            f"Environment=XDG_STATE_HOME={state}\n")
        subprocess.run(["chown", "-R", f"{user.uid}:{user.gid}", str(user.home / ".config")], check=True)
        systemctl("daemon-reload")
        path = user.runtime_dir / "beemesh" / "io.beemesh.Mesh"
        for i in range(n + 1):
            t0 = time.perf_counter()
            systemctl("start", "beemeshd.socket")
            info = get_info(path)
            elapsed = time.perf_counter() - t0
            assert info["socketActivated"], info
            systemctl("stop", *UNITS)
            if i:  # the first run warms the page cache
                samples.append(elapsed)
    finally:
        user.run(["systemctl", "--user", "stop", *UNITS])
        subprocess.run([str(ROOT / "scripts" / "user-manager.sh"), "stop"])
        for name in UNITS:
            shutil.rmtree(unit_dir / f"{name}.d", ignore_errors=True)
            (unit_dir / name).unlink(missing_ok=True)
        shutil.rmtree(state, ignore_errors=True)
    s = summary(samples)
    print(f"socket activation, `systemctl --user start beemeshd.socket` -> GetInfo answered: "
          f"p50 {s['p50']:.3f} s, p99 {s['p99']:.3f} s (n={s['n']})")
    return s


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 20)
