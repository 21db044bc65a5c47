"""The lease core: the replicated table, the holder's and the grantor's rules (injected time)."""

import pytest

from beemeshd.core import lease as L

T = L.Timing(lease=3.0, renew_every=1.0, retry=0.2, stop_margin=1.0, drift=1e-3, margin=0.2)


def table(floor=0):
    return L.LeaseTable(L.new_state(floor))


def test_timing_wait_covers_drift_both_ways():
    w = T.regrant_after
    assert w == pytest.approx(3.0 * 1.001 / 0.999 + 0.2)
    # A holder clock running slow by ρ and a grantor clock running fast by ρ: the holder's lease
    # (D on its clock) ends, in real time, before the grantor's wait (W on its clock) does.
    holder_real = T.lease / (1 - T.drift)
    grantor_real = w / (1 + T.drift)
    assert grantor_real > holder_real
    with pytest.raises(ValueError):
        L.Timing(lease=3.0, renew_every=2.5, stop_margin=1.0)


def test_grant_is_compare_and_swap_and_tokens_grow_with_the_log():
    t = table()
    assert t.apply(L.grant(0, "a", None), 5) == ("ok", 6)
    assert t.get(0) == L.Lease("a", 6, 0)
    # a second grant built on the same (empty) view loses the race
    assert t.apply(L.grant(0, "b", None), 6)[0] == "refused"
    assert t.apply(L.renew(0, "a", 6), 7) == ("ok", 6)
    stale = L.grant(0, "b", L.Lease("a", 6, 0))  # prepared before that renewal was applied
    assert t.apply(stale, 8)[0] == "refused"
    assert t.apply(L.grant(0, "b", t.get(0)), 9) == ("ok", 10)
    assert t.get(0).holder == "b"
    # the old holder's renewals and releases are refused from now on
    assert t.apply(L.renew(0, "a", 6), 10)[0] == "refused"
    assert t.apply(L.release(0, "a", 6), 11)[0] == "refused"
    assert t.apply(L.renew(0, "b", 9), 12) == ("refused", "stale token")


def test_tokens_stay_above_the_persisted_floor_and_the_seed():
    t = table(floor=40)
    assert t.apply(L.grant(1, "a", None), 3) == ("ok", 44)
    # the would-be holder's fence file says 77: the new token must beat it
    assert t.apply(L.grant(2, "b", None, floor=77), 4) == ("ok", 78)
    assert t.max_token() == 78
    t2 = table()
    assert t2.apply(L.seed(100, [0, 1]), 2) == ("ok", 100)
    assert t2.get(0) == L.Lease(L.UNKNOWN, 100, 0)
    assert t2.apply(L.grant(0, "a", t2.get(0)), 3) == ("ok", 104)


def test_release_frees_the_ordinal_but_keeps_its_token():
    t = table()
    t.apply(L.grant(0, "a", None), 1)
    assert t.apply(L.release(0, "a", 2), 2) == ("ok", 2)
    assert t.get(0) == L.Lease(None, 2, 1)
    assert t.apply(L.grant(0, "b", t.get(0)), 3) == ("ok", 4)


@pytest.mark.parametrize("cmd", [
    None, (), ("grant",), ("grant", 0, "a", 0, 0), ("grant", -1, "a", 0, 0, 0), ("grant", 0, "", 0, 0, 0),
    ("grant", 0, L.UNKNOWN, 0, 0, 0), ("grant", True, "a", 0, 0, 0), ("grant", 0, "a", 0.5, 0, 0),
    ("renew", 0, "a"), ("renew", 0, b"a", 1), ("release", 0, "a", 1 << 63), ("seed", 0, "01"),
    ("seed", 0, list(range(2000))), ("nuke", 0), (("grant",), 0), ("report", "a"), ("report", "", 1),
    ("report", "a", -1),
])
def test_malformed_commands_are_refused_never_raised(cmd):
    with pytest.raises(ValueError):
        L.check_command(cmd)
    t = table()
    result = t.apply(cmd, 1)
    assert result[0] == "refused" and t.state == L.new_state()


def reported(*peers, floor=0):
    t = table(floor)
    for i, p in enumerate(peers):
        t.apply(L.report(p, 0), 100 + i)
    return t


