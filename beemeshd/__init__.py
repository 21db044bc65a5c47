"""BeeMesh: a rootless peer-to-peer mesh that runs Kubernetes-style workloads on Podman."""

__version__ = "0.1.0"
