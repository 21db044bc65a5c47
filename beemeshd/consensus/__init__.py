"""Consensus for stateful workloads: one small Raft group per StatefulSet (issue 9).

The engine is pysyncobj 0.3.17 (pinned), kept behind a narrow interface (`RaftGroup`: propose,
is_leader, leader, term, members, add_member, remove_member, close) so that a pure-core Raft could
replace it locally. Modules:

  codec.py   what may cross the consensus path: frame codec, message schemas, plain-data unpickling
  clock.py   pysyncobj's process-wide clock and randomness, switched per group
  raft.py    RaftGroup (a SyncObj member) and its transport
  driver.py  one trio task per peer: ticks every group, batches messages per peer, checks inbound
  wire.py    frames over the mesh (/beemesh/raft/1) or in memory

Importing this package installs the plain-data unpickler and the clock switch into pysyncobj.
"""

from beemeshd.consensus import clock as _clock  # noqa: F401  (installs the clock switch)
from beemeshd.consensus import codec as _codec  # noqa: F401  (installs the safe unpickler)
from beemeshd.consensus.driver import PROTO_RAFT, Driver
from beemeshd.consensus.raft import ProposalFailed, RaftGroup, RaftTiming, StateMachine

__all__ = ["Driver", "PROTO_RAFT", "ProposalFailed", "RaftGroup", "RaftTiming", "StateMachine"]