def test_members_report_their_fence_floor_before_anything_is_granted_to_them():
    t, g = table(), L.Grantor(T)
    assert g.grants(t, {0: "a"}, now=0.0) == []  # a has not said what its fence files hold
    assert t.apply(L.report("a", 500), 1) == ("ok", 500)
    assert t.reported("a") and t.state["floor"] == 500
    (cmd,) = g.grants(t, {0: "a"}, now=0.0)
    assert t.apply(cmd, 2)[1] > 500
    assert t.apply(L.report("b", 7), 3) == ("ok", 500)  # a floor never goes down
    assert t.state["reported"] == ["a", "b"]


def test_grantor_grants_free_ordinals_at_once_and_held_ones_after_the_wait():
    t, g = reported("a", "b", "c"), L.Grantor(T)
    cmds = g.grants(t, {0: "a", 1: "b"}, now=0.0)
    assert cmds == [L.grant(0, "a", None), L.grant(1, "b", None)]
    for i, c in enumerate(cmds):
        t.apply(c, 10 + i)
        g.applied(c, now=0.1)
    assert g.grants(t, {0: "a", 1: "b"}, now=0.2) == []  # already theirs
    t.apply(L.renew(0, "a", 11), 12)
    g.applied(L.renew(0, "a", 11), now=1.0)
    # ordinal 0 should move to c: not before W after the last renewal the grantor saw
    assert g.grants(t, {0: "c"}, now=1.0 + T.regrant_after - 0.01) == []
    assert g.wait_left(t, 0, 1.0 + T.regrant_after - 0.5) == pytest.approx(0.5)
    assert g.grants(t, {0: "c"}, now=1.0 + T.regrant_after + 0.01) == [L.grant(0, "c", t.get(0))]


def test_a_new_leader_waits_a_whole_lease_whatever_it_saw_before():
    t, g = reported("a", "b"), L.Grantor(T)
    t.apply(L.grant(0, "a", None), 1)
    g.applied(L.grant(0, "a", None), now=0.0)
    g.became_leader(t, now=50.0)  # it saw the grant long ago, but renewals may have committed since
    assert g.grants(t, {0: "b"}, now=50.0 + T.regrant_after - 0.01) == []
    assert len(g.grants(t, {0: "b"}, now=50.0 + T.regrant_after + 0.01)) == 1


def test_an_ordinal_learnt_from_a_snapshot_counts_from_when_it_was_first_looked_at():
    t, g = reported("a", "b"), L.Grantor(T)
    t.apply(L.grant(0, "a", None), 1)  # applied without the grantor noticing (a snapshot)
    assert g.grants(t, {0: "b"}, now=7.0) == []
    assert g.grants(t, {0: "b"}, now=7.0 + T.regrant_after + 0.01) != []


def test_holder_runs_only_after_a_committed_renewal_and_stops_before_expiry():
    t, h = table(), L.Holder("a", T)
    t.apply(L.grant(0, "a", None), 4)
    assert h.sync(t) == ([(0, 5)], [])
    assert h.may_run(0, 0.0) is None  # granted, not renewed: not yet
    (cmd,) = h.due(now=1.0)
    assert cmd == L.renew(0, "a", 5)
    assert h.due(now=1.1) == []  # one renewal in flight at a time
    h.renewed(0, 5, sent_at=1.0, ok=True, now=1.3)
    assert h.valid_until(0) == 1.0 + T.lease  # counted from t_send, not from the commit
    assert h.may_run(0, 1.3) == 5
    assert h.may_run(0, 1.0 + T.lease - T.stop_margin - 0.01) == 5
    assert h.may_run(0, 1.0 + T.lease - T.stop_margin) is None
    # a start that takes a while must fit before the stop point
    assert h.may_run(0, 2.0, headroom=1.5) is None
    assert h.due(now=1.5) == [] and h.due(now=2.0) == [L.renew(0, "a", 5)]


def test_a_failed_renewal_is_retried_and_never_extends_the_lease():
    t, h = table(), L.Holder("a", T)
    t.apply(L.grant(0, "a", None), 1)
    h.sync(t)
    h.due(now=0.0)
    h.renewed(0, 2, sent_at=0.0, ok=False, now=0.5)
    assert h.valid_until(0) is None and h.due(now=0.6) == []
    assert h.due(now=0.7) == [L.renew(0, "a", 2)]
    h.renewed(0, 2, sent_at=0.0, ok=True, now=0.8)  # a late answer to the old one: ignored
    assert h.valid_until(0) is None


