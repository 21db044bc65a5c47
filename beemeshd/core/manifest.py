"""Kubernetes manifests -> BeeMesh workloads. Pure: text or dicts in, frozen models out.

BeeMesh runs a deliberately small subset of Kubernetes. Every object level has an explicit
allow-list (the schemas below) and a generic walker checks fields and types against it first,
so a field BeeMesh does not support is an error naming its full path, never silently dropped:
a manifest that is accepted does what it says. The builders after the walker then do the
semantic checks (names, ranges, cross-references) the way Kubernetes validation does.
"""

from __future__ import annotations

import ipaddress
import json
from typing import Any

import yaml

from beemeshd.core import k8s_names, quantity
from beemeshd.errors import InvalidManifest
from beemeshd.model import (Container, Pairs, PodTemplate, Port, Probe, Resources, ServicePort,
                            Volume, VolumeMount, Workload)

MAX_TEXT_BYTES = 1 << 20
MAX_OBJECTS = 100
MAX_REPLICAS = 1000
# Upper bound on the number of values in the input once YAML aliases are expanded: stops an
# "alias bomb" (a few lines that expand to billions of values) before anything walks it.
MAX_VALUES = 1 << 20
_INT32 = 2**31 - 1

# ---------------------------------------------------------------------------- schema walker


class _Obj:
    """A mapping with a fixed set of allowed fields."""

    def __init__(self, fields: dict, ignored: frozenset = frozenset(), hints: dict | None = None):
        self.fields, self.ignored, self.hints = fields, ignored, hints or {}


class _List:
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


def _describe(value: Any) -> str:
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


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _walk(value: Any, spec: Any, path: str) -> None:
    """Check `value` against `spec`. null counts as unset (as in Kubernetes) and always passes."""
    if value is None or spec == ANY:
        return
    if spec == EMPTY:  # top-level `status`: written by a cluster, meaningless as input
        if value != {}:
            raise InvalidManifest(path, "status is set by the system, not by users: remove it")
    elif isinstance(spec, _Obj):
        if not isinstance(value, dict):
            raise InvalidManifest(path, f"expected a mapping, found {_describe(value)}")
        for key, sub in value.items():
            if key in spec.ignored:
                continue
            if key not in spec.fields:
                hint = spec.hints.get(key)
                raise InvalidManifest(_join(path, key), "unsupported field"
                                      + (f": {hint}" if hint else "")
                                      + f" (BeeMesh supports: {', '.join(spec.fields)})")
            _walk(sub, spec.fields[key], _join(path, key))
    elif isinstance(spec, _List):
        if not isinstance(value, list):
            raise InvalidManifest(path, f"expected a list, found {_describe(value)}")
        for i, item in enumerate(value):
            if item is None:
                raise InvalidManifest(f"{path}[{i}]", "expected a value, found null")
            _walk(item, spec.item, f"{path}[{i}]")
    elif spec == STR_MAP:
        if not isinstance(value, dict):
            raise InvalidManifest(path, f"expected a mapping of strings, found {_describe(value)}")
        for key, sub in value.items():
            if not isinstance(sub, str):
                raise InvalidManifest(path, f"value of {key!r} must be a string, found {_describe(sub)}"
                                      " (quote numbers and booleans)")
    elif not _SCALAR_OK[spec](value):
        raise InvalidManifest(path, f"expected {spec}, found {_describe(value)}")


# ------------------------------------------------------------------------------- schemas

# kubectl prints these server-set fields in `get -o yaml`; accepting and ignoring them lets
# such output be re-applied. They carry no intent, so ignoring them changes nothing.
_SERVER_META = frozenset({"uid", "resourceVersion", "creationTimestamp", "generation", "managedFields"})
_NO_GENERATE = {"generateName": "BeeMesh needs a fixed metadata.name"}
METADATA = _Obj({"name": STR, "namespace": STR, "labels": STR_MAP, "annotations": STR_MAP},
                _SERVER_META, _NO_GENERATE)
