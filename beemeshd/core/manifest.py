"""Kubernetes manifests -> BeeMesh workloads. Pure: text or dicts in, frozen models out.

BeeMesh runs a deliberately small subset of Kubernetes. `manifest_schema` holds the allow-list
of fields per object level and checks every object against it first, so anything unsupported
is an error naming its path instead of being silently dropped. This module then does the
semantic checks (names, ranges, cross-references) the way Kubernetes validation does them, and
builds the frozen `beemeshd.model` objects.
"""

from __future__ import annotations

import copy
import ipaddress
import json
from typing import Any

import yaml

from beemeshd.core import k8s_names, quantity
from beemeshd.core.manifest_schema import (
    DEPLOYMENT_SPEC, LIST, MAX_VALUES, POD_SPEC, SERVICE_SPEC, STATEFULSET_SPEC, check_name,
    check_plain, describe, enum_field, get, int_field, join, label_pairs, port_number,
    protocol_field, quantity_field, required, top_level, walk)
from beemeshd.errors import InvalidManifest
from beemeshd.model import (Container, Pairs, PodTemplate, Port, Probe, Resources, ServicePort,
                            Volume, VolumeClaim, VolumeMount, Workload)

MAX_TEXT_BYTES = 1 << 20
MAX_OBJECTS = 100
MAX_REPLICAS = 1000

# ---------------------------------------------------------------------------- containers


def _container_port(p: dict, path: str) -> Port:
    name = get(p, "name")
    if name is not None:
        check_name(name, join(path, "name"), k8s_names.iana_svc_name)
    host_port = get(p, "hostPort")
    host_ip = get(p, "hostIP")
    if host_ip is not None:
        try:
            ipaddress.ip_address(host_ip)
        except ValueError:
            raise InvalidManifest(join(path, "hostIP"),
                                  f"expected an IP address, found {host_ip!r}") from None
    return Port(container_port=port_number(required(p, "containerPort", path), join(path, "containerPort")),
                host_port=None if host_port is None else port_number(host_port, join(path, "hostPort")),
                protocol=protocol_field(p, path), name=name, host_ip=host_ip)


def _probe(p: dict | None, path: str, named_ports: dict, liveness: bool) -> Probe | None:
    if p is None:
        return None
    handlers = [k for k in ("exec", "httpGet", "tcpSocket") if p.get(k) is not None]
    if not handlers:
        raise InvalidManifest(path, "must specify one handler: exec, httpGet or tcpSocket")
    if len(handlers) > 1:
        raise InvalidManifest(join(path, handlers[1]), "may not specify more than one handler")
    kind = handlers[0]
    handler, hpath = p[kind], join(path, kind)
    port = None
    if kind == "exec":
        required(handler, "command", hpath)
    else:
        port = get(handler, "port")
        ppath = join(hpath, "port")
        if port is None:
            raise InvalidManifest(ppath, "required")
        if isinstance(port, str):  # a named container port: resolve it now
            check_name(port, ppath, k8s_names.iana_svc_name)
            if port not in named_ports:
                declared = ", ".join(sorted(named_ports)) or "none"
                raise InvalidManifest(ppath, f"no port named {port!r} in this container "
                                      f"(declared: {declared})")
            port = named_ports[port]
        port_number(port, ppath)

    def timing(key: str, default: int, lo: int) -> int:
        # As in Kubernetes, 0 means "use the default" for the counters that must be positive.
        value = int_field(p, key, path, default, lo=0)
        return value if value >= lo else default

    success = timing("successThreshold", 1, 1)
    if liveness and success != 1:
        raise InvalidManifest(join(path, "successThreshold"),
                              f"must be 1 for a liveness probe, found {success}")
    return Probe(kind=kind, command=tuple(get(handler, "command", ())), path=get(handler, "path", "/"),
                 port=port, scheme=enum_field(handler, "scheme", hpath, ("HTTP",), "HTTP"),
                 initial_delay_seconds=timing("initialDelaySeconds", 0, 0),
                 period_seconds=timing("periodSeconds", 10, 1),
                 timeout_seconds=timing("timeoutSeconds", 1, 1),
                 success_threshold=success, failure_threshold=timing("failureThreshold", 3, 1))


