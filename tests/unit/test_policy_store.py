"""Policy storage and decisions (beemeshd/policy_store.py, beemeshd/core/policy_doc.py): node files,
signed mesh documents (versions, tombstones, forgeries), restarts, admission and the bid gate."""

from __future__ import annotations

import stat

import pytest

from beemeshd import errors, mesh_keys
from beemeshd.core import policy_doc as pd
from beemeshd.policy_store import PolicyStore

PEER = "12D3KooWSelfPeerIdForTests"
ADMIT_HEAD = "package beemesh.admission\n\nimport rego.v1\n\n"
BID_HEAD = "package beemesh.bid\n\nimport rego.v1\n\n"
NO_PODS = ADMIT_HEAD + 'deny contains "no bare pods" if input.manifest.kind == "Pod"\n'
NO_DEPLOYMENTS = ADMIT_HEAD + 'deny contains "no deployments" if input.manifest.kind == "Deployment"\n'
NOT_FROM_X = BID_HEAD + 'deny contains sprintf("not from %s", [input.request.peer]) if input.request.peer == "x"\n'
BROKEN = ADMIT_HEAD + "deny contains msg if {\n  input.a ==\n}\n"
POD = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"}, "spec": {"containers": []}}
DEPLOYMENT = {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "d"}, "spec": {"replicas": 1}}


@pytest.fixture
def dirs(tmp_path):
    return tmp_path / "config", tmp_path / "state"


@pytest.fixture
def keys(dirs):
    return mesh_keys.create(dirs[0], "test-mesh")


def store(dirs, peer=PEER, keys=None):
    s = PolicyStore(dirs[0], dirs[1], peer, keys=keys)
    s.load()
    return s


def admitted(s, manifest) -> str | None:
    try:
        s.admit([manifest], user="alice", peer={"id": PEER}, operation="Deploy")
        return None
    except errors.PolicyDenied as exc:
        return f"{exc.policy}: {'; '.join(exc.messages)}"


# -- node-local --------------------------------------------------------------------------------
async def test_node_policy_is_a_file_and_gates_bids(dirs):
    s = store(dirs)
    view = await s.set("not-x", "node", NOT_FROM_X)
    assert view["inForce"] and view["scope"] == "node" and view["version"] == 0
    path = dirs[0] / "policies" / "not-x.rego"
    assert path.read_text() == NOT_FROM_X and stat.S_IMODE(path.stat().st_mode) == 0o600
    gate = s.bid_gate(lambda: {"id": PEER})
    assert gate(DEPLOYMENT, "x") == "policy not-x denied: not from x"
    assert gate(DEPLOYMENT, "y") is None
    # node policies play no part at admission
    assert admitted(s, DEPLOYMENT) is None


async def test_bad_node_text_names_the_line_and_keeps_the_previous_version(dirs):
    s = store(dirs)
    await s.set("not-x", "node", NOT_FROM_X)
    with pytest.raises(errors.InvalidPolicy) as exc:
        await s.set("not-x", "node", BID_HEAD + "deny contains msg if {\n  input.a ==\n}\n")
    assert exc.value.line == 6
    assert (dirs[0] / "policies" / "not-x.rego").read_text() == NOT_FROM_X
    assert s.bid_gate(lambda: {"id": PEER})(DEPLOYMENT, "x") == "policy not-x denied: not from x"


async def test_a_file_edited_badly_by_hand_keeps_the_previous_version_and_says_why(dirs):
    s = store(dirs)
    await s.set("not-x", "node", NOT_FROM_X)
    path = dirs[0] / "policies" / "not-x.rego"
    path.write_text(BID_HEAD + "deny contains oops if {\n")
    [view] = s.list("node")  # listing re-reads the files
    assert view["inForce"] and "not-x" in view["error"] and view["text"].endswith("{\n")
    assert s.bid_gate(lambda: {"id": PEER})(DEPLOYMENT, "x") == "policy not-x denied: not from x"


async def test_a_node_file_broken_since_start_denies_every_bid(dirs):
    (dirs[0] / "policies").mkdir(parents=True)
    (dirs[0] / "policies" / "typo.rego").write_text(BID_HEAD + "deny contains oops if {\n")
    (dirs[0] / "policies" / "Not A Name.rego").write_text(NOT_FROM_X)  # not a policy name: ignored
    s = store(dirs)
    [view] = s.list()
    assert view["name"] == "typo" and not view["inForce"] and view["error"]
    reason = s.bid_gate(lambda: {"id": PEER})(DEPLOYMENT, "anyone")
    assert reason.startswith("policy typo denied: policy typo does not compile")