TEMPLATE_METADATA = _Obj({"labels": STR_MAP, "annotations": STR_MAP}, _SERVER_META)
_PORT_REF = _Obj({"port": INT_OR_STR}, hints={"host": "probes always target the pod itself"})
PROBE = _Obj({
    "exec": _Obj({"command": _List(STR)}),
    "httpGet": _Obj({"path": STR, "port": INT_OR_STR, "scheme": STR},
                    hints={"host": "probes always target the pod itself"}),
    "tcpSocket": _PORT_REF,
    "initialDelaySeconds": INT, "periodSeconds": INT, "timeoutSeconds": INT,
    "successThreshold": INT, "failureThreshold": INT,
})
_CPU_MEM = _Obj({"cpu": QUANTITY, "memory": QUANTITY})
CONTAINER = _Obj({
    "name": STR, "image": STR, "command": _List(STR), "args": _List(STR),
    "env": _List(_Obj({"name": STR, "value": STR},
                      hints={"valueFrom": "BeeMesh has no Secrets or ConfigMaps yet; use value"})),
    "ports": _List(_Obj({"name": STR, "containerPort": INT, "hostPort": INT, "protocol": STR,
                         "hostIP": STR})),
    "resources": _Obj({"requests": _CPU_MEM, "limits": _CPU_MEM}),
    "readinessProbe": PROBE, "livenessProbe": PROBE,
    "volumeMounts": _List(_Obj({"name": STR, "mountPath": STR, "readOnly": BOOL})),
    "workingDir": STR, "imagePullPolicy": STR,
})
POD_SPEC = _Obj({
    "containers": _List(CONTAINER), "restartPolicy": STR,
    "volumes": _List(_Obj({"name": STR, "emptyDir": _Obj({"medium": STR, "sizeLimit": QUANTITY})},
                          hints={k: "BeeMesh supports emptyDir volumes only"
                                 for k in ("hostPath", "persistentVolumeClaim", "configMap",
                                           "secret", "projected", "nfs")})),
    "nodeSelector": STR_MAP, "terminationGracePeriodSeconds": INT,
})
TEMPLATE = _Obj({"metadata": TEMPLATE_METADATA, "spec": POD_SPEC})
SELECTOR = _Obj({"matchLabels": STR_MAP}, hints={"matchExpressions": "use matchLabels"})
DEPLOYMENT_SPEC = _Obj({
    "replicas": INT, "selector": SELECTOR, "template": TEMPLATE,
    "strategy": _Obj({"type": STR, "rollingUpdate": _Obj({"maxSurge": INT_OR_STR,
                                                         "maxUnavailable": INT_OR_STR})}),
    "minReadySeconds": INT, "revisionHistoryLimit": INT, "progressDeadlineSeconds": INT,
})
STATEFULSET_SPEC = _Obj({
    "replicas": INT, "selector": SELECTOR, "template": TEMPLATE, "serviceName": STR,
    "podManagementPolicy": STR,
    "updateStrategy": _Obj({"type": STR, "rollingUpdate": _Obj({"partition": INT})}),
}, hints={"volumeClaimTemplates": "BeeMesh has no persistent volumes yet"})
SERVICE_SPEC = _Obj({
    "type": STR, "selector": STR_MAP,
    "ports": _List(_Obj({"name": STR, "port": INT, "targetPort": INT_OR_STR, "protocol": STR,
                         "nodePort": INT})),
})
LIST = _Obj({"apiVersion": STR, "kind": STR, "items": _List(ANY), "metadata": _Obj({}, _SERVER_META)})


def _top(spec_schema: _Obj) -> _Obj:
    return _Obj({"apiVersion": STR, "kind": STR, "metadata": METADATA, "spec": spec_schema,
                 "status": EMPTY})


# ------------------------------------------------------------------------- value helpers


def _get(obj: dict | None, key: str, default: Any = None) -> Any:
    """A field already type-checked by the walker; null and missing both mean the default."""
    value = obj.get(key) if obj else None
    return default if value is None else value


def _required(obj: dict | None, key: str, path: str) -> Any:
    value = _get(obj, key)
    if value is None or value == "" or value == []:
        raise InvalidManifest(_join(path, key), "required")
    return value


def _int(obj: dict | None, key: str, path: str, default: int, lo: int = 0, hi: int = _INT32) -> int:
    value = _get(obj, key, default)
    if not lo <= value <= hi:
        raise InvalidManifest(_join(path, key), f"must be between {lo} and {hi}, found {value}")
    return value