def _resources(r: dict | None, path: str) -> Resources:
    req, lim = get(r, "requests", {}), get(r, "limits", {})
    rpath, lpath = join(path, "requests"), join(path, "limits")
    cpu_lim = quantity_field(quantity.cpu_millis, get(lim, "cpu"), join(lpath, "cpu"))
    mem_lim = quantity_field(quantity.memory_bytes, get(lim, "memory"), join(lpath, "memory"))
    # Kubernetes defaults a missing request to its limit; scheduling must see the same number.
    cpu_req = quantity_field(quantity.cpu_millis, get(req, "cpu"), join(rpath, "cpu"))
    mem_req = quantity_field(quantity.memory_bytes, get(req, "memory"), join(rpath, "memory"))
    cpu_req = cpu_lim if cpu_req is None else cpu_req
    mem_req = mem_lim if mem_req is None else mem_req
    for res, want, cap in (("cpu", cpu_req, cpu_lim), ("memory", mem_req, mem_lim)):
        if cap is not None and want > cap:
            raise InvalidManifest(join(rpath, res), f"must be less than or equal to the {res} limit "
                                  f"({get(req, res)!r} > {get(lim, res)!r})")
    return Resources(cpu_request_millis=cpu_req, memory_request_bytes=mem_req,
                     cpu_limit_millis=cpu_lim, memory_limit_bytes=mem_lim)


def _default_pull_policy(image: str) -> str:
    # Kubernetes: Always for ":latest" or an untagged image, else IfNotPresent.
    if "@" in image:
        return "IfNotPresent"
    last = image.rsplit("/", 1)[-1]
    return "IfNotPresent" if ":" in last and not last.endswith(":latest") else "Always"


def _container(c: dict, path: str, volume_names: set | dict) -> Container:
    name = check_name(required(c, "name", path), join(path, "name"), k8s_names.dns1123_label)
    image = required(c, "image", path)
    if image != "".join(image.split()):
        raise InvalidManifest(join(path, "image"), f"must not contain whitespace, found {image!r}")
    env = []
    for i, e in enumerate(get(c, "env", [])):
        epath = f"{path}.env[{i}]"
        env_name = required(e, "name", epath)
        problem = k8s_names.env_var_name(env_name)
        if problem:
            raise InvalidManifest(join(epath, "name"), f"invalid variable name {env_name!r}: {problem}")
        env.append((env_name, get(e, "value", "")))
    ports = tuple(_container_port(p, f"{path}.ports[{i}]") for i, p in enumerate(get(c, "ports", [])))
    named: dict[str, int] = {}
    for i, port in enumerate(ports):
        if port.name in named:
            raise InvalidManifest(f"{path}.ports[{i}].name", f"duplicate port name {port.name!r}")
        if port.name:
            named[port.name] = port.container_port
    mounts, seen_paths = [], set()
    for i, m in enumerate(get(c, "volumeMounts", [])):
        mpath = f"{path}.volumeMounts[{i}]"
        vol, target = required(m, "name", mpath), required(m, "mountPath", mpath)
        if vol not in volume_names:
            declared = ", ".join(sorted(volume_names)) or "none"
            raise InvalidManifest(join(mpath, "name"),
                                  f"no volume named {vol!r} in the pod's volumes (declared: {declared})")
        if not target.startswith("/"):
            raise InvalidManifest(join(mpath, "mountPath"), f"must be an absolute path, found {target!r}")
        if target in seen_paths:
            raise InvalidManifest(join(mpath, "mountPath"), f"duplicate mount path {target!r}")
        seen_paths.add(target)
        mounts.append(VolumeMount(name=vol, mount_path=target, read_only=get(m, "readOnly", False)))
    return Container(
        name=name, image=image, command=tuple(get(c, "command", ())), args=tuple(get(c, "args", ())),
        env=tuple(env), ports=ports, resources=_resources(get(c, "resources"), join(path, "resources")),
        readiness_probe=_probe(get(c, "readinessProbe"), join(path, "readinessProbe"), named, False),
        liveness_probe=_probe(get(c, "livenessProbe"), join(path, "livenessProbe"), named, True),
        volume_mounts=tuple(mounts), working_dir=get(c, "workingDir") or None,
        image_pull_policy=enum_field(c, "imagePullPolicy", path, ("Always", "IfNotPresent", "Never"),
                                     _default_pull_policy(image)))


