# BeeMesh — run as root on Debian 12. See README.md.
PYTHON_VENV ?= /var/lib/beemesh/venv
PYTEST_ARGS ?=

.PHONY: setup test unit demo bench clean

setup:            ## install packages, test user, rootless Podman, venv, varlinkctl, local image
	./scripts/setup.sh

test: setup       ## the whole suite (unit + integration with real podman, varlinkctl, systemd --user)
	./scripts/run-tests.sh $(PYTEST_ARGS)

unit: setup       ## unit tests only
	./scripts/run-tests.sh tests/unit $(PYTEST_ARGS)

demo: setup       ## the main job
	./scripts/demo.sh

bench: setup      ## benchmarks; writes bench/RESULTS.md
	./scripts/bench.sh

clean:
	rm -rf build dist *.egg-info .pytest_cache
