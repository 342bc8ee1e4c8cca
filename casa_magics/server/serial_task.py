"""Run one CASA task serially in a child process of a server.

Runs on the servers (and, as ``python -m casa_magics.server.serial_task DIR``, in
the child itself). A server is one rank of an MPI world; when casatools'
C++ shares that world, a cube ``tclean`` (or ``deconvolve``,
``sdintimaging``) started there waits for C++ workers on the other ranks,
which never come. Run in a child process that is no MPI rank, the same
call is plain serial CASA: the child gets the server's environment without
the MPI launcher's variables, works in the server's current directory,
writes to the same CASA log, and sends back the task's value.

The call and its value travel as pickle files in a private temporary
directory; the child imports nothing of casa_magics but this module.
"""

from __future__ import annotations

import importlib
import os
import pickle
import subprocess
import sys
import tempfile
import traceback
from pathlib import Path
from typing import Any

__all__ = ["run_in_child", "child_environment", "SerialTaskError"]

#: Prefixes of the variables through which an MPI launcher makes a process one of its ranks.
_LAUNCHER_PREFIXES = ("OMPI_", "PMIX_", "PMI_", "PRTE_", "OPAL_", "HYDRA_", "MPI_LOCAL", "I_MPI_")
_CALL, _VALUE, _FAILURE = "call.pickle", "value.pickle", "failure.txt"


class SerialTaskError(RuntimeError):
    """The task failed in the child (its last traceback line is the message)."""


def child_environment(environ: "os._Environ[str] | dict[str, str] | None" = None) -> dict[str, str]:
    """The server's environment, less what would make the child an MPI rank or a casa_magics server."""
    environ = os.environ if environ is None else environ
    return {
        name: value
        for name, value in environ.items()
        if not name.startswith(_LAUNCHER_PREFIXES) and name != "CASA_MAGICS_ROLE"
    }


def run_in_child(module: str, function: str, arguments: dict[str, Any]) -> Any:
    """Call ``module.function(**arguments)`` in a new serial Python process and return its value.

    The child's output is written to this process's stdout and stderr
    (where the running request collects it). An interrupt (the client's
    cancel) ends the child.

    Raises
    ------
    SerialTaskError
        When the call raised in the child, or the child died.
    """
    with tempfile.TemporaryDirectory(prefix="casa-magics-serial-") as folder:
        Path(folder, _CALL).write_bytes(pickle.dumps((module, function, arguments)))
        child = subprocess.Popen(
            [sys.executable, "-m", __name__, folder],
            env=child_environment(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            out, err = child.communicate()
        finally:
            if child.poll() is None:  # interrupted: the child goes with the request
                child.kill()
                child.wait()
        sys.stdout.write(out)
        sys.stderr.write(err)
        failure = Path(folder, _FAILURE)
        if failure.exists():
            raise SerialTaskError(failure.read_text().strip())
        value = Path(folder, _VALUE)
        if child.returncode != 0 or not value.exists():
            raise SerialTaskError(f"the serial {function} process ended with exit code {child.returncode}")
        return pickle.loads(value.read_bytes())


def _main(folder: str) -> int:
    module, function, arguments = pickle.loads(Path(folder, _CALL).read_bytes())
    try:
        value = getattr(importlib.import_module(module), function)(**arguments)
    except BaseException as error:  # reported to the server, which raises it for the request
        Path(folder, _FAILURE).write_text(traceback.format_exception_only(type(error), error)[-1])
        return 1
    Path(folder, _VALUE).write_bytes(pickle.dumps(value))
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1]))
