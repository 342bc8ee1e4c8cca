"""``make demo`` end to end: the seed's examples and CASA's own parallel tasks, in a fresh process."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from casa_magics.cluster.casa_env import casa_available

from .conftest import WAIT

pytestmark = pytest.mark.needs_mpi


def test_the_demo_runs_every_example_and_stops_cleanly(tmp_path):
    environment = {**os.environ, "CASA_MAGICS_ENGINES": "2", "CASA_MAGICS_RUN_DIR": str(tmp_path)}
    environment.pop("CASASITECONFIG", None)
    done = subprocess.run(
        [sys.executable, "-m", "casa_magics.demo"], env=environment, capture_output=True, text=True, timeout=WAIT * 4
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    out = done.stdout
    assert "Example 1: wvrgcal on two execution blocks" in out and "Example 2: close" in out
    assert "Stopped the cluster" in out
    if casa_available():
        assert "partition()  ngc5921.mms.0000.ms       1  True" in out
        assert "flagdata()   ngc5921.mms.0001.ms       2  True" in out
        assert "tclean(parallel=True): major cycles gridded on servers [1, 2]" in out
        assert "tclean(specmode='cube'): imaged as a gang, server 1 the master, servers [2] its workers" in out
