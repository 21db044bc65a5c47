"""pysyncobj's clock and randomness, process-wide by its design, switched per group.

pysyncobj reads time through the module global `pysyncobj.syncobj.monotonicTime` and draws
election timeouts from the module `random`. `install()` (run on import) replaces both, once, with
dispatchers that ask whichever group is being driven at that moment: the driver wraps every call
into pysyncobj (construction, ticks, delivered messages — all synchronous, on the trio thread) in
`using(clock, rng)`. So one process can hold groups on different clocks:

- the daemon: time.monotonic (Raft timers need no more; leases have their own clocks, see
  beemeshd/core/lease.py) and one random.Random;
- the simulator: each peer's drifting clock on trio's virtual time and a seeded Random, so a run
  is reproducible and 120 s of cluster life take well under a second.

Outside `using` the defaults (time.monotonic, a private Random) apply.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from contextlib import contextmanager

import pysyncobj.syncobj

_default_rng = random.Random()
_clock: Callable[[], float] = time.monotonic
_rng: random.Random = _default_rng


def _now() -> float:
    return _clock()


class _Random:
    """The part of the `random` module pysyncobj uses, drawn from the current group's Random."""

    @staticmethod
    def random() -> float:
        return _rng.random()


@contextmanager
def using(clock: Callable[[], float], rng: random.Random | None = None):
    global _clock, _rng
    before = _clock, _rng
    _clock, _rng = clock, rng or _default_rng
    try:
        yield
    finally:
        _clock, _rng = before


def install() -> None:
    pysyncobj.syncobj.monotonicTime = _now
    pysyncobj.syncobj.random = _Random()


install()