def _enum(obj: dict | None, key: str, path: str, allowed: tuple, default: str) -> str:
    value = _get(obj, key, default)
    if value not in allowed:
        raise InvalidManifest(_join(path, key), f"unsupported value {value!r} "
                              f"(BeeMesh supports: {', '.join(repr(a) for a in allowed)})")
    return value


def _name(value: str, path: str, check) -> str:
    problem = check(value)
    if problem:
        raise InvalidManifest(path, f"invalid name {value!r}: {problem}")
    return value


def _labels(mapping: dict | None, path: str, values: bool = True) -> Pairs:
    """Validated label-style map -> sorted pairs. Annotation values are free text (values=False)."""
    for key, value in (mapping or {}).items():
        problem = k8s_names.qualified_name(key)
        if problem:
            raise InvalidManifest(path, f"invalid key {key!r}: {problem}")
        problem = k8s_names.label_value(value) if values else None
        if problem:
            raise InvalidManifest(path, f"invalid value {value!r} for {key!r}: {problem}")
    return tuple(sorted((mapping or {}).items()))


def _port_number(value: int, path: str) -> int:
    if not 1 <= value <= 65535:
        raise InvalidManifest(path, f"must be a port number between 1 and 65535, found {value}")
    return value


def _quantity(convert, value: Any, path: str) -> int | None:
    if value is None:
        return None
    try:
        return convert(value)
    except ValueError as e:
        raise InvalidManifest(path, str(e)) from None


_PROTOCOLS = ("TCP", "UDP")


def _protocol(obj: dict, path: str) -> str:
    if _get(obj, "protocol") == "SCTP":
        raise InvalidManifest(_join(path, "protocol"), "SCTP is not supported (use TCP or UDP)")
    return _enum(obj, "protocol", path, _PROTOCOLS, "TCP")


# ---------------------------------------------------------------------------- containers


def _container_port(p: dict, path: str) -> Port:
    name = _get(p, "name")
    if name is not None:
        _name(name, _join(path, "name"), k8s_names.iana_svc_name)
    host_port = _get(p, "hostPort")
    host_ip = _get(p, "hostIP")
    if host_ip is not None:
        try:
            ipaddress.ip_address(host_ip)
        except ValueError:
            raise InvalidManifest(_join(path, "hostIP"), f"expected an IP address, found {host_ip!r}") from None
    return Port(container_port=_port_number(_required(p, "containerPort", path), _join(path, "containerPort")),
                host_port=None if host_port is None else _port_number(host_port, _join(path, "hostPort")),
                protocol=_protocol(p, path), name=name, host_ip=host_ip)


def _probe(p: dict | None, path: str, named_ports: dict, liveness: bool) -> Probe | None:
    if p is None:
        return None
    handlers = [k for k in ("exec", "httpGet", "tcpSocket") if p.get(k) is not None]
    if not handlers:
        raise InvalidManifest(path, "must specify one handler: exec, httpGet or tcpSocket")
    if len(handlers) > 1:
        raise InvalidManifest(_join(path, handlers[1]), "may not specify more than one handler")
    kind = handlers[0]
    handler, hpath = p[kind], _join(path, kind)
    port = None
    if kind == "exec":
        _required(handler, "command", hpath)
    else:
        port = _get(handler, "port")
        ppath = _join(hpath, "port")
        if port is None:
            raise InvalidManifest(ppath, "required")
        if isinstance(port, str):  # a named container port: resolve it now
            _name(port, ppath, k8s_names.iana_svc_name)
            if port not in named_ports:
                declared = ", ".join(sorted(named_ports)) or "none"
                raise InvalidManifest(ppath, f"no port named {port!r} in this container (declared: {declared})")
            port = named_ports[port]
        _port_number(port, ppath)

    def timing(key: str, default: int, lo: int) -> int:
        # As in Kubernetes, 0 means "use the default" for the counters that must be positive.
        value = _int(p, key, path, default, lo=0)
        return value if value >= lo else default

    success = timing("successThreshold", 1, 1)
    if liveness and success != 1:
        raise InvalidManifest(_join(path, "successThreshold"), f"must be 1 for a liveness probe, found {success}")
    return Probe(kind=kind, command=tuple(_get(handler, "command", ())), path=_get(handler, "path", "/"),
                 port=port, scheme=_enum(handler, "scheme", hpath, ("HTTP",), "HTTP"),
                 initial_delay_seconds=timing("initialDelaySeconds", 0, 0),
                 period_seconds=timing("periodSeconds", 10, 1), timeout_seconds=timing("timeoutSeconds", 1, 1),
                 success_threshold=success, failure_threshold=timing("failureThreshold", 3, 1))


