"""Soak the StatefulSet lease group in the deterministic simulation: many seeded runs with random
partitions, clock drift and process pauses; every run's start/stop history goes through the
checker. Prints violations (with their seeds, to replay one: --seed N) and timings.

    python bench/stateful_soak.py [--runs 200] [--duration 120] [--negative] [--seed N]
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import percentile  # noqa: E402
from beemeshd.consensus.simulation import SimConfig, run  # noqa: E402
from beemeshd.core.history_check import summary  # noqa: E402


def main(runs: int = 200, duration: float = 120.0, negative: bool = False, seeds=None, verbose=False) -> dict:
    logging.getLogger("pysyncobj").setLevel(logging.ERROR)
    cfg = dataclasses.replace(SimConfig(), duration=duration, self_stop=not negative)
    seeds = list(seeds) if seeds is not None else list(range(runs))
    kinds: Counter = Counter()
    failing, diverged = [], []
    starts = takeovers = handovers = leaders = frames = 0
    gaps, cpu, wall = [], [], []
    t0 = time.perf_counter()
    for seed in seeds:
        r = run(seed, cfg)
        kinds.update(summary(r.violations))
        if r.violations:
            failing.append(seed)
            if verbose or len(failing) <= 3:
                for v in r.violations[:3]:
                    print(f"  seed {seed}: {v}")
        if r.diverged:
            diverged.append(seed)
        starts, takeovers, handovers = starts + r.starts, takeovers + r.takeovers, handovers + r.handovers
        leaders, frames = leaders + r.leader_changes, frames + r.frames
        gaps += r.gaps
        cpu.append(r.cpu_seconds)
        wall.append(r.wall_seconds)
    out = {
        "runs": len(seeds), "simulated_seconds_each": duration, "self_stop": not negative,
        "violations": sum(kinds.values()), "violation_kinds": dict(kinds), "runs_with_violations": len(failing),
        "failing_seeds": failing[:20], "diverged_logs": diverged[:20], "pod_starts": starts,
        "takeovers": takeovers, "handovers": handovers, "leader_changes": leaders, "frames": frames,
        "handover_gap_p50_s": percentile(gaps, 50), "handover_gap_p99_s": percentile(gaps, 99),
        "handover_gap_max_s": max(gaps, default=float("nan")),
        "cpu_per_run_p50_s": percentile(cpu, 50), "wall_per_run_p50_s": percentile(wall, 50),
        "wall_total_s": time.perf_counter() - t0,
    }
    return out


def rows() -> list[tuple]:
    """Rows for bench/RESULTS.md (bench/run_all.py): the soak, its negative control, and the
    holder-death / graceful-stop failover on real peers (bench/stateful_failover_bench.py)."""
    from bench import stateful_failover_bench

    r = main(200, 120.0)
    neg = main(20, 120.0, negative=True)
    out = [
        ("StatefulSet leases, deterministic simulation: 200 seeded runs × 120 s (random partitions, clock "
         "drift ≤ 1e-3, pauses ≤ 0.4 s; real pysyncobj, driver and lease rules): checker violations",
         f"{r['violations']} ({r['pod_starts']} starts, {r['takeovers']} takeovers from cut-off holders, "
         f"{r['handovers']} handovers; logs diverged in {len(r['diverged_logs'])} runs)",
         f"holders that do not stop on their own (negative control, 20 runs): {neg['violations']} violations "
         f"in {neg['runs_with_violations']} runs", "—", "0: " + ("met" if r["violations"] == 0 else "**missed**")),
        ("… simulated time from an ordinal's stop to its start elsewhere (lease 3 s there), p50 / p99",
         f"{r['handover_gap_p50_s']:.2f} / {r['handover_gap_p99_s']:.2f} s", "—", "—", "—"),
    ]
    fo = stateful_failover_bench.main(2)
    k, t = fo["sigkill"], fo["sigterm"]
    out.append(("StatefulSet holder's daemon killed (kill -9) → ordinal running on another peer, 3 peers on "
                "real Podman, 15 s leases, p50 / p99", f"{k['p50']:.1f} / {k['p99']:.1f} s (n={k['n']})",
                f"daemon stopped (SIGTERM: hand-over + release): {t['p50']:.1f} / {t['p99']:.1f} s (n={t['n']})",
                "—", "≤ lease + 5 s = 20 s: " + ("met" if k["p99"] <= 20 else "**missed**")))
    return out


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=200)
    ap.add_argument("--duration", type=float, default=120.0, help="simulated seconds per run")
    ap.add_argument("--negative", action="store_true", help="holders do not stop on their own (must fail)")
    ap.add_argument("--seed", type=int, action="append", help="run only this seed (repeatable)")
    ap.add_argument("--verbose", action="store_true")
    a = ap.parse_args()
    res = main(a.runs, a.duration, a.negative, a.seed, a.verbose)
    for k, v in res.items():
        print(f"{k}: {round(v, 3) if isinstance(v, float) else v}")
    sys.exit(1 if (res["violations"] or res["diverged_logs"]) and not a.negative else 0)
