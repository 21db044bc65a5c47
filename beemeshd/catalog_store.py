"""The decisions this peer keeps, on disk (STATE_DIR/catalog.json), written atomically.

A peer persists the workloads it holds (one of the k closest by XOR distance) or runs; the rest
of the catalog it learns again from other peers (anti-entropy) after a restart. Tombstones are
kept too, so a peer that was away cannot bring a deleted workload back.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable
from pathlib import Path

from beemeshd.core.catalog import Catalog, Decision

log = logging.getLogger("beemeshd.catalog")

FILE = "catalog.json"
FORMAT = 1


class CatalogStore:
    def __init__(self, state_dir: Path, alive: Callable[[], list[str]] = lambda: []):
        self.path = state_dir / FILE
        self.alive = alive  # live peer ids, to know which workloads this peer holds

    def load(self, catalog: Catalog) -> int:
        try:
            data = json.loads(self.path.read_text())
        except FileNotFoundError:
            return 0
        except ValueError as exc:  # a torn write cannot happen (rename), but a hand edit can
            log.error("ignoring unreadable %s: %s", self.path, exc)
            return 0
        if data.get("format") != FORMAT:
            raise SystemExit(f"beemeshd: {self.path}: unknown format {data.get('format')!r}")
        n = 0
        for wire in data.get("decisions", ()):
            try:
                n += catalog.merge(Decision.from_wire(wire))
            except ValueError as exc:
                log.error("skipping a stored decision: %s", exc)
        return n

    def save(self, catalog: Catalog) -> None:
        alive = self.alive()
        kept = [d.to_wire() for key, d in sorted(catalog.entries.items()) if catalog.keeps(key, alive)]
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        tmp = self.path.with_name(FILE + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump({"format": FORMAT, "decisions": kept}, f, separators=(",", ":"))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)