async def test_node_files_are_read_at_start_and_removed(dirs):
    await store(dirs).set("not-x", "node", NOT_FROM_X)
    again = store(dirs)  # a restart
    assert again.bid_gate(lambda: {"id": PEER})(DEPLOYMENT, "x") == "policy not-x denied: not from x"
    removed = await again.remove("not-x", "node")
    assert removed["name"] == "not-x" and not (dirs[0] / "policies" / "not-x.rego").exists()
    assert again.bid_gate(lambda: {"id": PEER})(DEPLOYMENT, "x") is None
    with pytest.raises(errors.PolicyNotFound):
        await again.remove("not-x", "node")


# -- mesh-wide: signing ------------------------------------------------------------------------
async def test_mesh_policy_needs_the_mesh_key(dirs, tmp_path):
    with pytest.raises(errors.MeshKeyRequired, match="no mesh"):
        await store(dirs).set("no-pods", "mesh", NO_PODS)
    member = tmp_path / "member"
    mesh_keys.save_public(member, "test-mesh", mesh_keys.create(tmp_path / "owner", "test-mesh").public)
    s = PolicyStore(member, tmp_path / "member-state", PEER)
    with pytest.raises(errors.MeshKeyRequired, match="private key"):
        await s.set("no-pods", "mesh", NO_PODS)
    assert s.list() == []


async def test_mesh_policy_is_signed_versioned_and_denies_at_admission(dirs, keys):
    s = store(dirs)
    published = []
    s.publish = lambda doc: _append(published, doc)
    v1 = await s.set("no-pods", "mesh", NO_PODS)
    assert (v1["version"], v1["setBy"], v1["inForce"]) == (1, PEER, True)
    assert admitted(s, POD) == "no-pods: no bare pods"
    assert admitted(s, DEPLOYMENT) is None
    v2 = await s.set("no-pods", "mesh", NO_DEPLOYMENTS)
    assert v2["version"] == 2 and [d.version for d in published] == [1, 2]
    assert admitted(s, POD) is None and admitted(s, DEPLOYMENT) == "no-pods: no deployments"
    doc = published[-1]
    assert pd.judge(None, doc, keys) == pd.NEW  # really signed by the mesh key
    f = dirs[1] / "policies" / "mesh" / "no-pods.json"
    assert stat.S_IMODE(f.stat().st_mode) == 0o600 and stat.S_IMODE(f.parent.stat().st_mode) == 0o700


async def _append(out, doc):
    out.append(doc)


async def test_bad_mesh_text_changes_nothing(dirs, keys):
    s = store(dirs)
    await s.set("no-pods", "mesh", NO_PODS)
    with pytest.raises(errors.InvalidPolicy) as exc:
        await s.set("no-pods", "mesh", BROKEN)
    assert (exc.value.line, exc.value.column) == (6, 11)
    [view] = s.list("mesh")
    assert view["version"] == 1 and view["text"] == NO_PODS
    assert admitted(s, POD) == "no-pods: no bare pods"


async def test_mesh_policy_and_its_removal_survive_a_restart(dirs, keys):
    s = store(dirs)
    await s.set("no-pods", "mesh", NO_PODS)
    await s.set("no-deployments", "mesh", NO_DEPLOYMENTS)
    await s.remove("no-deployments", "mesh")
    again = store(dirs)
    assert [p["name"] for p in again.list()] == ["no-pods"]
    assert admitted(again, POD) == "no-pods: no bare pods" and admitted(again, DEPLOYMENT) is None
    # the tombstone is kept: re-adding continues after it
    assert again.docs["no-deployments"].removed
    assert (await again.set("no-deployments", "mesh", NO_DEPLOYMENTS))["version"] == 3
    with pytest.raises(errors.PolicyNotFound):
        await again.remove("never-set", "mesh")


async def test_a_tampered_file_is_not_enforced_after_a_restart(dirs, keys):
    s = store(dirs)
    await s.set("no-pods", "mesh", NO_PODS)
    f = dirs[1] / "policies" / "mesh" / "no-pods.json"
    f.write_text(f.read_text().replace("no bare pods", "edited"))
    assert store(dirs).list() == []


