"""Strict value checks against the interface's types (python-varlink's own are lenient)."""

import pytest

from beemeshd.api.idl import BadValue, Interface

IFACE = Interface.load()
GET = IFACE.methods["Get"].in_type
SCALE = IFACE.methods["Scale"].in_type
DEPLOY = IFACE.methods["Deploy"].in_type


@pytest.mark.parametrize("params", [
    {"name": "web"}, {"name": "web", "namespace": None}, {"name": "web", "kind": "StatefulSet"},
])
def test_good_values_pass(params):
    IFACE.check_struct(GET, params)


@pytest.mark.parametrize("struct, params, path", [
    (SCALE, {"name": "w", "replicas": 1.5}, "replicas"),
    (SCALE, {"name": "w", "replicas": True}, "replicas"),
    (SCALE, {"name": "w", "replicas": "3"}, "replicas"),
    (SCALE, {"name": "w", "replicas": 2, "wait": 1}, "wait"),
    (GET, {"name": "w", "kind": "pod"}, "kind"),
    (DEPLOY, {"manifest": "kind: Pod"}, "manifest"),
    (DEPLOY, {"timeoutSeconds": "5"}, "timeoutSeconds"),
])
def test_bad_values_name_the_field(struct, params, path):
    with pytest.raises(BadValue) as exc:
        IFACE.check_struct(struct, params)
    assert exc.value.path == path


def test_integral_float_is_accepted_as_int():
    IFACE.check_struct(SCALE, {"name": "w", "replicas": 3.0})


def test_nested_reply_paths():
    out = IFACE.methods["ListPeers"].out_type
    with pytest.raises(BadValue) as exc:
        IFACE.check_struct(out, {"peers": [{"peerId": "x"}]}, "reply")
    assert exc.value.path.startswith("reply.peers[0].")


def test_every_member_is_documented():
    # The interface file is the reference manual: each method, type, error and field has a comment.
    lines = IFACE.text.splitlines()
    for i, line in enumerate(lines):
        s = line.strip()
        is_member = s.startswith(("method ", "type ", "error "))
        is_field = line.startswith("\t") and ":" in s and not s.startswith("#")
        if is_member or is_field:
            prev = lines[i - 1].strip()
            # fields grouped under one comment (e.g. total and free) share it
            documented = prev.startswith("#") or (is_field and lines[i - 1].startswith("\t") and ":" in prev)
            assert documented, f"line {i + 1} has no comment: {s}"