def _resources(r: dict | None, path: str) -> Resources:
    req, lim = _get(r, "requests", {}), _get(r, "limits", {})
    rpath, lpath = _join(path, "requests"), _join(path, "limits")
    cpu_lim = _quantity(quantity.cpu_millis, _get(lim, "cpu"), _join(lpath, "cpu"))
    mem_lim = _quantity(quantity.memory_bytes, _get(lim, "memory"), _join(lpath, "memory"))
    # Kubernetes defaults a missing request to its limit; scheduling must see the same number.
    cpu_req = _quantity(quantity.cpu_millis, _get(req, "cpu"), _join(rpath, "cpu"))
    mem_req = _quantity(quantity.memory_bytes, _get(req, "memory"), _join(rpath, "memory"))
    cpu_req = cpu_lim if cpu_req is None else cpu_req
    mem_req = mem_lim if mem_req is None else mem_req
    for res, want, cap in (("cpu", cpu_req, cpu_lim), ("memory", mem_req, mem_lim)):
        if cap is not None and want > cap:
            raise InvalidManifest(_join(rpath, res), f"must be less than or equal to the {res} limit "
                                  f"({_get(req, res)!r} > {_get(lim, res)!r})")
    return Resources(cpu_request_millis=cpu_req, memory_request_bytes=mem_req,
                     cpu_limit_millis=cpu_lim, memory_limit_bytes=mem_lim)


def _default_pull_policy(image: str) -> str:
    # Kubernetes: Always for ":latest" or an untagged image, else IfNotPresent.
    if "@" in image:
        return "IfNotPresent"
    last = image.rsplit("/", 1)[-1]
    return "IfNotPresent" if ":" in last and not last.endswith(":latest") else "Always"


def _container(c: dict, path: str, volume_names: set) -> Container:
    name = _name(_required(c, "name", path), _join(path, "name"), k8s_names.dns1123_label)
    image = _required(c, "image", path)
    if image != "".join(image.split()):
        raise InvalidManifest(_join(path, "image"), f"must not contain whitespace, found {image!r}")
    env = []
    for i, e in enumerate(_get(c, "env", [])):
        epath = f"{path}.env[{i}]"
        env_name = _required(e, "name", epath)
        problem = k8s_names.env_var_name(env_name)
        if problem:
            raise InvalidManifest(_join(epath, "name"), f"invalid variable name {env_name!r}: {problem}")
        env.append((env_name, _get(e, "value", "")))
    ports = tuple(_container_port(p, f"{path}.ports[{i}]") for i, p in enumerate(_get(c, "ports", [])))
    named: dict[str, int] = {}
    for i, port in enumerate(ports):
        if port.name in named:
            raise InvalidManifest(f"{path}.ports[{i}].name", f"duplicate port name {port.name!r}")
        if port.name:
            named[port.name] = port.container_port
    mounts, seen_paths = [], set()
    for i, m in enumerate(_get(c, "volumeMounts", [])):
        mpath = f"{path}.volumeMounts[{i}]"
        vol, target = _required(m, "name", mpath), _required(m, "mountPath", mpath)
        if vol not in volume_names:
            declared = ", ".join(sorted(volume_names)) or "none"
            raise InvalidManifest(_join(mpath, "name"), f"no volume named {vol!r} in the pod's volumes (declared: {declared})")
        if not target.startswith("/"):
            raise InvalidManifest(_join(mpath, "mountPath"), f"must be an absolute path, found {target!r}")
        if target in seen_paths:
            raise InvalidManifest(_join(mpath, "mountPath"), f"duplicate mount path {target!r}")
        seen_paths.add(target)
        mounts.append(VolumeMount(name=vol, mount_path=target, read_only=_get(m, "readOnly", False)))
    return Container(
        name=name, image=image, command=tuple(_get(c, "command", ())), args=tuple(_get(c, "args", ())),
        env=tuple(env), ports=ports, resources=_resources(_get(c, "resources"), _join(path, "resources")),
        readiness_probe=_probe(_get(c, "readinessProbe"), _join(path, "readinessProbe"), named, False),
        liveness_probe=_probe(_get(c, "livenessProbe"), _join(path, "livenessProbe"), named, True),
        volume_mounts=tuple(mounts), working_dir=_get(c, "workingDir") or None,
        image_pull_policy=_enum(c, "imagePullPolicy", path, ("Always", "IfNotPresent", "Never"),
                                _default_pull_policy(image)))


