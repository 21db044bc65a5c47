"""The one place that turns domain errors (beemeshd.errors) into Varlink errors."""

from __future__ import annotations

from beemeshd import errors
from beemeshd.api.idl import INTERFACE_NAME


class VarlinkError(Exception):
    """An error reply: full error name + parameters."""

    def __init__(self, name: str, parameters: dict | None = None):
        self.name = name
        self.parameters = parameters or {}
        super().__init__(f"{name} {self.parameters}")


SERVICE = "org.varlink.service"


def invalid_parameter(parameter: str) -> VarlinkError:
    return VarlinkError(f"{SERVICE}.InvalidParameter", {"parameter": parameter})


def method_not_found(method: str) -> VarlinkError:
    return VarlinkError(f"{SERVICE}.MethodNotFound", {"method": method})


def interface_not_found(interface: str) -> VarlinkError:
    return VarlinkError(f"{SERVICE}.InterfaceNotFound", {"interface": interface})


def expected_more() -> VarlinkError:
    return VarlinkError(f"{SERVICE}.ExpectedMore")


def internal_error(reason: str) -> VarlinkError:
    return VarlinkError(f"{INTERFACE_NAME}.InternalError", {"reason": reason})


def from_domain(exc: errors.BeeMeshError) -> VarlinkError:
    if isinstance(exc, errors.InvalidParameter):
        return invalid_parameter(exc.parameter)
    return VarlinkError(f"{INTERFACE_NAME}.{exc.name}", exc.parameters())
