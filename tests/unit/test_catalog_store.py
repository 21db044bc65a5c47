import stat

from beemeshd.catalog_store import CatalogStore
from beemeshd.core.catalog import Catalog, Decision, holders

KEY = ("default", "Deployment", "web")


def test_keeps_only_what_this_peer_holds_or_runs(tmp_path):
    peers = [f"p{i}" for i in range(8)]
    outsider = next(p for p in peers if p not in holders(KEY, peers, 3))
    d = Decision(KEY, 1, {"kind": "Deployment"}, (("web-0", "p-other"),), origin="o", decided_usec=5)
    for me, kept in ((outsider, False), (holders(KEY, peers, 3)[0], True)):
        cat = Catalog(me, k=3)
        cat.merge(d)
        store = CatalogStore(tmp_path / me, alive=lambda: peers)
        store.save(cat)
        again = Catalog(me, k=3)
        assert store.load(again) == (1 if kept else 0)
        assert stat.S_IMODE(store.path.stat().st_mode) == 0o600
    runner = Catalog("p-other", k=3)
    runner.merge(d)
    store = CatalogStore(tmp_path / "runner", alive=lambda: peers)
    store.save(runner)
    assert store.load(Catalog("p-other")) == 1  # it runs a replica: it keeps the manifest
