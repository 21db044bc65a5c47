"""Container runtime adapters: `PodmanRuntime` (rootless Podman's REST API) and `FakeRuntime`
(in memory, for unit tests and the whole-mesh simulator), both implementing `base.Runtime`.

`PodmanRuntime` is imported lazily so that users of the fake do not need podman-py.
"""

from beemeshd.runtime.base import (
    ContainerSpec,
    LogEntry,
    ObservedContainer,
    ObservedPod,
    PodSpec,
    PortMapping,
    Runtime,
    RuntimeFailure,
    RuntimeStatus,
)
from beemeshd.runtime.fake import FakeRuntime

__all__ = [
    "ContainerSpec",
    "FakeRuntime",
    "LogEntry",
    "ObservedContainer",
    "ObservedPod",
    "PodSpec",
    "PodmanRuntime",
    "PortMapping",
    "Runtime",
    "RuntimeFailure",
    "RuntimeStatus",
]


def __getattr__(name: str):
    if name == "PodmanRuntime":
        from beemeshd.runtime.podman import PodmanRuntime

        return PodmanRuntime
    raise AttributeError(name)
