"""The allow-list half of manifest parsing: which fields BeeMesh accepts, and their types.

Every object level has an explicit schema below. `walk` checks a manifest against it before
anything reads it, so a field BeeMesh does not support is an error naming its full path --
never silently dropped. The small `get`/`required`/... helpers then read values the walker
has already type-checked, turning range and syntax problems into InvalidManifest.
"""

from __future__ import annotations

from typing import Any

from beemeshd.core import k8s_names
from beemeshd.errors import InvalidManifest
from beemeshd.model import Pairs

INT32 = 2**31 - 1
# Upper bound on the number of values in the input once YAML aliases are expanded: stops an
# "alias bomb" (a few lines that expand to billions of values) before anything walks it.
MAX_VALUES = 1 << 20
# Kubernetes objects are shallow (managedFields, the deepest part, is ~20 levels); a bound
# keeps recursive code such as copy.deepcopy safe from pathological nesting.
MAX_DEPTH = 100

# ---------------------------------------------------------------------------- schema walker


class Obj:
    """A mapping with a fixed set of allowed fields."""

    def __init__(self, fields: dict, ignored: frozenset = frozenset(), hints: dict | None = None):
        self.fields, self.ignored, self.hints = fields, ignored, hints or {}


class ListOf:
    def __init__(self, item):
        self.item = item


STR, INT, BOOL, INT_OR_STR, QUANTITY, STR_MAP, EMPTY, ANY = (
    "string", "integer", "boolean", "integer or string", "quantity", "string map", "empty", "any")
_SCALAR_OK = {
    STR: lambda v: isinstance(v, str),
    INT: lambda v: isinstance(v, int) and not isinstance(v, bool),  # bool is an int in Python
    BOOL: lambda v: isinstance(v, bool),
    INT_OR_STR: lambda v: isinstance(v, (int, str)) and not isinstance(v, bool),
    QUANTITY: lambda v: isinstance(v, (int, float, str)) and not isinstance(v, bool),
}


