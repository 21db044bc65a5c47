"""Trust ledger (pure): receipts, promises, decay, threshold."""

from beemeshd.core.trust import CONTRADICTED, DELIVERED, INVALID, UNDELIVERED, TrustBook

KEY = ("default", "Deployment", "web")


def test_no_evidence_is_neutral_and_trusted():
    t = TrustBook()
    assert t.score("p", 0) == 0.5 and t.trusted("p", 0)
    assert t.receipts("p") == {DELIVERED: 0, UNDELIVERED: 0, CONTRADICTED: 0, INVALID: 0}


def test_delivering_raises_and_failing_to_deliver_sinks_below_the_threshold():
    t = TrustBook(deliver_within=10)
    t.assigned(KEY, "web-a", "good", 1, now=0)
    t.assigned(KEY, "web-b", "bad", 1, now=0)
    t.reported(KEY, "web-a", "good", "running", now=3)
    assert t.score("good", 3) > 0.5
    assert t.tick(9) == []
    [late] = t.tick(10)
    assert (late.replica, late.peer) == ("web-b", "bad")
    assert t.score("bad", 10) == 0.25 and t.trusted("bad", 10)  # one miss: at the threshold
    t.assigned(KEY, "web-c", "bad", 2, now=10)
    t.tick(20)
    assert t.score("bad", 20) < 0.25 and not t.trusted("bad", 20)
    assert t.receipts("bad")[UNDELIVERED] == 2


def test_a_report_from_someone_else_settles_nothing():
    t = TrustBook(deliver_within=10)
    t.assigned(KEY, "web-a", "owner", 1, now=0)
    t.reported(KEY, "web-a", "impostor", "running", now=1)
    assert t.score("impostor", 1) == 0.5
    assert [p.peer for p in t.tick(10)] == ["owner"]


def test_a_failure_counts_only_if_it_lasts_and_the_workload_runs_elsewhere():
    elsewhere = {"yes": True}
    t = TrustBook(fail_grace=3, runs_elsewhere=lambda key, peer: elsewhere["yes"])
    t.assigned(KEY, "web-a", "p", 1, now=0)
    t.reported(KEY, "web-a", "p", "failed", now=1)  # a moment of "failed" while starting
    t.reported(KEY, "web-a", "p", "running", now=2)
    assert t.tick(10) == [] and t.score("p", 10) > 0.5
    t.assigned(KEY, "web-b", "p", 1, now=10)
    t.reported(KEY, "web-b", "p", "failed", now=11)
    assert t.tick(13) == []  # not yet for fail_grace
    [late] = t.tick(14)
    assert late.replica == "web-b" and t.receipts("p")[CONTRADICTED] == 1


def test_a_workload_failing_everywhere_blames_no_one():
    t = TrustBook(fail_grace=3, deliver_within=10, runs_elsewhere=lambda key, peer: False)
    t.assigned(KEY, "web-a", "p", 1, now=0)
    t.reported(KEY, "web-a", "p", "failed", now=1)
    assert t.tick(5) == []  # failing, but so is everyone
    assert t.tick(10) == [] and t.score("p", 10) == 0.5 and t.promises == {}


def test_moving_a_failing_replica_away_blames_its_peer_once():
    t = TrustBook(fail_grace=3)
    t.assigned(KEY, "web-a", "p", 1, now=0)
    t.reported(KEY, "web-a", "p", "failed", now=1)
    t.assigned(KEY, "web-a", "q", 1, now=2)  # another peer judged it first and moved it
    t.reported(KEY, "web-a", "p", "failed", now=3)  # its late reports owe nothing more
    assert t.receipts("p")[CONTRADICTED] == 1 and t.tick(100)[0].peer == "q"


def test_a_new_generation_on_the_same_peer_owes_nothing_new():
    t = TrustBook(deliver_within=10)
    t.assigned(KEY, "web-a", "p", 1, now=0)
    t.reported(KEY, "web-a", "p", "ready", now=1)
    t.assigned(KEY, "web-a", "p", 2, now=50)  # e.g. a scale of the workload
    assert t.promises == {} and t.tick(100) == []
    t.assigned(KEY, "web-a", "q", 3, now=100)  # moved: the new holder owes it
    assert [p.peer for p in t.tick(110)] == ["q"]


def test_deleting_releases_promises():
    t = TrustBook(deliver_within=10)
    t.assigned(KEY, "web-a", "p", 1, now=0)
    t.assigned(KEY, "web-b", "p", 1, now=0)
    t.released(KEY, "web-b")
    assert [p.replica for p in t.tick(10)] == ["web-a"]
    t.assigned(KEY, "web-c", "p", 2, now=10)
    t.released(KEY)
    assert t.tick(100) == []


def test_scores_decay_back_toward_neutral():
    t = TrustBook(half_life=100)
    for _ in range(4):
        t.record("p", INVALID, now=0)
    low = t.score("p", 0)
    assert low < 0.5
    assert low < t.score("p", 100) < t.score("p", 1000) < 0.5
    assert abs(t.score("p", 10_000) - 0.5) < 1e-3


def test_a_promise_moved_after_it_fell_due_still_counts_as_undelivered():
    t = TrustBook(deliver_within=10)
    t.assigned(KEY, "web-a", "slow", 1, now=0)
    t.assigned(KEY, "web-a", "other", 2, now=10.5)  # another peer healed it before our tick
    assert t.receipts("slow")[UNDELIVERED] == 1
    t.assigned(KEY, "web-b", "dead", 1, now=20)
    t.assigned(KEY, "web-b", "other", 2, now=22)  # moved early (its peer died): no blame
    assert t.receipts("dead")[UNDELIVERED] == 0




def test_a_peer_that_no_longer_hears_reports_judges_nothing():
    """In a large mesh only a workload's holders and deciding peer hear its status: a peer whose
    role moved away (or that opened promises while its view was still small) drops them unjudged."""
    book = TrustBook(deliver_within=60)
    heard = {("ns", "Deployment", "a"): True, ("ns", "Deployment", "b"): False}
    book.judges = lambda key: heard[key]
    for key in heard:
        book.assigned(key, "r-0", "P", 1, now=0)
    due = book.tick(61)
    assert [p.key for p in due] == [("ns", "Deployment", "a")]
    assert book.receipts("P").get(UNDELIVERED) == 1  # only the one still heard
    assert book.tick(200) == [] and not book.promises