def _volume(v: dict, path: str) -> Volume:
    name = check_name(required(v, "name", path), join(path, "name"), k8s_names.dns1123_label)
    empty_dir = get(v, "emptyDir")
    if empty_dir is None:
        raise InvalidManifest(join(path, "emptyDir"), "required: BeeMesh supports emptyDir volumes only")
    dpath = join(path, "emptyDir")
    size = quantity_field(quantity.memory_bytes, get(empty_dir, "sizeLimit"), join(dpath, "sizeLimit"))
    medium = enum_field(empty_dir, "medium", dpath, ("", "Memory"), "")
    return Volume(name=name, kind="emptyDir", medium=medium, size_limit_bytes=size)


def _pod_template(spec: dict | None, path: str, labels: Pairs, annotations: Pairs,
                  claims: tuple[VolumeClaim, ...] = ()) -> PodTemplate:
    volumes: list[Volume] = []
    for i, v in enumerate(get(spec, "volumes", [])):
        volume = _volume(v, f"{path}.volumes[{i}]")
        if any(volume.name == other.name for other in volumes):
            raise InvalidManifest(f"{path}.volumes[{i}].name", f"duplicate volume name {volume.name!r}")
        if any(volume.name == claim.name for claim in claims):
            raise InvalidManifest(f"{path}.volumes[{i}].name",
                                  f"{volume.name!r} is also a volumeClaimTemplates name: a mount "
                                  "could mean either")
        volumes.append(volume)
    volume_names = {v.name for v in volumes} | {c.name for c in claims}
    containers: list[Container] = []
    host_ports: dict[tuple[int, str], str] = {}
    for i, c in enumerate(required(spec, "containers", path)):
        cpath = f"{path}.containers[{i}]"
        container = _container(c, cpath, volume_names)
        if any(container.name == other.name for other in containers):
            raise InvalidManifest(join(cpath, "name"), f"duplicate container name {container.name!r}")
        for j, port in enumerate(container.ports):
            if port.host_port is None:
                continue
            key = (port.host_port, port.protocol)
            if key in host_ports:
                raise InvalidManifest(f"{cpath}.ports[{j}].hostPort",
                                      f"duplicate hostPort {port.host_port}/{port.protocol} "
                                      f"(also used by container {host_ports[key]!r})")
            host_ports[key] = container.name
        containers.append(container)
    return PodTemplate(
        labels=labels, annotations=annotations, containers=tuple(containers),
        restart_policy=enum_field(spec, "restartPolicy", path, ("Always", "OnFailure", "Never"), "Always"),
        volumes=tuple(volumes),
        node_selector=label_pairs(get(spec, "nodeSelector"), join(path, "nodeSelector")),
        termination_grace_period_seconds=int_field(spec, "terminationGracePeriodSeconds", path, 30))


# ----------------------------------------------------------------------------- workloads


def _selector(spec: dict, template_labels: Pairs) -> Pairs:
    match = get(required(spec, "selector", "spec"), "matchLabels")
    if not match:
        raise InvalidManifest("spec.selector.matchLabels",
                              "required: an empty selector would match every pod")
    selector = label_pairs(match, "spec.selector.matchLabels")
    if not set(selector) <= set(template_labels):  # the Kubernetes rule, with its message
        raise InvalidManifest("spec.template.metadata.labels", "`selector` does not match template `labels`")
    return selector


def _rolling_update(obj: dict, path: str, types: tuple) -> dict | None:
    """The `type` + `rollingUpdate` pair shared by Deployment.strategy and StatefulSet.updateStrategy."""
    kind = enum_field(obj, "type", path, types, "RollingUpdate")
    rolling = get(obj, "rollingUpdate")
    if rolling is not None and kind != "RollingUpdate":
        raise InvalidManifest(join(path, "rollingUpdate"), f"may not be set when type is {kind!r}")
    return rolling


def _int_or_percent(obj: dict, key: str, path: str, default: str) -> str | int:
    value, fpath = get(obj, key, default), join(path, key)
    if isinstance(value, int):
        int_field(obj, key, path, default=0)
    elif not (value.endswith("%") and value[:-1].isascii() and value[:-1].isdigit()):
        raise InvalidManifest(fpath, f"expected an integer or a percentage such as '25%', found {value!r}")
    return value


