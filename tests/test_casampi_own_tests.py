"""casampi's own tests, from its 0.6.0 wheel, run against casa_magics.

``make install`` downloads the wheel (without installing it) into
``.venv/reference``; each test class runs in a process of its own, with
casa_magics' casampi layer enabled and two servers
(``support/run_casampi_own_test.py``).
"""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

pytestmark = [pytest.mark.needs_mpi, pytest.mark.casa]

WHEEL = Path(sys.executable).parent.parent / "reference" / "casampi-0.6.0-py3-none-any.whl"
RUNNER = Path(__file__).parent / "support" / "run_casampi_own_test.py"


@pytest.fixture(scope="module")
def casampi_test_file(tmp_path_factory) -> Path:
    from casa_magics.cluster.casa_env import casa_available

    if not casa_available():
        pytest.skip("needs the casa extra (casatools, casatasks): make install")
    if not WHEEL.exists():
        pytest.skip(f"casampi's wheel is not at {WHEEL}: make install downloads it")
    folder = tmp_path_factory.mktemp("casampi-own-tests")
    with zipfile.ZipFile(WHEEL) as wheel:
        wheel.extract("casampi/tests/test_casampi.py", folder)
    return folder / "casampi" / "tests" / "test_casampi.py"


def test_casampis_own_mpi_interface_tests_pass(casampi_test_file, tmp_path):
    done = subprocess.run(
        [sys.executable, str(RUNNER), str(casampi_test_file), "test_0_MPIInterface", "2"],
        cwd=tmp_path, capture_output=True, text=True, timeout=240,
    )
    report = done.stdout + done.stderr
    assert done.returncode == 0, report[-4000:]
    assert "test_PyParallelImagerHelper_interface" in report
    assert "Ran 1 test" in report and "\nOK" in report and "FAIL" not in report
