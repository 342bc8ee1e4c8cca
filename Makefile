# casa_magics developer commands.  `make demo` and `make test` are all a new
# machine needs: both create .venv (with every extra) first if it is missing.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
# The venv's bin comes first so that ipyparallel finds the mpich wheel's mpiexec.
export PATH := $(abspath $(BIN)):$(PATH)

.PHONY: install demo test bench soak clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[test,casa]"
	touch $@

demo: install
	$(BIN)/python -m casa_magics.demo

test: install
	$(BIN)/python -m pytest