def _deployment_extras(spec: dict) -> None:
    rolling = _rolling_update(get(spec, "strategy"), "spec.strategy", ("RollingUpdate", "Recreate"))
    if rolling is not None:
        path = "spec.strategy.rollingUpdate"
        surge = _int_or_percent(rolling, "maxSurge", path, "25%")
        unavailable = _int_or_percent(rolling, "maxUnavailable", path, "25%")
        if isinstance(unavailable, str) and int(unavailable[:-1]) > 100:
            raise InvalidManifest(join(path, "maxUnavailable"),
                                  f"must not be greater than 100%, found {unavailable!r}")
        if surge in (0, "0%") and unavailable in (0, "0%"):
            raise InvalidManifest(join(path, "maxUnavailable"), "may not be 0 when maxSurge is 0")
    min_ready = int_field(spec, "minReadySeconds", "spec", 0)
    int_field(spec, "revisionHistoryLimit", "spec", 10)
    deadline = get(spec, "progressDeadlineSeconds")
    if deadline is not None and int_field(spec, "progressDeadlineSeconds", "spec", 600) <= min_ready:
        raise InvalidManifest("spec.progressDeadlineSeconds",
                              f"must be greater than minReadySeconds ({min_ready})")


def _statefulset_extras(spec: dict) -> str:
    service = get(spec, "serviceName")
    if service:
        check_name(service, "spec.serviceName", k8s_names.dns1035_label)
    rolling = _rolling_update(get(spec, "updateStrategy"), "spec.updateStrategy",
                              ("RollingUpdate", "OnDelete"))
    if rolling is not None:
        int_field(rolling, "partition", "spec.updateStrategy.rollingUpdate", 0)
    return enum_field(spec, "podManagementPolicy", "spec", ("OrderedReady", "Parallel"), "OrderedReady")


_ACCESS_MODES = ("ReadWriteOnce", "ReadWriteOncePod", "ReadOnlyMany", "ReadWriteMany")
_RETENTION = "spec.persistentVolumeClaimRetentionPolicy"


def _volume_claims(spec: dict) -> tuple[VolumeClaim, ...]:
    """spec.volumeClaimTemplates: one named Podman volume per ordinal, on the peer holding it."""
    claims: list[VolumeClaim] = []
    for i, t in enumerate(get(spec, "volumeClaimTemplates", [])):
        path = f"spec.volumeClaimTemplates[{i}]"
        meta = required(t, "metadata", path)
        name = check_name(required(meta, "name", join(path, "metadata")), join(path, "metadata.name"),
                          k8s_names.dns1123_label)
        if any(name == other.name for other in claims):
            raise InvalidManifest(join(path, "metadata.name"), f"duplicate claim name {name!r}")
        cspec, spath = required(t, "spec", path), join(path, "spec")
        modes = required(cspec, "accessModes", spath)
        mpath = join(spath, "accessModes")
        if not modes:
            raise InvalidManifest(mpath, "must name at least one access mode (ReadWriteOnce)")
        for j, mode in enumerate(modes):
            if mode not in _ACCESS_MODES:
                raise InvalidManifest(f"{mpath}[{j}]", f"unknown access mode {mode!r} "
                                      f"(one of: {', '.join(_ACCESS_MODES)})")
            if mode in ("ReadOnlyMany", "ReadWriteMany"):
                raise InvalidManifest(f"{mpath}[{j}]", f"{mode} is not possible: each claim is a "
                                      "Podman volume on one peer (use ReadWriteOnce)")
        volume_mode = get(cspec, "volumeMode", "Filesystem")
        if volume_mode != "Filesystem":
            raise InvalidManifest(join(spath, "volumeMode"),
                                  f"must be 'Filesystem' (Podman volumes are directories), found {volume_mode!r}")
        rpath = join(spath, "resources.requests")
        storage = get(get(get(cspec, "resources", {}), "requests", {}), "storage")
        if storage is None:
            raise InvalidManifest(join(rpath, "storage"), "required (for example '1Gi'); note that "
                                  "Podman's local volumes do not enforce it")
        size = quantity_field(quantity.memory_bytes, storage, join(rpath, "storage"))
        if not size:
            raise InvalidManifest(join(rpath, "storage"), f"must be greater than zero, found {storage!r}")
        claims.append(VolumeClaim(name=name, access_modes=tuple(modes), storage_bytes=size))
    policy = get(spec, "persistentVolumeClaimRetentionPolicy", {})
    for key in ("whenDeleted", "whenScaled"):
        value = get(policy, key, "Retain")
        if value != "Retain":
            raise InvalidManifest(join(_RETENTION, key), f"only 'Retain' is supported (volumes are "
                                  f"kept; remove them with `podman volume rm`), found {value!r}")
    return tuple(claims)


