# Mesh-wide (admission): containers may only run images from allowed registries.
#   beemeshctl policy set image-allowlist --scope mesh image-allowlist.rego
package beemesh.admission

import rego.v1

# Image name prefixes workloads may use; edit to taste.
allowed := ["localhost/", "docker.io/library/", "quay.io/beemesh/"]

# The pod spec of a Pod, Deployment or StatefulSet (a Service has none: nothing to check).
pod := input.manifest.spec if input.manifest.kind == "Pod"

pod := input.manifest.spec.template.spec if input.manifest.kind in {"Deployment", "StatefulSet"}

deny contains msg if {
	some c in array.concat(object.get(pod, "initContainers", []), object.get(pod, "containers", []))
	not allowed_image(c.image)
	msg := sprintf("container %s: image %s is not allowed (allowed prefixes: %v)", [c.name, c.image, allowed])
}

allowed_image(image) if {
	some prefix in allowed
	startswith(image, prefix)
}
