# Mesh-wide (admission): every container states its CPU and memory requests, so that peers can
# bid on what it really needs (placement schedules by requests, as Kubernetes does).
#   beemeshctl policy set require-requests --scope mesh require-requests.rego
package beemesh.admission

import rego.v1

pod := input.manifest.spec if input.manifest.kind == "Pod"

pod := input.manifest.spec.template.spec if input.manifest.kind in {"Deployment", "StatefulSet"}

deny contains msg if {
	some c in object.get(pod, "containers", [])
	some resource in ["cpu", "memory"]
	object.get(c, ["resources", "requests", resource], null) == null
	msg := sprintf("container %s: resources.requests.%s is required", [c.name, resource])
}