def _service_ports(spec: dict, service_type: str) -> tuple[ServicePort, ...]:
    raw = required(spec, "ports", "spec")
    ports: list[ServicePort] = []
    for i, p in enumerate(raw):
        path = f"spec.ports[{i}]"
        name = get(p, "name")
        if name is None and len(raw) > 1:
            raise InvalidManifest(join(path, "name"), "required when the service has more than one port")
        if name is not None:
            check_name(name, join(path, "name"), k8s_names.dns1123_label)
        number = port_number(required(p, "port", path), join(path, "port"))
        target = get(p, "targetPort", number)
        if isinstance(target, str):
            check_name(target, join(path, "targetPort"), k8s_names.iana_svc_name)
        else:
            port_number(target, join(path, "targetPort"))
        node_port = get(p, "nodePort")
        if node_port is not None:
            if service_type != "NodePort":
                raise InvalidManifest(join(path, "nodePort"),
                                      f"may only be set when spec.type is 'NodePort', found {service_type!r}")
            port_number(node_port, join(path, "nodePort"))
        port = ServicePort(name=name, port=number, target_port=target, protocol=protocol_field(p, path),
                           node_port=node_port)
        for other in ports:
            if name is not None and other.name == name:
                raise InvalidManifest(join(path, "name"), f"duplicate port name {name!r}")
            if (other.port, other.protocol) == (number, port.protocol):
                raise InvalidManifest(join(path, "port"), f"duplicate port {number}/{port.protocol}")
            if node_port is not None and (other.node_port, other.protocol) == (node_port, port.protocol):
                raise InvalidManifest(join(path, "nodePort"),
                                      f"duplicate nodePort {node_port}/{port.protocol}")
        ports.append(port)
    return tuple(ports)


# Deployment and StatefulSet pods are named `<name>-<N>`, and a pod name doubles as the pod's
# hostname (as for Kubernetes StatefulSet pods), which must be a DNS-1123 label: no dots, at
# most 63 characters. So the workload name must be a label short enough to take the longest
# suffix, "-999" at MAX_REPLICAS, whatever it is later scaled to.
_MAX_SET_NAME = 63 - len(f"-{MAX_REPLICAS - 1}")


def _set_name(name: str) -> str | None:
    problem = k8s_names.dns1123_label(name)
    if problem is None and len(name) > _MAX_SET_NAME:
        problem = (f"must be no more than {_MAX_SET_NAME} characters (found {len(name)}), "
                   f"so that pod names like '{name[:8]}...-{MAX_REPLICAS - 1}' stay DNS labels")
    return problem


_KINDS = {  # kind -> (apiVersion, schema, name check)
    "Pod": ("v1", top_level(POD_SPEC), k8s_names.dns1123_subdomain),
    "Deployment": ("apps/v1", top_level(DEPLOYMENT_SPEC), _set_name),
    "StatefulSet": ("apps/v1", top_level(STATEFULSET_SPEC), _set_name),
    "Service": ("v1", top_level(SERVICE_SPEC), k8s_names.dns1035_label),
}


def _build(obj: Any) -> Workload:
    if not isinstance(obj, dict):
        raise InvalidManifest("", "expected a Kubernetes object (a mapping with apiVersion and kind), "
                              f"found {describe(obj)}")
    kind, supported = obj.get("kind"), f"(BeeMesh supports: {', '.join(_KINDS)})"
    if kind is None:
        raise InvalidManifest("kind", f"required {supported}")
    if kind == "List":
        raise InvalidManifest("kind", "a List is only accepted as a whole input, not nested")
    if kind not in _KINDS:
        raise InvalidManifest("kind", f"unsupported kind: found {describe(kind)} {supported}")
    api_version, schema, name_check = _KINDS[kind]
    if obj.get("apiVersion") != api_version:
        raise InvalidManifest("apiVersion", f"{kind} needs apiVersion {api_version!r}, "
                              f"found {describe(obj.get('apiVersion'))}")
    walk(obj, schema, "")

    meta, spec = get(obj, "metadata", {}), get(obj, "spec", {})
    name = check_name(required(meta, "name", "metadata"), "metadata.name", name_check)
    namespace = check_name(get(meta, "namespace") or "default", "metadata.namespace", k8s_names.dns1123_label)
    labels = label_pairs(get(meta, "labels"), "metadata.labels")
    annotations = label_pairs(get(meta, "annotations"), "metadata.annotations", values=False)
    common = dict(kind=kind, api_version=api_version, name=name, namespace=namespace, labels=labels,
                  annotations=annotations, manifest=obj)
    if kind == "Pod":
        return Workload(**common, replicas=1, template=_pod_template(spec, "spec", labels, annotations))
    if kind == "Service":
        service_type = enum_field(spec, "type", "spec", ("ClusterIP", "NodePort"), "ClusterIP")
        return Workload(**common, replicas=0, selector=label_pairs(get(spec, "selector"), "spec.selector"),
                        service_ports=_service_ports(spec, service_type), service_type=service_type)

    template = required(spec, "template", "spec")
    tmeta = get(template, "metadata", {})
    tlabels = label_pairs(get(tmeta, "labels"), "spec.template.metadata.labels")
    tannotations = label_pairs(get(tmeta, "annotations"), "spec.template.metadata.annotations",
                               values=False)
    claims = _volume_claims(spec) if kind == "StatefulSet" else ()
    pod = _pod_template(get(template, "spec"), "spec.template.spec", tlabels, tannotations, claims)
    if pod.restart_policy != "Always":  # Kubernetes rule: a controller restarts its pods itself
        raise InvalidManifest("spec.template.spec.restartPolicy",
                              f"must be 'Always' for a {kind}, found {pod.restart_policy!r}")
    selector = _selector(spec, tlabels)
    policy = _statefulset_extras(spec) if kind == "StatefulSet" else ""
    if kind == "Deployment":
        _deployment_extras(spec)
    replicas = int_field(spec, "replicas", "spec", 1, hi=MAX_REPLICAS)
    return Workload(**common, replicas=replicas, template=pod, selector=selector,
                    pod_management_policy=policy, volume_claims=claims)


