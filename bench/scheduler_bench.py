"""Placements per second of the pure scheduling core alone: 1,000 peers evaluate each task and
choose() picks 3 winners — no messaging (the full 1,000-peer mesh simulation is issue 8's).
Prints placements/s (wall) and the per-placement p50/p99. Deterministic from the seed."""

from __future__ import annotations

import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import summary  # noqa: E402
from beemeshd.core import scheduler as sch  # noqa: E402

GI = 1 << 30


def main(peers: int = 1000, placements: int = 500, seed: int = 1) -> dict:
    rng = random.Random(seed)
    states = [sch.PeerState(f"peer{i}", rng.randrange(500, 8000), 8000, rng.randrange(1, 32) * GI, 32 * GI,
                            rng.randrange(0, 110), 110, rng.uniform(0, 7 * 86400),
                            delivered=rng.randrange(0, 50), failed=rng.randrange(0, 5)) for i in range(peers)]
    samples, choose_only = [], []
    t_all = time.perf_counter()
    for n in range(placements):
        task = sch.Task(f"t{n}", f"default/Deployment/w{n}", 1, ("r-0", "r-1", "r-2"), 250, 256 << 20)
        t0 = time.perf_counter()
        bids = [a for a in (sch.evaluate(task, s) for s in states) if isinstance(a, sch.Bid)]
        t1 = time.perf_counter()
        decision = sch.choose(task, bids)
        t2 = time.perf_counter()
        samples.append(t2 - t0)
        choose_only.append(t2 - t1)
        assert all(decision.peers().values())
    wall = time.perf_counter() - t_all
    s = summary(samples, 1000)
    rate = placements / wall
    c = summary(choose_only, 1000)
    print(f"scheduling core, {peers} bidders evaluated in one process: {rate:.0f} placements/s (wall), "
          f"p50 {s['p50']:.2f} ms, p99 {s['p99']:.2f} ms per placement (n={s['n']})")
    print(f"choose() alone over the bids (what the asking peer does; peers evaluate in parallel): "
          f"p50 {c['p50']:.2f} ms, p99 {c['p99']:.2f} ms -> {1000 / c['p50']:.0f} decisions/s")
    return {"rate": rate, **s, "choose_p50_ms": c["p50"], "choose_p99_ms": c["p99"]}


if __name__ == "__main__":
    main()
