"""The history checker on hand-built histories, good and bad."""

import random

from beemeshd.core.history_check import Event, check, summary


def kinds(events, eps=0.0):
    return [v.kind for v in check(events, eps)]


def test_clean_handover_passes():
    h = [(0.0, "web-0", "a", 5, "start"), (3.0, "web-0", "a", 5, "stop"),
         (3.0, "web-0", "b", 9, "start"), (9.0, "web-0", "b", 9, "stop"),
         (1.0, "web-1", "b", 6, "start")]  # another ordinal may run anywhere, still open at the end
    assert check(h) == []


def test_same_holder_restarting_under_its_own_token_is_fine():
    h = [(0, "o", "a", 5, "start"), (1, "o", "a", 5, "stop"), (2, "o", "a", 5, "start")]
    assert check(h) == []


def test_overlap_between_two_peers_is_reported():
    h = [(0.0, "web-0", "a", 5, "start"), (4.0, "web-0", "a", 5, "stop"), (3.5, "web-0", "b", 9, "start")]
    (v,) = check(h)
    assert v.kind == "overlap" and v.ordinal == "web-0" and v.t == 3.5
    assert "a (token 5)" in v.detail and "b (token 9)" in v.detail


def test_an_interval_without_a_stop_stays_open():
    h = [(0.0, "o", "a", 5, "start"), (100.0, "o", "b", 9, "start")]
    assert kinds(h) == ["overlap"]


def test_eps_widens_intervals_from_different_clocks():
    h = [(0.0, "o", "a", 5, "start"), (1.0, "o", "a", 5, "stop"), (1.05, "o", "b", 9, "start")]
    assert check(h, eps=0.0) == []
    assert check(h, eps=0.02) == []
    assert kinds(h, eps=0.03) == ["overlap"]


def test_tokens_must_not_go_backwards_or_be_reused_by_another_peer():
    back = [(0, "o", "a", 9, "start"), (1, "o", "a", 9, "stop"), (2, "o", "b", 7, "start")]
    assert kinds(back) == ["token-backwards"]
    reused = [(0, "o", "a", 9, "start"), (1, "o", "a", 9, "stop"), (2, "o", "b", 9, "start")]
    assert kinds(reused) == ["token-reused"]


def test_inconsistent_histories_are_reported():
    assert kinds([(0, "o", "a", 1, "stop")]) == ["stop-without-start"]
    assert kinds([(0, "o", "a", 1, "start"), (1, "o", "a", 2, "start")]) == ["double-start"]


def test_a_stop_and_a_start_at_the_same_instant_touch_but_do_not_overlap():
    h = [Event(2.0, "o", "b", 9, "start"), Event(2.0, "o", "a", 5, "stop"), Event(0.0, "o", "a", 5, "start")]
    assert check(h) == []


def test_many_disjoint_intervals_pass_and_one_injected_overlap_is_found():
    rng = random.Random(7)
    t, token, h = 0.0, 0, []
    peers = ["a", "b", "c"]
    for _ in range(5000):
        token += rng.randint(1, 3)
        p = rng.choice(peers)
        dur = rng.uniform(0.1, 2.0)
        h += [(t, "o", p, token, "start"), (t + dur, "o", p, token, "stop")]
        t += dur + rng.uniform(0.0, 0.5)
    assert check(h) == []
    s, _, p, tok, _ = h[5000]
    other = next(x for x in peers if x != p)
    h.append((s + 0.01, "o", other, tok + 1, "start"))
    found = summary(check(h))
    assert found.get("overlap", 0) >= 1
