# Mesh-wide (admission): no workload asks for more than max_replicas copies (checked at Deploy
# and at Scale).
#   beemeshctl policy set max-replicas --scope mesh max-replicas.rego
package beemesh.admission

import rego.v1

max_replicas := 10

deny contains msg if {
	input.manifest.kind in {"Deployment", "StatefulSet"}
	replicas := object.get(input.manifest.spec, "replicas", 1)
	replicas > max_replicas
	msg := sprintf("%s %s asks for %d replicas; at most %d are allowed",
		[input.manifest.kind, input.manifest.metadata.name, replicas, max_replicas])
}
