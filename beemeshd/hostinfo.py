"""Facts about this machine that a peer advertises: CPU and memory."""

from __future__ import annotations

import os


def cpu_millis() -> int:
    try:
        n = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        n = os.cpu_count() or 1
    return n * 1000


def memory_bytes() -> tuple[int, int]:
    """(total, available) from /proc/meminfo."""
    values = {}
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                key, _, rest = line.partition(":")
                values[key] = int(rest.split()[0]) * 1024
    except (OSError, ValueError, IndexError):
        return 0, 0
    return values.get("MemTotal", 0), values.get("MemAvailable", 0)
