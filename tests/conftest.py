"""Shared fixtures.

The suite runs as root (it starts user managers and network namespaces); everything BeeMesh itself
runs — beemeshd, podman — runs as the unprivileged test user created by `make setup`, from the
installed venv (the checkout may not be readable by that user).
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
VARLINKCTL = ROOT / "scripts" / "varlinkctl"
TEST_USER = os.environ.get("BEEMESH_TEST_USER", "beemesh-test")
VENV = Path(os.environ.get("BEEMESH_VENV", "/var/lib/beemesh/venv"))
IMAGE = os.environ.get("BEEMESH_IMAGE", "localhost/beemesh-busybox:latest")


@dataclass(frozen=True)
class User:
    name: str
    uid: int
    gid: int
    home: Path

    @property
    def runtime_dir(self) -> Path:
        return Path(f"/run/user/{self.uid}")

    def env(self, **extra: str) -> dict[str, str]:
        env = {
            "HOME": str(self.home),
            "USER": self.name,
            "LOGNAME": self.name,
            "PATH": f"{VENV}/bin:/usr/local/bin:/usr/bin:/bin",
            "XDG_RUNTIME_DIR": str(self.runtime_dir),
            "LANG": "C.UTF-8",
        }
        env.update(extra)
        return env

    def argv(self, argv: list[str]) -> list[str]:
        """Wrap argv so that it execs as this user (setpriv execs in place: the PID is the program's)."""
        return ["setpriv", f"--reuid={self.uid}", f"--regid={self.gid}", "--init-groups", *argv]

    def run(self, argv: list[str], *, env: dict | None = None, cwd=None, **kw) -> subprocess.CompletedProcess:
        kw.setdefault("capture_output", True)
        kw.setdefault("text", True)
        kw.setdefault("timeout", 120)
        return subprocess.run(self.argv(argv), env=env or self.env(), cwd=cwd or self.home, **kw)

    def popen(self, argv: list[str], *, env: dict | None = None, **kw) -> subprocess.Popen:
        return subprocess.Popen(self.argv(argv), env=env or self.env(), cwd=self.home, **kw)

    def tempdir(self) -> Path:
        """A fresh directory owned by the user (removed by the caller or at reboot)."""
        d = Path(tempfile.mkdtemp(prefix="beemesh-test-"))
        os.chown(d, self.uid, self.gid)
        return d


def _setup_done() -> bool:
    try:
        pwd.getpwnam(TEST_USER)
    except KeyError:
        return False
    return (VENV / "bin" / "beemeshd").exists() and os.geteuid() == 0


@pytest.fixture(scope="session")
def user() -> User:
    if not _setup_done():
        pytest.fail("the machine is not set up: run `make test` (it runs scripts/setup.sh first)")
    pw = pwd.getpwnam(TEST_USER)
    return User(pw.pw_name, pw.pw_uid, pw.pw_gid, Path(pw.pw_dir))


@pytest.fixture(scope="session")
def varlinkctl() -> Path:
    if not VARLINKCTL.exists() or subprocess.run([VARLINKCTL, "--version"], capture_output=True).returncode:
        pytest.fail("varlinkctl is not fetched: run `make setup`")
    return VARLINKCTL


@pytest.fixture
def user_tmp(user: User):
    d = user.tempdir()
    yield d
    shutil.rmtree(d, ignore_errors=True)


def venv_python() -> str:
    return str(VENV / "bin" / "python")


def this_python() -> str:
    return sys.executable
