"""The RPM, installed for real: units from /usr/lib/systemd/user under a real `systemd --user`,
socket activation, Deploy served over HTTP, the daemon's entries in the user journal, and an
uninstall that leaves nothing behind.

The package is installed into the machine with a database of its own (`rpm --dbpath`) and
`--nodeps`, which skips its Python requirements: a unit drop-in gives the daemon the test venv's
site-packages, after the package's own code, so what runs is the installed beemeshd.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.request
import zipfile
from pathlib import Path

import pytest

from tests.conftest import IMAGE, ROOT, VENV
from tests.integration.daemons import Systemctl, free_port, varlinkctl, wait_for

pytestmark = pytest.mark.systemd

UNITS = ("beemeshd.socket", "beemeshd.service")
WANTS = ("sockets.target.wants", "default.target.wants")
WORKLOAD = "rpm-test"


def run(*argv, timeout: float = 60, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([str(a) for a in argv], capture_output=True, text=True, timeout=timeout, **kw)


@pytest.fixture(scope="session")
def rpm_file() -> Path:
    """Built once per session from the working tree (scripts/rpm.sh prints the RPM's path)."""
    p = run(ROOT / "scripts" / "rpm.sh", timeout=300)
    assert p.returncode == 0, p.stderr
    return Path(p.stdout.strip().splitlines()[-1])


def test_rpmlint_is_clean(rpm_file):
    p = run("rpmlint", "-c", ROOT / "packaging" / "rpmlint.toml", rpm_file, ROOT / "beemesh.spec")
    assert p.returncode == 0 and " 0 errors, 0 warnings" in p.stdout, p.stdout + p.stderr


def test_bundled_libp2p_requirements_are_declared(rpm_file):
    """The spec lists the bundled libp2p's requirements by hand: they must match its metadata."""
    from packaging.requirements import Requirement

    wheel = next((rpm_file.parents[2] / "SOURCES").glob("libp2p-*.whl"))
    with zipfile.ZipFile(wheel) as z:
        meta = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
        reqs = [Requirement(line.split(":", 1)[1]) for line in z.read(meta).decode().splitlines()
                if line.startswith("Requires-Dist:")]
    typing_only = {"types-requests", "mypy-protobuf"}
    needed = {r.name.lower() for r in reqs
              if r.name.lower() not in typing_only and (not r.marker or r.marker.evaluate({"extra": ""}))}
    declared = set(re.findall(r"python3(?:\.\d+)?dist\(([^)]+)\)", run("rpm", "-qpR", rpm_file).stdout))
    assert needed - declared == set()


@pytest.fixture
def journald():
    """journald for `journalctl --user` (host-setup.md section 6) where PID 1 is not systemd.

    The `flushed` flag tells it /var/log/journal is ready, as systemd-journal-flush.service would
    at boot: it then writes there, one file per user, from the start. (`journalctl --flush`
    cannot do it here: journald refuses to remove its runtime journal from a /run that is not
    tmpfs, and keeps every entry in the system's runtime journal.)"""
    if Path("/proc/1/comm").read_text().strip() == "systemd":
        yield
        return
    if not Path("/etc/systemd/journald.conf.d/beemesh.conf").exists():
        pytest.fail("journald is not configured: run `make setup`")
    flag = Path("/run/systemd/journal/flushed")
    made_flag = not flag.exists()
    flag.parent.mkdir(parents=True, exist_ok=True)
    flag.touch()
    proc = subprocess.Popen(["/lib/systemd/systemd-journald"], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)

    def listening():
        with socket.socket(socket.AF_UNIX) as s:
            return s.connect_ex("/run/systemd/journal/stdout") == 0

    try:
        wait_for(listening, 10, "journald")
        yield
    finally:
        proc.terminate()
        proc.wait(10)
        if made_flag:
            flag.unlink(missing_ok=True)


@pytest.fixture
def manager(journald, user):
    p = run(ROOT / "scripts" / "user-manager.sh", "start")
    assert p.returncode == 0, p.stderr
    try:
        yield Systemctl(user)
    finally:
        run(ROOT / "scripts" / "user-manager.sh", "stop")


@pytest.fixture
def installed(rpm_file, manager, user):
    """The RPM installed with its own database; removed again (if the test did not) on the way out."""
    db = Path(tempfile.mkdtemp(prefix="beemesh-rpmdb-"))
    files = [Path(f) for f in run("rpm", "-qpl", rpm_file).stdout.split()]
    # Directories rpm or its scriptlets may create without owning them (%post enables the units
    # globally where the preset policy says so, as Debian's does).
    parents = {d for f in files for d in f.parents} | {Path("/etc/systemd/user") / w for w in WANTS}
    existed = {d for d in parents if d.exists()}
    state = user.tempdir()
    dropin = user.home / ".config" / "systemd" / "user" / "beemeshd.service.d"
    p = run("rpm", "-i", "--nodeps", "--dbpath", db, rpm_file)
    assert p.returncode == 0, p.stderr
    try:
        site = next(f.parent.parent for f in files if f.match("beemeshd/__init__.py"))
        vendor = next(f.parent.parent for f in files if f.match("vendor/libp2p/__init__.py"))
        venv_site = run(VENV / "bin" / "python", "-c", "import sysconfig; print(sysconfig.get_path('purelib'))")
        pythonpath = f"{site}:{vendor}:{venv_site.stdout.strip()}"
        dropin.mkdir(parents=True, exist_ok=True)
        (dropin / "rpm-test.conf").write_text(
            "[Service]\n"
            "# --nodeps skipped the Python requirements: the venv's, after the package's own code.\n"
            f"Environment=PYTHONPATH={pythonpath}\n"
            "# A state directory of its own: the user's real beemeshd state stays untouched.\n"
            f"Environment=XDG_STATE_HOME={state}\n")
        run("chown", "-R", f"{user.uid}:{user.gid}", user.home / ".config" / "systemd")
        yield {"db": db, "files": files, "new_dirs": parents - existed, "site": site, "pythonpath": pythonpath,
               "dropin": dropin}
    finally:
        manager("stop", *UNITS)
        remove_pods(user)
        manager("disable", "beemeshd.socket")
        shutil.rmtree(dropin, ignore_errors=True)
        if run("rpm", "-q", "--dbpath", db, "beemesh").returncode == 0:
            run("rpm", "-e", "--nodeps", "--dbpath", db, "beemesh")
        remove_empty(parents - existed)
        shutil.rmtree(db, ignore_errors=True)
        shutil.rmtree(state, ignore_errors=True)


def remove_pods(user) -> None:
    """The test's pods, in case the test stopped before deleting its workload."""
    pods = user.run(["podman", "pod", "ps", "-q", "--filter", "label=io.beemesh.managed=true",
                     "--filter", f"label=io.beemesh.workload={WORKLOAD}"]).stdout.split()
    if pods:
        user.run(["podman", "pod", "rm", "-f", "-t", "0", *pods])


def remove_empty(dirs) -> None:
    """Directories the package made without owning them (on Fedora other packages own them and
    presets do not enable the units), deepest first, if empty."""
    for d in sorted(dirs, key=lambda d: len(d.parts), reverse=True):
        try:
            d.rmdir()
        except OSError:
            pass


def manifest(port: int) -> dict:
    container = {"name": "httpd", "image": IMAGE, "command": ["httpd", "-f", "-p", "8080", "-h", "/var/www"],
                 "ports": [{"containerPort": 8080, "hostPort": port}]}
    return {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": WORKLOAD},
            "spec": {"replicas": 1, "selector": {"matchLabels": {"app": WORKLOAD}},
                     "template": {"metadata": {"labels": {"app": WORKLOAD}}, "spec": {"containers": [container]}}}}


def http_get(port: int) -> str | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2) as r:
            return r.read().decode()
    except OSError:
        return None


