"""Re-forming a StatefulSet's group on proof, with real daemons: three beemeshd peers, each with its
own rootless Podman store (tests/integration/daemons.py `podman_mesh`, loopback), a 1-replica
StatefulSet whose group has all three as members. Two members' daemons are killed with SIGKILL and
their machines "die" with them: their lease watchdogs are killed and their Podman state is wiped
(as test_placement_mesh's restart test does), so the holder's pod dies at that moment (the test
records that stop in the history, as the dead machine cannot). Both come back with the same
identity and state directory: they join afresh under new member ids, which is the proof that their
old ids are gone for good, so the survivor re-forms the group (`BASE#USEC`) without any
assumption (`consensus_refound_after_seconds` stays 0, the default). Then the ordinal runs exactly
once, under a higher token, and the start/stop history passes the checker. Leases are 6 s here.
"""

from __future__ import annotations

import time

from beemeshd.core.history_check import check
from tests.integration.daemons import PodmanNode, peer_ids, podman_mesh, wait_for
from tests.integration.test_stateful import history, kill_watchdogs, running_pods, statefulset

NAME = "reform"
CONFIG = {"lease_seconds": 6.0, "lease_stop_margin_seconds": 2.0, "log_level": "info"}


def row0(node) -> dict | None:
    r = node.call("Get", {"name": NAME})
    return r.json["workload"]["replicaStatus"][0] if r.rc == 0 else None


def group(node) -> dict | None:
    r = node.call("Explain", {"name": NAME})
    return r.json["explanation"].get("group") if r.rc == 0 else None


def test_two_members_restarted_at_once_prove_their_ids_gone_and_the_group_re_forms(user, varlinkctl):
    with podman_mesh(user, 3, config=lambda i: CONFIG) as nodes:
        try:
            ids = peer_ids(nodes)
            r = nodes[0].call("Deploy", {"manifest": statefulset(NAME), "wait": True, "timeoutSeconds": 120},
                              timeout=150)
            assert r.rc == 0, r.err
            row = wait_for(lambda: (x := row0(nodes[0])) and x.get("lease") and x["ready"] and x, 60,
                           "the ordinal ready under a lease")
            holder, token = ids.index(row["peer"]), row["lease"]["token"]
            wait_for(lambda: all((g := group(n)) and sorted(g["members"]) == sorted(ids) and g["leader"]
                                 for n in nodes), 60, "a group of all three with a leader")
            # the holder and one other member die; the third survives alone (no majority)
            dead = [holder, (holder + 1) % 3]
            survivor = nodes[(holder + 2) % 3]
            for i in dead:
                nodes[i].proc.kill()
            for i in dead:
                nodes[i].proc.wait()
                kill_watchdogs(nodes[i])
                nodes[i].cleanup()  # the machine died with its pods: it comes back empty
            t_gone = time.monotonic()  # the holder's pod is gone by now (its Podman store is empty)
            assert not running_pods(nodes[holder], NAME)
            assert not any(running_pods(n, NAME) for n in nodes)
            # the survivor alone has no quorum: it must not re-form on suspicion (no proof yet)
            time.sleep(15)  # > ORPHAN_AFTER (10 s): it would have re-formed by now on an assumption
            assert "lost its majority for good" not in survivor.log_text()
            assert not any(running_pods(n, NAME) for n in nodes)

            t_back = time.monotonic()
            boot = survivor.call("GetInfo").json["info"]["meshAddresses"]
            for i in dead:  # same home: same identity, credential, state directory (fences, groups.json)
                n = nodes[i]
                n.extra_config["mesh_bootstrap"] = boot  # its first listen port is gone with it
                n.proc = PodmanNode(n.user, n.home, n.extra_config).start().proc
            assert peer_ids([nodes[i] for i in dead]) == [ids[i] for i in dead]
            for n in nodes:
                wait_for(lambda n=n: n.call("GetInfo").json["info"]["peersAlive"] == 2, 60, "the mesh whole again")

            try:
                back = wait_for(lambda: (x := row0(survivor)) and x["state"] in ("running", "ready")
                                and x.get("lease") and x["lease"]["holder"] == x["peer"]
                                and x["lease"]["token"] > token and x, 120, "the ordinal running again")
                where = wait_for(lambda: [i for i, n in enumerate(nodes) if running_pods(n, NAME)], 30, "its pod")
            except AssertionError:
                for n in nodes:
                    print(n.call("Explain", {"name": NAME}).out[-3000:], n.log_text()[-4000:])
                raise
            took = time.monotonic() - t_back
            log = survivor.log_text()
            assert "lost its majority for good" in log and "founding it again as" in log
            assert where == [ids.index(back["peer"])]  # exactly once
            # the re-formed group takes the restarted peers back in: three members, one leader
            wait_for(lambda: all((g := group(n)) and sorted(g["members"]) == sorted(ids) and g["leader"]
                                 for n in nodes), 60, "the re-formed group with all three")
            time.sleep(8)  # more than a lease: nothing starts a second copy meanwhile
            assert [i for i, n in enumerate(nodes) if running_pods(n, NAME)] == where
            print(f"\nre-formed on proof: the ordinal ran again on peer {where[0]} (was {holder}) {took:.1f} s "
                  f"after the two daemons restarted; token {token} -> {back['lease']['token']}")
            h = history(nodes, NAME)
            old = [e for e in h if e[2] == ids[holder] and e[3] == token]
            if old and old[-1][4] == "start":  # its pod died with the machine: no one could log that
                h = sorted(h + [(t_gone, f"default/{NAME}-0", ids[holder], token, "stop")])
            assert check(h, eps=0.05) == []
            assert [e[3] for e in h if e[4] == "start"][-1] == row0(survivor)["lease"]["token"]
        finally:
            for n in nodes:
                kill_watchdogs(n)
