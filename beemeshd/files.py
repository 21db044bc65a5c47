"""Small files the daemon owns (keys, credentials, policies, fences): written atomically and
private — never briefly readable by others, never half-written after a crash."""

from __future__ import annotations

import os
from pathlib import Path


def write_private(path: Path, data: bytes, mode: int = 0o600) -> None:
    """Replace `path` with `data` (mode `mode`, parent directories 0700 when created)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    finally:
        os.close(fd)
    os.chmod(tmp, mode)  # a stale tmp file may have had another mode
    os.replace(tmp, path)
