"""Run one test class of casampi's own test file against casa_magics (a process of its own).

Usage: ``python run_casampi_own_test.py TEST_FILE CLASS [N_SERVERS]``. The
test file is casampi 0.6.0's ``tests/test_casampi.py``, taken from its wheel
by the caller. casa_magics' casampi layer is enabled first, so its imports
of ``casampi`` resolve here. Its module also imports two of casampi's
private classes, which only its other test classes use: they are given
empty stand-ins here, in this test process only. ``mpirun`` would set
``OMPI_COMM_WORLD_LOCAL_SIZE`` (the file reads it): it is set to the world's
size. Prints unittest's report and exits non-zero if anything failed.
"""

from __future__ import annotations

import importlib.util
import os
import sys
import types
import unittest


def main(test_file: str, test_class: str, servers: int = 2) -> int:
    import casa_magics

    casa_magics.enable_casampi()
    for name, cls in (("casampi.private.MPIMonitorClient", "MPIMonitorClient"), ("casampi.private.MPICommandServer", "MPICommandServer")):
        module = types.ModuleType(name, "Not part of casa_magics: only casampi's other test classes use it.")
        setattr(module, cls, type(cls, (), {}))
        sys.modules[name] = module
    os.environ.setdefault("OMPI_COMM_WORLD_LOCAL_SIZE", str(servers + 1))
    os.environ.setdefault("CASA_MAGICS_ENGINES", str(servers))
    spec = importlib.util.spec_from_file_location("casampi_own_tests", test_file)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    suite = unittest.defaultTestLoader.loadTestsFromTestCase(getattr(module, test_class))
    result = unittest.TextTestRunner(stream=sys.stdout, verbosity=2).run(suite)
    casa_magics.MPICommandClient().stop_services()
    return 0 if result.wasSuccessful() and result.testsRun > 0 else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2], *(int(a) for a in sys.argv[3:])))