# --------------------------------------------------------------------------- entry points


def _at(error: InvalidManifest, document: int | None) -> InvalidManifest:
    """The same error, located in `document` unless it already names one."""
    if document is None or error.document is not None:
        return error
    return InvalidManifest(error.field, error.reason, document)


def parse_manifest(obj: dict, document: int | None = None) -> Workload:
    """Validate one Kubernetes object and build its Workload; errors carry `document`."""
    try:
        if isinstance(obj, dict):
            check_plain(obj, MAX_VALUES)
            obj = copy.deepcopy(obj)  # the caller's dict must not change under our frozen result
        return _build(obj)
    except InvalidManifest as e:
        raise _at(e, document) from None


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
                walk(doc, LIST, "")
                if doc.get("apiVersion", "v1") != "v1":
                    raise InvalidManifest("apiVersion",
                                          f"List needs apiVersion 'v1', found {describe(doc['apiVersion'])}")
            except InvalidManifest as e:
                raise InvalidManifest(e.field, e.reason, len(objects) if len(docs) > 1 else None) from None
            objects.extend(get(doc, "items", []))
        else:
            objects.append(doc)
        if len(objects) > MAX_OBJECTS:
            raise InvalidManifest("", f"input holds more than {MAX_OBJECTS} objects")
    return objects


def parse_manifests(source: str | dict | list) -> list[Workload]:
    """Parse YAML/JSON text (several `---` documents allowed), one object, or a list of them.

    `document` in errors is the 0-based position of the object among all objects found (empty
    documents skipped, List items counted one by one); None when there is only one object.
    """
    if isinstance(source, str):
        docs = _load_text(source)
    elif isinstance(source, dict):
        docs = [source]
    elif isinstance(source, list):
        docs = source
    else:
        raise InvalidManifest("", f"expected text, a mapping or a list, found {type(source).__name__}")
    objects = _expand_lists(docs)
    if not objects:
        raise InvalidManifest("", "no Kubernetes object in input")
    single = len(objects) == 1
    budget = MAX_VALUES  # shared by all objects, so 100 objects cannot each use it all
    for i, obj in enumerate(objects):
        if isinstance(obj, dict):
            try:
                budget = check_plain(obj, budget)
            except InvalidManifest as e:
                raise _at(e, None if single else i) from None
    if not isinstance(source, str):  # the caller's dicts must not change under our frozen result
        objects = copy.deepcopy(objects)
    workloads: list[Workload] = []
    first_seen: dict[tuple, int] = {}
    for i, obj in enumerate(objects):
        try:
            workload = _build(obj)
        except InvalidManifest as e:
            raise _at(e, None if single else i) from None
        if workload.key in first_seen:  # applying both would silently keep only the second
            raise InvalidManifest("metadata.name", f"{workload.kind} {workload.namespace}/{workload.name} "
                                  f"appears twice (first as document {first_seen[workload.key]})", i)
        first_seen[workload.key] = i
        workloads.append(workload)
    return workloads
