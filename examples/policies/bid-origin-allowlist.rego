# Node-local (before bidding): this peer runs work announced by itself or by the peers listed
# here only; for any other task it does not bid (Explain shows this reason).
#   cp bid-origin-allowlist.rego ~/.config/beemesh/policies/   (or:)
#   beemeshctl policy set bid-origin-allowlist --scope node bid-origin-allowlist.rego
package beemesh.bid

import rego.v1

# Peer ids (GetInfo's peerId of each) whose tasks this peer accepts.
allowed_origins := {"12D3KooWReplaceWithAPeerIdOfYourMeshxxxxxxxxxxxxxxxxxx"}

deny contains msg if {
	input.request.peer != input.peer.id
	not input.request.peer in allowed_origins
	msg := sprintf("this peer only runs work announced by its allow-listed peers, not by %s", [input.request.peer])
}
