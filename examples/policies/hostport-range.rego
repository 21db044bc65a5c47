# Mesh-wide (admission): published hostPorts stay within a range (here the Kubernetes NodePort
# range), away from the ports of the peers' own services.
#   beemeshctl policy set hostport-range --scope mesh hostport-range.rego
package beemesh.admission

import rego.v1

min_port := 30000

max_port := 32767

pod := input.manifest.spec if input.manifest.kind == "Pod"

pod := input.manifest.spec.template.spec if input.manifest.kind in {"Deployment", "StatefulSet"}

deny contains msg if {
	some c in object.get(pod, "containers", [])
	some p in object.get(c, "ports", [])
	port := object.get(p, "hostPort", 0)
	port != 0
	not in_range(port)
	msg := sprintf("container %s: hostPort %d is outside %d-%d", [c.name, port, min_port, max_port])
}

in_range(port) if {
	port >= min_port
	port <= max_port
}
