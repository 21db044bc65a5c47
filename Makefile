# BeeMesh — run as root on Debian 12. See README.md.
PYTHON_VENV ?= /var/lib/beemesh/venv
PYTEST_ARGS ?=
BENCH_ARGS ?=

.PHONY: setup test unit demo bench rpm clean

setup:            ## install packages, test user, rootless Podman, venv, varlinkctl, local image
	./scripts/setup.sh

test: setup       ## the whole suite (unit + integration with real podman, varlinkctl, systemd --user)
	./scripts/run-tests.sh $(PYTEST_ARGS)

unit: setup       ## unit tests only
	./scripts/run-tests.sh tests/unit $(PYTEST_ARGS)

demo: setup       ## the main job
	./scripts/demo.sh

bench: setup      ## benchmarks (≈ 10 min); writes bench/RESULTS.md. BENCH_ARGS="--skip activation", "--soak-runs 200" etc.
	./scripts/bench.sh $(BENCH_ARGS)

rpm:              ## the RPM from the working tree, into rpmbuild/ (git-ignored); then rpmlint
	./scripts/rpm.sh
	rpmlint -c packaging/rpmlint.toml rpmbuild/RPMS/noarch/*.rpm beemesh.spec

clean:
	rm -rf build dist *.egg-info .pytest_cache
