"""`make bench` keeps going: a step that fails or overruns becomes a row saying so, the other rows
stay, and the 20-peer mesh step reports partial results instead of failing (bench/run_all.py,
bench/mesh_bench.py). No benchmark is run here: the steps are stand-ins."""

from __future__ import annotations

import time

import trio

from bench import mesh_bench, run_all
from bench.run_all import Report, Row


def rows_of(rep: Report) -> dict[str, str]:
    return {r.metric: r.beemesh for r in rep.rows}


def test_a_failing_step_is_a_row_and_the_next_step_runs():
    rep = Report()
    calls = []

    def good(rep):
        rep.rows.append(Row("good", "1 ms"))

    def bad(rep):
        calls.append("bad")
        rep.rows.append(Row("half done", "x"))  # a failed step's own rows are not kept half-made
        raise RuntimeError("podman went away")

    run_all.run_step(rep, "good", "a step", 10, good)
    run_all.run_step(rep, "bad", "another step", 10, bad)
    run_all.run_step(rep, "after", "a third", 10, lambda rep: rep.rows.append(Row("after", "2 ms")))
    got = rows_of(rep)
    assert got["good"] == "1 ms" and got["after"] == "2 ms"
    assert "half done" not in got
    assert got["bad: another step"].startswith("failed this run (twice): RuntimeError: podman went away")
    assert calls == ["bad", "bad"]  # a quick failure is tried once more


def test_a_slow_failure_is_not_retried():
    rep = Report()
    calls = []

    def slow_bad(rep):
        calls.append(1)
        time.sleep(1.1)
        raise ValueError("broke late")

    run_all.run_step(rep, "slow", "a step", 1, slow_bad)
    assert calls == [1]
    assert rows_of(rep)["slow: a step"] == "failed this run: ValueError: broke late"


def test_a_step_that_overruns_is_stopped_even_inside_trio(monkeypatch):
    monkeypatch.setattr(run_all, "limit", lambda estimate: 1)
    rep = Report()
    swallowed = []

    def hangs(rep):
        try:
            time.sleep(30)
        except Exception as exc:  # a step's own catch-all must not keep the timeout
            swallowed.append(exc)

    def hangs_in_trio(rep):
        trio.run(trio.sleep, 30)

    t0 = time.monotonic()
    run_all.run_step(rep, "hang", "a step", 100, hangs)
    run_all.run_step(rep, "trio", "a trio step", 100, hangs_in_trio)
    assert time.monotonic() - t0 < 10
    assert not swallowed
    got = rows_of(rep)
    assert got["hang: a step"] == "failed this run: stopped: no result within 1 s (≈ 100 s expected)"
    assert got["trio: a trio step"] == "failed this run: stopped: no result within 1 s (≈ 100 s expected)"
    assert trio.run(trio.sleep, 0) is None  # trio still runs after one was stopped


def test_a_step_is_stopped_even_when_sigint_came_ignored(monkeypatch):
    """`nohup make bench &` starts Python with SIGINT ignored (no KeyboardInterrupt handler): the
    interrupt that stops an overrunning step must still land (it did not: the step ran on)."""
    import signal

    monkeypatch.setattr(run_all, "limit", lambda estimate: 1)
    before = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        rep = Report()
        t0 = time.monotonic()
        run_all.run_step(rep, "hang", "a step", 100, lambda rep: time.sleep(30))
        assert time.monotonic() - t0 < 10
        assert rows_of(rep)["hang: a step"].startswith("failed this run: stopped")
        assert signal.getsignal(signal.SIGINT) == signal.SIG_IGN  # given back as it was
    finally:
        signal.signal(signal.SIGINT, before)


def test_optional_rows_get_the_arguments_they_accept(monkeypatch):
    import sys
    import types

    seen = {}
    mod = types.ModuleType("bench.fake_soak")

    def rows(runs=200):
        seen["runs"] = runs
        return [("soak", f"{runs} runs", "—", "—", "—")]

    mod.rows = rows
    monkeypatch.setitem(sys.modules, "bench.fake_soak", mod)
    rep = Report()
    run_all.optional("fake_soak", "Soak", lambda: {"runs": 7, "unknown": 1})(rep)
    assert seen == {"runs": 7} and rows_of(rep)["soak"] == "7 runs"