def test_install_activate_deploy_journal_uninstall(installed, manager, user):
    t0 = time.monotonic()
    address = f"unix:{user.runtime_dir}/beemesh/io.beemesh.Mesh"
    # The tmpfiles entry makes %t/beemesh private (checked against a scratch runtime directory).
    scratch = user.tempdir()
    conf = next(f for f in installed["files"] if f.match("user-tmpfiles.d/beemesh.conf"))
    r = user.run(["systemd-tmpfiles", "--user", "--create", str(conf)], env=user.env(XDG_RUNTIME_DIR=str(scratch)))
    assert r.returncode == 0 and (scratch / "beemesh").stat().st_mode & 0o777 == 0o700, r.stderr
    shutil.rmtree(scratch)

    assert manager("daemon-reload").returncode == 0
    r = manager("enable", "--now", "beemeshd.socket")
    assert r.returncode == 0, r.stderr
    assert manager.prop("beemeshd.socket", "FragmentPath") == "/usr/lib/systemd/user/beemeshd.socket"
    assert manager.prop("beemeshd.service", "ActiveState") == "inactive"

    # The first call starts the installed daemon (Type=notify: active once it is serving).
    port = free_port()
    r = varlinkctl("call", address, "io.beemesh.Mesh.Deploy",
                   json.dumps({"manifest": manifest(port), "wait": True, "timeoutSeconds": 60}), timeout=90)
    assert r.rc == 0, r.err
    assert r.json["workloads"][0]["readyReplicas"] == 1
    assert wait_for(lambda: http_get(port), 10, "the pod to serve HTTP") == "hello from beemesh busybox\n"
    info = varlinkctl("call", address, "io.beemesh.Mesh.GetInfo", "{}").json["info"]
    assert info["socketActivated"] is True
    assert manager.prop("beemeshd.service", "StatusText").startswith("serving io.beemesh.Mesh")
    pid = manager.prop("beemeshd.service", "MainPID")
    assert b"/usr/bin/beemeshd" in Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    origin = run("/usr/bin/python3", "-c", "import beemeshd; print(beemeshd.__file__)",
                 env={"PYTHONPATH": installed["pythonpath"], "PATH": "/usr/bin:/bin"}, cwd="/")
    assert origin.stdout.strip() == str(installed["site"] / "beemeshd" / "__init__.py")

    # Structured entries from the daemon's JournalHandler, read by the user from their own journal.
    def serving_entry():
        out = user.run(["journalctl", "--user", "-u", "beemeshd", "-o", "json", "--no-pager"]).stdout
        entries = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
        serving = "beemeshd 0.1.0 serving unix:"
        return next((e for e in entries if e.get("_PID") == pid and e["MESSAGE"].startswith(serving)), None)

    entry = wait_for(serving_entry, 10, "the daemon's 'serving' entry in journalctl --user")
    assert (entry["LOGGER"], entry["PRIORITY"], entry["SYSLOG_IDENTIFIER"]) == ("beemeshd", "6", "beemeshd")
    assert entry["_SYSTEMD_USER_UNIT"] == "beemeshd.service"
    assert entry["CODE_FILE"].startswith(f"{installed['site']}/beemeshd/")  # logged by the installed code

    # Delete the workload first (no pods may remain), then stop the units.
    r = varlinkctl("call", address, "io.beemesh.Mesh.Delete",
                   json.dumps({"name": WORKLOAD, "wait": True, "timeoutSeconds": 60}), timeout=90)
    assert r.rc == 0, r.err
    assert user.run(["podman", "pod", "ps", "-q", "--filter", f"label=io.beemesh.workload={WORKLOAD}"]).stdout == ""
    assert manager("stop", *UNITS).returncode == 0
    assert manager.prop("beemeshd.service", "Result") == "success"
    assert manager("disable", "beemeshd.socket").returncode == 0
    shutil.rmtree(installed["dropin"])

    # Uninstall: %preun disables the units globally; nothing of the package remains.
    r = run("rpm", "-e", "--dbpath", installed["db"], "beemesh")
    assert r.returncode == 0, r.stderr
    remove_empty(installed["new_dirs"])
    assert [f for f in installed["files"] if os.path.lexists(f)] == []
    assert not Path("/etc/beemesh").exists()
    assert list(Path("/etc/systemd/user").rglob("beemeshd.*")) == []
    assert not (user.home / ".config" / "systemd" / "user" / "sockets.target.wants" / "beemeshd.socket").exists()
    assert run("rpm", "-qa", "--dbpath", installed["db"]).stdout == ""
    assert time.monotonic() - t0 < 90
