"""What may cross the consensus path, and how: the wire codec, message schemas, and plain-data
unpickling for pysyncobj (pure; the one module allowed to decide what a peer's bytes become).

Three layers, because pysyncobj pickles what it replicates:

1. Transport frames are JSON (`encode`/`decode`, size-limited; bytes fields in base64). Nothing
   in a frame can name a Python object.
2. Every pysyncobj message in a frame is checked against its schema (`check_message`): known
   type, exactly the known keys, every value of the expected type and range. Log entries inside
   (append_entries) and forwarded commands (apply_command) are unpickled with (3) and handed to
   the state machine's own check before they can enter the log.
3. `safe_loads` replaces pysyncobj's `pickle.loads`/`load` (`install()`, run on import of
   beemeshd.consensus): an unpickler that builds plain data only. It resolves exactly four
   globals: `set` (pysyncobj pickles its member set in snapshots), `_codecs.encode` limited to
   latin-1 (how pickle protocol 2 spells bytes) and pysyncobj's `Node` / our `PeerNode` (members,
   rebuilt as attribute dicts without running any of their code). A reduce of anything else —
   `os.system`, `builtins.eval`, a class of ours — is refused before it is looked up.

So a member can at worst propose a command the state machine refuses; it cannot execute code on
another peer. Rejections raise `Rejected` with a counter name; the driver counts them.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import pickle
import zlib

import pysyncobj.node
import pysyncobj.pickle
import pysyncobj.version

PYSYNCOBJ_VERSION = "0.3.17"  # pinned: the schemas below mirror its messages
MAX_FRAME = 4 << 20
MAX_INT = 1 << 63
MAX_PICKLE = 8 << 20

# pysyncobj's command types (first byte of a log entry)
REGULAR, NO_OP, MEMBERSHIP, VERSION = 0, 1, 2, 3


class Rejected(Exception):
    """A frame, message or entry that must be dropped; `counter` names what to count."""

    def __init__(self, counter: str, detail: str):
        self.counter = counter
        super().__init__(detail)


class PeerNode(pysyncobj.node.Node):
    """A group member, id "PEER_ID/INCARNATION". Hashed by CRC so that pysyncobj's member sets
    iterate in the same order in every process (a seeded simulation replays exactly)."""

    def __hash__(self):
        return zlib.crc32(self.id.encode())

    @property
    def peer(self) -> str:
        return peer_of(self.id)


def peer_of(node_id: str) -> str:
    return node_id.rsplit("/", 1)[0]


# -- 1. the frame codec ---------------------------------------------------------------------------
#
# A frame is JSON: [incarnation, sequence, [[group, from, to, message], ...]]. Messages are
# pysyncobj's dicts with their few bytes fields (a log entry's command, a forwarded command, a
# snapshot chunk) in base64, so that a frame is plain JSON end to end — parsed by the C decoder,
# which builds nothing but dicts, lists, strings and numbers (idle groups exchange thousands of
# heartbeats a second: a pure-Python codec cost more than all of Raft). The mesh carries the frame
# inside its signed envelope as is; the in-memory wire round-trips it through these two functions.

def encode(frame) -> bytes:
    return json.dumps(frame, separators=(",", ":"), allow_nan=False).encode()


def _no_constant(name):
    raise ValueError(f"{name} is not a number here")


def decode(data: bytes):
    if len(data) > MAX_FRAME:
        raise Rejected("consensusMalformed", "frame too large")
    try:
        return json.loads(data, parse_constant=_no_constant)
    except (ValueError, RecursionError) as exc:  # JSONDecodeError is a ValueError
        raise Rejected("consensusMalformed", f"bad frame: {str(exc)[:100]}") from None


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _unb64(v, what: str) -> bytes:
    if type(v) is not str or len(v) > MAX_FRAME:
        raise Rejected("consensusMalformed", f"{what} must be base64")
    try:
        return base64.b64decode(v, validate=True)
    except binascii.Error:
        raise Rejected("consensusMalformed", f"{what} must be base64") from None


# -- 3. plain-data unpickling ---------------------------------------------------------------------

def _latin1(text, encoding="latin1"):
    # pickle protocol 2 writes bytes as _codecs.encode(str, "latin1"): allow exactly that
    if type(text) is not str or encoding not in ("latin1", "latin-1"):
        raise pickle.UnpicklingError("_codecs.encode is only allowed for latin-1 bytes")
    return text.encode("latin1")


_GLOBALS = {
    ("__builtin__", "set"): set, ("builtins", "set"): set,
    ("_codecs", "encode"): _latin1,
    ("pysyncobj.node", "Node"): PeerNode,
    (__name__, "PeerNode"): PeerNode,
}


class _PlainUnpickler(pickle.Unpickler):
    def find_class(self, module, name):
        try:
            return _GLOBALS[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"refused to load {module}.{name}") from None

    def persistent_load(self, pid):
        raise pickle.UnpicklingError("persistent ids are refused")


def safe_load(file):
    return _PlainUnpickler(file).load()


def safe_loads(data) -> object:
    data = data if isinstance(data, bytes) else bytes(data)
    if len(data) > MAX_PICKLE:
        raise pickle.UnpicklingError("pickle too large")
    return _PlainUnpickler(io.BytesIO(data)).load()


def install() -> None:
    """Make pysyncobj decode plain data only (its modules call `pysyncobj.pickle.loads/load`
    at call time, so replacing these two functions covers log entries, forwarded commands,
    membership changes and snapshots). Idempotent."""
    if pysyncobj.version.VERSION != PYSYNCOBJ_VERSION:
        raise RuntimeError(f"beemeshd.consensus needs pysyncobj {PYSYNCOBJ_VERSION}, "
                           f"found {pysyncobj.version.VERSION}")
    pysyncobj.pickle.loads = safe_loads
    pysyncobj.pickle.load = safe_load


# -- 2. message schemas ---------------------------------------------------------------------------

def _int(v, what: str, lo: int = 0) -> int:
    if type(v) is not int or not lo <= v < MAX_INT:
        raise Rejected("consensusMalformed", f"{what} must be an integer ≥ {lo}")
    return v


def _bool(v, what: str) -> bool:
    if type(v) is not bool:
        raise Rejected("consensusMalformed", f"{what} must be a boolean")
    return v


_TERMED = {"request_vote", "response_vote", "timeout_now", "append_entries"}
_KEYS = {
    "request_vote": ({"term", "last_log_index", "last_log_term"}, set()),
    "response_vote": ({"term"}, set()),
    "timeout_now": ({"term"}, set()),
    "append_entries": ({"term", "commit_index"}, {"entries", "prevLogIdx", "prevLogTerm", "serialized"}),
    "next_node_idx": ({"next_node_idx", "reset", "success"}, set()),
    "apply_command": ({"command"}, {"request_id"}),
    "apply_command_response": ({"request_id"}, {"error", "log_idx", "log_term"}),
}


def check_message(msg, check_entry, check_forward) -> dict:
    """A pysyncobj message from a frame, checked and in the shape pysyncobj expects, or Rejected.
    check_entry(bytes) vets a log entry's command, check_forward(bytes) a forwarded command;
    both raise Rejected."""
    if type(msg) is not dict or type(msg.get("type")) is not str or msg["type"] not in _KEYS:
        raise Rejected("consensusMalformed", "unknown message type")
    kind = msg["type"]
    required, optional = _KEYS[kind]
    keys = set(msg) - {"type"}
    if not required <= keys or not keys <= required | optional:
        raise Rejected("consensusMalformed", f"{kind}: unexpected or missing fields {sorted(keys ^ required)}")
    out = {"type": kind}
    for k in ("term", "last_log_index", "last_log_term", "commit_index", "next_node_idx", "request_id",
              "log_idx", "log_term", "error"):
        if k in msg:
            out[k] = _int(msg[k], k)
    for k in ("reset", "success"):
        if k in msg:
            out[k] = _bool(msg[k], k)
    if kind == "append_entries":
        if "serialized" in msg:
            if keys & {"entries", "prevLogIdx", "prevLogTerm"}:
                raise Rejected("consensusMalformed", "append_entries carries entries or a snapshot, not both")
            out["serialized"] = _snapshot_chunk(msg["serialized"])
        else:
            if not {"entries", "prevLogIdx", "prevLogTerm"} <= keys:
                raise Rejected("consensusMalformed", "append_entries without its previous entry")
            out["prevLogIdx"] = _int(msg["prevLogIdx"], "prevLogIdx")
            out["prevLogTerm"] = _int(msg["prevLogTerm"], "prevLogTerm")
            entries = msg["entries"]
            if type(entries) is not list or len(entries) > 10_000:
                raise Rejected("consensusMalformed", "entries must be a list")
            out["entries"] = [_entry(e, check_entry) for e in entries]
    if kind == "apply_command":
        command = _unb64(msg["command"], "command")
        if not command:
            raise Rejected("consensusMalformed", "an empty command")
        check_forward(command)
        out["command"] = command
    return out


def _entry(e, check_entry) -> tuple:
    if type(e) is not list or len(e) != 3:
        raise Rejected("consensusMalformed", "a log entry is [command, index, term]")
    command = _unb64(e[0], "an entry's command")
    if not command:
        raise Rejected("consensusMalformed", "an empty log entry")
    check_entry(command)
    return (command, _int(e[1], "entry index"), _int(e[2], "entry term"))


def _snapshot_chunk(v):
    # (data, isFirst, isLast) or None; the data is unpickled (plain data only) once complete
    if v is None:
        return None
    if type(v) is not list or len(v) != 3:
        raise Rejected("consensusMalformed", "a snapshot chunk is [data, first, last]")
    return (_unb64(v[0], "a snapshot chunk"), _bool(v[1], "first"), _bool(v[2], "last"))


def for_wire(msg: dict) -> dict:
    """A message pysyncobj wants to send, in frame form (bytes in base64). None if we never
    send it (oversized entries split into 'transmission' chunks: our commands are tiny)."""
    if "transmission" in msg:
        return None
    out = dict(msg)
    if "entries" in out:
        out["entries"] = [[_b64(e[0]), e[1], e[2]] for e in out["entries"]]
    if "command" in out:
        out["command"] = _b64(out["command"])
    if "serialized" in out:
        s = out["serialized"]  # pysyncobj passes False after a read error
        out["serialized"] = [_b64(s[0]), s[1], s[2]] if s else None
    return out


def unpickle_command(data: bytes, machine_check) -> object:
    """Vet one log entry's bytes (pysyncobj's command type byte + pickle): regular commands must
    be our single replicated method with one plain argument the state machine accepts;
    membership changes a plain [op, node id(, node)]; no-ops exactly one byte."""
    kind = data[0]
    if kind == NO_OP:
        if len(data) != 1:
            raise Rejected("consensusMalformed", "no-op with a payload")
        return None
    if kind not in (REGULAR, MEMBERSHIP):
        raise Rejected("consensusMalformed", f"command type {kind} is not used")
    try:
        obj = safe_loads(data[1:])
    except Exception as exc:  # the unpickler raises many types on bad input
        raise Rejected("consensusUnsafe", f"payload refused: {exc}") from None
    if kind == MEMBERSHIP:
        if (type(obj) is not list or len(obj) not in (2, 3) or obj[0] not in ("add", "rem")
                or type(obj[1]) is not str or (len(obj) == 3 and (type(obj[2]) is not PeerNode
                                                                  or obj[2].id != obj[1]))):
            raise Rejected("consensusMalformed", "bad membership change")
        return obj
    if type(obj) is not tuple or len(obj) != 2 or obj[0] != 0 or type(obj[1]) is not tuple or len(obj[1]) != 1:
        raise Rejected("consensusMalformed", "a command is (0, (argument,))")
    try:
        return machine_check(obj[1][0])
    except ValueError as exc:
        raise Rejected("consensusMalformed", f"command refused: {exc}") from None


install()
