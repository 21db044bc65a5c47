"""Start real beemeshd processes as the test user and talk to them with the real varlinkctl."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from tests.conftest import VARLINKCTL, VENV, User


@dataclass
class Reply:
    rc: int
    out: str
    err: str

    @property
    def json(self):
        return json.loads(self.out)

    @property
    def lines(self) -> list[dict]:
        return [json.loads(line) for line in self.out.splitlines() if line.strip()]

    @property
    def error(self) -> str | None:
        """The Varlink error name varlinkctl printed on stderr, if the call failed."""
        if self.rc == 0:
            return None
        return self.err.strip().rsplit(" ", 1)[-1]


def wait_for(predicate, timeout: float = 30, what: str = "condition", interval: float = 0.1):
    """predicate()'s first true value; AssertionError naming `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := predicate():
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


class Systemctl:
    """`systemctl --user` for the test user."""

    def __init__(self, user: User):
        self.user = user

    def __call__(self, *args: str) -> subprocess.CompletedProcess:
        return self.user.run(["systemctl", "--user", *args], timeout=60)

    def prop(self, unit: str, name: str) -> str:
        return self("show", "-p", name, "--value", unit).stdout.strip()


def varlinkctl(*args: str, timeout: float = 30, input: str | None = None) -> Reply:
    p = subprocess.run([str(VARLINKCTL), *args], capture_output=True, text=True, timeout=timeout, input=input)
    return Reply(p.returncode, p.stdout, p.stderr)


