"""The peer view and failure detector, with time as an argument."""

import random

import pytest

from beemeshd.core.membership import (
    ALIVE, DEAD, JOINED, LEFT, PENDING, RECOVERED, SUSPECT, SUSPECTED, Membership, Timings,
)

T = Timings(ping_interval=0.5, suspect_after=1.5, dead_after=3.0, redial_min=1.0, redial_max=5.0,
            forget_after=60.0)


def run(m: Membership, until: float, start: float = 0.0, heard=()):
    """Tick every ping interval from start to until; `heard` peers answer every probe."""
    events = []
    t = start
    while t <= until + 1e-9:
        for p in heard:
            events += [(t, *e) for e in m.heard(p, t)]
        events += [(t, *e) for e in m.tick(t)]
        t = round(t + T.ping_interval, 6)
    return events


def test_timings_must_be_ordered():
    assert Timings().ping_interval + 0 < Timings().suspect_after < Timings().dead_after <= 3.0  # defaults ≤ 3 s
    for bad in ((1, 0.5, 3), (0.5, 3, 3), (0, 1, 2)):
        with pytest.raises(ValueError):
            Timings(*bad)


def test_alive_suspect_dead_and_back():
    m = Membership("me", T)
    assert m.heard("p", 0.0) == [(JOINED, "p")]
    assert m.heard("p", 0.5) == []
    events = run(m, 5.0, start=0.5)
    assert [(t, e) for t, e, _ in events] == [(2.5, SUSPECTED), (4.0, LEFT)]  # silent > 1.5 s, > 3 s
    assert m.get("p").state == DEAD and m.counts() == {ALIVE: 0, SUSPECT: 0, DEAD: 1}
    assert m.heard("p", 6.0) == [(JOINED, "p")]  # returned
    assert m.get("p").alive_since == 6.0


def test_recovery_from_suspect_keeps_the_uptime_streak():
    m = Membership("me", T)
    m.heard("p", 0.0)
    m.tick(2.0)
    assert m.get("p").state == SUSPECT
    assert m.heard("p", 2.2) == [(RECOVERED, "p")]
    assert m.get("p").alive_since == 0.0


def test_self_is_never_a_member():
    m = Membership("me", T)
    assert m.heard("me", 0.0) == [] and not m.learned("me", {}, b"r", 1, 0.0)
    assert m.members == {}


def test_a_relayed_record_is_a_rumour_not_evidence():
    m = Membership("me", T)
    assert m.learned("p", {"uptimeSeconds": 5.0, "addresses": ["/a"]}, b"r1", 10, 0.0)
    assert m.get("p").state == PENDING and m.listed() == [] and m.counts()[ALIVE] == 0
    assert "p" in m.probe_targets(0.0)  # worth a probe
    assert m.tick(3.1) == [] and m.get("p") is None  # never heard: forgotten silently
    m.learned("q", {"uptimeSeconds": 5.0, "addresses": []}, b"r", 1, 0.0)
    assert m.heard("q", 0.4) == [(JOINED, "q")]


def test_newer_records_win_and_revive_probing_of_the_dead():
    m = Membership("me", T)
    m.heard("p", 0.0)
    assert m.learned("p", {"uptimeSeconds": 1.0}, b"r2", 2, 0.0)
    assert not m.learned("p", {"uptimeSeconds": 9.0}, b"r1", 1, 0.0)  # older (a replay): ignored
    assert m.get("p").record_raw == b"r2" and m.get("p").uptime(10.0) == 11.0
    run(m, 4.0)
    assert m.get("p").state == DEAD
    assert "p" in m.probe_targets(4.5)  # declared dead at 3.5, first redial 1 s later
    assert "p" not in m.probe_targets(5.0)  # backing off
    assert m.learned("p", {"uptimeSeconds": 0.0}, b"r3", 3, 5.1)  # it restarted: look now
    assert "p" in m.probe_targets(5.1)


def test_dead_peers_are_redialled_with_back_off_then_forgotten():
    m = Membership("me", T)
    m.heard("p", 0.0)
    run(m, 3.5)
    assert m.get("p").state == DEAD  # at 3.5
    probed = [3.5] + [t / 10 for t in range(36, 400) if not m.tick(t / 10) and "p" in m.probe_targets(t / 10)]
    gaps = [round(b - a, 1) for a, b in zip(probed, probed[1:])]
    assert gaps[:4] == [1.0, 2.0, 4.0, 5.0] and set(gaps[4:]) == {5.0}
    run(m, 64.0, start=40.0)
    assert m.get("p") is None  # forget_after (60 s) of silence


def test_a_stall_of_our_own_does_not_kill_everyone():
    m = Membership("me", T)
    m.heard("p", 0.0)
    m.tick(0.5)
    assert m.tick(10.0) == []  # we were frozen for 9.5 s; p could not have been heard
    assert m.get("p").state == ALIVE
    assert [e for _, e, _ in run(m, 14.0, start=10.5)] == [SUSPECTED, LEFT]  # then the clock runs again


def test_probe_targets_skip_peers_heard_in_the_last_half_interval():
    m = Membership("me", T)
    for p in "abc":
        m.heard(p, 0.0)
    m.learned("d", {"addresses": []}, b"r", 1, 0.0)
    assert m.probe_targets(0.1) == ["d"]  # a, b, c just spoke (e.g. pinged us); d never did
    m.heard("a", 0.4)
    assert sorted(m.probe_targets(0.5)) == ["b", "c", "d"]
    assert sorted(m.probe_targets(1.0)) == ["a", "b", "c", "d"]


def test_contacts_prefer_long_observed_uptime():
    m = Membership("me", T)
    m.heard("old", 0.0)
    for i in range(9):
        m.heard(f"new{i}", 3599.0)
    now = 3600.0
    for p in ["old", *(f"new{i}" for i in range(9))]:
        m.heard(p, now)
    rng = random.Random(1)
    firsts = [m.contacts(1, now, rng)[0] for _ in range(1000)]
    # weight 3601 against 9 × 2: the old contact is picked first ≈ 99.5 % of the time
    assert firsts.count("old") > 980
    assert sorted(m.contacts(20, now, rng)) == sorted(["old", *(f"new{i}" for i in range(9))])
    assert m.contacts(3, now, random.Random(7)) == m.contacts(3, now, random.Random(7))  # seeded: repeatable


def test_contacts_use_observed_not_claimed_uptime_and_skip_the_unwell():
    m = Membership("me", T)
    m.heard("steady", 0.0)
    m.heard("sick", 0.0)
    run(m, 50.0, heard=["steady"])
    m.heard("liar", 50.0)
    m.learned("liar", {"uptimeSeconds": 10**9}, b"r", 1, 50.0)  # claims 30 years
    assert m.get("sick").state == DEAD
    rng = random.Random(3)
    firsts = [m.contacts(1, 50.0, rng)[0] for _ in range(500)]
    assert "sick" not in firsts and firsts.count("steady") > 450
