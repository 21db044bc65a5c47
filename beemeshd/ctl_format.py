"""Human-friendly formatting for beemeshctl: tables, ages, sizes, peer ids, events."""

from __future__ import annotations

import time
from datetime import datetime

NONE = "<none>"


def age(seconds: float) -> str:
    """5s, 3m, 2h, 4d (kubectl style, one unit)."""
    s = max(0, int(seconds))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if s >= size:
            return f"{s // size}{unit}"
    return f"{s}s"


def age_since(usec: int) -> str:
    return age(time.time() - usec / 1e6)


def size(n: int) -> str:
    """Bytes in binary units: 512Mi, 2.3Gi, 1000."""
    value, unit = float(n), ""
    for next_unit in ("Ki", "Mi", "Gi", "Ti", "Pi"):
        if abs(value) < 1024:
            break
        value, unit = value / 1024, next_unit
    if value == int(value) or abs(value) >= 100:
        return f"{round(value)}{unit}"
    return f"{value:.1f}".rstrip("0").rstrip(".") + unit


def cpu(millis: int) -> str:
    """Millicores as kubectl writes them: 2 (cores) or 1500m."""
    return str(millis // 1000) if millis % 1000 == 0 else f"{millis}m"


def short_peer(peer: str | None) -> str:
    return peer[-8:] if peer else NONE


def table(headers: list[str], rows: list[list]) -> str:
    """Left-aligned columns separated by three spaces, like kubectl."""
    rows = [[str(v) for v in row] for row in rows]
    widths = [max(len(r[i]) for r in [headers, *rows]) for i in range(len(headers))]
    return "\n".join("   ".join(v.ljust(w) for v, w in zip(r, widths)).rstrip() for r in [headers, *rows])


def ref(w: dict) -> str:
    """deployment/web"""
    return f"{w['kind'].lower()}/{w['name']}"


# -- workloads --------------------------------------------------------------------------------
def _ports(w: dict) -> str:
    seen = []
    for p in w.get("ports") or []:
        text = f"{p['hostIP']}:{p['hostPort']}->{p['containerPort']}/{p['protocol']}"
        if text not in seen:
            seen.append(text)
    return ",".join(seen) or NONE


def _peers(w: dict) -> str:
    peers = []
    for r in w.get("replicaStatus") or []:
        if r.get("peer") and short_peer(r["peer"]) not in peers:
            peers.append(short_peer(r["peer"]))
    return ",".join(peers) or NONE


def workload_table(workloads: list[dict], *, wide: bool = False, namespaces: bool = False) -> str:
    headers = ["NAME", "READY", "GENERATION", "AGE"] + (["PEERS", "PORTS"] if wide else [])
    rows = []
    for w in workloads:
        row = [ref(w), f"{w['readyReplicas']}/{w['replicas']}", w["generation"], age_since(w["createdUSec"])]
        if wide:
            row += [_peers(w), _ports(w)]
        rows.append(([w["namespace"]] if namespaces else []) + row)
    return table((["NAMESPACE"] if namespaces else []) + headers, rows)


def replica_table(w: dict) -> str:
    rows = []
    for r in w.get("replicaStatus") or []:
        containers = r.get("containers") or []
        ready = f"{sum(c['ready'] for c in containers)}/{len(containers)}" if containers else "-"
        rows.append([r["name"], r["state"], ready, r["restarts"], short_peer(r.get("peer")), r.get("message") or ""])
    return table(["NAME", "STATE", "READY", "RESTARTS", "PEER", "MESSAGE"], rows)


# -- peers and info ----------------------------------------------------------------------------
def peer_table(peers: list[dict], *, wide: bool = False) -> str:
    headers = ["PEER ID", "STATE", "ADDRESSES", "UPTIME", "CPU FREE/TOTAL", "MEM FREE/TOTAL", "PODS FREE/TOTAL"]
    rows = []
    for p in peers:
        c = p["capacity"]
        row = [p["peerId"] if wide else short_peer(p["peerId"]), p["state"], ",".join(p["addresses"]) or NONE,
               age(p["uptimeSeconds"]), f"{cpu(c['cpuFreeMillis'])}/{cpu(c['cpuMillis'])}",
               f"{size(c['memoryFreeBytes'])}/{size(c['memoryBytes'])}", f"{c['podsFree']}/{c['pods']}"]
        if wide:
            trust = p.get("trust")
            labels = ",".join(f"{k}={v}" for k, v in sorted((p.get("labels") or {}).items())) or NONE
            row += [p["version"], p["runtime"], p["network"], "-" if trust is None else f"{trust:.2f}", labels]
        rows.append(row)
    if wide:
        headers += ["VERSION", "RUNTIME", "NETWORK", "TRUST", "LABELS"]
    return table(headers, rows)


def info_lines(info: dict) -> str:
    rt, c = info["runtime"], info["counters"]
    runtime = " ".join(filter(None, [rt["name"], rt.get("version")]))
    runtime += f" ({'available' if rt['available'] else 'unavailable'}) at {rt['endpoint'] or NONE}"
    if rt["startedByBeemesh"]:
        runtime += ", started by beemeshd"
    pairs = [
        ("Version", info["version"]),
        ("Peer ID", info.get("peerId") or "<mesh not running>"),
        ("Uptime", age(info["uptimeSeconds"])),
        ("User", info["user"]),
        ("Address", info["address"] + (" (socket-activated)" if info["socketActivated"] else "")),
        ("State directory", info["stateDirectory"]),
        ("Runtime", runtime),
        ("Network", f"{rt['network']} (available: {', '.join(rt['networksAvailable']) or NONE})"),
    ]
    if rt.get("lastError"):
        pairs.append(("Runtime error", rt["lastError"]))
    pairs += [
        ("Mesh addresses", ", ".join(info["meshAddresses"]) or NONE),
        ("Peers", f"{info['peersAlive']} alive, {info['peersSuspect']} suspect, {info['peersDead']} dead"),
        ("Workloads", info["workloads"]),
        ("Local replicas", info["localReplicas"]),
        ("Dropped", f"{c['forgedMessages']} forged, {c['staleMessages']} stale, {c['replayedMessages']} replayed, "
                    f"{c['malformedMessages']} malformed, {c.get('nonMemberMessages', 0)} from non-members; "
                    f"{c['refusedPeers']} peers refused; "
                    f"{c['badConnections']} bad connections; "
                    f"{c.get('forgedPolicies', 0)} forged, {c.get('stalePolicies', 0)} stale policy documents; "
                    f"{c.get('consensusRejected', 0)} consensus messages"),
    ]
    width = max(len(k) for k, _ in pairs) + 2
    return "\n".join(f"{k + ':':<{width}}{v}" for k, v in pairs)


# -- events ------------------------------------------------------------------------------------
def event_time(usec: int) -> str:
    return datetime.fromtimestamp(usec / 1e6).strftime("%H:%M:%S")


def event_line(ev: dict) -> str:
    """TIME TYPE namespace/name replica peer message"""
    obj = f"{ev.get('namespace') or 'default'}/{ev['name']}" if ev.get("name") else "-"
    peer = short_peer(ev["peer"]) if ev.get("peer") else "-"
    parts = [event_time(ev["timestampUSec"]), f"{ev['type']:<14}", obj, ev.get("replica") or "-", peer]
    return " ".join(parts + ([ev["message"]] if ev.get("message") else []))


PROGRESS = {"ReplicaPlaced": "placed", "ReplicaRunning": "running", "ReplicaReady": "ready",
            "ReplicaFailed": "failed"}


def progress_line(ev: dict) -> str | None:
    """A short line for a replica's progress while waiting, or None for other events."""
    state = PROGRESS.get(ev["type"])
    if state is None:
        return None
    line = f"{ev.get('replica') or ev.get('name') or '?'}: {state}"
    if ev.get("peer"):
        line += f" on {short_peer(ev['peer'])}"
    return line + (f" ({ev['message']})" if ev.get("message") else "")


# -- policies ---------------------------------------------------------------------------------
def policy_table(policies: list[dict]) -> str:
    rows = []
    for p in policies:
        state = "yes" if p["inForce"] else "no"
        if p.get("error"):
            state += " (error: " + " ".join(p["error"].split())[:60] + ")"
        version = str(p["version"]) if p["scope"] == "mesh" else "-"
        age_ = age_since(p["setUSec"]) if p.get("setUSec") else NONE
        rows.append([p["name"], p["scope"], version, short_peer(p.get("setBy")) if p.get("setBy") else "-", age_,
                     state])
    return table(["NAME", "SCOPE", "VERSION", "SET-BY", "AGE", "IN-FORCE"], rows)


# -- mesh membership -----------------------------------------------------------------------------
def event_time_full(usec: int | None) -> str:
    return datetime.fromtimestamp(usec / 1e6).strftime("%Y-%m-%d %H:%M:%S") if usec else NONE


def membership_lines(m: dict) -> str:
    if m["meshId"] is None:
        mesh = "none (beemeshctl mesh init creates one; mesh join joins one)"
    else:
        mesh = f"{m['meshName']} ({m['meshId']})" + (", this peer holds its key" if m["holdsMeshKey"] else "")
    cred = m["credential"]
    if m.get("serial"):
        cred += f", serial {m['serial']}, issued {event_time_full(m['issuedUSec'])}, " \
                f"expires {event_time_full(m['expiresUSec'])}"
    revoked = ", ".join([short_peer(p) for p in m["revokedPeers"]] + m["revokedSerials"]) or NONE
    pairs = [
        ("Mesh", mesh),
        ("Credential", cred),
        ("Open", "yes: peers are accepted without credentials (mesh_open)" if m["open"] else "no"),
        ("Verified peers", m["verifiedPeers"]),
        ("Revocations", f"version {m['revocationVersion']}: {revoked}"),
        ("Pending tokens", m["pendingTokens"]),
        ("Key directory", m["keyDirectory"]),
        ("State directory", m["stateDirectory"]),
    ]
    width = max(len(k) for k, _ in pairs) + 2
    return "\n".join(f"{k + ':':<{width}}{v}" for k, v in pairs)
