"""Helpers for benchmarks: percentiles and a daemon started as the test user."""

from __future__ import annotations

import platform
import statistics
import subprocess


def percentile(samples: list[float], p: float) -> float:
    s = sorted(samples)
    if not s:
        return float("nan")
    k = (len(s) - 1) * p / 100
    lo, hi = int(k), min(int(k) + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


def summary(samples: list[float], scale: float = 1.0) -> dict:
    return {
        "n": len(samples),
        "p50": percentile(samples, 50) * scale,
        "p99": percentile(samples, 99) * scale,
        "mean": statistics.fmean(samples) * scale if samples else float("nan"),
    }


def machine() -> str:
    cpu = "?"
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    ncpu = subprocess.run(["nproc"], capture_output=True, text=True).stdout.strip()
    return f"{platform.node()}: {ncpu} × {cpu}, Python {platform.python_version()}, {platform.platform()}"


def open_mesh() -> dict:
    """Daemon settings for benchmark peers that join each other without credentials: an open mesh
    where this beemeshd has one (since issue 10 a daemon refuses uncredentialed peers by default),
    nothing otherwise. Membership checks are not part of these numbers."""
    import dataclasses

    from beemeshd.config import Config

    return {"mesh_open": True} if "mesh_open" in {f.name for f in dataclasses.fields(Config)} else {}
