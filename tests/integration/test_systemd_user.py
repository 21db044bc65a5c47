"""beemeshd under a real `systemd --user` manager: socket activation, Type=notify, clean stop."""

from __future__ import annotations

import shutil
import subprocess
import time

import pytest

from tests.conftest import ROOT, VENV
from tests.integration.daemons import Systemctl, varlinkctl

pytestmark = pytest.mark.systemd


@pytest.fixture
def manager(user):
    p = subprocess.run([str(ROOT / "scripts" / "user-manager.sh"), "start"], capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    unit_dir = user.home / ".config" / "systemd" / "user"
    try:
        unit_dir.mkdir(parents=True, exist_ok=True)
        for name in ("beemeshd.socket", "beemeshd.service"):
            shutil.copy(ROOT / "units" / name, unit_dir / name)
        # The units name /usr/bin/beemeshd (the RPM's path); point them at the test venv.
        dropin = unit_dir / "beemeshd.service.d"
        dropin.mkdir(exist_ok=True)
        (dropin / "venv.conf").write_text(f"[Service]\nExecStart=\nExecStart={VENV}/bin/beemeshd\n")
        subprocess.run(["chown", "-R", f"{user.uid}:{user.gid}", str(user.home / ".config")], check=True)
        yield Systemctl(user)
    finally:
        Systemctl(user)("stop", "beemeshd.socket", "beemeshd.service")
        Systemctl(user)("disable", "beemeshd.socket")  # its sockets.target.wants link, too
        subprocess.run([str(ROOT / "scripts" / "user-manager.sh"), "stop"], timeout=60)
        shutil.rmtree(unit_dir / "beemeshd.service.d", ignore_errors=True)
        for name in ("beemeshd.socket", "beemeshd.service"):
            (unit_dir / name).unlink(missing_ok=True)


def test_socket_activation_notify_and_stop(manager, user):
    assert manager("daemon-reload").returncode == 0
    r = manager("enable", "--now", "beemeshd.socket")
    assert r.returncode == 0, r.stderr
    assert manager.prop("beemeshd.service", "ActiveState") == "inactive"
    address = f"unix:{user.runtime_dir}/beemesh/io.beemesh.Mesh"

    t0 = time.monotonic()
    r = varlinkctl("call", address, "io.beemesh.Mesh.GetInfo", "{}")
    first_call = time.monotonic() - t0
    assert r.rc == 0, r.err
    assert r.json["info"]["socketActivated"] is True  # systemd passed the socket, named "varlink"
    # Type=notify: active only after READY=1, and our STATUS= is shown
    assert manager.prop("beemeshd.service", "ActiveState") == "active"
    assert manager.prop("beemeshd.service", "StatusText").startswith("serving io.beemesh.Mesh")
    assert first_call < 10

    r = manager("stop", "beemeshd.service")
    assert r.returncode == 0, r.stderr
    assert manager.prop("beemeshd.service", "ActiveState") == "inactive"
    assert manager.prop("beemeshd.service", "Result") == "success"
    assert manager.prop("beemeshd.service", "ExecMainStatus") == "0"
    # the socket stays, so the next call starts the daemon again
    r = varlinkctl("call", address, "io.beemesh.Mesh.GetInfo", "{}")
    assert r.rc == 0, r.err
    assert manager.prop("beemeshd.service", "ActiveState") == "active"
