# Mesh-wide (admission): no hostPath volumes — they would hand a workload the files of whichever
# peer it lands on. (beemeshd refuses hostPath today anyway; this keeps it so if that changes.)
#   beemeshctl policy set no-hostpath --scope mesh no-hostpath.rego
package beemesh.admission

import rego.v1

pod := input.manifest.spec if input.manifest.kind == "Pod"

pod := input.manifest.spec.template.spec if input.manifest.kind in {"Deployment", "StatefulSet"}

deny contains msg if {
	some v in object.get(pod, "volumes", [])
	object.get(v, "hostPath", null) != null
	msg := sprintf("volume %s: hostPath volumes are not allowed", [v.name])
}
