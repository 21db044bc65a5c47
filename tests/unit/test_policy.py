"""The Rego engine (beemeshd/policy.py) and the example policies (examples/policies/)."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest

from beemeshd import errors
from beemeshd.policy import PolicySet, compile_policy, make_input

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "policies"
ADMISSION = "package beemesh.admission\n\nimport rego.v1\n\n"


def doc(manifest, *, peer=None, origin="12D3KooWorigin", user="alice", operation="Deploy"):
    return make_input(manifest, request_peer=origin, user=user, peer=peer or {"id": "12D3KooWself"},
                      operation=operation)


def deployment(replicas=2, image="localhost/beemesh-busybox:latest", host_port=30080, requests=True, volumes=None):
    c = {"name": "httpd", "image": image, "ports": [{"containerPort": 8080, "hostPort": host_port}]}
    if requests:
        c["resources"] = {"requests": {"cpu": "50m", "memory": "16Mi"}}
    spec = {"containers": [c]}
    if volumes is not None:
        spec["volumes"] = volumes
    return {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web", "namespace": "default"},
            "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": "web"}},
                     "template": {"metadata": {"labels": {"app": "web"}}, "spec": spec}}}


# -- compile errors: named line and column -----------------------------------------------------
@pytest.mark.parametrize("text, line, column, words", [
    (ADMISSION + "deny contains msg if {\n  input.a ==\n}\n", 6, 11, "Invalid boolean operator"),
    (ADMISSION + "deny contains m if {\n  input.zz\n  m := frobnicate(1)\n}\n", 7, 8, "unknown function frobnicate"),
    ("package something.else\ndeny contains \"x\"\n", 1, 9, "must be `package beemesh.admission`"),
    ("deny contains \"x\"\n", 1, 1, "no package declaration"),
    (ADMISSION + "deny := 5\n", 5, 1, "must be a set of strings"),
    ("package beemesh.admission\n\ndeny[msg] {\n  msg := \"a\"\n}\n", 3, 1, "Rego v0 form"),
])
def test_bad_text_names_line_and_column(text, line, column, words):
    with pytest.raises(errors.InvalidPolicy) as exc:
        compile_policy("p", "mesh", text)
    assert (exc.value.line, exc.value.column) == (line, column)
    assert words in exc.value.message
    assert exc.value.parameters()["name"] == "p"


@pytest.mark.parametrize("text, words", [
    (ADMISSION + "allow := true\n", "defines no rule 'deny'"),
    (ADMISSION + "v := 1 if true\nv := 2 if true\ndeny contains \"a\" if v == 1\n", "multiple outputs"),
    (ADMISSION + "deny contains m if {\n m := deny\n}\n", "Recursion"),
    ("", "empty"),
])
def test_bad_text_without_a_position_still_says_what(text, words):
    with pytest.raises(errors.InvalidPolicy) as exc:
        compile_policy("p", "mesh", text)
    assert words in exc.value.message


def test_scope_decides_the_package():
    node_text = "package beemesh.bid\n\nimport rego.v1\n\ndeny contains \"never\" if false\n"
    assert compile_policy("n", "node", node_text).scope == "node"
    with pytest.raises(errors.InvalidPolicy, match="beemesh.admission"):
        compile_policy("n", "mesh", node_text)


def test_names_are_checked():
    with pytest.raises(errors.InvalidParameter):
        compile_policy("../etc", "mesh", ADMISSION + "deny contains \"x\" if false\n")


def test_a_function_named_in_a_string_or_comment_is_not_a_call():
    p = compile_policy("p", "mesh", ADMISSION + "# frobnicate(x) is not real\n"
                       "deny contains sprintf(\"%s\", [\"frobnicate(\"]) if input.manifest.kind == \"Pod\"\n")
    assert p.evaluate(doc({"kind": "Pod"})) == ["frobnicate("]


# -- evaluation --------------------------------------------------------------------------------
def test_deny_messages_and_allow():
    p = compile_policy("no-pods", "mesh", ADMISSION +
                       "deny contains msg if {\n  input.manifest.kind == \"Pod\"\n"
                       "  msg := sprintf(\"%s may not deploy bare pods\", [input.request.user])\n}\n")
    assert p.evaluate(doc({"kind": "Pod"})) == ["alice may not deploy bare pods"]
    assert p.evaluate(doc({"kind": "Deployment"})) == []


def test_an_evaluation_error_denies_with_its_reason():
    p = compile_policy("strict", "mesh", ADMISSION +
                       "deny contains m if {\n  input.manifest.kind == \"Pod\"\n  m := sprintf(\"%d\", 1)\n}\n")
    [msg] = p.evaluate(doc({"kind": "Pod"}))
    assert msg.startswith("policy strict failed to evaluate: sprintf") and "line 7" in msg
    assert p.evaluate(doc({"kind": "Deployment"})) == []


def test_computed_strings_with_quotes_survive_the_engine_output():
    # rego-cpp 1.x copies a computed string into sprintf("%s") with its quotes and does not escape
    # them in its JSON output; the messages must still come through.
    p = compile_policy("q", "mesh", ADMISSION + 'names := ["a", "b"]\n'
                       'deny contains sprintf("only %s here", [concat(", ", names)]) if true\n')
    [msg] = p.evaluate(doc({}))
    assert "a, b" in msg and msg.startswith("only ")


def test_input_document_shape():
    p = compile_policy("echo", "node", "package beemesh.bid\n\nimport rego.v1\n\n"
                       "deny contains sprintf(\"%s %s %s %s %s\", [input.manifest.metadata.name, input.request.peer,"
                       " input.request.operation, input.peer.id, input.peer.labels.zone]) if true\n")
    d = doc(deployment(), peer={"id": "me", "labels": {"zone": "a"}}, origin="them", user=None, operation="Bid")
    assert p.evaluate(d) == ["web them Bid me a"]
    assert d["request"]["user"] is None


def test_policy_set_reports_every_denying_policy_in_name_order():
    deny_all = ADMISSION + "deny contains \"no\" if true\n"
    allow_all = ADMISSION + "deny contains \"no\" if false\n"
    s = PolicySet([compile_policy("zeta", "mesh", deny_all), compile_policy("alpha", "mesh", deny_all),
                   compile_policy("mid", "mesh", allow_all)])
    assert [(d.policy, d.messages) for d in s.denials(doc({}))] == [("alpha", ["no"]), ("zeta", ["no"])]
    s.drop("alpha")
    s.drop("zeta")
    assert s.denials(doc({})) == []


# -- the examples ------------------------------------------------------------------------------
def example(name):
    text = (EXAMPLES / f"{name}.rego").read_text()
    scope = "node" if "package beemesh.bid" in text else "mesh"
    return compile_policy(name, scope, text)


def test_every_example_compiles():
    names = sorted(p.stem for p in EXAMPLES.glob("*.rego"))
    assert names == ["bid-origin-allowlist", "hostport-range", "image-allowlist", "max-replicas", "no-hostpath",
                     "require-requests"]
    for name in names:
        example(name)


GOOD = deployment()


def bad(**kw):
    m = copy.deepcopy(GOOD)
    m.update(deployment(**kw))
    return m


@pytest.mark.parametrize("name, bad_manifest, expected", [
    ("image-allowlist", bad(image="evil.example/miner:1"),
     ["container httpd: image evil.example/miner:1 is not allowed"]),
    ("no-hostpath", bad(volumes=[{"name": "etc", "hostPath": {"path": "/etc"}}]),
     ["volume etc: hostPath volumes are not allowed"]),
    ("require-requests", bad(requests=False), ["container httpd: resources.requests.cpu is required",
                                               "container httpd: resources.requests.memory is required"]),
    ("hostport-range", bad(host_port=22), ["container httpd: hostPort 22 is outside 30000-32767"]),
    ("max-replicas", bad(replicas=11), ["Deployment web asks for 11 replicas; at most 10 are allowed"]),
])
def test_example_denies_what_it_should_and_allows_a_good_manifest(name, bad_manifest, expected):
    p = example(name)
    assert p.evaluate(doc(GOOD)) == []
    got = p.evaluate(doc(bad_manifest))
    assert len(got) == len(expected) and all(g.startswith(e) for g, e in zip(sorted(got), sorted(expected))), got


def test_examples_ignore_what_they_do_not_concern():
    service = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web"}, "spec": {"ports": [{"port": 80}]}}
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "solo"},
           "spec": {"containers": [{"name": "a", "image": "localhost/x", "resources": {"requests": {"cpu": "1",
                                                                                                 "memory": "1Mi"}}}]}}
    for name in ("image-allowlist", "no-hostpath", "require-requests", "hostport-range", "max-replicas"):
        p = example(name)
        assert p.evaluate(doc(service)) == [] and p.evaluate(doc(pod)) == [], name
    # the image allow-list reads bare pods too
    evil_pod = copy.deepcopy(pod)
    evil_pod["spec"]["containers"][0]["image"] = "evil.example/x"
    assert example("image-allowlist").evaluate(doc(evil_pod))


def test_max_replicas_applies_at_scale_with_the_new_count():
    scaled = bad(replicas=50)
    assert example("max-replicas").evaluate(doc(scaled, operation="Scale"))


def test_bid_origin_allowlist_lets_a_peer_run_its_own_work_only():
    p = example("bid-origin-allowlist")
    own = doc(GOOD, peer={"id": "12D3KooWself"}, origin="12D3KooWself", user=None, operation="Bid")
    other = doc(GOOD, peer={"id": "12D3KooWself"}, origin="12D3KooWstranger", user=None, operation="Bid")
    assert p.evaluate(own) == []
    assert p.evaluate(other) == ["this peer only runs work announced by its allow-listed peers, not by "
                                 "12D3KooWstranger"]


def test_without_the_rego_engine_a_policy_is_refused_with_a_clear_error(monkeypatch):
    import sys

    from beemeshd import errors, policy

    monkeypatch.setattr(policy, "_rg", None)
    monkeypatch.setitem(sys.modules, "regopy", None)  # import regopy -> ImportError
    text = "package beemesh.admission\nimport rego.v1\ndeny contains \"no\" if true\n"
    with pytest.raises(errors.InvalidPolicy) as exc:
        policy.compile_policy("p", "mesh", text)
    assert "regopy" in exc.value.message
