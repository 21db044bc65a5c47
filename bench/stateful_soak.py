"""Soak the StatefulSet lease group in the deterministic simulation: many seeded runs with random
partitions, clock drift and process pauses; every run's start/stop history goes through the
checker. Prints violations (with their seeds, to replay one: --seed N) and timings.

With --refound, the scenario is a group that loses its majority for good instead (5 in-memory
peers running the whole daemon stack — placement, agent, beemeshd.stateful — on FakeMesh and
FakeRuntime, virtual time, seeded): one member killed for good, the ordinal's holder killed too
or cut off alone while alive; the survivor must found the group again and the ordinal must run
again, with no two copies. --negative there: the cut-off holder does not stop by itself.

    python bench/stateful_soak.py [--runs 200] [--duration 120] [--negative] [--seed N]
    python bench/stateful_soak.py --refound [--runs 40] [--negative]
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


def refound_once(seed: int, negative: bool = False) -> dict:
    """One seeded run of the lost-majority scenario (tests/unit/test_stateful.py's harness)."""
    import tempfile

    import trio
    import trio.testing

    from beemeshd.core.history_check import check
    from tests.unit.test_stateful import lose_the_majority, running

    out: dict = {}

    async def scenario():
        history: list = []
        async with trio.open_nursery() as nursery:
            with tempfile.TemporaryDirectory() as tmp:
                cut = seed % 2 == 1 or negative
                _, peers, key, pod, holder, dead, survivor, old_gid, token, t_lost = await lose_the_majority(
                    nursery, Path(tmp), history, cut_holder=cut, seed=seed)
                if negative:
                    holder.st.members[key].machine.holder.self_stop = False
                live = [p for p in peers if p not in (holder, dead)]
                with trio.move_on_after(180):
                    while not running(live, pod):
                        await trio.sleep(0.1)
                out["back_s"] = trio.current_time() - t_lost if running(live, pod) else None
                await trio.sleep(5)
                out.update(cut=cut, violations=check(history),
                           refounded=any(key in p.st.members and p.st.members[key].gid != old_gid for p in live),
                           higher=all(p.runtime.tokens.get(pod, 0) > token for p in running(live, pod)))
                nursery.cancel_scope.cancel()

    trio._core._run._r.seed(seed)  # replayable (see beemeshd/consensus/simulation.py)
    c0 = time.process_time()
    trio.run(scenario, clock=trio.testing.MockClock(autojump_threshold=0))
    out["cpu_s"] = time.process_time() - c0
    return out


def refound_main(runs: int = 40, negative: bool = False, seeds=None) -> dict:
    for name in ("pysyncobj", "beemeshd", "trio"):
        logging.getLogger(name).setLevel(logging.CRITICAL)
    seeds = list(seeds) if seeds is not None else list(range(runs))
    kinds: Counter = Counter()
    back, cpu, failing, stuck, lower = [], [], [], [], []
    for seed in seeds:
        r = refound_once(seed, negative)
        kinds.update(summary(r["violations"]))
        if r["violations"]:
            failing.append(seed)
            if len(failing) <= 3:
                for v in r["violations"][:2]:
                    print(f"  seed {seed}: {v}")
        if r["back_s"] is None or not r["refounded"]:
            stuck.append(seed)
        else:
            back.append(r["back_s"])
        if not r["higher"]:
            lower.append(seed)
        cpu.append(r["cpu_s"])
    return {"runs": len(seeds), "self_stop": not negative, "violations": sum(kinds.values()),
            "violation_kinds": dict(kinds), "runs_with_violations": len(failing), "failing_seeds": failing[:20],
            "not_back_in_180_s": stuck[:20], "token_not_higher": lower[:20],
            "back_p50_s": percentile(back, 50), "back_max_s": max(back, default=float("nan")),
            "cpu_per_run_p50_s": percentile(cpu, 50)}


def rows(runs: int = 200) -> list[tuple]:
    """Rows for bench/RESULTS.md (bench/run_all.py): the soak, its negative control, and the
    holder-death / graceful-stop failover on real peers (bench/stateful_failover_bench.py).
    `runs`: seeded soak runs (make bench passes fewer by default; 200 is the full soak)."""
    from bench import stateful_failover_bench

    r = main(runs, 120.0)
    neg_runs = min(20, max(5, runs // 10))  # every run of the control fails: a few show it
    neg = main(neg_runs, 120.0, negative=True)
    out = [
        (f"StatefulSet leases, deterministic simulation: {runs} seeded runs × 120 s (random partitions, clock "
         "drift ≤ 1e-3, pauses ≤ 0.4 s; real pysyncobj, driver and lease rules): checker violations",
         f"{r['violations']} ({r['pod_starts']} starts, {r['takeovers']} takeovers from cut-off holders, "
         f"{r['handovers']} handovers; logs diverged in {len(r['diverged_logs'])} runs)",
         f"holders that do not stop on their own (negative control, {neg_runs} runs): {neg['violations']} violations "
         f"in {neg['runs_with_violations']} runs", "—", "0: " + ("met" if r["violations"] == 0 else "**missed**")),
        ("… simulated time from an ordinal's stop to its start elsewhere (lease 3 s there), p50 / p99",
         f"{r['handover_gap_p50_s']:.2f} / {r['handover_gap_p99_s']:.2f} s", "—", "—", "—"),
    ]
    rf_runs = max(10, runs // 10)
    rf, rfn = refound_main(rf_runs), refound_main(3, negative=True)
    out.append((f"StatefulSet group re-formed after losing its majority for good: {rf_runs} seeded runs, 5 in-memory "
                "peers (one member killed; the holder killed or cut off alive), 20 s leases: checker violations",
                f"{rf['violations']} (ordinal stuck in {len(rf['not_back_in_180_s'])} runs; back after p50 "
                f"{rf['back_p50_s']:.1f} s, max {rf['back_max_s']:.1f} s of virtual time)",
                f"cut-off holder that does not stop on its own: violations in {rfn['runs_with_violations']} of "
                f"{rfn['runs']} runs", "—", "0: " + ("met" if rf["violations"] == 0 else "**missed**")))
    try:
        fo = stateful_failover_bench.main(2)
    except Exception as exc:  # real daemons and Podman: a failure here must not lose the soak's rows
        out.append(("StatefulSet holder's daemon killed (kill -9) → ordinal running on another peer",
                    f"failed: {type(exc).__name__}: {exc}"[:300], "—", "—", "—"))
        return out
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
    ap.add_argument("--refound", action="store_true", help="the lost-majority scenario (default 40 runs)")
    a = ap.parse_args()
    if a.refound:
        res = refound_main(a.runs if a.runs != 200 else 40, a.negative, a.seed)
        for k, v in res.items():
            print(f"{k}: {round(v, 3) if isinstance(v, float) else v}")
        bad = res["violations"] or res["not_back_in_180_s"] or res["token_not_higher"]
        sys.exit(1 if bad and not a.negative else 0)
    res = main(a.runs, a.duration, a.negative, a.seed, a.verbose)
    for k, v in res.items():
        print(f"{k}: {round(v, 3) if isinstance(v, float) else v}")
    sys.exit(1 if (res["violations"] or res["diverged_logs"]) and not a.negative else 0)
