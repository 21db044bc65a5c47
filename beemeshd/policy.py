"""Rego policies, evaluated in-process by regopy (rego-cpp): compile, check, evaluate.

The convention (also in the interface file and the README):
- a mesh-wide policy is `package beemesh.admission`, evaluated on the peer that takes a Deploy or
  Scale, once per object, before anything is decided; a node-local policy is `package beemesh.bid`,
  evaluated by a peer before it bids on a task;
- it defines `deny`, a set of strings (`deny contains msg if { ... }`): every message is a reason
  to refuse, an empty set allows. Anything else in the package is the author's business;
- the input document is built by `make_input` (documented there).

Each policy compiles into its own interpreter (a bad policy cannot break another, and messages
stay attributed) holding a bundle: querying the compiled bundle costs a third of a plain query,
which recompiles the module every time. Built-in errors are strict: a policy whose evaluation
fails denies, with the error as its message (fail closed), rather than silently allowing.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from types import SimpleNamespace

from beemeshd import errors
from beemeshd.core.policy_doc import MAX_TEXT, NAME_RE

SCOPE_NODE = "node"
SCOPE_MESH = "mesh"
PACKAGES = {SCOPE_MESH: "beemesh.admission", SCOPE_NODE: "beemesh.bid"}
RULE = "deny"

# What the checks evaluate a new policy against: the input shape with nothing in it.
_PROBE = {"manifest": {}, "request": {"peer": "", "user": None, "operation": ""}, "peer": {}}
_rg = None


def _regopy() -> SimpleNamespace:
    """regopy, loaded with the first policy: rego-cpp costs ≈ 14 MB of RSS, which a daemon with no
    policy should not pay."""
    global _rg
    if _rg is None:
        import regopy
        from regopy import rego_shared

        _rg = SimpleNamespace(Input=regopy.Input, Interpreter=regopy.Interpreter, LogLevel=regopy.LogLevel,
                              NodeKind=regopy.NodeKind, RegoError=regopy.RegoError, c=rego_shared)
    return _rg


_KEYWORDS = {"if", "not", "some", "every", "in", "contains", "else", "with", "as", "default", "import",
             "package", "true", "false", "null"}


def check_name(name: str) -> str:
    if not isinstance(name, str) or not NAME_RE.match(name):
        raise errors.InvalidParameter("name", "1–63 lowercase letters, digits, '.', '_' or '-', "
                                      "starting and ending with a letter or digit")
    return name


def make_input(manifest: dict, *, request_peer: str, user: str | None, peer: dict, operation: str) -> dict:
    """The input document:
    {"manifest": the Kubernetes object (namespace filled in),
     "request": {"peer": peer id that took the call (admission) or announced the task (bid),
                 "user": unix user name of the caller on the peer that took the call (at a bid:
                         as the announcing peer's signed task says), null when a peer re-places
                         on its own,
                 "operation": "Deploy" | "Scale" | "Bid"},
     "peer": the candidate peer's record — at admission the peer that took the call, before a
             bid the bidding peer: {"id", "labels", "capacity", "runtime", "network", "version"}}"""
    return {"manifest": manifest, "request": {"peer": request_peer, "user": user, "operation": operation},
            "peer": peer}


@dataclass(frozen=True)
class Denial:
    policy: str
    messages: list[str]


@dataclass(eq=False)
class Policy:
    """One compiled policy. Build with `compile_policy`."""

    name: str
    scope: str
    text: str
    _interp: object = field(repr=False)  # regopy.Interpreter
    _bundle: object = field(repr=False)

    def evaluate(self, doc) -> list[str]:
        """Its deny messages for this input ([] allows). Fails closed: an evaluation error is a
        message."""
        r = _regopy()
        self._interp.set_input(doc if isinstance(doc, r.Input) else r.Input(doc))
        ok, text, value = _run(r.c.rego_bundle_query, self._interp._impl, self._bundle._impl, binding="x")
        if not ok or text.startswith("(") or text == "<error>":
            return [f"policy {self.name} failed to evaluate: {_describe(text, self.name, self.text)}"]
        if text == "undefined":
            return []
        if value is None:
            return [f"policy {self.name} failed to evaluate: unexpected result {text[:200]}"]
        if not isinstance(value, list):
            return [f"policy {self.name}: {RULE} is not a set of strings"]
        return [v if isinstance(v, str) else json.dumps(v) for v in value]


class PolicySet:
    """Compiled policies of one scope, by name; evaluated in name order."""

    def __init__(self, policies: Iterable[Policy] = ()):
        self.policies: dict[str, Policy] = {p.name: p for p in policies}

    def __len__(self) -> int:
        return len(self.policies)

    def put(self, p: Policy) -> None:
        self.policies[p.name] = p

    def drop(self, name: str) -> None:
        self.policies.pop(name, None)

    def denials(self, doc: dict) -> list[Denial]:
        """Every policy that denies this input, with its messages."""
        if not self.policies:
            return []
        converted = _regopy().Input(doc)  # once, shared by every interpreter
        out = []
        for name in sorted(self.policies):
            msgs = self.policies[name].evaluate(converted)
            if msgs:
                out.append(Denial(name, msgs))
        return out


def compile_policy(name: str, scope: str, text: str) -> Policy:
    """Compile and check a policy; InvalidPolicy (with line and column where known) otherwise."""
    check_name(name)
    if scope not in PACKAGES:
        raise errors.InvalidParameter("scope", "node or mesh")
    if not isinstance(text, str) or not text.strip():
        raise errors.InvalidPolicy(name, None, None, "empty policy text")
    if len(text.encode()) > MAX_TEXT:
        raise errors.InvalidPolicy(name, None, None, f"longer than {MAX_TEXT} bytes")
    package = PACKAGES[scope]
    _check_package(name, scope, text, package)
    try:
        r = _regopy()
    except ImportError:  # the RPM only recommends it: Fedora does not package regopy
        raise errors.InvalidPolicy(name, None, None, "the Rego engine is not installed (Python package "
                                   "regopy); this peer cannot enforce policies until it is") from None
    interp = r.Interpreter()
    interp.log_level = r.LogLevel.NONE  # rego-cpp prints errors on stdout otherwise; we report them
    interp.strict_built_in_errors = True
    try:
        interp.add_module(_module(name), text)
    except r.RegoError as exc:
        raise _invalid(name, text, str(exc)) from None
    _check_calls(name, text, interp)
    # A plain query first: it reports what a bundle would silently leave undefined.
    interp.set_input(r.Input(_PROBE))
    ok, out, value = _run(r.c.rego_query, interp._impl, f"x = data.{package}.{RULE}", binding="x")
    if not ok or out.startswith("(") or out == "<error>":
        raise _invalid(name, text, out)
    if out == "undefined":
        raise errors.InvalidPolicy(name, None, None, f"defines no rule '{RULE}': write "
                                   f"`{RULE} contains msg if {{ ... }}` (a set of strings, empty to allow)")
    if not isinstance(value, list):
        hint = (f" (the Rego v0 form `{RULE}[msg] {{ ... }}` defines an object in Rego v1)"
                if isinstance(value, dict) else "")
        raise errors.InvalidPolicy(name, _line_of(text, rf"^{RULE}\b"), 1,
                                   f"'{RULE}' must be a set of strings (`{RULE} contains msg if {{ ... }}`), "
                                   f"not {_json_type(value)}{hint}")
    bundle = interp.build(f"x = data.{package}.{RULE}")
    if not bundle.ok():
        raise errors.InvalidPolicy(name, None, None, "the policy could not be compiled into a bundle")
    return Policy(name, scope, text, interp, bundle)


# -- checks ------------------------------------------------------------------------------------
def _module(name: str) -> str:
    return f"{name}.rego"


def _check_package(name: str, scope: str, text: str, package: str) -> None:
    code = _blank_strings_and_comments(text)
    m = re.search(r"^\s*package\s+([\w.]+)", code, re.M)
    if m is None:
        raise errors.InvalidPolicy(name, 1, 1, f"no package declaration: a {scope} policy starts with "
                                   f"`package {package}`")
    if m.group(1) != package:
        line, col = _position(text, m.start(1))
        raise errors.InvalidPolicy(name, line, col, f"a {scope} policy must be `package {package}`, "
                                   f"not {m.group(1)}")


def _check_calls(name: str, text: str, interp) -> None:
    """Calls of functions that are neither built-in nor defined here. rego-cpp only notices them
    when evaluation reaches the call, so a typo would otherwise never deny anything."""
    code = _blank_strings_and_comments(text)
    defined = set(re.findall(r"^([A-Za-z_]\w*)\s*\(", code, re.M))
    for m in re.finditer(r"(?<![\w.\]])([A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*)\s*\(", code):
        fn = m.group(1)
        if fn in defined or fn in _KEYWORDS or fn.startswith(("data.", "input.")):
            continue
        if not interp.is_builtin(fn):
            line, col = _position(text, m.start(1))
            raise errors.InvalidPolicy(name, line, col, f"unknown function {fn} (not a built-in of this "
                                       "Rego engine, nor defined in the policy)")


def _blank_strings_and_comments(text: str) -> str:
    """The text with string literals and comments replaced by spaces (offsets kept)."""
    pattern = re.compile(r'"(?:\\.|[^"\\\n])*"|`[^`]*`|#[^\n]*')
    return pattern.sub(lambda m: re.sub(r"[^\n]", " ", m.group(0)), text)


def _json_type(value) -> str:
    for t, word in ((bool, "a boolean"), (str, "a string"), ((int, float), "a number"), (dict, "an object")):
        if isinstance(value, t):
            return word
    return "null"


def _position(text: str, offset: int) -> tuple[int, int]:
    """1-based line and column of a character offset."""
    before = text[:offset]
    return before.count("\n") + 1, offset - (before.rfind("\n") + 1) + 1


def _line_of(text: str, pattern: str) -> int | None:
    m = re.search(pattern, text, re.M)
    return _position(text, m.start())[0] if m else None


_ERROR = re.compile(r"\(errormsg (\d+):")


def _errors(raw: str) -> list[str]:
    """Messages of a rego-cpp error tree (its length-prefixed `errormsg` atoms)."""
    out = []
    for m in _ERROR.finditer(raw):
        n = int(m.group(1))
        data = raw[m.end():].encode()[:n].decode(errors="replace")
        out.append(data)
    return out


def _location(raw: str, name: str, text: str) -> tuple[int | None, int | None]:
    """The first source location in a rego-cpp error tree: `<len>:<module>|<offset>|<len>`, offset
    in bytes of the policy text."""
    module = _module(name)
    m = re.search(rf"{len(module)}:{re.escape(module)}\|(\d+)\|(\d+)", raw)
    if m is None:
        return None, None
    offset = len(text.encode()[:int(m.group(1))].decode(errors="replace"))
    return _position(text, offset)


def _invalid(name: str, text: str, raw: str) -> errors.InvalidPolicy:
    msgs = _errors(raw) or [raw.strip()[:300] or "unknown error"]
    line, col = _location(raw, name, text)
    if line is None:  # e.g. "Function not found: foo": find the call in the text
        fn = re.search(r"not found: ([\w.]+)", msgs[0])
        if fn:
            m = re.search(rf"(?<![\w.]){re.escape(fn.group(1))}\s*\(", _blank_strings_and_comments(text))
            if m:
                line, col = _position(text, m.start())
    if line is not None and set(msgs) == {"this is unclosed"}:  # rego-cpp's words: say what is
        msgs = [f"unclosed {text.splitlines()[line - 1][col - 1:col]!r}"]
    return errors.InvalidPolicy(name, line, col, "; ".join(dict.fromkeys(msgs)))


def _describe(raw: str, name: str, text: str) -> str:
    msgs = _errors(raw)
    line, col = _location(raw, name, text)
    where = f" (line {line}, column {col})" if line else ""
    return ("; ".join(dict.fromkeys(msgs)) or raw.strip()[:200] or "unknown error") + where


def _run(query, *args, binding: str | None = None) -> tuple:
    """(ok, text) of a rego-cpp query — with `binding`, (ok, text, that binding's value or None).
    An error's text is its error tree (regopy's Output cannot show it: it parses every result
    as JSON)."""
    c = _regopy().c
    out = query(*args)
    try:
        ok = bool(c.rego_output_ok(out))
        text = c.rego_output_string(out)
        if not ok or text == "<error>":
            node = c.rego_output_node(out)
            trees = [c.rego_node_json(c.rego_node_get(node, i)) for i in range(c.rego_node_size(node))]
            text = "\n".join(trees) or text
            ok = False
        if binding is None:
            return ok, text
        value = None
        if ok and text.startswith("{"):
            try:
                value = json.loads(text)["bindings"][binding]
            except ValueError:
                # rego-cpp 1.x does not escape quotes that sprintf("%s") copies from a computed
                # string; the result tree still has the strings.
                value = _strings(c.rego_output_binding_at_index(out, 0, binding))
            except (KeyError, TypeError):
                pass
        return ok, text, value
    finally:
        c.rego_free_output(out)


def _strings(node) -> list | None:
    """The members of a set or array node of strings (other members as their JSON text)."""
    c, kinds = _regopy().c, _regopy().NodeKind
    kind = c.rego_node_type(node)
    if kind == kinds.Term:
        return _strings(c.rego_node_get(node, 0))
    if kind not in (kinds.Set, kinds.Array):
        return None
    out = []
    for i in range(c.rego_node_size(node)):
        child = c.rego_node_get(node, i)
        while c.rego_node_type(child) in (kinds.Term, kinds.Scalar):
            child = c.rego_node_get(child, 0)
        if c.rego_node_type(child) == kinds.String:
            raw = c.rego_node_value(child)
            try:
                out.append(json.loads(f'"{raw}"'))
            except ValueError:
                out.append(raw)
        else:
            out.append(c.rego_node_json(child))
    return out