def _volume(v: dict, path: str) -> Volume:
    name = _name(_required(v, "name", path), _join(path, "name"), k8s_names.dns1123_label)
    empty_dir = _get(v, "emptyDir")
    if empty_dir is None:
        raise InvalidManifest(_join(path, "emptyDir"), "required: BeeMesh supports emptyDir volumes only")
    dpath = _join(path, "emptyDir")
    return Volume(name=name, kind="emptyDir", medium=_enum(empty_dir, "medium", dpath, ("", "Memory"), ""),
                  size_limit_bytes=_quantity(quantity.memory_bytes, _get(empty_dir, "sizeLimit"),
                                             _join(dpath, "sizeLimit")))


def _pod_template(spec: dict | None, path: str, labels: Pairs, annotations: Pairs) -> PodTemplate:
    volumes: list[Volume] = []
    for i, v in enumerate(_get(spec, "volumes", [])):
        volume = _volume(v, f"{path}.volumes[{i}]")
        if any(volume.name == other.name for other in volumes):
            raise InvalidManifest(f"{path}.volumes[{i}].name", f"duplicate volume name {volume.name!r}")
        volumes.append(volume)
    volume_names = {v.name for v in volumes}
    containers: list[Container] = []
    host_ports: dict[tuple[int, str], str] = {}
    for i, c in enumerate(_required(spec, "containers", path)):
        cpath = f"{path}.containers[{i}]"
        container = _container(c, cpath, volume_names)
        if any(container.name == other.name for other in containers):
            raise InvalidManifest(_join(cpath, "name"), f"duplicate container name {container.name!r}")
        for j, port in enumerate(container.ports):
            if port.host_port is None:
                continue
            key = (port.host_port, port.protocol)
            if key in host_ports:
                raise InvalidManifest(f"{cpath}.ports[{j}].hostPort", f"duplicate hostPort "
                                      f"{port.host_port}/{port.protocol} (also used by container {host_ports[key]!r})")
            host_ports[key] = container.name
        containers.append(container)
    return PodTemplate(
        labels=labels, annotations=annotations, containers=tuple(containers),
        restart_policy=_enum(spec, "restartPolicy", path, ("Always", "OnFailure", "Never"), "Always"),
        volumes=tuple(volumes), node_selector=_labels(_get(spec, "nodeSelector"), _join(path, "nodeSelector")),
        termination_grace_period_seconds=_int(spec, "terminationGracePeriodSeconds", path, 30))


# ----------------------------------------------------------------------------- workloads


def _selector(spec: dict, template_labels: Pairs) -> Pairs:
    match = _get(_required(spec, "selector", "spec"), "matchLabels")
    if not match:
        raise InvalidManifest("spec.selector.matchLabels", "required: an empty selector would match every pod")
    selector = _labels(match, "spec.selector.matchLabels")
    if not set(selector) <= set(template_labels):  # the Kubernetes rule, with its message
        raise InvalidManifest("spec.template.metadata.labels", "`selector` does not match template `labels`")
    return selector


def _rolling_update(obj: dict, path: str, types: tuple) -> dict | None:
    """The `type` + `rollingUpdate` pair shared by Deployment.strategy and StatefulSet.updateStrategy."""
    kind = _enum(obj, "type", path, types, "RollingUpdate")
    rolling = _get(obj, "rollingUpdate")
    if rolling is not None and kind != "RollingUpdate":
        raise InvalidManifest(_join(path, "rollingUpdate"), f"may not be set when type is {kind!r}")
    return rolling


