"""What a peer keeps on disk for its StatefulSet ordinals (under the state directory, stateful/).

- fences/NS/NAME/ORDINAL: the highest fencing token an ordinal's pod was ever started under
  on this peer. Written (fsync'd) before every start; a start under a lower token is refused,
  and the group's token floor is raised to it, so tokens stay monotonic when a group is
  dissolved and created again (Delete, then Deploy of the same StatefulSet).
- leases/POD.json: the lease a running stateful pod holds here ({deadline} on CLOCK_BOOTTIME),
  refreshed after every committed renewal. The lease watchdog (beemeshd/lease_watchdog.py), a
  separate process, kills the pod at the deadline if beemeshd did not stop it — it was killed,
  or hangs — so a crashed daemon's pod never outlives its lease.
- groups.json: the consensus groups this peer joined and the member id it used in each. A
  member id is never used twice: Raft assumes a member remembers its votes and log, and the
  groups keep no journal, so a restarted daemon joins again under a new id.

Small files, written atomically (temporary file, fsync, rename).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

BOOTTIME = getattr(time, "CLOCK_BOOTTIME", time.CLOCK_MONOTONIC)


def boottime() -> float:
    """CLOCK_BOOTTIME: like CLOCK_MONOTONIC, but it keeps counting while the machine sleeps."""
    return time.clock_gettime(BOOTTIME)


def boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


def write_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def _safe(part: str) -> str:
    if not part or "/" in part or part in (".", "..") or "\0" in part:
        raise ValueError(f"not a safe file name: {part!r}")
    return part


class StatefulFiles:
    def __init__(self, state_dir: Path):
        self.root = Path(state_dir) / "stateful"
        self.leases_dir = self.root / "leases"

    # -- fences ---------------------------------------------------------------------------------
    def _fence(self, namespace: str, name: str, ordinal: int) -> Path:
        return self.root / "fences" / _safe(namespace) / _safe(name) / str(int(ordinal))

    def fence(self, namespace: str, name: str, ordinal: int) -> int:
        try:
            return int(self._fence(namespace, name, ordinal).read_text().strip() or 0)
        except (OSError, ValueError):
            return 0

    def set_fence(self, namespace: str, name: str, ordinal: int, token: int) -> None:
        write_atomic(self._fence(namespace, name, ordinal), f"{int(token)}\n".encode())

    def fence_floor(self, namespace: str, name: str) -> int:
        d = self.root / "fences" / _safe(namespace) / _safe(name)
        try:
            return max((int(p.read_text().strip() or 0) for p in d.iterdir() if p.name.isdigit()), default=0)
        except (OSError, ValueError):
            return 0

    # -- leases for the watchdog ----------------------------------------------------------------
    def lease_path(self, pod: str) -> Path:
        return self.leases_dir / f"{_safe(pod)}.json"

    def write_lease(self, pod: str, deadline: float, token: int, ordinal: str, peer: str) -> None:
        doc = {"pod": pod, "deadline": deadline, "token": token, "ordinal": ordinal, "peer": peer,
               "bootId": boot_id()}
        write_atomic(self.lease_path(pod), json.dumps(doc).encode())

    def drop_lease(self, pod: str) -> None:
        try:
            self.lease_path(pod).unlink()
        except FileNotFoundError:
            pass

    def lease(self, pod: str) -> dict | None:
        try:
            doc = json.loads(self.lease_path(pod).read_text())
        except (OSError, ValueError):
            return None
        return doc if isinstance(doc, dict) and doc.get("bootId") == boot_id() else None

    # -- group member ids -----------------------------------------------------------------------
    def groups(self) -> dict[str, str]:
        try:
            doc = json.loads((self.root / "groups.json").read_text())
        except (OSError, ValueError):
            return {}
        return {str(k): str(v) for k, v in doc.items()} if isinstance(doc, dict) else {}

    def set_group(self, group_id: str, node_id: str | None) -> None:
        doc = self.groups()
        if node_id is None:
            doc.pop(group_id, None)
        else:
            doc[group_id] = node_id
        write_atomic(self.root / "groups.json", json.dumps(doc, sort_keys=True).encode())