@dataclass
class Daemon:
    user: User
    home: Path  # per-daemon directory owned by the user
    extra_config: dict = field(default_factory=dict)
    proc: subprocess.Popen | None = None

    @property
    def socket_path(self) -> Path:
        return self.home / "run" / "io.beemesh.Mesh"

    @property
    def address(self) -> str:
        return f"unix:{self.socket_path}"

    def config_text(self) -> str:
        cfg = {
            "socket_path": str(self.socket_path),
            "state_dir": str(self.home / "state"),
            "config_dir": str(self.home / "config"),
            "registry_dir": str(self.home / "registry"),
            "log_level": "debug",
        }
        cfg.update(self.extra_config)
        return "".join(f"{k} = {json.dumps(v)}\n" for k, v in cfg.items())

    def start(self, timeout: float = 20) -> "Daemon":
        conf = self.home / "beemeshd.toml"
        conf.write_text(self.config_text())
        os.chown(conf, self.user.uid, self.user.gid)
        self.log = open(self.home / "beemeshd.log", "ab")
        self.proc = self.user.popen([str(VENV / "bin" / "beemeshd"), "--config", str(conf)],
                                    stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"beemeshd exited with {self.proc.returncode}:\n{self.log_text()}")
            try:
                # Bound is not enough (the socket exists before the server runs): wait for an answer.
                with socket.socket(socket.AF_UNIX) as s:
                    s.settimeout(max(0.1, deadline - time.monotonic()))
                    s.connect(str(self.socket_path))
                    s.sendall(b'{"method":"org.varlink.service.GetInfo"}\0')
                    if s.recv(65536):
                        return self
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"beemeshd did not listen within {timeout} s:\n{self.log_text()}")

    def log_text(self) -> str:
        try:
            return (self.home / "beemeshd.log").read_text(errors="replace")
        except OSError:
            return ""

    def call(self, method: str, params: dict | None = None, *flags: str, timeout: float = 30) -> Reply:
        return varlinkctl("call", *flags, self.address, f"io.beemesh.Mesh.{method}",
                          json.dumps(params or {}), timeout=timeout)

    def stop(self, sig=signal.SIGTERM, timeout: float = 15) -> int:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class PodmanNode(Daemon):
    """A beemeshd with its own Podman store and API socket (several can share one machine)."""

    @property
    def store(self) -> Path:
        return self.home / "podman"

    def podman_args(self) -> list[str]:
        s = self.store
        return ["--root", f"{s}/root", "--runroot", f"{s}/run", "--tmpdir", f"{s}/tmp"]

    def podman(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
        return self.user.run(["podman", *self.podman_args(), *args], timeout=timeout)

    def prepare(self, image: bool = True) -> "PodmanNode":
        """Create the store and import the local image into it (`image=False`: an empty store,
        so workloads fail to pull — no registry is reachable)."""
        for sub in ("root", "run", "tmp"):
            (self.store / sub).mkdir(parents=True, exist_ok=True)
        subprocess.run(["chown", "-R", f"{self.user.uid}:{self.user.gid}", str(self.store)], check=True)
        self.extra_config.setdefault("podman_store", str(self.store))
        if not image:
            return self
        from tests.conftest import ROOT

        p = subprocess.run([str(ROOT / "scripts" / "build-image.sh"), *self.podman_args()],
                           capture_output=True, text=True, timeout=120)
        assert p.returncode == 0, p.stderr
        return self

    def http(self, host: str, port: int, timeout: float = 2) -> str | None:
        import urllib.request

        try:
            with urllib.request.urlopen(f"http://{host}:{port}/", timeout=timeout) as r:
                return r.read().decode()
        except OSError:
            return None

    def cleanup(self) -> None:
        self.podman("pod", "rm", "-af", "-t", "0", timeout=120)
        self.podman("rm", "-af", "-t", "0", timeout=120)
        self.podman("volume", "prune", "-f", timeout=60)
        # the store's service, if a test started one by hand
        subprocess.run(["pkill", "-u", str(self.user.uid), "-f", f"system service unix://{self.store}"])


def labelled_pods(node: PodmanNode) -> list[dict]:
    """BeeMesh's pods in a node's Podman store, as `podman pod ps` shows them."""
    p = node.podman("pod", "ps", "--filter", "label=io.beemesh.managed=true", "--format", "json")
    return json.loads(p.stdout or "[]")


class TestMesh:
    """A mesh for test daemons, written to their directories before they start: what `beemeshctl
    mesh init` on one peer and `mesh invite --peer` + `mesh join` on the others leave behind.
    Daemons without it belong to no mesh and refuse every peer (the secure default)."""

    __test__ = False  # not a pytest class

    def __init__(self, name: str = "test"):
        from nacl.signing import SigningKey

        from beemeshd.mesh_keys import MeshKeys

        seed = os.urandom(32)
        self.keys = MeshKeys(name, bytes(SigningKey(seed).verify_key), seed)

    def admit(self, d: Daemon, *, holds_key: bool = False, ttl: float = 86400.0, issued: float | None = None,
              signer=None) -> str:
        """Give `d` an identity and a credential of this mesh (signed by `signer`, default the
        mesh key: another key makes a forged one); its peer id. A daemon that has one keeps it."""
        from beemeshd import identity, mesh_keys
        from beemeshd.core import credentials as cr
        from beemeshd.credential_store import MembershipFiles
        from beemeshd.files import write_private

        state, config = d.home / "state", d.home / "config"
        peer_id = identity.load_or_create(state).peer_id
        files = MembershipFiles(state)
        if files.load_credential()[0] is None:
            mesh_keys.save_public(config, self.keys.name, self.keys.public)
            if holds_key:
                write_private(mesh_keys.mesh_dir(config) / mesh_keys.KEY_FILE, self.keys.seed)
            issued = time.time() if issued is None else issued
            files.save_credential(cr.issue(signer or self.keys, peer_id, issued, ttl), [])
        for top in (state, config):
            subprocess.run(["chown", "-R", f"{d.user.uid}:{d.user.gid}", str(top)], check=True)
        return peer_id


@contextlib.contextmanager
def podman_mesh(user, n: int = 3, *, mesh: "TestMesh | None" = None, key_holders=(0,), image=lambda i: True,
                config=lambda i: {}):
    """`n` PodmanNodes of one mesh on loopback, each with its own Podman store and publish address
    (127.0.i+1.1), started, seeing each other and their runtimes; stopped and removed afterwards.
    Every node gets a credential of `mesh` (a new TestMesh by default: membership is enforced);
    `key_holders` also get the mesh key; `image(i)` False leaves node i's store without the image."""
    mesh = mesh or TestMesh()
    nodes = []
    try:
        for i in range(n):
            cfg = {"publish_host_ip": f"127.0.{i + 1}.1", "mesh_mdns": False,
                   "mesh_listen": ["/ip4/127.0.0.1/tcp/0"], **config(i)}
            if nodes:
                cfg["mesh_bootstrap"] = nodes[0].call("GetInfo").json["info"]["meshAddresses"]
            node = PodmanNode(user, user.tempdir(), cfg).prepare(image=image(i))
            mesh.admit(node, holds_key=i in key_holders)
            node.start()
            nodes.append(node)
        for node in nodes:
            wait_for(lambda node=node: node.call("GetInfo").json["info"]["peersAlive"] == n - 1, what="full mesh view")
            wait_for(lambda node=node: node.call("GetInfo").json["info"]["runtime"]["available"], what="runtime")
        yield nodes
    finally:
        for node in nodes:
            if node.proc and node.proc.poll() is None:
                node.stop(signal.SIGKILL)
            node.cleanup()
            shutil.rmtree(node.home, ignore_errors=True)


def peer_ids(nodes) -> list[str]:
    return [node.call("GetInfo").json["info"]["peerId"] for node in nodes]


def ctl(node, *args) -> subprocess.CompletedProcess:
    """beemeshctl, as the node's user, against that node."""
    return node.user.run([str(VENV / "bin" / "beemeshctl"), *args], env=node.user.env(BEEMESH_ADDRESS=node.address))