def _int_or_percent(obj: dict, key: str, path: str, default: str) -> str | int:
    value, fpath = _get(obj, key, default), _join(path, key)
    if isinstance(value, int):
        _int(obj, key, path, default=0)
    elif not (value.endswith("%") and value[:-1].isascii() and value[:-1].isdigit()):
        raise InvalidManifest(fpath, f"expected an integer or a percentage such as '25%', found {value!r}")
    return value


def _deployment_extras(spec: dict) -> None:
    rolling = _rolling_update(_get(spec, "strategy"), "spec.strategy", ("RollingUpdate", "Recreate"))
    if rolling is not None:
        path = "spec.strategy.rollingUpdate"
        surge = _int_or_percent(rolling, "maxSurge", path, "25%")
        unavailable = _int_or_percent(rolling, "maxUnavailable", path, "25%")
        if isinstance(unavailable, str) and int(unavailable[:-1]) > 100:
            raise InvalidManifest(_join(path, "maxUnavailable"), f"must not be greater than 100%, found {unavailable!r}")
        if surge in (0, "0%") and unavailable in (0, "0%"):
            raise InvalidManifest(_join(path, "maxUnavailable"), "may not be 0 when maxSurge is 0")
    min_ready = _int(spec, "minReadySeconds", "spec", 0)
    _int(spec, "revisionHistoryLimit", "spec", 10)
    deadline = _get(spec, "progressDeadlineSeconds")
    if deadline is not None and _int(spec, "progressDeadlineSeconds", "spec", 600) <= min_ready:
        raise InvalidManifest("spec.progressDeadlineSeconds", f"must be greater than minReadySeconds ({min_ready})")


def _statefulset_extras(spec: dict) -> str:
    service = _get(spec, "serviceName")
    if service:
        _name(service, "spec.serviceName", k8s_names.dns1035_label)
    rolling = _rolling_update(_get(spec, "updateStrategy"), "spec.updateStrategy", ("RollingUpdate", "OnDelete"))
    if rolling is not None:
        _int(rolling, "partition", "spec.updateStrategy.rollingUpdate", 0)
    return _enum(spec, "podManagementPolicy", "spec", ("OrderedReady", "Parallel"), "OrderedReady")


def _service_ports(spec: dict, service_type: str) -> tuple[ServicePort, ...]:
    raw = _required(spec, "ports", "spec")
    ports: list[ServicePort] = []
    for i, p in enumerate(raw):
        path = f"spec.ports[{i}]"
        name = _get(p, "name")
        if name is None and len(raw) > 1:
            raise InvalidManifest(_join(path, "name"), "required when the service has more than one port")
        if name is not None:
            _name(name, _join(path, "name"), k8s_names.dns1123_label)
        number = _port_number(_required(p, "port", path), _join(path, "port"))
        target = _get(p, "targetPort", number)
        if isinstance(target, str):
            _name(target, _join(path, "targetPort"), k8s_names.iana_svc_name)
        else:
            _port_number(target, _join(path, "targetPort"))
        node_port = _get(p, "nodePort")
        if node_port is not None:
            if service_type != "NodePort":
                raise InvalidManifest(_join(path, "nodePort"), f"may only be set when spec.type is 'NodePort', found {service_type!r}")
            _port_number(node_port, _join(path, "nodePort"))
        port = ServicePort(name=name, port=number, target_port=target, protocol=_protocol(p, path), node_port=node_port)
        for other in ports:
            if name is not None and other.name == name:
                raise InvalidManifest(_join(path, "name"), f"duplicate port name {name!r}")
            if (other.port, other.protocol) == (number, port.protocol):
                raise InvalidManifest(_join(path, "port"), f"duplicate port {number}/{port.protocol}")
            if node_port is not None and (other.node_port, other.protocol) == (node_port, port.protocol):
                raise InvalidManifest(_join(path, "nodePort"), f"duplicate nodePort {node_port}/{port.protocol}")
        ports.append(port)
    return tuple(ports)


# Deployment and StatefulSet pods are named `<name>-<N>` and that name is used as a Podman pod
# name and the pod's hostname, which must be a DNS-1123 label. So the workload name must be a
# label too (no dots), short enough to take the longest suffix, "-999" at MAX_REPLICAS.
_MAX_SET_NAME = 63 - len(f"-{MAX_REPLICAS - 1}")