# -- mesh-wide: what arrives from other peers --------------------------------------------------
def signed(keys, name="no-pods", version=1, text=NO_PODS, by="12D3KooWOtherPeer"):
    return pd.sign(keys, name, version, text, by, 1_700_000_000_000_000 + version).to_wire()


def test_received_documents_higher_versions_win_older_and_forged_are_counted(dirs, keys, tmp_path):
    s = store(dirs)
    assert s.receive(signed(keys, version=2)) is True
    assert admitted(s, POD) == "no-pods: no bare pods"
    assert s.receive(signed(keys, version=2)) is False  # a duplicate: not counted
    assert s.receive(signed(keys, version=1, text=NO_DEPLOYMENTS)) is False
    assert s.counters == {"forgedPolicies": 0, "stalePolicies": 1}
    other_mesh = mesh_keys.create(tmp_path / "other", "other-mesh")
    assert s.receive(signed(other_mesh, version=9, text=NO_DEPLOYMENTS)) is False
    forged = signed(keys, version=10)
    forged["text"] = NO_DEPLOYMENTS  # signature no longer matches
    assert s.receive(forged) is False
    unsigned = dict(signed(keys, version=11), signature="")
    assert s.receive(unsigned) is False
    assert s.receive({"name": "x"}) is False and s.receive("garbage") is False
    assert s.counters == {"forgedPolicies": 5, "stalePolicies": 1}
    assert admitted(s, POD) == "no-pods: no bare pods" and admitted(s, DEPLOYMENT) is None
    assert s.receive(signed(keys, version=3, text=NO_DEPLOYMENTS)) is True
    assert admitted(s, POD) is None and admitted(s, DEPLOYMENT) == "no-pods: no deployments"
    assert s.receive(signed(keys, version=4, text=None)) is True  # tombstone
    assert s.list() == [] and admitted(s, DEPLOYMENT) is None


def test_without_a_mesh_key_nothing_is_accepted(dirs, tmp_path):
    owner = mesh_keys.create(tmp_path / "owner", "m")
    s = store(dirs)
    assert s.receive(signed(owner)) is False and s.counters["forgedPolicies"] == 1


def test_equal_versions_settle_on_the_same_document_everywhere(dirs, keys, tmp_path):
    a = signed(keys, version=5, text=NO_PODS, by="peerA")
    b = signed(keys, version=5, text=NO_DEPLOYMENTS, by="peerB")
    winner = max(a, b, key=lambda d: d["signature"])
    for order in ((a, b), (b, a)):
        s = PolicyStore(dirs[0], tmp_path / f"state-{order[0]['setBy']}", PEER, keys=lambda: keys)
        for d in order:
            s.receive(d)
        assert s.docs["no-pods"].signature == winner["signature"]


def test_a_signed_document_this_engine_rejects_keeps_the_previous_one(dirs, keys):
    s = store(dirs)
    s.receive(signed(keys, version=1))
    assert s.receive(signed(keys, version=2, text=BROKEN)) is False
    [view] = s.list()
    assert view["version"] == 1 and view["inForce"] and "does not compile here" in view["error"]
    assert admitted(s, POD) == "no-pods: no bare pods"


def test_catch_up_answers_what_the_asker_lacks(dirs, keys, tmp_path):
    s = store(dirs)
    for name in ("a", "b", "c"):
        s.receive(signed(keys, name=name, version=2))
    behind = PolicyStore(dirs[0], tmp_path / "behind", "peerB", keys=lambda: keys)
    behind.receive(signed(keys, name="a", version=2))
    behind.receive(signed(keys, name="b", version=1))
    sent = s.newer_than(behind.digest())
    assert sorted(d["name"] for d in sent) == ["b", "c"]
    assert sum(behind.receive(d) for d in sent) == 2
    assert s.newer_than(behind.digest()) == [] and behind.newer_than(s.digest()) == []
    assert len(s.newer_than({"a": "junk", "b": [1]})) == 3  # a malformed digest gets everything


def test_admission_checks_every_object_and_names_the_first_denying_policy(dirs, keys):
    s = store(dirs)
    s.receive(signed(keys, name="zz-no-pods", version=1, text=NO_PODS))
    s.receive(signed(keys, name="aa-no-pods", version=1, text=NO_PODS))
    with pytest.raises(errors.PolicyDenied) as exc:
        s.admit([DEPLOYMENT, POD], user="alice", peer={"id": PEER}, operation="Deploy")
    assert exc.value.parameters() == {"policy": "aa-no-pods", "messages": ["no bare pods"]}
