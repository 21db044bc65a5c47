"""PodmanRuntime against real rootless Podman, as the test user.

pytest runs as root, so each scenario runs in `podman_driver.py` as the user, importing a copy of
the checkout's `beemeshd`. Everything lives in one temp dir: a Podman store of its own
(--root/--runroot/--tmpdir), API sockets of its own and its own XDG_RUNTIME_DIR, so the tests never
touch the user's default store or its rootless pause process, and teardown can remove it all.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.conftest import IMAGE, ROOT, User, venv_python

pytestmark = pytest.mark.integration

HERE = Path(__file__).resolve().parent
HELLO = "hello from beemesh busybox\n"


class Store:
    def __init__(self, user: User, top: Path):
        self.user, self.top = user, top
        self.podman_args = ["--root", f"{top}/store/root", "--runroot", f"{top}/store/run",
                            "--tmpdir", f"{top}/store/tmp"]
        self.env = user.env(XDG_RUNTIME_DIR=f"{top}/xdg", PYTHONPATH=f"{top}/src")

    def podman(self, *args: str) -> subprocess.CompletedProcess:
        return self.user.run(["podman", *self.podman_args, *args], env=self.env, timeout=30)

    def drive(self, scenario: str) -> dict:
        config = self.top / f"{scenario}.json"
        config.write_text(json.dumps({"podman_args": self.podman_args, "image": IMAGE,
                                      "socket": f"{self.top}/{scenario}.sock"}))
        os.chown(config, self.user.uid, self.user.gid)
        # Output goes to files, not pipes: a podman service that outlived the driver would hold
        # a pipe open and make us wait for it.
        with open(self.top / f"{scenario}.out", "w+") as stdout, \
                open(self.top / f"{scenario}.err", "w+") as stderr:
            r = self.user.run([venv_python(), f"{self.top}/podman_driver.py", scenario,
                               str(config)], env=self.env, timeout=60, capture_output=False,
                              stdout=stdout, stderr=stderr)
            stdout.seek(0), stderr.seek(0)
            text, errors = stdout.read(), stderr.read()
        print(errors[-4000:])
        assert text.strip(), f"driver printed nothing (status {r.returncode})"
        out = json.loads(text.strip().splitlines()[-1])
        print(json.dumps(out, indent=1))
        assert r.returncode == 0, f"driver failed: {errors[-2000:]}"
        return out

    def user_pids(self) -> list[int]:
        """The user's processes that belong to this test: anything naming our dir (services,
        conmon, slirp4netns) and the rootless pause process of our XDG_RUNTIME_DIR."""
        mark, xdg = str(self.top).encode(), f"XDG_RUNTIME_DIR={self.top}/xdg".encode()
        pids = []
        for proc in Path("/proc").iterdir():
            try:
                if proc.name.isdigit() and proc.stat().st_uid == self.user.uid and (
                        mark in (proc / "cmdline").read_bytes()
                        or xdg in (proc / "environ").read_bytes().split(b"\0")):
                    pids.append(int(proc.name))
            except OSError:
                pass
        return pids

    def teardown(self) -> None:
        self.podman("pod", "rm", "-a", "-f", "-t", "0")
        self.podman("rm", "-a", "-f", "-t", "0")
        for pid in self.user_pids():
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        shutil.rmtree(self.top, ignore_errors=True)


@pytest.fixture(scope="module")
def store(user: User):
    top = user.tempdir()
    s = Store(user, top)
    try:
        # The code under test comes from the checkout, which the user may not be able to read.
        shutil.copytree(ROOT / "beemeshd", top / "src/beemeshd",
                        ignore=shutil.ignore_patterns("__pycache__"))
        shutil.copy(HERE / "podman_driver.py", top)
        (top / "xdg").mkdir(mode=0o700)
        for path in [top, *top.rglob("*")]:
            os.chown(path, user.uid, user.gid)
        r = subprocess.run([ROOT / "scripts/build-image.sh", *s.podman_args],
                           capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stderr
        yield s
    finally:
        s.teardown()


def test_lifecycle(store: Store):
    t0 = time.monotonic()
    out = store.drive("lifecycle")
    # It found nothing listening, so it started (and owns) the service; slirp4netns on Podman 4.3.
    assert out["status"]["available"] and out["status"]["started_by_beemesh"]
    assert out["status"]["network"] == "slirp4netns"
    assert "pasta" not in out["status"]["networks_available"]
    assert out["image_exists"] == [True, False]

    assert out["http"] == [200, HELLO]
    assert out["created"]["state"] == "running"
    assert out["created"]["containers"] == [["side", "running"], ["web", "running"]]
    [pod] = out["listed"]
    assert pod["name"] == "bm-web" and pod["state"] == "running"
    assert pod["labels"]["app"] == "bm-web" and pod["labels"]["io.beemesh.managed"] == "true"
    assert [c[:2] for c in pod["containers"]] == [["side", "running"], ["web", "running"]]
    assert out["listed_other"] == 0
    assert out["volumes_while_running"] == "bm-web-scratch"

    assert out["exec"] == [0, 3, 127, 0]
    assert out["exec_timeout"] == 124 and out["exec_timeout_s"] < 2
    assert out["exec_timeout_killed"] == 0  # the timed-out process was killed

    assert out["logs"] == [["stdout", "hello-stdout"], ["stderr", "hello-stderr"]]
    assert all(ts > 1.6e15 for ts in out["logs_timestamps"])  # epoch microseconds
    assert out["logs_tail1"] == ["hello-stderr"]
    assert out["follow"] and out["follow"][0][0] == "stderr" and "response:200" in out["follow"][0][1]
    assert out["follow_cancel_s"] < 1 and out["follow_threads_left"] <= 0

    assert out["killed"] == {"pod": "degraded", "state": "exited", "exit_code": 137}
    assert out["restarted"] == {"pod": "running", "state": "running", "started": True}

    assert "nope" in out["failures"]["bm-bad"]
    assert out["failures"]["bm-clash"]
    assert out["after_failures"]["volumes"] == "bm-web-scratch"  # bm-bad's volume is gone
    assert len(out["after_failures"]["pods"].split()) == 1

    assert out["after_remove"] == {"containers": "", "pods": "", "volumes": ""}
    assert out["http_after_remove"] is None

    assert out["service_after_close"] == "gone" and out["close_s"] < 2
    assert out["keep_after_close"]["http"] == [200, HELLO]
    assert out["keep_after_close"]["cli"].startswith("bm-keep Running")
    assert time.monotonic() - t0 < 30


def test_service_outage(store: Store):
    out = store.drive("outage")
    assert out["started_by_beemesh"] is False
    assert out["http_before"] == [200, HELLO]
    for name, err in out["errors"].items():
        assert err is not None, f"{name} did not raise RuntimeUnavailable"
        assert err["endpoint"].endswith("outage.sock") and err["s"] < 2
    assert out["status_down"]["available"] is False and out["status_down"]["last_error"]
    # The pod does not depend on the API service.
    assert out["during_outage"]["http"] == [200, HELLO]
    assert out["during_outage"]["cli"].startswith("bm-out Running")
    # The same adapter works again once the service is back.
    assert out["after_restart"] == [["bm-out", "running", ["running"]]]
    assert out["status_up"] is True
    assert out["after_remove"] == {"containers": "", "pods": "", "volumes": ""}