def _set_name(name: str) -> str | None:
    problem = k8s_names.dns1123_label(name)
    if problem is None and len(name) > _MAX_SET_NAME:
        problem = (f"must be no more than {_MAX_SET_NAME} characters (found {len(name)}), "
                   f"so that pod names like '{name[:8]}...-{MAX_REPLICAS - 1}' stay DNS labels")
    return problem


_KINDS = {  # kind -> (apiVersion, spec schema, name check)
    "Pod": ("v1", POD_SPEC, k8s_names.dns1123_subdomain),
    "Deployment": ("apps/v1", DEPLOYMENT_SPEC, _set_name),
    "StatefulSet": ("apps/v1", STATEFULSET_SPEC, _set_name),
    "Service": ("v1", SERVICE_SPEC, k8s_names.dns1035_label),
}


def _build(obj: Any) -> Workload:
    if not isinstance(obj, dict):
        raise InvalidManifest("", f"expected a Kubernetes object (a mapping with apiVersion and kind), found {_describe(obj)}")
    kind = obj.get("kind")
    if not isinstance(kind, str) or kind not in _KINDS:
        found = "nothing" if kind is None else _describe(kind)
        raise InvalidManifest("kind", f"expected one of {', '.join(_KINDS)}, found {found}")
    api_version, spec_schema, name_check = _KINDS[kind]
    if obj.get("apiVersion") != api_version:
        raise InvalidManifest("apiVersion", f"{kind} needs apiVersion {api_version!r}, found {_describe(obj.get('apiVersion'))}")
    _walk(obj, _top(spec_schema), "")

    meta, spec = _get(obj, "metadata", {}), _get(obj, "spec", {})
    name = _name(_required(meta, "name", "metadata"), "metadata.name", name_check)
    namespace = _name(_get(meta, "namespace") or "default", "metadata.namespace", k8s_names.dns1123_label)
    labels = _labels(_get(meta, "labels"), "metadata.labels")
    annotations = _labels(_get(meta, "annotations"), "metadata.annotations", values=False)
    common = dict(kind=kind, api_version=api_version, name=name, namespace=namespace, labels=labels,
                  annotations=annotations, manifest=obj)
    if kind == "Pod":
        return Workload(**common, replicas=1, template=_pod_template(spec, "spec", labels, annotations))
    if kind == "Service":
        service_type = _enum(spec, "type", "spec", ("ClusterIP", "NodePort"), "ClusterIP")
        return Workload(**common, replicas=0, selector=_labels(_get(spec, "selector"), "spec.selector"),
                        service_ports=_service_ports(spec, service_type), service_type=service_type)

    template = _required(spec, "template", "spec")
    tmeta = _get(template, "metadata", {})
    tlabels = _labels(_get(tmeta, "labels"), "spec.template.metadata.labels")
    tannotations = _labels(_get(tmeta, "annotations"), "spec.template.metadata.annotations", values=False)
    pod = _pod_template(_get(template, "spec"), "spec.template.spec", tlabels, tannotations)
    if pod.restart_policy != "Always":  # Kubernetes rule: a controller restarts its pods itself
        raise InvalidManifest("spec.template.spec.restartPolicy",
                              f"must be 'Always' for a {kind}, found {pod.restart_policy!r}")
    selector = _selector(spec, tlabels)
    policy = _statefulset_extras(spec) if kind == "StatefulSet" else ""
    if kind == "Deployment":
        _deployment_extras(spec)
    return Workload(**common, replicas=_int(spec, "replicas", "spec", 1, hi=MAX_REPLICAS), template=pod,
                    selector=selector, pod_management_policy=policy)


# --------------------------------------------------------------------------- entry points


def _check_plain(root: Any, budget: int) -> int:
    """Reject values JSON cannot hold (YAML timestamps, !!binary, non-string keys) so `manifest`
    always round-trips through storage, and stop inputs that expand past `budget` values.
    Returns the budget left."""
    stack = [(root, "")]
    while stack:
        value, path = stack.pop()
        budget -= 1
        if budget < 0:
            raise InvalidManifest("", f"input holds more than {MAX_VALUES} values (too large, or YAML aliases that expand)")
        if isinstance(value, dict):
            for key, sub in value.items():
                if not isinstance(key, str):
                    raise InvalidManifest(path, f"field names must be strings, found {_describe(key)}")
                stack.append((sub, _join(path, key)))
        elif isinstance(value, list):
            stack.extend((sub, f"{path}[{i}]") for i, sub in enumerate(value))
        elif not (value is None or isinstance(value, (str, int, float))):
            raise InvalidManifest(path, f"a YAML {type(value).__name__} is not valid here (quote it to make it a string)")
    return budget


