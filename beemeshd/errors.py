"""The closed set of domain errors.

Every error BeeMesh reports to a client is one of these. Each maps 1:1 onto an error of the
same name in interfaces/io.beemesh.Mesh.varlink; `api/errors.py` is the one place that turns
them into Varlink errors, using `parameters()`.
"""

from __future__ import annotations


class BeeMeshError(Exception):
    """Base class. `name` is the Varlink error name inside io.beemesh.Mesh."""

    name = "BeeMeshError"

    def parameters(self) -> dict:
        raise NotImplementedError


class InvalidManifest(BeeMeshError):
    """A manifest could not be parsed, or uses a field or value BeeMesh does not support."""

    name = "InvalidManifest"

    def __init__(self, field: str, reason: str, document: int | None = None):
        self.field = field
        self.reason = reason
        self.document = document
        where = f"document {document}: " if document is not None else ""
        super().__init__(f"{where}{field or '<manifest>'}: {reason}")

    def parameters(self) -> dict:
        p = {"field": self.field, "reason": self.reason}
        if self.document is not None:
            p["document"] = self.document
        return p


class WorkloadNotFound(BeeMeshError):
    name = "WorkloadNotFound"

    def __init__(self, name: str, namespace: str = "default"):
        self.workload = name
        self.namespace = namespace
        super().__init__(f"workload {namespace}/{name} not found")

    def parameters(self) -> dict:
        return {"name": self.workload, "namespace": self.namespace}


class NoCapacity(BeeMeshError):
    name = "NoCapacity"

    def __init__(self, name: str, reasons: list[dict]):
        # reasons: [{"peer": peer-id, "reason": text}, ...]
        self.workload = name
        self.reasons = reasons
        super().__init__(f"no peer can run {name}: " + "; ".join(r["reason"] for r in reasons))

    def parameters(self) -> dict:
        return {"name": self.workload, "reasons": self.reasons}


class PolicyDenied(BeeMeshError):
    name = "PolicyDenied"

    def __init__(self, policy: str, messages: list[str]):
        self.policy = policy
        self.messages = messages
        super().__init__(f"policy {policy} denied: " + "; ".join(messages))

    def parameters(self) -> dict:
        return {"policy": self.policy, "messages": self.messages}


class InvalidPolicy(BeeMeshError):
    """Policy text that does not compile or breaks the convention; the previous version stays."""

    name = "InvalidPolicy"

    def __init__(self, policy: str, line: int | None, column: int | None, message: str):
        self.policy = policy
        self.line = line
        self.column = column
        self.message = message
        where = f":{line}:{column}" if line is not None else ""
        super().__init__(f"policy {policy}{where}: {message}")

    def parameters(self) -> dict:
        p = {"name": self.policy, "message": self.message}
        if self.line is not None:
            p["line"] = self.line
            p["column"] = self.column if self.column is not None else 1
        return p


class PolicyNotFound(BeeMeshError):
    name = "PolicyNotFound"

    def __init__(self, policy: str, scope: str):
        self.policy = policy
        self.scope = scope
        super().__init__(f"no {scope} policy named {policy}")

    def parameters(self) -> dict:
        return {"name": self.policy, "scope": self.scope}


class MeshKeyRequired(BeeMeshError):
    """The operation needs the mesh's private key, which this peer does not hold."""

    name = "MeshKeyRequired"

    def __init__(self, operation: str, reason: str):
        self.operation = operation
        self.reason = reason
        super().__init__(f"{operation} needs the mesh key: {reason}")

    def parameters(self) -> dict:
        return {"operation": self.operation, "reason": self.reason}


class MeshExists(BeeMeshError):
    """This peer already belongs to a mesh (CreateMesh), or to another one than the invitation's (Join)."""

    name = "MeshExists"

    def __init__(self, mesh_name: str, mesh_id: str):
        self.mesh_name = mesh_name
        self.mesh_id = mesh_id
        super().__init__(f"this peer already belongs to mesh {mesh_name} ({mesh_id})")

    def parameters(self) -> dict:
        return {"meshName": self.mesh_name, "meshId": self.mesh_id}


class InvalidCredential(BeeMeshError):
    """A credential or join token that does not admit this peer (see beemeshd.core.credentials)."""

    name = "InvalidCredential"

    def __init__(self, reason: str, detail: str):
        self.reason = reason
        self.detail = detail
        super().__init__(f"{reason}: {detail}")

    def parameters(self) -> dict:
        return {"reason": self.reason, "detail": self.detail}


class RuntimeUnavailable(BeeMeshError):
    name = "RuntimeUnavailable"

    def __init__(self, reason: str, endpoint: str = ""):
        self.reason = reason
        self.endpoint = endpoint
        super().__init__(f"container runtime unavailable ({endpoint}): {reason}")

    def parameters(self) -> dict:
        return {"reason": self.reason, "endpoint": self.endpoint}


class PeerUnreachable(BeeMeshError):
    name = "PeerUnreachable"

    def __init__(self, peer: str, reason: str):
        self.peer = peer
        self.reason = reason
        super().__init__(f"peer {peer} unreachable: {reason}")

    def parameters(self) -> dict:
        return {"peer": self.peer, "reason": self.reason}


class Timeout(BeeMeshError):
    name = "Timeout"

    def __init__(self, operation: str, seconds: float, detail: str = ""):
        self.operation = operation
        self.seconds = seconds
        self.detail = detail
        super().__init__(f"{operation} did not finish within {seconds:g} s {detail}".rstrip())

    def parameters(self) -> dict:
        return {"operation": self.operation, "seconds": float(self.seconds), "detail": self.detail}


class NotImplementedYet(BeeMeshError):
    """A method of the interface whose implementation has not landed yet."""

    name = "NotImplemented"

    def __init__(self, method: str, reason: str):
        self.method = method
        self.reason = reason
        super().__init__(f"{method} is not implemented yet: {reason}")

    def parameters(self) -> dict:
        return {"method": self.method, "reason": self.reason}


class InvalidParameter(BeeMeshError):
    """A well-typed call parameter with a value out of range (maps to org.varlink.service)."""

    name = "InvalidParameter"

    def __init__(self, parameter: str, reason: str = ""):
        self.parameter = parameter
        self.reason = reason
        super().__init__(f"invalid parameter {parameter}: {reason}")

    def parameters(self) -> dict:
        return {"parameter": self.parameter}
