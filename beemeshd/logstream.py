"""Container log lines as the interface's LogLine objects: read once, or followed and merged."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

import trio

from beemeshd import errors


def log_line(replica: str, container: str, e) -> dict:
    return {"replica": replica, "container": container, "stream": e.stream, "timestampUSec": e.timestamp_usec,
            "line": e.line}


async def stream(runtime, spawn: Callable, sources, tail: int | None, follow: bool) -> AsyncIterator[dict]:
    """Lines of every (pod, replica, container) source; with follow, merged as they come.

    Follow readers run as background tasks (`spawn`: the agent's nursery) — no nursery inside this
    generator, which yields to the Varlink server — each under its own cancel scope that closing
    the stream cancels."""
    if not follow:
        for pod, replica, container in sources:
            async for e in runtime.logs(pod, container, tail=tail, follow=False):
                yield log_line(replica, container, e)
        return
    send, receive = trio.open_memory_channel(256)
    scopes = [trio.CancelScope() for _ in sources]
    try:
        for scope, (pod, replica, container) in zip(scopes, sources):
            spawn(_pump, runtime, scope, pod, replica, container, tail, send.clone())
        send.close()
        async with receive:
            async for line in receive:
                yield line
    finally:
        for scope in scopes:
            scope.cancel()


async def _pump(runtime, scope, pod, replica, container, tail, send) -> None:
    with scope:
        async with send:
            try:
                async for e in runtime.logs(pod, container, tail=tail, follow=True):
                    await send.send(log_line(replica, container, e))
            except (errors.RuntimeUnavailable, trio.BrokenResourceError, trio.ClosedResourceError):
                pass


async def chain(iterators) -> AsyncIterator[dict]:
    for it in iterators:
        async for x in it:
            yield x


async def merge(spawn: Callable, iterators) -> AsyncIterator[dict]:
    """Items of every iterator as they come (each drained by a background task, see `stream`);
    ends when all have ended. A source that fails ends quietly: the others go on."""
    send, receive = trio.open_memory_channel(256)
    scopes = [trio.CancelScope() for _ in iterators]
    try:
        for scope, it in zip(scopes, iterators):
            spawn(_drain, scope, it, send.clone())
        send.close()
        async with receive:
            async for x in receive:
                yield x
    finally:
        for scope in scopes:
            scope.cancel()


async def _drain(scope, it, send) -> None:
    with scope:
        async with send:
            try:
                async for x in it:
                    await send.send(x)
            except (errors.BeeMeshError, trio.BrokenResourceError, trio.ClosedResourceError):
                pass
            finally:
                with trio.CancelScope(shield=True):
                    await it.aclose()


def with_namespace(w, namespace: str):
    """The workload in `namespace` unless its manifest names one (kubectl apply -n)."""
    from dataclasses import replace

    if w.manifest.get("metadata", {}).get("namespace"):
        return w
    manifest = dict(w.manifest)
    manifest["metadata"] = {**manifest.get("metadata", {}), "namespace": namespace}
    return replace(w, namespace=namespace, manifest=manifest)
