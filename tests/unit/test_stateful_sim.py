"""The lease group under random partitions, clock drift and process pauses (deterministic
simulation: real driver, pysyncobj, lease rules; virtual time; seeded), judged by the history
checker. The 200-run soak is bench/stateful_soak.py."""

from __future__ import annotations

import dataclasses

import pytest

from beemeshd.consensus.simulation import SimConfig, run
from beemeshd.core.history_check import summary

CFG = dataclasses.replace(SimConfig(), duration=60.0)


@pytest.fixture(scope="module")
def runs():
    return [run(seed, CFG) for seed in range(20)]


def test_no_two_copies_of_an_ordinal_in_20_seeded_runs(runs):
    bad = {r.seed: [str(v) for v in r.violations[:3]] for r in runs if r.violations}
    assert bad == {}


def test_every_member_applied_the_same_log(runs):
    assert {r.seed: r.diverged[:5] for r in runs if r.diverged} == {}


def test_the_runs_did_exercise_failover(runs):
    # Partitions took ordinals from cut-off holders (after the lease wait), moves handed them over,
    # and ordinals ran again afterwards: the runs were not quiet.
    assert sum(r.takeovers for r in runs) >= 20
    assert sum(r.handovers for r in runs) >= 100
    assert sum(r.leader_changes for r in runs) >= 200
    assert all(r.starts >= 3 for r in runs)
    assert sum(r.fenced for r in runs) == 0  # tokens only grow, so the fence never had to refuse


def test_negative_control_without_self_stop_the_checker_finds_overlaps():
    cfg = dataclasses.replace(CFG, self_stop=False)
    found = [summary(run(seed, cfg).violations) for seed in range(3)]
    assert sum(f.get("overlap", 0) for f in found) > 0, found