def describe(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"boolean {str(value).lower()}"
    if isinstance(value, int):
        return f"integer {value}"
    if isinstance(value, float):
        return f"number {value!r}"
    if isinstance(value, str):
        return f"string {value[:40] + '...' if len(value) > 40 else value!r}"
    return {dict: "a mapping", list: "a list"}.get(type(value), type(value).__name__)


def join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def walk(value: Any, spec: Any, path: str) -> None:
    """Check `value` against `spec`. null counts as unset (as in Kubernetes) and always passes."""
    if value is None or spec == ANY:
        return
    if spec == EMPTY:  # top-level `status`: written by a cluster, meaningless as input
        if value != {}:
            raise InvalidManifest(path, "status is set by the system, not by users: remove it")
    elif isinstance(spec, Obj):
        if not isinstance(value, dict):
            raise InvalidManifest(path, f"expected a mapping, found {describe(value)}")
        for key, sub in value.items():
            if key in spec.ignored:
                continue
            if key not in spec.fields:
                hint = spec.hints.get(key)
                raise InvalidManifest(join(path, key), "unsupported field"
                                      + (f": {hint}" if hint else "")
                                      + f" (BeeMesh supports: {', '.join(spec.fields)})")
            walk(sub, spec.fields[key], join(path, key))
    elif isinstance(spec, ListOf):
        if not isinstance(value, list):
            raise InvalidManifest(path, f"expected a list, found {describe(value)}")
        for i, item in enumerate(value):
            if item is None:
                raise InvalidManifest(f"{path}[{i}]", "expected a value, found null")
            walk(item, spec.item, f"{path}[{i}]")
    elif spec == STR_MAP:
        if not isinstance(value, dict):
            raise InvalidManifest(path, f"expected a mapping of strings, found {describe(value)}")
        for key, sub in value.items():
            if not isinstance(sub, str):
                raise InvalidManifest(path, f"value of {key!r} must be a string, found {describe(sub)}"
                                      " (quote values such as 1, true or '')")
    elif not _SCALAR_OK[spec](value):
        raise InvalidManifest(path, f"expected {spec}, found {describe(value)}")


# ------------------------------------------------------------------------------- schemas

# kubectl prints these server-set fields in `get -o yaml`; accepting and ignoring them lets
# such output be re-applied. They carry no intent, so ignoring them changes nothing.
SERVER_META = frozenset({"uid", "resourceVersion", "creationTimestamp", "generation", "managedFields"})
_NO_GENERATE = {"generateName": "BeeMesh needs a fixed metadata.name"}
METADATA = Obj({"name": STR, "namespace": STR, "labels": STR_MAP, "annotations": STR_MAP},
               SERVER_META, _NO_GENERATE)
TEMPLATE_METADATA = Obj({"labels": STR_MAP, "annotations": STR_MAP}, SERVER_META)
_NO_HOST = {"host": "probes always target the pod itself"}
PROBE = Obj({
    "exec": Obj({"command": ListOf(STR)}),
    "httpGet": Obj({"path": STR, "port": INT_OR_STR, "scheme": STR}, hints=_NO_HOST),
    "tcpSocket": Obj({"port": INT_OR_STR}, hints=_NO_HOST),
    "initialDelaySeconds": INT, "periodSeconds": INT, "timeoutSeconds": INT,
    "successThreshold": INT, "failureThreshold": INT,
})
_CPU_MEM = Obj({"cpu": QUANTITY, "memory": QUANTITY})
CONTAINER = Obj({
    "name": STR, "image": STR, "command": ListOf(STR), "args": ListOf(STR),
    "env": ListOf(Obj({"name": STR, "value": STR},
                      hints={"valueFrom": "BeeMesh has no Secrets or ConfigMaps yet; use value"})),
    "ports": ListOf(Obj({"name": STR, "containerPort": INT, "hostPort": INT, "protocol": STR,
                        "hostIP": STR})),
    "resources": Obj({"requests": _CPU_MEM, "limits": _CPU_MEM}),
    "readinessProbe": PROBE, "livenessProbe": PROBE,
    "volumeMounts": ListOf(Obj({"name": STR, "mountPath": STR, "readOnly": BOOL})),
    "workingDir": STR, "imagePullPolicy": STR,
})
POD_SPEC = Obj({
    "containers": ListOf(CONTAINER), "restartPolicy": STR,
    "volumes": ListOf(Obj({"name": STR, "emptyDir": Obj({"medium": STR, "sizeLimit": QUANTITY})},
                          hints={k: "BeeMesh supports emptyDir volumes only"
                                 for k in ("hostPath", "persistentVolumeClaim", "configMap",
                                           "secret", "projected", "nfs")})),
    "nodeSelector": STR_MAP, "terminationGracePeriodSeconds": INT,
})
TEMPLATE = Obj({"metadata": TEMPLATE_METADATA, "spec": POD_SPEC})
SELECTOR = Obj({"matchLabels": STR_MAP}, hints={"matchExpressions": "use matchLabels"})
DEPLOYMENT_SPEC = Obj({
    "replicas": INT, "selector": SELECTOR, "template": TEMPLATE,
    "strategy": Obj({"type": STR, "rollingUpdate": Obj({"maxSurge": INT_OR_STR,
                                                        "maxUnavailable": INT_OR_STR})}),
    "minReadySeconds": INT, "revisionHistoryLimit": INT, "progressDeadlineSeconds": INT,
}, hints={"volumeClaimTemplates": "only a StatefulSet has per-replica volumes; use a StatefulSet, "
          "or emptyDir volumes in the pod template"})
STATEFULSET_SPEC = Obj({
    "replicas": INT, "selector": SELECTOR, "template": TEMPLATE, "serviceName": STR,
    "podManagementPolicy": STR,
    "updateStrategy": Obj({"type": STR, "rollingUpdate": Obj({"partition": INT})}),
    "volumeClaimTemplates": ListOf(Obj({
        "metadata": Obj({"name": STR, "labels": STR_MAP, "annotations": STR_MAP}, SERVER_META),
        # storageClassName is accepted and ignored: every claim is a local named Podman volume
        "spec": Obj({"accessModes": ListOf(STR), "resources": Obj({"requests": Obj({"storage": QUANTITY})}),
                     "storageClassName": STR, "volumeMode": STR},
                    hints={"selector": "claims are local Podman volumes, never bound to existing ones",
                           "dataSource": "claims start empty (no cloning or snapshots)"}),
    })),
    "persistentVolumeClaimRetentionPolicy": Obj({"whenDeleted": STR, "whenScaled": STR}),
})
SERVICE_SPEC = Obj({
    "type": STR, "selector": STR_MAP,
    "ports": ListOf(Obj({"name": STR, "port": INT, "targetPort": INT_OR_STR, "protocol": STR,
                        "nodePort": INT})),
})
LIST = Obj({"apiVersion": STR, "kind": STR, "items": ListOf(ANY), "metadata": Obj({}, SERVER_META)})


def top_level(spec_schema: Obj) -> Obj:
    return Obj({"apiVersion": STR, "kind": STR, "metadata": METADATA, "spec": spec_schema,
                "status": EMPTY})


# ------------------------------------------------------------------------- value helpers


def get(obj: dict | None, key: str, default: Any = None) -> Any:
    """A field already type-checked by the walker; null and missing both mean the default."""
    value = obj.get(key) if obj else None
    return default if value is None else value


def required(obj: dict | None, key: str, path: str) -> Any:
    value = get(obj, key)
    if value is None or value == "" or value == []:
        raise InvalidManifest(join(path, key), "required")
    return value


def int_field(obj: dict | None, key: str, path: str, default: int, lo: int = 0, hi: int = INT32) -> int:
    value = get(obj, key, default)
    if not lo <= value <= hi:
        raise InvalidManifest(join(path, key), f"must be between {lo} and {hi}, found {value}")
    return value


def enum_field(obj: dict | None, key: str, path: str, allowed: tuple, default: str) -> str:
    value = get(obj, key, default)
    if value not in allowed:
        raise InvalidManifest(join(path, key), f"unsupported value {value!r} "
                              f"(BeeMesh supports: {', '.join(repr(a) for a in allowed)})")
    return value


def check_name(value: str, path: str, check) -> str:
    problem = check(value)
    if problem:
        raise InvalidManifest(path, f"invalid name {value!r}: {problem}")
    return value


def label_pairs(mapping: dict | None, path: str, values: bool = True) -> Pairs:
    """Validated label-style map -> sorted pairs. Annotation values are free text (values=False)."""
    for key, value in (mapping or {}).items():
        problem = k8s_names.qualified_name(key)
        if problem:
            raise InvalidManifest(path, f"invalid key {key!r}: {problem}")
        problem = k8s_names.label_value(value) if values else None
        if problem:
            raise InvalidManifest(path, f"invalid value {value!r} for {key!r}: {problem}")
    return tuple(sorted((mapping or {}).items()))


def port_number(value: int, path: str) -> int:
    if not 1 <= value <= 65535:
        raise InvalidManifest(path, f"must be a port number between 1 and 65535, found {value}")
    return value


def quantity_field(convert, value: Any, path: str) -> int | None:
    if value is None:
        return None
    try:
        return convert(value)
    except ValueError as e:
        raise InvalidManifest(path, str(e)) from None


_PROTOCOLS = ("TCP", "UDP")


def protocol_field(obj: dict, path: str) -> str:
    if get(obj, "protocol") == "SCTP":
        raise InvalidManifest(join(path, "protocol"), "SCTP is not supported (use TCP or UDP)")
    return enum_field(obj, "protocol", path, _PROTOCOLS, "TCP")


def check_plain(root: Any, budget: int) -> int:
    """Reject values JSON cannot hold (YAML timestamps, !!binary, non-string keys) so `manifest`
    always round-trips through storage, and stop inputs that expand past `budget` values.
    Returns the budget left."""
    stack = [(root, "", 0)]
    while stack:
        value, path, depth = stack.pop()
        budget -= 1
        if budget < 0:
            raise InvalidManifest("", f"input holds more than {MAX_VALUES} values "
                                  "(too large, or YAML aliases that expand)")
        if depth > MAX_DEPTH:
            raise InvalidManifest(path, f"nested more than {MAX_DEPTH} levels deep")
        if isinstance(value, dict):
            for key, sub in value.items():
                if not isinstance(key, str):
                    raise InvalidManifest(path, f"field names must be strings, found {describe(key)}")
                stack.append((sub, join(path, key), depth + 1))
        elif isinstance(value, list):
            stack.extend((sub, f"{path}[{i}]", depth + 1) for i, sub in enumerate(value))
        elif not (value is None or isinstance(value, (str, int, float))):
            raise InvalidManifest(path, f"a YAML {type(value).__name__} is not valid here "
                                  "(quote it to make it a string)")
    return budget