def parse_manifest(obj: dict, document: int | None = None) -> Workload:
    """Validate one Kubernetes object and build its Workload; errors carry `document`."""
    try:
        if isinstance(obj, (dict, list)):
            _check_plain(obj, MAX_VALUES)
        return _build(obj)
    except InvalidManifest as e:
        if document is None or e.document is not None:
            raise
        raise InvalidManifest(e.field, e.reason, document) from None


def _load_text(text: str) -> list:
    if len(text) > MAX_TEXT_BYTES or len(text.encode("utf-8", "surrogatepass")) > MAX_TEXT_BYTES:
        raise InvalidManifest("", f"input is larger than {MAX_TEXT_BYTES} bytes")
    try:
        if text.lstrip().startswith("{"):
            try:  # JSON is YAML, except PyYAML rejects the tab indentation JSON often has
                return [json.loads(text)]
            except json.JSONDecodeError:
                pass  # maybe YAML flow style; let the YAML parser report the error if not
        return [doc for doc in yaml.safe_load_all(text) if doc is not None]  # skip empty documents
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise InvalidManifest("", f"invalid YAML{where}: {e.problem or e.context}") from None
    except yaml.YAMLError as e:
        raise InvalidManifest("", f"invalid YAML: {e}") from None
    except RecursionError:
        raise InvalidManifest("", "input is nested too deeply") from None


def _expand_lists(docs: list) -> list:
    """Replace each `kind: List` by its items, as kubectl does."""
    objects: list = []
    for doc in docs:
        if isinstance(doc, dict) and doc.get("kind") == "List":
            try:
                _walk(doc, LIST, "")
                if doc.get("apiVersion", "v1") != "v1":
                    raise InvalidManifest("apiVersion", f"List needs apiVersion 'v1', found {_describe(doc['apiVersion'])}")
            except InvalidManifest as e:
                raise InvalidManifest(e.field, e.reason, len(objects) if len(docs) > 1 else None) from None
            objects.extend(_get(doc, "items", []))
        else:
            objects.append(doc)
        if len(objects) > MAX_OBJECTS:
            raise InvalidManifest("", f"input holds more than {MAX_OBJECTS} objects")
    return objects


def parse_manifests(source: str | dict | list) -> list[Workload]:
    """Parse YAML/JSON text (several `---` documents allowed), one object, or a list of them.

    `document` in errors is the 0-based position of the object among all objects found (empty
    documents skipped, List items counted individually); None when there is only one.
    """
    if isinstance(source, str):
        docs = _load_text(source)
    elif isinstance(source, dict):
        docs = [source]
    elif isinstance(source, list):
        docs = list(source)
    else:
        raise InvalidManifest("", f"expected text, a mapping or a list, found {type(source).__name__}")
    budget = MAX_VALUES
    for i, doc in enumerate(docs):
        try:
            budget = _check_plain(doc, budget)
        except InvalidManifest as e:
            raise InvalidManifest(e.field, e.reason, i if len(docs) > 1 else None) from None
    objects = _expand_lists(docs)
    if not objects:
        raise InvalidManifest("", "no Kubernetes object in input")
    if isinstance(source, dict):  # keep the caller's dict out of our frozen result
        objects = [json.loads(json.dumps(source))]
    single = len(objects) == 1
    workloads: list[Workload] = []
    seen: dict[tuple, int] = {}
    for i, obj in enumerate(objects):
        workload = parse_manifest(obj, None if single else i)
        if workload.key in seen:
            raise InvalidManifest("metadata.name", f"{workload.kind} {workload.namespace}/{workload.name} "
                                  f"appears twice (first as document {seen[workload.key]})", i)
        seen[workload.key] = i
        workloads.append(workload)
    return workloads