def test_optional_main_keeps_what_it_printed_before_failing(monkeypatch):
    import sys
    import types

    mod = types.ModuleType("bench.fake_flood")

    def main():
        print("first figure: 3 ms")
        raise RuntimeError("second part broke")

    mod.main = main
    monkeypatch.setitem(sys.modules, "bench.fake_flood", mod)
    rep = Report()
    run_all.run_step(rep, "flood", "floods", 10, run_all.optional("fake_flood", "Flood"))
    assert rep.raw == [("bench/fake_flood.py (stopped by a failure)", "first figure: 3 ms\n")]
    assert rows_of(rep)["flood: floods"].startswith("failed this run: RuntimeError: second part broke")


class FakeNode:
    def __init__(self, events):
        self.log = events


def test_view_progress_counts_peers_that_saw_everyone():
    nodes = [FakeNode([{"event": "PeerJoined", "alive": 19}]),
             FakeNode([{"event": "PeerJoined", "alive": 12}, {"event": "PeerSuspect", "alive": 11}]),
             FakeNode([{"event": "up"}])]
    assert mesh_bench.view_progress(nodes, 20) == {"full": 1, "of": 3, "least": 0}
    assert mesh_bench.seen_joined(nodes, "new") == 0
    nodes[1].log.append({"event": "PeerJoined", "peer": "new", "alive": 13})
    assert mesh_bench.seen_joined(nodes, "new") == 1


def test_mesh_run_goes_on_when_the_mesh_does_not_start(monkeypatch):
    def no_mesh(*a, **kw):
        raise TimeoutError("node 3 not up within 60 s")

    monkeypatch.setattr(mesh_bench, "start_mesh", no_mesh)
    monkeypatch.setattr(mesh_bench, "fake_convergence", lambda n: (1.0, 2.0))
    r = mesh_bench.run(runs=1, together=False, strict=False, sim=10)
    assert r["errors"] == {"full view": "TimeoutError: node 3 not up within 60 s"}
    assert r["fake"] == {"peers": 10, "virtual_s": 1.0, "wall_s": 2.0}


def test_mesh_rows_say_partial_instead_of_failing(monkeypatch):
    nan = float("nan")
    empty = {"n": 0, "p50": nan, "p99": nan, "mean": nan}

    def s(n):
        return {"n": n, "p50": 0.1, "p99": 0.2, "mean": 0.1}

    partial = {
        "errors": {"RSS": "RuntimeError: beemeshd did not listen within 60 s"}, "skipped": ["failure detection"],
        "launched one after another": {"after_last_up": empty, "after_launch": empty, "runs": 1,
                                       "progress": {"full": 12, "of": 20, "least": 15}},
        "gossip_ms": s(1500), "gossip_expected": 1900,
        "join": s(1), "joins_partial": [17, 18], "joins_tried": 3,
        "fake": {"peers": 300, "virtual_s": 1.05, "wall_s": 6.2},
    }
    monkeypatch.setattr(mesh_bench, "run", lambda **kw: partial)
    rep = Report()
    rep.load.append(("mesh", "9.1"))
    run_all.step_mesh(rep)
    got = rows_of(rep)
    assert len(got) == 6
    assert "partial: 1500 of 1900 deliveries seen" in got[next(k for k in got if k.startswith("Gossip"))]
    assert got["20 peers launched one after another: last one up → every peer sees 19 alive"].startswith(
        "partial: 12 of 20 peers saw all 19 others alive within 45 s (the least saw 15)")
    assert "partial: 1 of 3 joins seen by all within 20 s (the others by 17, 18 of them)" in \
        got["One peer joins 19: its mesh up → alive at all of them, p50 / p99"]
    assert got["kill -9 → dead (`PeerLeft`) at each survivor, p50 / p99"].startswith("skipped")
    assert got["Idle beemeshd RSS in a 20-peer mesh"] == "failed: RuntimeError: beemeshd did not listen within 60 s"
