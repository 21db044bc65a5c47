"""Which rootless network mode pods get: slirp4netns everywhere, pasta or bypass4netns where the
host has them.

The rules are pure functions of `HostFacts` so they can be tested without the tools installed;
`probe()` is the one place that looks at the machine.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
from dataclasses import dataclass

SLIRP4NETNS = "slirp4netns"
PASTA = "pasta"
BYPASS4NETNS = "bypass4netns"
AUTO = "auto"
# Fastest first: bypass4netns hands sockets to the host (no user-mode TCP/IP stack at all),
# pasta is a leaner user-mode translator than slirp4netns.
PREFERENCE = (BYPASS4NETNS, PASTA, SLIRP4NETNS)

PASTA_MIN_PODMAN = (4, 4)  # Podman 4.3 answers `--network pasta` with "network not found"
SECCOMP_LISTENER_MIN_RUNC = (1, 1)  # bypass4netns needs seccomp user notification listeners


class NetworkModeUnavailable(Exception):
    """The configured network mode cannot be used on this host."""

    def __init__(self, mode: str, available: list[str]):
        self.mode = mode
        self.available = available
        what = "network mode" if mode in (AUTO, *PREFERENCE) else "unknown network mode"
        super().__init__(f"{what} {mode!r} is not available here "
                         f"(available: {', '.join(available) or 'none'})")


@dataclass(frozen=True)
class HostFacts:
    podman_version: str | None  # e.g. "4.3.1"
    binaries: frozenset[str]  # which of the probed executables are on PATH
    oci_runtime: str | None = None  # "runc", "crun", ...
    oci_runtime_version: str | None = None  # first version-looking token of `runc --version`
    bypass4netnsd_listening: bool = False


def parse_version(text: str | None) -> tuple[int, ...]:
    """(4, 3, 1) from "4.3.1", "v4.3.1-rc1" or "runc version 1.1.5+ds1"; () if none."""
    m = re.search(r"(\d+)\.(\d+)(?:\.(\d+))?", text or "")
    return tuple(int(g) for g in m.groups() if g is not None) if m else ()


def available_modes(facts: HostFacts) -> list[str]:
    """Usable modes in preference order. slirp4netns is Podman's rootless default, always there."""
    modes = [SLIRP4NETNS]
    podman = parse_version(facts.podman_version)
    if podman >= PASTA_MIN_PODMAN and facts.binaries & {"pasta", "passt"}:
        modes.append(PASTA)
    runc_ok = (facts.oci_runtime == "runc"
               and parse_version(facts.oci_runtime_version) >= SECCOMP_LISTENER_MIN_RUNC)
    if "bypass4netns" in facts.binaries and runc_ok and facts.bypass4netnsd_listening:
        modes.append(BYPASS4NETNS)
    return [m for m in PREFERENCE if m in modes]


def choose(configured: str, available: list[str]) -> str:
    """The configured mode if usable; for "auto" the fastest available one."""
    if configured == AUTO:
        for mode in PREFERENCE:
            if mode in available:
                return mode
        raise NetworkModeUnavailable(configured, available)
    if configured not in available:
        raise NetworkModeUnavailable(configured, available)
    return configured


def pod_netns(mode: str) -> dict:
    """The `netns` field of Podman's pod create call for a mode.

    bypass4netns does not replace the pod's network namespace: it accelerates sockets of
    containers that sit on a slirp4netns namespace, so the namespace itself is slirp4netns.
    """
    return {"nsmode": PASTA if mode == PASTA else SLIRP4NETNS}


def bypass4netnsd_socket() -> str:
    return os.path.join(os.environ.get("XDG_RUNTIME_DIR", "/tmp"), "bypass4netnsd.sock")


def probe(podman_version: str | None = None, oci_runtime: str | None = None,
          oci_runtime_version: str | None = None) -> HostFacts:
    """Look at this machine. Versions not given are read from `podman version` / `podman info`
    (the adapter passes what the API already told it, which avoids two subprocesses)."""
    if podman_version is None or oci_runtime is None:
        info = _podman_json(["info", "--format", "json"])
        host = info.get("host", {}) if isinstance(info, dict) else {}
        podman_version = podman_version or _podman_json(
            ["version", "--format", "json"]).get("Client", {}).get("Version")
        oci = host.get("ociRuntime", {})
        oci_runtime = oci_runtime or oci.get("name")
        oci_runtime_version = oci_runtime_version or oci.get("version")
    binaries = frozenset(b for b in ("pasta", "passt", "bypass4netns") if shutil.which(b))
    sock = bypass4netnsd_socket()
    return HostFacts(
        podman_version=podman_version,
        binaries=binaries,
        oci_runtime=oci_runtime,
        oci_runtime_version=oci_runtime_version,
        bypass4netnsd_listening="bypass4netns" in binaries and _listening(sock),
    )


def _podman_json(args: list[str]) -> dict:
    try:
        out = subprocess.run(["podman", *args], capture_output=True, text=True, timeout=20)
        return json.loads(out.stdout) if out.returncode == 0 else {}
    except (OSError, ValueError, subprocess.TimeoutExpired):
        return {}


def _listening(path: str) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(1)
        try:
            s.connect(path)
            return True
        except OSError:
            return False
