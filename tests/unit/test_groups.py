"""Who belongs to a StatefulSet's group, and the leader's next membership change (pure)."""

import dataclasses

from beemeshd.core.catalog import Decision
from beemeshd.core.groups import (base_of, creating, desired_peers, founders, group_id, next_change,
                                   refounded_at, refounded_id, refounder, stamp)

D = Decision(("ns", "StatefulSet", "db"), 1, {}, (("db-0", "a"), ("db-1", "a"), ("db-2", "b")),
             bids=({"peer": "b"}, {"peer": "c"}, {"peer": "d"}), declined=(("e", "full"),),
             decided_usec=1_000_500, created_usec=1_000_000)


def test_founders_come_from_the_creating_decision_alike_everywhere():
    assert founders(D, 3) == ["a", "b", "c"] and founders(D, 5) == ["a", "b", "c", "d", "e"]
    assert creating(D) and group_id(D) == "ns/db@1000000"
    assert not creating(dataclasses.replace(D, generation=2, decided_usec=9_000_000))  # a later scale
    assert not creating(dataclasses.replace(D, revision=1))  # a heal


def test_desired_members_are_the_replicas_peers_topped_up_by_distance():
    assert desired_peers(D, ["a", "b", "x", "y"], 3)[:2] == ["a", "b"]
    assert len(desired_peers(D, ["x", "y"], 3)) == 3
    assert desired_peers(D, ["a", "b", "x", "y"], 3) == desired_peers(D, ["y", "x", "b", "a"], 3)


def test_the_leader_adds_wanted_joiners_first():
    config = ["a/0", "b/0", "c/0"]
    assert next_change(config, "a/0", {"a", "b", "c", "d"}, {"d": "d/65f.1-1"}, {"a", "b", "c", "d"}, 3) == (
        "add", "d/65f.1-1")
    assert next_change(config, "a/0", {"a", "b", "c"}, {"z": "z/1-1"}, {"a", "b", "c", "z"}, 3) is None  # not wanted


def test_a_restarted_peers_older_id_goes():
    config = ["a/0", "b/0", "b/65f0a1b2.ab12-1", "c/0"]
    assert next_change(config, "a/0", {"a", "b", "c"}, {}, {"a", "b", "c"}, 3) == ("remove", "b/0")
    config = ["a/0", "b/65f0a1b2.ab12-1", "b/65f0a1ff.cd34-1", "c/0"]  # restarted twice: the older restart
    assert next_change(config, "a/0", {"a", "b", "c"}, {}, {"a", "b", "c"}, 3) == ("remove", "b/65f0a1b2.ab12-1")
    assert stamp("b/0") == 0 < stamp("b/65f0a1b2.ab12-1") < stamp("b/65f0a1ff.cd34-1")


def test_unwanted_members_go_only_while_the_group_is_larger_than_its_size_dead_ones_first():
    config = ["a/0", "b/0", "c/0", "d/1-1"]
    keep = {"a", "b", "d"}
    assert next_change(config, "a/0", keep, {}, {"a", "b", "c", "d"}, 3) == ("remove", "c/0")
    assert next_change(["a/0", "b/0", "c/0"], "a/0", {"a", "b"}, {}, {"a", "b"}, 3) is None  # stays at 3
    dead_first = next_change(["a/0", "b/0", "c/0", "d/0"], "a/0", {"a", "b"}, {}, {"a", "b", "c"}, 3)
    assert dead_first == ("remove", "d/0")
    # the leader itself should go: it hands leadership over, the next leader removes it
    assert next_change(["a/0", "b/0", "c/0", "d/0"], "a/0", {"b", "c", "d"}, {}, {"a", "b", "c", "d"}, 3) == (
        "hand over", "a/0")


def test_only_the_lowest_live_member_of_a_group_that_lost_its_majority_founds_it_again():
    config = ["a/0", "b/0", "c/0"]
    assert not refounder(config, "a/0", {"c/0"})  # one of three gone: Raft carries on
    assert refounder(config, "a/0", {"b/0", "c/0"})
    assert refounder(config, "b/0", {"a/0", "c/0"})  # the only one left
    assert not refounder(config, "a/0", {"a/0", "b/0"})  # itself gone: never
    five = ["a/0", "b/0", "c/0", "d/0", "e/0"]
    assert refounder(five, "a/0", {"c/0", "d/0", "e/0"}) and not refounder(five, "b/0", {"c/0", "d/0", "e/0"})
    assert not refounder(five, "a/0", {"d/0", "e/0"})
    four = ["a/0", "b/0", "c/0", "d/0"]  # half of an even group is no majority either
    assert refounder(four, "a/0", {"c/0", "d/0"})


def test_a_re_founded_group_id_names_its_base_and_when():
    again = refounded_id(group_id(D), 2_000_000)
    assert again == "ns/db@1000000#2000000" and base_of(again) == group_id(D) == base_of(group_id(D))
    assert refounded_at(again) == 2_000_000 and refounded_at(group_id(D)) is None
    assert base_of(refounded_id(again, 3_000_000)) == group_id(D)