def running_holder():
    """A table granting ordinal 0 to holder a (token 2), and a, running it under a renewed lease."""
    t, h = table(), L.Holder("a", T)
    t.apply(L.grant(0, "a", None), 1)
    h.sync(t)
    h.due(0.0)
    h.renewed(0, 2, 0.0, True, 0.1)
    assert h.may_run(0, 0.2) == 2
    return t, h


def test_holder_stops_at_once_when_the_log_shows_another_holder():
    t, h = running_holder()
    t.apply(L.grant(0, "b", t.get(0)), 3)
    assert h.sync(t) == ([], [(0, 2)])
    assert h.may_run(0, 0.3) is None
    # re-granted to a under a new token: a new lease that needs its own renewal
    t.apply(L.grant(0, "a", t.get(0)), 5)
    assert h.sync(t) == ([(0, 6)], [])
    assert h.may_run(0, 0.4) is None


def test_a_lease_being_released_neither_starts_a_pod_nor_renews():
    # scale 0 then 1 at once: the release is in flight when the ordinal is wanted here again
    t, h = running_holder()
    h.releasing(0, 2)
    assert h.may_run(0, 0.3) is None and h.due(now=1.5) == []
    h.releasing(0, 2, False)  # the release failed: the lease is still ours
    assert h.may_run(0, 0.4) == 2 and h.due(now=1.5) == [L.renew(0, "a", 2)]
    # a late "released" for an older lease leaves a newer grant alone
    h.forget(0, token=1)
    assert h.token(0) == 2
    h.forget(0, token=2)
    assert h.token(0) is None


def test_negative_control_holder_without_self_stop_runs_past_its_lease():
    t, h = table(), L.Holder("a", T, self_stop=False)
    t.apply(L.grant(0, "a", None), 1)
    h.sync(t)
    h.due(0.0)
    h.renewed(0, 2, 0.0, True, 0.1)
    assert h.may_run(0, 100.0) == 2


def test_a_group_created_later_starts_above_every_token_of_an_earlier_one():
    early, late = L.LeaseTable(L.new_state(L.token_base(1_700_000_000_000_000))), L.LeaseTable(
        L.new_state(L.token_base(1_700_000_001_000_000)))
    for i in range(1, 200):
        early.apply(L.grant(0, f"p{i % 3}", early.get(0)), i)
    assert late.apply(L.grant(0, "a", None), 1)[1] > early.get(0).token
    assert late.get(0).token < L.MAX_TOKEN


def test_a_re_founded_table_grants_nothing_before_its_seed_then_waits_a_whole_lease():
    t, g = L.LeaseTable(L.new_state(10, sealed=True)), L.Grantor(T)
    t.apply(L.report("b", 0), 1)
    assert t.sealed and g.grants(t, {0: "b"}, now=100.0) == []
    t.apply(L.seed(500, [0, 1]), 2)
    g.applied(L.seed(500, [0, 1]), 100.0)
    assert not t.sealed and t.get(0) == L.Lease(L.UNKNOWN, 500, 0)
    assert g.grants(t, {0: "b"}, now=100.0 + T.regrant_after - 0.01) == []
    [cmd] = g.grants(t, {0: "b"}, now=100.0 + T.regrant_after + 0.01)
    assert t.apply(cmd, 3)[1] > 500
    # an ordinal the seed did not name (the old group may have granted it): W from the seed too
    t.apply(L.report("c", 0), 4)
    assert g.wait_left(t, 7, now=100.0 + T.regrant_after - 0.01) > 0
    assert g.grants(t, {7: "c"}, now=100.0 + T.regrant_after - 0.01) == []
    assert len(g.grants(t, {7: "c"}, now=100.0 + T.regrant_after + 0.01)) == 1
    # a new leader counts that wait from its election, as for every lease
    g.became_leader(t, now=200.0)
    assert g.grants(t, {7: "c"}, now=200.0 + T.regrant_after - 0.01) == []
